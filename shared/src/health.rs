//! Liveness (`/.well-known/alive`) and readiness (`/.well-known/health`) with pluggable checks.
//!
//! Liveness only says the process answers. Readiness runs every registered check, each
//! bounded by a timeout so a hanging dependency makes the probe fail rather than hang,
//! and answers 503 when a *critical* check fails. A service registers a dependency it can
//! work without (booksvc and storagesvc, say) as non-critical: it is reported, not fatal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

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
        (ready, body)
    }

    /// The two `/.well-known` routes, ready to merge into a service's router.
    pub fn routes<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/.well-known/alive", get(alive))
            .route("/.well-known/health", get(readiness))
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
        }
    }
}

async fn alive() -> impl IntoResponse {
    Json(json!({ "status": "up" }))
}

async fn readiness(State(health): State<Health>) -> impl IntoResponse {
    let (ready, body) = health.report().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
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

    #[tokio::test]
    async fn critical_failure_fails_readiness() {
        let health = Health::builder().critical("db", Fixed(false)).build();
        let (ready, body) = health.report().await;
        assert!(!ready);
        assert_eq!(body["status"], "down");
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
