//! storagesvc as booksvc sees it: the service client under the resilience policies, one
//! `Resilience::call` per request, each attempt classified by the outcome table
//! (`docs/architecture.md`).
//!
//! Reads and writes share the breaker, the retry budget and the concurrency limit, but not
//! the attempt timeout: a read's adapts to recent latency (a hang is seen after a few
//! times the usual latency), a write's stays fixed, since giving up on a write early
//! leaves its outcome unknown.
//!
//! A 2xx is a success only if its body is usable: at most `max_body_bytes` (read no
//! further than that) and valid JSON (a `204` may be empty). Anything else is an
//! `InvalidResponse`, a failure the breaker hears of and a retry may mend, so a broken
//! answer is never passed on or stored. A 401 or 403 means booksvc's own credentials for
//! storagesvc are wrong: logged as an error on every attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::header::HeaderName;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use resilience::{
    AttemptObserver, AttemptOutcome, Attempted, BreakerVerdict, CallError, ConcurrencyLimiter,
    LatencyTracker, Resilience, RetryDecision, parse_retry_after,
};
use shared::client::{ClientError, ServiceClient, TokenError, Trail};
use shared::deadline::REQUEST_TIMEOUT_HEADER;
use shared::metrics::latency_histogram;
use shared::telemetry::traces;
use std::sync::Arc;
use tracing::Span;
use tracing::field::Empty;

/// storagesvc's answer to a write that repeats an `Idempotency-Key`: the response is the
/// one stored for the first request, not a second write.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers of storagesvc that booksvc passes on to its caller.
const PASSED_ON: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    IDEMPOTENT_REPLAYED,
];

/// `Retry-After` of a `503` for a call the concurrency limit refused: the limit frees up
/// as calls in flight end, within one attempt timeout.
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A complete upstream answer (the body is read inside the attempt, so the attempt
/// timeout covers it too).
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    /// Only the headers booksvc passes on: content type, `Location`, `Retry-After`,
    /// `Idempotent-Replayed`.
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamResponse {
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.headers.get(header::CONTENT_TYPE)
    }
}

/// One request to storagesvc, sent as often as the policies allow.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: String,
    /// Sent on every attempt (content type, `Idempotency-Key`).
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// Whether a request may be sent again after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// Reads, and writes carrying an `Idempotency-Key`: sending twice changes nothing.
    Allowed,
    /// Writes without a key: a retry after a timeout could apply the write twice.
    Never,
}

/// What an attempt hands back: an answer, or why there is none.
pub type AttemptValue = Result<UpstreamResponse, String>;

/// Whether a request may have reached storagesvc: what a failed write can promise its
/// caller (docs/architecture.md, "Writes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No attempt left booksvc: the breaker refused, or connecting failed (refused, DNS),
    /// or the request could not even be built. The write was not applied.
    NotSent,
    /// At least one attempt may have been received: a connection broke after sending, an
    /// attempt timed out, or storagesvc answered. The write may have been applied.
    MaybeSent,
}

/// Counts a call's attempts, and those that surely never left booksvc. An attempt cut
/// off by its timeout is dropped before it can report, so it counts as started and not
/// as unsent: "maybe sent", which is the truth.
#[derive(Default)]
struct DeliveryTally {
    started: AtomicUsize,
    unsent: AtomicUsize,
    /// Where the last attempt went: the next goes elsewhere, where it can.
    trail: Trail,
}

impl DeliveryTally {
    fn delivery(&self) -> Delivery {
        if self.started.load(Ordering::Relaxed) == self.unsent.load(Ordering::Relaxed) {
            Delivery::NotSent
        } else {
            Delivery::MaybeSent
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    /// The outcome class of the failed attempt.
    after: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The limit and the calls in flight, read at each scrape.
#[derive(Debug)]
struct LimiterGauges(ConcurrencyLimiter);

impl Collector for LimiterGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "upstream_concurrency_limit",
                "The adaptive limit on calls in flight to storagesvc",
                self.0.limit(),
            ),
            (
                "upstream_in_flight",
                "Calls to storagesvc in flight (each holds one slot of the limit)",
                self.0.in_flight(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HedgeLabels {
    /// `sent`, `won` or `refused`.
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    /// `in_rotation`, `ejected` or `probing`.
    state: &'static str,
}

/// storagesvc's addresses by state, ejections and probes, read from the client's balancer
/// at each scrape.
struct EndpointGauges(ServiceClient);

impl Collector for EndpointGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(counts) = self.0.balancer_counts() else {
            return Ok(());
        };
        let gauge = |value: usize| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let mut family = encoder.encode_descriptor(
            "upstream_endpoints",
            "storagesvc's addresses, by state: in rotation, ejected after failing attempts, or waiting for a health probe",
            None,
            gauge(0).metric_type(),
        )?;
        for (state, value) in [
            ("in_rotation", counts.in_rotation),
            ("ejected", counts.ejected),
            ("probing", counts.probing),
        ] {
            gauge(value).encode(family.encode_family(&EndpointLabels { state })?)?;
        }
        for (name, help, value) in [
            (
                "upstream_endpoint_ejections",
                "Times an address of storagesvc was taken out of rotation (failing attempts in a row, or a failed probe)",
                counts.ejections_total,
            ),
            (
                "upstream_endpoint_probes",
                "Health probes sent to ejected addresses of storagesvc",
                counts.probes_total,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for EndpointGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointGauges")
    }
}

/// storagesvc behind the policies; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    client: ServiceClient,
    /// The policies of reads.
    resilience: Resilience,
    /// The policies of writes: the same breaker, budget and limit, a fixed attempt timeout.
    writes: Resilience,
    /// Calls refused by the concurrency limit.
    shed: Counter,
    /// Largest body accepted from storagesvc (`CACHE_MAX_BODY_BYTES`).
    max_body_bytes: usize,
}

impl Upstream {
    /// Wraps `client` in `resilience`, counting every attempt (timed-out ones included,
    /// which only the resilience layer sees) by outcome, with its duration, and every retry
    /// made or refused.
    pub fn new(
        client: ServiceClient,
        mut resilience: Resilience,
        max_body_bytes: usize,
        registry: &mut Registry,
    ) -> Self {
        let attempts = Family::<OutcomeLabels, Counter>::default();
        let latency = latency_histogram();
        let retries = Family::<RetryLabels, Counter>::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let hedges = Family::<HedgeLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "HTTP attempts to storagesvc, by outcome class (see the outcome table)",
            attempts.clone(),
        );
        registry.register(
            "upstream_attempt_duration_seconds",
            "Duration of each attempt to storagesvc",
            latency.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries to storagesvc, by the outcome of the attempt that failed",
            retries.clone(),
        );
        registry.register(
            "upstream_retries_refused",
            "Failed retryable attempts not retried, by reason (exhausted, breaker_open, deadline, budget)",
            refused.clone(),
        );
        registry.register(
            "upstream_hedges",
            "Slow read attempts given a twin to another address of storagesvc: sent, won (the twin answered first) or refused (retry budget spent, breaker)",
            hedges.clone(),
        );
        resilience.observer = AttemptObserver::new(move |outcome, took| {
            attempts
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.class(),
                })
                .inc();
            latency.observe(took.as_secs_f64());
            record_outcome(outcome);
        })
        .with_spans(attempt_span)
        .with_hedges(move |event| {
            hedges
                .get_or_create(&HedgeLabels {
                    event: event.as_str(),
                })
                .inc();
        })
        .with_retries(move |after, decision| match decision {
            RetryDecision::Retry { .. } => {
                retries
                    .get_or_create(&RetryLabels {
                        after: after.class(),
                    })
                    .inc();
            }
            RetryDecision::Refused(reason) => {
                refused
                    .get_or_create(&RefusalLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
        });
        let shed = Counter::default();
        registry.register(
            "upstream_shed",
            "Calls to storagesvc refused by the concurrency limit (answered from the store or 503)",
            shed.clone(),
        );
        if let Some(limiter) = &resilience.limiter {
            registry.register_collector(Box::new(LimiterGauges(limiter.clone())));
        }
        registry.register_collector(Box::new(EndpointGauges(client.clone())));
        let writes = Resilience {
            adaptive_timeout: None,
            // A write is never sent twice at once, idempotency key or not.
            hedge: None,
            latency: Arc::new(LatencyTracker::new()),
            ..resilience.clone()
        };
        Self {
            client,
            resilience,
            writes,
            shed,
            max_body_bytes,
        }
    }

    pub fn client(&self) -> &ServiceClient {
        &self.client
    }

    pub fn resilience(&self) -> &Resilience {
        &self.resilience
    }

    /// `GET path_and_query` under the read policies (limit, deadline, retries, breaker,
    /// adaptive attempt timeout); `on_failed_attempt` hears of each failed attempt at once.
    pub async fn get_watched(
        &self,
        path_and_query: &str,
        on_failed_attempt: impl FnMut(AttemptOutcome),
    ) -> Result<AttemptValue, CallError<AttemptValue>> {
        let request = UpstreamRequest {
            method: Method::GET,
            path_and_query: path_and_query.to_owned(),
            headers: HeaderMap::new(),
            body: None,
        };
        let tally = DeliveryTally::default();
        let attempt = |budget| self.attempt(&request, budget, &tally);
        let result = self
            .resilience
            .call_watched(attempt, on_failed_attempt)
            .await;
        self.count_shed(&result);
        result
    }

    /// A write under the write policies, retried only when `retries` allows it, also
    /// saying whether storagesvc may have received it: the write path answers `503`
    /// ("not applied") only when nothing was sent.
    pub async fn send_tracked(
        &self,
        request: &UpstreamRequest,
        retries: Retries,
    ) -> (Result<AttemptValue, CallError<AttemptValue>>, Delivery) {
        let tally = DeliveryTally::default();
        let attempt = |budget| self.attempt(request, budget, &tally);
        let result = match retries {
            Retries::Allowed => self.writes.call(attempt).await,
            Retries::Never => self.writes.call_once(attempt).await,
        };
        self.count_shed(&result);
        (result, tally.delivery())
    }

    fn count_shed<T>(&self, result: &Result<T, CallError<T>>) {
        if matches!(result, Err(CallError::Shed)) {
            self.shed.inc();
        }
    }

    async fn attempt(
        &self,
        request: &UpstreamRequest,
        budget: Duration,
        tally: &DeliveryTally,
    ) -> Attempted<AttemptValue> {
        tally.started.fetch_add(1, Ordering::Relaxed);
        self.record_request(request);
        let mut headers = request.headers.clone();
        headers.insert(
            REQUEST_TIMEOUT_HEADER,
            HeaderValue::from(budget.as_millis() as u64),
        );
        let sent = self
            .client
            .execute_on(
                &tally.trail,
                request.method.clone(),
                &request.path_and_query,
                headers,
                request.body.clone(),
            )
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                if traces::exporting() {
                    Span::current().record("http.response.status_code", status.as_u16());
                }
                let retry_after = parse_retry_after(response.headers(), SystemTime::now());
                let mut headers = HeaderMap::new();
                for name in PASSED_ON {
                    if let Some(value) = response.headers().get(&name) {
                        headers.insert(name, value.clone());
                    }
                }
                let body = match read_body(response.into_body(), self.max_body_bytes).await {
                    Ok(body) => body,
                    Err(BodyError::TooLarge) => {
                        return Attempted {
                            outcome: AttemptOutcome::InvalidResponse,
                            retry_after: None,
                            value: Err(format!(
                                "the response body is over {} bytes",
                                self.max_body_bytes
                            )),
                        };
                    }
                    Err(BodyError::Unreadable(err)) => {
                        return Attempted {
                            outcome: AttemptOutcome::Unreachable,
                            retry_after: None,
                            value: Err(format!("reading the body failed: {err}")),
                        };
                    }
                };
                let outcome = match AttemptOutcome::from_status(status, retry_after) {
                    AttemptOutcome::Success if !is_usable_body(status, &body) => {
                        return Attempted {
                            outcome: AttemptOutcome::InvalidResponse,
                            retry_after: None,
                            value: Err(format!("a {status} whose body is not valid JSON")),
                        };
                    }
                    AttemptOutcome::CredentialsRefused => {
                        tracing::error!(
                            %status,
                            "storagesvc refuses booksvc's credentials: check STORAGESVC_* and storagesvc's AUTH_TOKENS"
                        );
                        AttemptOutcome::CredentialsRefused
                    }
                    outcome => outcome,
                };
                Attempted {
                    outcome,
                    retry_after,
                    value: Ok(UpstreamResponse {
                        status,
                        headers,
                        body,
                    }),
                }
            }
            Err(err) => {
                if never_sent(&err) {
                    tally.unsent.fetch_add(1, Ordering::Relaxed);
                }
                Attempted {
                    outcome: classify_error(&err),
                    retry_after: None,
                    value: Err(err.to_string()),
                }
            }
        }
    }
}

impl Upstream {
    /// Names the attempt's span after the request and records where it goes (the
    /// OpenTelemetry HTTP client attributes), while traces are exported.
    fn record_request(&self, request: &UpstreamRequest) {
        if !traces::exporting() {
            return;
        }
        let span = Span::current();
        let method = request.method.as_str();
        span.record("otel.name", method);
        span.record("http.request.method", method);
        if let Ok(url) = self.client.url(&request.path_and_query) {
            span.record("url.full", url.as_str());
            span.record("server.address", url.host_str());
            span.record("server.port", url.port_or_known_default());
        }
    }
}

/// The span of one attempt to storagesvc (an HTTP client span; made for traces only), number
/// `retry` of its call. [`Upstream::attempt`] records the request, [`record_outcome`] how it
/// ended.
fn attempt_span(retry: usize) -> Span {
    shared::trace_only_span!(
        "attempt",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = Empty,
        url.full = Empty,
        server.address = Empty,
        server.port = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        booksvc.attempt.retry = retry,
        booksvc.attempt.outcome = Empty,
    )
}

/// Records an attempt's outcome class on its span (the observer runs inside it): a failure
/// for the breaker is an error, named by its class.
fn record_outcome(outcome: AttemptOutcome) {
    if !traces::exporting() {
        return;
    }
    let span = Span::current();
    span.record("booksvc.attempt.outcome", outcome.class());
    if outcome.breaker_verdict() == BreakerVerdict::Failure {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", outcome.class());
    }
}

/// Whether a failed attempt surely sent nothing to storagesvc: the request could not be
/// built or authorised, or no connection was made (refused, DNS failure, connect
/// timeout). Any other transport error happened on an open
/// connection, after the request may have been written: a reset, an EOF before the
/// response.
fn never_sent(err: &ClientError) -> bool {
    match err {
        ClientError::InvalidPath { .. } | ClientError::Token { .. } => true,
        ClientError::Transport { .. } => err.is_connect(),
    }
}

enum BodyError {
    TooLarge,
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
}

/// The whole body, or `TooLarge` as soon as it is known to exceed `max_bytes` (from its
/// `Content-Length`, or while reading): a huge answer is never held in memory.
///
/// The body is copied into a buffer of its own size. The piece hyper hands over shares the
/// connection's read buffer (8 KiB and more), and an answer kept in the last-good store
/// would keep that whole buffer alive: the store's memory bound counts bodies, not buffers.
async fn read_body<B>(body: B, max_bytes: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let announced = body.size_hint().lower();
    if usize::try_from(announced).map_or(true, |announced| announced > max_bytes) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(error) => Err(BodyError::Unreadable(error)),
    }
}

/// A success body booksvc can pass on and store: valid JSON, or nothing for a `204`.
fn is_usable_body(status: StatusCode, body: &[u8]) -> bool {
    (status == StatusCode::NO_CONTENT && body.is_empty())
        || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Transport failures are the service's (retryable); a bad path or refused credentials are
/// ours, and retrying would not help.
fn classify_error(err: &ClientError) -> AttemptOutcome {
    match err {
        ClientError::Transport { .. } if err.is_timeout() => AttemptOutcome::TimedOut,
        ClientError::Transport { .. } => AttemptOutcome::Unreachable,
        ClientError::Token {
            error: TokenError::Unreachable { .. },
            ..
        } => AttemptOutcome::Unreachable,
        _ => AttemptOutcome::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Which transport errors count as "never sent" is shown end to end in
    // tests/tests/booksvc_writes.rs (a refused port, a server that closes unanswered).
    #[test]
    fn a_call_is_unsent_only_while_every_attempt_was() {
        let tally = DeliveryTally::default();
        assert_eq!(
            tally.delivery(),
            Delivery::NotSent,
            "breaker refused: no attempt"
        );
        tally.started.fetch_add(1, Ordering::Relaxed);
        tally.unsent.fetch_add(1, Ordering::Relaxed);
        assert_eq!(tally.delivery(), Delivery::NotSent, "refused connection");
        // An attempt cut off by its timeout never reports back.
        tally.started.fetch_add(1, Ordering::Relaxed);
        assert_eq!(tally.delivery(), Delivery::MaybeSent);
        tally.started.fetch_add(1, Ordering::Relaxed);
        tally.unsent.fetch_add(1, Ordering::Relaxed);
        assert_eq!(tally.delivery(), Delivery::MaybeSent, "an earlier attempt");
    }

    /// A body in `chunks`, its length unknown beforehand (like a chunked answer).
    fn streamed(
        chunks: Vec<Bytes>,
    ) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok(hyper::body::Frame::data(chunk)));
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_read_is_a_copy_of_its_own_size_not_a_piece_of_the_read_buffer() {
        let read_buffer = Bytes::from([&br#"{"id":1}"#[..], &[b' '; 8192]].concat());
        let piece = read_buffer.slice(0..8);
        let Ok(body) = read_body(http_body_util::Full::new(piece), 64).await else {
            panic!("a body under the limit is read");
        };
        assert_eq!(&body[..], br#"{"id":1}"#);
        let buffer = read_buffer.as_ptr_range();
        assert!(
            !buffer.contains(&body.as_ptr()),
            "the body must not keep the 8 KiB buffer alive"
        );
        let Ok(body) = read_body(streamed(vec![Bytes::from("[1,"), Bytes::from("2]")]), 64).await
        else {
            panic!("a body in pieces is read");
        };
        assert_eq!(&body[..], b"[1,2]");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_announced_or_not() {
        let announced = http_body_util::Full::new(Bytes::from(vec![b'1'; 65]));
        assert!(matches!(
            read_body(announced, 64).await,
            Err(BodyError::TooLarge)
        ));
        let streamed = streamed(vec![
            Bytes::from(vec![b'1'; 40]),
            Bytes::from(vec![b'1'; 40]),
        ]);
        assert!(matches!(
            read_body(streamed, 64).await,
            Err(BodyError::TooLarge)
        ));
    }

    #[test]
    fn only_json_or_an_empty_204_is_a_usable_success_body() {
        let ok = StatusCode::OK;
        assert!(is_usable_body(ok, br#"[{"id":1}]"#));
        assert!(is_usable_body(ok, br#" {"id":1} "#));
        assert!(is_usable_body(StatusCode::CREATED, b"{}"));
        assert!(is_usable_body(StatusCode::NO_CONTENT, b""));
        for body in [&b""[..], b"<html>", b"[{\"id\":1}", b"{} {}", b"\xff"] {
            assert!(!is_usable_body(ok, body), "{body:?}");
        }
    }
}
