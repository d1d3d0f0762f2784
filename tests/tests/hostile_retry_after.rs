//! No input can panic a request: an upstream that answers `429` with a
//! `Retry-After` no clock can take (the largest u64, a number beyond u64, a date in the
//! year 9999) gets booksvc's normal answers, within the request deadline: the stored
//! answer when there is one, `503` + a short `Retry-After` problem when there is none;
//! never a `500`.
//!
//! The upstream is a small HTTP server started in the test, since storagesvc never sends
//! such a header; booksvc and Redis are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use system_tests::booksvc::{REQUEST_DEADLINE, TestBooksvc};
use system_tests::containers::Redis;
use system_tests::header;
use system_tests::storagesvc::assert_problem;

/// Scheduling slack on a busy two-core machine, on top of a promised bound.
const SLACK: Duration = Duration::from_millis(250);
/// The `Retry-After` booksvc takes from an upstream at most.
const LONGEST_RETRY_AFTER: u64 = 60;

const HOSTILE: [&str; 3] = [
    "18446744073709551615",
    "99999999999999999999999",
    "Fri, 31 Dec 9999 23:59:59 GMT",
];

/// What the fake upstream answers now: books, or `429` with this `Retry-After`.
#[derive(Clone, Default)]
struct Throttle(Arc<Mutex<Option<&'static str>>>);

async fn upstream(State(throttle): State<Throttle>, request: Request) -> Response {
    if let Some(retry_after) = *throttle.0.lock().unwrap() {
        let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
        return response;
    }
    let book =
        serde_json::json!({"id": 1, "title": "Release It!", "author": "M. Nygard", "desc": ""});
    let body = if request.uri().path() == "/books" {
        serde_json::json!([book])
    } else {
        book
    };
    axum::Json(body).into_response()
}

async fn start_upstream(throttle: Throttle) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(upstream).with_state(throttle);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_retry_after_no_clock_can_take_gets_a_normal_answer() {
    let redis = Redis::start().await;
    let throttle = Throttle::default();
    let address = start_upstream(throttle.clone()).await;

    for (case, retry_after) in HOSTILE.into_iter().enumerate() {
        // A booksvc of its own for each value, so that each one reaches a closed breaker.
        let booksvc = TestBooksvc::spawn(address, &redis.url(), &[]).await;
        let stored = format!("/books/{}", 2 * case + 1);
        let never_stored = format!("/books/{}", 2 * case + 2);
        *throttle.0.lock().unwrap() = None;
        let fresh = booksvc.get(&stored).await;
        assert_eq!(fresh.status(), StatusCode::OK);
        let fresh_body = fresh.bytes().await.unwrap();

        *throttle.0.lock().unwrap() = Some(retry_after);
        // More than the breaker's threshold of failures: the breaker opens on the hostile
        // value too, and the requests after that meet it open.
        for round in 0..8 {
            let started = Instant::now();
            let stale = booksvc.get(&stored).await;
            let took = started.elapsed();
            assert_eq!(
                stale.status(),
                StatusCode::OK,
                "{retry_after}, round {round}"
            );
            assert!(
                header(&stale, "cache-status").is_some_and(|value| value.contains("hit")),
                "{retry_after}: a stored answer"
            );
            assert_eq!(stale.bytes().await.unwrap(), fresh_body, "{retry_after}");
            assert!(took <= REQUEST_DEADLINE + SLACK, "{retry_after}: {took:?}");

            let started = Instant::now();
            let unavailable = booksvc.get(&never_stored).await;
            let took = started.elapsed();
            let retry_in: u64 = header(&unavailable, "retry-after")
                .expect("503 with Retry-After")
                .parse()
                .unwrap();
            assert!(
                (1..=LONGEST_RETRY_AFTER).contains(&retry_in),
                "{retry_after}: Retry-After {retry_in}"
            );
            assert_problem(unavailable, StatusCode::SERVICE_UNAVAILABLE).await;
            assert!(took <= REQUEST_DEADLINE + SLACK, "{retry_after}: {took:?}");
        }
        booksvc.stop().await;
    }
}
