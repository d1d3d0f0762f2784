//! The write path: `POST /books`, `PUT /books/{id}`, `DELETE /books/{id}`.
//!
//! A write goes to storagesvc through the same client and policies as a read (deadline,
//! breaker, attempt timeout) but never through coalescing or the last-good store: a write
//! answered from a cache would be a lie. It is retried only when the caller sent an
//! `Idempotency-Key`, which is forwarded, so storagesvc recognises the retry and answers it
//! with the first response; without a key a write is sent once, because an attempt that
//! timed out may still have been applied and a retry could create a second book.
//!
//! Whatever storagesvc answers (201, 404, 422, its own 503 + `Retry-After`) is passed on as
//! it came, `Idempotent-Replayed` included. Only when there is no answer does booksvc
//! write the problem itself, and it says what the caller can know (docs/architecture.md, "Writes"):
//!
//! - `503` + `Retry-After`: nothing was sent (breaker open, connection refused, name not
//!   found), so the write was not applied and may simply be sent again;
//! - `502` (`upstream-broken`): the connection broke after the request may have reached
//!   storagesvc, and `504` (`upstream-timeout`): no answer in time. Either way the write
//!   may have been applied; only a retry with the same `Idempotency-Key` is safe.
//!
//! Details name no internal address: the reason goes to the log.
//!
//! The upstream target is built from the parsed request (`request::WriteTarget`), never
//! from the raw path. A write that may have been applied invalidates the last-good store
//! on every replica before the answer goes out, so no later stale answer shows the book
//! as it was.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use resilience::{AttemptOutcome, CallError};
use shared::Problem;
use shared::extract::Body;

use crate::cache_status;
use crate::last_good::LastGoodStore;
use crate::read_path::forwarded;
use crate::request::WriteTarget;
use crate::upstream::{AttemptValue, Delivery, Retries, Upstream, UpstreamRequest};

/// The caller's key that makes a write safe to retry (forwarded to storagesvc as is).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Request headers passed on to storagesvc.
const PASSED_ON: [HeaderName; 2] = [header::CONTENT_TYPE, IDEMPOTENCY_KEY];

/// How long a caller is asked to wait when storagesvc could not be reached at all.
const UNREACHABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// `POST /books`, `PUT /books/{id}`, `DELETE /books/{id}`.
pub async fn write(
    State(upstream): State<Upstream>,
    State(store): State<LastGoodStore>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    let target = match WriteTarget::from_uri(&uri) {
        Ok(target) => target,
        Err(invalid) => return invalid.into_response(),
    };
    let mut passed_on = HeaderMap::new();
    for name in PASSED_ON {
        if let Some(value) = headers.get(&name) {
            passed_on.insert(name, value.clone());
        }
    }
    let retries = if passed_on.contains_key(IDEMPOTENCY_KEY) {
        Retries::Allowed
    } else {
        Retries::Never
    };
    let request = UpstreamRequest {
        method,
        path_and_query: target.upstream_target(),
        headers: passed_on,
        body: (!body.is_empty()).then_some(body),
    };
    let (result, delivery) = upstream.send_tracked(&request, retries).await;
    if delivery == Delivery::MaybeSent && may_have_been_applied(&result) {
        // The write changed (or may have changed) a book, and so every list: nothing
        // stored before it may be served again.
        store.invalidate().await;
    }
    match result {
        Ok(Ok(response)) => forwarded(response, cache_status::forwarded_uncacheable()),
        Ok(Err(reason)) => {
            tracing::error!(%reason, "storagesvc cannot be asked; the write was not sent");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-misconfigured",
                "booksvc cannot call storagesvc as configured; the write was not sent",
            )
            .into_response()
        }
        Err(failure) => failed(&request, retries, failure, delivery),
    }
}

/// Whether storagesvc may have applied the write: a 2xx, and any failure after the request
/// may have reached it, except the answers that say it was not (a 4xx, storagesvc's 503).
/// When in doubt the store is invalidated: that costs only stale answers, never a wrong one.
fn may_have_been_applied(result: &Result<AttemptValue, CallError<AttemptValue>>) -> bool {
    match result {
        Ok(Ok(response)) => response.status.is_success(),
        Ok(Err(_)) | Err(CallError::BreakerOpen(_) | CallError::Shed) => false,
        Err(CallError::Failed {
            last: Some(Ok(response)),
            ..
        }) => {
            !(response.status.is_client_error()
                || response.status == StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(CallError::Failed { .. }) => true,
    }
}

/// The answer to a write whose last attempt failed. `delivery` covers every attempt: a
/// write whose first attempt broke after sending and whose retry was refused may still
/// have been applied.
fn failed(
    request: &UpstreamRequest,
    retries: Retries,
    failure: CallError<AttemptValue>,
    delivery: Delivery,
) -> Response {
    let target = format!("{} {}", request.method, request.path_and_query);
    let advice = match retries {
        Retries::Allowed => "retry with the same Idempotency-Key",
        Retries::Never => "send an Idempotency-Key to make retrying safe",
    };
    match failure {
        CallError::BreakerOpen(open) => {
            tracing::warn!(%target, "write refused: the circuit breaker for storagesvc is open");
            Problem::unavailable(
                "storagesvc-unavailable",
                format!(
                    "storagesvc is failing; the write was not sent (circuit open for another {:?})",
                    open.retry_in
                ),
                open.retry_in,
            )
            .into_response()
        }
        CallError::Shed => {
            tracing::warn!(%target, "write refused: too many calls to storagesvc in flight");
            Problem::unavailable(
                "storagesvc-overloaded",
                "too many calls to storagesvc are in flight; the write was not sent",
                crate::upstream::SHED_RETRY_AFTER,
            )
            .into_response()
        }
        // storagesvc answered (a 5xx, a 429): its answer, with its `Retry-After`, is passed on.
        CallError::Failed {
            last: Some(Ok(response)),
            attempts,
            ..
        } => {
            tracing::warn!(%target, status = %response.status, attempts, "write failed in storagesvc");
            forwarded(response, cache_status::forwarded_uncacheable())
        }
        CallError::Failed {
            outcome,
            last,
            attempts,
        } if delivery == Delivery::NotSent => {
            let reason = reason(outcome, last);
            tracing::warn!(%target, %reason, attempts, "write not sent: storagesvc cannot be reached");
            Problem::unavailable(
                "storagesvc-unavailable",
                format!(
                    "storagesvc cannot be reached ({attempts} attempt(s)); the write was not sent"
                ),
                UNREACHABLE_RETRY_AFTER,
            )
            .into_response()
        }
        CallError::Failed {
            outcome: AttemptOutcome::TimedOut,
            attempts,
            ..
        } => {
            tracing::warn!(%target, attempts, "write timed out; it may have been applied");
            Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                format!(
                    "storagesvc did not answer in time after {attempts} attempt(s); the write may have been applied: {advice}"
                ),
            )
            .into_response()
        }
        CallError::Failed {
            outcome,
            last,
            attempts,
        } => {
            let reason = reason(outcome, last);
            tracing::warn!(%target, %reason, attempts, "write got no answer from storagesvc; it may have been applied");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-broken",
                format!(
                    "the connection to storagesvc broke after {attempts} attempt(s) without an answer; the write may have been applied: {advice}"
                ),
            )
            .into_response()
        }
    }
}

/// Why the last attempt got no answer, for the log.
fn reason(outcome: AttemptOutcome, last: Option<AttemptValue>) -> String {
    match last {
        Some(Err(reason)) => reason,
        _ => outcome.class().to_owned(),
    }
}
