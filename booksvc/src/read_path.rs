//! The read path (DESIGN 4.1), outermost first: parsing, coalescing, then fallback around
//! the resilient call.
//!
//! `read` parses the request (`request::BookQuery`; malformed input is a `400`, never
//! sent upstream) and builds the upstream target and the cache key from it. It then joins an identical read already in flight, or asks storagesvc through
//! [`Upstream::get`] (deadline → retry → breaker → attempt timeout, in
//! `shared::resilience::call`). A successful answer is stored (once per upstream call, not
//! once per reader) and passed on; a failure is answered from the last-good store, marked
//! stale; with nothing stored, the answer is 503 with `Retry-After`. While the breaker is
//! not closed, a read does not join a call in flight (likely the one probe, which takes as
//! long as storagesvc needs to fail): it is answered from the store at once.

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
use shared::resilience::{BreakerState, CallError};

use std::sync::Arc;

use crate::cache_status;
use crate::coalesce::Coalescer;
use crate::last_good::{CacheKey, LastGoodStore, StoredResponse};
use crate::request::BookQuery;
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
    // 1. Parse, then key: only the parsed value is used from here on.
    let query = match BookQuery::from_uri(&uri) {
        Ok(query) => query,
        Err(invalid) => return invalid.into_response(),
    };
    let upstream_target = query.upstream_target();
    let key = query.cache_key();

    // The call, shared by every coalesced reader: it also stores a success, once.
    let upstream = path.upstream.clone();
    let store = path.store.clone();
    let stored_key = key.clone();
    let call = async move {
        // Read before the fetch: if a write invalidates the store meanwhile, this answer
        // may predate it and is not kept.
        let generation = store.generation();
        let result = upstream.get(&upstream_target).await;
        if let Ok(Ok(response)) = &result
            && response.status.is_success()
        {
            let stored = StoredResponse {
                body: response.body.clone(),
                content_type: content_type_text(response),
                fetched_at: SystemTime::now(),
                generation,
            };
            store.remember(stored_key, stored).await;
        }
        result
    };
    // While the breaker is not closed, a call in flight for this key is likely the one
    // probe storagesvc is allowed: joining it would hold this read for as long as the
    // probe takes. A stored answer now is better; with none, the read joins after all.
    let breaker = &path.upstream.resilience().breaker;
    let may_join = || breaker.state() == BreakerState::Closed;
    let result = match path.in_flight.run_or_decline(&key, call, may_join).await {
        Ok(result) => result,
        Err(call) => {
            if let Some(answer) = path
                .answer_from_store(&key, "a probe of storagesvc is in flight")
                .await
            {
                return answer;
            }
            path.in_flight.run(&key, call).await
        }
    };
    match result {
        Ok(Ok(response)) if response.status.is_success() => {
            forwarded(response, cache_status::forwarded_and_stored())
        }
        // A 4xx is storagesvc's answer to a wrong request: passed on, never stored.
        Ok(Ok(response)) => forwarded(response, cache_status::forwarded_not_stored()),
        Ok(Err(reason)) => {
            // The reason may name a token URL or an address: the log has it, the caller not.
            tracing::error!(%reason, "storagesvc cannot be asked");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-misconfigured",
                "booksvc cannot call storagesvc as configured; the error is in its log",
            )
            .into_response()
        }
        Err(failure) => fall_back(&path, &key, failure).await,
    }
}

impl ReadPath {
    /// The last good answer for `key`, marked stale and counted, if one is stored.
    async fn answer_from_store(&self, key: &CacheKey, reason: &str) -> Option<Response> {
        let (stored, source) = self.store.recall(key).await?;
        self.fallbacks
            .get_or_create(&FallbackLabels {
                source: source.as_str(),
            })
            .inc();
        tracing::info!(key = key.as_str(), %reason, source = source.as_str(), "answering from the last-good store");
        Some(stale(&stored))
    }
}

async fn fall_back(path: &ReadPath, key: &CacheKey, failure: CallError<AttemptValue>) -> Response {
    let reason = describe(&failure);
    if let Some(answer) = path.answer_from_store(key, &reason).await {
        return answer;
    }
    let retry_in = match &failure {
        CallError::BreakerOpen(open) => open.retry_in,
        CallError::Failed { .. } => Duration::from_secs(1),
    };
    path.fallbacks
        .get_or_create(&FallbackLabels { source: "none" })
        .inc();
    tracing::warn!(key = key.as_str(), %reason, "storagesvc failed and no last good answer is stored");
    Problem::unavailable(
        "books-unavailable",
        format!(
            "storagesvc is unavailable ({reason}) and no earlier answer is stored for this request"
        ),
        retry_in,
    )
    .into_response()
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
fn stale(stored: &StoredResponse) -> Response {
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
