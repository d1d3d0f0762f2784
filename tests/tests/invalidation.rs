//! Writes invalidate (docs/architecture.md, "The last-good store"): after a successful update and delete through one booksvc
//! replica, no replica sharing the Redis shows the old state in a stale answer, by id or
//! in the list.
//!
//! booksvc's design: a write replaces the invalidation generation in Redis and announces
//! it, so every answer stored before it is dropped by every replica. With storagesvc gone
//! afterwards, a key read again since the write is answered stale with the new state; a
//! key not read since is a `503`. The test asserts exactly that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::json;
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};
use system_tests::{header, is_stale};

const SIGNING_KEY: &str = "the booksvc signing key of the tests";
const OLD_TITLE: &str = "One book";
const NEW_TITLE: &str = "One book, revised";

/// The generation in an entry booksvc stored (`v2\n<tag>\n<generation>\n...`).
fn generation_of(value: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(value);
    text.split('\n').nth(2)?.parse().ok()
}

async fn titles(booksvc: &TestBooksvc, path: &str) -> (StatusCode, Option<String>, String) {
    let response = booksvc.get(path).await;
    let status = response.status();
    let cache_status = header(&response, "cache-status");
    (status, cache_status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_and_a_deleted_book_never_appear_in_a_later_stale_answer_on_any_replica() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let flags = ["--cache-signing-key", SIGNING_KEY];
    let a = TestBooksvc::spawn(storagesvc.address, &redis.url(), &flags).await;
    let b = TestBooksvc::spawn(storagesvc.address, &redis.url(), &flags).await;
    let replicas = [("A", &a), ("B", &b)];

    // Both replicas store book 1, book 2 and the list.
    for (name, replica) in replicas {
        for path in ["/books/1", "/books/2", "/books"] {
            let (status, cache_status, body) = titles(replica, path).await;
            assert_eq!(status, StatusCode::OK, "{name} {path}");
            assert_eq!(cache_status.as_deref(), Some("booksvc; fwd=miss; stored"));
            if path != "/books/2" {
                assert!(body.contains(OLD_TITLE), "{name} {path}: {body}");
            }
        }
    }
    let connection = redis.connection().await;
    let book_key = format!("{}GET /books/1", booksvc::LAST_GOOD_PREFIX);
    let generation_key = format!("{}generation", booksvc::LAST_GOOD_PREFIX);
    let generation = || {
        let mut connection = connection.clone();
        let key = generation_key.clone();
        async move { connection.get::<_, Option<u64>>(key).await.unwrap() }
    };
    let before = generation().await.expect("a generation in Redis");

    // Update book 1 and delete book 2 through A.
    let updated = a
        .write(Method::PUT, "/books/1")
        .json(&json!({"title": NEW_TITLE, "author": "John Doe", "desc": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let deleted = a.write(Method::DELETE, "/books/2").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let after = generation().await.expect("a generation in Redis");
    assert_ne!(after, before, "the writes replaced the generation in Redis");

    // B reads book 1 again (fresh, the new title), and stores it under the new generation
    // once it has heard of the writes.
    eventually(
        Duration::from_secs(5),
        "book 1 stored by B after the writes",
        || {
            let mut connection = connection.clone();
            let key = book_key.clone();
            let b = &b;
            async move {
                let (status, _, body) = titles(b, "/books/1").await;
                assert_eq!(status, StatusCode::OK);
                assert!(body.contains(NEW_TITLE), "fresh after the update: {body}");
                let stored = connection.get::<_, Option<Vec<u8>>>(key).await.unwrap()?;
                (generation_of(&stored) == Some(after)).then_some(())
            }
        },
    )
    .await;

    storagesvc.stop().await;

    for (name, replica) in replicas {
        // Book 1: stale, and only in its new state (B stored it after the write; A finds
        // it in Redis, its own copy being gone).
        let (status, cache_status, body) = titles(replica, "/books/1").await;
        assert_eq!(status, StatusCode::OK, "{name} /books/1: {body}");
        assert!(
            is_stale(cache_status.as_deref()),
            "{name} /books/1: {cache_status:?}"
        );
        assert!(body.contains(NEW_TITLE), "{name} /books/1: {body}");
        assert!(
            !body.contains(&format!("\"{OLD_TITLE}\"")),
            "{name} /books/1: {body}"
        );

        // Book 2 and the list were not read since the writes: nothing may be served.
        for path in ["/books/2", "/books", "/"] {
            let response = replica.get(path).await;
            let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
            assert!(
                !problem.to_string().contains(OLD_TITLE),
                "{name} {path}: {problem}"
            );
        }
    }
}
