//! The HTTP server both services run: common layers around a service's routes, and a
//! graceful shutdown that drains in-flight requests for a bounded time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::Problem;
use crate::metrics::{HttpMetrics, track_http};
use crate::telemetry::request_span;

/// Largest request body either service reads; larger ones get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Wraps a service's complete router (its routes, health, metrics) in the layers every
/// service has, outermost first: request id, trace context (which the request span and
/// outgoing calls read), the caller's deadline, request span and access log, panic guard, metrics, body limit.
/// Unknown routes and methods answer problem documents.
pub fn with_common_layers(router: Router, http_metrics: HttpMetrics) -> Router {
    router
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "method not allowed on this route",
            )
        })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(axum::middleware::from_fn(crate::trace_context::propagate))
                .layer(axum::middleware::from_fn(crate::deadline::propagate))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO))
                        // The access line above already has the status; a 503 during an
                        // outage is expected behaviour, explained by the service's own
                        // warning, not an error line per request.
                        .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(|_| {
                    Problem::internal().into_response()
                }))
                .layer(axum::middleware::from_fn_with_state(
                    http_metrics,
                    track_http,
                ))
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
}

/// A bound service, ready to run: its listener, its complete router, and the background
/// tasks that live exactly as long as it serves. Each service's `Application::build`
/// wires its own parts and returns one of these.
pub struct Service {
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
    shutdown_grace: Duration,
    background: Vec<JoinHandle<()>>,
}

impl Service {
    /// Binds `bind_addr` (port 0 picks a free port, for tests); the error names `BIND_ADDR`.
    pub async fn bind(bind_addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(bind_addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot listen on BIND_ADDR={bind_addr}: {err}"))
    }

    pub fn new(
        listener: TcpListener,
        router: Router,
        shutdown_grace: Duration,
        background: Vec<JoinHandle<()>>,
    ) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            address,
            router,
            shutdown_grace,
            background,
        })
    }

    /// The address actually bound (the real port when `BIND_ADDR` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves (tests use this to stop a service they started),
    /// then stops the background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = serve(self.listener, self.router, shutdown, self.shutdown_grace).await;
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// Serves `app` until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish for at most `grace`; whatever is still running then is cut so the process exits.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, draining in-flight requests"
        );
        let _ = draining_tx.send(());
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    let grace_expired = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended without a shutdown signal: nothing to time.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => {
            tracing::info!("server stopped");
            result
        }
        () = grace_expired => {
            tracing::warn!(?grace, "requests still in flight after the grace period; stopping anyway");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (what `docker stop` sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use prometheus_client::registry::Registry;
    use tower::ServiceExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::trace_context::{self, TraceContext};
    use http_body_util::BodyExt;

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_log_line_of_a_request_carries_its_request_id() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(crate::telemetry::json_layer(move || writer.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);

        let routes = Router::new().route(
            "/work",
            get(|| async {
                tracing::info!("handler step one");
                tracing::warn!("handler step two");
                "done"
            }),
        );
        let app = with_common_layers(routes, HttpMetrics::register(&mut Registry::default()));
        let response = app
            .oneshot(Request::get("/work").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!request_id.is_empty());

        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            lines.len() >= 3,
            "two handler lines and the access log line: {output}"
        );
        for line in &lines {
            let request_span = &line["spans"][0];
            assert_eq!(request_span["request_id"], request_id.as_str(), "{line}");
            assert_eq!(request_span["route"], "/work", "{line}");
        }
        let access_log = lines
            .iter()
            .find(|l| l["fields"]["message"] == "finished processing request");
        assert!(
            access_log.is_some_and(|l| l["fields"]["status"] == 200),
            "{output}"
        );
    }

    /// A route that logs, and answers with the trace id it sees in its request's
    /// extensions and as the current trace context, separated by a space.
    fn trace_echo_app() -> Router {
        let routes = Router::new().route(
            "/work",
            get(
                |axum::Extension(context): axum::Extension<TraceContext>| async move {
                    tracing::info!("handler step");
                    let current = trace_context::current().map(|c| c.trace_id().to_string());
                    format!("{} {}", context.trace_id(), current.unwrap_or_default())
                },
            ),
        );
        with_common_layers(routes, HttpMetrics::register(&mut Registry::default()))
    }

    /// Sends `request` through `trace_echo_app` and returns the trace ids the handler saw and
    /// the `trace_id` of every log line written meanwhile.
    async fn trace_ids_seen(request: Request<Body>) -> (String, Vec<String>) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(crate::telemetry::json_layer(move || writer.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);

        let response = trace_echo_app().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let logged = output
            .lines()
            .map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                // A line logged before the request span exists names the trace id itself.
                let in_span = line["spans"][0]["trace_id"].as_str();
                let trace_id = in_span.or(line["fields"]["trace_id"].as_str());
                trace_id.unwrap_or("").to_owned()
            })
            .collect();
        (String::from_utf8(body.to_vec()).unwrap(), logged)
    }

    #[tokio::test]
    async fn every_log_line_of_a_request_carries_its_incoming_trace_id() {
        let request = Request::get("/work")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .unwrap();
        let (seen, logged) = trace_ids_seen(request).await;
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(seen, format!("{trace_id} {trace_id}"));
        assert!(
            logged.len() >= 2,
            "the handler line and the access log line"
        );
        assert!(logged.iter().all(|id| id == trace_id), "{logged:?}");
    }

    #[tokio::test]
    async fn a_request_without_a_valid_traceparent_starts_a_new_trace() {
        for traceparent in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let mut request = Request::get("/work");
            if let Some(value) = traceparent {
                request = request.header("traceparent", value);
            }
            let (seen, logged) = trace_ids_seen(request.body(Body::empty()).unwrap()).await;
            let (in_extensions, current) = seen.split_once(' ').unwrap();
            assert_eq!(in_extensions, current);
            assert_eq!(in_extensions.len(), 32);
            assert_ne!(in_extensions, "0".repeat(32));
            assert!(logged.len() >= 2);
            assert!(logged.iter().all(|id| id == in_extensions), "{logged:?}");
        }
    }
}
