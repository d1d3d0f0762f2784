//! storagesvc started in-process on a random port, and a client that talks to it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::poll::eventually;
use crate::server::RunningServer;

/// The credential the test instances accept.
pub const TOKEN: &str = "test-service-token";

/// A running storagesvc. Dropping it stops the server.
pub struct TestStoragesvc {
    pub address: SocketAddr,
    /// The admin listener: `/metrics` and detailed health.
    pub admin_address: SocketAddr,
    pub http: reqwest::Client,
    server: RunningServer,
}

impl TestStoragesvc {
    /// Starts storagesvc against `database_url` with the default settings plus `extra` flags,
    /// accepting [`TOKEN`].
    pub async fn spawn(database_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--auth-tokens", TOKEN];
        args.extend_from_slice(extra);
        Self::spawn_with_credentials(database_url, &args).await
    }

    /// Starts storagesvc with only the credential flags given in `extra` (none: it accepts
    /// nobody, as in a deployment that forgot `AUTH_TOKENS`).
    pub async fn spawn_with_credentials(database_url: &str, extra: &[&str]) -> Self {
        crate::init_test_logging();
        let mut args = vec![
            "storagesvc",
            "--bind-addr",
            "127.0.0.1:0",
            "--admin-bind-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ];
        args.extend_from_slice(extra);
        let config = storagesvc::Config::try_parse_from(args).expect("valid test configuration");
        let app = storagesvc::Application::build(config)
            .await
            .expect("build storagesvc");
        let address = app.address();
        let admin_address = app.admin_address();
        let server = RunningServer::spawn(address, |shutdown| app.run_until(shutdown));
        Self {
            address,
            admin_address,
            http: test_http_client(),
            server,
        }
    }

    /// Starts storagesvc and waits until it reports ready (database up and migrated).
    pub async fn spawn_ready(database_url: &str) -> Self {
        let app = Self::spawn(database_url, &[]).await;
        app.wait_until_ready(Duration::from_secs(30)).await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_address)
    }

    /// storagesvc's `/metrics` page, from the admin listener.
    pub async fn metrics(&self) -> String {
        crate::scrape_metrics(&self.http, self.admin_address).await
    }

    /// The value of one series in storagesvc's `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        crate::metric_value(&self.metrics().await, series)
    }

    /// A request carrying the service credential.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("GET reaches storagesvc")
    }

    pub async fn post_book(
        &self,
        book: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Response {
        let mut request = self.request(Method::POST, "/books").json(book);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST reaches storagesvc")
    }

    /// The status of detailed readiness, from the admin listener.
    pub async fn readiness(&self) -> StatusCode {
        self.http
            .get(self.admin_url("/.well-known/health"))
            .send()
            .await
            .expect("health answers")
            .status()
    }

    pub async fn wait_until_ready(&self, within: Duration) {
        eventually(within, "storagesvc readiness 200", || async {
            (self.readiness().await == StatusCode::OK).then_some(())
        })
        .await;
    }

    pub async fn books(&self) -> Vec<serde_json::Value> {
        let response = self.get("/books?limit=1000").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Stops the server gracefully and waits for it to finish.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// The HTTP client of the tests: bounded, so a hang fails the test instead of stalling it.
pub fn test_http_client() -> reqwest::Client {
    shared::client::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Asserts a problem+json response with `status` and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> serde_json::Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].is_string(),
            "problem field `{field}` missing in {body}"
        );
    }
    body
}
