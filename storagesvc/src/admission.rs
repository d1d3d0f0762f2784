//! The admission gate in front of `/books*`: what the database cannot serve now is refused
//! at once, before anything touches the database, so a refusal is always "not applied".
//!
//! Two reasons to refuse, checked in this order:
//! - **the database is known down** (the watcher, or a request a moment ago, found it
//!   unavailable): waiting for the pool's acquire bound would only tell the caller the
//!   same thing half a second later, while holding its connection and ours;
//! - **as many requests are in progress as the pool has connections**: one more could only
//!   queue for a connection, and a queue here adds its wait to a caller that has a deadline
//!   of its own. Refused, the caller can go elsewhere (booksvc answers from its store).
//!
//! Both are `503` + `Retry-After` with a problem body, and counted in
//! `database_requests_refused_total{reason}`.
//!
//! A semaphore's `try_acquire` is the whole limit. tower's `load_shed` over a
//! `concurrency_limit` would do the same in three layers plus an error handler, and the
//! known-down check and the counter would still need this middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::reachability::Reachability;

/// `Retry-After` of an overload refusal: requests in progress finish in milliseconds, and a
/// second is the shortest `Retry-After` can say.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// The gate's state: the database's reachability, the permits for requests in progress,
/// and the counters of refusals.
pub struct Admission {
    reachability: Arc<Reachability>,
    in_progress: Arc<Semaphore>,
    /// `Retry-After` while the database is down (`DB_RETRY_AFTER`).
    retry_after: Duration,
    refused_database_down: Counter,
    refused_overloaded: Counter,
}

impl Admission {
    /// A gate that lets `max_in_progress` requests through at a time (the pool's size:
    /// every admitted request can have a connection without waiting for one).
    pub fn new(
        reachability: Arc<Reachability>,
        max_in_progress: usize,
        retry_after: Duration,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "database_requests_refused",
            "Requests to /books* answered 503 at once, before touching the database, by reason",
            refused.clone(),
        );
        // Both series exist from the start, at 0, so a rate over them is never missing.
        let counter = |reason| refused.get_or_create(&RefusedLabels { reason }).clone();
        Arc::new(Self {
            reachability,
            in_progress: Arc::new(Semaphore::new(max_in_progress)),
            retry_after,
            refused_database_down: counter("database_down"),
            refused_overloaded: counter("overloaded"),
        })
    }
}

/// Middleware on the books routes (inside authentication: a caller without a credential
/// gets its 401 and never holds a permit).
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    if admission.reachability.is_down() {
        admission.refused_database_down.inc();
        return ApiError::DatabaseDown {
            retry_after: admission.retry_after,
        }
        .into_response();
    }
    // Held until the handler has its answer; never waited for.
    let Ok(_permit) = Arc::clone(&admission.in_progress).try_acquire_owned() else {
        admission.refused_overloaded.inc();
        return ApiError::Overloaded {
            retry_after: OVERLOADED_RETRY_AFTER,
        }
        .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    /// A books route behind the gate whose handler counts its calls and, when `hold` is
    /// set, answers only once released.
    struct Fixture {
        router: Router,
        reachability: Arc<Reachability>,
        admission: Arc<Admission>,
        handled: Arc<AtomicUsize>,
        release: Arc<Notify>,
    }

    fn fixture(max_in_progress: usize, hold: bool) -> Fixture {
        let mut registry = Registry::default();
        let reachability = Arc::new(Reachability::new(&mut registry));
        let admission = Admission::new(
            Arc::clone(&reachability),
            max_in_progress,
            Duration::from_secs(3),
            &mut registry,
        );
        let handled = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let handler = {
            let (handled, release) = (Arc::clone(&handled), Arc::clone(&release));
            move || async move {
                handled.fetch_add(1, Ordering::SeqCst);
                if hold {
                    release.notified().await;
                }
                "books"
            }
        };
        let router = Router::new().route("/books", get(handler)).route_layer(
            axum::middleware::from_fn_with_state(Arc::clone(&admission), admit),
        );
        Fixture {
            router,
            reachability,
            admission,
            handled,
            release,
        }
    }

    fn get_books() -> Request<Body> {
        Request::get("/books").body(Body::empty()).unwrap()
    }

    /// Sends a request and returns its answer, failing if it waited at all: with time
    /// paused, any wait would let the 1 ms timer fire first.
    async fn answered_at_once(router: &Router) -> Response {
        tokio::time::timeout(
            Duration::from_millis(1),
            router.clone().oneshot(get_books()),
        )
        .await
        .expect("answered without waiting")
        .unwrap()
    }

    async fn problem_type(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        problem["type"].as_str().unwrap().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_at_once_while_the_database_is_known_down() {
        let f = fixture(4, false);
        f.reachability.mark_down(&"connection refused");

        let response = answered_at_once(&f.router).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            problem_type(response).await,
            "urn:bookstore:problem:database-unavailable"
        );
        assert_eq!(f.handled.load(Ordering::SeqCst), 0, "the handler never ran");
        assert_eq!(f.admission.refused_database_down.get(), 1);

        f.reachability.mark_up();
        let response = answered_at_once(&f.router).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn lets_requests_through_while_reachability_is_not_known_yet() {
        let f = fixture(4, false);
        let response = answered_at_once(&f.router).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(f.handled.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_beyond_the_requests_in_progress_instead_of_queueing() {
        let f = fixture(2, true);
        let in_progress: Vec<_> = (0..2)
            .map(|_| tokio::spawn(f.router.clone().oneshot(get_books())))
            .collect();
        while f.handled.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }

        for _ in 0..3 {
            let response = answered_at_once(&f.router).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            assert_eq!(
                problem_type(response).await,
                "urn:bookstore:problem:overloaded"
            );
        }
        assert_eq!(f.handled.load(Ordering::SeqCst), 2, "no third request ran");
        assert_eq!(f.admission.refused_overloaded.get(), 3);

        // A finished request gives its place back.
        f.release.notify_waiters();
        for request in in_progress {
            assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        let admitted = tokio::spawn(f.router.clone().oneshot(get_books()));
        while f.handled.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        f.release.notify_waiters();
        assert_eq!(admitted.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
