//! The service client on the wire: real HTTP servers on local ports that echo what they
//! receive, so each test checks the headers a called service actually sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use shared::client::{ClientError, ConfigError, ServiceClient, ServiceClientConfig, TokenError};
use shared::metrics::HttpMetrics;
use shared::server::{ServerLimits, with_common_layers};
use shared::trace_context::TraceParent;

/// Serves `app` on a free local port; returns its base URL.
async fn spawn(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Answers every request with what it received: method, path and query, headers (every
/// value of each, so a duplicated header shows) and body.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: String) -> Json<Value> {
    let mut seen = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap_or("<not text>"))
            .collect();
        seen.insert(name.to_string(), json!(values));
    }
    Json(json!({"method": method.as_str(), "uri": uri.to_string(), "headers": seen, "body": body}))
}

async fn spawn_echo() -> String {
    spawn(Router::new().fallback(any(echo))).await
}

/// The single value of header `name` as the echo server saw it.
fn header<'a>(echoed: &'a Value, name: &str) -> Option<&'a str> {
    let values = echoed["headers"][name].as_array()?;
    assert_eq!(values.len(), 1, "{name} sent more than once: {echoed}");
    values[0].as_str()
}

/// A client for `storagesvc` configured from `vars` (plus its URL), as booksvc builds it.
fn client(url: &str, vars: &[(&str, &str)]) -> ServiceClient {
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert("STORAGESVC_URL".to_owned(), url.to_owned());
    let config =
        ServiceClientConfig::from_lookup("storagesvc", |name| env.get(name).cloned()).unwrap();
    ServiceClient::new(config, "booksvc", "1.2.3").unwrap()
}

/// The JSON body of a response of the service client.
async fn json_body(response: shared::client::Response) -> Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

async fn call(client: &ServiceClient, path: &str) -> Value {
    let response = client
        .execute(Method::GET, path, HeaderMap::new(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    json_body(response).await
}

#[tokio::test]
async fn sends_no_credentials_when_none_are_configured() {
    let echoed = call(&client(&spawn_echo().await, &[]), "/books").await;
    assert_eq!(header(&echoed, "authorization"), None);
    assert_eq!(header(&echoed, "x-api-key"), None);
}

#[tokio::test]
async fn sends_the_api_key_as_x_api_key() {
    let client = client(&spawn_echo().await, &[("STORAGESVC_API_KEY", "key-1")]);
    let echoed = call(&client, "/books").await;
    assert_eq!(header(&echoed, "x-api-key"), Some("key-1"));
    assert_eq!(header(&echoed, "authorization"), None);
}

#[tokio::test]
async fn sends_the_bearer_token() {
    let client = client(&spawn_echo().await, &[("STORAGESVC_BEARER_TOKEN", "tok-1")]);
    let echoed = call(&client, "/books").await;
    assert_eq!(header(&echoed, "authorization"), Some("Bearer tok-1"));
}

#[tokio::test]
async fn sends_basic_credentials() {
    let vars = [
        ("STORAGESVC_BASIC_USER", "alice"),
        ("STORAGESVC_BASIC_PASSWORD", "pw"),
    ];
    let echoed = call(&client(&spawn_echo().await, &vars), "/books").await;
    // base64("alice:pw")
    assert_eq!(header(&echoed, "authorization"), Some("Basic YWxpY2U6cHc="));
}

#[tokio::test]
async fn sends_user_agent_and_default_headers_which_a_call_may_override() {
    let url = reqwest::Url::parse(&spawn_echo().await).unwrap();
    let config = ServiceClientConfig::new("storagesvc", url)
        .with_default_header("x-tenant".parse().unwrap(), "books".parse().unwrap())
        .with_default_header(
            "accept".parse().unwrap(),
            "application/json".parse().unwrap(),
        );
    let client = ServiceClient::new(config, "booksvc", "1.2.3").unwrap();

    let echoed = call(&client, "/books").await;
    assert_eq!(header(&echoed, "user-agent"), Some("booksvc/1.2.3"));
    assert_eq!(header(&echoed, "x-tenant"), Some("books"));
    assert_eq!(header(&echoed, "accept"), Some("application/json"));

    let mut headers = HeaderMap::new();
    headers.insert("accept", "text/plain".parse().unwrap());
    let response = client
        .execute(Method::GET, "/books", headers, None)
        .await
        .unwrap();
    let echoed: Value = json_body(response).await;
    assert_eq!(header(&echoed, "accept"), Some("text/plain"));
    assert_eq!(header(&echoed, "x-tenant"), Some("books"));
}

#[tokio::test]
async fn sends_the_call_method_path_headers_and_body() {
    let client = client(&spawn_echo().await, &[("STORAGESVC_API_KEY", "key-1")]);
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", "abc-123".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    // Credentials and trace headers belong to the client: a caller's are replaced.
    headers.insert("x-api-key", "forged".parse().unwrap());
    headers.insert("traceparent", "forged".parse().unwrap());
    let body = Bytes::from_static(br#"{"title":"One book"}"#);
    let response = client
        .execute(Method::POST, "/books?dry_run=true", headers, Some(body))
        .await
        .unwrap();
    let echoed: Value = json_body(response).await;
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["uri"], "/books?dry_run=true");
    assert_eq!(echoed["body"], r#"{"title":"One book"}"#);
    assert_eq!(header(&echoed, "idempotency-key"), Some("abc-123"));
    assert_eq!(header(&echoed, "content-type"), Some("application/json"));
    assert_eq!(header(&echoed, "x-api-key"), Some("key-1"));
    assert!(TraceParent::parse(header(&echoed, "traceparent").unwrap()).is_ok());
}

#[tokio::test]
async fn a_call_outside_any_request_starts_a_new_valid_trace() {
    let client = client(&spawn_echo().await, &[]);
    let first = call(&client, "/books").await;
    let second = call(&client, "/books").await;
    let first = TraceParent::parse(header(&first, "traceparent").unwrap()).unwrap();
    let second = TraceParent::parse(header(&second, "traceparent").unwrap()).unwrap();
    assert_ne!(
        first.trace_id, second.trace_id,
        "two unrelated calls, two traces"
    );
    assert_eq!(header(&call(&client, "/books").await, "x-request-id"), None);
}

/// A service built like booksvc: the common layers, and a handler that calls `client`
/// and answers with what the called service received.
async fn spawn_relay(client: ServiceClient) -> String {
    async fn relay(State(client): State<ServiceClient>) -> Json<Value> {
        Json(call(&client, "/books").await)
    }
    let routes = Router::new().route("/relay", get(relay)).with_state(client);
    spawn(with_common_layers(
        routes,
        HttpMetrics::register(&mut Registry::default()),
        &ServerLimits::default(),
    ))
    .await
}

#[tokio::test]
async fn a_call_made_while_handling_a_request_continues_its_trace_and_request_id() {
    let relay = spawn_relay(client(&spawn_echo().await, &[])).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let echoed: Value = shared::client::http_client_builder()
        .build()
        .unwrap()
        .get(format!("{relay}/relay"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let incoming = TraceParent::parse(incoming).unwrap();
    let outgoing = TraceParent::parse(header(&echoed, "traceparent").unwrap()).unwrap();
    assert_eq!(outgoing.trace_id, incoming.trace_id);
    assert_ne!(outgoing.parent_id, incoming.parent_id, "a new span id");
    assert_eq!(header(&echoed, "tracestate"), Some("vendor=abc"));
    assert_eq!(header(&echoed, "x-request-id"), Some("req-42"));
}

#[tokio::test]
async fn a_request_without_trace_headers_gets_ids_that_the_call_carries_on() {
    let relay = spawn_relay(client(&spawn_echo().await, &[])).await;
    let response = reqwest::get(format!("{relay}/relay")).await.unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(header(&echoed, "x-request-id"), Some(request_id.as_str()));
    assert!(TraceParent::parse(header(&echoed, "traceparent").unwrap()).is_ok());
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error_naming_the_call() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client(&url, &[])
        .execute(Method::GET, "/books", HeaderMap::new(), None)
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("GET {url}/books failed")),
        "{message}"
    );
}

/// Answers every request `200` with its `Host` header, counting what it served.
async fn spawn_counting() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .fallback(any(
            |State(served): State<Arc<AtomicUsize>>, headers: HeaderMap| async move {
                served.fetch_add(1, Ordering::Relaxed);
                let host = headers
                    .get("host")
                    .and_then(|host| host.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                Json(json!({ "host": host }))
            },
        ))
        .with_state(Arc::clone(&served));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, served)
}

#[tokio::test]
async fn given_addresses_share_the_calls_and_one_that_refuses_is_ejected() {
    let (first, served_first) = spawn_counting().await;
    let (second, served_second) = spawn_counting().await;
    let refusing = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    // No port in the URL: each address's own port is used, and the name is the Host.
    let config = ServiceClientConfig::new(
        "storagesvc",
        reqwest::Url::parse("http://storagesvc.internal").unwrap(),
    )
    .with_addresses(vec![first, second, refusing]);
    let client = ServiceClient::new(config, "booksvc", "1").unwrap();

    let mut refused = 0;
    for _ in 0..60 {
        match client
            .execute(Method::GET, "/books", HeaderMap::new(), None)
            .await
        {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = json_body(response).await;
                assert_eq!(body["host"], "storagesvc.internal");
            }
            Err(err) => {
                assert!(err.is_connect(), "{err:?}");
                assert!(err.to_string().contains(&refusing.to_string()), "{err}");
                refused += 1;
            }
        }
    }
    // A refused connection is an attempt without an answer: the first ejects the address,
    // and no call goes there again before its probe.
    assert_eq!(refused, 1, "attempts lost to the refusing address");
    let counts = client.balancer_counts().unwrap();
    assert_eq!((counts.in_rotation, counts.ejections_total), (2, 1));
    let (a, b) = (
        served_first.load(Ordering::Relaxed),
        served_second.load(Ordering::Relaxed),
    );
    assert_eq!(a + b, 59);
    assert!(
        a >= 10 && b >= 10,
        "both live addresses served: {a} and {b}"
    );
}

#[tokio::test]
async fn a_name_is_resolved_to_every_address_it_has() {
    let (address, served) = spawn_counting().await;
    let url = format!("http://localhost:{}", address.port());
    let client = client(&url, &[]);
    assert_eq!(
        client.balancer_counts().map(|counts| counts.in_rotation),
        Some(0),
        "nothing is resolved before the first call"
    );
    // localhost may also stand for ::1, where nothing listens: that attempt is refused.
    let _ = client
        .execute(Method::GET, "/books", HeaderMap::new(), None)
        .await;
    let mut resolved: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host(("localhost", address.port()))
            .await
            .unwrap()
            .collect();
    resolved.dedup();
    let mut known = client.addresses();
    known.sort();
    resolved.sort();
    assert_eq!(known, resolved);
    assert!(known.contains(&address), "{known:?}");
    for _ in 0..10 {
        let _ = client
            .execute(Method::GET, "/books", HeaderMap::new(), None)
            .await;
    }
    assert!(served.load(Ordering::Relaxed) >= 1);
}

#[test]
fn addresses_for_a_base_url_with_an_ip_are_refused() {
    let config = ServiceClientConfig::new(
        "storagesvc",
        reqwest::Url::parse("http://127.0.0.1:8082").unwrap(),
    )
    .with_addresses(vec!["127.0.0.1:8083".parse().unwrap()]);
    let err = ServiceClient::new(config, "booksvc", "1").unwrap_err();
    assert!(err.to_string().contains("whose host is a name"), "{err}");
}

#[test]
fn a_missing_url_is_a_startup_error_naming_the_variable() {
    let err = ServiceClientConfig::from_lookup("storagesvc", |_| None).unwrap_err();
    assert!(matches!(err, ConfigError::MissingUrl { .. }));
    assert!(err.to_string().contains("STORAGESVC_URL"), "{err}");
}

/// A token endpoint that accepts client `booksvc` with secret `s3cret` and hands out
/// `token-1`, `token-2`, ...; and counts how often it was asked.
async fn spawn_token_endpoint() -> (String, Arc<AtomicUsize>) {
    async fn issue(State(calls): State<Arc<AtomicUsize>>, headers: HeaderMap) -> Response {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        // base64("booksvc:s3cret")
        if headers
            .get("authorization")
            .is_none_or(|v| v != "Basic Ym9va3N2YzpzM2NyZXQ=")
        {
            let error = json!({"error": "invalid_client", "error_description": "bad secret"});
            return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
        }
        Json(json!({"access_token": format!("token-{call}"), "token_type": "Bearer", "expires_in": 3600}))
            .into_response()
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/token", post(issue))
        .with_state(calls.clone());
    (format!("{}/token", spawn(app).await), calls)
}

fn oauth_vars<'a>(token_url: &'a str, secret: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("STORAGESVC_OAUTH_TOKEN_URL", token_url),
        ("STORAGESVC_OAUTH_CLIENT_ID", "booksvc"),
        ("STORAGESVC_OAUTH_CLIENT_SECRET", secret),
    ]
}

#[tokio::test]
async fn sends_one_fetched_oauth_token_as_bearer_on_every_call() {
    let (token_url, fetches) = spawn_token_endpoint().await;
    let client = client(&spawn_echo().await, &oauth_vars(&token_url, "s3cret"));
    for _ in 0..3 {
        let echoed = call(&client, "/books").await;
        assert_eq!(header(&echoed, "authorization"), Some("Bearer token-1"));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_client_secret_is_a_token_error_and_nothing_is_sent() {
    let (token_url, fetches) = spawn_token_endpoint().await;
    let client = client(&spawn_echo().await, &oauth_vars(&token_url, "wrong"));
    let err = client
        .execute(Method::GET, "/books", HeaderMap::new(), None)
        .await
        .unwrap_err();
    let ClientError::Token { error, .. } = &err else {
        panic!("expected a token error, got {err:?}");
    };
    assert!(
        matches!(error, TokenError::Rejected { status, .. } if *status == StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cannot authenticate to storagesvc: the OAuth2 token endpoint {token_url} refused the client credentials with 401 Unauthorized (invalid_client: bad secret); check the client id, secret and scopes"
        )
    );
    // Not cached: the next call asks again.
    assert!(
        client
            .execute(Method::GET, "/books", HeaderMap::new(), None)
            .await
            .is_err()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_token_the_service_refuses_is_replaced_on_the_next_call() {
    /// Refuses `token-1` as if it had been revoked; accepts any other.
    async fn guarded(headers: HeaderMap) -> StatusCode {
        match headers.get("authorization") {
            Some(value) if value == "Bearer token-1" => StatusCode::UNAUTHORIZED,
            Some(_) => StatusCode::OK,
            None => StatusCode::UNAUTHORIZED,
        }
    }
    let (token_url, fetches) = spawn_token_endpoint().await;
    let upstream = spawn(Router::new().route("/books", get(guarded))).await;
    let client = client(&upstream, &oauth_vars(&token_url, "s3cret"));
    let status = |client: ServiceClient| async move {
        let response = client
            .execute(Method::GET, "/books", HeaderMap::new(), None)
            .await;
        response.unwrap().status()
    };
    assert_eq!(status(client.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(client.clone()).await, StatusCode::OK);
    assert_eq!(status(client.clone()).await, StatusCode::OK);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}
