//! booksvc when Redis fails, with everything real: Redis is stopped or paused under a
//! running booksvc. Redis only backs the last-good store, so its failure must cost nothing
//! visible: fresh answers keep coming without waiting for it, stale answers still come from
//! the memory copy when the database fails too, and readiness stays 200 and says Redis is
//! down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::{Method, StatusCode};
use system_tests::booksvc::{REQUEST_DEADLINE, TestBooksvc};
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::poll::eventually;
use system_tests::storagesvc::TestStoragesvc;
use system_tests::{header, is_stale};
use tokio::task::JoinSet;

/// `CACHE_READ_TIMEOUT`'s default: the longest a Redis operation may hold a request.
const CACHE_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling slack on a busy two-core machine, on top of a promised bound.
const SLACK: Duration = Duration::from_millis(50);
/// Once the breaker is open, a stale answer must come this fast (as in the read-path tests).
const OPEN_BREAKER_BOUND: Duration = Duration::from_millis(50);
/// storagesvc's `DB_MAX_CONNECTIONS` default: the size of its (fixed-size) pool.
const STORAGESVC_POOL: usize = 16;
/// Reads measured before and during a fault.
const READS: usize = 20;

/// The tests of this file measure latencies, so they run one at a time. Three stacks
/// starting at once on a two-core machine starve storagesvc's connection set-up: a pooled
/// connection then takes longer to open than the 500 ms acquire timeout, is abandoned, and
/// the pool cannot be filled before timing starts (see `open_all_pooled_connections`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FRESH: &str = "booksvc; fwd=miss; stored";

struct Stack {
    db: Postgres,
    redis: Redis,
    _storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

async fn stack() -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), &[]).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    open_all_pooled_connections(&db, &storagesvc).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), &[]).await;
    Stack {
        db,
        redis,
        _storagesvc: storagesvc,
        booksvc,
    }
}

/// Makes sure every connection of storagesvc's pool is open before anything is timed.
///
/// storagesvc fills its pool before it reports ready, so this normally finds it full at
/// once; it stays as the timing's precondition, checked where PostgreSQL counts the
/// sessions. Opening a connection, a PostgreSQL process start and a password exchange,
/// takes 100 ms or more here, and a timed read must not pay for one.
async fn open_all_pooled_connections(db: &Postgres, storagesvc: &TestStoragesvc) {
    eventually(
        Duration::from_secs(30),
        "storagesvc's pooled connections are all open",
        || async {
            let mut reads = JoinSet::new();
            for _ in 0..STORAGESVC_POOL {
                reads.spawn(storagesvc.request(Method::GET, "/books").send());
            }
            reads.join_all().await;
            (db.sessions_of("storagesvc").await >= STORAGESVC_POOL).then_some(())
        },
    )
    .await;
}

/// A fresh read of the list: its body and how long it took. Asserts it is fresh.
async fn fresh_read(booksvc: &TestBooksvc) -> (Bytes, Duration) {
    let started = Instant::now();
    let response = booksvc.get("/books").await;
    let status = response.status();
    let cache_status = header(&response, "cache-status");
    let body = response.bytes().await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache_status.as_deref(), Some(FRESH), "forwarded and stored");
    (body, took)
}

/// A stale read of the list: its body and how long it took. Asserts it is stale.
async fn stale_read(booksvc: &TestBooksvc) -> (Bytes, Duration) {
    let started = Instant::now();
    let response = booksvc.get("/books").await;
    let status = response.status();
    let cache_status = header(&response, "cache-status");
    let age = header(&response, "age");
    let body = response.bytes().await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(is_stale(cache_status.as_deref()), "{cache_status:?}");
    assert!(
        age.is_some_and(|age| age.parse::<u64>().is_ok()),
        "Age in whole seconds"
    );
    (body, took)
}

/// How Redis fails under a running booksvc.
#[derive(Debug, Clone, Copy)]
enum RedisFault {
    /// `docker stop`: connections close, new ones are refused.
    Stopped,
    /// `docker pause`: connections neither fail nor answer.
    Paused,
}

impl RedisFault {
    async fn inject(self, redis: &Redis) {
        match self {
            RedisFault::Stopped => redis.stop().await,
            RedisFault::Paused => redis.pause().await,
        }
    }
}

/// Latencies in milliseconds, for the test output.
fn millis(latencies: &[Duration]) -> String {
    let shown: Vec<String> = latencies
        .iter()
        .map(|took| format!("{:.1}", took.as_secs_f64() * 1000.0))
        .collect();
    format!("[{}] ms", shown.join(", "))
}

fn median(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[latencies.len() / 2]
}

/// Readiness is 200 and reports Redis down, within Redis's timeout.
async fn assert_ready_with_redis_down(booksvc: &TestBooksvc) {
    let started = Instant::now();
    let (status, health) = booksvc.readiness().await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["checks"]["redis"]["status"], "down", "{health}");
    assert!(
        took <= CACHE_READ_TIMEOUT + SLACK,
        "readiness took {took:?} with Redis down"
    );
}

/// With Redis failed by `fault`, fresh reads are as fast as before it, give or take the
/// Redis timeout: the Redis write of a fresh answer happens off the response path.
async fn assert_fresh_reads_do_not_wait_for_redis(stack: &Stack, fault: RedisFault) {
    let (body, _) = fresh_read(&stack.booksvc).await;
    let mut before = Vec::new();
    for _ in 0..READS {
        before.push(fresh_read(&stack.booksvc).await.1);
    }
    let normal = median(before.clone());
    let (status, health) = stack.booksvc.readiness().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["checks"]["redis"]["status"], "up", "{health}");

    fault.inject(&stack.redis).await;

    let bound = normal + CACHE_READ_TIMEOUT + SLACK;
    let mut during = Vec::new();
    for _ in 0..READS {
        let (fresh_body, took) = fresh_read(&stack.booksvc).await;
        assert_eq!(fresh_body, body);
        assert!(
            took <= bound,
            "a fresh read with Redis {fault:?} took {took:?}; normal is {normal:?}, bound {bound:?}"
        );
        during.push(took);
    }
    assert_ready_with_redis_down(&stack.booksvc).await;
    println!(
        "Redis {fault:?}: fresh reads before {} (median {normal:.1?}); during {} (bound {bound:.1?})",
        millis(&before),
        millis(&during),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_answers_never_wait_for_a_stopped_redis_and_readiness_stays_200() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    assert_fresh_reads_do_not_wait_for_redis(&stack, RedisFault::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_answers_never_wait_for_a_paused_redis_and_readiness_stays_200() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    assert_fresh_reads_do_not_wait_for_redis(&stack, RedisFault::Paused).await;
    stack.redis.unpause().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_memory_copy_when_redis_and_the_database_are_both_down() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let (fresh_body, _) = fresh_read(&stack.booksvc).await;

    tokio::join!(stack.redis.stop(), stack.db.stop());

    // The first read after the fault: stale, within the request deadline.
    let (body, took) = stale_read(&stack.booksvc).await;
    assert_eq!(body, fresh_body, "the stored body, byte for byte");
    assert!(took <= REQUEST_DEADLINE, "first stale answer took {took:?}");

    // Every read is stale until the breaker opens; then each comes at once.
    eventually(Duration::from_secs(10), "the breaker opens", || async {
        let (body, _) = stale_read(&stack.booksvc).await;
        assert_eq!(body, fresh_body);
        (stack.booksvc.breaker_state().await == "open").then_some(())
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..READS {
        let (body, took) = stale_read(&stack.booksvc).await;
        assert_eq!(body, fresh_body);
        assert!(
            took <= OPEN_BREAKER_BOUND,
            "stale answer with the breaker open took {took:?}"
        );
        open.push(took);
    }
    assert_ready_with_redis_down(&stack.booksvc).await;

    // All from memory: Redis was never needed.
    let from = |source: &'static str| stack.booksvc.fallbacks_from(source);
    assert!(from("memory").await >= (READS + 2) as f64);
    assert_eq!(from("redis").await, 0.0);
    assert_eq!(from("none").await, 0.0);
    println!(
        "Redis and database down: first stale read {took:.1?}; with the breaker open {}",
        millis(&open)
    );
}
