//! Liveness (`/.well-known/alive`) and readiness (`/.well-known/health`) with pluggable checks.
//!
//! Readiness is served twice: terse on the public port (`{"status":"up"}` or
//! `{"status":"down"}`, with the same status code), detailed on the admin port (each check,
//! its state and its error). Error strings name hosts, ports and drivers: they are for the
//! operator, not for whoever can reach the public port.
//!
//! The admin port also answers `/.well-known/started`: `200` once the instance has been
//! ready at least once since it started, and from then on for as long as it answers. That
//! is the check for an orchestrator that has one health check for everything (Docker
//! Swarm): it gates a rolling update on the new replica being ready, yet never kills a
//! running replica because a dependency went down.
//!
//! Liveness only says the process answers. Readiness runs every registered check, each
//! bounded by a timeout so a hanging dependency makes the probe fail rather than hang,
//! and answers 503 when a *critical* check fails. A service registers a dependency it can
//! work without (booksvc and storagesvc, say) as non-critical: it is reported, not fatal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};

use crate::openapi::{AliveAnswers, ReadinessAnswers};

/// `up` or `down`: all the public port says about the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Up,
    Down,
}

/// The body of the public liveness and readiness answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({ "status": "up" }))]
pub struct TerseHealth {
    pub status: HealthStatus,
}

/// The result of one check: healthy or not, plus details for the response body.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub healthy: bool,
    pub details: Value,
}

impl CheckOutcome {
    pub fn up(details: Value) -> Self {
        Self {
            healthy: true,
            details,
        }
    }

    pub fn down(details: Value) -> Self {
        Self {
            healthy: false,
            details,
        }
    }
}

/// A dependency check, run on every readiness probe.
pub trait HealthCheck: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>>;
}

struct Registered {
    name: &'static str,
    critical: bool,
    check: Arc<dyn HealthCheck>,
}

/// The set of checks behind the readiness endpoint.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Vec<Registered>>,
    timeout: Option<Duration>,
    /// Set the first time a readiness report says ready.
    started: Arc<AtomicBool>,
}

/// How long one check may take before it counts as failed.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Health {
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// Runs every check concurrently; ready when every critical check is healthy.
    pub async fn report(&self) -> (bool, Value) {
        let timeout = self.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT);
        let runs = self.checks.iter().map(|registered| async move {
            let outcome = match tokio::time::timeout(timeout, registered.check.check()).await {
                Ok(outcome) => outcome,
                Err(_) => CheckOutcome::down(json!({
                    "error": format!("check did not answer within {timeout:?}")
                })),
            };
            (registered, outcome)
        });
        let outcomes = futures::future::join_all(runs).await;

        let mut ready = true;
        let mut checks = serde_json::Map::new();
        for (registered, outcome) in outcomes {
            ready &= outcome.healthy || !registered.critical;
            let mut entry = json!({
                "status": if outcome.healthy { "up" } else { "down" },
                "critical": registered.critical,
            });
            if let (Value::Object(entry), Value::Object(details)) = (&mut entry, outcome.details) {
                entry.extend(details);
            }
            checks.insert(registered.name.to_owned(), entry);
        }
        let body = json!({ "status": if ready { "up" } else { "down" }, "checks": checks });
        if ready {
            self.started.store(true, Ordering::Relaxed);
        }
        (ready, body)
    }

    /// Whether the instance has been ready at least once: checked now if it never was.
    pub async fn started(&self) -> bool {
        if self.started.load(Ordering::Relaxed) {
            return true;
        }
        self.report().await.0
    }

    /// The public port's `/.well-known` routes: liveness, and readiness with its status
    /// code and a body that says only `up` or `down`.
    pub fn public_routes<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/.well-known/alive", get(alive))
            .route("/.well-known/health", get(terse_readiness))
            .with_state(self)
    }

    /// The admin port's `/.well-known` routes: liveness, and readiness with every check.
    pub fn admin_routes<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/.well-known/alive", get(alive))
            .route("/.well-known/health", get(readiness))
            .route("/.well-known/started", get(started))
            .with_state(self)
    }
}

/// Builds a [`Health`]: `Health::builder().critical("database", check).build()`.
#[derive(Default)]
pub struct HealthBuilder {
    checks: Vec<Registered>,
    timeout: Option<Duration>,
}

impl HealthBuilder {
    /// A dependency without which the service cannot serve: its failure fails readiness.
    pub fn critical(mut self, name: &'static str, check: impl HealthCheck) -> Self {
        self.checks.push(Registered {
            name,
            critical: true,
            check: Arc::new(check),
        });
        self
    }

    /// A dependency the service can work without: reported, never fails readiness.
    pub fn optional(mut self, name: &'static str, check: impl HealthCheck) -> Self {
        self.checks.push(Registered {
            name,
            critical: false,
            check: Arc::new(check),
        });
        self
    }

    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn build(self) -> Health {
        Health {
            checks: Arc::new(self.checks),
            timeout: self.timeout,
            started: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Liveness
///
/// `200` while the process runs; it checks nothing else.
#[utoipa::path(
    get,
    path = "/.well-known/alive",
    tag = "health",
    operation_id = "alive",
    responses(
        (status = 200, description = "The process runs: `{\"status\":\"up\"}`.", body = TerseHealth),
        AliveAnswers,
    )
)]
pub(crate) async fn alive() -> Json<TerseHealth> {
    Json(TerseHealth {
        status: HealthStatus::Up,
    })
}

fn readiness_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `200` once ready at least once, `503` before.
async fn started(State(health): State<Health>) -> impl IntoResponse {
    let started = health.started().await;
    let status = if started {
        HealthStatus::Up
    } else {
        HealthStatus::Down
    };
    (readiness_status(started), Json(TerseHealth { status }))
}

async fn readiness(State(health): State<Health>) -> impl IntoResponse {
    let (ready, body) = health.report().await;
    (readiness_status(ready), Json(body))
}

/// Readiness
///
/// `200` when every critical dependency passed its check, else `503`; the body says only
/// `up` or `down` (the details are on the admin port).
#[utoipa::path(
    get,
    path = "/.well-known/health",
    tag = "health",
    operation_id = "readiness",
    responses(
        (status = 200, description = "Ready: `{\"status\":\"up\"}`.", body = TerseHealth),
        ReadinessAnswers,
    )
)]
pub(crate) async fn terse_readiness(State(health): State<Health>) -> impl IntoResponse {
    let (ready, _) = health.report().await;
    let status = if ready {
        HealthStatus::Up
    } else {
        HealthStatus::Down
    };
    (readiness_status(ready), Json(TerseHealth { status }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl HealthCheck for Fixed {
        fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
            let healthy = self.0;
            Box::pin(async move {
                CheckOutcome {
                    healthy,
                    details: json!({}),
                }
            })
        }
    }

    struct Hangs;
    impl HealthCheck for Hangs {
        fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn optional_failure_keeps_readiness() {
        let health = Health::builder()
            .critical("db", Fixed(true))
            .optional("cache", Fixed(false))
            .build();
        let (ready, body) = health.report().await;
        assert!(ready);
        assert_eq!(body["checks"]["cache"]["status"], "down");
        assert_eq!(body["checks"]["db"]["status"], "up");
    }

    /// Healthy until told otherwise.
    struct Switch(Arc<AtomicBool>);
    impl HealthCheck for Switch {
        fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
            let healthy = self.0.load(Ordering::Relaxed);
            Box::pin(async move {
                CheckOutcome {
                    healthy,
                    details: json!({}),
                }
            })
        }
    }

    #[tokio::test]
    async fn started_waits_for_the_first_ready_report_and_then_stays_up() {
        let database = Arc::new(AtomicBool::new(false));
        let health = Health::builder()
            .critical("db", Switch(Arc::clone(&database)))
            .build();
        let admin = || health.clone().admin_routes::<()>();
        assert_eq!(
            get(admin(), "/.well-known/started").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        database.store(true, Ordering::Relaxed);
        assert_eq!(get(admin(), "/.well-known/started").await.0, StatusCode::OK);
        // The database goes down: unready, but still started.
        database.store(false, Ordering::Relaxed);
        assert_eq!(
            get(admin(), "/.well-known/health").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, body) = get(admin(), "/.well-known/started").await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "up"})));
    }

    #[tokio::test]
    async fn critical_failure_fails_readiness() {
        let health = Health::builder().critical("db", Fixed(false)).build();
        let (ready, body) = health.report().await;
        assert!(!ready);
        assert_eq!(body["status"], "down");
    }

    struct FailsWith(&'static str);
    impl HealthCheck for FailsWith {
        fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
            let error = self.0;
            Box::pin(async move { CheckOutcome::down(json!({ "error": error })) })
        }
    }

    async fn get(router: Router, path: &str) -> (StatusCode, Value) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn public_readiness_says_only_up_or_down_and_admin_readiness_says_why() {
        let health = Health::builder()
            .critical("db", FailsWith("connection refused by 10.0.0.7:5432"))
            .build();
        let (status, body) = get(health.clone().public_routes(), "/.well-known/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({ "status": "down" }));

        let (status, body) = get(health.admin_routes(), "/.well-known/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body["checks"]["db"]["error"],
            "connection refused by 10.0.0.7:5432"
        );

        let ready = Health::builder().critical("db", Fixed(true)).build();
        let (status, body) = get(ready.public_routes(), "/.well-known/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "up" }));
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_check_times_out_as_down() {
        let health = Health::builder()
            .critical("db", Hangs)
            .check_timeout(Duration::from_millis(100))
            .build();
        let (ready, body) = health.report().await;
        assert!(!ready);
        assert!(
            body["checks"]["db"]["error"]
                .as_str()
                .unwrap()
                .contains("did not answer")
        );
    }
}
