//! Extractors that answer bad input with a problem document instead of axum's plain text.
//!
//! They are axum's own `Json`, `Bytes`, `Path` and `Query`, with the rejection mapped: the status
//! axum chose (400, 413, 415, 422) is kept, the body becomes `application/problem+json`.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};

use crate::Problem;
use crate::problem::{
    BODY_TOO_LARGE, INVALID_INPUT, MALFORMED_JSON, UNREADABLE_BODY, UNSUPPORTED_MEDIA_TYPE,
};

/// A JSON request body; rejections become problems.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

/// A request body taken as it is (to pass on); a body over the limit becomes a `413`
/// problem.
#[derive(Debug)]
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        let bytes = axum::body::Bytes::from_request(request, state).await?;
        Ok(Self(bytes))
    }
}

/// Path parameters; a non-numeric id and the like become `400` problems.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// Query parameters; unknown or malformed values become `400` problems.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let kind = match rejection {
            JsonRejection::MissingJsonContentType(_) => UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonSyntaxError(_) => MALFORMED_JSON,
            JsonRejection::JsonDataError(_) => INVALID_INPUT,
            // The body could not be read: too large (413), or broken (400).
            JsonRejection::BytesRejection(_) => body_kind(rejection.status()),
            _ => return Problem::new(rejection.status(), "invalid-input", rejection.body_text()),
        };
        Problem::new(rejection.status(), kind.slug, rejection.body_text())
    }
}

impl From<BytesRejection> for Problem {
    fn from(rejection: BytesRejection) -> Self {
        let kind = body_kind(rejection.status());
        Problem::new(rejection.status(), kind.slug, rejection.body_text())
    }
}

/// A body that could not be read: over the limit, or broken on the way.
fn body_kind(status: axum::http::StatusCode) -> crate::problem::ProblemType {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        BODY_TOO_LARGE
    } else {
        UNREADABLE_BODY
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::new(rejection.status(), "invalid-path", rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::new(rejection.status(), "invalid-query", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    /// Found while writing the contract: every body that failed to read was called
    /// `body-too-large`, a broken chunked encoding too. Only a `413` is.
    #[test]
    fn only_an_oversized_body_is_called_too_large() {
        assert_eq!(
            body_kind(StatusCode::PAYLOAD_TOO_LARGE).slug,
            BODY_TOO_LARGE.slug
        );
        assert_eq!(
            body_kind(StatusCode::BAD_REQUEST).slug,
            UNREADABLE_BODY.slug
        );
        assert_ne!(UNREADABLE_BODY.slug, BODY_TOO_LARGE.slug);
    }
}
