//! storagesvc's answer to a write says what happened to it: `503` means "not applied", so
//! a client may retry blindly; `504` means "the outcome is unknown, it may have been
//! applied". A commit held half-way (its record written, its answer not yet sent) must
//! never be answered `503`.
//!
//! Commits are held with a synchronous standby that never comes
//! ([`Postgres::hold_commits`]): PostgreSQL writes the commit and then waits; the statement
//! timeout does not end that wait, and a client going away keeps the commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use system_tests::containers::{Faults, Postgres};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};

/// storagesvc's default commit bound (`DB_COMMIT_TIMEOUT`).
const DEFAULT_COMMIT_BOUND: Duration = Duration::from_secs(2);
/// The commit bound the second test gives storagesvc.
const COMMIT_BOUND: Duration = Duration::from_millis(300);
/// Slack for a busy test machine on top of a bound.
const SLACK: Duration = Duration::from_millis(700);

async fn count(db: &Postgres, condition: &str) -> u32 {
    db.psql(&format!("SELECT count(*) FROM books WHERE {condition}"))
        .await
        .parse()
        .unwrap()
}

/// With the default settings a held commit outlasts the query bound (where storagesvc
/// used to answer `503`) and then the commit bound: `504`, never `503`, and the book
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_commit_is_never_answered_503() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;

    db.hold_commits().await;
    let started = Instant::now();
    let response = app
        .post_book(
            &json!({"title": "Held commit", "author": "A. Writer"}),
            None,
        )
        .await;
    let status = response.status();
    let elapsed = started.elapsed();
    eprintln!("a held commit was answered {status} after {elapsed:?}");
    db.release_commits().await;

    assert_eq!(
        count(&db, "title = 'Held commit'").await,
        1,
        "the commit went through"
    );
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "a write that was applied was answered {status}"
    );
    assert!(
        elapsed >= DEFAULT_COMMIT_BOUND && elapsed < DEFAULT_COMMIT_BOUND + SLACK,
        "answered after {elapsed:?}"
    );
}

/// Past the commit bound, every kind of write answers `504` with a problem that says it
/// may have been applied, within the bound; and each was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_commit_outlasts_the_commit_bound_answer_504() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn(&db.url(), &["--db-commit-timeout", "300ms"]).await;
    app.wait_until_ready(Duration::from_secs(30)).await;
    let book = json!({"title": "Outcome unknown", "author": "A. Writer"});

    db.hold_commits().await;
    for (method, path) in [
        (Method::POST, "/books"),
        (Method::PUT, "/books/2"),
        (Method::DELETE, "/books/3"),
    ] {
        let started = Instant::now();
        let response = app
            .request(method.clone(), path)
            .json(&book)
            .header("Idempotency-Key", "held-commit-key")
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let retry_after = response.headers().get("retry-after").cloned();
        let problem = assert_problem(response, StatusCode::GATEWAY_TIMEOUT).await;
        assert_eq!(
            problem["type"], "urn:bookstore:problem:outcome-unknown",
            "{method} {path}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("may have been applied"),
            "{method} {path}: {problem}"
        );
        assert!(retry_after.is_none(), "{method} {path}: no blind retry");
        assert!(
            elapsed >= COMMIT_BOUND && elapsed < COMMIT_BOUND + SLACK,
            "{method} {path} took {elapsed:?}"
        );
    }
    db.release_commits().await;

    // "May have been applied": here every one was.
    eventually(
        Duration::from_secs(5),
        "all three writes applied",
        || async {
            let created = count(&db, "title = 'Outcome unknown' AND id > 3").await == 1;
            let updated = count(&db, "id = 2 AND title = 'Outcome unknown'").await == 1;
            let deleted = count(&db, "id = 3").await == 0;
            (created && updated && deleted).then_some(())
        },
    )
    .await;
    // And the service goes on writing normally once commits are answered again.
    let after = app
        .post_book(&json!({"title": "After", "author": "A. Writer"}), None)
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
}

/// A write whose statements hang (the database is paused before it) is cut off before
/// `COMMIT` was sent: `503`, and after the database is back nothing was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_before_its_commit_answers_503_and_is_not_applied() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    // A connection used a moment ago is not pinged: the write goes straight to its
    // statements, which hang in the paused database.
    assert_eq!(app.get("/books/1").await.status(), StatusCode::OK);

    db.pause().await;
    let response = app
        .post_book(
            &json!({"title": "Never applied", "author": "A. Writer"}),
            None,
        )
        .await;
    let update = app
        .request(Method::PUT, "/books/2")
        .json(&json!({"title": "Never applied", "author": "A. Writer"}))
        .send()
        .await
        .unwrap();
    let statuses = [response.status(), update.status()];
    db.unpause().await;

    assert_eq!(statuses, [StatusCode::SERVICE_UNAVAILABLE; 2]);
    eventually(Duration::from_secs(10), "books again", || async {
        (app.get("/books").await.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(count(&db, "title = 'Never applied'").await, 0);
}
