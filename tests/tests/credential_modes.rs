//! Every outbound credential booksvc's client can send is one storagesvc accepts: a static
//! token as `X-API-Key` or `Authorization: Bearer`, Basic (a configured user whose password
//! storagesvc holds as a hash), and an OAuth2 access token fetched from a token endpoint
//! and verified by storagesvc with the authorization server's public key. A wrong
//! credential of each kind is refused by storagesvc.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{StatusCode, Url};
use serde_json::Value;
use shared::client::{AuthConfig, ClientAuth, OAuthConfig, Secret, ServiceClientConfig};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::header;
use system_tests::storagesvc::{TOKEN, TestStoragesvc, assert_problem};
use system_tests::token_server::{
    AUDIENCE, CLIENT_ID, CLIENT_SECRET, ISSUER, SigningKey, TokenServer,
};

const BASIC_USER: &str = "booksvc";
const BASIC_PASSWORD: &str = "booksvc basic password: with a colon";
/// booksvc's `Cache-Status` for an answer fresh from storagesvc, stored for later.
const FRESH: &str = "booksvc; fwd=miss; stored";

/// storagesvc accepting every kind at once: [`TOKEN`], one Basic user and access tokens
/// signed by `key`.
async fn storagesvc_accepting_all(db: &Postgres, key: &SigningKey) -> TestStoragesvc {
    let hash = shared::auth::hash_password(BASIC_PASSWORD).unwrap();
    let basic_users = format!("{BASIC_USER}:{hash}");
    let mut flags = vec!["--auth-tokens", TOKEN, "--auth-basic-users", &basic_users];
    flags.extend(key.storagesvc_flags());
    let app = TestStoragesvc::spawn_with_credentials(&db.url(), &flags).await;
    app.wait_until_ready(std::time::Duration::from_secs(30))
        .await;
    app
}

fn client(storagesvc: &TestStoragesvc, auth: AuthConfig) -> ServiceClientConfig {
    let base_url = Url::parse(&format!("http://{}", storagesvc.address)).unwrap();
    ServiceClientConfig::new("storagesvc", base_url).with_auth(auth)
}

fn oauth(token_url: &Url, client_secret: &str) -> AuthConfig {
    AuthConfig::OAuth2(OAuthConfig {
        token_url: token_url.clone(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Secret::new(client_secret),
        scopes: vec!["books:read".to_owned()],
        client_auth: ClientAuth::Basic,
    })
}

/// A read through booksvc with `auth`: its status, `Cache-Status` and body.
async fn read_through_booksvc(
    storagesvc: &TestStoragesvc,
    redis: &Redis,
    auth: AuthConfig,
) -> (StatusCode, Option<String>, Value) {
    let booksvc = TestBooksvc::spawn_with_client(client(storagesvc, auth), &redis.url(), &[]).await;
    let response = booksvc.get("/books/1").await;
    let status = response.status();
    let cache_status = header(&response, "cache-status");
    let body = response.json().await.unwrap();
    booksvc.stop().await;
    (status, cache_status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booksvc_reads_through_storagesvc_with_every_credential_mode() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let key = SigningKey::generate();
    let storagesvc = storagesvc_accepting_all(&db, &key).await;
    let token_server = TokenServer::start(key.clone()).await;

    let modes = [
        ("API key", AuthConfig::ApiKey(Secret::new(TOKEN))),
        ("bearer", AuthConfig::Bearer(Secret::new(TOKEN))),
        (
            "basic",
            AuthConfig::Basic {
                user: BASIC_USER.to_owned(),
                password: Secret::new(BASIC_PASSWORD),
            },
        ),
        ("OAuth2", oauth(&token_server.token_url, CLIENT_SECRET)),
    ];
    for (mode, auth) in modes {
        let (status, cache_status, body) = read_through_booksvc(&storagesvc, &redis, auth).await;
        assert_eq!(status, StatusCode::OK, "{mode}: {body}");
        assert_eq!(cache_status.as_deref(), Some(FRESH), "{mode}");
        assert_eq!(body["id"], 1, "{mode}: {body}");
        assert_eq!(body["title"], "One book", "{mode}: {body}");
    }
    assert_eq!(token_server.issued(), 1, "OAuth2 fetched its token");
    assert_eq!(token_server.refused(), 0);
}

/// A wrong credential of each kind reaches storagesvc and is refused there: booksvc passes
/// storagesvc's `401` on (a refusal is not an outage, so there is no fallback to serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storagesvc_refuses_a_wrong_credential_of_every_mode() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let key = SigningKey::generate();
    let storagesvc = storagesvc_accepting_all(&db, &key).await;
    // A token endpoint whose tokens look right but are signed by a key storagesvc does not
    // trust.
    let impostor = TokenServer::start(SigningKey::generate()).await;

    let modes = [
        ("API key", AuthConfig::ApiKey(Secret::new("not-the-token"))),
        ("bearer", AuthConfig::Bearer(Secret::new("not-the-token"))),
        (
            "basic, wrong password",
            AuthConfig::Basic {
                user: BASIC_USER.to_owned(),
                password: Secret::new("not the password"),
            },
        ),
        (
            "basic, unknown user",
            AuthConfig::Basic {
                user: "somebody".to_owned(),
                password: Secret::new(BASIC_PASSWORD),
            },
        ),
        (
            "OAuth2, untrusted key",
            oauth(&impostor.token_url, CLIENT_SECRET),
        ),
    ];
    for (mode, auth) in modes {
        let (status, cache_status, body) = read_through_booksvc(&storagesvc, &redis, auth).await;
        // Table 4.2: storagesvc refusing booksvc's credential is a failure of the call
        // (booksvc is misconfigured), answered from the store; nothing is stored here.
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode}: {body}");
        assert_eq!(
            body["type"], "urn:bookstore:problem:books-unavailable",
            "{mode}: {body}"
        );
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("credentials_refused"),
            "{mode}: {body}"
        );
        // booksvc's own problem, not a forwarded or a stored answer.
        assert_eq!(cache_status, None, "{mode}");
    }
    assert!(impostor.issued() >= 1, "the impostor's token was fetched");
}

/// A client secret the token endpoint refuses gets booksvc no token to send to
/// storagesvc: booksvc answers `502`, its own credential is wrong, not storagesvc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_gets_no_token_and_booksvc_answers_502() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let key = SigningKey::generate();
    let storagesvc = storagesvc_accepting_all(&db, &key).await;
    let token_server = TokenServer::start(key).await;

    let (status, _, body) = read_through_booksvc(
        &storagesvc,
        &redis,
        oauth(&token_server.token_url, "not-the-secret"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        body["type"], "urn:bookstore:problem:upstream-misconfigured",
        "{body}"
    );
    assert_eq!(token_server.issued(), 0);
    assert!(token_server.refused() >= 1);
}

/// storagesvc checks an access token's issuer, audience and expiry itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storagesvc_refuses_expired_foreign_and_misaddressed_access_tokens() {
    let db = Postgres::start().await;
    let key = SigningKey::generate();
    let storagesvc = storagesvc_accepting_all(&db, &key).await;
    let with_bearer = |token: String| {
        storagesvc
            .http
            .get(storagesvc.url("/books/1"))
            .bearer_auth(token)
            .send()
    };

    let valid = key.access_token(ISSUER, AUDIENCE, 300);
    assert_eq!(with_bearer(valid).await.unwrap().status(), StatusCode::OK);

    let refused = [
        ("expired", key.access_token(ISSUER, AUDIENCE, -3600)),
        ("wrong audience", key.access_token(ISSUER, "booksvc", 300)),
        (
            "wrong issuer",
            key.access_token("https://auth.elsewhere.test", AUDIENCE, 300),
        ),
        (
            "signed by another key",
            SigningKey::generate().access_token(ISSUER, AUDIENCE, 300),
        ),
    ];
    for (case, token) in refused {
        let response = with_bearer(token).await.unwrap();
        let challenges: Vec<String> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            problem["detail"], "the credential presented is not accepted",
            "{case}: the reason stays in the log"
        );
        assert_eq!(
            challenges,
            [
                r#"Bearer realm="bookstore", error="invalid_token""#,
                r#"Basic realm="bookstore", charset="UTF-8""#,
            ],
            "{case}"
        );
    }

    // Without a credential, the 401 names every accepted scheme.
    let anonymous = storagesvc
        .http
        .get(storagesvc.url("/books"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    let detail = problem["detail"].as_str().unwrap();
    for scheme in [
        "Authorization: Bearer",
        "X-API-Key",
        "JWT",
        "Authorization: Basic",
    ] {
        assert!(detail.contains(scheme), "{scheme} in {detail}");
    }
}

/// Basic straight at storagesvc: the right password again and again (answered from the
/// verification cache after the first), and a wrong one after it is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storagesvc_accepts_basic_users_and_a_cached_success_opens_nothing_else() {
    let db = Postgres::start().await;
    let key = SigningKey::generate();
    let storagesvc = storagesvc_accepting_all(&db, &key).await;
    let basic = |password: &str| {
        storagesvc
            .http
            .get(storagesvc.url("/books"))
            .basic_auth(BASIC_USER, Some(password))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            basic(BASIC_PASSWORD).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let wrong = basic("not the password").await.unwrap();
    assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
}
