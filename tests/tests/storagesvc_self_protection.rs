//! storagesvc protects itself whatever its callers do: while its database is known to be
//! down, and beyond as many requests in progress as its pool has connections, `/books*`
//! is answered `503` + `Retry-After` at once, never after a wait; and after an outage its
//! pool is full again within moments, so the first burst does not wait for connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::json;
use system_tests::containers::{Faults, Postgres};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};
use system_tests::{header, metric_value};
use tokio::task::JoinSet;

/// A refusal while the database is known down: no pool, no database, a few milliseconds.
const KNOWN_DOWN_BOUND: Duration = Duration::from_millis(20);
/// A refusal beyond the requests in progress, in the middle of a concurrent burst.
const OVERLOADED_BOUND: Duration = Duration::from_millis(50);
/// How soon after the database is healthy again the pool must be full.
const REFILL_BOUND: Duration = Duration::from_secs(2);
/// storagesvc's default pool size (`DB_MAX_CONNECTIONS`).
const DEFAULT_POOL: f64 = 16.0;
/// The load kept on the service while its database goes away and comes back.
const READS_PER_SECOND: u32 = 200;

/// A `GET /books` and how long it took.
async fn timed_get(app: &TestStoragesvc) -> (Response, Duration) {
    let started = Instant::now();
    let response = app.get("/books").await;
    (response, started.elapsed())
}

/// Asserts a `503` + `Retry-After` problem of `kind` (`database-unavailable`,
/// `overloaded`).
async fn assert_refused(response: Response, kind: &str) {
    let retry_after = header(&response, "retry-after");
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem["type"], format!("urn:bookstore:problem:{kind}"));
    assert!(retry_after.is_some(), "Retry-After with {problem}");
}

async fn refused(app: &TestStoragesvc, reason: &str) -> f64 {
    let series = format!("database_requests_refused_total{{reason=\"{reason}\"}}");
    app.metric(&series).await.unwrap_or(0.0)
}

async fn wait_until_known_down(app: &TestStoragesvc) {
    eventually(Duration::from_secs(10), "database_up 0", || async {
        (app.metric("database_up").await == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_down_database_is_answered_503_within_milliseconds() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;

    for fault in ["stop", "pause"] {
        match fault {
            "stop" => db.stop().await,
            _ => db.pause().await,
        }
        wait_until_known_down(&app).await;
        let refused_before = refused(&app, "database_down").await;

        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let (response, took) = timed_get(&app).await;
            assert_refused(response, "database-unavailable").await;
            assert!(
                took <= KNOWN_DOWN_BOUND,
                "{fault}: a 503 took {took:?}, bound {KNOWN_DOWN_BOUND:?}"
            );
            worst = worst.max(took);
        }
        eprintln!("database {fault}: known down, worst of 20 answers {worst:?}");
        assert_eq!(refused(&app, "database_down").await - refused_before, 20.0);

        match fault {
            "stop" => db.start_again().await,
            _ => db.unpause().await,
        }
        eventually(Duration::from_secs(15), "books again", || async {
            (app.get("/books").await.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
}

/// The watcher checks every 2 s while all is well, but a request that finds the database
/// hanging marks it down: the request after it is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_that_finds_the_database_hanging_spares_the_next_ones_the_wait() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    assert_eq!(app.get("/books").await.status(), StatusCode::OK);

    db.pause().await;
    let (first, first_took) = timed_get(&app).await;
    assert_refused(first, "database-unavailable").await;
    let (second, second_took) = timed_get(&app).await;
    assert_refused(second, "database-unavailable").await;
    eprintln!("paused: the first 503 took {first_took:?}, the next {second_took:?}");
    assert!(
        first_took < Duration::from_secs(1),
        "the first took {first_took:?}"
    );
    assert!(
        second_took <= KNOWN_DOWN_BOUND,
        "the next took {second_took:?}, bound {KNOWN_DOWN_BOUND:?}"
    );
    db.unpause().await;
}

/// With a pool of 2 and two writes held in their commit (the database is healthy, only
/// slow to confirm), a burst of reads gets `503 overloaded` at once: nothing queues for a
/// connection. The held writes are not disturbed and complete once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_pool_size_are_refused_at_once_not_queued() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn(
        &db.url(),
        &["--db-max-connections", "2", "--db-commit-timeout", "30s"],
    )
    .await;
    app.wait_until_ready(Duration::from_secs(30)).await;

    db.hold_commits().await;
    // The hold reaches each database session when it next runs a command, so a write sent
    // at once may still commit: until a read is refused, every write that ended is
    // replaced by another, so that two are held in their commit.
    let writes: Mutex<Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>>> =
        Mutex::new(Vec::new());
    eventually(
        Duration::from_secs(10),
        "a read refused as overloaded while two writes are held",
        || async {
            let ended: Vec<_> = {
                let mut writes = writes.lock().unwrap();
                let ended = writes.extract_if(.., |write| write.is_finished()).collect();
                for n in writes.len()..2 {
                    let book = json!({"title": format!("Held {n}"), "author": "A. Writer"});
                    writes.push(tokio::spawn(
                        app.request(Method::POST, "/books").json(&book).send(),
                    ));
                }
                ended
            };
            // A write that ended committed before the hold, or was itself refused (a read
            // held a place): either way, it was not held.
            for write in ended {
                let status = write.await.unwrap().unwrap().status();
                assert!(
                    [StatusCode::CREATED, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
                    "a write that was not held: {status}"
                );
            }
            let response = app.get("/books").await;
            (header(&response, "retry-after").is_some()
                && response.status() == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
        },
    )
    .await;
    let held_writes = writes.into_inner().unwrap();

    let refused_before = refused(&app, "overloaded").await;
    let mut burst = JoinSet::new();
    for _ in 0..20 {
        let request = app.request(Method::GET, "/books");
        burst.spawn(async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            (response, started.elapsed())
        });
    }
    let mut worst = Duration::ZERO;
    for (response, took) in burst.join_all().await {
        assert_refused(response, "overloaded").await;
        worst = worst.max(took);
    }
    eprintln!("20 concurrent reads beyond the pool: worst refusal {worst:?}");
    assert!(
        worst <= OVERLOADED_BOUND,
        "a refusal took {worst:?}, bound {OVERLOADED_BOUND:?}"
    );
    assert_eq!(refused(&app, "overloaded").await - refused_before, 20.0);
    assert_eq!(app.metric("database_up").await, Some(1.0), "not an outage");

    db.release_commits().await;
    assert_eq!(held_writes.len(), 2, "two writes held in their commit");
    for write in held_writes {
        assert_eq!(write.await.unwrap().unwrap().status(), StatusCode::CREATED);
    }
    assert_eq!(app.get("/books").await.status(), StatusCode::OK);
}

/// `GET /books` at a steady rate in an open loop (each request on its own task, so slow
/// answers do not slow the rate), counting answers by status (0: no answer), until
/// dropped.
struct ReadLoad {
    task: tokio::task::JoinHandle<()>,
    statuses: Arc<Mutex<BTreeMap<u16, u32>>>,
}

impl ReadLoad {
    fn start(app: &TestStoragesvc, per_second: u32) -> Self {
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let request = app.request(Method::GET, "/books");
        let counts = Arc::clone(&statuses);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second);
            loop {
                ticks.tick().await;
                let request = request.try_clone().unwrap();
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let status = request.send().await.map_or(0, |r| r.status().as_u16());
                    *counts.lock().unwrap().entry(status).or_insert(0) += 1;
                });
            }
        });
        Self { task, statuses }
    }

    fn statuses(&self) -> BTreeMap<u16, u32> {
        self.statuses.lock().unwrap().clone()
    }
}

impl Drop for ReadLoad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the restarted database accepts connections and returns an instant no later
/// than the moment it began to: the start of the last probe that still found it not
/// ready. A probe (`docker exec`) takes a while, so the time measured from here is an
/// upper bound.
async fn healthy_no_earlier_than(db: &Postgres) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_refusal = Instant::now();
    loop {
        let probe = Instant::now();
        if db.accepts_connections().await {
            return last_refusal;
        }
        assert!(probe < deadline, "PostgreSQL did not come back within 30 s");
        last_refusal = probe;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_under_load_the_pool_is_full_again_within_2_s() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    let ready = Instant::now();
    eventually(
        Duration::from_secs(10),
        "a full pool after start-up",
        || async { (app.metric("db_pool_connections").await == Some(DEFAULT_POOL)).then_some(()) },
    )
    .await;
    eprintln!("pool full {:?} after readiness", ready.elapsed());

    let load = ReadLoad::start(&app, READS_PER_SECOND);
    eventually(Duration::from_secs(5), "the load answered", || async {
        (load.statuses().get(&200).copied().unwrap_or(0) >= 50).then_some(())
    })
    .await;

    db.stop().await;
    wait_until_known_down(&app).await;
    // The connections to the stopped database are closed, not kept to fail requests
    // (sqlx may be opening one again meanwhile: that one counts, but is not idle).
    eventually(
        Duration::from_secs(5),
        "no idle connection kept",
        || async {
            let metrics = app.metrics().await;
            let idle = metric_value(&metrics, "db_pool_idle_connections");
            let size = metric_value(&metrics, "db_pool_connections");
            (idle == Some(0.0) && size < Some(DEFAULT_POOL)).then_some(())
        },
    )
    .await;

    db.start_again().await;
    let healthy = healthy_no_earlier_than(&db).await;
    eventually(Duration::from_secs(10), "a full pool again", || async {
        (app.metric("db_pool_connections").await == Some(DEFAULT_POOL)).then_some(())
    })
    .await;
    let refilled = healthy.elapsed();
    let idle = app.metric("db_pool_idle_connections").await;
    eprintln!(
        "pool full at most {refilled:?} after the database was healthy again, under \
         {READS_PER_SECOND} reads/s ({idle:?} idle)"
    );
    assert!(
        refilled <= REFILL_BOUND,
        "the pool took {refilled:?} to fill, bound {REFILL_BOUND:?}"
    );

    eventually(Duration::from_secs(5), "books again", || async {
        (app.get("/books").await.status() == StatusCode::OK).then_some(())
    })
    .await;
    let statuses = load.statuses();
    eprintln!("answers under load, by status: {statuses:?}");
    assert!(
        statuses.keys().all(|status| [200, 503].contains(status)),
        "only books or 503s: {statuses:?}"
    );
}
