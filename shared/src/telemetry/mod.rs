//! Logging: one subscriber set-up for both services, and the per-request span that puts the
//! request id and the trace id on every line logged while handling a request.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::{Level, Span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;
use crate::trace_context::TraceContext;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
///
/// Called once from `main`. Fails if a subscriber is already installed, which tests that
/// start several services in one process ignore on purpose.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(json_layer(std::io::stdout)).try_init()?,
        LogFormat::Pretty => registry.with(fmt::layer().pretty()).try_init()?,
    }
    Ok(())
}

/// The JSON log layer. The span list carries the request span's fields (request id,
/// route) into every line, so a log collector can group one request's lines.
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(writer)
}

/// The span every request runs in (used by the server's `TraceLayer`).
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
    let trace_id = request
        .extensions()
        .get::<TraceContext>()
        .map(|context| context.trace_id().to_string())
        .unwrap_or_default();
    tracing::span!(
        Level::INFO,
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route,
        request_id,
        trace_id,
    )
}
