//! The admin listener: `/metrics`, detailed health and the OpenAPI document
//! (`/openapi.json`) live on `ADMIN_BIND_ADDR`; the public port serves the API, liveness
//! and a readiness that says only `up` or `down`, whatever state its dependencies are in
//! and whatever their errors say. Real PostgreSQL and Redis, stopped to give the checks
//! errors to report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::poll::eventually;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};

async fn get(http: &reqwest::Client, url: String) -> Response {
    http.get(url).send().await.unwrap()
}

/// The admin `/metrics`: 200, OpenMetrics, with the request counts.
async fn assert_metrics(response: Response) {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("http_server_requests_total{"), "{text}");
}

/// The admin `/openapi.json`: 200, JSON, byte for byte the document the service's code
/// generates (which the drift tests compare with the committed file).
async fn assert_openapi(response: Response, title: &str, generated: String) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert_eq!(text, generated, "the served document is the generated one");
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], title);
}

/// A request head over the limit (16 KiB by default): `431` with an empty body, as the
/// documents say, on either port.
async fn assert_head_too_large_is_431_without_body(http: &reqwest::Client, url: String) {
    let response = http
        .get(url)
        .header("x-padding", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(response.text().await.unwrap(), "");
}

/// The public readiness: `status` and a body of nothing but `{"status": word}`.
async fn assert_terse_readiness(response: Response, status: StatusCode, word: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "status": word }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booksvc_serves_metrics_and_details_on_the_admin_port_only() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), &[]).await;
    let http = &booksvc.http;
    assert_eq!(booksvc.get("/books").await.status(), StatusCode::OK);

    assert_problem(booksvc.get("/metrics").await, StatusCode::NOT_FOUND).await;
    assert_metrics(get(http, booksvc.admin_url("/metrics")).await).await;
    assert_problem(booksvc.get("/openapi.json").await, StatusCode::NOT_FOUND).await;
    assert_openapi(
        get(http, booksvc.admin_url("/openapi.json")).await,
        "booksvc",
        booksvc::openapi::json().unwrap(),
    )
    .await;
    assert_head_too_large_is_431_without_body(http, booksvc.url("/books")).await;
    assert_eq!(
        booksvc.get("/.well-known/alive").await.status(),
        StatusCode::OK
    );
    assert_terse_readiness(
        booksvc.get("/.well-known/health").await,
        StatusCode::OK,
        "up",
    )
    .await;

    // With Redis gone, the admin port says so and why; the public port says only "up"
    // (booksvc serves without Redis).
    redis.stop().await;
    let details = eventually(
        Duration::from_secs(10),
        "admin health reports Redis down",
        || async {
            let (status, body) = booksvc.readiness().await;
            (status == StatusCode::OK && body["checks"]["redis"]["status"] == "down")
                .then_some(body)
        },
    )
    .await;
    assert!(details["checks"]["redis"]["error"].is_string(), "{details}");
    assert_eq!(details["checks"]["storagesvc"]["breaker"], "closed");
    assert_terse_readiness(
        booksvc.get("/.well-known/health").await,
        StatusCode::OK,
        "up",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storagesvc_serves_metrics_and_details_on_the_admin_port_only() {
    let db = Postgres::start().await;
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let http = &storagesvc.http;

    assert_problem(storagesvc.get("/metrics").await, StatusCode::NOT_FOUND).await;
    assert_metrics(get(http, storagesvc.admin_url("/metrics")).await).await;
    assert_problem(
        get(http, storagesvc.url("/openapi.json")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_openapi(
        get(http, storagesvc.admin_url("/openapi.json")).await,
        "storagesvc",
        storagesvc::openapi::json().unwrap(),
    )
    .await;
    assert_head_too_large_is_431_without_body(http, storagesvc.url("/books")).await;
    assert_terse_readiness(
        get(http, storagesvc.url("/.well-known/health")).await,
        StatusCode::OK,
        "up",
    )
    .await;

    // With the database gone, both say "down" with 503; only the admin port says why.
    db.stop().await;
    eventually(
        Duration::from_secs(10),
        "readiness 503 with the database stopped",
        || async {
            (storagesvc.readiness().await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    let details: Value = get(http, storagesvc.admin_url("/.well-known/health"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        details["checks"]["database"]["error"].is_string(),
        "{details}"
    );
    assert_terse_readiness(
        get(http, storagesvc.url("/.well-known/health")).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "down",
    )
    .await;
}
