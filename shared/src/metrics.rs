//! Prometheus metrics: per-route request counts and latency, and the `/metrics` route.
//!
//! Each service owns its own [`Registry`] (no global recorder), so two services started in
//! one test process keep separate figures, exactly as two processes would.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Problem;

/// Label set of the HTTP metrics. `route` is the matched route template (`/books/{id}`),
/// never the raw path, so ids cannot blow up the number of series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// Request count and latency histogram, by method, route and status.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
    in_flight: Gauge<i64, AtomicI64>,
}

/// Latency buckets from 0.25 ms to about 8 s: fine enough to see a 1 ms cache hit and a
/// 1.5 s deadline in the same histogram.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_server_requests",
            "HTTP requests served, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time to produce the response, by method, route and status",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_server_requests_in_flight",
            "HTTP requests being handled now",
            in_flight.clone(),
        );
        registry.register_collector(Box::new(DroppedLogLines));
        Self {
            requests,
            duration,
            in_flight,
        }
    }

    fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }
}

/// Middleware recording every response. Applied with `Router::layer`, so `MatchedPath` is set.
pub async fn track_http(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |path| path.as_str().to_owned());
    // Decremented when the request ends, however it ends (a client that hangs up drops
    // this future).
    metrics.in_flight.inc();
    let _in_flight = InFlight(metrics.in_flight.clone());
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.observe(labels, started.elapsed().as_secs_f64());
    response
}

struct InFlight(Gauge<i64, AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics` in the OpenMetrics text format, which Prometheus scrapes natively.
pub fn routes<S>(registry: Arc<Registry>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(render))
        .with_state(registry)
}

async fn render(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    if let Err(err) = encode(&mut body, &registry) {
        tracing::error!(error = %err, "failed to encode metrics");
        return Problem::internal().into_response();
    }
    let content_type =
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `log_lines_dropped_total`: lines the log writer thread could not keep up with, read
/// at each scrape.
#[derive(Debug)]
struct DroppedLogLines;

impl prometheus_client::collector::Collector for DroppedLogLines {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let counter = prometheus_client::metrics::counter::ConstCounter::new(
            crate::telemetry::dropped_log_lines(),
        );
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer could not keep up with them",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(&counter, metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropped_log_lines_are_a_counter_of_every_service() {
        let mut registry = Registry::default();
        HttpMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE log_lines_dropped counter\n"),
            "{text}"
        );
        assert!(text.contains("\nlog_lines_dropped_total 0\n"), "{text}");
    }
}
