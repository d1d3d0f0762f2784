//! Logs and traces: one subscriber set-up for both services, and the per-request span that
//! puts the request id and the trace id on every line logged while handling a request and
//! is the request's span in an exported trace ([`traces`]).

pub mod traces;

use std::io::BufWriter;
use std::sync::OnceLock;

use axum::extract::MatchedPath;
use axum::http::uri::Authority;
use axum::http::{Request, header};
use tracing::{Level, Span};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::LogFormat;
use crate::trace_context::TraceContext;
pub use traces::{TRACE_ONLY, Traces, TracesArgs, TracesConfig};

/// Log lines waiting for the writer thread. A line is a few hundred bytes, so this is a
/// few megabytes at most: seconds of logging at thousands of requests a second, enough to
/// ride out a stall of whatever reads the process's output.
const LOG_QUEUE_LINES: usize = 16_384;

/// The most the log-writing thread gathers before it writes (it also writes whenever the
/// queue is empty).
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// The lines dropped because the queue was full, once [`init`] made the writer.
static DROPPED_LOG_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the writer thread could not keep up (0 before [`init`]); a
/// metric of both services.
pub fn dropped_log_lines() -> u64 {
    DROPPED_LOG_LINES
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// What [`init`] set up that needs stopping: the log writer thread and the traces'
/// exporter, if any.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<Traces>,
    /// Dropped, it writes the lines still queued and stops the writer thread.
    _log_writer: Option<WorkerGuard>,
}

impl Telemetry {
    /// Sends the spans not exported yet and stops the exporter; called once the server
    /// has drained, so the last requests' spans are not lost. The log lines still queued
    /// are written when `self` is dropped, here or on an early return from `main`.
    pub async fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// Installs the global subscriber: the logs (`RUST_LOG` filters, default `info`) and, when
/// `traces` names an endpoint, the export of the spans of `service`.
///
/// Called once from `main`. Fails if a subscriber is already installed, which tests that
/// start several services in one process ignore on purpose.
pub fn init(format: LogFormat, traces: &TracesArgs, service: &str) -> anyhow::Result<Telemetry> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let config = traces.config(service);
    let (exported, traces) = match &config {
        Some(config) => {
            // The exported spans whatever `RUST_LOG` says (the log layer skips those made
            // for traces only, and the request span's target logs nothing else).
            for directive in traces::ALWAYS_TRACED {
                filter = filter.add_directive(directive.parse()?);
            }
            let (layer, traces) = traces::layer(config)?;
            (Some(layer), Some(traces))
        }
        None => (None, None),
    };
    // Lines are formatted on the thread that logs them and written by a thread of their
    // own. A write to stdout blocks when whatever reads it (a container runtime's log
    // driver) falls behind, and a blocked write on a runtime thread would stall every
    // request on that thread: an answer from memory that takes 2 ms took 40 when logged
    // straight to stdout on a busy machine. When the queue is full a line is dropped, not
    // waited for, and counted (`log_lines_dropped_total`).
    //
    // The writing thread takes every line queued, then flushes: behind a buffer, the lines
    // of a busy moment leave in one write, not one write (and one system call) each, and
    // none waits longer than the queue takes to drain.
    let (writer, log_writer) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(LOG_WRITE_BYTES, std::io::stdout()));
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    // One filter for the whole subscriber: a per-layer `EnvFilter` loses the request span
    // from some log lines. The log layer's own filter only skips the spans made for traces.
    let logs = match format {
        LogFormat::Json => json_layer(writer).boxed(),
        LogFormat::Pretty => fmt::layer().pretty().with_writer(writer).boxed(),
    }
    .with_filter(filter_fn(traces::is_logged));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(exported)
        .try_init()?;
    if let Some(config) = config {
        tracing::info!(
            endpoint = %config.endpoint,
            service_name = %config.service_name,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry {
        traces,
        _log_writer: Some(log_writer),
    })
}

/// The JSON log layer. The span list carries the request span's fields (request id,
/// route) into every line, so a log collector can group one request's lines.
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    json_subscriber::fmt::layer()
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(writer)
}

/// The span every request runs in (used by the server's `TraceLayer`).
///
/// While traces are exported and the request's trace is recorded, it is also the
/// request's server span: named `METHOD route`, with the OpenTelemetry HTTP attributes (the
/// status code is recorded by [`record_response`]), and the child of the caller's span
/// when a `traceparent` came in. A trace the sampler left out gets the plain span: the
/// log layer formats every field of it for every line, and the attributes would cost that
/// for nothing.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    // Set by `trace_context::propagate`, which runs before this span is made.
    let context = request.extensions().get::<TraceContext>();
    let trace_id = context
        .map(|context| context.trace_id().to_string())
        .unwrap_or_default();
    if !traces::exporting() || context.is_some_and(|context| !context.recorded()) {
        return tracing::span!(
            Level::INFO,
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            route,
            request_id,
            trace_id,
        );
    }
    let method = request.method().as_str();
    // The name of an HTTP server span: `GET /books/{id}`, or only the method off-route.
    let name = if route.is_empty() {
        method.to_owned()
    } else {
        format!("{method} {route}")
    };
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|host| host.parse::<Authority>().ok());
    let span = tracing::span!(
        Level::INFO,
        "request",
        method,
        path = %request.uri().path(),
        route,
        request_id,
        trace_id,
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        server.address = authority.as_ref().map(Authority::host),
        server.port = authority.as_ref().and_then(Authority::port_u16),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(context) = context
        && let Some(parent) = context.incoming()
    {
        let tracestate = context.tracestate().and_then(|value| value.to_str().ok());
        traces::continue_remote_parent(&span, parent, tracestate);
    }
    span
}

/// Records a response on its request span: the status code, and an error status for a 5xx
/// (the server failed; a 4xx is the client's doing). A span without these fields (traces
/// not exported) ignores them.
pub fn record_response(status: axum::http::StatusCode, span: &Span) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
