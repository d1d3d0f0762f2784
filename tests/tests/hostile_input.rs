//! booksvc's port is the internet: hostile paths and queries, sent byte for byte, never
//! reach a storagesvc route other than `/books` and `/books/{id}`, never make booksvc
//! fail (no 5xx), are refused by booksvc itself whether storagesvc is up or not, and
//! aliases of one request share one Redis key.
//!
//! A counting proxy between booksvc and storagesvc records every request target that
//! arrives; PostgreSQL and Redis are real containers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::counting_proxy::CountingProxy;
use system_tests::poll::eventually;
use system_tests::raw_http;
use system_tests::storagesvc::TestStoragesvc;

/// Requests that mean the same thing, and the one canonical target booksvc must send.
const ALIASES: [(&str, &[&str]); 3] = [
    (
        "/books?limit=100&offset=0",
        &[
            "/",
            "/books",
            "/books?",
            "/books?limit=100&offset=0",
            "/books?offset=0&limit=100",
            "/books?limit=0100",
            "/books?&limit=100&&",
            "/books?%6Cimit=1%30%30",
            "/?offset=000",
        ],
    ),
    (
        "/books?limit=10&offset=0",
        &[
            "/books?limit=10",
            "/books?limit=010",
            "/books?limit=%31%30",
            "/books?offset=0&limit=10",
        ],
    ),
    (
        "/books/1",
        &[
            "/books/1",
            "/books/01",
            "/books/%31",
            "/books/0001",
            "/books/1?",
        ],
    ),
];

/// Requests booksvc must refuse itself (400, or 404 for a path that is no route), with
/// nothing sent upstream.
const HOSTILE: [&str; 37] = [
    // Encoded dots and slashes, aiming at storagesvc's other routes.
    "/books/%2e%2e/metrics",
    "/books/%2E%2E/.well-known/health",
    "/books/..%2fmetrics",
    "/books/..%2F..%2Fmetrics",
    "/books/%2e%2e%2fmetrics",
    "/books/1%2f..%2f..%2fmetrics",
    "/books/../metrics",
    "/books/./1",
    "/%2e%2e/.well-known/health",
    "/%2e%2e/metrics",
    "/.well-known/../metrics",
    // Backslashes, raw and encoded.
    "/books/..\\metrics",
    "/books/%5c..%5cmetrics",
    "/books\\1",
    // Double encoding.
    "/books/%252e%252e/metrics",
    "/books/%252e",
    "/books/%2531",
    // Malformed or out-of-range ids.
    "/books/%zz",
    "/books/abc",
    "/books/0",
    "/books/-1",
    "/books/+1",
    "/books/1.5",
    "/books/1%00",
    "/books/9223372036854775808",
    "/books/1234567890123456789012345678901234567890",
    "/books//1",
    "/books/1/",
    // Junk, repeated and malformed parameters.
    "/books/1?x=1",
    "/books?x=1",
    "/books?limit=abc",
    "/books?limit=0",
    "/books?limit=1001",
    "/books?limit=10&limit=10",
    "/books?limit=10&offset=0&offset=1",
    "/books?limit=%zz",
    "/books?offset=-1",
];

fn is_storagesvc_books_route(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    path == "/books"
        || path
            .strip_prefix("/books/")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_and_queries_never_reach_another_storagesvc_route_and_aliases_share_one_key()
{
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let proxy = CountingProxy::start(storagesvc.address).await;
    let booksvc = TestBooksvc::spawn(proxy.address, &redis.url(), &[]).await;

    // Aliases: each answered 200, and sent upstream only in canonical form.
    for (canonical, aliases) in ALIASES {
        for alias in aliases {
            let before = proxy.arrivals().len();
            let response = raw_http::get(booksvc.address, alias).await;
            assert_eq!(response.status, 200, "{alias}: {}", response.text);
            let sent: Vec<String> = proxy.arrivals()[before..]
                .iter()
                .map(|arrival| arrival.target.clone())
                .collect();
            assert_eq!(sent, [canonical], "{alias} is sent upstream as {canonical}");
        }
    }

    // Hostile input: refused by booksvc, nothing sent upstream, never a 5xx.
    let before = proxy.arrivals().len();
    for target in HOSTILE {
        let response = raw_http::get(booksvc.address, target).await;
        assert!(
            matches!(response.status, 400 | 404),
            "{target}: {} {}",
            response.status,
            response.text
        );
    }
    let leaked: Vec<String> = proxy.arrivals()[before..]
        .iter()
        .map(|arrival| arrival.target.clone())
        .collect();
    assert!(leaked.is_empty(), "sent upstream: {leaked:?}");
    for arrival in proxy.arrivals() {
        assert!(
            is_storagesvc_books_route(&arrival.target),
            "storagesvc got {}",
            arrival.target
        );
    }

    // One Redis key per canonical request, however many aliases asked for it.
    let pattern = format!("{}GET *", booksvc::LAST_GOOD_PREFIX);
    // Writes to Redis run in the background: wait until every one booksvc started has been
    // served by Redis, so that a stray key, if any, is there to be counted.
    let started = booksvc
        .metric("last_good_redis_writes_total")
        .await
        .expect("booksvc counts its Redis writes");
    eventually(
        Duration::from_secs(5),
        "booksvc's Redis writes to land",
        || async { (redis.calls_of("setex").await as f64 >= started).then_some(()) },
    )
    .await;
    assert_eq!(redis.count_keys(&pattern).await, ALIASES.len());

    // With storagesvc gone, bad input is still bad input: booksvc's 400, not a 503.
    storagesvc.stop().await;
    let before = proxy.arrivals().len();
    for target in HOSTILE {
        let response = raw_http::get(booksvc.address, target).await;
        assert!(
            matches!(response.status, 400 | 404),
            "{target} with storagesvc down: {} {}",
            response.status,
            response.text
        );
    }
    for target in [
        "/books/%zz",
        "/books/1234567890123456789012345678901234567890",
        "/books?limit=abc",
        "/books?limit=0",
        "/books/1?x=1",
    ] {
        let response = raw_http::get(booksvc.address, target).await;
        assert_eq!(response.status, 400, "{target}: {}", response.text);
        assert!(
            response.text.contains("application/problem+json"),
            "{target}: a problem document: {}",
            response.text
        );
    }
    assert_eq!(proxy.arrivals().len(), before, "nothing sent upstream");
}
