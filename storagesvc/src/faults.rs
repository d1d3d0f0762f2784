//! Fault injection for the failure drill, in the manner of Envoy's fault filter: every
//! answer of the `/books*` routes can be delayed, and a share of them replaced by a `503`.
//!
//! Off unless `FAULT_INJECTION=true`: then, and only then, [`install`] puts the layer on
//! the books routes and adds `/faults` to the admin listener (never published, so only an
//! operator on the host or the drill can set a fault):
//!
//! - `PUT /faults` with `{"delay_ms": 2000, "error_rate": 0.5}` sets the fault (both fields
//!   optional, 0 by default), and answers with it;
//! - `GET /faults` answers with the fault in force;
//! - `DELETE /faults` removes it.
//!
//! Switched off, the routes do not exist and the books routes are exactly what they would
//! be without this module: the layer costs nothing.
//!
//! The layer sits outside the credential check, so a fault applies to every request on the
//! books routes; storagesvc's request metrics count the injected `503`s like its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shared::Problem;
use shared::extract::Json;

/// The longest delay accepted: longer than any caller's deadline, short enough that a
/// forgotten fault does not hold connections for minutes.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// `Retry-After` of an injected `503`.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A fault, as `PUT /faults` takes it and `GET /faults` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// How long every answer is held back before the request is handled (or refused).
    #[serde(default)]
    pub delay_ms: u64,
    /// The share of requests answered `503` instead of being handled, from 0 to 1.
    #[serde(default)]
    pub error_rate: f64,
}

impl FaultSpec {
    fn check(self) -> Result<Self, Problem> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(Problem::unprocessable("error_rate must be from 0 to 1"));
        }
        if Duration::from_millis(self.delay_ms) > MAX_DELAY {
            return Err(Problem::unprocessable(format!(
                "delay_ms must be at most {}",
                MAX_DELAY.as_millis()
            )));
        }
        Ok(self)
    }
}

/// The fault in force, shared by the layer and the admin routes.
#[derive(Clone, Default)]
pub struct Faults(Arc<Inner>);

#[derive(Default)]
struct Inner {
    spec: RwLock<FaultSpec>,
    /// Requests seen since the fault was set, to spread the errors evenly.
    seen: AtomicU64,
}

impl Faults {
    fn current(&self) -> FaultSpec {
        // A poisoned lock still holds a valid spec (it is `Copy`, written in one store).
        *self
            .0
            .spec
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, spec: FaultSpec) {
        *self
            .0
            .spec
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = spec;
        self.0.seen.store(0, Ordering::Relaxed);
    }

    /// Whether the next request is refused: the n-th request fails when
    /// `floor(n × rate)` grows, so exactly `rate` of every run of requests fail, evenly
    /// spread (at 0.5, every other one), and a test can count on it.
    fn next_fails(&self, error_rate: f64) -> bool {
        if error_rate <= 0.0 {
            return false;
        }
        let n = self.0.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * error_rate).floor() > (n * error_rate).floor()
    }
}

/// With `enabled`, the books routes with the fault layer and the admin routes that set
/// the fault; without, the books routes untouched and no admin routes.
pub fn install(enabled: bool, books: Router) -> (Router, Router) {
    if !enabled {
        return (books, Router::new());
    }
    tracing::warn!(
        "FAULT_INJECTION is on: PUT /faults on the admin listener delays or fails /books*"
    );
    let faults = Faults::default();
    let books = books.route_layer(axum::middleware::from_fn_with_state(faults.clone(), inject));
    let admin = Router::new()
        .route("/faults", get(show).put(replace).delete(remove))
        .with_state(faults);
    (books, admin)
}

/// The layer: the delay first, then perhaps the `503`, as Envoy's filter does.
async fn inject(State(faults): State<Faults>, request: Request, next: Next) -> Response {
    let spec = faults.current();
    if spec.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(spec.delay_ms)).await;
    }
    if faults.next_fails(spec.error_rate) {
        return Problem::unavailable(
            shared::problem::FAULT_INJECTED,
            "a fault set on this instance refused the request; nothing was changed, retry after 1 s",
            RETRY_AFTER,
        )
        .into_response();
    }
    next.run(request).await
}

async fn show(State(faults): State<Faults>) -> axum::Json<FaultSpec> {
    axum::Json(faults.current())
}

async fn replace(
    State(faults): State<Faults>,
    Json(spec): Json<FaultSpec>,
) -> Result<axum::Json<FaultSpec>, Problem> {
    let spec = spec.check()?;
    tracing::warn!(
        delay_ms = spec.delay_ms,
        error_rate = spec.error_rate,
        "fault set"
    );
    faults.set(spec);
    Ok(axum::Json(spec))
}

async fn remove(State(faults): State<Faults>) -> StatusCode {
    tracing::warn!("fault removed");
    faults.set(FaultSpec::default());
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Method, header};
    use tokio::time::Instant;
    use tower::ServiceExt;

    fn books() -> Router {
        Router::new().route("/books", get(|| async { "[]" }))
    }

    async fn call(router: &Router, method: Method, uri: &str, body: &str) -> Response {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn set(admin: &Router, spec: &str) {
        let response = call(admin, Method::PUT, "/faults", spec).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            text(response).await
        );
    }

    #[tokio::test]
    async fn switched_off_there_are_no_fault_routes() {
        let (books, admin) = install(false, books());
        let response = call(&admin, Method::PUT, "/faults", r#"{"error_rate":1}"#).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = call(&books, Method::GET, "/books", "").await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_fault_set_answers_pass_at_once() {
        let (books, admin) = install(true, books());
        let started = Instant::now();
        for _ in 0..10 {
            let response = call(&books, Method::GET, "/books", "").await;
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        let shown = text(call(&admin, Method::GET, "/faults", "").await).await;
        assert_eq!(shown, r#"{"delay_ms":0,"error_rate":0.0}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_every_answer_back_until_removed() {
        let (books, admin) = install(true, books());
        set(&admin, r#"{"delay_ms": 2000}"#).await;

        let started = Instant::now();
        let response = call(&books, Method::GET, "/books", "").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let response = call(&admin, Method::DELETE, "/faults", "").await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let started = Instant::now();
        call(&books, Method::GET, "/books", "").await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn half_the_answers_are_503_problems_with_retry_after() {
        let (books, admin) = install(true, books());
        set(&admin, r#"{"error_rate": 0.5}"#).await;

        let mut refused = 0;
        for _ in 0..100 {
            let response = call(&books, Method::GET, "/books", "").await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                refused += 1;
                assert_eq!(response.headers()[header::RETRY_AFTER], "1");
                assert_eq!(
                    response.headers()[header::CONTENT_TYPE],
                    shared::problem::CONTENT_TYPE
                );
                assert!(text(response).await.contains("fault-injected"));
            } else {
                assert_eq!(response.status(), StatusCode::OK);
            }
        }
        assert_eq!(refused, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_and_errors_combine_delay_first() {
        let (books, admin) = install(true, books());
        set(&admin, r#"{"delay_ms": 300, "error_rate": 1.0}"#).await;
        let started = Instant::now();
        let response = call(&books, Method::GET, "/books", "").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_fault_out_of_range_is_refused_and_changes_nothing() {
        let (_, admin) = install(true, books());
        for bad in [
            r#"{"error_rate": 1.5}"#,
            r#"{"error_rate": -0.1}"#,
            r#"{"delay_ms": 600000}"#,
            r#"{"delay": 5}"#,
        ] {
            let response = call(&admin, Method::PUT, "/faults", bad).await;
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        let shown = text(call(&admin, Method::GET, "/faults", "").await).await;
        assert_eq!(shown, r#"{"delay_ms":0,"error_rate":0.0}"#);
    }
}
