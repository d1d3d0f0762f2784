//! booksvc calls storagesvc, and fetches its OAuth2 token, over `https` when their URLs say
//! so: TLS-terminating proxies in front of a real storagesvc and a real token endpoint,
//! with certificates from a CA made for the test. Trusting only that CA
//! (`STORAGESVC_CA_FILE`), booksvc reads fresh books with a token fetched over TLS; a
//! certificate from a CA it does not trust is refused, and the error says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use shared::client::{
    AuthConfig, CaFile, ClientAuth, OAuthConfig, Secret, ServiceClient, ServiceClientConfig,
};
use system_tests::booksvc::TestBooksvc;
use system_tests::containers::{Postgres, Redis};
use system_tests::header;
use system_tests::storagesvc::TestStoragesvc;
use system_tests::tls::{TestCa, TlsProxy};
use system_tests::token_server::{CLIENT_ID, CLIENT_SECRET, SigningKey, TokenServer};

fn address_of(url: &Url) -> SocketAddr {
    url.socket_addrs(|| None).unwrap()[0]
}

fn ca_file(ca: &TestCa) -> CaFile {
    CaFile::load("STORAGESVC_CA_FILE", &ca.pem_file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booksvc_reads_from_an_https_storagesvc_with_a_token_fetched_over_https() {
    let (db, redis) = tokio::join!(Postgres::start(), Redis::start());
    let key = SigningKey::generate();
    let storagesvc =
        TestStoragesvc::spawn_with_credentials(&db.url(), &key.storagesvc_flags()).await;
    storagesvc.wait_until_ready(Duration::from_secs(30)).await;
    let token_server = TokenServer::start(key).await;

    let ca = TestCa::new("deployment");
    let storagesvc_tls = TlsProxy::start(storagesvc.address, &ca).await;
    let token_tls = TlsProxy::start(address_of(&token_server.token_url), &ca).await;
    let auth = AuthConfig::OAuth2(OAuthConfig {
        token_url: Url::parse(&format!("{}/token", token_tls.url())).unwrap(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Secret::new(CLIENT_SECRET),
        scopes: vec!["books:read".to_owned()],
        client_auth: ClientAuth::Basic,
    });
    let client = ServiceClientConfig::new("storagesvc", Url::parse(&storagesvc_tls.url()).unwrap())
        .with_auth(auth)
        .with_ca_file(ca_file(&ca));

    let booksvc = TestBooksvc::spawn_with_client(client, &redis.url(), &[]).await;
    let response = booksvc.get("/books?limit=5").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "cache-status").as_deref(),
        Some("booksvc; fwd=miss; stored")
    );
    assert!(
        response
            .json::<serde_json::Value>()
            .await
            .unwrap()
            .is_array()
    );
    assert_eq!(token_server.issued(), 1, "the token was fetched over https");
    assert_eq!(token_server.refused(), 0);
}

#[tokio::test]
async fn a_certificate_from_a_ca_not_trusted_is_refused_with_a_clear_error() {
    // A plain server behind TLS whose certificate `theirs` signed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
    let theirs = TestCa::new("theirs");
    let server = TlsProxy::start(plain, &theirs).await;
    let ours = TestCa::new("ours");

    // Neither the system's store nor another CA's file trusts it.
    for ca in [None, Some(ca_file(&ours))] {
        let mut config = ServiceClientConfig::new("storagesvc", Url::parse(&server.url()).unwrap());
        if let Some(ca) = ca {
            config = config.with_ca_file(ca);
        }
        let client = ServiceClient::new(config, "booksvc", "test").unwrap();
        let err = client
            .execute(
                Method::GET,
                "/books",
                reqwest::header::HeaderMap::new(),
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("GET {}/books failed", server.url())),
            "{err}"
        );
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "the error says the certificate's issuer is unknown: {err}"
        );
    }
}
