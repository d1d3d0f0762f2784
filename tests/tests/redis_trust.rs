//! Redis is shared and reachable over the network: it runs with a password (and a memory
//! bound that evicts), and a booksvc with a wrong password still answers fresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::StatusCode;
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::header;
use system_tests::poll::eventually;
use system_tests::storagesvc::TestStoragesvc;

fn redis_key(target: &str) -> String {
    format!("booksvc:v1:GET {target}")
}

/// The error of a PING sent with `url`, if any.
async fn ping(url: &str) -> Result<String, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut connection).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_a_connection_without_the_password_and_evicts_under_its_memory_bound() {
    let redis = Redis::start().await;

    let anonymous = ping(&redis.url_with_password("")).await.unwrap_err();
    assert!(anonymous.to_string().contains("NOAUTH"), "{anonymous}");
    let wrong = ping(&redis.url_with_password("not-the-password"))
        .await
        .unwrap_err();
    assert_eq!(
        wrong.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{wrong}"
    );
    assert_eq!(ping(&redis.url()).await.unwrap(), "PONG");

    let mut redis = redis.connection().await;
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(&mut redis)
        .await
        .unwrap();
    let setting = |name: &str| {
        let at = config.iter().position(|item| item == name).unwrap();
        config[at + 1].clone()
    };
    assert_eq!(setting("maxmemory"), (64 * 1024 * 1024).to_string());
    assert_eq!(setting("maxmemory-policy"), "allkeys-lru");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booksvc_with_a_wrong_redis_password_serves_fresh_answers_and_counts_the_errors() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let booksvc = TestBooksvc::spawn(
        storagesvc.address,
        &redis.url_with_password("not-the-password"),
        &[],
    )
    .await;

    for _ in 0..3 {
        let response = booksvc.get("/books/1").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "cache-status").as_deref(),
            Some("booksvc; fwd=miss; stored")
        );
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap()["title"],
            "One book"
        );
    }
    eventually(
        Duration::from_secs(5),
        "failed Redis writes counted",
        || async {
            booksvc
                .metric(r#"last_good_redis_errors_total{operation="write"}"#)
                .await
                .filter(|errors| *errors >= 1.0)
        },
    )
    .await;
    assert_eq!(redis.count_keys(&redis_key("*")).await, 0);
}
