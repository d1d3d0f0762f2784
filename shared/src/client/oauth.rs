//! OAuth2 client credentials (RFC 6749 §4.4): fetch a token, keep it until shortly before it
//! expires, share one fetch between concurrent callers.
//!
//! Written directly on `reqwest` and `serde` rather than with the `oauth2` crate: that
//! crate's HTTP client feature is built on an older `reqwest` (a second copy of the HTTP
//! stack in every binary), and without it the crate still brings older `sha2`, `rand`,
//! `thiserror` and `chrono` for the many flows it supports. Client credentials is one form
//! POST and one JSON answer; the code below is that and the caching around it.
//!
//! - The token is fetched on first use, not at start-up: a service must start while its
//!   identity provider is down.
//! - It is reused until `expires_in` minus a margin (10% of the lifetime, at most 30 s), so
//!   a call never leaves with a token about to expire in flight. Without `expires_in` the
//!   token is assumed to live [`DEFAULT_LIFETIME`].
//! - Concurrent callers that find no usable token wait for one fetch instead of each
//!   starting their own (no thundering herd on the token endpoint).
//! - A failed fetch is returned as a [`TokenError`] and not remembered: the next call tries
//!   again. Bounding how long a fetch may take is the resilience layer's job, like for any
//!   other part of an attempt; a fetch abandoned halfway lets the next waiter take over.
//! - A token the upstream answers `401` to is forgotten, so the next call fetches anew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use reqwest::Url;
use serde::Deserialize;

use super::auth::header_value;
use super::error::TokenError;
use super::secret::Secret;

/// How long a token without `expires_in` is used. Short, because nothing says it lasts
/// longer; a token refused earlier than that is dropped on the first `401` anyway.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The most a token is refreshed ahead of its expiry.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Longest `error_description` from a token endpoint copied into an error message.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// Where and as whom to ask for tokens.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    /// Sent space-separated as `scope`; left out when empty.
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret: the method every
    /// authorization server must support.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body, for servers that want them there.
    RequestBody,
}

impl ClientAuth {
    /// `basic` or `body`, as in `{NAME}_OAUTH_CLIENT_AUTH`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "basic" => Some(Self::Basic),
            "body" => Some(Self::RequestBody),
            _ => None,
        }
    }
}

/// A token ready to send, and which fetch it came from.
#[derive(Clone)]
pub(crate) struct AccessToken {
    header: HeaderValue,
    fetch: u64,
}

impl AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) fn header(&self) -> HeaderValue {
        self.header.clone()
    }
}

struct CachedToken {
    token: AccessToken,
    refresh_at: Instant,
}

/// Fetches and caches the tokens of one client.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    config: OAuthConfig,
    cached: Mutex<Option<CachedToken>>,
    /// Held by the one caller fetching; the others wait on it, then find its token.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl TokenSource {
    pub(crate) fn new(http: reqwest::Client, config: OAuthConfig) -> Self {
        Self {
            http,
            config,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// A token to send now: the cached one while it is fresh, else a new one.
    pub(crate) async fn token(&self) -> Result<AccessToken, TokenError> {
        self.token_at(Instant::now()).await
    }

    /// [`Self::token`] with the clock passed in, so tests can move past an expiry.
    async fn token_at(&self, now: Instant) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.fresh(now) {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        // Whoever held the lock before us may just have fetched one.
        if let Some(token) = self.fresh(now) {
            return Ok(token);
        }
        let (header, expires_in) = self.fetch().await?;
        let token = AccessToken {
            header,
            fetch: self.fetches.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let refresh_at = now + refresh_after(expires_in);
        *self.lock_cache() = Some(CachedToken {
            token: token.clone(),
            refresh_at,
        });
        tracing::debug!(
            token_url = %self.config.token_url,
            expires_in = ?expires_in,
            "fetched an OAuth2 access token"
        );
        Ok(token)
    }

    /// Drops `token` from the cache, unless a newer one has replaced it already.
    pub(crate) fn forget(&self, token: &AccessToken) {
        let mut cached = self.lock_cache();
        if cached
            .as_ref()
            .is_some_and(|c| c.token.fetch == token.fetch)
        {
            *cached = None;
        }
    }

    fn fresh(&self, now: Instant) -> Option<AccessToken> {
        self.lock_cache()
            .as_ref()
            .filter(|cached| now < cached.refresh_at)
            .map(|cached| cached.token.clone())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<CachedToken>> {
        // The cache is a plain value written in one statement; a panic elsewhere while the
        // lock was held cannot have left it half-written.
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One token request: the `Authorization` header to send and the token's lifetime.
    async fn fetch(&self) -> Result<(HeaderValue, Option<Duration>), TokenError> {
        let config = &self.config;
        let token_url = || config.token_url.to_string();
        let scope = config.scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let mut request = self
            .http
            .post(config.token_url.clone())
            .header(header::ACCEPT, "application/json");
        match config.client_auth {
            ClientAuth::Basic => {
                request = request.basic_auth(
                    form_urlencode(&config.client_id),
                    Some(form_urlencode(config.client_secret.expose())),
                );
            }
            ClientAuth::RequestBody => {
                form.push(("client_id", &config.client_id));
                form.push(("client_secret", config.client_secret.expose()));
            }
        }
        let transport = |error| TokenError::Unreachable {
            token_url: token_url(),
            error,
        };
        let response = request.form(&form).send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let answer: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
            return Err(TokenError::Rejected {
                token_url: token_url(),
                status,
                error: answer.error,
                description: answer
                    .error_description
                    .map(|d| d.chars().take(MAX_DESCRIPTION_CHARS).collect()),
            });
        }
        parse_token(&body).map_err(|reason| TokenError::InvalidResponse {
            token_url: token_url(),
            status,
            reason,
        })
    }
}

/// When to refresh a token that lives `expires_in`: 10% ahead, at most 30 s ahead.
pub(crate) fn refresh_after(expires_in: Option<Duration>) -> Duration {
    let lifetime = expires_in.unwrap_or(DEFAULT_LIFETIME);
    lifetime - (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<ExpiresIn>,
}

/// `expires_in` is a number by the RFC; some servers send it as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Seconds(u64),
    Text(String),
}

/// An error response (RFC 6749 §5.2); any field may be missing from a non-conforming one.
#[derive(Deserialize, Default)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_token(body: &[u8]) -> Result<(HeaderValue, Option<Duration>), String> {
    let answer: TokenResponse = serde_json::from_slice(body)
        .map_err(|err| format!("expected JSON with an `access_token` ({err})"))?;
    // `token_type` is required by the RFC but missing from some servers' answers; anything
    // other than bearer would need a different way of sending it.
    if let Some(kind) = &answer.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!(
            "token_type `{kind}` is not supported, only `Bearer`"
        ));
    }
    if answer.access_token.is_empty() {
        return Err("`access_token` is empty".to_owned());
    }
    let header = header_value(&format!("Bearer {}", answer.access_token))
        .ok_or("`access_token` contains characters not allowed in an HTTP header")?;
    let expires_in = match answer.expires_in {
        None => None,
        Some(ExpiresIn::Seconds(seconds)) => Some(Duration::from_secs(seconds)),
        Some(ExpiresIn::Text(text)) => {
            Some(Duration::from_secs(text.trim().parse().map_err(|_| {
                format!("`expires_in` is `{text}`, not a number of seconds")
            })?))
        }
    };
    Ok((header, expires_in))
}

/// `application/x-www-form-urlencoded` encoding, which RFC 6749 §2.3.1 applies to the
/// client id and secret before they become the basic-auth user and password.
fn form_urlencode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::json;

    use super::*;

    /// What the test token endpoint answers, and how often it was asked.
    struct Endpoint {
        calls: AtomicUsize,
        /// Answers with this status (and an RFC 6749 error body) while `rejections` last.
        rejections: AtomicUsize,
        expires_in: Option<u64>,
    }

    /// A token endpoint on a free local port that checks the client credentials and hands
    /// out `token-1`, `token-2`, ...
    async fn token_endpoint(expires_in: Option<u64>, rejections: usize) -> (Arc<Endpoint>, Url) {
        let endpoint = Arc::new(Endpoint {
            calls: AtomicUsize::new(0),
            rejections: AtomicUsize::new(rejections),
            expires_in,
        });
        let app = Router::new()
            .route("/token", post(issue))
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (endpoint, Url::parse(&url).unwrap())
    }

    async fn issue(
        State(endpoint): State<Arc<Endpoint>>,
        headers: HeaderMap,
        body: String,
    ) -> Response {
        let call = endpoint.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Basic over the form-encoded id and secret, as RFC 6749 §2.3.1 asks
        // (`my+client:s%2Bcret`), or both in the body.
        let basic_ok = basic == "Basic bXkrY2xpZW50OnMlMkJjcmV0";
        let body_ok =
            body.contains("client_id=my+client") && body.contains("client_secret=s%2Bcret");
        let grant_ok = body.contains("grant_type=client_credentials");
        let rejected = endpoint
            .rejections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if rejected || !(basic_ok || body_ok) || !grant_ok {
            let error = json!({"error": "invalid_client", "error_description": "unknown client"});
            return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
        }
        let mut answer = json!({"access_token": format!("token-{call}"), "token_type": "bearer"});
        if let Some(expires_in) = endpoint.expires_in {
            answer["expires_in"] = json!(expires_in);
        }
        axum::Json(answer).into_response()
    }

    fn source(token_url: Url, client_auth: ClientAuth) -> TokenSource {
        TokenSource::new(
            crate::client::http_client_builder().build().unwrap(),
            OAuthConfig {
                token_url,
                client_id: "my client".to_owned(),
                client_secret: Secret::new("s+cret"),
                scopes: vec!["books:read".to_owned()],
                client_auth,
            },
        )
    }

    #[tokio::test]
    async fn two_calls_reuse_one_token() {
        let (endpoint, url) = token_endpoint(Some(3600), 0).await;
        let source = source(url, ClientAuth::Basic);
        let first = source.token().await.unwrap();
        let second = source.token().await.unwrap();
        assert_eq!(first.header(), "Bearer token-1");
        assert_eq!(second.header(), "Bearer token-1");
        assert!(first.header().is_sensitive());
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn sends_client_credentials_in_the_body_when_asked() {
        let (endpoint, url) = token_endpoint(Some(3600), 0).await;
        let token = source(url, ClientAuth::RequestBody).token().await.unwrap();
        assert_eq!(token.header(), "Bearer token-1");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_first_calls_share_one_fetch() {
        let (endpoint, url) = token_endpoint(Some(3600), 0).await;
        let source = Arc::new(source(url, ClientAuth::Basic));
        let calls = (0..16).map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.token().await.map(|t| t.header()) })
        });
        for result in futures::future::join_all(calls).await {
            assert_eq!(result.unwrap().unwrap(), "Bearer token-1");
        }
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refreshes_the_token_shortly_before_it_expires() {
        let (endpoint, url) = token_endpoint(Some(3600), 0).await;
        let source = source(url, ClientAuth::Basic);
        let start = Instant::now();
        let token = |seconds| source.token_at(start + Duration::from_secs(seconds));
        assert_eq!(token(0).await.unwrap().header(), "Bearer token-1");
        // 3600 s minus a 30 s margin (10% would be 360 s, more than the 30 s cap).
        assert_eq!(token(3569).await.unwrap().header(), "Bearer token-1");
        assert_eq!(token(3570).await.unwrap().header(), "Bearer token-2");
        assert_eq!(token(3571).await.unwrap().header(), "Bearer token-2");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_without_expiry_is_kept_for_the_default_lifetime() {
        let (endpoint, url) = token_endpoint(None, 0).await;
        let source = source(url, ClientAuth::Basic);
        let start = Instant::now();
        source.token_at(start).await.unwrap();
        let before = start + refresh_after(None) - Duration::from_millis(1);
        assert_eq!(
            source.token_at(before).await.unwrap().header(),
            "Bearer token-1"
        );
        let after = start + refresh_after(None);
        assert_eq!(
            source.token_at(after).await.unwrap().header(),
            "Bearer token-2"
        );
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_rejected_fetch_is_a_typed_error_and_is_not_cached() {
        let (endpoint, url) = token_endpoint(Some(3600), 1).await;
        let source = source(url.clone(), ClientAuth::Basic);
        let err = source.token().await.err().unwrap();
        let TokenError::Rejected { status, error, .. } = &err else {
            panic!("expected a rejection, got {err:?}");
        };
        assert_eq!(*status, StatusCode::UNAUTHORIZED);
        assert_eq!(error.as_deref(), Some("invalid_client"));
        assert_eq!(
            err.to_string(),
            format!(
                "the OAuth2 token endpoint {url} refused the client credentials with 401 Unauthorized (invalid_client: unknown client); check the client id, secret and scopes"
            )
        );
        assert!(!err.to_string().contains("s+cret"));
        assert_eq!(source.token().await.unwrap().header(), "Bearer token-2");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_typed_error() {
        // Bind and drop a listener: nothing listens on that port any more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let err = source(url, ClientAuth::Basic).token().await.err().unwrap();
        assert!(matches!(err, TokenError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("could not be reached"), "{err}");
    }

    #[tokio::test]
    async fn forgetting_a_token_makes_the_next_call_fetch_a_new_one() {
        let (endpoint, url) = token_endpoint(Some(3600), 0).await;
        let source = source(url, ClientAuth::Basic);
        let first = source.token().await.unwrap();
        source.forget(&first);
        let second = source.token().await.unwrap();
        assert_eq!(second.header(), "Bearer token-2");
        // Forgetting a token that was already replaced keeps the newer one.
        source.forget(&first);
        assert_eq!(source.token().await.unwrap().header(), "Bearer token-2");
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn refresh_margin_is_a_tenth_of_the_lifetime_capped_at_30_seconds() {
        let secs = Duration::from_secs;
        assert_eq!(refresh_after(Some(secs(3600))), secs(3570));
        assert_eq!(refresh_after(Some(secs(100))), secs(90));
        assert_eq!(refresh_after(Some(secs(0))), secs(0));
        assert_eq!(refresh_after(None), secs(54));
    }

    #[test]
    fn parses_token_responses_leniently_but_not_blindly() {
        let (header, expires_in) =
            parse_token(br#"{"access_token":"abc","token_type":"Bearer","expires_in":"60"}"#)
                .unwrap();
        assert_eq!(header, "Bearer abc");
        assert_eq!(expires_in, Some(Duration::from_secs(60)));
        assert_eq!(parse_token(br#"{"access_token":"abc"}"#).unwrap().1, None);
        for (body, reason) in [
            (&br#"{"token_type":"Bearer"}"#[..], "expected JSON"),
            (
                br#"{"access_token":"abc","token_type":"mac"}"#,
                "token_type `mac`",
            ),
            (br#"{"access_token":""}"#, "empty"),
            (
                br#"{"access_token":"a\nb"}"#,
                "not allowed in an HTTP header",
            ),
            (
                br#"{"access_token":"a","expires_in":"soon"}"#,
                "`expires_in` is `soon`",
            ),
        ] {
            let err = parse_token(body).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn form_encodes_client_credentials() {
        assert_eq!(form_urlencode("booksvc-1.a_b*"), "booksvc-1.a_b*");
        assert_eq!(form_urlencode("my client"), "my+client");
        assert_eq!(form_urlencode("s+c/r:é"), "s%2Bc%2Fr%3A%C3%A9");
    }
}
