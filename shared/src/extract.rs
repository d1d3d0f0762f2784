//! Extractors that answer bad input with a problem document instead of axum's plain text.
//!
//! They are axum's own `Json`, `Bytes`, `Path` and `Query`, with the rejection mapped: the status
//! axum chose (400, 413, 415, 422) is kept, the body becomes `application/problem+json`.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};

use crate::Problem;

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
        let slug = match rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported-media-type",
            JsonRejection::BytesRejection(_) => "body-too-large",
            JsonRejection::JsonSyntaxError(_) => "malformed-json",
            _ => "invalid-input",
        };
        Problem::new(rejection.status(), slug, rejection.body_text())
    }
}

impl From<BytesRejection> for Problem {
    fn from(rejection: BytesRejection) -> Self {
        let slug = match rejection.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
            _ => "unreadable-body",
        };
        Problem::new(rejection.status(), slug, rejection.body_text())
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
