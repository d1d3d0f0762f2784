//! The HTTP server both services run: common layers around a service's routes, and a
//! graceful shutdown that drains in-flight requests for a bounded time.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::Problem;
use crate::metrics::{HttpMetrics, track_http};
use crate::telemetry::request_span;

/// Largest request body either service reads; larger ones get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Wraps a service's complete router (its routes, health, metrics) in the layers every
/// service has, outermost first: request id, request span and access log, panic guard,
/// metrics, body limit. Unknown routes and methods answer problem documents.
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
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
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
}
