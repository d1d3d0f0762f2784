//! booksvc over three storagesvc replicas: every attempt goes to one of them (the less
//! loaded of two random picks), a replica whose attempts keep failing is ejected and
//! probed back, and the service-wide breaker stays for storagesvc failing as a whole.
//!
//! The replicas are real storagesvc servers on one PostgreSQL, given to booksvc as the
//! addresses of one name (`STORAGESVC_ADDRESSES`, which is how the client is told of
//! replicas when no DNS name stands for them all). The sick replica is partitioned:
//! every packet to its port dropped, so connecting hangs and nothing is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use shared::client::{AuthConfig, Secret, ServiceClientConfig};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::partition::Partition;
use system_tests::poll::eventually;
use system_tests::storagesvc::{TOKEN, TestStoragesvc};
use system_tests::{header, is_stale};
use tokio::task::JoinSet;

/// The load: reads of one list, this many a second, for this long (the swarm smoke
/// test's figures).
const RATE: u64 = 200;
const LOAD_FOR: Duration = Duration::from_secs(30);
/// Reads before the fault: enough for the adaptive attempt timeout to know the usual
/// latency (it needs 256 samples), so that an attempt to the partitioned replica is cut
/// off after a few times that, not after `ATTEMPT_TIMEOUT`.
const WARM_UP_READS: usize = 400;

struct Stack {
    db: Postgres,
    _redis: Redis,
    replicas: Vec<TestStoragesvc>,
    booksvc: TestBooksvc,
}

async fn stack() -> Stack {
    stack_with(&[]).await
}

/// Three replicas started with `replica_flags`.
async fn stack_with(replica_flags: &[&str]) -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let replica = TestStoragesvc::spawn(&db.url(), replica_flags).await;
        replica.wait_until_ready(Duration::from_secs(30)).await;
        replicas.push(replica);
    }
    // No port in the URL: each address's own port is used.
    let client = ServiceClientConfig::new("storagesvc", Url::parse("http://storagesvc").unwrap())
        .with_auth(AuthConfig::Bearer(Secret::new(TOKEN)))
        .with_addresses(replicas.iter().map(|replica| replica.address).collect());
    let booksvc = TestBooksvc::spawn_with_client(client, &redis.url(), &[]).await;
    Stack {
        db,
        _redis: redis,
        replicas,
        booksvc,
    }
}

/// What the load saw.
#[derive(Debug, Default)]
struct Seen {
    sent: usize,
    ok: usize,
    stale: usize,
    latencies: Vec<Duration>,
}

impl Seen {
    fn p99(&mut self) -> Duration {
        self.latencies.sort();
        self.latencies[(self.latencies.len() * 99 / 100).min(self.latencies.len() - 1)]
    }
}

/// Reads `path` at [`RATE`] for [`LOAD_FOR`], each request sent when due whatever became
/// of the earlier ones, its latency counted from when it was due.
async fn open_loop(booksvc: &TestBooksvc, path: &str) -> Seen {
    open_loop_for(booksvc, path, LOAD_FOR).await
}

async fn open_loop_for(booksvc: &TestBooksvc, path: &str, load_for: Duration) -> Seen {
    let url = booksvc.url(path);
    let started = tokio::time::Instant::now();
    let total = RATE * load_for.as_secs();
    let mut requests = JoinSet::new();
    for i in 0..total {
        let due = started + Duration::from_micros(i * 1_000_000 / RATE);
        tokio::time::sleep_until(due).await;
        let http = booksvc.http.clone();
        let url = url.clone();
        requests.spawn(async move {
            let response = http.get(url).timeout(Duration::from_secs(5)).send().await;
            let took = due.elapsed();
            match response {
                Ok(response) => (
                    Some(response.status()),
                    header(&response, "cache-status"),
                    took,
                ),
                Err(_) => (None, None, took),
            }
        });
    }
    let mut seen = Seen::default();
    while let Some(result) = requests.join_next().await {
        let (status, cache_status, took) = result.unwrap();
        seen.sent += 1;
        if status == Some(StatusCode::OK) {
            seen.ok += 1;
        }
        if is_stale(cache_status.as_deref()) {
            seen.stale += 1;
        }
        seen.latencies.push(took);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partitioned_replica_of_three_is_ejected_and_costs_almost_nothing() {
    let stack = stack().await;
    let booksvc = &stack.booksvc;
    // Warm: the list is stored, every replica has answered, the usual latency is known.
    for _ in 0..WARM_UP_READS {
        let response = booksvc.get("/books?limit=5").await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        booksvc
            .metric(r#"upstream_endpoints{state="in_rotation"}"#)
            .await,
        Some(3.0)
    );

    let partition = Partition::drop_packets_to(stack.replicas[2].address.port());
    let partitioned_at = Instant::now();
    let mut seen = open_loop(booksvc, "/books?limit=5").await;
    let fresh = seen.ok - seen.stale;
    let p99 = seen.p99();
    let metrics = booksvc.metrics().await;
    let attempts_by_outcome: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            line.starts_with("upstream_attempts_total{") || line.starts_with("upstream_endpoint")
        })
        .collect();
    println!("booksvc's attempts and endpoints: {attempts_by_outcome:?}");
    println!(
        "one replica of three partitioned, {RATE} reads/s for {LOAD_FOR:?}: {} sent, {} 2xx, {} stale, p99 {p99:?}",
        seen.sent, seen.ok, seen.stale
    );
    assert_eq!(seen.ok, seen.sent, "every read is answered 2xx: {seen:?}");
    assert!(
        fresh * 100 >= seen.sent * 99,
        "at least 99% fresh: {fresh} of {}",
        seen.sent
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");

    // The replica is out of rotation; the breaker never opened.
    let metrics = booksvc.metrics().await;
    let series = |name: &str| system_tests::metric_value(&metrics, name);
    assert_eq!(
        series(r#"upstream_endpoints{state="in_rotation"}"#),
        Some(2.0)
    );
    assert_eq!(
        series(r#"breaker_transitions_total{from="closed",to="open"}"#).unwrap_or(0.0),
        0.0,
        "one sick replica must not open the service-wide breaker"
    );
    // Probed, not tried with requests: a probe when each ejection ends, and ejections
    // grow (1 s, 2 s, 3 s...), so at most a few a second.
    let probes = series("upstream_endpoint_probes_total").unwrap_or(0.0);
    let seconds = partitioned_at.elapsed().as_secs_f64();
    println!("health probes of the partitioned replica: {probes} in {seconds:.1} s");
    assert!(probes >= 1.0, "the ejected replica was probed");
    assert!(probes / seconds <= 2.0, "{probes} probes in {seconds:.1} s");

    // Healed, it passes a probe and is back in rotation.
    partition.heal();
    eventually(
        Duration::from_secs(35),
        "the healed replica back in rotation",
        || async {
            let _ = booksvc.get("/books?limit=5").await;
            let in_rotation = booksvc
                .metric(r#"upstream_endpoints{state="in_rotation"}"#)
                .await;
            (in_rotation == Some(3.0)).then_some(())
        },
    )
    .await;
}

/// One replica of three answers every read 2 s late (storagesvc's fault layer). Its
/// attempts are overtaken: after the recent p99 each gets a twin, which goes to another
/// replica and answers first. So no read waits for the slow replica, and none is answered
/// from the store for it; the replica is ejected each time it is overtaken and returns
/// after a passing health probe (its health is not delayed), so it is tried again and
/// again, and each time a twin wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_is_overtaken_by_twins_and_costs_no_stale_answers() {
    let stack = stack_with(&["--fault-injection"]).await;
    let booksvc = &stack.booksvc;
    for _ in 0..WARM_UP_READS {
        let response = booksvc.get("/books?limit=5").await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let slow = &stack.replicas[2];
    let response = slow
        .http
        .put(slow.admin_url("/faults"))
        .json(&serde_json::json!({ "delay_ms": 2000 }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");

    let mut seen = open_loop_for(booksvc, "/books?limit=5", Duration::from_secs(15)).await;
    let p99 = seen.p99();
    let metrics = booksvc.metrics().await;
    let series = |name: &str| system_tests::metric_value(&metrics, name).unwrap_or(0.0);
    let won = series(r#"upstream_hedges_total{event="won"}"#);
    let sent = series(r#"upstream_hedges_total{event="sent"}"#);
    println!(
        "one replica of three 2 s slow, {RATE} reads/s for 15 s: {} sent, {} 2xx, {} stale, p99 {p99:?}; twins sent {sent}, won {won}",
        seen.sent, seen.ok, seen.stale
    );
    assert_eq!(seen.ok, seen.sent, "every read is answered 2xx: {seen:?}");
    assert!(won >= 1.0, "a twin overtook the slow replica: {won}");
    assert!(
        seen.stale * 200 <= seen.sent,
        "at most 0.5% stale: {} of {}",
        seen.stale,
        seen.sent
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
    assert_eq!(
        series(r#"breaker_transitions_total{from="closed",to="open"}"#),
        0.0,
        "one slow replica must not open the service-wide breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_fails_the_breaker_opens_and_at_most_one_is_ejected() {
    let stack = stack().await;
    let booksvc = &stack.booksvc;
    for _ in 0..10 {
        assert_eq!(booksvc.get("/books?limit=5").await.status(), StatusCode::OK);
    }
    // The database down: every replica answers 503.
    stack.db.stop().await;
    eventually(Duration::from_secs(10), "the breaker open", || async {
        let _ = booksvc.get("/books?limit=5").await;
        (booksvc.breaker_state().await == "open").then_some(())
    })
    .await;
    let ejected = booksvc
        .metric(r#"upstream_endpoints{state="ejected"}"#)
        .await
        .unwrap_or(0.0)
        + booksvc
            .metric(r#"upstream_endpoints{state="probing"}"#)
            .await
            .unwrap_or(0.0);
    assert!(
        ejected <= 1.0,
        "half of three, rounded down, may be out: {ejected}"
    );
    // The stored answer is served meanwhile.
    let response = booksvc.get("/books?limit=5").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(is_stale(header(&response, "cache-status").as_deref()));
}
