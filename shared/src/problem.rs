//! RFC 9457 problem details: the one error body both services send.
//!
//! Handlers return `Result<_, Problem>` (or an error type that converts into one), so the
//! mapping from "what went wrong" to status, headers and body happens in exactly one place.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// What every problem `type` starts with; the rest is the kind's slug.
pub const TYPE_PREFIX: &str = "urn:bookstore:problem:";

/// A kind of problem: the status it is sent with, its `type` slug and what it tells the
/// caller. The code that answers with a problem names its kind, and the OpenAPI documents
/// list the same kinds per route (`crate::openapi`), so the two agree on every slug and
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    pub status: StatusCode,
    pub slug: &'static str,
    /// One sentence for the documents: when this answer comes, and what it means.
    pub meaning: &'static str,
}

impl ProblemType {
    pub const fn new(status: StatusCode, slug: &'static str, meaning: &'static str) -> Self {
        Self {
            status,
            slug,
            meaning,
        }
    }

    /// The `type` member of problems of this kind.
    pub fn uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug)
    }

    /// The `title` member of problems of this kind: the status's reason phrase.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

// The kinds both services answer with (the layers of `server`, the extractors of
// `extract`, `auth`), then those storagesvc answers with, which booksvc passes on to the
// callers of its writes.

pub const BAD_REQUEST: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "bad-request",
    "a header or a parameter is malformed or out of range",
);
pub const INVALID_PATH: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "invalid-path",
    "the book id in the path is not a valid id",
);
pub const INVALID_QUERY: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "invalid-query",
    "a query parameter is unknown, repeated or malformed, or the route takes none",
);
pub const MALFORMED_JSON: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "malformed-json",
    "the body is not syntactically valid JSON",
);
pub const UNREADABLE_BODY: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "unreadable-body",
    "the body could not be read (a broken chunked encoding, say)",
);
pub const UNAUTHORIZED: ProblemType = ProblemType::new(
    StatusCode::UNAUTHORIZED,
    "unauthorized",
    "no accepted credential was presented (or none is configured: the route is closed)",
);
pub const NOT_FOUND: ProblemType =
    ProblemType::new(StatusCode::NOT_FOUND, "not-found", "no book has this id");
pub const METHOD_NOT_ALLOWED: ProblemType = ProblemType::new(
    StatusCode::METHOD_NOT_ALLOWED,
    "method-not-allowed",
    "the route exists, but not with this method",
);
pub const BODY_TOO_LARGE: ProblemType = ProblemType::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "body-too-large",
    "the body is over MAX_BODY_BYTES (64 KiB by default); refused before it is read when \
     Content-Length announces it",
);
pub const UNSUPPORTED_MEDIA_TYPE: ProblemType = ProblemType::new(
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    "unsupported-media-type",
    "the body is not declared as JSON (Content-Type: application/json)",
);
pub const INVALID_INPUT: ProblemType = ProblemType::new(
    StatusCode::UNPROCESSABLE_ENTITY,
    "invalid-input",
    "the JSON does not describe a valid book: a field missing, of the wrong type, empty, \
     too long or with control characters",
);
pub const INTERNAL: ProblemType = ProblemType::new(
    StatusCode::INTERNAL_SERVER_ERROR,
    "internal",
    "a bug or a broken dependency; the error is in the service's log",
);
pub const OVERLOADED: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "overloaded",
    "too many requests in progress; refused at once, nothing was done, retry after \
     Retry-After",
);
pub const REQUEST_TIMEOUT: ProblemType = ProblemType::new(
    StatusCode::GATEWAY_TIMEOUT,
    "request-timeout",
    "no answer within REQUEST_TIMEOUT (10 s by default); a write may have been applied",
);

pub const DATABASE_UNAVAILABLE: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "database-unavailable",
    "storagesvc's database is down, hanging or not migrated yet; nothing was changed, retry \
     after Retry-After",
);
pub const IDEMPOTENCY_KEY_REUSED: ProblemType = ProblemType::new(
    StatusCode::UNPROCESSABLE_ENTITY,
    "idempotency-key-reused",
    "this Idempotency-Key was used before with a different body",
);
pub const OUTCOME_UNKNOWN: ProblemType = ProblemType::new(
    StatusCode::GATEWAY_TIMEOUT,
    "outcome-unknown",
    "the database did not confirm the commit in time: the write may have been applied",
);
pub const FAULT_INJECTED: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "fault-injected",
    "only with FAULT_INJECTION=true (the failure drill): a fault set on storagesvc refused \
     the request; nothing was changed",
);

/// An RFC 9457 problem document plus the response headers that belong with it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(
    title = "Problem",
    description = "An RFC 9457 problem document, sent as `application/problem+json`."
)]
pub struct Problem {
    /// A URI naming the kind of problem; stable, so clients can branch on it.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:bookstore:problem:[a-z]+(-[a-z]+)*$")]
    pub type_uri: String,
    /// Short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status, repeated in the body for clients that only keep the body.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What happened this time, in words a caller can act on.
    pub detail: String,
    #[serde(skip)]
    retry_after: Option<Duration>,
}

impl Problem {
    /// A problem of kind `slug` (see [`Problem::type_uri`]) with the given status and detail.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!("{TYPE_PREFIX}{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A problem of `kind`, with the given detail.
    pub fn of(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self::new(kind.status, kind.slug, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::of(BAD_REQUEST, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::of(UNAUTHORIZED, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::of(NOT_FOUND, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::of(INVALID_INPUT, detail)
    }

    /// A problem of `kind` (a `503`) with `Retry-After`: the caller may try again after
    /// `retry_after`.
    pub fn unavailable(
        kind: ProblemType,
        detail: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        Self::of(kind, detail).with_retry_after(retry_after)
    }

    /// `500`. The detail is deliberately generic: internals go to the log, not to callers.
    pub fn internal() -> Self {
        Self::of(
            INTERNAL,
            "the server failed to handle the request; the error is in its log",
        )
    }

    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// `Retry-After` in delta-seconds, rounded up and at least 1: `0` would invite an
/// immediate retry storm, and a fraction cannot be expressed.
pub fn retry_after_seconds(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            // Serialising four strings cannot fail; if it ever does, still send a body.
            Err(_) => br#"{"type":"urn:bookstore:problem:internal","status":500}"#.to_vec(),
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(delay) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds(delay)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn unavailable_has_retry_after_and_problem_body() {
        let response =
            Problem::unavailable(DATABASE_UNAVAILABLE, "db down", Duration::from_millis(1200))
                .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:bookstore:problem:database-unavailable");
        assert_eq!(json["title"], "Service Unavailable");
        assert_eq!(json["status"], 503);
        assert_eq!(json["detail"], "db down");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_seconds(Duration::from_millis(3001)), 4);
    }
}
