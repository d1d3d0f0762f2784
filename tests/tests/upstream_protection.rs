//! Upstream protection: while the database is down, booksvc keeps answering its clients
//! from the last-good store and keeps the load on storagesvc to what its policies allow:
//! the requests that open the breaker, then about one probe a second.
//!
//! What storagesvc receives is counted by a proxy in front of it, on arrival (see
//! `system_tests::counting_proxy` for why storagesvc's own metrics would undercount).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::counting_proxy::{Arrival, CountingProxy};
use system_tests::storagesvc::TestStoragesvc;
use system_tests::{header, is_stale};
use tokio::task::JoinSet;

/// Concurrent clients, each reading its own key so that no two reads coalesce.
const CLIENTS: usize = 50;
/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// Pause between one client's requests: each reads about 20 times a second. That keeps a
/// request coming every millisecond or so without saturating a two-core machine, where
/// booksvc would answer the breaker-state polls too late to tell when the breaker opened.
const THINK_TIME: Duration = Duration::from_millis(50);

// booksvc's defaults, which the bounds below are derived from.
/// `BREAKER_CONSECUTIVE_FAILURES`: consecutive failures that open the breaker.
const BREAKER_THRESHOLD: usize = 5;
/// Retry budget: retries allowed per window, plus this share of the requests in it.
const RETRY_FLOOR: f64 = 3.0;
const RETRY_RATIO: f64 = 0.2;
/// `BREAKER_PROBE_INTERVAL`: how often storagesvc's health is asked while the breaker is open.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest time from the breaker's opening to its first probe: half its first open
/// delay of 1 s (the delay is jittered between half and all of it).
const FIRST_PROBE_AFTER: Duration = Duration::from_millis(500);

struct Stack {
    db: Postgres,
    _redis: Redis,
    _storagesvc: TestStoragesvc,
    proxy: CountingProxy,
    booksvc: TestBooksvc,
}

/// The usual stack, with the counting proxy between booksvc and storagesvc.
async fn stack() -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), &[]).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let proxy = CountingProxy::start(storagesvc.address).await;
    let booksvc = TestBooksvc::spawn(proxy.address, &redis.url(), &[]).await;
    Stack {
        db,
        _redis: redis,
        _storagesvc: storagesvc,
        proxy,
        booksvc,
    }
}

/// One answer a client got during the outage.
#[derive(Debug)]
struct Answer {
    path: String,
    sent: Instant,
    status: StatusCode,
    cache_status: Option<String>,
    age: Option<String>,
    same_body: bool,
}

/// Reads `path` until `until`, noting every answer.
async fn client(
    http: reqwest::Client,
    base: String,
    path: String,
    warm_body: Bytes,
    until: Instant,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        let (status, cache_status, age) = (
            response.status(),
            header(&response, "cache-status"),
            header(&response, "age"),
        );
        let same_body = response.bytes().await.unwrap() == warm_body;
        answers.push(Answer {
            path: path.clone(),
            sent,
            status,
            cache_status,
            age,
            same_body,
        });
        tokio::time::sleep(THINK_TIME).await;
    }
    answers
}

/// When the breaker opened, as closely as polling booksvc's readiness can tell.
#[derive(Debug, Clone, Copy)]
struct Opening {
    /// When the last poll that found the breaker closed was sent.
    after: Instant,
    /// When the first poll that found it open was answered.
    before: Instant,
}

/// Polls booksvc's breaker state every 10 ms until it is no longer closed.
async fn breaker_opening(booksvc: &TestBooksvc, until: Instant) -> Opening {
    loop {
        let sent = Instant::now();
        if booksvc.breaker_state().await != "closed" {
            return Opening {
                after: sent,
                before: Instant::now(),
            };
        }
        assert!(
            Instant::now() < until,
            "the breaker never opened during the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_fifty_clients_reaches_storagesvc_as_the_breaker_threshold_then_one_probe_a_second()
 {
    let stack = stack().await;

    // Warm one key per client; `limit` differs, so each client's reads are its own.
    let mut warm = Vec::new();
    for n in 1..=CLIENTS {
        let path = format!("/books?limit={n}");
        let response = stack.booksvc.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header(&response, "cache-status").as_deref(),
            Some("booksvc; fwd=miss; stored")
        );
        warm.push((path, response.bytes().await.unwrap()));
    }
    let received_before = stack.proxy.arrivals().len();

    stack.db.stop().await;
    let outage_started = Instant::now();
    let outage_ends = outage_started + OUTAGE;
    let mut clients = JoinSet::new();
    for (path, body) in warm {
        clients.spawn(client(
            stack.booksvc.http.clone(),
            stack.booksvc.url(""),
            path,
            body,
            outage_ends,
        ));
    }
    let (answers, opening) = tokio::join!(
        clients.join_all(),
        breaker_opening(&stack.booksvc, outage_ends)
    );
    let clients_done = Instant::now();
    let answers: Vec<Answer> = answers.into_iter().flatten().collect();

    // Every client answer during the outage: 200, stale, with an Age, the stored body.
    for answer in &answers {
        assert!(
            answer.status == StatusCode::OK
                && is_stale(answer.cache_status.as_deref())
                && answer
                    .age
                    .as_deref()
                    .is_some_and(|a| a.parse::<u64>().is_ok())
                && answer.same_body,
            "{}: not a stale 200 with the stored body: {answer:?}",
            answer.path
        );
    }

    // What storagesvc received during the outage, split at the moment the breaker opened.
    // No probe comes within FIRST_PROBE_AFTER of the opening, so if the opening is known
    // that closely, every request received up to `opening.before` came before it opened.
    assert!(
        opening.before - opening.after < FIRST_PROBE_AFTER,
        "the breaker's opening is known only within {:?}: too coarse to split the counts",
        opening.before - opening.after
    );
    let received: Vec<Arrival> = stack.proxy.arrivals()[received_before..].to_vec();
    let (books, other): (Vec<&Arrival>, Vec<&Arrival>) = received
        .iter()
        .partition(|a| a.path == "/books" || a.path.starts_with("/books/"));
    let (health, unexpected): (Vec<&Arrival>, Vec<&Arrival>) = other
        .into_iter()
        .partition(|a| a.path == "/.well-known/health");
    assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
    let (before_open, probes): (Vec<&Arrival>, Vec<&Arrival>) =
        books.iter().partition(|a| a.at <= opening.before);
    // The longest the breaker can have been open.
    let open_for = clients_done - opening.after;
    let outage = clients_done - outage_started;

    // Before the breaker opens. Every attempt let through while it is closed either ended
    // before it opened (at most BREAKER_THRESHOLD - 1 of them, all failures: the
    // BREAKER_THRESHOLD-th consecutive failure is what opens it) or was in flight when it
    // opened. A client has one request open at a time and a request one attempt at a time
    // (a retry starts after the attempt it repeats), so at most CLIENTS attempts are in
    // flight, the one that opened the breaker included. Retries are among these attempts,
    // not on top of them; the retry budget (a floor of 3 plus 20% of the requests in the
    // last 10 s) bounds how many of them may be retries, checked separately below.
    let before_open_bound = BREAKER_THRESHOLD - 1 + CLIENTS;
    assert!(
        before_open.len() <= before_open_bound,
        "{} requests reached storagesvc before the breaker opened; at most {before_open_bound} may",
        before_open.len()
    );
    // Attempts of one request share its x-request-id: the repeats are its retries. The
    // budget's window holds the warm-up reads and every read sent until the breaker opened.
    let distinct_requests = before_open
        .iter()
        .map(|a| a.request_id.as_deref().expect("booksvc sends x-request-id"))
        .collect::<HashSet<_>>()
        .len();
    let retries = before_open.len() - distinct_requests;
    let requests_in_window = CLIENTS + answers.iter().filter(|a| a.sent <= opening.before).count();
    let retry_budget = (RETRY_FLOOR + RETRY_RATIO * requests_in_window as f64).floor() as usize;
    assert!(
        retries <= retry_budget,
        "{retries} retries; the budget allows {retry_budget}"
    );

    // While open. The breaker lets one probe through once its open delay has passed, and
    // a failed probe opens it again; the health check cannot end a delay early, since
    // storagesvc reports itself unhealthy throughout. The delay is storagesvc's
    // `Retry-After` (1 s) when the failure carried one; otherwise it is jittered between
    // half and all of 1 s x 2^(times opened before), so only the first delay can be under
    // 1 s, and not under FIRST_PROBE_AFTER. Within T of the opening, then, at most
    // floor(T + 0.5) probes arrive: the first 0.5 s or more after it, each next one 1 s or
    // more after the one before.
    let probe_bound = (open_for.as_secs_f64() + FIRST_PROBE_AFTER.as_secs_f64()) as usize;
    assert!(
        probes.len() <= probe_bound,
        "{} probes reached storagesvc in the {open_for:?} the breaker was open; at most {probe_bound} may",
        probes.len()
    );
    // Health checks: one per probe interval while the breaker is open, which it can only
    // be during the outage.
    let health_bound = (outage.as_secs_f64() / HEALTH_PROBE_INTERVAL.as_secs_f64()) as usize + 1;
    assert!(
        health.len() <= health_bound,
        "{} health checks in the {outage:?} outage; at most {health_bound} may",
        health.len()
    );

    // booksvc's own account: opened once, never closed while the database was down.
    let transitions = |from: &str, to: &str| {
        let series = format!(r#"breaker_transitions_total{{from="{from}",to="{to}"}}"#);
        let booksvc = &stack.booksvc;
        async move { booksvc.metric(&series).await.unwrap_or(0.0) }
    };
    assert_eq!(transitions("closed", "open").await, 1.0);
    assert_eq!(transitions("half_open", "closed").await, 0.0);
    let half_opened = transitions("open", "half_open").await;

    let probe_offsets: Vec<String> = probes
        .iter()
        .map(|a| format!("{:.2}", (a.at - opening.before).as_secs_f64()))
        .collect();
    println!(
        "outage of {outage:.1?}, {CLIENTS} clients, {} answers, all 200 stale\n\
         storagesvc received before the breaker opened: {} /books requests \
         ({distinct_requests} requests + {retries} retries; bound {before_open_bound}, \
         retry budget {retry_budget})\n\
         storagesvc received in the {open_for:.1?} the breaker was open: {} /books probes \
         (bound {probe_bound}; at +[{}] s; breaker half-opened {half_opened} times)\n\
         the opening was seen within {:.1?}\n\
         storagesvc received {} health checks (bound {health_bound})",
        answers.len(),
        before_open.len(),
        probes.len(),
        probe_offsets.join(", "),
        opening.before - opening.after,
        health.len(),
    );
}
