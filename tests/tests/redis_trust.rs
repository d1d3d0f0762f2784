//! Redis is shared and reachable over the network, so booksvc trusts nothing in it: Redis
//! runs with a password (and a memory bound that evicts), a booksvc with a wrong password
//! still answers fresh, and a value booksvc did not write is never served, even when
//! nothing else is left to serve.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};
use system_tests::{header, is_stale};

const SIGNING_KEY: &str = "the booksvc signing key of the tests";

fn redis_key(target: &str) -> String {
    format!("{}GET {target}", booksvc::LAST_GOOD_PREFIX)
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

/// The value `booksvc` wrote for `path` (canonically `target`), read through it until its
/// background write has landed. (Right after start-up, the first answer may not be kept:
/// it was fetched before booksvc knew the invalidation generation.)
async fn value_in_redis(
    booksvc: &TestBooksvc,
    connection: &redis::aio::MultiplexedConnection,
    path: &str,
    target: &str,
) -> Vec<u8> {
    eventually(Duration::from_secs(5), "a genuine value in Redis", || {
        let mut connection = connection.clone();
        let key = redis_key(target);
        async move {
            assert_eq!(booksvc.get(path).await.status(), StatusCode::OK);
            connection.get::<_, Option<Vec<u8>>>(key).await.unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_planted_in_redis_under_a_booksvc_key_is_never_served() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let flags = ["--cache-signing-key", SIGNING_KEY];
    // `writer` stores genuine answers; `reader`, a second replica with the same key and an
    // empty memory, must take everything from Redis.
    let writer = TestBooksvc::spawn(storagesvc.address, &redis.url(), &flags).await;
    let reader = TestBooksvc::spawn(storagesvc.address, &redis.url(), &flags).await;
    let mut connection = redis.connection().await;

    let fresh = writer.get("/books/2").await.bytes().await.unwrap();
    let book_two = value_in_redis(&writer, &connection, "/books/2", "/books/2").await;
    let short_list = value_in_redis(
        &writer,
        &connection,
        "/books?limit=2",
        "/books?limit=2&offset=0",
    )
    .await;
    let generation: u64 = connection
        .get(format!("{}generation", booksvc::LAST_GOOD_PREFIX))
        .await
        .unwrap();

    let planted = r#"{"id":1,"title":"PLANTED","author":"x","desc":""}"#;
    let plants: [(&str, Vec<u8>); 4] = [
        // The format before values were signed.
        (
            "/books/1",
            format!("v1\n1700000000000\napplication/json\n{planted}").into_bytes(),
        ),
        // The current format and generation, with a made-up tag.
        (
            "/books/3",
            format!(
                "v2\n{}\n{generation}\n1700000000000\napplication/json\n{planted}",
                "0".repeat(64)
            )
            .into_bytes(),
        ),
        // A genuine value, copied to another key.
        ("/books?limit=7&offset=0", book_two.clone()),
        // A genuine value, truncated.
        (
            "/books?limit=2&offset=0",
            short_list[..short_list.len() - 5].to_vec(),
        ),
    ];
    for (target, value) in &plants {
        let _: () = connection.set(redis_key(target), value).await.unwrap();
    }

    storagesvc.stop().await;

    // The genuine value another replica wrote is served, stale, byte for byte...
    let stale = reader.get("/books/2").await;
    assert_eq!(stale.status(), StatusCode::OK);
    let cache_status = header(&stale, "cache-status");
    assert!(is_stale(cache_status.as_deref()), "{cache_status:?}");
    assert_eq!(stale.bytes().await.unwrap(), fresh);
    // ... and none of the planted ones: nothing trustworthy is stored, so 503.
    for (target, _) in &plants {
        let response = reader.get(target).await;
        let body = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(!body.to_string().contains("PLANTED"), "{target}: {body}");
    }
    let refused = reader
        .metric(r#"last_good_refused_total{reason="unverified"}"#)
        .await
        .unwrap_or(0.0);
    assert!(refused >= plants.len() as f64, "{refused} values refused");
}
