//! The circuit breaker: stop calling an upstream that keeps failing, and find out cheaply
//! when it is back.
//!
//! - **Closed**: calls go through. It opens after `consecutive_failures` failures in a row,
//!   or when at least `min_calls` calls in the window failed at `failure_rate` or more.
//! - **Open**: calls are refused at once, for an exponentially growing, jittered delay
//!   (`open_base` doubling up to `open_max`), and never for less than the upstream's
//!   `Retry-After` when the failure that opened it carried one (capped at
//!   `retry_after_cap`). `Retry-After` is the least the upstream asks for; an upstream that
//!   keeps failing and keeps saying "in a second" is still probed less and less often.
//! - **Half-open**: exactly one probe call at a time goes through; its success closes the
//!   breaker, its failure opens it again with a longer delay. A background health check may
//!   move an open breaker to half-open early ([`CircuitBreaker::half_open`]), so recovery
//!   does not wait out the whole delay.
//!
//! Written here rather than taken from `failsafe`: that crate lets every call through in
//! half-open, takes its open delay only from its own backoff (no `Retry-After`), cannot be
//! moved to half-open from outside, and runs on its own clock, which paused-time tests cannot
//! drive. What is left is the small state machine below.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::BreakerVerdict;
use super::window::SlidingWindow;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: Duration,
    pub open_base: Duration,
    pub open_max: Duration,
    pub retry_after_cap: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
            retry_after_cap: super::LONGEST_RETRY_AFTER,
        }
    }
}

/// The breaker's state, as reported in health, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call was refused, and when it is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    pub retry_in: Duration,
}

type TransitionHook = Arc<dyn Fn(BreakerState, BreakerState) + Send + Sync>;

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

struct Inner {
    state: State,
    consecutive_failures: u32,
    /// first = calls, second = failures; only counted while closed.
    calls: SlidingWindow,
    /// How many times in a row it has opened; the open delay doubles with each.
    times_opened: u32,
}

struct Shared {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    on_transition: Option<TransitionHook>,
}

/// A circuit breaker for one upstream; clones share the state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self::build(config, None)
    }

    /// A breaker that calls `hook(from, to)` on every state change (for logs and metrics).
    pub fn with_transition_hook(
        config: BreakerConfig,
        hook: impl Fn(BreakerState, BreakerState) + Send + Sync + 'static,
    ) -> Self {
        Self::build(config, Some(Arc::new(hook)))
    }

    fn build(config: BreakerConfig, on_transition: Option<TransitionHook>) -> Self {
        let inner = Inner {
            state: State::Closed,
            consecutive_failures: 0,
            calls: SlidingWindow::new(config.window),
            times_opened: 0,
        };
        Self {
            shared: Arc::new(Shared {
                config,
                inner: Mutex::new(inner),
                on_transition,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent state (every update is a
        // single assignment), so a poisoned lock is still safe to use.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state.public()
    }

    /// Asks to make a call. An open breaker refuses; a half-open one lets one probe through.
    pub fn try_acquire(&self) -> Result<BreakerPermit, BreakerOpen> {
        let mut inner = self.lock();
        let now = Instant::now();
        let (result, transition) = match inner.state {
            State::Closed => (Ok(false), None),
            State::Open { until } if now < until => (
                Err(BreakerOpen {
                    retry_in: until - now,
                }),
                None,
            ),
            State::Open { .. } => {
                inner.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                (Ok(true), Some((BreakerState::Open, BreakerState::HalfOpen)))
            }
            State::HalfOpen {
                probe_in_flight: false,
            } => {
                inner.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                (Ok(true), None)
            }
            // A probe is out; its answer is due within one attempt timeout.
            State::HalfOpen {
                probe_in_flight: true,
            } => (
                Err(BreakerOpen {
                    retry_in: self.shared.config.open_base,
                }),
                None,
            ),
        };
        drop(inner);
        self.notify(transition);
        result.map(|probe| BreakerPermit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    /// Ends the open state early: the background health check saw the upstream healthy.
    /// The next call is the half-open probe.
    pub fn half_open(&self) {
        let mut inner = self.lock();
        let transition = match inner.state {
            State::Open { .. } => {
                inner.state = State::HalfOpen {
                    probe_in_flight: false,
                };
                Some((BreakerState::Open, BreakerState::HalfOpen))
            }
            _ => None,
        };
        drop(inner);
        self.notify(transition);
    }

    fn record(&self, probe: bool, verdict: BreakerVerdict, retry_after: Option<Duration>) {
        let config = self.shared.config;
        let mut inner = self.lock();
        let before = inner.state.public();
        match (&inner.state, verdict) {
            (_, BreakerVerdict::Ignored) if probe => {
                // The probe was cancelled: it proved nothing; let the next call probe.
                inner.state = State::HalfOpen {
                    probe_in_flight: false,
                };
            }
            (State::HalfOpen { .. }, BreakerVerdict::Success) if probe => {
                inner.state = State::Closed;
                inner.consecutive_failures = 0;
                inner.times_opened = 0;
                inner.calls.clear();
            }
            (State::HalfOpen { .. }, BreakerVerdict::Failure) if probe => {
                Self::open(&mut inner, &config, retry_after);
            }
            (State::Closed, BreakerVerdict::Success) => {
                inner.consecutive_failures = 0;
                inner.calls.add_first(1);
            }
            (State::Closed, BreakerVerdict::Failure) => {
                inner.consecutive_failures += 1;
                inner.calls.add_first(1);
                inner.calls.add_second(1);
                let (calls, failures) = inner.calls.totals();
                let rate_exceeded = calls >= u64::from(config.min_calls)
                    && failures as f64 >= config.failure_rate * calls as f64;
                if inner.consecutive_failures >= config.consecutive_failures || rate_exceeded {
                    Self::open(&mut inner, &config, retry_after);
                }
            }
            // Answers of calls that started before the state changed say nothing new.
            _ => {}
        }
        let after = inner.state.public();
        drop(inner);
        self.notify((before != after).then_some((before, after)));
    }

    fn open(inner: &mut Inner, config: &BreakerConfig, retry_after: Option<Duration>) {
        let backoff = jittered(exponential(
            config.open_base,
            config.open_max,
            inner.times_opened,
        ));
        let delay = match retry_after {
            Some(requested) => requested.min(config.retry_after_cap).max(backoff),
            None => backoff,
        };
        inner.times_opened = inner.times_opened.saturating_add(1);
        inner.consecutive_failures = 0;
        inner.calls.clear();
        inner.state = State::Open {
            until: super::instant_after(Instant::now(), delay),
        };
    }

    fn notify(&self, transition: Option<(BreakerState, BreakerState)>) {
        if let (Some((from, to)), Some(hook)) = (transition, &self.shared.on_transition) {
            hook(from, to);
        }
    }
}

fn exponential(base: Duration, max: Duration, exponent: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(exponent.min(31)))
        .min(max)
}

/// "Equal jitter": half the delay fixed, half random, so breakers of many booksvc instances
/// opened by one outage do not all probe in the same instant.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Permission for one call. Report how it went with [`BreakerPermit::record`]; a permit
/// dropped unrecorded (the call was cancelled) counts as nothing.
#[must_use = "record the outcome of the call, or drop the permit if it was cancelled"]
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the call's outcome; `retry_after` is the upstream's, when it sent one.
    pub fn record(mut self, verdict: BreakerVerdict, retry_after: Option<Duration>) {
        self.settled = true;
        self.breaker.record(self.probe, verdict, retry_after);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker
                .record(self.probe, BreakerVerdict::Ignored, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use BreakerVerdict::{Failure, Ignored, Success};

    fn fail(breaker: &CircuitBreaker, times: usize) {
        for _ in 0..times {
            breaker.try_acquire().unwrap().record(Failure, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().record(Success, None);
        fail(&breaker, 4);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "a success resets the streak"
        );
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
        let refused = breaker.try_acquire().unwrap_err();
        assert!(
            refused.retry_in <= Duration::from_secs(1)
                && refused.retry_in >= Duration::from_millis(500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_half_failures_over_twenty_calls() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        // Alternating: never two failures in a row, but half of all calls fail.
        for i in 0..19 {
            let verdict = if i % 2 == 0 { Success } else { Failure };
            breaker.try_acquire().unwrap().record(verdict, None);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "19 calls are below the minimum"
        );
        breaker.try_acquire().unwrap().record(Failure, None);
        assert_eq!(breaker.state(), BreakerState::Open, "10 of 20 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_and_cancellations_do_not_open_it() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..50 {
            breaker.try_acquire().unwrap().record(Ignored, None);
            drop(breaker.try_acquire().unwrap());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through_and_success_closes() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 5);
        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        for _ in 0..10 {
            assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        }
        probe.record(Success, None);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(!breaker.try_acquire().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_reopen_with_growing_delays_up_to_the_maximum() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 5);
        let mut previous_floor = Duration::ZERO;
        for exponent in 1..8u32 {
            let full = Duration::from_secs(1)
                .saturating_mul(2u32.pow(exponent))
                .min(Duration::from_secs(30));
            tokio::time::advance(Duration::from_secs(60)).await;
            breaker.try_acquire().unwrap().record(Failure, None);
            let retry_in = breaker.try_acquire().unwrap_err().retry_in;
            assert!(
                retry_in >= full / 2 && retry_in <= full,
                "attempt {exponent}: {retry_in:?} not in [{:?}, {full:?}]",
                full / 2
            );
            assert!(full / 2 >= previous_floor);
            previous_floor = full / 2;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_does_not_stop_the_backoff_from_growing() {
        // storagesvc says `Retry-After: 1` on every failure of a long outage.
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 4);
        let second = Some(Duration::from_secs(1));
        breaker.try_acquire().unwrap().record(Failure, second);
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(1),
            "the first opening waits what the upstream asked"
        );
        let mut delays = Vec::new();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(60)).await;
            breaker.try_acquire().unwrap().record(Failure, second);
            delays.push(breaker.try_acquire().unwrap_err().retry_in);
        }
        // The backoff's floors (half of 2, 4, 8, 16, 30 s), never below the 1 s asked for.
        for (delay, floor) in delays.iter().zip([1, 2, 4, 8, 15]) {
            assert!(*delay >= Duration::from_secs(floor), "{delays:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_open_delay_capped_at_sixty_seconds() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 4);
        breaker
            .try_acquire()
            .unwrap()
            .record(Failure, Some(Duration::from_secs(7)));
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(7)
        );

        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 4);
        breaker
            .try_acquire()
            .unwrap()
            .record(Failure, Some(Duration::from_secs(3600)));
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(60)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_check_moves_open_to_half_open_early() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 4);
        breaker
            .try_acquire()
            .unwrap()
            .record(Failure, Some(Duration::from_secs(30)));
        breaker.half_open();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker
            .try_acquire()
            .expect("probe allowed without waiting 30 s");
        assert!(probe.is_probe());
        probe.record(Success, None);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot_without_changing_state() {
        let breaker = CircuitBreaker::new(BreakerConfig::default());
        fail(&breaker, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(breaker.try_acquire().unwrap());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(
            breaker.try_acquire().unwrap().is_probe(),
            "the next call may probe"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_transition_is_reported() {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let breaker =
            CircuitBreaker::with_transition_hook(BreakerConfig::default(), move |from, to| {
                log.lock().unwrap().push((from, to));
            });
        fail(&breaker, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        breaker.try_acquire().unwrap().record(Failure, None);
        breaker.half_open();
        breaker.try_acquire().unwrap().record(Success, None);
        use BreakerState::*;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed)
            ]
        );
    }
}
