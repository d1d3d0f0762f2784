//! An OAuth2 authorization server for the tests: a client-credentials token endpoint on a
//! free local port that hands out RFC 9068 access tokens (JWTs) signed with a P-256 key
//! made at test time, plus that key's public half for storagesvc to verify with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use serde_json::{Value, json};

use crate::server::RunningServer;

/// The issuer the tokens name and storagesvc expects.
pub const ISSUER: &str = "https://auth.bookstore.test";
/// The audience the tokens are for: storagesvc.
pub const AUDIENCE: &str = "storagesvc";
/// The client booksvc authenticates as at the token endpoint.
pub const CLIENT_ID: &str = "booksvc";
pub const CLIENT_SECRET: &str = "booksvc-client-secret";
/// How long an issued token lives.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// A signing key pair: the private half signs, the public half (PEM) verifies.
#[derive(Clone)]
pub struct SigningKey {
    encoding: Arc<EncodingKey>,
    public_pem: String,
}

impl SigningKey {
    /// A fresh P-256 key pair (ES256).
    pub fn generate() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self {
            encoding: Arc::new(encoding),
            public_pem: pair.public_key_pem(),
        }
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// storagesvc's flags to accept access tokens of [`ISSUER`] for [`AUDIENCE`] that this
    /// key signed.
    pub fn storagesvc_flags(&self) -> [&str; 6] {
        [
            "--auth-jwt-issuer",
            ISSUER,
            "--auth-jwt-audience",
            AUDIENCE,
            "--auth-jwt-public-key",
            &self.public_pem,
        ]
    }

    /// A JWT with `typ: at+jwt` and these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// An access token of [`ISSUER`] for [`AUDIENCE`] that expires `expires_in` from now
    /// (negative: already expired), with RFC 9068's other claims.
    pub fn access_token(&self, issuer: &str, audience: &str, expires_in: i64) -> String {
        let now = unix_now();
        self.sign(&json!({
            "iss": issuer,
            "aud": audience,
            "exp": now + expires_in,
            "iat": now,
            "sub": CLIENT_ID,
            "client_id": CLIENT_ID,
            "jti": token_id(now),
        }))
    }
}

/// A running token endpoint. Dropping it stops the server.
pub struct TokenServer {
    pub token_url: Url,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    _server: RunningServer,
}

#[derive(Clone)]
struct Endpoint {
    key: SigningKey,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl TokenServer {
    /// Starts a token endpoint at `/token` that signs with `key`.
    pub async fn start(key: SigningKey) -> Self {
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let endpoint = Endpoint {
            key,
            issued: Arc::clone(&issued),
            refused: Arc::clone(&refused),
        };
        let app = Router::new()
            .route("/token", post(issue))
            .with_state(endpoint);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let server = RunningServer::spawn(address, |shutdown| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        });
        Self {
            token_url: Url::parse(&format!("http://{address}/token")).unwrap(),
            issued,
            refused,
            _server: server,
        }
    }

    /// How many tokens it has handed out.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// How many token requests it refused (wrong client credentials or grant).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// RFC 6749 §4.4: client credentials in `Authorization: Basic` (or the form), grant type
/// `client_credentials`; answers §5.1 JSON, or a §5.2 error.
async fn issue(State(endpoint): State<Endpoint>, headers: HeaderMap, body: String) -> Response {
    let expected_basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let basic_ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected_basic.as_bytes());
    let form: Vec<(String, String)> = url_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let body_ok =
        field("client_id") == Some(CLIENT_ID) && field("client_secret") == Some(CLIENT_SECRET);
    if !(basic_ok || body_ok) {
        endpoint.refused.fetch_add(1, Ordering::SeqCst);
        let error =
            json!({"error": "invalid_client", "error_description": "client authentication failed"});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    if field("grant_type") != Some("client_credentials") {
        endpoint.refused.fetch_add(1, Ordering::SeqCst);
        let error = json!({"error": "unsupported_grant_type"});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    endpoint.issued.fetch_add(1, Ordering::SeqCst);
    let lifetime = i64::try_from(TOKEN_LIFETIME.as_secs()).unwrap();
    let token = endpoint.key.access_token(ISSUER, AUDIENCE, lifetime);
    axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
    }))
    .into_response()
}

/// `application/x-www-form-urlencoded` pairs; the test's values need only `+` and `%XX`.
fn url_form(body: &str) -> Vec<(String, String)> {
    Url::parse(&format!("http://form.invalid/?{body}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

fn unix_now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_secs()).unwrap()
}

/// A token id unique enough for a test run.
fn token_id(now: i64) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{now}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}
