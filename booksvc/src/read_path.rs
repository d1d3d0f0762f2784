//! The read path (DESIGN 4.1), outermost first: coalescing, then fallback around the
//! resilient call.
//!
//! `read` joins an identical read already in flight, or asks storagesvc through
//! [`Upstream::get`] (deadline → retry → breaker → attempt timeout, in
//! `shared::resilience::call`). A successful answer is stored and passed on; a failure is
//! answered from the last-good store, marked stale; with nothing stored, the answer is 503
//! with `Retry-After`.

use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shared::Problem;
use shared::resilience::CallError;

use std::sync::Arc;

use crate::cache_status;
use crate::coalesce::Coalescer;
use crate::last_good::{CacheKey, LastGoodStore, Source, StoredResponse};
use crate::upstream::{AttemptValue, Upstream, UpstreamResponse};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `Cache-Status` detail of a stale answer.
const UPSTREAM_FAILED: &str = "upstream-unavailable";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    /// `memory`, `redis` or `none` (nothing stored: 503).
    source: &'static str,
}

/// What the read path needs.
#[derive(Clone)]
pub struct ReadPath {
    pub upstream: Upstream,
    pub store: LastGoodStore,
    in_flight: Arc<Coalescer<UpstreamResult>>,
    fallbacks: Family<FallbackLabels, Counter>,
}

/// What one upstream read produced, shared by every coalesced caller.
type UpstreamResult = Result<AttemptValue, CallError<AttemptValue>>;

impl ReadPath {
    pub fn new(upstream: Upstream, store: LastGoodStore, registry: &mut Registry) -> Self {
        let fallbacks = Family::default();
        registry.register(
            "fallback_answers",
            "Reads answered without a fresh upstream response, by where the answer came from",
            fallbacks.clone(),
        );
        Self {
            upstream,
            store,
            in_flight: Arc::new(Coalescer::new()),
            fallbacks,
        }
    }
}

/// `GET /`, `GET /books`, `GET /books/{id}`.
pub async fn read(State(path): State<ReadPath>, uri: Uri) -> Response {
    // `/` is the list, as the original service served it at its root.
    let upstream_path = if uri.path() == "/" {
        "/books"
    } else {
        uri.path()
    };
    let upstream_target = match uri.query() {
        Some(query) => format!("{upstream_path}?{query}"),
        None => upstream_path.to_owned(),
    };
    let key = CacheKey::new("GET", upstream_path, uri.query());

    let upstream = path.upstream.clone();
    let call = async move { upstream.get(&upstream_target).await };
    match path.in_flight.run(&key, call).await {
        Ok(Ok(response)) if response.status.is_success() => {
            let stored = StoredResponse {
                body: response.body.clone(),
                content_type: content_type_text(&response),
                fetched_at: SystemTime::now(),
            };
            path.store.remember(key, stored).await;
            forwarded(response, cache_status::forwarded_and_stored())
        }
        // A 4xx is storagesvc's answer to a wrong request: passed on, never stored.
        Ok(Ok(response)) => forwarded(response, cache_status::forwarded_not_stored()),
        Ok(Err(reason)) => {
            tracing::error!(%reason, "storagesvc cannot be asked");
            Problem::new(StatusCode::BAD_GATEWAY, "upstream-misconfigured", reason).into_response()
        }
        Err(failure) => fall_back(&path, &key, failure).await,
    }
}

async fn fall_back(path: &ReadPath, key: &CacheKey, failure: CallError<AttemptValue>) -> Response {
    let retry_in = match &failure {
        CallError::BreakerOpen(open) => open.retry_in,
        CallError::Failed { .. } => Duration::from_secs(1),
    };
    let reason = describe(&failure);
    match path.store.recall(key).await {
        Some((stored, source)) => {
            path.fallbacks
                .get_or_create(&FallbackLabels {
                    source: source.as_str(),
                })
                .inc();
            tracing::info!(key = key.as_str(), %reason, source = source.as_str(), "answering from the last-good store");
            stale(&stored, source)
        }
        None => {
            path.fallbacks
                .get_or_create(&FallbackLabels { source: "none" })
                .inc();
            tracing::warn!(key = key.as_str(), %reason, "storagesvc failed and no last good answer is stored");
            Problem::unavailable(
                "books-unavailable",
                format!("storagesvc is unavailable ({reason}) and no earlier answer is stored for this request"),
                retry_in,
            )
            .into_response()
        }
    }
}

fn describe(failure: &CallError<AttemptValue>) -> String {
    match failure {
        CallError::BreakerOpen(open) => format!("circuit open for another {:?}", open.retry_in),
        CallError::Failed {
            outcome, attempts, ..
        } => {
            format!("{} after {attempts} attempt(s)", outcome.class())
        }
    }
}

fn content_type_text(response: &UpstreamResponse) -> String {
    response
        .content_type()
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_owned()
}

/// storagesvc's answer as it came (status, body, the headers it passes on), marked with
/// `cache_status`.
pub fn forwarded(response: UpstreamResponse, cache_status: String) -> Response {
    let mut answer = (response.status, response.headers, response.body).into_response();
    insert_text(answer.headers_mut(), CACHE_STATUS, &cache_status);
    answer
}

/// The stored body byte for byte, marked stale with `Cache-Status` and `Age`.
fn stale(stored: &StoredResponse, _source: Source) -> Response {
    let mut answer = (StatusCode::OK, stored.body.clone()).into_response();
    let headers = answer.headers_mut();
    insert_text(headers, header::CONTENT_TYPE, &stored.content_type);
    insert_text(
        headers,
        CACHE_STATUS,
        &cache_status::stale_hit(UPSTREAM_FAILED),
    );
    insert_text(
        headers,
        header::AGE,
        &cache_status::age_seconds(stored.age(SystemTime::now())),
    );
    answer
}

fn insert_text(headers: &mut axum::http::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
