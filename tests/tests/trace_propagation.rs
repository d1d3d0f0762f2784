//! One request, one trace id: the log lines booksvc and storagesvc write while handling a
//! request carry the same trace id, whether the client sent a W3C `traceparent` or booksvc
//! started the trace.
//!
//! Both services run in this process and log through the production JSON layer into one
//! in-memory capture, as they would into one log collector. A line written inside a
//! request span names that span's fields (`request_id`, `route`, `trace_id`, ...) in its
//! `spans` list. This file is a test binary of its own because the capture is the
//! process-wide subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::header;
use system_tests::logs::CapturedLogs;
use system_tests::storagesvc::TestStoragesvc;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Stack {
    _db: Postgres,
    _redis: Redis,
    _storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

async fn stack() -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), &[]).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), &[]).await;
    Stack {
        _db: db,
        _redis: redis,
        _storagesvc: storagesvc,
        booksvc,
    }
}

/// The log lines of one request in each service: the lines written inside a request span
/// with `request_id` (booksvc forwards its request id), split by the span's route: booksvc
/// serves the list at `/`, storagesvc at `/books`.
struct RequestLines {
    booksvc: Vec<Value>,
    storagesvc: Vec<Value>,
}

/// The request span a line was written in, if any: the outermost span of its list.
fn request_span(line: &Value) -> Option<&Value> {
    line["spans"]
        .as_array()?
        .first()
        .filter(|span| span["name"] == "request")
}

/// Reads the list from booksvc's `/` with `x-request-id: request_id` (and `traceparent`
/// when given), and returns both services' log lines of that request.
async fn read_and_collect_lines(
    logs: &CapturedLogs,
    booksvc: &TestBooksvc,
    request_id: &str,
    traceparent: Option<&str>,
) -> RequestLines {
    let mut request = booksvc
        .http
        .get(booksvc.url("/"))
        .header("x-request-id", request_id);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-request-id").as_deref(),
        Some(request_id)
    );
    response.bytes().await.unwrap();

    // Each service writes its access line before its response leaves, so storagesvc's and
    // booksvc's are both captured by now.
    let lines: Vec<Value> = logs
        .lines()
        .into_iter()
        .filter(|line| request_span(line).is_some_and(|span| span["request_id"] == request_id))
        .collect();
    let (booksvc, storagesvc): (Vec<Value>, Vec<Value>) = lines
        .into_iter()
        .partition(|line| request_span(line).unwrap()["route"] == "/");
    for line in &storagesvc {
        assert_eq!(request_span(line).unwrap()["route"], "/books", "{line}");
    }
    for (service, lines) in [("booksvc", &booksvc), ("storagesvc", &storagesvc)] {
        let access = lines
            .iter()
            .any(|l| l["fields"]["message"] == "finished processing request");
        assert!(
            access,
            "{service} logged no access line for request {request_id}: {lines:#?}"
        );
    }
    RequestLines {
        booksvc,
        storagesvc,
    }
}

fn trace_id(line: &Value) -> &str {
    request_span(line).unwrap()["trace_id"].as_str().unwrap()
}

fn print_lines(lines: &RequestLines) {
    for (service, lines) in [
        ("booksvc", &lines.booksvc),
        ("storagesvc", &lines.storagesvc),
    ] {
        for line in lines {
            println!(
                "{service}: {} | {}",
                line["fields"]["message"], line["spans"][0]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_log_lines_carry_its_incoming_trace_id_in_booksvc_and_storagesvc() {
    let logs = CapturedLogs::install();
    let stack = stack().await;

    let lines = read_and_collect_lines(
        &logs,
        &stack.booksvc,
        "trace-test-with-traceparent",
        Some(TRACEPARENT),
    )
    .await;
    print_lines(&lines);
    for line in lines.booksvc.iter().chain(&lines.storagesvc) {
        assert_eq!(trace_id(line), TRACE_ID, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_gets_one_new_trace_id_in_booksvc_and_storagesvc() {
    let logs = CapturedLogs::install();
    let stack = stack().await;

    let lines = read_and_collect_lines(
        &logs,
        &stack.booksvc,
        "trace-test-without-traceparent",
        None,
    )
    .await;
    print_lines(&lines);
    let started = trace_id(&lines.booksvc[0]).to_owned();
    assert!(
        started.len() == 32
            && started
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && started != "0".repeat(32),
        "booksvc started a valid trace id: {started:?}"
    );
    for line in lines.booksvc.iter().chain(&lines.storagesvc) {
        assert_eq!(trace_id(line), started, "{line}");
    }
}
