//! Traces over OTLP: one request makes one trace across booksvc and storagesvc, and the
//! trace says what happened to it (each attempt and its outcome, the fallback decision and
//! its reason, the store read, storagesvc's query).
//!
//! Both services run in this process, so they share its one global subscriber: this test
//! binary installs the production export layer (`shared::telemetry::traces::layer`) with an
//! OTLP receiver started here as its endpoint, next to a capture of the logs. The receiver
//! decodes what arrives as a collector would (OTLP/HTTP protobuf). What one process cannot
//! show is each service's own `service.name` resource: both services' spans arrive under
//! one, so a span is told to be booksvc's or storagesvc's by its server span's
//! `server.port` (each service's own listener). The links between the services are the
//! real ones: storagesvc's request span is the child of booksvc's attempt because that
//! attempt's `traceparent` said so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use shared::telemetry::{Traces, TracesArgs};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Faults, Postgres, Redis};
use system_tests::logs::CapturedLogs;
use system_tests::otlp::{
    KIND_CLIENT, KIND_SERVER, OtlpReceiver, ReceivedSpan, STATUS_ERROR, render_tree,
};
use system_tests::poll::eventually;
use system_tests::storagesvc::TestStoragesvc;
use system_tests::{header, is_stale};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// How long the spans of a request may take to arrive: the call behind a stale answer goes
/// on for up to its deadline (1.5 s), and its spans end with it.
const ARRIVAL: Duration = Duration::from_secs(15);

/// The attributes shown for each span when a trace is printed.
const SHOWN: [&str; 9] = [
    "http.route",
    "http.response.status_code",
    "booksvc.attempt.retry",
    "booksvc.attempt.outcome",
    "error.type",
    "booksvc.fallback.reason",
    "booksvc.store.source",
    "db.operation.name",
    "db.collection.name",
];

/// The process-wide subscriber: logs captured, spans exported to the receiver.
struct Exporting {
    logs: CapturedLogs,
    receiver: OtlpReceiver,
    traces: Traces,
}

fn exporting() -> &'static Exporting {
    static EXPORTING: OnceLock<Exporting> = OnceLock::new();
    EXPORTING.get_or_init(|| {
        let receiver = OtlpReceiver::start();
        let args = TracesArgs {
            otel_exporter_otlp_endpoint: Some(Url::parse(&receiver.endpoint()).unwrap()),
            ..TracesArgs::default()
        };
        let config = args.config("bookstore").expect("an endpoint is set");
        let (layer, traces) = shared::telemetry::traces::layer(&config).unwrap();
        let logs = CapturedLogs::default();
        tracing_subscriber::registry()
            .with(CapturedLogs::filter())
            .with(logs.layer())
            .with(layer)
            .try_init()
            .expect("no other subscriber in this test binary");
        Exporting {
            logs,
            receiver,
            traces,
        }
    })
}

struct Stack {
    db: Postgres,
    _redis: Redis,
    storagesvc: TestStoragesvc,
    booksvc: TestBooksvc,
}

/// Both services on their own PostgreSQL and Redis, once booksvc has read `warm_path`
/// fresh (on a busy machine storagesvc's first reads may still find its pool filling).
async fn stack(warm_path: &str) -> Stack {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let storagesvc = TestStoragesvc::spawn(&db.url(), &[]).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let booksvc = TestBooksvc::spawn(storagesvc.address, &redis.url(), &[]).await;
    eventually(
        Duration::from_secs(30),
        "a fresh read through booksvc",
        || async {
            let response = booksvc.get(warm_path).await;
            let fresh = response.status() == StatusCode::OK
                && !is_stale(header(&response, "cache-status").as_deref());
            fresh.then_some(())
        },
    )
    .await;
    Stack {
        db,
        _redis: redis,
        storagesvc,
        booksvc,
    }
}

/// One received trace, read as the two services' spans.
struct Trace {
    spans: Vec<ReceivedSpan>,
    booksvc_port: String,
    storagesvc_port: String,
}

impl Trace {
    /// The spans of `trace_id` once `complete` says they have all arrived (flushing the
    /// exporter before each look).
    async fn wait_for(stack: &Stack, trace_id: &str, complete: impl Fn(&Trace) -> bool) -> Trace {
        let exporting = exporting();
        let what = format!("every span of trace {trace_id} at the receiver");
        eventually(ARRIVAL, &what, || async {
            exporting.traces.flush().await;
            let trace = Trace {
                spans: exporting.receiver.trace(trace_id),
                booksvc_port: stack.booksvc.address.port().to_string(),
                storagesvc_port: stack.storagesvc.address.port().to_string(),
            };
            complete(&trace).then_some(trace)
        })
        .await
    }

    /// The request span of the service listening on `port`.
    fn server_span(&self, port: &str) -> Option<&ReceivedSpan> {
        self.spans
            .iter()
            .find(|span| span.kind == KIND_SERVER && span.attribute("server.port") == Some(port))
    }

    fn booksvc_request(&self) -> Option<&ReceivedSpan> {
        self.server_span(&self.booksvc_port)
    }

    fn storagesvc_requests(&self) -> Vec<&ReceivedSpan> {
        self.spans
            .iter()
            .filter(|span| {
                span.kind == KIND_SERVER
                    && span.attribute("server.port") == Some(self.storagesvc_port.as_str())
            })
            .collect()
    }

    fn named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.spans.iter().filter(|span| span.name == name).collect()
    }

    fn children_of<'a>(&'a self, parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
        self.spans
            .iter()
            .filter(|span| span.parent_span_id == parent.span_id)
            .collect()
    }

    /// booksvc's attempts to storagesvc, first one first.
    fn attempts(&self) -> Vec<&ReceivedSpan> {
        let mut attempts: Vec<&ReceivedSpan> = self
            .spans
            .iter()
            .filter(|span| span.attribute("booksvc.attempt.retry").is_some())
            .collect();
        attempts.sort_by_key(|span| span.start_unix_nanos);
        attempts
    }

    /// Which service a span ran in: that of the nearest request span above it.
    fn service_of(&self, span: &ReceivedSpan) -> String {
        let mut current = Some(span);
        while let Some(span) = current {
            if span.kind == KIND_SERVER {
                return match span.attribute("server.port") {
                    Some(port) if port == self.booksvc_port => "booksvc".into(),
                    Some(port) if port == self.storagesvc_port => "storagesvc".into(),
                    _ => "?".into(),
                };
            }
            current = self
                .spans
                .iter()
                .find(|parent| parent.span_id == span.parent_span_id);
        }
        "?".into()
    }

    fn print(&self) {
        println!(
            "{}",
            render_tree(&self.spans, |span| self.service_of(span), &SHOWN)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reads_spans_in_booksvc_and_storagesvc_form_one_trace_under_the_callers_span() {
    exporting();
    // Warmed on another key, so the traced read is a call to storagesvc, not a stored answer.
    let stack = stack("/books/1").await;

    let response = stack
        .booksvc
        .http
        .get(stack.booksvc.url("/"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!is_stale(header(&response, "cache-status").as_deref()));
    response.bytes().await.unwrap();

    let trace = Trace::wait_for(&stack, TRACE_ID, |trace| {
        trace.booksvc_request().is_some()
            && trace.storagesvc_requests().len() == 1
            && !trace.named("SELECT books").is_empty()
    })
    .await;
    trace.print();

    // booksvc's request span continues the caller's span.
    let booksvc = trace.booksvc_request().unwrap();
    assert_eq!(booksvc.parent_span_id, CALLER_SPAN_ID);
    assert_eq!(booksvc.name, "GET /");
    assert_eq!(booksvc.attribute("http.route"), Some("/"));
    assert_eq!(booksvc.attribute("http.request.method"), Some("GET"));
    assert_eq!(booksvc.attribute("http.response.status_code"), Some("200"));

    // Its call to storagesvc, and the one attempt the call made.
    let [call] = trace.named("call storagesvc")[..] else {
        panic!("one call span: {:#?}", trace.spans)
    };
    assert_eq!(call.parent_span_id, booksvc.span_id);
    let [attempt] = trace.attempts()[..] else {
        panic!("one attempt: {:#?}", trace.spans)
    };
    assert_eq!(attempt.parent_span_id, call.span_id);
    assert_eq!(attempt.kind, KIND_CLIENT);
    assert_eq!(attempt.name, "GET");
    assert_eq!(attempt.attribute("booksvc.attempt.retry"), Some("0"));
    assert_eq!(
        attempt.attribute("booksvc.attempt.outcome"),
        Some("success")
    );
    assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
    assert_eq!(
        attempt.attribute("server.port"),
        Some(trace.storagesvc_port.as_str())
    );
    assert!(
        attempt
            .attribute("url.full")
            .is_some_and(|url| url.ends_with("/books?limit=100&offset=0")),
        "{attempt:?}"
    );

    // storagesvc's request span is the child of that attempt: the link across services.
    let storagesvc = trace.storagesvc_requests()[0];
    assert_eq!(storagesvc.parent_span_id, attempt.span_id);
    assert_eq!(storagesvc.name, "GET /books");
    assert_eq!(
        storagesvc.attribute("http.response.status_code"),
        Some("200")
    );

    // And its query.
    let [query] = trace.named("SELECT books")[..] else {
        panic!("one query: {:#?}", trace.spans)
    };
    assert_eq!(query.parent_span_id, storagesvc.span_id);
    assert_eq!(query.kind, KIND_CLIENT);
    assert_eq!(query.attribute("db.system.name"), Some("postgresql"));
    assert_eq!(query.attribute("db.operation.name"), Some("SELECT"));
    assert_eq!(query.attribute("db.collection.name"), Some("books"));

    // A fresh answer: no fallback decision, no store read.
    assert!(trace.named("fallback").is_empty(), "{:#?}", trace.spans);
    assert!(trace.named("store read").is_empty(), "{:#?}", trace.spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_reads_trace_shows_its_failed_attempt_and_why_it_was_answered_from_the_store() {
    let logs = &exporting().logs;
    // The list read fresh once: its answer is stored.
    let stack = stack("/").await;

    stack.db.pause().await;
    let request_id = "degraded-read";
    let response = stack
        .booksvc
        .http
        .get(stack.booksvc.url("/"))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache_status = header(&response, "cache-status");
    assert!(is_stale(cache_status.as_deref()), "{cache_status:?}");
    response.bytes().await.unwrap();

    // The trace id booksvc started, as its log lines show it: the exported spans carry it.
    let trace_id = logs
        .lines()
        .iter()
        .filter_map(|line| line["spans"].as_array()?.first().cloned())
        .find(|span| span["request_id"] == request_id)
        .and_then(|span| span["trace_id"].as_str().map(str::to_owned))
        .expect("booksvc logged the request with its trace id");

    let trace = Trace::wait_for(&stack, &trace_id, |trace| {
        trace.booksvc_request().is_some()
            && !trace.named("call storagesvc").is_empty()
            && !trace.named("store read").is_empty()
    })
    .await;
    trace.print();

    // booksvc started the trace: its request span is the root, and it answered 200.
    let booksvc = trace.booksvc_request().unwrap();
    assert_eq!(booksvc.parent_span_id, "", "a root span");
    assert_eq!(booksvc.attribute("http.response.status_code"), Some("200"));

    // The fallback decision, a child of the request: why, and what answered.
    let [fallback] = trace.named("fallback")[..] else {
        panic!("one fallback decision: {:#?}", trace.spans)
    };
    assert_eq!(fallback.parent_span_id, booksvc.span_id);
    assert_eq!(
        fallback.attribute("booksvc.fallback.reason"),
        Some("upstream-unavailable"),
        "an attempt failed (the database hangs, the attempt timed out)"
    );
    assert_eq!(fallback.attribute("booksvc.store.source"), Some("memory"));
    let [read] = trace.children_of(fallback)[..] else {
        panic!("one store read under the decision: {:#?}", trace.spans)
    };
    assert_eq!(read.name, "store read");
    assert_eq!(read.attribute("booksvc.store.source"), Some("memory"));

    // The failed first attempt, under the call (which went on after the answer).
    let call = trace.named("call storagesvc")[0];
    assert_eq!(call.parent_span_id, booksvc.span_id);
    let attempts = trace.attempts();
    let first = attempts.first().expect("at least one attempt");
    assert_eq!(first.parent_span_id, call.span_id);
    assert_eq!(first.attribute("booksvc.attempt.retry"), Some("0"));
    assert_ne!(first.attribute("booksvc.attempt.outcome"), Some("success"));
    assert_eq!(first.status_code, STATUS_ERROR);
    assert_eq!(
        first.attribute("error.type"),
        first.attribute("booksvc.attempt.outcome")
    );
    for (retry, attempt) in attempts.iter().enumerate() {
        assert_eq!(
            attempt.attribute("booksvc.attempt.retry"),
            Some(retry.to_string().as_str())
        );
    }
    // Whatever storagesvc's spans arrived hang under booksvc's attempts.
    let attempt_ids: Vec<&str> = attempts.iter().map(|a| a.span_id.as_str()).collect();
    for request in trace.storagesvc_requests() {
        assert!(
            attempt_ids.contains(&request.parent_span_id.as_str()),
            "{request:?}"
        );
    }
    // The answer was sent long before the call ended: the request span is not held open.
    assert!(
        booksvc.end_unix_nanos < call.end_unix_nanos,
        "booksvc answered at {} and the call ended at {}",
        booksvc.end_unix_nanos,
        call.end_unix_nanos
    );
    stack.db.unpause().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_caller_did_not_sample_its_trace_exports_no_span_from_either_service() {
    const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const MARKER_TRACE_ID: &str = "5c1c63257de34c67a0d4a2b8e6f2c1d9";
    let exporting = exporting();
    let stack = stack("/books/1").await;
    let read = |trace_id: &str, flags: &str| {
        let traceparent = format!("00-{trace_id}-{CALLER_SPAN_ID}-{flags}");
        let request = stack
            .booksvc
            .http
            .get(stack.booksvc.url("/"))
            .header("traceparent", traceparent);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let stale = is_stale(header(&response, "cache-status").as_deref());
            response.bytes().await.unwrap();
            stale
        }
    };

    // A cold key: a call to storagesvc and its query, under a trace the caller left out.
    assert!(!read(UNSAMPLED_TRACE_ID, "00").await, "a fresh answer");
    // Then a sampled read: once its spans have arrived, the first read's would have too.
    read(MARKER_TRACE_ID, "01").await;
    let marker = Trace::wait_for(&stack, MARKER_TRACE_ID, |trace| {
        trace.booksvc_request().is_some() && !trace.storagesvc_requests().is_empty()
    })
    .await;
    assert!(marker.booksvc_request().is_some());
    exporting.traces.flush().await;

    let unsampled = exporting.receiver.trace(UNSAMPLED_TRACE_ID);
    assert!(unsampled.is_empty(), "spans exported: {unsampled:#?}");
    // Both services did handle it, under that trace id: storagesvc was told it, unsampled.
    let handled = exporting
        .logs
        .lines()
        .iter()
        .filter(|line| line["fields"]["message"] == "finished processing request")
        .filter(|line| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["trace_id"] == UNSAMPLED_TRACE_ID))
        })
        .count();
    assert_eq!(handled, 2, "booksvc's request and storagesvc's");
}
