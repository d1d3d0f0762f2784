//! The one place where storagesvc's failures become HTTP responses.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use shared::Problem;
use shared::problem::{DATABASE_UNAVAILABLE, IDEMPOTENCY_KEY_REUSED, OUTCOME_UNKNOWN, OVERLOADED};

use crate::db::DbError;

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    NotFound(i64),
    /// The request parsed but its content is not acceptable.
    Invalid(String),
    /// A malformed header or parameter.
    BadRequest(String),
    /// The `Idempotency-Key` was used before with a different request.
    IdempotencyKeyReused,
    Db {
        error: DbError,
        retry_after: Duration,
    },
    /// Refused by the admission gate: the database is known to be down.
    DatabaseDown {
        retry_after: Duration,
    },
    /// Refused by the admission gate: as many requests in progress as the pool can serve.
    Overloaded {
        retry_after: Duration,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::NotFound(id) => Problem::not_found(format!("no book with id {id}")),
            ApiError::Invalid(detail) => Problem::unprocessable(detail),
            ApiError::BadRequest(detail) => Problem::bad_request(detail),
            ApiError::IdempotencyKeyReused => Problem::of(
                IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was already used with a different request body",
            ),
            ApiError::Db {
                error: error @ (DbError::Unavailable(_) | DbError::SchemaNotReady),
                retry_after,
            } => {
                // The cause (driver message, address, timeout) is for the log; the caller
                // gets a fixed sentence that says what to do.
                tracing::warn!(%error, "answering 503: database unavailable");
                Problem::unavailable(
                    DATABASE_UNAVAILABLE,
                    unavailable_detail(retry_after),
                    retry_after,
                )
            }
            // Not logged one by one: the outage was logged once, when it was noticed.
            ApiError::DatabaseDown { retry_after } => Problem::unavailable(
                DATABASE_UNAVAILABLE,
                unavailable_detail(retry_after),
                retry_after,
            ),
            ApiError::Overloaded { retry_after } => Problem::unavailable(
                OVERLOADED,
                format!(
                    "too many requests in progress; nothing was changed, retry after {} s",
                    shared::problem::retry_after_seconds(retry_after)
                ),
                retry_after,
            ),
            ApiError::Db {
                error: error @ DbError::OutcomeUnknown(_),
                ..
            } => {
                // Not a 503: that would promise "not applied", and a retry could apply the
                // write twice. No Retry-After either: the caller should look before it
                // retries (or retry with the same Idempotency-Key).
                tracing::warn!(%error, "answering 504: the outcome of a write is unknown");
                Problem::of(
                    OUTCOME_UNKNOWN,
                    "the database did not confirm the write in time; it may have been applied. \
                     A PUT or DELETE may be repeated as it is; repeat a POST only with the same \
                     Idempotency-Key, or read the books first",
                )
            }
            ApiError::Db {
                error: DbError::Other(error),
                ..
            } => {
                tracing::error!(%error, "database error");
                Problem::internal()
            }
        };
        problem.into_response()
    }
}

/// The detail of every `503` for an unavailable database: nothing from the error itself.
fn unavailable_detail(retry_after: Duration) -> String {
    format!(
        "the database is unavailable; nothing was changed, retry after {} s",
        shared::problem::retry_after_seconds(retry_after)
    )
}
