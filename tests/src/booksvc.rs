//! booksvc started in-process in front of a storagesvc and a Redis.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use shared::client::{AuthConfig, Secret, ServiceClientConfig};

use crate::metric_value;
use crate::server::RunningServer;
use crate::storagesvc::{TOKEN, test_http_client};

/// The credential the test instances accept on writes: a secret of booksvc's callers, not
/// the one booksvc presents to storagesvc ([`TOKEN`]).
pub const WRITER_TOKEN: &str = "test-writer-token";

/// The `STALE_AFTER` of the test instances unless a test sets its own. The default
/// (`auto`, 40-80 ms) would turn a fresh answer that is merely slow on a busy test machine
/// into a stale one; tests of that bound pass `--stale-after` themselves.
pub const TEST_STALE_AFTER: &str = "1s";

/// A running booksvc. Dropping it stops the server.
pub struct TestBooksvc {
    pub address: SocketAddr,
    /// The admin listener: `/metrics` and detailed health.
    pub admin_address: SocketAddr,
    pub http: reqwest::Client,
    server: RunningServer,
}

impl TestBooksvc {
    /// Starts booksvc against storagesvc at `storagesvc` and Redis at `redis_url`, with the
    /// default settings plus `extra` flags, accepting [`WRITER_TOKEN`] on writes.
    pub async fn spawn(storagesvc: SocketAddr, redis_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--auth-tokens", WRITER_TOKEN];
        args.extend_from_slice(extra);
        Self::spawn_with_credentials(storagesvc, redis_url, &args).await
    }

    /// Starts booksvc with only the writer credential flags given in `extra` (none: it
    /// accepts no write, as a deployment that forgot `AUTH_TOKENS`).
    pub async fn spawn_with_credentials(
        storagesvc: SocketAddr,
        redis_url: &str,
        extra: &[&str],
    ) -> Self {
        let base_url = Url::parse(&format!("http://{storagesvc}")).unwrap();
        let client = ServiceClientConfig::new("storagesvc", base_url)
            .with_auth(AuthConfig::Bearer(Secret::new(TOKEN)));
        Self::spawn_with_client(client, redis_url, extra).await
    }

    /// Like [`TestBooksvc::spawn_with_credentials`], with the storagesvc client (address
    /// and credentials) given whole: to run booksvc with each kind of outbound credential.
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
            "--admin-bind-addr",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
        ];
        if !extra.contains(&"--stale-after") {
            args.extend(["--stale-after", TEST_STALE_AFTER]);
        }
        args.extend_from_slice(extra);
        let config = booksvc::Config::try_parse_from(args).expect("valid test configuration");
        let app = booksvc::Application::build(config, client)
            .await
            .expect("build booksvc");
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

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// A request carrying the writer credential.
    pub fn write(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(WRITER_TOKEN)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_address)
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

    /// Detailed readiness, from the admin listener: its status and its body (the state of
    /// each dependency).
    pub async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .get(self.admin_url("/.well-known/health"))
            .send()
            .await
            .expect("admin health answers");
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// booksvc's `/metrics` page, from the admin listener.
    pub async fn metrics(&self) -> String {
        crate::scrape_metrics(&self.http, self.admin_address).await
    }

    /// The value of one series in booksvc's `/metrics`, e.g.
    /// `breaker_transitions_total{from="closed",to="open"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }

    /// Reads answered from the store (all reasons) with `source` `memory`, `redis` or
    /// `none` (nothing stored: 503).
    pub async fn fallbacks_from(&self, source: &str) -> f64 {
        let label = format!(r#"source="{source}""#);
        crate::metric_sum(&self.metrics().await, "fallback_answers_total", &label)
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// How long a request may take at most: the request deadline.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(1500);
