//! Inbound credentials: who may call a protected route. storagesvc guards `/books*` with
//! it, booksvc its writes. A caller presents `Authorization: Bearer <token>` or
//! `X-API-Key: <token>`.
//!
//! Tokens are compared as SHA-256 digests in constant time: neither the content nor the
//! length of a configured token leaks through response timing.
//!
//! **Fail closed.** With no credential configured, every protected route answers `401`:
//! a forgotten `AUTH_TOKENS` must never open a route to anyone who can reach it. The
//! service says so at start-up ([`Credentials::warn_if_none`]).

use std::sync::Arc;

use crate::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const API_KEY_HEADER: &str = "x-api-key";

/// The accepted credentials; empty means nobody is accepted.
#[derive(Clone, Default)]
pub struct Credentials {
    digests: Arc<Vec<[u8; 32]>>,
}

impl Credentials {
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let digests = tokens
            .into_iter()
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(digest)
            .collect();
        Self {
            digests: Arc::new(digests),
        }
    }

    /// No credential configured: every protected request is refused.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Logs, loudly, that `what` is refused to everyone because `variable` is empty.
    pub fn warn_if_none(&self, variable: &str, what: &str) {
        if self.is_empty() {
            tracing::warn!(
                "{variable} is empty: {what} answers 401 to every caller. Set {variable} to \
                 the credentials callers must present."
            );
        }
    }

    /// Whether `presented` is one of the credentials. Every configured digest is compared,
    /// so the time taken does not depend on which one (if any) matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&presented)
            })
            .into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn presented_credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Middleware: lets the request through only with an accepted credential.
pub async fn require_credentials(
    State(credentials): State<Credentials>,
    request: Request,
    next: Next,
) -> Response {
    if credentials.is_empty() {
        return Problem::unauthorized(
            "this service accepts no credential yet (its AUTH_TOKENS is empty), so the route is closed",
        )
        .into_response();
    }
    match presented_credential(request.headers()) {
        Some(token) if credentials.accepts(token) => next.run(request).await,
        Some(_) => {
            Problem::unauthorized("the credential presented is not accepted").into_response()
        }
        None => Problem::unauthorized(
            "send a service credential as `Authorization: Bearer <token>` or `X-API-Key: <token>`",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let credentials = Credentials::new(["alpha", " beta ", ""]);
        assert!(credentials.accepts("alpha"));
        assert!(credentials.accepts("beta"));
        assert!(!credentials.accepts("gamma"));
        assert!(!credentials.accepts(""));
        assert!(!credentials.accepts("alph"));
    }

    #[test]
    fn empty_configuration_accepts_nobody() {
        let credentials = Credentials::new(["", " "]);
        assert!(credentials.is_empty());
        assert!(!credentials.accepts(""));
        assert!(!credentials.accepts(" "));
    }

    #[test]
    fn reads_bearer_then_api_key() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer tok".parse().unwrap());
        assert_eq!(presented_credential(&headers), Some("tok"));
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(presented_credential(&headers), None);
        headers.remove(header::AUTHORIZATION);
        headers.insert(API_KEY_HEADER, "key".parse().unwrap());
        assert_eq!(presented_credential(&headers), Some("key"));
    }
}
