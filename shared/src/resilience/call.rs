//! One upstream call under every policy, in the order of DESIGN 4.1 (steps 3 to 6):
//! deadline → retry (with budget) → circuit breaker → attempt timeout.
//!
//! The attempt itself (an HTTP request, usually) is a closure, so this file holds only the
//! policy and can be tested with a scripted upstream and paused time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::breaker::{BreakerOpen, BreakerState, CircuitBreaker};
use super::budget::RetryBudget;
use super::outcome::AttemptOutcome;

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
    /// backon's schedule: `base × factor^n`, plus a random jitter of up to the same again,
    /// so clients that failed together do not retry together.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_factor(self.factor)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// Time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    /// Everything, retries and waits included, ends within this.
    pub deadline: Duration,
    /// One attempt ends within this (or within what is left of the deadline, if less).
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
    /// The last attempt failed and no retry was allowed (retries used up, budget spent,
    /// deadline too close, breaker opened). `last` is that attempt's value, or `None` when
    /// it timed out.
    Failed {
        outcome: AttemptOutcome,
        last: Option<T>,
        attempts: usize,
    },
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

/// Told of every attempt's outcome and duration, timed-out ones included, and of every
/// retry decision (for metrics and logs).
#[derive(Clone, Default)]
pub struct AttemptObserver {
    on_attempt: Option<Arc<OnAttempt>>,
    on_retry: Option<Arc<OnRetry>>,
}

impl AttemptObserver {
    pub fn new(on_attempt: impl Fn(AttemptOutcome, Duration) + Send + Sync + 'static) -> Self {
        Self {
            on_attempt: Some(Arc::new(on_attempt)),
            on_retry: None,
        }
    }

    /// Also tells `on_retry` what followed each failed, retryable attempt.
    pub fn with_retries(
        mut self,
        on_retry: impl Fn(AttemptOutcome, RetryDecision) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(Arc::new(on_retry));
        self
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
    pub observer: AttemptObserver,
}

/// One failed attempt, as the retry loop sees it.
struct Failure<T> {
    outcome: AttemptOutcome,
    last: Option<T>,
    breaker_open: Option<BreakerOpen>,
}

impl Resilience {
    /// Runs `attempt` under the deadline, retries, breaker and attempt timeout. The closure
    /// receives the time this attempt may take, to pass upstream (so the callee can give
    /// up on work nobody will wait for).
    pub async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        self.call_with(self.retry, attempt).await
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
        self.call_with(no_retries, attempt).await
    }

    async fn call_with<T, F, Fut>(&self, retry: RetryPolicy, attempt: F) -> Result<T, CallError<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let deadline = super::instant_after(Instant::now(), self.limits.deadline);
        // Atomic rather than a `Cell` so the call stays `Send` (it is awaited in handlers).
        let attempts = AtomicUsize::new(0);
        self.budget.record_request();

        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt_once(deadline, &attempt)
        })
        .retry(retry.backoff())
        .sleep(tokio::time::sleep)
        .when(|failure: &Failure<T>| {
            failure.outcome.is_retryable() && failure.breaker_open.is_none()
        })
        .adjust(|failure: &Failure<T>, backoff: Option<Duration>| {
            let decision = self.retry_decision(failure.outcome, backoff, deadline);
            self.observer.retry(failure.outcome, decision);
            match decision {
                RetryDecision::Retry { delay } => {
                    tracing::debug!(?delay, outcome = failure.outcome.class(), "retrying");
                    Some(delay)
                }
                RetryDecision::Refused(reason) => {
                    tracing::debug!(reason = reason.as_str(), "no retry");
                    None
                }
            }
        })
        .await;

        let attempts = attempts.load(Ordering::Relaxed);
        result.map_err(|failure| match failure.breaker_open {
            Some(open) if attempts == 1 => CallError::BreakerOpen(open),
            _ => CallError::Failed {
                outcome: failure.outcome,
                last: failure.last,
                attempts,
            },
        })
    }

    /// Whether a failed, retryable attempt is followed by another, and after how long.
    /// `backoff` is the policy's next delay, `None` once its retries are used up.
    fn retry_decision(
        &self,
        outcome: AttemptOutcome,
        backoff: Option<Duration>,
        deadline: Instant,
    ) -> RetryDecision {
        let Some(backoff) = backoff else {
            return RetryDecision::Refused(RetryRefusal::Exhausted);
        };
        // The upstream's own delay (429 + Retry-After) replaces the backoff.
        let delay = outcome.requested_delay().unwrap_or(backoff);
        if self.breaker.state() == BreakerState::Open {
            return RetryDecision::Refused(RetryRefusal::BreakerOpen);
        }
        // Compared as durations, never summed onto the clock: `delay` is the upstream's.
        let time_left = deadline.saturating_duration_since(Instant::now());
        if delay.saturating_add(self.limits.attempt_timeout) > time_left {
            return RetryDecision::Refused(RetryRefusal::Deadline);
        }
        // Asked last: a refused retry for another reason does not spend the budget.
        if !self.budget.try_retry() {
            return RetryDecision::Refused(RetryRefusal::Budget);
        }
        RetryDecision::Retry { delay }
    }

    async fn attempt_once<T, F, Fut>(&self, deadline: Instant, attempt: &F) -> Result<T, Failure<T>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let permit = self.breaker.try_acquire().map_err(|open| Failure {
            outcome: AttemptOutcome::Unreachable,
            last: None,
            breaker_open: Some(open),
        })?;
        let started = Instant::now();
        let budget = self
            .limits
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(budget, attempt(budget)).await {
            Ok(attempted) => {
                self.observer.attempt(attempted.outcome, started.elapsed());
                permit.record(attempted.outcome.breaker_verdict(), attempted.retry_after);
                match attempted.outcome.breaker_verdict() {
                    super::BreakerVerdict::Failure => Err(Failure {
                        outcome: attempted.outcome,
                        last: Some(attempted.value),
                        breaker_open: None,
                    }),
                    _ => Ok(attempted.value),
                }
            }
            Err(_) => {
                let outcome = AttemptOutcome::TimedOut;
                self.observer.attempt(outcome, started.elapsed());
                permit.record(outcome.breaker_verdict(), None);
                Err(Failure {
                    outcome,
                    last: None,
                    breaker_open: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::resilience::{BreakerConfig, RetryBudgetConfig};
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
        Resilience {
            limits: CallLimits::default(),
            retry: RetryPolicy::default(),
            budget: Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
            breaker: CircuitBreaker::new(BreakerConfig::default()),
            observer: AttemptObserver::default(),
        }
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
            tokio::time::advance(crate::resilience::LONGEST_RETRY_AFTER).await;
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
}
