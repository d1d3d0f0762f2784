//! Helpers for the system tests: real containers, the real services started in-process,
//! and polling with deadlines. Each test file under `tests/tests/` reads as the promises it
//! checks; the mechanics live here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod booksvc;
pub mod containers;
pub mod counting_proxy;
pub mod logs;
pub mod otlp;
pub mod partition;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod readme;
pub mod server;
pub mod storagesvc;
pub mod tls;
pub mod token_server;

/// Logs of the services under test go to the test output when `TEST_LOG` is set.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // Another subscriber may already be installed; then that one is used.
            let _ = shared::telemetry::init(
                shared::config::LogFormat::Pretty,
                &shared::telemetry::TracesArgs::default(),
                "system-tests",
            );
        }
    });
}

/// A response header as text, if present.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

/// A service's `/metrics` page, read from its admin listener at `admin`. A request that
/// fails before any answer is sent again (for up to 2 s): a pooled keep-alive connection
/// may be closed by the server (its idle timeout) just as the client reuses it, which
/// resets that request and says nothing about the service.
pub async fn scrape_metrics(http: &reqwest::Client, admin: std::net::SocketAddr) -> String {
    let url = format!("http://{admin}/metrics");
    let response = poll::eventually(
        std::time::Duration::from_secs(2),
        "admin /metrics answers",
        || async { http.get(&url).send().await.ok() },
    )
    .await;
    response.text().await.unwrap()
}

/// Whether a `Cache-Status` marks an answer served from booksvc's store, for any reason
/// (`upstream-unavailable`, `upstream-late`, `breaker-open`, `shed`).
pub fn is_stale(cache_status: Option<&str>) -> bool {
    cache_status.is_some_and(|status| status.starts_with("booksvc; hit; detail="))
}

/// The `Cache-Status` of an answer served from booksvc's store for reason `why`.
pub fn stale_because(why: &str) -> String {
    format!("booksvc; hit; detail={why}")
}

/// The sum of every series of metric `name` whose labels include `label` (as rendered,
/// e.g. `source="memory"`), 0 if there is none.
pub fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let labels_and_value = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels_and_value.split_once("} ")?;
            labels
                .contains(label)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The value of `series` (name and labels exactly as rendered) in a Prometheus text page.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
