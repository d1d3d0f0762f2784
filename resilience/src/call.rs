//! One upstream call under every policy, in the order the read path applies them:
//! concurrency limit → deadline → retry (with budget) → circuit breaker → attempt timeout,
//! and, for a slow attempt where another address could answer, a hedge.
//!
//! The attempt itself (an HTTP request, usually) is a closure, so this file holds only the
//! policy and can be tested with a scripted upstream and paused time. The retry step is a
//! plain loop: every decision (ask the breaker, time the attempt, retry or not, how long to
//! wait) is written where it is taken.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::breaker::{BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker};
use crate::budget::RetryBudget;
use crate::latency::{DerivedBound, LatencyTracker};
use crate::limiter::ConcurrencyLimiter;
use crate::outcome::{AttemptOutcome, BreakerVerdict};

/// Exponential backoff with jitter for retries of transient failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry; each further one multiplies it by `factor`.
    pub base: Duration,
    pub factor: f32,
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            factor: 2.0,
            max_retries: 2,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first), `None` once the retries are
    /// used up: `base × factor^retry`, plus a random jitter of up to the same again, so
    /// clients that failed together do not retry together.
    pub fn backoff(&self, retry: usize) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let delay = crate::scaled(self.base, f64::from(self.factor).powi(exponent));
        Some(delay.saturating_add(crate::scaled(delay, fastrand::f64())))
    }
}

/// Time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    /// Everything, retries and waits included, ends within this.
    pub deadline: Duration,
    /// One attempt ends within this (or within what is left of the deadline, if less). With
    /// an adaptive timeout, this is its ceiling and the half-open probe's timeout.
    pub attempt_timeout: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(1500),
            attempt_timeout: Duration::from_millis(500),
        }
    }
}

/// `auto` for [`Resilience::hedge`]: the recent p99, so that about one attempt in a hundred
/// gets a twin; no sooner than 10 ms (a twin is no answer to the scheduler's jitter) and no
/// later than 40 ms (the twin's answer still comes before the stale-after bound's earliest,
/// 40 ms).
pub const AUTO_HEDGE_DELAY: DerivedBound = DerivedBound {
    factor: 1.0,
    floor: Duration::from_millis(10),
    cap: Duration::from_millis(40),
};

/// Whether the next attempt of a call can go to another address than the one before (for
/// a balanced client: whether more than one address is in rotation).
#[derive(Clone)]
pub struct Elsewhere(Arc<dyn Fn() -> bool + Send + Sync>);

impl Elsewhere {
    pub fn new(possible: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(possible))
    }

    pub fn possible(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Elsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Elsewhere").finish_non_exhaustive()
    }
}

/// What became of a slow attempt's hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeEvent {
    /// The twin was sent.
    Sent,
    /// The twin answered first, with a success; the slow attempt was dropped.
    Won,
    /// Not sent: the retry budget is spent, or the breaker refused it.
    Refused,
}

impl HedgeEvent {
    /// A short, stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Won => "won",
            Self::Refused => "refused",
        }
    }
}

/// What one attempt produced: its class, the upstream's `Retry-After` if any, and the
/// value to hand back (a response, an error) if this turns out to be the last attempt.
#[derive(Debug)]
pub struct Attempted<T> {
    pub outcome: AttemptOutcome,
    pub retry_after: Option<Duration>,
    pub value: T,
}

/// How a call failed.
#[derive(Debug, Clone)]
pub enum CallError<T> {
    /// Refused by the open breaker; nothing was sent.
    BreakerOpen(BreakerOpen),
    /// Refused by the concurrency limit; nothing was sent.
    Shed,
    /// The last attempt failed and no retry was allowed (retries used up, budget spent,
    /// deadline too close, breaker opened). `last` is that attempt's value, or `None` when
    /// it timed out.
    Failed {
        outcome: AttemptOutcome,
        last: Option<T>,
        attempts: usize,
    },
}

impl<T> CallError<T> {
    /// Refused before anything was sent: the breaker or the limit said no.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CallError::BreakerOpen(_) | CallError::Shed)
    }
}

/// Why no retry followed a failed, retryable attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefusal {
    /// The retry policy's maximum number of retries was reached.
    Exhausted,
    /// The breaker is open: the fallback answers instead.
    BreakerOpen,
    /// The wait plus another attempt would not end before the deadline.
    Deadline,
    /// The retry budget is spent: the upstream is not sent more than its share of retries.
    Budget,
}

impl RetryRefusal {
    /// A short, stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::BreakerOpen => "breaker_open",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
        }
    }
}

/// What the retry step decided after a failed, retryable attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Another attempt starts after `delay`.
    Retry { delay: Duration },
    /// No retry; the call fails with this attempt's outcome.
    Refused(RetryRefusal),
}

type OnAttempt = dyn Fn(AttemptOutcome, Duration) + Send + Sync;
type OnRetry = dyn Fn(AttemptOutcome, RetryDecision) + Send + Sync;
type MakeSpan = dyn Fn(usize) -> Span + Send + Sync;
type OnHedge = dyn Fn(HedgeEvent) + Send + Sync;

/// Told of every attempt's outcome and duration, timed-out ones included, of every retry
/// decision and of every hedge (for metrics and logs); and, for traces, what span each
/// attempt runs in.
#[derive(Clone, Default)]
pub struct AttemptObserver {
    on_attempt: Option<Arc<OnAttempt>>,
    on_retry: Option<Arc<OnRetry>>,
    on_hedge: Option<Arc<OnHedge>>,
    span: Option<Arc<MakeSpan>>,
}

impl AttemptObserver {
    pub fn new(on_attempt: impl Fn(AttemptOutcome, Duration) + Send + Sync + 'static) -> Self {
        Self {
            on_attempt: Some(Arc::new(on_attempt)),
            on_retry: None,
            on_hedge: None,
            span: None,
        }
    }

    /// Runs each attempt in the span `make_span(retry)` returns (`retry`: 0 for the first
    /// attempt, 1 for the first retry, ...). The attempt's outcome is only known here, once
    /// it ended or its timeout cut it off, so `on_attempt` is called inside that span: it
    /// can record the outcome on `Span::current()`.
    pub fn with_spans(mut self, make_span: impl Fn(usize) -> Span + Send + Sync + 'static) -> Self {
        self.span = Some(Arc::new(make_span));
        self
    }

    fn span(&self, retry: usize) -> Span {
        self.span
            .as_ref()
            .map_or_else(Span::none, |make_span| make_span(retry))
    }

    /// Also tells `on_retry` what followed each failed, retryable attempt.
    pub fn with_retries(
        mut self,
        on_retry: impl Fn(AttemptOutcome, RetryDecision) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(Arc::new(on_retry));
        self
    }

    /// Also tells `on_hedge` of each hedge sent, refused, or that won.
    pub fn with_hedges(mut self, on_hedge: impl Fn(HedgeEvent) + Send + Sync + 'static) -> Self {
        self.on_hedge = Some(Arc::new(on_hedge));
        self
    }

    fn hedge(&self, event: HedgeEvent) {
        if let Some(observe) = &self.on_hedge {
            observe(event);
        }
    }

    fn attempt(&self, outcome: AttemptOutcome, took: Duration) {
        if let Some(observe) = &self.on_attempt {
            observe(outcome, took);
        }
    }

    fn retry(&self, after: AttemptOutcome, decision: RetryDecision) {
        if let Some(observe) = &self.on_retry {
            observe(after, decision);
        }
    }
}

impl std::fmt::Debug for AttemptObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptObserver")
            .field("on_attempt", &self.on_attempt.is_some())
            .field("on_retry", &self.on_retry.is_some())
            .field("on_hedge", &self.on_hedge.is_some())
            .field("span", &self.span.is_some())
            .finish()
    }
}

/// The policies of one upstream, shared by every call to it.
#[derive(Debug, Clone)]
pub struct Resilience {
    pub limits: CallLimits,
    pub retry: RetryPolicy,
    pub budget: Arc<RetryBudget>,
    pub breaker: CircuitBreaker,
    /// Recent healthy latency of this upstream: the adaptive attempt timeout's input, and
    /// the stale-after bound's.
    pub latency: Arc<LatencyTracker>,
    /// `Some`: each attempt's timeout is derived from `latency` (its cap is
    /// `limits.attempt_timeout`); `None`: every attempt gets `limits.attempt_timeout`.
    pub adaptive_timeout: Option<DerivedBound>,
    /// `None`: no limit on the calls in flight.
    pub limiter: Option<ConcurrencyLimiter>,
    /// Hedged attempts (Finagle's backup requests, gRPC's hedging): an attempt that has not
    /// answered within this delay (from recent healthy latency, clamped) gets a twin, sent
    /// while it is still in flight, and the first success of the two wins. No twin when the
    /// delay is not shorter than the attempt's timeout. `None`: no attempt is hedged; set it
    /// only for requests that are safe to send twice.
    pub hedge: Option<DerivedBound>,
    /// Whether an attempt can go to another address than the one before ([`Elsewhere`]);
    /// `None`: there is one address. With another address, a slow attempt's twin goes
    /// there, and so does the first retry of a failed attempt, at once: the failure may
    /// be that address's own, and the backoff is for a service that is failing as a whole
    /// (a second failure in a row says it may be, and the backoff applies). Without one,
    /// nothing is hedged: a twin to the only address would only double the work of a
    /// server that is already slow.
    pub elsewhere: Option<Elsewhere>,
    pub observer: AttemptObserver,
}

/// One failed attempt, as the retry loop sees it.
struct Failure<T> {
    outcome: AttemptOutcome,
    last: Option<T>,
}

impl Resilience {
    /// The policies with their defaults around `breaker`: fixed attempt timeout, no limit.
    pub fn new(
        limits: CallLimits,
        retry: RetryPolicy,
        budget: RetryBudget,
        breaker: CircuitBreaker,
    ) -> Self {
        Self {
            limits,
            retry,
            budget: Arc::new(budget),
            breaker,
            latency: Arc::new(LatencyTracker::new()),
            adaptive_timeout: None,
            limiter: None,
            hedge: None,
            elsewhere: None,
            observer: AttemptObserver::default(),
        }
    }

    /// Runs `attempt` under the limit, deadline, retries, breaker and attempt timeout. The
    /// closure receives the time this attempt may take, to pass upstream (so the callee can
    /// give up on work nobody will wait for).
    pub async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        self.run(self.retry, self.hedge.as_ref(), attempt, |_| {})
            .await
    }

    /// Like [`call`](Self::call), and tells `on_failed_attempt` of each failed attempt as
    /// soon as it fails, before any retry: a caller with another answer in hand need not
    /// wait for the retries.
    pub async fn call_watched<T, F, Fut>(
        &self,
        attempt: F,
        on_failed_attempt: impl FnMut(AttemptOutcome),
    ) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        self.run(self.retry, self.hedge.as_ref(), attempt, on_failed_attempt)
            .await
    }

    /// Like [`call`](Self::call), but never retries: for a request that is not safe to
    /// send twice (a write without an idempotency key).
    pub async fn call_once<T, F, Fut>(&self, attempt: F) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let no_retries = RetryPolicy {
            max_retries: 0,
            ..self.retry
        };
        // Not safe to send twice: no hedge either.
        self.run(no_retries, None, attempt, |_| {}).await
    }

    /// The concurrency limit around the retry loop: a refused call sends nothing.
    async fn run<T, F, Fut>(
        &self,
        retry: RetryPolicy,
        hedge: Option<&DerivedBound>,
        attempt: F,
        on_failed_attempt: impl FnMut(AttemptOutcome),
    ) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let Some(limiter) = &self.limiter else {
            return self
                .retry_loop(retry, hedge, attempt, on_failed_attempt)
                .await;
        };
        let Some(slot) = limiter.try_acquire() else {
            tracing::debug!("concurrency limit reached: call shed");
            return Err(CallError::Shed);
        };
        let result = self
            .retry_loop(retry, hedge, attempt, on_failed_attempt)
            .await;
        let overloaded = match &result {
            Err(CallError::Failed { outcome, .. }) => outcome.is_overload_signal(),
            _ => false,
        };
        slot.record(overloaded);
        result
    }

    async fn retry_loop<T, F, Fut>(
        &self,
        retry: RetryPolicy,
        hedge: Option<&DerivedBound>,
        attempt: F,
        mut on_failed_attempt: impl FnMut(AttemptOutcome),
    ) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let deadline = crate::instant_after(Instant::now(), self.limits.deadline);
        self.budget.record_request();
        let mut retries = 0;
        let mut previous: Option<Failure<T>> = None;
        loop {
            // The breaker is asked before every attempt. Refused on the first: the caller
            // falls back at once. Refused on a retry (another call is the half-open probe):
            // the call ends with the failure it had.
            let permit = match self.breaker.try_acquire() {
                Ok(permit) => permit,
                Err(open) => {
                    return Err(match previous {
                        None => CallError::BreakerOpen(open),
                        Some(failure) => CallError::Failed {
                            outcome: failure.outcome,
                            last: failure.last,
                            attempts: retries,
                        },
                    });
                }
            };
            let attempted = self.attempt_hedged(hedge, permit, deadline, retries, &attempt);
            let failure = match attempted.await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            on_failed_attempt(failure.outcome);
            let attempts = retries + 1;
            if !failure.outcome.is_retryable() {
                return Err(CallError::Failed {
                    outcome: failure.outcome,
                    last: failure.last,
                    attempts,
                });
            }
            let decision = self.retry_decision(retry, retries, failure.outcome, deadline);
            self.observer.retry(failure.outcome, decision);
            match decision {
                RetryDecision::Retry { delay } => {
                    tracing::debug!(?delay, outcome = failure.outcome.class(), "retrying");
                    tokio::time::sleep(delay).await;
                }
                RetryDecision::Refused(reason) => {
                    tracing::debug!(reason = reason.as_str(), "no retry");
                    return Err(CallError::Failed {
                        outcome: failure.outcome,
                        last: failure.last,
                        attempts,
                    });
                }
            }
            retries += 1;
            previous = Some(failure);
        }
    }

    /// Whether a failed, retryable attempt is followed by another, and after how long.
    /// `retries` is how many retries this call has made so far.
    fn retry_decision(
        &self,
        retry: RetryPolicy,
        retries: usize,
        outcome: AttemptOutcome,
        deadline: Instant,
    ) -> RetryDecision {
        let Some(backoff) = retry.backoff(retries) else {
            return RetryDecision::Refused(RetryRefusal::Exhausted);
        };
        // The first retry goes at once where it can go to another address. The upstream's
        // own delay (429 + Retry-After) replaces either.
        let backoff = if retries == 0 && self.can_go_elsewhere() {
            Duration::ZERO
        } else {
            backoff
        };
        let delay = outcome.requested_delay().unwrap_or(backoff);
        if self.breaker.state() == BreakerState::Open {
            return RetryDecision::Refused(RetryRefusal::BreakerOpen);
        }
        // Compared as durations, never summed onto the clock: `delay` is the upstream's.
        let time_left = deadline.saturating_duration_since(Instant::now());
        if delay.saturating_add(self.attempt_timeout(false)) > time_left {
            return RetryDecision::Refused(RetryRefusal::Deadline);
        }
        // Asked last: a refused retry for another reason does not spend the budget.
        if !self.budget.try_retry() {
            return RetryDecision::Refused(RetryRefusal::Budget);
        }
        RetryDecision::Retry { delay }
    }

    /// How long the next attempt may take. The half-open probe gets the full timeout: it
    /// decides whether the breaker closes, and a recovering upstream may be slow at first.
    fn attempt_timeout(&self, probe: bool) -> Duration {
        match self.adaptive_timeout {
            Some(bound) if !probe => bound
                .from_p99(self.latency.p99())
                .min(self.limits.attempt_timeout),
            _ => self.limits.attempt_timeout,
        }
    }

    /// One attempt, and its twin if it is slow ([`Resilience::hedge`]). Twins are extra
    /// load: each is paid from the retry budget (none when it is spent) and needs the
    /// breaker's permission like any attempt. Once both are in flight the first success
    /// wins and the other is dropped (for the breaker that is no outcome at all; a balanced
    /// client counts it against its address, which did not answer in time). A failure of
    /// one leaves the call to the other; when both fail, the later failure is the attempt's.
    async fn attempt_hedged<T, F, Fut>(
        &self,
        hedge: Option<&DerivedBound>,
        permit: BreakerPermit,
        deadline: Instant,
        retry: usize,
        attempt: &F,
    ) -> Result<T, Failure<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let delay = hedge.and_then(|hedge| self.hedge_delay(hedge, permit.is_probe(), deadline));
        let first = self.attempt_once(permit, deadline, retry, attempt);
        let Some(delay) = delay else {
            return first.await;
        };
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep(delay) => {}
        }
        // The attempt is slow. A twin, if the breaker and the budget allow (asked in that
        // order: a refusal by the breaker does not spend the budget).
        let Some(permit) = self
            .breaker
            .try_acquire()
            .ok()
            .filter(|_| self.budget.try_retry())
        else {
            self.observer.hedge(HedgeEvent::Refused);
            return first.await;
        };
        self.observer.hedge(HedgeEvent::Sent);
        tracing::debug!(?delay, "attempt slow: hedged");
        let second = self.attempt_once(permit, deadline, retry, attempt);
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => match result {
                Ok(value) => Ok(value),
                Err(_) => second.await,
            },
            result = &mut second => match result {
                Ok(value) => {
                    self.observer.hedge(HedgeEvent::Won);
                    Ok(value)
                }
                Err(_) => first.await,
            },
        }
    }

    /// How long an attempt runs alone before it is hedged; `None`: it is not. Never for the
    /// half-open probe (it must be alone), nor where there is nowhere else to send a twin,
    /// nor when the twin would come no sooner than the attempt's own timeout.
    fn hedge_delay(
        &self,
        hedge: &DerivedBound,
        probe: bool,
        deadline: Instant,
    ) -> Option<Duration> {
        if probe {
            return None;
        }
        let delay = hedge.from_p99(self.latency.p99());
        let timeout = self
            .attempt_timeout(false)
            .min(deadline.saturating_duration_since(Instant::now()));
        (delay < timeout && self.can_go_elsewhere()).then_some(delay)
    }

    fn can_go_elsewhere(&self) -> bool {
        self.elsewhere.as_ref().is_some_and(Elsewhere::possible)
    }

    /// One attempt, number `retry` of the call (0 for the first), in its own span.
    async fn attempt_once<T, F, Fut>(
        &self,
        permit: BreakerPermit,
        deadline: Instant,
        retry: usize,
        attempt: &F,
    ) -> Result<T, Failure<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let span = self.observer.span(retry);
        let started = Instant::now();
        let timeout = self
            .attempt_timeout(permit.is_probe())
            .min(deadline.saturating_duration_since(started));
        // Boxed: an attempt's future (an HTTP client's, say) is large, and wrapping it in the
        // timeout and the span would otherwise copy it whole at each step.
        let attempted =
            tokio::time::timeout(timeout, Box::pin(attempt(timeout))).instrument(span.clone());
        let (outcome, retry_after, value) = match attempted.await {
            Ok(attempted) => (
                attempted.outcome,
                attempted.retry_after,
                Some(attempted.value),
            ),
            Err(_) => (AttemptOutcome::TimedOut, None, None),
        };
        let took = started.elapsed();
        span.in_scope(|| self.observer.attempt(outcome, took));
        if matches!(
            outcome,
            AttemptOutcome::Success | AttemptOutcome::Rejected | AttemptOutcome::TimedOut
        ) {
            self.latency.record(took);
        }
        let verdict = outcome.breaker_verdict();
        permit.record(verdict, retry_after);
        match (verdict, value) {
            (BreakerVerdict::Failure, last) | (_, last @ None) => Err(Failure { outcome, last }),
            (_, Some(value)) => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::latency::DerivedBound;
    use crate::{BreakerConfig, RetryBudgetConfig};
    use AttemptOutcome::*;

    /// A scripted upstream: each attempt takes the next (latency, outcome) and records when
    /// it started.
    struct Upstream {
        script: Mutex<VecDeque<(Duration, AttemptOutcome)>>,
        started: Mutex<Vec<Duration>>,
        origin: Instant,
    }

    impl Upstream {
        fn new(script: &[(u64, AttemptOutcome)]) -> Arc<Self> {
            Arc::new(Self {
                script: Mutex::new(
                    script
                        .iter()
                        .map(|(ms, o)| (Duration::from_millis(*ms), *o))
                        .collect(),
                ),
                started: Mutex::new(Vec::new()),
                origin: Instant::now(),
            })
        }

        async fn attempt(self: Arc<Self>, _budget: Duration) -> Attempted<&'static str> {
            self.started.lock().unwrap().push(self.origin.elapsed());
            let (latency, outcome) = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((Duration::ZERO, Success));
            tokio::time::sleep(latency).await;
            Attempted {
                outcome,
                retry_after: outcome.requested_delay(),
                value: outcome.class(),
            }
        }

        fn starts(&self) -> Vec<Duration> {
            self.started.lock().unwrap().clone()
        }
    }

    fn resilience() -> Resilience {
        Resilience::new(
            CallLimits::default(),
            RetryPolicy::default(),
            RetryBudget::new(RetryBudgetConfig::default()),
            CircuitBreaker::new(BreakerConfig::default()),
        )
    }

    async fn run(
        resilience: &Resilience,
        upstream: &Arc<Upstream>,
    ) -> Result<&'static str, CallError<&'static str>> {
        resilience
            .call(|budget| Arc::clone(upstream).attempt(budget))
            .await
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_jittered_exponential_backoff() {
        let upstream = Upstream::new(&[(0, ServerError), (0, Unreachable), (0, Success)]);
        assert_eq!(run(&resilience(), &upstream).await.unwrap(), "success");
        let starts = upstream.starts();
        assert_eq!(starts.len(), 3);
        let first_wait = starts[1] - starts[0];
        let second_wait = starts[2] - starts[1];
        assert!(
            first_wait >= ms(50) && first_wait <= ms(100),
            "first retry after {first_wait:?}"
        );
        assert!(
            second_wait >= ms(100) && second_wait <= ms(200),
            "second retry after {second_wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_runs_in_a_span_made_with_its_retry_number_timed_out_ones_included() {
        let made = Arc::new(Mutex::new(Vec::new()));
        let mut resilience = resilience();
        let spans = Arc::clone(&made);
        let outcomes = Arc::clone(&made);
        resilience.observer = AttemptObserver::new(move |outcome, _| {
            outcomes
                .lock()
                .unwrap()
                .push(format!("ended {}", outcome.class()));
        })
        .with_spans(move |retry| {
            spans.lock().unwrap().push(format!("span {retry}"));
            Span::none()
        });
        let upstream = Upstream::new(&[(0, ServerError), (10_000, Success), (0, Success)]);
        assert_eq!(run(&resilience, &upstream).await.unwrap(), "success");
        assert_eq!(
            *made.lock().unwrap(),
            [
                "span 0",
                "ended server_error",
                "span 1",
                "ended timeout",
                "span 2",
                "ended success"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_two_retries() {
        let upstream = Upstream::new(&[(0, ServerError); 5]);
        match run(&resilience(), &upstream).await {
            Err(CallError::Failed {
                outcome: ServerError,
                last: Some("server_error"),
                attempts: 3,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(upstream.starts().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_returned_not_retried() {
        let upstream = Upstream::new(&[(0, Rejected)]);
        assert_eq!(run(&resilience(), &upstream).await.unwrap(), "client_error");
        assert_eq!(upstream.starts().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_time_out_and_no_retry_starts_that_cannot_finish_by_the_deadline() {
        // Each attempt hangs. 0 ms: first attempt, cut at 500 ms. Retry after 50-100 ms,
        // cut 500 ms later (~1.1 s). A second retry would end after 1.5 s: not started.
        let upstream = Upstream::new(&[(10_000, Success); 3]);
        let started = Instant::now();
        match run(&resilience(), &upstream).await {
            Err(CallError::Failed {
                outcome: TimedOut,
                last: None,
                attempts: 2,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() <= ms(1500),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(upstream.starts().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_retry_waits_for_retry_after_when_it_fits() {
        let upstream = Upstream::new(&[
            (
                0,
                Throttled {
                    retry_after: Some(ms(700)),
                },
            ),
            (0, Success),
        ]);
        assert_eq!(run(&resilience(), &upstream).await.unwrap(), "success");
        assert_eq!(upstream.starts()[1] - upstream.starts()[0], ms(700));
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_retry_is_skipped_when_retry_after_exceeds_the_deadline() {
        let upstream = Upstream::new(&[(
            0,
            Throttled {
                retry_after: Some(Duration::from_secs(5)),
            },
        )]);
        let started = Instant::now();
        assert!(matches!(
            run(&resilience(), &upstream).await,
            Err(CallError::Failed { attempts: 1, .. })
        ));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "gave up at once instead of waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_of_any_size_ends_the_call_at_once_without_panicking() {
        for huge in [Duration::MAX, Duration::from_secs(u64::MAX)] {
            let upstream = Upstream::new(&[(
                0,
                Throttled {
                    retry_after: Some(huge),
                },
            )]);
            let resilience = Resilience {
                breaker: CircuitBreaker::new(BreakerConfig {
                    consecutive_failures: 1,
                    ..Default::default()
                }),
                ..resilience()
            };
            let started = Instant::now();
            assert!(matches!(
                run(&resilience, &upstream).await,
                Err(CallError::Failed { attempts: 1, .. })
            ));
            assert_eq!(started.elapsed(), Duration::ZERO);
            // The breaker it opened stays open no longer than the cap.
            assert_eq!(resilience.breaker.state(), BreakerState::Open);
            tokio::time::advance(crate::LONGEST_RETRY_AFTER).await;
            assert!(resilience.breaker.try_acquire().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_deadline_of_any_size_does_not_panic() {
        let resilience = Resilience {
            limits: CallLimits {
                deadline: Duration::MAX,
                attempt_timeout: ms(500),
            },
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError), (0, Success)]);
        assert_eq!(run(&resilience, &upstream).await.unwrap(), "success");
        assert_eq!(upstream.starts().len(), 2, "the retry fits in the deadline");

        let unbounded_attempts = Resilience {
            limits: CallLimits {
                deadline: Duration::MAX,
                attempt_timeout: Duration::MAX,
            },
            ..resilience
        };
        let upstream = Upstream::new(&[(10, Success)]);
        assert_eq!(
            run(&unbounded_attempts, &upstream).await.unwrap(),
            "success"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_limits_retries_across_calls() {
        let resilience = Resilience {
            breaker: CircuitBreaker::new(BreakerConfig {
                consecutive_failures: 1000,
                min_calls: 1000,
                ..Default::default()
            }),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError); 1000]);
        for _ in 0..50 {
            let _ = run(&resilience, &upstream).await;
        }
        // 50 requests: the floor of 3 plus 20% of 50 = 13 retries in the window.
        assert_eq!(upstream.starts().len(), 50 + 13);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_refuses_without_calling_and_is_never_retried() {
        let resilience = resilience();
        let upstream = Upstream::new(&[(0, ServerError); 100]);
        while resilience.breaker.state() == BreakerState::Closed {
            let _ = run(&resilience, &upstream).await;
        }
        let calls_so_far = upstream.starts().len();
        assert_eq!(
            calls_so_far, 5,
            "opened by the fifth failure, and no retry after it"
        );
        match run(&resilience, &upstream).await {
            Err(CallError::BreakerOpen(open)) => assert!(open.retry_in > Duration::ZERO),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            upstream.starts().len(),
            calls_so_far,
            "nothing sent while open"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_sees_every_attempt_including_timeouts() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let resilience = Resilience {
            observer: AttemptObserver::new(move |outcome, took| {
                log.lock().unwrap().push((outcome, took))
            }),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError), (10_000, Success), (0, Success)]);
        let _ = run(&resilience, &upstream).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            [ServerError, TimedOut, Success]
        );
        assert_eq!(
            seen[1].1,
            ms(500),
            "the timed-out attempt took the attempt timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn call_once_never_retries() {
        let resilience = resilience();
        let upstream = Upstream::new(&[(0, ServerError), (0, Success)]);
        match resilience
            .call_once(|budget| Arc::clone(&upstream).attempt(budget))
            .await
        {
            Err(CallError::Failed {
                outcome: ServerError,
                attempts: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(upstream.starts().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_retries_stop_at_the_maximum_too() {
        let throttled = Throttled {
            retry_after: Some(ms(10)),
        };
        let upstream = Upstream::new(&[(0, throttled); 10]);
        assert!(matches!(
            run(&resilience(), &upstream).await,
            Err(CallError::Failed { attempts: 3, .. })
        ));
        assert_eq!(upstream.starts().len(), 3, "one attempt and two retries");
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_is_told_every_retry_decision() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let resilience = Resilience {
            observer: AttemptObserver::default()
                .with_retries(move |after, decision| log.lock().unwrap().push((after, decision))),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError), (0, Unreachable), (0, ServerError)]);
        let _ = run(&resilience, &upstream).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(matches!(
            seen[0],
            (ServerError, RetryDecision::Retry { .. })
        ));
        assert!(matches!(
            seen[1],
            (Unreachable, RetryDecision::Retry { .. })
        ));
        assert_eq!(
            seen[2],
            (ServerError, RetryDecision::Refused(RetryRefusal::Exhausted))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_is_reported_as_the_reason_for_no_retry() {
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&refusals);
        let resilience = Resilience {
            breaker: CircuitBreaker::new(BreakerConfig {
                consecutive_failures: 1000,
                min_calls: 1000,
                ..Default::default()
            }),
            observer: AttemptObserver::default().with_retries(move |_, decision| {
                if let RetryDecision::Refused(reason) = decision {
                    log.lock().unwrap().push(reason);
                }
            }),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError); 1000]);
        for _ in 0..10 {
            let _ = run(&resilience, &upstream).await;
        }
        // 10 requests allow 3 + 2 retries; every later first failure finds the budget spent.
        assert_eq!(upstream.starts().len(), 10 + 5);
        let refusals = refusals.lock().unwrap();
        assert!(refusals.contains(&RetryRefusal::Budget), "{refusals:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_is_not_recorded() {
        let resilience = resilience();
        for _ in 0..20 {
            let upstream = Upstream::new(&[(10_000, Success)]);
            let call = run(&resilience, &upstream);
            // The caller gives up after 10 ms: the attempt is dropped mid-flight.
            assert!(tokio::time::timeout(ms(10), call).await.is_err());
        }
        assert_eq!(resilience.breaker.state(), BreakerState::Closed);
    }

    /// A hang at 200 reads a second on one key: with coalescing, one call at a time.
    /// Returns when the breaker opened, counted from the start of the hang.
    async fn time_to_open_on_a_hang(resilience: &Resilience) -> Duration {
        // Healthy first: 512 calls of 4 ms fill the tracker.
        let healthy = Upstream::new(&[(4, Success); 512]);
        for _ in 0..512 {
            run(resilience, &healthy).await.unwrap();
        }
        let hang_started = Instant::now();
        let hanging = Upstream::new(&[(60_000, Success); 100]);
        while resilience.breaker.state() == BreakerState::Closed {
            let _ = run(resilience, &hanging).await;
            assert!(
                hang_started.elapsed() < Duration::from_secs(30),
                "never opened"
            );
        }
        hang_started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn with_an_adaptive_timeout_a_hang_opens_the_breaker_within_half_a_second() {
        let adaptive = Resilience {
            adaptive_timeout: Some(DerivedBound {
                factor: 4.0,
                floor: ms(50),
                cap: ms(500),
            }),
            ..resilience()
        };
        // Five timeouts of 50 ms, and the backoffs between them (50-100, 100-200, then a new
        // call, then 50-100 ms): 450 to 650 ms, whatever the jitter.
        let opened = time_to_open_on_a_hang(&adaptive).await;
        assert!(opened <= ms(650), "opened after {opened:?}");

        // The fixed timeout, for comparison: every attempt waits the full 500 ms.
        let fixed = time_to_open_on_a_hang(&resilience()).await;
        assert!(fixed >= Duration::from_secs(2), "opened after {fixed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_timeout_follows_recent_latency_and_the_probe_gets_the_ceiling() {
        let resilience = Resilience {
            adaptive_timeout: Some(DerivedBound {
                factor: 4.0,
                floor: ms(50),
                cap: ms(500),
            }),
            ..resilience()
        };
        assert_eq!(
            resilience.attempt_timeout(false),
            ms(500),
            "nothing known yet"
        );
        let upstream = Upstream::new(&[(30, Success); 300]);
        for _ in 0..300 {
            run(&resilience, &upstream).await.unwrap();
        }
        assert_eq!(resilience.attempt_timeout(false), ms(120), "4 × 30 ms");
        assert_eq!(resilience.attempt_timeout(true), ms(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_over_the_concurrency_limit_is_shed_without_being_sent() {
        let resilience = Resilience {
            limiter: Some(
                ConcurrencyLimiter::new(crate::LimiterConfig {
                    initial: 1,
                    min: 1,
                    max: 1,
                    ..Default::default()
                })
                .unwrap(),
            ),
            ..resilience()
        };
        let slow = Upstream::new(&[(100, Success)]);
        let held = run(&resilience, &slow);
        let refused = async {
            tokio::task::yield_now().await;
            run(&resilience, &slow).await
        };
        let (held, refused) = tokio::join!(held, refused);
        assert_eq!(held.unwrap(), "success");
        assert!(matches!(refused, Err(CallError::Shed)), "{refused:?}");
        assert!(CallError::<()>::Shed.is_refusal());
        assert_eq!(slow.starts().len(), 1, "the shed call sent nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_call_reports_the_first_failed_attempt_before_its_retries() {
        let resilience = resilience();
        let upstream = Upstream::new(&[(0, ServerError), (0, Success)]);
        let first_failure = Mutex::new(None);
        let started = Instant::now();
        let result = resilience
            .call_watched(
                |budget| Arc::clone(&upstream).attempt(budget),
                |outcome| {
                    first_failure
                        .lock()
                        .unwrap()
                        .get_or_insert((outcome, started.elapsed()));
                },
            )
            .await;
        assert_eq!(result.unwrap(), "success", "the retry went on");
        let (outcome, at) = first_failure.lock().unwrap().unwrap();
        assert_eq!(outcome, ServerError);
        assert_eq!(
            at,
            Duration::ZERO,
            "told at once, not after the retry's backoff"
        );
        assert!(upstream.starts()[1] >= ms(50));
    }

    /// Reads hedged after a fixed 20 ms when `elsewhere` says so; hedge events recorded.
    fn hedged(elsewhere: bool) -> (Resilience, Arc<Mutex<Vec<&'static str>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let resilience = Resilience {
            hedge: Some(DerivedBound {
                factor: 1.0,
                floor: ms(20),
                cap: ms(20),
            }),
            elsewhere: Some(Elsewhere::new(move || elsewhere)),
            observer: AttemptObserver::default()
                .with_hedges(move |event| seen.lock().unwrap().push(event.as_str())),
            ..resilience()
        };
        (resilience, events)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_gets_a_twin_and_the_first_success_wins() {
        let (resilience, events) = hedged(true);
        let upstream = Upstream::new(&[(10_000, Success), (5, Success)]);
        let started = Instant::now();
        assert_eq!(run(&resilience, &upstream).await.unwrap(), "success");
        assert_eq!(
            started.elapsed(),
            ms(25),
            "the twin's answer, not the hang's"
        );
        assert_eq!(upstream.starts(), [ms(0), ms(20)]);
        assert_eq!(*events.lock().unwrap(), ["sent", "won"]);
        assert_eq!(
            resilience.breaker.state(),
            BreakerState::Closed,
            "the dropped attempt is no failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_twin_fails_the_slow_attempt_still_answers() {
        let (resilience, events) = hedged(true);
        let upstream = Upstream::new(&[(100, Success), (5, ServerError)]);
        let started = Instant::now();
        assert_eq!(run(&resilience, &upstream).await.unwrap(), "success");
        assert_eq!(started.elapsed(), ms(100));
        assert_eq!(
            upstream.starts().len(),
            2,
            "no retry: the attempt succeeded"
        );
        assert_eq!(*events.lock().unwrap(), ["sent"]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_twin_for_a_fast_attempt_nor_with_nowhere_else_to_send_it() {
        let (resilience, events) = hedged(true);
        let fast = Upstream::new(&[(15, Success)]);
        run(&resilience, &fast).await.unwrap();
        assert_eq!(fast.starts().len(), 1);

        let (alone, _) = hedged(false);
        let slow = Upstream::new(&[(100, Success)]);
        let started = Instant::now();
        run(&alone, &slow).await.unwrap();
        assert_eq!(started.elapsed(), ms(100));
        assert_eq!(slow.starts().len(), 1, "one address: no twin");
        assert!(events.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_twin_is_paid_from_the_retry_budget_and_never_sent_for_a_single_shot_call() {
        let (mut resilience, events) = hedged(true);
        resilience.budget = Arc::new(RetryBudget::new(RetryBudgetConfig {
            ratio: 0.0,
            min_per_window: 0,
            ..Default::default()
        }));
        let slow = Upstream::new(&[(100, Success), (5, Success)]);
        run(&resilience, &slow).await.unwrap();
        assert_eq!(slow.starts().len(), 1, "budget spent: no twin");
        assert_eq!(*events.lock().unwrap(), ["refused"]);

        let (resilience, events) = hedged(true);
        let slow = Upstream::new(&[(100, Success), (5, Success)]);
        resilience
            .call_once(|budget| Arc::clone(&slow).attempt(budget))
            .await
            .unwrap();
        assert_eq!(slow.starts().len(), 1, "not safe to send twice");
        assert!(events.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn with_another_address_the_first_retry_goes_at_once_and_the_second_backs_off() {
        let elsewhere = Resilience {
            elsewhere: Some(Elsewhere::new(|| true)),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError), (0, ServerError), (0, Success)]);
        assert_eq!(run(&elsewhere, &upstream).await.unwrap(), "success");
        let starts = upstream.starts();
        assert_eq!(starts[1], ms(0), "first retry at once");
        let second_wait = starts[2] - starts[1];
        assert!(
            second_wait >= ms(100) && second_wait <= ms(200),
            "second retry after {second_wait:?}"
        );

        let nowhere = Resilience {
            elsewhere: Some(Elsewhere::new(|| false)),
            ..resilience()
        };
        let upstream = Upstream::new(&[(0, ServerError), (0, Success)]);
        run(&nowhere, &upstream).await.unwrap();
        assert!(upstream.starts()[1] >= ms(50), "one address: the backoff");
    }

    #[test]
    fn the_backoff_doubles_with_jitter_and_ends_after_the_last_retry() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(0).unwrap();
            let second = policy.backoff(1).unwrap();
            assert!(first >= ms(50) && first <= ms(100), "{first:?}");
            assert!(second >= ms(100) && second <= ms(200), "{second:?}");
        }
        assert_eq!(policy.backoff(2), None);
        let huge = RetryPolicy {
            factor: 1e30,
            max_retries: usize::MAX,
            ..policy
        };
        assert!(
            huge.backoff(usize::MAX - 1).is_some(),
            "no overflow, no panic"
        );
    }
}
