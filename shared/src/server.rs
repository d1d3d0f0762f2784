//! The HTTP server both services run: two listeners (the public port and the admin port),
//! the common layers around each router, the bounds on what one client can hold, and a
//! graceful shutdown that drains in-flight requests for a bounded time.
//!
//! The accept loop is written out here rather than left to `axum::serve`, because the
//! bounds of the public edge (docs/architecture.md, "Limits") live at the connection level: a cap on open connections
//! (a semaphore taken before each `accept`), a header read timeout and a header size limit
//! (hyper's HTTP/1 connection settings). The request-level bounds (request timeout,
//! requests in progress, body size) are layers of [`with_common_layers`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Level;

use crate::Problem;
use crate::config::AccessLog;
use crate::metrics::{HttpMetrics, track_http};
use crate::problem;
use crate::telemetry::{record_response, request_span};

/// Largest request body either service reads by default; larger ones get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Headers per request at most (hyper's default, named): more is answered `431`.
pub const MAX_HEADERS: usize = 100;

/// The admin listener's own caps: it serves a scraper and an operator, not the internet,
/// and must stay reachable while the public port is saturated.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
pub const ADMIN_MAX_REQUESTS_IN_FLIGHT: usize = 16;

/// `Retry-After` of a request refused because too many are in progress: they are short
/// (bounded by the request timeout, usually milliseconds), so a second is plenty.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` that is not the client's doing (out of file descriptors,
/// say): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What one client can hold, for each listener of a service, and which of its answers
/// are logged. Defaults are those of [`crate::config::CommonArgs`], where each has a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time to send a request's headers; an idle keep-alive connection is closed after it.
    pub header_read_timeout: Duration,
    /// Time from the headers to the answer (`504` problem after it).
    pub request_timeout: Duration,
    /// Open connections at most; beyond it new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Requests in progress at most; beyond it `503` + `Retry-After` at once.
    pub max_requests_in_flight: usize,
    /// Largest request head, in bytes (hyper's read buffer; `431` beyond it).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes (`413` beyond it; before reading when announced).
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after the shutdown signal.
    pub shutdown_grace: Duration,
    /// Which answers get an access log line.
    pub access_log: AccessLog,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_requests_in_flight: 512,
            max_header_bytes: 16 * 1024,
            max_body_bytes: MAX_BODY_BYTES,
            shutdown_grace: Duration::from_secs(10),
            access_log: AccessLog::All,
        }
    }
}

impl ServerLimits {
    /// The same timeouts and sizes, with the admin listener's own caps.
    fn for_admin(self) -> Self {
        Self {
            max_connections: ADMIN_MAX_CONNECTIONS,
            max_requests_in_flight: ADMIN_MAX_REQUESTS_IN_FLIGHT,
            ..self
        }
    }
}

/// Wraps a router (a service's routes, or its admin routes) in the layers every service
/// has, outermost first: request id, trace context (which the request span and outgoing
/// calls read), the caller's deadline, request span and access log, panic guard, metrics,
/// then the request bounds: request timeout, announced body size, requests in progress,
/// body size as read. Unknown routes and methods answer problem documents.
pub fn with_common_layers(
    router: Router,
    http_metrics: HttpMetrics,
    limits: &ServerLimits,
) -> Router {
    router
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::of(
                problem::METHOD_NOT_ALLOWED,
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
                        .on_response(LogAndRecordResponse(limits.access_log))
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
                .layer(axum::middleware::from_fn_with_state(
                    limits.request_timeout,
                    time_limit,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    limits.max_body_bytes,
                    refuse_announced_oversize,
                ))
                // Refused at once rather than queued: a queue here would only add its
                // wait to a request whose caller has a deadline of its own.
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    Problem::unavailable(
                        problem::OVERLOADED,
                        "too many requests in progress; try again shortly",
                        OVERLOADED_RETRY_AFTER,
                    )
                }))
                .load_shed()
                // Global: `Router::layer` wraps each route on its own, and a plain
                // concurrency limit would then be per route.
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits.max_requests_in_flight,
                ))
                // A body without `Content-Length` (chunked) is cut at the same size as
                // it is read; the extractors answer that with a 413 problem.
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
}

/// The access line of a response (tower-http's, at `INFO`) when the access log keeps it,
/// and its status recorded on the request span for the traces.
#[derive(Debug, Clone, Copy)]
struct LogAndRecordResponse(AccessLog);

impl<B> OnResponse<B> for LogAndRecordResponse {
    fn on_response(
        self,
        response: &axum::http::Response<B>,
        latency: Duration,
        span: &tracing::Span,
    ) {
        record_response(response.status(), span);
        if self.0.logs(response.status()) {
            DefaultOnResponse::new()
                .level(Level::INFO)
                .on_response(response, latency, span);
        }
    }
}

/// Bounds a request from its headers to its answer. The answer is `504`, not `503`: by
/// then the request may have been applied (a write whose commit went through), and `503`
/// promises it was not; nor `408`, which says the client was slow and invites clients to
/// send the request again on their own.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?limit, "request cut off by the request timeout");
            Problem::of(
                problem::REQUEST_TIMEOUT,
                format!("no answer within {limit:?}; the request may have been applied"),
            )
            .into_response()
        }
    }
}

/// Refuses a request whose announced `Content-Length` is over the limit before a byte of
/// its body is read: the client learns at once, and no memory is spent on it.
async fn refuse_announced_oversize(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > max_body_bytes as u64 => Problem::of(
            problem::BODY_TOO_LARGE,
            format!("the request body may be {max_body_bytes} bytes at most"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// A bound listener and the router it serves.
pub struct Endpoint {
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
}

impl Endpoint {
    pub fn new(listener: TcpListener, router: Router) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            address,
            router,
        })
    }
}

/// A bound service, ready to run: its public listener (the API, liveness, terse
/// readiness), its admin listener (metrics, detailed health), and the background tasks
/// that live exactly as long as it serves. Each service's `Application::build` wires its
/// own parts and returns one of these.
pub struct Service {
    public: Endpoint,
    admin: Endpoint,
    limits: ServerLimits,
    background: Vec<JoinHandle<()>>,
}

impl Service {
    /// Binds `bind_addr` (port 0 picks a free port, for tests); the error names `BIND_ADDR`.
    pub async fn bind(bind_addr: SocketAddr) -> anyhow::Result<TcpListener> {
        bind_named(bind_addr, "BIND_ADDR").await
    }

    /// Binds the admin listener; the error names `ADMIN_BIND_ADDR`.
    pub async fn bind_admin(admin_bind_addr: SocketAddr) -> anyhow::Result<TcpListener> {
        bind_named(admin_bind_addr, "ADMIN_BIND_ADDR").await
    }

    /// Both routers get the common layers here, each with its own caps, and the same
    /// request metrics.
    pub fn new(
        public: (TcpListener, Router),
        admin: (TcpListener, Router),
        http_metrics: HttpMetrics,
        limits: ServerLimits,
        background: Vec<JoinHandle<()>>,
    ) -> std::io::Result<Self> {
        let public_router = with_common_layers(public.1, http_metrics.clone(), &limits);
        let admin_router = with_common_layers(admin.1, http_metrics, &limits.for_admin());
        Ok(Self {
            public: Endpoint::new(public.0, public_router)?,
            admin: Endpoint::new(admin.0, admin_router)?,
            limits,
            background,
        })
    }

    /// The public address actually bound (the real port when `BIND_ADDR` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.public.address
    }

    /// The admin address actually bound.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin.address
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves both listeners until `shutdown` resolves (tests use this to stop a service
    /// they started), drains both for at most the grace period, then stops the background
    /// tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopping) = watch::channel(());
        let grace = self.limits.shutdown_grace;
        let signal = async move {
            shutdown.await;
            tracing::info!(
                ?grace,
                "shutting down: no new connections, draining in-flight requests"
            );
            let _ = stop.send(());
        };
        let public = serve(self.public, self.limits, stopping.clone());
        let admin = serve(self.admin, self.limits.for_admin(), stopping);
        tokio::join!(signal, public, admin);
        tracing::info!("server stopped");
        for task in self.background {
            task.abort();
        }
        Ok(())
    }
}

async fn bind_named(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {variable}={addr}: {err}"))
}

/// Accepts connections on `endpoint` until `stopping` changes, each served by hyper under
/// `limits`; then stops accepting and lets open connections finish their requests for at
/// most the grace period, and cuts whatever is left.
async fn serve(endpoint: Endpoint, limits: ServerLimits, mut stopping: watch::Receiver<()>) {
    let Endpoint {
        listener,
        address,
        router,
    } = endpoint;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Dropping the set aborts every connection still open: nothing outlives the server.
    let mut connections = JoinSet::new();
    loop {
        // A slot first, then `accept`: beyond the cap, new connections wait in the
        // kernel's listen backlog (as in mini-redis) instead of being refused, so a short
        // burst is absorbed rather than turned into errors. A slot frees within the header
        // read timeout at worst, since even an idle keep-alive connection is closed then.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            _ = stopping.changed() => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    pause_after_accept_error(&err).await;
                    continue;
                }
            },
            _ = stopping.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            // A client that times out or hangs up ends here; nothing to tell anyone.
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // No new connections from here on: the socket is closed, clients are refused.
    drop(listener);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            %address,
            ?grace,
            "requests still in flight after the grace period; stopping anyway"
        );
    }
}

/// Errors of one connection (reset before it was accepted) are the client's: go on at
/// once. Others (no file descriptors left) would repeat at once: pause first.
async fn pause_after_accept_error(err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
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
    use axum::http::{Request, StatusCode};
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

    thread_local! {
        static THIS_THREADS_LOGS: std::cell::RefCell<Option<Captured>> =
            const { std::cell::RefCell::new(None) };
    }

    /// The writer of the test subscriber: the current thread's capture, if it has one.
    struct ThreadsCapture;

    impl std::io::Write for ThreadsCapture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            THIS_THREADS_LOGS.with(|capture| {
                if let Some(captured) = capture.borrow_mut().as_mut() {
                    captured.write_all(buf)?;
                }
                Ok(buf.len())
            })
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Collects the JSON log lines written on this thread from now on (a `#[tokio::test]`
    /// runs its request on its own thread). One global subscriber serves every test: with
    /// a scoped subscriber per test, tracing's cached interest of a callsite first reached
    /// by a test without one races with the next test's registration, and lines go missing.
    fn capture_logs_of_this_thread() -> Captured {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::registry()
                .with(crate::telemetry::json_layer(|| ThreadsCapture));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in these tests");
        });
        let captured = Captured::default();
        THIS_THREADS_LOGS.with(|capture| *capture.borrow_mut() = Some(captured.clone()));
        captured
    }

    #[tokio::test]
    async fn every_log_line_of_a_request_carries_its_request_id() {
        let captured = capture_logs_of_this_thread();

        let routes = Router::new().route(
            "/work",
            get(|| async {
                tracing::info!("handler step one");
                tracing::warn!("handler step two");
                "done"
            }),
        );
        let app = with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &ServerLimits::default(),
        );
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

    #[tokio::test]
    async fn with_the_access_log_on_errors_only_a_failed_answer_gets_a_line() {
        let captured = capture_logs_of_this_thread();
        let routes = Router::new().route(
            "/work",
            get(|| async {
                tracing::info!("handler step");
                "done"
            }),
        );
        let limits = ServerLimits {
            access_log: AccessLog::Errors,
            ..ServerLimits::default()
        };
        let app = with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &limits,
        );
        for path in ["/work", "/nowhere"] {
            app.clone().oneshot(request_for(path)).await.unwrap();
        }

        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let access: Vec<serde_json::Value> = output
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["fields"]["message"] == "finished processing request")
            .collect();
        assert_eq!(access.len(), 1, "{output}");
        assert_eq!(access[0]["fields"]["status"], 404, "{output}");
        assert!(
            output.contains("handler step"),
            "other lines stay: {output}"
        );
    }

    fn request_for(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    async fn problem_of(response: axum::response::Response) -> serde_json::Value {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_cap_are_refused_at_once_on_every_route() {
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered = Arc::new(Mutex::new(Some(entered_tx)));
        let release = Arc::new(tokio::sync::Notify::new());
        let held = Arc::clone(&release);
        let routes = Router::new()
            .route(
                "/slow",
                get(move || async move {
                    if let Some(tx) = entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    held.notified().await;
                    "slow"
                }),
            )
            .route("/other", get(|| async { "other" }));
        let limits = ServerLimits {
            max_requests_in_flight: 1,
            ..ServerLimits::default()
        };
        let app = with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &limits,
        );
        let slow = tokio::spawn(app.clone().oneshot(request_for("/slow")));
        entered_rx.await.unwrap();

        // Another route, so the cap is the service's, not one route's.
        let refused = app.clone().oneshot(request_for("/other")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(problem_of(refused).await["status"], 503);

        release.notify_one();
        assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
        let admitted = app.oneshot(request_for("/other")).await.unwrap();
        assert_eq!(admitted.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_request_timeout_is_answered_504() {
        let routes = Router::new().route(
            "/hangs",
            // A handler that never answers.
            get(std::future::pending::<&'static str>),
        );
        let limits = ServerLimits {
            request_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let app = with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &limits,
        );
        let started = tokio::time::Instant::now();
        let response = app.oneshot(request_for("/hangs")).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(problem_of(response).await["status"], 504);
    }

    #[tokio::test]
    async fn an_announced_body_over_the_limit_is_refused_without_reading_it() {
        let routes = Router::new().route(
            "/books",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let app = with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &ServerLimits::default(),
        );
        // The body never ends: were it read, the request would hang.
        let never_ends = Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let request = Request::post("/books")
            .header("content-length", (5 * 1024 * 1024).to_string())
            .body(never_ends)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(1), app.oneshot(request))
            .await
            .expect("answered without reading the body")
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(problem_of(response).await["status"], 413);
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
        with_common_layers(
            routes,
            HttpMetrics::register(&mut Registry::default()),
            &ServerLimits::default(),
        )
    }

    /// Sends `request` through `trace_echo_app` and returns the trace ids the handler saw and
    /// the `trace_id` of every log line written meanwhile.
    async fn trace_ids_seen(request: Request<Body>) -> (String, Vec<String>) {
        let captured = capture_logs_of_this_thread();

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
