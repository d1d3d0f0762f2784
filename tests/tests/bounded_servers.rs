//! Both servers bound what one client can hold, checked over real TCP
//! sockets against the real services (PostgreSQL and Redis in containers): a client that
//! sends half a request is cut off within the header read timeout, three hundred such
//! clients do not slow anyone else down, and a body announced over the limit is refused
//! before a byte of it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::storagesvc::{TOKEN, TestStoragesvc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header read timeout the first test configures: short, so the test is quick.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on a busy two-core machine, on top of a promised bound.
const SLACK: Duration = Duration::from_millis(500);
/// Slow clients held open at once.
const SLOW_CLIENTS: usize = 300;
/// An ordinary request on the loopback, database and Redis local: well under this.
const ORDINARY_BOUND: Duration = Duration::from_millis(500);
/// `MAX_BODY_BYTES`' default.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Both services, each with `extra` flags, on a real database and Redis.
struct Stack {
    _db: Postgres,
    _redis: Redis,
    storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

async fn stack(extra: &[&str]) -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), extra).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), extra).await;
    Stack {
        _db: db,
        _redis: redis,
        storagesvc,
        booksvc,
    }
}

/// The first lines of a request, without the blank line that ends its headers.
const HALF_A_REQUEST: &[u8] = b"GET /books HTTP/1.1\r\nHost: bookstore\r\nAccept: applic";

/// Opens a connection and sends `bytes`, then nothing more.
async fn slow_client(address: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the server closes the connection (at most `within`); how long that took.
async fn time_until_closed(mut stream: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(within, async {
        // hyper may answer 408 before closing; an error (reset) is a close too.
        let _ = stream.read_to_end(&mut sink).await;
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for over {within:?}"
    );
    started.elapsed()
}

/// Whether the server still holds `stream` open (it has neither closed it nor written).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_half_a_request_is_cut_off_within_the_header_timeout() {
    let stack = stack(&["--header-read-timeout", "1s"]).await;
    for (name, address) in [
        ("storagesvc", stack.storagesvc.address),
        ("booksvc", stack.booksvc.address),
    ] {
        for (what, bytes) in [("half a request", HALF_A_REQUEST), ("nothing", &b""[..])] {
            let stream = slow_client(address, bytes).await;
            let open_for = time_until_closed(stream, HEADER_READ_TIMEOUT + SLACK).await;
            assert!(
                open_for >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
                "{name}, {what}: closed after {open_for:?}, before the timeout"
            );
        }
        // An idle keep-alive connection is bounded the same way: after a whole request,
        // the wait for the next one's headers is the header read timeout again.
        let mut stream = slow_client(
            address,
            b"GET /.well-known/alive HTTP/1.1\r\nHost: bookstore\r\n\r\n",
        )
        .await;
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200", "{name}");
        time_until_closed(stream, HEADER_READ_TIMEOUT + SLACK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_slow_clients_do_not_slow_an_ordinary_request() {
    // The default header read timeout (10 s) keeps the slow clients open all along.
    let stack = stack(&[]).await;
    let storagesvc = &stack.storagesvc;
    let booksvc = &stack.booksvc;
    let ordinary_requests = [
        ("storagesvc", storagesvc.request(Method::GET, "/books")),
        ("booksvc", booksvc.http.get(booksvc.url("/books"))),
    ];
    for ((name, address), (_, request)) in [
        ("storagesvc", storagesvc.address),
        ("booksvc", booksvc.address),
    ]
    .into_iter()
    .zip(ordinary_requests)
    {
        // Warm: the first request opens pooled connections, which is not what is timed.
        let warm = request.try_clone().unwrap().send().await.unwrap();
        assert_eq!(warm.status(), StatusCode::OK, "{name}");

        let mut slow = Vec::with_capacity(SLOW_CLIENTS);
        for _ in 0..SLOW_CLIENTS {
            slow.push(slow_client(address, HALF_A_REQUEST).await);
        }
        for _ in 0..5 {
            let started = Instant::now();
            let response = request.try_clone().unwrap().send().await.unwrap();
            let took = started.elapsed();
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert!(
                took <= ORDINARY_BOUND,
                "{name}: an ordinary GET took {took:?} beside {SLOW_CLIENTS} slow clients"
            );
        }
        let held = slow.iter().filter(|stream| still_open(stream)).count();
        assert_eq!(
            held, SLOW_CLIENTS,
            "{name}: the slow clients were all held open while the ordinary requests ran"
        );
    }
}

/// Sends the head of a POST announcing `length` body bytes, and no body; the answer's
/// status line, headers and body as text, read before any body byte is sent.
async fn announce_body(address: SocketAddr, length: usize) -> (String, Duration) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /books HTTP/1.1\r\nHost: bookstore\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(SLACK, read_response(&mut stream))
        .await
        .expect("answered without waiting for the body");
    (answer, started.elapsed())
}

/// Reads one response: its head, then as many body bytes as its `Content-Length` says.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before a whole response: {text}");
        answer.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_with_413_before_it_is_sent() {
    let stack = stack(&[]).await;
    for (name, address) in [
        ("storagesvc", stack.storagesvc.address),
        ("booksvc", stack.booksvc.address),
    ] {
        let (answer, took) = announce_body(address, 5 * 1024 * 1024).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{name} answered:\n{answer}"
        );
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/problem+json"),
            "{name}:\n{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 413, "{name}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("65536"),
            "{name}: {problem}"
        );
        assert!(took < SLACK, "{name}: took {took:?}");
    }
    // At the limit, the body is read and the request goes on (storagesvc validates it).
    let at_limit = serde_json::json!({ "title": "t".repeat(MAX_BODY_BYTES - 64), "author": "a" });
    let body = serde_json::to_vec(&at_limit).unwrap();
    assert!(body.len() <= MAX_BODY_BYTES);
    let response = stack
        .storagesvc
        .request(Method::POST, "/books")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
