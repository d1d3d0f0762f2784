//! storagesvc as booksvc sees it: the service client under the resilience policies, one
//! `Resilience::call` per request, each attempt classified by DESIGN table 4.2.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shared::client::{ClientError, ServiceClient, TokenError};
use shared::metrics::latency_histogram;
use shared::resilience::{
    AttemptObserver, AttemptOutcome, Attempted, CallError, Resilience, parse_retry_after,
};

/// Tells storagesvc how long this attempt may take, so it can give up on work nobody waits for.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// A complete upstream answer (the body is read inside the attempt, so the attempt
/// timeout covers it too).
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// What an attempt hands back: an answer, or why there is none.
pub type AttemptValue = Result<UpstreamResponse, String>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// storagesvc behind the policies; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    client: ServiceClient,
    resilience: Resilience,
}

impl Upstream {
    /// Wraps `client` in `resilience`, counting every attempt (timed-out ones included,
    /// which only the resilience layer sees) by outcome, with its duration.
    pub fn new(client: ServiceClient, mut resilience: Resilience, registry: &mut Registry) -> Self {
        let attempts = Family::<OutcomeLabels, Counter>::default();
        let latency = latency_histogram();
        registry.register(
            "upstream_attempts",
            "HTTP attempts to storagesvc, by outcome class (table 4.2)",
            attempts.clone(),
        );
        registry.register(
            "upstream_attempt_duration_seconds",
            "Duration of each attempt to storagesvc",
            latency.clone(),
        );
        resilience.observer = AttemptObserver::new(move |outcome, took| {
            attempts
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.class(),
                })
                .inc();
            latency.observe(took.as_secs_f64());
        });
        Self { client, resilience }
    }

    pub fn client(&self) -> &ServiceClient {
        &self.client
    }

    pub fn resilience(&self) -> &Resilience {
        &self.resilience
    }

    /// `GET path_and_query` under deadline, retries, breaker and attempt timeout.
    pub async fn get(&self, path_and_query: &str) -> Result<AttemptValue, CallError<AttemptValue>> {
        self.resilience
            .call(|budget| self.attempt(path_and_query, budget))
            .await
    }

    async fn attempt(&self, path_and_query: &str, budget: Duration) -> Attempted<AttemptValue> {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_TIMEOUT_HEADER,
            HeaderValue::from(budget.as_millis() as u64),
        );
        match self
            .client
            .execute(Method::GET, path_and_query, headers, None)
            .await
        {
            Ok(response) => {
                let status = response.status();
                let retry_after = parse_retry_after(response.headers(), SystemTime::now());
                let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
                match response.bytes().await {
                    Ok(body) => Attempted {
                        outcome: AttemptOutcome::from_status(status, retry_after),
                        retry_after,
                        value: Ok(UpstreamResponse {
                            status,
                            content_type,
                            body,
                        }),
                    },
                    Err(err) => Attempted {
                        outcome: AttemptOutcome::Unreachable,
                        retry_after: None,
                        value: Err(format!("reading the body failed: {err}")),
                    },
                }
            }
            Err(err) => Attempted {
                outcome: classify_error(&err),
                retry_after: None,
                value: Err(err.to_string()),
            },
        }
    }
}

/// Transport failures are the service's (retryable); a bad path or refused credentials are
/// ours, and retrying would not help.
fn classify_error(err: &ClientError) -> AttemptOutcome {
    match err {
        ClientError::Transport { error, .. } if error.is_timeout() => AttemptOutcome::TimedOut,
        ClientError::Transport { .. } => AttemptOutcome::Unreachable,
        ClientError::Token {
            error: TokenError::Unreachable { .. },
            ..
        } => AttemptOutcome::Unreachable,
        _ => AttemptOutcome::Rejected,
    }
}
