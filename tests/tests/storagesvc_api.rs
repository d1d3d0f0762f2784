//! storagesvc's API against a real PostgreSQL: CRUD, idempotent creates, bad input,
//! credentials and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::containers::Postgres;
use system_tests::storagesvc::{TestStoragesvc, assert_problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip_with_location_and_404s() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;

    let created = app
        .post_book(&json!({"title": "Dune", "author": "Frank Herbert"}), None)
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let book: Value = created.json().await.unwrap();
    assert_eq!(book["title"], "Dune");
    assert_eq!(book["desc"], "");
    let id = book["id"].as_i64().unwrap();
    assert_eq!(location, format!("/books/{id}"));

    let fetched = app.get(&location).await;
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.json::<Value>().await.unwrap(), book);
    assert!(
        app.books().await.contains(&book),
        "the list holds the new book"
    );

    let updated = app
        .request(Method::PUT, &location)
        .json(&json!({"title": "Dune Messiah", "author": "Frank Herbert", "desc": "Book two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(
        updated,
        json!({"id": id, "title": "Dune Messiah", "author": "Frank Herbert", "desc": "Book two"})
    );
    assert_eq!(
        app.get(&location).await.json::<Value>().await.unwrap(),
        updated
    );

    let deleted = app.request(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    assert_problem(app.get(&location).await, StatusCode::NOT_FOUND).await;
    let put_absent = app
        .request(Method::PUT, &location)
        .json(&json!({"title": "x", "author": "y"}))
        .send()
        .await
        .unwrap();
    assert_problem(put_absent, StatusCode::NOT_FOUND).await;
    let delete_absent = app.request(Method::DELETE, &location).send().await.unwrap();
    assert_problem(delete_absent, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_ordered_by_id_and_paged_with_limit_and_offset() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    for n in 0..5 {
        let response = app
            .post_book(&json!({"title": format!("Book {n}"), "author": "A"}), None)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let all = app.books().await;
    let ids: Vec<i64> = all.iter().map(|b| b["id"].as_i64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ordered by id");
    assert_eq!(all.len(), 3 + 5, "three seed books plus five new ones");

    let page: Vec<Value> = app
        .get("/books?limit=2&offset=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page, all[3..5].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_response_and_rejects_another_body() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    let before = app.books().await.len();
    let book = json!({"title": "Idempotent", "author": "Retry Safe"});

    let first = app.post_book(&book, Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = first.headers()["location"].clone();
    let first_body = first.bytes().await.unwrap();

    let second = app.post_book(&book, Some("key-1")).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["location"], first_location);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(
        second.bytes().await.unwrap(),
        first_body,
        "same response body, byte for byte"
    );
    assert_eq!(
        app.books().await.len(),
        before + 1,
        "one row for two requests"
    );

    let other = app
        .post_book(&json!({"title": "Other", "author": "Body"}), Some("key-1"))
        .await;
    let problem = assert_problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        problem["type"],
        "urn:bookstore:problem:idempotency-key-reused"
    );
    assert_eq!(app.books().await.len(), before + 1);

    // Concurrent retries of one key wait for each other on the key's lock. Each gets the
    // stored response, or, if it waited longer than the query bound (a busy machine), a
    // retryable 503; a later retry of that one replays the stored response. Either way
    // exactly one book exists and every success is the same response.
    let raced_book = json!({"title": "Raced", "author": "Many"});
    let concurrent = create_concurrently(&app, &raced_book, "key-2", 10).await;
    let created: Vec<&axum::body::Bytes> = concurrent
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    assert!(
        concurrent
            .iter()
            .all(|(status, _)| *status == StatusCode::CREATED
                || *status == StatusCode::SERVICE_UNAVAILABLE),
        "only 201 or a retryable 503: {concurrent:?}"
    );
    let stored = match created.first() {
        Some(body) => (*body).clone(),
        None => app
            .post_book(&raced_book, Some("key-2"))
            .await
            .bytes()
            .await
            .unwrap(),
    };
    assert!(
        created.iter().all(|body| **body == stored),
        "every success is the same response"
    );
    for _ in concurrent
        .iter()
        .filter(|(status, _)| *status != StatusCode::CREATED)
    {
        let retried = app.post_book(&raced_book, Some("key-2")).await;
        assert_eq!(retried.status(), StatusCode::CREATED);
        assert_eq!(
            retried.bytes().await.unwrap(),
            stored,
            "a retry replays the stored response"
        );
    }
    let raced = app
        .books()
        .await
        .into_iter()
        .filter(|b| b["title"] == "Raced")
        .count();
    assert_eq!(
        raced, 1,
        "one book for eleven or more requests with one key"
    );
}

async fn create_concurrently(
    app: &TestStoragesvc,
    book: &Value,
    key: &str,
    n: usize,
) -> Vec<(StatusCode, axum::body::Bytes)> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = app
            .request(Method::POST, "/books")
            .header("Idempotency-Key", key)
            .json(book);
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.bytes().await.unwrap())
        });
    }
    tasks.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_4xx_problems_never_500() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    let huge_title = "t".repeat(10 * 1024);
    let mebibyte = format!(r#"{{"title":"{}","author":"a"}}"#, "x".repeat(1024 * 1024));
    let json_body = |body: &str| (Some("application/json"), body.to_owned());

    // (case, method, path, content type and body, expected status)
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        (Option<&'a str>, String),
        StatusCode,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/books",
            json_body(r#"{"title": "#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing field",
            Method::POST,
            "/books",
            json_body(r#"{"title": "x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            Method::POST,
            "/books",
            json_body(r#"{"title": 1, "author": "a"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty title",
            Method::POST,
            "/books",
            json_body(r#"{"title": "", "author": "a"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "blank author",
            Method::POST,
            "/books",
            json_body(r#"{"title": "t", "author": "  "}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "10 KB title",
            Method::POST,
            "/books",
            json_body(&format!(r#"{{"title": "{huge_title}", "author": "a"}}"#)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "1 MiB body",
            Method::POST,
            "/books",
            json_body(&mebibyte),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "wrong content type",
            Method::POST,
            "/books",
            (Some("text/plain"), r#"{"title":"t","author":"a"}"#.into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type",
            Method::POST,
            "/books",
            (None, r#"{"title":"t","author":"a"}"#.into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "JSON array",
            Method::POST,
            "/books",
            json_body("[]"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "malformed PUT",
            Method::PUT,
            "/books/1",
            json_body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "non-numeric id",
            Method::GET,
            "/books/abc",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "id beyond i64",
            Method::GET,
            "/books/99999999999999999999",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative limit",
            Method::GET,
            "/books?limit=-1",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "zero limit",
            Method::GET,
            "/books?limit=0",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "huge limit",
            Method::GET,
            "/books?limit=100000",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "limit beyond i64",
            Method::GET,
            "/books?limit=99999999999999999999",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "non-numeric limit",
            Method::GET,
            "/books?limit=ten",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative offset",
            Method::GET,
            "/books?offset=-5",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/books?sort=title",
            (None, String::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad Idempotency-Key",
            Method::POST,
            "/books",
            json_body(r#"{"title":"t","author":"a"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            Method::GET,
            "/nope",
            (None, String::new()),
            StatusCode::NOT_FOUND,
        ),
        (
            "method not allowed",
            Method::PATCH,
            "/books/1",
            (None, String::new()),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];

    let before = app.books().await.len();
    for (case, method, path, (content_type, body), expected) in cases {
        // Each case on its own connection: a server that answers without reading a bad
        // body closes the connection, and a pooled client could race that close with
        // the next case's request.
        let mut request = app
            .request(method, path)
            .header("connection", "close")
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if case == "bad Idempotency-Key" {
            request = request.header("Idempotency-Key", "k".repeat(300));
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let status = response.status();
        assert!(
            status.is_client_error(),
            "{case}: expected 4xx, got {status}"
        );
        assert_eq!(status, expected, "{case}");
        let content_type = response.headers().get("content-type").cloned();
        assert_eq!(
            content_type.as_ref().map(|v| v.to_str().unwrap()),
            Some("application/problem+json"),
            "{case}"
        );
        let problem: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{case}: body is not JSON: {e}"));
        assert_eq!(problem["status"], expected.as_u16(), "{case}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {problem}"
        );
    }
    assert_eq!(
        app.books().await.len(),
        before,
        "no bad request created a book"
    );
    assert_eq!(
        app.readiness().await,
        StatusCode::OK,
        "still serving after all of that"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_need_credentials_but_health_and_metrics_do_not() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    let anonymous = |path: &str| app.http.get(app.url(path)).send();

    let missing =
        assert_problem(anonymous("/books").await.unwrap(), StatusCode::UNAUTHORIZED).await;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    let wrong = app
        .http
        .get(app.url("/books/1"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let wrong_key = app
        .http
        .post(app.url("/books"))
        .header("x-api-key", "nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_key, StatusCode::UNAUTHORIZED).await;

    let bearer = app
        .http
        .get(app.url("/books"))
        .bearer_auth(system_tests::storagesvc::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let api_key = app
        .http
        .get(app.url("/books"))
        .header("x-api-key", system_tests::storagesvc::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(api_key.status(), StatusCode::OK);

    for open in ["/.well-known/alive", "/.well-known/health"] {
        assert_eq!(
            anonymous(open).await.unwrap().status(),
            StatusCode::OK,
            "{open}"
        );
    }
    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "admin /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_credential_configured_every_books_route_is_closed() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_with_credentials(&db.url(), &[]).await;
    app.wait_until_ready(Duration::from_secs(30)).await;
    // A second instance that accepts the test credential, to see what is in the database.
    let reader = TestStoragesvc::spawn_ready(&db.url()).await;
    let before = all_books(&reader).await;
    for (method, path) in [
        (Method::GET, "/books"),
        (Method::GET, "/books/1"),
        (Method::POST, "/books"),
        (Method::PUT, "/books/1"),
        (Method::DELETE, "/books/1"),
    ] {
        // Any credential at all, even an empty one, is refused: nothing is open by accident.
        for credential in ["", "anything"] {
            let response = app
                .http
                .request(method.clone(), app.url(path))
                .bearer_auth(credential)
                .json(&json!({"title": "t", "author": "a"}))
                .send()
                .await
                .unwrap();
            let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
            assert!(
                problem["detail"].as_str().unwrap().contains("AUTH_TOKENS"),
                "{method} {path}: {problem}"
            );
        }
    }
    assert_eq!(all_books(&reader).await, before, "nothing was written");
}

async fn all_books(app: &TestStoragesvc) -> Value {
    let response = app.get("/books?limit=1000").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_and_report_the_database() {
    let db = Postgres::start().await;
    let app = TestStoragesvc::spawn_ready(&db.url()).await;
    for _ in 0..3 {
        assert_eq!(app.get("/books").await.status(), StatusCode::OK);
    }
    assert_eq!(
        app.get("/books/424242").await.status(),
        StatusCode::NOT_FOUND
    );

    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text().await.unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };

    // `spawn_ready` polled readiness and `books()` was not called: exactly three list calls.
    assert_eq!(
        line(r#"http_server_requests_total{method="GET",route="/books",status="200"}"#).as_deref(),
        Some(r#"http_server_requests_total{method="GET",route="/books",status="200"} 3"#),
        "{text}"
    );
    assert!(
        line(r#"http_server_requests_total{method="GET",route="/books/{id}",status="404"} 1"#)
            .is_some(),
        "{text}"
    );
    assert!(
        line(r#"http_server_request_duration_seconds_count{method="GET",route="/books",status="200"} 3"#).is_some(),
        "{text}"
    );
    let inf_bucket = text.lines().find(|l| {
        l.starts_with("http_server_request_duration_seconds_bucket{")
            && l.contains(r#"route="/books""#)
            && l.contains(r#"status="200""#)
            && l.contains(r#"le="+Inf""#)
    });
    assert!(
        inf_bucket.is_some_and(|l| l.ends_with(" 3")),
        "latency histogram missing: {text}"
    );
    assert!(line("database_up 1").is_some(), "{text}");
}
