//! Inbound credentials: who may call a protected route. storagesvc guards `/books*` with
//! it, booksvc its writes. A caller presents one of:
//! - a static token, as `Authorization: Bearer <token>` or `X-API-Key: <token>`;
//! - `Authorization: Basic <base64 user:password>` for a configured user ([`basic`]);
//! - `Authorization: Bearer <JWT>`, an OAuth2 access token the service verifies itself
//!   with the authorization server's public key ([`jwt`]).
//!
//! Static tokens are compared as SHA-256 digests in constant time: neither the content nor
//! the length of a configured token leaks through response timing. Passwords are compared
//! by Argon2 (constant time), JWT signatures by their algorithm.
//!
//! **Fail closed.** With no credential configured, every protected route answers `401`:
//! a forgotten `AUTH_TOKENS` must never open a route to anyone who can reach it. The
//! service says so at start-up ([`Credentials::warn_if_none`]).
//!
//! A `401` says which schemes are accepted (in its detail and `WWW-Authenticate`), never
//! why a given credential failed: that goes to the log at debug level.

mod basic;
mod jwt;

use std::sync::Arc;

pub use basic::{BasicUsers, BasicUsersError, hash_password};
pub use jwt::{JwtConfigError, JwtVerifier};

use crate::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const API_KEY_HEADER: &str = "x-api-key";
/// The protection space named in `WWW-Authenticate` challenges.
const REALM: &str = "bookstore";

/// The accepted credentials; empty means nobody is accepted.
#[derive(Clone, Default)]
pub struct Credentials {
    digests: Arc<Vec<[u8; 32]>>,
    basic: Option<BasicUsers>,
    jwt: Option<JwtVerifier>,
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
            basic: None,
            jwt: None,
        }
    }

    /// Also accepts these Basic users (none when the list is empty).
    pub fn with_basic_users(mut self, users: BasicUsers) -> Self {
        self.basic = (!users.is_empty()).then_some(users);
        self
    }

    /// Also accepts access tokens that `verifier` accepts.
    pub fn with_jwt(mut self, verifier: JwtVerifier) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// No credential configured: every protected request is refused.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.basic.is_none() && self.jwt.is_none()
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

    /// Logs which kinds of credential `what` accepts; warns when there are none (see
    /// [`Credentials::warn_if_none`], with `variables` naming what to set).
    pub fn log_modes(&self, variables: &str, what: &str) {
        if self.is_empty() {
            self.warn_if_none(variables, what);
            return;
        }
        let basic_users = self
            .basic
            .as_ref()
            .map(|users| users.names().collect::<Vec<_>>());
        tracing::info!(
            static_tokens = self.digests.len(),
            basic_users = ?basic_users,
            jwt = ?self.jwt,
            "{what} accepts: {}",
            self.schemes().join(", ")
        );
    }

    /// Whether `presented` is one of the static tokens. Every configured digest is
    /// compared, so the time taken does not depend on which one (if any) matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&presented)
            })
            .into()
    }

    /// Whether the request's headers carry an accepted credential.
    async fn admits(&self, presented: Presented<'_>) -> Result<(), Refusal> {
        let accepted = match presented {
            Presented::Missing => return Err(Refusal::Missing),
            Presented::Bearer(token) => {
                // A static token is checked first, and always: its comparison must take
                // the same time whether or not a JWT check follows.
                self.accepts(token)
                    || self
                        .jwt
                        .as_ref()
                        .is_some_and(|jwt| match jwt.verify(token) {
                            Ok(()) => true,
                            Err(reason) => {
                                tracing::debug!(%reason, "bearer token refused");
                                false
                            }
                        })
            }
            Presented::ApiKey(token) => self.accepts(token),
            Presented::Basic(credentials) => match &self.basic {
                Some(users) => users.verify(credentials).await,
                None => false,
            },
        };
        if accepted {
            Ok(())
        } else {
            Err(Refusal::NotAccepted)
        }
    }

    /// How callers may authenticate, as the detail of a `401` shows it.
    fn schemes(&self) -> Vec<&'static str> {
        let mut schemes = Vec::new();
        if !self.digests.is_empty() {
            schemes.push("`Authorization: Bearer <token>`");
            schemes.push("`X-API-Key: <token>`");
        }
        if self.jwt.is_some() {
            schemes.push("`Authorization: Bearer <OAuth2 access token (JWT)>`");
        }
        if self.basic.is_some() {
            schemes.push("`Authorization: Basic <user:password>`");
        }
        schemes
    }

    /// A `401` problem with one `WWW-Authenticate` challenge per accepted scheme.
    fn refuse(&self, refusal: Refusal) -> Response {
        let detail = match refusal {
            Refusal::Closed => {
                "this service accepts no credential yet (AUTH_TOKENS and every other \
                 credential setting are empty), so the route is closed"
                    .to_owned()
            }
            Refusal::Missing => format!(
                "send a service credential as {}",
                self.schemes().join(" or ")
            ),
            Refusal::NotAccepted => "the credential presented is not accepted".to_owned(),
        };
        let mut response = Problem::unauthorized(detail).into_response();
        let headers = response.headers_mut();
        headers.remove(header::WWW_AUTHENTICATE);
        let bearer_error = if refusal == Refusal::NotAccepted {
            ", error=\"invalid_token\""
        } else {
            ""
        };
        let mut challenges = Vec::new();
        if self.is_empty() || !self.digests.is_empty() || self.jwt.is_some() {
            challenges.push(format!("Bearer realm=\"{REALM}\"{bearer_error}"));
        }
        if self.basic.is_some() {
            challenges.push(format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""));
        }
        for challenge in challenges {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a request carries, by scheme.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    /// What follows `Basic `.
    Basic(&'a str),
    /// Nothing, or a scheme this service does not take.
    Missing,
}

/// Why a request was refused; the detail of the `401` follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Closed,
    Missing,
    NotAccepted,
}

fn presented_credential(headers: &HeaderMap) -> Presented<'_> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let Some((scheme, credential)) = value.split_once(' ') else {
            return Presented::Missing;
        };
        let credential = credential.trim();
        return if scheme.eq_ignore_ascii_case("bearer") {
            Presented::Bearer(credential)
        } else if scheme.eq_ignore_ascii_case("basic") {
            Presented::Basic(credential)
        } else {
            Presented::Missing
        };
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or(Presented::Missing, |key| Presented::ApiKey(key.trim()))
}

/// Middleware: lets the request through only with an accepted credential.
pub async fn require_credentials(
    State(credentials): State<Credentials>,
    request: Request,
    next: Next,
) -> Response {
    if credentials.is_empty() {
        return credentials.refuse(Refusal::Closed);
    }
    match credentials
        .admits(presented_credential(request.headers()))
        .await
    {
        Ok(()) => next.run(request).await,
        Err(refusal) => credentials.refuse(refusal),
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
    fn reads_bearer_basic_then_api_key() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer tok".parse().unwrap());
        assert_eq!(presented_credential(&headers), Presented::Bearer("tok"));
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(
            presented_credential(&headers),
            Presented::Basic("dXNlcjpwYXNz")
        );
        headers.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(presented_credential(&headers), Presented::Missing);
        headers.remove(header::AUTHORIZATION);
        headers.insert(API_KEY_HEADER, "key".parse().unwrap());
        assert_eq!(presented_credential(&headers), Presented::ApiKey("key"));
    }

    #[tokio::test]
    async fn basic_users_are_accepted_besides_tokens_and_challenged_for() {
        use base64::Engine;
        let users = BasicUsers::parse(&format!("svc:{}", hash_password("pw").unwrap())).unwrap();
        let credentials = Credentials::new(["tok"]).with_basic_users(users);
        let basic = base64::engine::general_purpose::STANDARD.encode("svc:pw");
        assert_eq!(credentials.admits(Presented::Basic(&basic)).await, Ok(()));
        assert_eq!(credentials.admits(Presented::Bearer("tok")).await, Ok(()));
        assert_eq!(
            credentials.admits(Presented::Bearer(&basic)).await,
            Err(Refusal::NotAccepted)
        );
        let response = credentials.refuse(Refusal::Missing);
        let challenges: Vec<_> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            challenges,
            [
                "Bearer realm=\"bookstore\"",
                "Basic realm=\"bookstore\", charset=\"UTF-8\""
            ]
        );
    }

    #[test]
    fn an_empty_basic_list_is_no_credential() {
        let credentials = Credentials::new([""]).with_basic_users(BasicUsers::parse("").unwrap());
        assert!(credentials.is_empty());
    }
}
