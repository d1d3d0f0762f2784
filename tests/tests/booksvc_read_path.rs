//! booksvc's read path with everything real: PostgreSQL and Redis containers, storagesvc
//! and booksvc in-process, real HTTP between them, and the database really stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::Bytes;

use redis::AsyncCommands;
use reqwest::StatusCode;
use system_tests::booksvc::{REQUEST_DEADLINE, TestBooksvc};
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::partition::Partition;
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};
use system_tests::{is_stale, metric_sum, metric_value, stale_because};

/// Once the breaker is open, a stale answer must come this fast.
const OPEN_BREAKER_BOUND: Duration = Duration::from_millis(50);
/// With a stored answer, every read after a fault is answered within this, from the first
/// read on: the default `STALE_AFTER` (`auto`, at most 80 ms) plus the store's read.
const STALE_FIRST_BOUND: Duration = Duration::from_millis(200);
/// The reads of the stale-first tests: 200 a second for 3 s, one key.
const READS_PER_SECOND: u64 = 200;
const FAULT_READS: u64 = 600;
/// A read that took this long waited for a probe of storagesvc (see below).
const WAITED_FOR_A_PROBE: Duration = Duration::from_millis(200);

struct Stack {
    db: Postgres,
    redis: Redis,
    storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

async fn stack() -> Stack {
    stack_with(&[], &[]).await
}

async fn stack_with(storagesvc_flags: &[&str], booksvc_flags: &[&str]) -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), storagesvc_flags).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), booksvc_flags).await;
    Stack {
        db,
        redis,
        storagesvc,
        booksvc,
    }
}

async fn warm(booksvc: &TestBooksvc) -> Bytes {
    let response = booksvc.get("/books").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap()
}

/// After a fault below booksvc, with a warm cache: the first read is stale within the
/// request deadline, reads stay 200 and stale until the breaker opens, and then each
/// stale answer comes within 50 ms.
async fn assert_serves_stale_through_the_fault(booksvc: &TestBooksvc, fresh_body: &Bytes) {
    // The first read after the fault: stale, within the request deadline.
    let started = Instant::now();
    let first = booksvc.get("/books").await;
    let first_took = started.elapsed();
    assert_eq!(first.status(), StatusCode::OK);
    let cache_status = header(&first, "cache-status");
    assert!(is_stale(cache_status.as_deref()), "{cache_status:?}");
    assert!(
        header(&first, "age").is_some_and(|age| age.parse::<u64>().is_ok()),
        "Age present"
    );
    assert_eq!(
        first.bytes().await.unwrap(),
        *fresh_body,
        "the stored body, byte for byte"
    );
    assert!(
        first_took <= REQUEST_DEADLINE,
        "first stale answer took {first_took:?}"
    );

    // Keep reading until the breaker opens; every answer is stale and 200 meanwhile.
    eventually(Duration::from_secs(10), "the breaker opens", || async {
        let response = booksvc.get("/books").await;
        assert_eq!(response.status(), StatusCode::OK);
        (booksvc.breaker_state().await == "open").then_some(())
    })
    .await;

    // With the breaker open, stale answers are immediate.
    for _ in 0..20 {
        let started = Instant::now();
        let response = booksvc.get("/books").await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "cache-status"),
            Some(stale_because("breaker-open"))
        );
        assert_eq!(response.bytes().await.unwrap(), *fresh_body);
        assert!(
            took <= OPEN_BREAKER_BOUND,
            "stale answer with the breaker open took {took:?}"
        );
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_reads_pass_storagesvc_bytes_through_and_store_them() {
    let stack = stack().await;
    let direct = stack.storagesvc.get("/books").await.bytes().await.unwrap();

    for path in ["/", "/books"] {
        let response = stack.booksvc.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header(&response, "cache-status").as_deref(),
            Some("booksvc; fwd=miss; stored"),
            "{path}"
        );
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(header(&response, "age"), None, "a fresh answer has no Age");
        assert_eq!(
            response.bytes().await.unwrap(),
            direct,
            "{path}: byte for byte"
        );
    }

    // ... and the answer is now in Redis, under the documented key.
    let redis = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<u8> = eventually(Duration::from_secs(5), "the list in Redis", || {
        let mut redis = redis.clone();
        async move {
            redis
                .get::<_, Option<Vec<u8>>>("booksvc:v2:GET /books?limit=100&offset=0")
                .await
                .unwrap()
        }
    })
    .await;
    assert!(stored.ends_with(&direct), "Redis holds the body as sent");

    // A book that does not exist is storagesvc's 404, passed on and not stored.
    let missing = stack.booksvc.get("/books/424242").await;
    assert_eq!(
        header(&missing, "cache-status").as_deref(),
        Some("booksvc; fwd=miss")
    );
    assert_problem(missing, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_last_good_list_when_database_is_stopped_and_recovers_when_it_returns() {
    let stack = stack().await;
    let fresh_body = warm(&stack.booksvc).await;

    stack.db.stop().await;

    assert_serves_stale_through_the_fault(&stack.booksvc, &fresh_body).await;

    // Recovery: the database comes back; fresh answers within 3 s, nothing restarted.
    stack.db.start_again().await;
    stack
        .storagesvc
        .wait_until_ready(Duration::from_secs(30))
        .await;
    let healthy = Instant::now();
    eventually(
        Duration::from_secs(3),
        "fresh answers within 3 s of the database being healthy",
        || async {
            let response = stack.booksvc.get("/books").await;
            (header(&response, "cache-status").as_deref() == Some("booksvc; fwd=miss; stored"))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "fresh again {:?} after storagesvc reported ready",
        healthy.elapsed()
    );

    // The metrics tell the same story.
    let metrics = stack.booksvc.metrics().await;
    let value = |series: &str| metric_value(&metrics, series);
    assert_eq!(
        value(r#"breaker_transitions_total{from="closed",to="open"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(r#"breaker_transitions_total{from="half_open",to="closed"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(value("breaker_state"), Some(0.0), "{metrics}");
    assert!(
        metric_sum(&metrics, "fallback_answers_total", r#"source="memory""#) >= 21.0,
        "{metrics}"
    );
    assert!(
        value(r#"upstream_attempts_total{outcome="server_error"}"#).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        value(r#"upstream_attempts_total{outcome="success"}"#).is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("upstream_attempt_duration_seconds_bucket"),
        "{metrics}"
    );
    // storagesvc's fail-fast 503s were retried, and further retries were refused (used up,
    // no time left before the deadline, or the breaker open).
    assert!(
        value(r#"upstream_retries_total{after="server_error"}"#).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("upstream_retries_refused_total{reason="),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_cache_and_database_down_answers_503_with_retry_after_within_the_deadline() {
    let stack = stack().await;
    stack.db.stop().await;
    let started = Instant::now();
    let response = stack.booksvc.get("/books?limit=7").await;
    let took = started.elapsed();
    let retry_after = header(&response, "retry-after");
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem["type"], "urn:bookstore:problem:books-unavailable");
    assert!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)),
        "Retry-After of at least 1 s"
    );
    assert!(took <= REQUEST_DEADLINE, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_cold_reads_make_one_upstream_call() {
    // Generous timeouts so the one upstream call can be held open (database paused)
    // while all hundred reads arrive, without any timeout or retry starting a second.
    let slow = ["--db-acquire-timeout", "10s", "--db-query-timeout", "10s"];
    let patient = ["--attempt-timeout", "10s", "--request-deadline", "20s"];
    let stack = stack_with(&slow, &patient).await;

    stack.db.pause().await;
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let request = stack.booksvc.http.get(stack.booksvc.url("/books")).send();
        reads.spawn(async move {
            let response = request.await.unwrap();
            (response.status(), response.bytes().await.unwrap())
        });
    }
    // The reads are held by the paused database for as long as the test wants; release
    // them once all hundred are inside booksvc (the scrape itself is one more in flight).
    eventually(
        Duration::from_secs(10),
        "all hundred reads inside booksvc",
        || async {
            let in_flight = stack
                .booksvc
                .metric("http_server_requests_in_flight")
                .await?;
            (in_flight > 100.0).then_some(())
        },
    )
    .await;
    stack.db.unpause().await;

    let answers = reads.join_all().await;
    assert_eq!(answers.len(), 100);
    assert!(
        answers.iter().all(|(status, _)| *status == StatusCode::OK),
        "all answered 200"
    );
    assert!(
        answers.windows(2).all(|w| w[0].1 == w[1].1),
        "all got the same body"
    );

    let metrics = stack.storagesvc.metrics().await;
    let list_calls = metric_value(
        &metrics,
        r#"http_server_requests_total{method="GET",route="/books",status="200"}"#,
    );
    assert_eq!(
        list_calls,
        Some(1.0),
        "storagesvc served the list once:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_last_good_list_when_database_is_paused() {
    let stack = stack().await;
    let fresh_body = warm(&stack.booksvc).await;
    stack.db.pause().await;
    assert_serves_stale_through_the_fault(&stack.booksvc, &fresh_body).await;
    stack.db.unpause().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_last_good_list_when_storagesvc_is_shut_down() {
    let stack = stack().await;
    let fresh_body = warm(&stack.booksvc).await;
    stack.storagesvc.stop().await;
    assert_serves_stale_through_the_fault(&stack.booksvc, &fresh_body).await;
}

/// Once the breaker has opened, each probe of storagesvc takes as long as storagesvc needs
/// to fail (here: a paused database, about 450 ms). Reads of the same path arriving
/// meanwhile must not queue behind the probe: they get the stored answer at once, so only
/// the read that carries a probe is slow.
///
/// "Slow" here is over 200 ms: far above what a busy two-core machine adds to a wave of 20
/// concurrent reads (up to about 70 ms seen), far below the probe's 450 ms. How fast a
/// stale answer is otherwise is `assert_serves_stale_through_the_fault`'s business.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_breaker_is_not_closed_only_the_probe_waits_for_storagesvc() {
    let stack = stack().await;
    let booksvc = &stack.booksvc;
    let fresh_body = warm(booksvc).await;
    stack.db.pause().await;
    assert_serves_stale_through_the_fault(booksvc, &fresh_body).await;

    let attempts = || async {
        booksvc
            .metrics()
            .await
            .lines()
            .filter(|line| line.starts_with("upstream_attempts_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let attempts_before = attempts().await;
    let (mut total, mut slow) = (0, 0);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let request = booksvc.http.get(booksvc.url("/books")).send();
            wave.spawn(async move {
                let started = Instant::now();
                let response = request.await.unwrap();
                (response.status(), started.elapsed())
            });
        }
        for (status, took) in wave.join_all().await {
            assert_eq!(status, StatusCode::OK);
            total += 1;
            if took > WAITED_FOR_A_PROBE {
                slow += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes = attempts().await - attempts_before;
    eprintln!("{total} reads, {slow} over {WAITED_FOR_A_PROBE:?}, {probes} probes");
    assert!(probes >= 1.0, "the breaker let a probe through in 4 s");
    assert!(
        f64::from(slow) <= probes,
        "{slow} of {total} reads waited longer than {WAITED_FOR_A_PROBE:?}, for {probes} probe(s)"
    );
    stack.db.unpause().await;
}

/// Reads `/books` at [`READS_PER_SECOND`] (one after the other) through a fault, with the
/// stale-after bound at its default: every read is the stored body, stale, within
/// [`STALE_FIRST_BOUND`]. Returns when the breaker opened, from the first read.
async fn assert_every_read_is_stale_at_once(booksvc: &TestBooksvc, fresh_body: &Bytes) -> Duration {
    let started = Instant::now();
    let mut opened = None;
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / READS_PER_SECOND));
    for n in 0..FAULT_READS {
        pace.tick().await;
        let asked = Instant::now();
        let response = booksvc.get("/books").await;
        let took = asked.elapsed();
        let cache_status = header(&response, "cache-status");
        assert_eq!(response.status(), StatusCode::OK, "read {n}");
        assert!(
            is_stale(cache_status.as_deref()),
            "read {n}: {cache_status:?}"
        );
        assert_eq!(response.bytes().await.unwrap(), *fresh_body, "read {n}");
        assert!(
            took <= STALE_FIRST_BOUND,
            "read {n} ({cache_status:?}) took {took:?}"
        );
        if opened.is_none() && cache_status == Some(stale_because("breaker-open")) {
            opened = Some(started.elapsed());
        }
    }
    opened.expect("the breaker opened during the fault")
}

/// A stack whose booksvc uses the default stale-after bound, warmed with enough fresh
/// reads (as many as its latency tracker keeps) for the adaptive attempt timeout to know
/// storagesvc's usual latency.
async fn warm_stack_with_default_stale_after() -> (Stack, Bytes) {
    let stack = stack_with(&[], &["--stale-after", "auto"]).await;
    let mut fresh_body = warm(&stack.booksvc).await;
    for _ in 0..512 {
        fresh_body = warm(&stack.booksvc).await;
    }
    (stack, fresh_body)
}

async fn assert_fresh_again(booksvc: &TestBooksvc) {
    eventually(Duration::from_secs(10), "fresh answers again", || async {
        let response = booksvc.get("/books").await;
        (header(&response, "cache-status").as_deref() == Some("booksvc; fwd=miss; stored"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_warm_cache_every_read_is_stale_within_200_ms_of_a_database_pause() {
    let (stack, fresh_body) = warm_stack_with_default_stale_after().await;
    stack.db.pause().await;
    let opened = assert_every_read_is_stale_at_once(&stack.booksvc, &fresh_body).await;
    eprintln!("database paused: breaker open {opened:?} after the first read");
    // The adaptive attempt timeout (4 × p99, at least 50 ms) recognises the hang: with the
    // fixed 500 ms timeout the breaker would need five of them, over 2.5 s.
    assert!(
        opened <= Duration::from_millis(1500),
        "opened after {opened:?}"
    );
    stack.db.unpause().await;
    assert_fresh_again(&stack.booksvc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_warm_cache_every_read_is_stale_within_200_ms_of_a_partition_from_storagesvc() {
    let (stack, fresh_body) = warm_stack_with_default_stale_after().await;
    let partition = Partition::drop_packets_to(stack.storagesvc.address.port());
    let opened = assert_every_read_is_stale_at_once(&stack.booksvc, &fresh_body).await;
    eprintln!("storagesvc partitioned: breaker open {opened:?} after the first read");
    assert!(
        opened <= Duration::from_millis(1500),
        "opened after {opened:?}"
    );
    partition.heal();
    assert_fresh_again(&stack.booksvc).await;
}
