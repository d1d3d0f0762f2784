//! Writes through booksvc, with everything real: they need the writer credential, reach
//! storagesvc and the database, are never answered from the last-good store, are retried
//! only when the caller sent an `Idempotency-Key` (the database is paused so that an
//! attempt really times out), and say what happened: storagesvc's `Idempotent-Replayed`
//! is passed on, booksvc's own `503` means nothing was sent, and a connection that broke
//! after sending is a `502` (maybe applied).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::json;
use system_tests::booksvc::{REQUEST_DEADLINE, TestBooksvc, WRITER_TOKEN};
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::is_stale;
use system_tests::proxy::HoldingProxy;
use system_tests::storagesvc::{TOKEN, TestStoragesvc, assert_problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `Cache-Status` of every write: forwarded because of its method, never stored.
const FORWARDED_WRITE: &str = "booksvc; fwd=method";

struct Stack {
    db: Postgres,
    _redis: Redis,
    storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

async fn stack_with(storagesvc_flags: &[&str], booksvc_flags: &[&str]) -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), storagesvc_flags).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), booksvc_flags).await;
    Stack {
        db,
        _redis: redis,
        storagesvc,
        booksvc,
    }
}

async fn send(
    booksvc: &TestBooksvc,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    idempotency_key: Option<&str>,
) -> Response {
    let mut request = booksvc.write(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("the write reaches booksvc")
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

/// Books in the database (asked of storagesvc directly) with this title.
async fn books_titled(storagesvc: &TestStoragesvc, title: &str) -> usize {
    storagesvc
        .books()
        .await
        .iter()
        .filter(|book| book["title"] == title)
        .count()
}

/// The value of one series in booksvc's `/metrics`, 0 when it has not appeared yet.
async fn metric(booksvc: &TestBooksvc, series: &str) -> f64 {
    booksvc.metric(series).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_pass_through_booksvc_and_create_update_and_delete_exactly_once() {
    let stack = stack_with(&[], &[]).await;
    let booksvc = &stack.booksvc;
    let title = "Designing for failure";

    let created = send(
        booksvc,
        Method::POST,
        "/books",
        Some(json!({"title": title, "author": "A. Writer", "desc": "first edition"})),
        None,
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        header(&created, "cache-status").as_deref(),
        Some(FORWARDED_WRITE)
    );
    let location = header(&created, "location").expect("Location passed on");
    let book: serde_json::Value = created.json().await.unwrap();
    assert_eq!(location, format!("/books/{}", book["id"]));
    assert_eq!(books_titled(&stack.storagesvc, title).await, 1);

    // Read back through booksvc, at the Location it gave.
    let read = booksvc.get(&location).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<serde_json::Value>().await.unwrap(), book);

    let updated = send(
        booksvc,
        Method::PUT,
        &location,
        Some(json!({"title": title, "author": "A. Writer", "desc": "second edition"})),
        None,
    )
    .await;
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(
        header(&updated, "cache-status").as_deref(),
        Some(FORWARDED_WRITE)
    );
    assert_eq!(
        updated.json::<serde_json::Value>().await.unwrap()["desc"],
        "second edition"
    );

    let deleted = send(booksvc, Method::DELETE, &location, None, None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(books_titled(&stack.storagesvc, title).await, 0);
    assert_problem(booksvc.get(&location).await, StatusCode::NOT_FOUND).await;

    // storagesvc's own answers to wrong writes are passed on as they came.
    let invalid = send(
        booksvc,
        Method::POST,
        "/books",
        Some(json!({"title": "", "author": "A. Writer"})),
        None,
    )
    .await;
    assert_eq!(
        header(&invalid, "cache-status").as_deref(),
        Some(FORWARDED_WRITE)
    );
    assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY).await;
    let absent = send(booksvc, Method::DELETE, "/books/999999", None, None).await;
    assert_problem(absent, StatusCode::NOT_FOUND).await;
    assert_eq!(
        metric(booksvc, "upstream_retries_total").await,
        0.0,
        "nothing was retried"
    );
}

/// booksvc reaches storagesvc through a proxy that can hold storagesvc's answers back, and
/// waits at most 300 ms per attempt.
async fn stack_behind_holding_proxy() -> (Stack, HoldingProxy) {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), &[]).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let proxy = HoldingProxy::start(storagesvc.address).await;
    let booksvc = TestBooksvc::spawn(
        proxy.address,
        &redis.url(),
        &["--attempt-timeout", "300ms", "--retry-max", "3"],
    )
    .await;
    let stack = Stack {
        db,
        _redis: redis,
        storagesvc,
        booksvc,
    };
    (stack, proxy)
}

/// storagesvc makes the book, but its answer is held back for 500 ms, so booksvc's first
/// attempt (300 ms) times out. The retry carries the same key and gets the first write's
/// response replayed: one book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_idempotency_key_whose_first_attempt_times_out_is_retried_and_creates_one_book()
 {
    let (stack, proxy) = stack_behind_holding_proxy().await;
    let booksvc = &stack.booksvc;
    let title = "Retried once, written once";
    let book = json!({"title": title, "author": "A. Writer"});

    proxy.hold_answers_for(Duration::from_millis(500));
    let response = send(
        booksvc,
        Method::POST,
        "/books",
        Some(book.clone()),
        Some("retry-me-1"),
    )
    .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        metric(booksvc, r#"upstream_attempts_total{outcome="timeout"}"#).await,
        1.0,
        "the first attempt timed out"
    );
    assert_eq!(
        metric(booksvc, r#"upstream_retries_total{after="timeout"}"#).await,
        1.0,
        "and was retried once"
    );
    assert_eq!(books_titled(&stack.storagesvc, title).await, 1);

    // The caller's own retry with the same key replays the same book.
    let replay = send(
        booksvc,
        Method::POST,
        "/books",
        Some(book),
        Some("retry-me-1"),
    )
    .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.json::<serde_json::Value>().await.unwrap(), created);
    assert_eq!(books_titled(&stack.storagesvc, title).await, 1);
}

/// Without a key the same lost answer is not retried: the caller is told the write may
/// have been applied, and it was, once. (A retry here would have made a second book.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_idempotency_key_is_sent_once_and_a_timeout_answers_504() {
    let (stack, proxy) = stack_behind_holding_proxy().await;
    let booksvc = &stack.booksvc;
    let title = "Sent once";

    proxy.hold_answers_for(Duration::from_secs(1));
    let started = Instant::now();
    let response = send(
        booksvc,
        Method::POST,
        "/books",
        Some(json!({"title": title, "author": "A. Writer"})),
        None,
    )
    .await;
    let took = started.elapsed();

    let problem = assert_problem(response, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    assert!(
        took < Duration::from_millis(900),
        "one 300 ms attempt and no retry: took {took:?}"
    );
    assert_eq!(
        metric(booksvc, r#"upstream_attempts_total{outcome="timeout"}"#).await,
        1.0
    );
    assert_eq!(metric(booksvc, "upstream_retries_total").await, 0.0);
    assert_eq!(books_titled(&stack.storagesvc, title).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_a_write_answers_503_quickly_and_never_from_the_cache() {
    let stack = stack_with(&[], &[]).await;
    let booksvc = &stack.booksvc;
    // Warm the last-good store for the very paths written to below.
    assert_eq!(booksvc.get("/books").await.status(), StatusCode::OK);
    assert_eq!(booksvc.get("/books/1").await.status(), StatusCode::OK);

    stack.db.stop().await;
    let writes = [
        (
            Method::POST,
            "/books",
            Some(json!({"title": "Never stored", "author": "A. Writer"})),
        ),
        (
            Method::PUT,
            "/books/1",
            Some(json!({"title": "Never stored", "author": "A. Writer"})),
        ),
        (Method::DELETE, "/books/1", None),
    ];
    // Until the breaker opens, storagesvc's own fail-fast 503 is passed on; once it is
    // open, booksvc answers 503 without sending. Either way: 503, `Retry-After`, a
    // problem, within the deadline, and never a cached answer.
    for round in 0..4 {
        for (method, path, body) in &writes {
            let started = Instant::now();
            let response = send(booksvc, method.clone(), path, body.clone(), None).await;
            let took = started.elapsed();
            assert!(
                took <= REQUEST_DEADLINE,
                "{method} {path} (round {round}) took {took:?}"
            );
            // storagesvc's answer is marked forwarded; booksvc's own (breaker open) has
            // no `Cache-Status`: nothing was forwarded, nothing came from the cache.
            let cache_status = header(&response, "cache-status");
            assert!(
                cache_status.is_none() || cache_status.as_deref() == Some(FORWARDED_WRITE),
                "{method} {path} was answered from the cache: {cache_status:?}"
            );
            let retry_after = header(&response, "retry-after");
            let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
            assert!(
                retry_after.is_some(),
                "{method} {path} (round {round}): Retry-After missing; {problem}"
            );
        }
    }
    assert_eq!(stack.booksvc.breaker_state().await, "open");
    let started = Instant::now();
    let refused = send(booksvc, Method::DELETE, "/books/1", None, None).await;
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "the open breaker refuses at once"
    );
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;

    // The reads of the same paths are still served, stale, from the store.
    let stale = booksvc.get("/books/1").await;
    assert_eq!(stale.status(), StatusCode::OK);
    let cache_status = header(&stale, "cache-status");
    assert!(is_stale(cache_status.as_deref()), "{cache_status:?}");
}

/// The three writes, each with a valid body where it takes one.
fn every_write(title: &str) -> [(Method, &'static str, Option<serde_json::Value>); 3] {
    let book = json!({"title": title, "author": "A. Writer"});
    [
        (Method::POST, "/books", Some(book.clone())),
        (Method::PUT, "/books/1", Some(book)),
        (Method::DELETE, "/books/1", None),
    ]
}

/// storagesvc's view of book 1, asked directly.
async fn book_one(storagesvc: &TestStoragesvc) -> serde_json::Value {
    let response = storagesvc.get("/books/1").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_the_writer_credential_answer_401_and_change_nothing() {
    let stack = stack_with(&[], &[]).await;
    let booksvc = &stack.booksvc;
    let books_before = stack.storagesvc.books().await;
    let book_before = book_one(&stack.storagesvc).await;

    // Anonymous, a wrong token, and storagesvc's own token: booksvc's writers hold another
    // secret, and a caller who knows storagesvc's gains nothing at booksvc.
    type Credential = fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder;
    let credentials: [(&str, Credential); 4] = [
        ("anonymous", |request| request),
        ("a wrong bearer token", |request| {
            request.bearer_auth("not-it")
        }),
        ("a wrong API key", |request| {
            request.header("x-api-key", "not-it")
        }),
        ("storagesvc's token", |request| request.bearer_auth(TOKEN)),
    ];
    for (who, credential) in credentials {
        for (method, path, body) in every_write("Never written") {
            let mut request = credential(booksvc.http.request(method.clone(), booksvc.url(path)));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            assert!(
                header(&response, "cache-status").is_none(),
                "{method} {path} by {who} was forwarded"
            );
            let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
            assert_eq!(problem["type"], "urn:bookstore:problem:unauthorized");
        }
    }
    assert_eq!(
        stack.storagesvc.books().await,
        books_before,
        "nothing changed"
    );
    assert_eq!(book_one(&stack.storagesvc).await, book_before);

    // Reads stay public.
    assert_eq!(booksvc.get("/books").await.status(), StatusCode::OK);
    assert_eq!(booksvc.get("/books/1").await.status(), StatusCode::OK);

    // The writer credential works as an API key too. storagesvc accepts only its own
    // token, so the 201 also shows that booksvc sent its credential, not the caller's.
    let created = booksvc
        .http
        .post(booksvc.url("/books"))
        .header("x-api-key", WRITER_TOKEN)
        .json(&json!({"title": "Written by a writer", "author": "A. Writer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        books_titled(&stack.storagesvc, "Written by a writer").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booksvc_without_auth_tokens_refuses_every_write_and_still_serves_reads() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn_ready(&db.url()).await;
    let booksvc = TestBooksvc::spawn_with_credentials(storagesvc.address, &redis.url(), &[]).await;
    let books_before = storagesvc.books().await;

    for (method, path, body) in every_write("Never written") {
        // Even the test's writer token: booksvc was given none to accept.
        let response = send(&booksvc, method.clone(), path, body, None).await;
        let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("AUTH_TOKENS"),
            "{method} {path}: {problem}"
        );
    }
    assert_eq!(storagesvc.books().await, books_before, "nothing changed");

    let list = booksvc.get("/books").await;
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(
        list.json::<Vec<serde_json::Value>>().await.unwrap(),
        books_before
    );
    assert_eq!(booksvc.get("/books/1").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_post_through_booksvc_carries_idempotent_replayed() {
    let stack = stack_with(&[], &[]).await;
    let booksvc = &stack.booksvc;
    let title = "Posted twice, written once";
    let book = json!({"title": title, "author": "A. Writer"});

    let first = send(
        booksvc,
        Method::POST,
        "/books",
        Some(book.clone()),
        Some("replay-1"),
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let location = header(&first, "location").expect("Location passed on");
    let created: serde_json::Value = first.json().await.unwrap();

    let second = send(
        booksvc,
        Method::POST,
        "/books",
        Some(book),
        Some("replay-1"),
    )
    .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(
        header(&second, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(header(&second, "location"), Some(location));
    assert_eq!(
        header(&second, "cache-status").as_deref(),
        Some(FORWARDED_WRITE)
    );
    assert_eq!(second.json::<serde_json::Value>().await.unwrap(), created);
    assert_eq!(books_titled(&stack.storagesvc, title).await, 1);
}

/// Stands in for storagesvc: accepts connections, reads each request whole (head and the
/// body its `Content-Length` announces) and closes without answering, as a storagesvc
/// that crashed after receiving a write. Keeps the head of every request it read.
struct AnswerlessServer {
    address: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerlessServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::clone(&heads);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let read = Arc::clone(&read);
                tokio::spawn(async move {
                    if let Some(head) = read_one_request(&mut socket).await {
                        read.lock().unwrap().push(head);
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            address,
            heads,
            task,
        }
    }

    /// The requests read whole so far: request line and headers, lower case.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for AnswerlessServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request; its head, lower case, once head and body are in.
async fn read_one_request(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
            let body_length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if received.len() >= head_end + 4 + body_length {
                return Some(head);
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => received.extend_from_slice(&chunk[..read]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_breaks_after_sending_answers_502_not_503() {
    let redis = Redis::start().await;
    let storagesvc = AnswerlessServer::start().await;
    // The breaker stays closed, so every write below is really sent.
    let booksvc = TestBooksvc::spawn(
        storagesvc.address,
        &redis.url(),
        &["--breaker-consecutive-failures", "100"],
    )
    .await;

    for (method, path, body) in every_write("Maybe written") {
        let response = send(&booksvc, method.clone(), path, body, None).await;
        assert_eq!(header(&response, "retry-after"), None, "{method} {path}");
        let problem = assert_problem(response, StatusCode::BAD_GATEWAY).await;
        assert_eq!(problem["type"], "urn:bookstore:problem:upstream-broken");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("may have been applied"), "{detail}");
        assert!(detail.contains("Idempotency-Key"), "{detail}");
        assert!(
            !detail.contains("127.0.0.1"),
            "no internal address: {detail}"
        );
    }
    let heads = storagesvc.heads();
    assert_eq!(heads.len(), 3, "each write arrived whole, once: {heads:?}");
    // booksvc sent its own credential for storagesvc, never the caller's.
    for head in &heads {
        assert!(
            head.contains(&format!("authorization: bearer {TOKEN}")),
            "{head}"
        );
        assert!(!head.contains(WRITER_TOKEN), "{head}");
    }

    // With a key the write is retried (each attempt arrives and breaks); still 502.
    let response = send(
        &booksvc,
        Method::POST,
        "/books",
        Some(json!({"title": "Maybe written", "author": "A. Writer"})),
        Some("broken-1"),
    )
    .await;
    let problem = assert_problem(response, StatusCode::BAD_GATEWAY).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("retry with the same Idempotency-Key"),
        "{problem}"
    );
    assert_eq!(
        storagesvc.heads().len(),
        3 + 3,
        "the first attempt and two retries"
    );
    for head in &storagesvc.heads()[3..] {
        assert!(head.contains("idempotency-key: broken-1"), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_port_where_nothing_listens_answers_503_with_retry_after() {
    let redis = Redis::start().await;
    let nothing_listens = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let booksvc = TestBooksvc::spawn(nothing_listens, &redis.url(), &[]).await;

    // Each write once, then a POST with a key, which is retried: no attempt is sent.
    let unkeyed = every_write("Never sent").map(|(method, path, body)| (method, path, body, None));
    let keyed = (
        Method::POST,
        "/books",
        Some(json!({"title": "Never sent", "author": "A. Writer"})),
        Some("refused-1"),
    );
    for (method, path, body, key) in unkeyed.into_iter().chain([keyed]) {
        let started = Instant::now();
        let response = send(&booksvc, method.clone(), path, body, key).await;
        let took = started.elapsed();
        assert!(took < REQUEST_DEADLINE, "{method} {path} took {took:?}");
        let retry_after = header(&response, "retry-after");
        let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(
            retry_after.is_some(),
            "{method} {path}: no Retry-After; {problem}"
        );
        assert_eq!(
            problem["type"],
            "urn:bookstore:problem:storagesvc-unavailable"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("not sent"), "{detail}");
        assert!(
            !detail.contains("127.0.0.1"),
            "no internal address: {detail}"
        );
    }
}
