//! storagesvc when its database fails for real: stopped, paused, not there at start-up;
//! restarts of the service; SIGTERM with a request in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use system_tests::containers::{Faults, Postgres, free_port, url_for_port};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};

/// A request fails within a bounded time while the database is down.
const FAIL_FAST_BOUND: Duration = Duration::from_secs(1);

/// `GET /books` answers 503 + Retry-After + problem within the fail-fast bound.
async fn assert_fails_fast(app: &TestStoragesvc, path: &str) {
    let started = Instant::now();
    let response = app.get(path).await;
    let elapsed = started.elapsed();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        problem["type"],
        "urn:bookstore:problem:database-unavailable"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        elapsed < FAIL_FAST_BOUND,
        "{path} took {elapsed:?}, bound {FAIL_FAST_BOUND:?}"
    );
}

async fn assert_serves_books(app: &TestStoragesvc) {
    let books = app.books().await;
    assert!(books.iter().any(|b| b["title"] == "One book"), "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_database_gives_fast_503_and_service_recovers_without_restart() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    assert_serves_books(&app).await;

    db.stop().await;
    for path in ["/books", "/books/1", "/books?limit=5"] {
        assert_fails_fast(&app, path).await;
    }
    assert_eq!(app.readiness().await, StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = app
        .http
        .get(app.admin_url("/.well-known/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"]["database"]["status"], "down", "{health}");
    eventually(
        Duration::from_secs(5),
        "database_up 0 in /metrics",
        || async {
            let text = app.metrics().await;
            text.lines().any(|l| l == "database_up 0").then_some(())
        },
    )
    .await;

    db.start_again().await;
    let recovered = Instant::now();
    eventually(
        Duration::from_secs(15),
        "GET /books 200 after the database restarted",
        || async { (app.get("/books").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    eprintln!(
        "fresh answers {:?} after `docker start` returned",
        recovered.elapsed()
    );
    assert_serves_books(&app).await;
    assert_eq!(app.readiness().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_database_gives_fast_503_and_service_recovers_after_unpause() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    assert_serves_books(&app).await;

    db.pause().await;
    for path in ["/books", "/books/1", "/books"] {
        assert_fails_fast(&app, path).await;
    }
    let started = Instant::now();
    assert_eq!(app.readiness().await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "readiness took {:?}",
        started.elapsed()
    );

    db.unpause().await;
    eventually(
        Duration::from_secs(10),
        "GET /books 200 after unpause",
        || async { (app.get("/books").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_serves_books(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_its_database_and_migrates_once_it_appears() {
    let port = free_port();
    let app = TestStoragesvc::spawn(&url_for_port(port), &[]).await;

    assert_eq!(app.readiness().await, StatusCode::SERVICE_UNAVAILABLE);
    assert_fails_fast(&app, "/books").await;

    let _db = Postgres::start_on(port).await;
    app.wait_until_ready(Duration::from_secs(30)).await;
    assert_serves_books(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_books_exist_exactly_once_after_two_restarts() {
    let db = Postgres::start().await;
    for _ in 0..3 {
        let app = TestStoragesvc::spawn_ready(&db.url()).await;
        let books = app.books().await;
        for seed in [
            "One book",
            "Designing Data-Intensive Applications",
            "Release It!",
        ] {
            let copies = books.iter().filter(|b| b["title"] == seed).count();
            assert_eq!(copies, 1, "{seed}: {books:?}");
        }
        assert_eq!(books.len(), 3);
        app.stop().await;
    }
}

/// A caller that says it waits only 200 ms (`x-request-timeout-ms`) gets the 503 within
/// that, not after the 2 s the service would otherwise wait for a paused database: it can
/// then tell "the database is down" from "no answer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_deadline_shortens_the_wait_for_a_paused_database() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn(
        &db.url(),
        &["--db-acquire-timeout", "2s", "--db-query-timeout", "2s"],
    )
    .await;
    app.wait_until_ready(Duration::from_secs(30)).await;
    assert_serves_books(&app).await;

    db.pause().await;
    for path in ["/books", "/books/1"] {
        let started = Instant::now();
        let response = app
            .request(reqwest::Method::GET, path)
            .header("x-request-timeout-ms", "200")
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let retry_after = response.headers().get("retry-after").cloned();
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(retry_after.is_some(), "{path}: Retry-After");
        assert!(
            elapsed < Duration::from_millis(200),
            "{path} took {elapsed:?} with a 200 ms caller deadline"
        );
    }
    // Without the header the service's own bound holds: the answer takes the full 2 s.
    let started = Instant::now();
    let response = app.get("/books").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "took {:?}",
        started.elapsed()
    );
    db.unpause().await;
    eventually(Duration::from_secs(10), "books again", || async {
        (app.get("/books").await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// Problem bodies say what to do, never what is inside: no driver message, no pool, no
/// database name or address, whichever route and however the database is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_bodies_name_no_internals_while_the_database_is_down() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    assert_serves_books(&app).await;

    for fault in ["stop", "pause"] {
        match fault {
            "stop" => db.stop().await,
            _ => db.pause().await,
        }
        let book = serde_json::json!({"title": "Leak check", "author": "A. Writer"});
        for (method, path) in [
            (reqwest::Method::GET, "/books"),
            (reqwest::Method::GET, "/books/1"),
            (reqwest::Method::POST, "/books"),
            (reqwest::Method::PUT, "/books/1"),
            (reqwest::Method::DELETE, "/books/2"),
        ] {
            let response = app
                .request(method.clone(), path)
                .json(&book)
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert!(
                status.is_server_error(),
                "{fault}: {method} {path}: {status}"
            );
            let problem = assert_problem(response, status).await;
            let body = problem.to_string().to_lowercase();
            for word in ["pool", "connection", "postgres", "sqlx", "timed out"] {
                assert!(
                    !body.contains(word),
                    "{fault}: {method} {path}: `{word}` in {problem}"
                );
            }
            assert!(
                !contains_ipv4(&body),
                "{fault}: {method} {path}: an address in {problem}"
            );
        }
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

/// Whether `text` holds something shaped like an IPv4 address (four dot-separated numbers).
fn contains_ipv4(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() >= 4
                && parts
                    .windows(4)
                    .any(|w| w.iter().all(|p| !p.is_empty() && p.len() <= 3))
        })
}
