//! booksvc started in-process in front of a storagesvc and a Redis.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reqwest::{Response, StatusCode, Url};
use shared::client::{AuthConfig, Secret, ServiceClientConfig};

use crate::metric_value;
use crate::server::RunningServer;
use crate::storagesvc::{TOKEN, test_http_client};

/// A running booksvc. Dropping it stops the server.
pub struct TestBooksvc {
    pub address: SocketAddr,
    pub http: reqwest::Client,
    server: RunningServer,
}

impl TestBooksvc {
    /// Starts booksvc against storagesvc at `storagesvc` and Redis at `redis_url`, with the
    /// default settings plus `extra` flags.
    pub async fn spawn(storagesvc: SocketAddr, redis_url: &str, extra: &[&str]) -> Self {
        let base_url = Url::parse(&format!("http://{storagesvc}")).unwrap();
        let client = ServiceClientConfig::new("storagesvc", base_url)
            .with_auth(AuthConfig::Bearer(Secret::new(TOKEN)));
        Self::spawn_with_client(client, redis_url, extra).await
    }

    /// Like [`TestBooksvc::spawn`], with the storagesvc client (address and credentials)
    /// given whole: to run booksvc with each kind of outbound credential.
    pub async fn spawn_with_client(
        client: ServiceClientConfig,
        redis_url: &str,
        extra: &[&str],
    ) -> Self {
        crate::init_test_logging();
        let mut args = vec![
            "booksvc",
            "--bind-addr",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
        ];
        args.extend_from_slice(extra);
        let config = booksvc::Config::try_parse_from(args).expect("valid test configuration");
        let app = booksvc::Application::build(config, client)
            .await
            .expect("build booksvc");
        let address = app.address();
        let server = RunningServer::spawn(address, |shutdown| app.run_until(shutdown));
        Self {
            address,
            http: test_http_client(),
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET reaches booksvc")
    }

    /// The breaker state booksvc reports in its readiness body.
    pub async fn breaker_state(&self) -> String {
        let (_, health) = self.readiness().await;
        health["checks"]["storagesvc"]["breaker"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Readiness: its status and its body (the state of each dependency).
    pub async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let response = self.get("/.well-known/health").await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// The value of one series in booksvc's `/metrics`, e.g.
    /// `breaker_transitions_total{from="closed",to="open"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let metrics = self.get("/metrics").await.text().await.unwrap();
        metric_value(&metrics, series)
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// How long a request may take at most, by DESIGN: the request deadline.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(1500);
