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

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use resilience::{AttemptOutcome, CallError};
use shared::Problem;
use shared::extract::Body;
use shared::openapi::{Answers, HeaderSpec, empty_response, json_response, string_schema};
use shared::problem::{
    BAD_REQUEST, BODY_TOO_LARGE, DATABASE_UNAVAILABLE, FAULT_INJECTED, IDEMPOTENCY_KEY_REUSED,
    INTERNAL, INVALID_INPUT, INVALID_PATH, INVALID_QUERY, MALFORMED_JSON, NOT_FOUND,
    OUTCOME_UNKNOWN, OVERLOADED, ProblemType, REQUEST_TIMEOUT, UNAUTHORIZED, UNREADABLE_BODY,
    UNSUPPORTED_MEDIA_TYPE,
};
use utoipa::openapi::Ref;
use utoipa::openapi::path::{Parameter, ParameterIn};

use crate::cache_status;
use crate::last_good::LastGoodStore;
use crate::read_path::{UPSTREAM_MISCONFIGURED, forwarded};
use crate::request::{BookId, WriteTarget};
use crate::upstream::{AttemptValue, Delivery, Retries, Upstream, UpstreamRequest};
use shared::books::BookPayload;

/// The caller's key that makes a write safe to retry (forwarded to storagesvc as is).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Request headers passed on to storagesvc.
const PASSED_ON: [HeaderName; 2] = [header::CONTENT_TYPE, IDEMPOTENCY_KEY];

/// How long a caller is asked to wait when storagesvc could not be reached at all.
const UNREACHABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Nothing was sent: the breaker is open, or storagesvc could not be connected to.
pub const STORAGESVC_UNAVAILABLE: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "storagesvc-unavailable",
    "the write was not sent (the breaker is open, the connection was refused, the name was \
     not found): not applied, safe to send again after Retry-After",
);

/// Nothing was sent: the concurrency limit toward storagesvc refused the call.
pub const STORAGESVC_OVERLOADED: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "storagesvc-overloaded",
    "too many calls to storagesvc are in flight; the write was not sent, not applied",
);

/// The request may have reached storagesvc, and no usable answer came back.
pub const UPSTREAM_BROKEN: ProblemType = ProblemType::new(
    StatusCode::BAD_GATEWAY,
    "upstream-broken",
    "the connection to storagesvc broke after the request may have reached it, or its \
     answer was unusable: the write may have been applied",
);

/// No answer in time.
pub const UPSTREAM_TIMEOUT: ProblemType = ProblemType::new(
    StatusCode::GATEWAY_TIMEOUT,
    "upstream-timeout",
    "storagesvc did not answer in time: the write may have been applied; only a retry \
     with the same Idempotency-Key is safe",
);

/// The statuses at which a write may answer with storagesvc's own answer, passed on
/// (`Cache-Status: booksvc; fwd=method`).
const PASSED_ON_STATUSES: [u16; 9] = [400, 401, 404, 413, 415, 422, 500, 503, 504];

/// What a write may answer: `own`, what every write may answer (booksvc's credential
/// check and its own answers when storagesvc gave none, and what storagesvc answers to
/// any write: its credential check, its database, the drill's faults, its own server's
/// limits, passed on), and the server's own answers.
fn write_answers(own: &[ProblemType]) -> Answers {
    let mut answers = Answers::new()
        .problems(own)
        .problems(&[UNAUTHORIZED, INVALID_QUERY, UNREADABLE_BODY])
        .problems(&[
            STORAGESVC_UNAVAILABLE,
            STORAGESVC_OVERLOADED,
            UPSTREAM_BROKEN,
            UPSTREAM_MISCONFIGURED,
            UPSTREAM_TIMEOUT,
        ])
        .problems(&[
            DATABASE_UNAVAILABLE,
            FAULT_INJECTED,
            OUTCOME_UNKNOWN,
            OVERLOADED,
            REQUEST_TIMEOUT,
            BODY_TOO_LARGE,
            INTERNAL,
        ])
        // A 401 that storagesvc gave (it refused booksvc's own credential) is passed on
        // without its challenges.
        .header(
            401,
            HeaderSpec::new(
                "WWW-Authenticate",
                "booksvc's challenge (`Bearer realm=\"bookstore\"`) when it refused the \
                 caller's credential; absent when the 401 is storagesvc's, passed on.",
                string_schema(None),
            ),
        );
    for status in PASSED_ON_STATUSES {
        answers = answers.header(
            status,
            cache_status::header(vec![cache_status::forwarded_uncacheable()], false),
        );
    }
    answers
}

shared::answers!(pub CreateAnswers = write_answers(&[
    MALFORMED_JSON,
    UNSUPPORTED_MEDIA_TYPE,
    INVALID_INPUT,
    BAD_REQUEST,
    IDEMPOTENCY_KEY_REUSED,
]));

shared::answers!(pub UpdateAnswers = write_answers(&[
    MALFORMED_JSON,
    UNSUPPORTED_MEDIA_TYPE,
    INVALID_INPUT,
    INVALID_PATH,
    NOT_FOUND,
]));

shared::answers!(pub DeleteAnswers = write_answers(&[INVALID_PATH, NOT_FOUND]));

/// `Cache-Status` on a write's success.
fn passed_on() -> HeaderSpec {
    cache_status::header(vec![cache_status::forwarded_uncacheable()], true)
}

shared::response!(
    /// The `201` of `POST /books`, storagesvc's, passed on.
    Created = json_response(
        "Created (or, with an `Idempotency-Key` storagesvc saw before with the same body, \
         the first response again): the new book, as storagesvc answered.",
        Ref::from_schema_name("Book"),
        &[
            passed_on(),
            HeaderSpec::new(
                "Location",
                "The new book's path, `/books/{id}`.",
                string_schema(Some("^/books/[1-9][0-9]*$")),
            )
            .required(),
            HeaderSpec::new(
                "Idempotent-Replayed",
                "`true` when storagesvc answered with the stored response to an earlier \
                 request with the same `Idempotency-Key` and body; absent otherwise.",
                shared::openapi::string_enum_schema(["true".to_owned()]),
            ),
        ],
    )
);

shared::response!(
    /// The `200` of `PUT /books/{id}`, storagesvc's, passed on.
    Replaced = json_response(
        "Replaced: the book as it now is, as storagesvc answered.",
        Ref::from_schema_name("Book"),
        &[passed_on()],
    )
);

shared::response!(
    /// The `204` of `DELETE /books/{id}`, storagesvc's, passed on.
    Deleted = empty_response("Deleted, as storagesvc answered.", &[passed_on()])
);

/// The `Idempotency-Key` of a create: forwarded, what makes a retry safe, and checked by
/// storagesvc (a `400` from it, passed on, for a key it does not accept).
pub struct CreateIdempotencyKey;

impl utoipa::IntoParams for CreateIdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![shared::openapi::header_parameter(
            "Idempotency-Key",
            "Forwarded to storagesvc. With it booksvc retries the create when an attempt \
             fails, and storagesvc answers a repeat with the first response \
             (`Idempotent-Replayed: true`); without it the create is sent once. 1 to 255 \
             visible ASCII characters (storagesvc answers `400` otherwise).",
            shared::books::idempotency_key_schema(),
        )]
    }
}

/// The `Idempotency-Key` of a replace or a delete: forwarded (storagesvc does not read
/// it there), and what lets booksvc retry the write.
pub struct RepeatableIdempotencyKey;

impl utoipa::IntoParams for RepeatableIdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![shared::openapi::header_parameter(
            "Idempotency-Key",
            "Any value: with it booksvc retries the write when an attempt fails (repeating a \
             replace or a delete changes nothing more); without it the write is sent once.",
            string_schema(None),
        )]
    }
}

/// The operations [`write`] serves, one per route, for the OpenAPI document.
pub struct CreateBook;
pub struct UpdateBook;
pub struct DeleteBook;

/// `POST /books`, `PUT /books/{id}`, `DELETE /books/{id}`.
#[utoipa::path(
    post,
    path = "/books",
    impl_for = CreateBook,
    operation_id = "createBook",
    summary = "Create a book",
    description = "Passed to storagesvc, never answered from the store; storagesvc's answer \
        is passed on as it came. Takes no query parameters.",
    params(CreateIdempotencyKey),
    request_body(content = BookPayload, content_type = "application/json",
        description = "Passed on to storagesvc as it came, with its `Content-Type`."),
    security(("writerToken" = []), ("writerApiKey" = [])),
    responses((status = 201, response = inline(Created)), CreateAnswers)
)]
#[utoipa::path(
    put,
    path = "/books/{id}",
    impl_for = UpdateBook,
    operation_id = "updateBook",
    summary = "Replace a book",
    description = "Passed to storagesvc, never answered from the store; storagesvc's answer \
        is passed on as it came. Takes no query parameters.",
    params(BookId, RepeatableIdempotencyKey),
    request_body(content = BookPayload, content_type = "application/json",
        description = "Passed on to storagesvc as it came, with its `Content-Type`."),
    security(("writerToken" = []), ("writerApiKey" = [])),
    responses((status = 200, response = inline(Replaced)), UpdateAnswers)
)]
#[utoipa::path(
    delete,
    path = "/books/{id}",
    impl_for = DeleteBook,
    operation_id = "deleteBook",
    summary = "Delete a book",
    description = "Passed to storagesvc, never answered from the store; storagesvc's answer \
        is passed on as it came. Takes no query parameters.",
    params(BookId, RepeatableIdempotencyKey),
    security(("writerToken" = []), ("writerApiKey" = [])),
    responses((status = 204, response = inline(Deleted)), DeleteAnswers)
)]
pub async fn write(
    State(upstream): State<Arc<Upstream>>,
    State(store): State<Arc<LastGoodStore>>,
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
            Problem::of(
                UPSTREAM_MISCONFIGURED,
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
                STORAGESVC_UNAVAILABLE,
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
                STORAGESVC_OVERLOADED,
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
                STORAGESVC_UNAVAILABLE,
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
            Problem::of(
                UPSTREAM_TIMEOUT,
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
            Problem::of(
                UPSTREAM_BROKEN,
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
