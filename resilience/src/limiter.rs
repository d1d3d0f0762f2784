//! An adaptive limit on the calls in flight to one upstream, which sheds rather than
//! queues.
//!
//! The limit follows the upstream's health with AIMD (additive increase, multiplicative
//! decrease: TCP Reno's rule, as in Netflix's concurrency-limits): it grows by one for each
//! call that answered in time while the limit was at least half used, and shrinks by
//! `backoff` for each call that timed out, was throttled, failed with a 5xx or took longer
//! than `latency_threshold`. The algorithm is tower-acc's `Aimd`; this module keeps the
//! permit bookkeeping and the refusal, which must be ours: tower-acc's own layer waits for
//! a free slot, and a caller with a stored answer must not wait for anything.
//!
//! A refused call is [`CallError::Shed`](crate::CallError::Shed): nothing is sent, and the
//! caller is answered at once (from the store, or with a `503`).
//!
//! At start the limit knows nothing of the upstream, and a first burst of callers (a
//! replica started, or restarted, under load) would be shed at the initial limit while the
//! upstream is healthy: reads with nothing stored yet answered `503`. So, like TCP's slow
//! start, until the first sign of overload a call that finds the limit reached doubles it
//! (up to the maximum) instead of being refused, as long as the calls have been in flight
//! without a pause for less than the latency threshold: a burst is let through, a hang
//! is not fed (its calls stay in flight longer than that), and its first sign (a timeout,
//! a late answer) ends slow start for good; from then on the limit only moves by AIMD.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tower_acc::{Aimd, Algorithm};

/// How the limit moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// The limit at start.
    pub initial: usize,
    /// It never falls below this: enough for a healthy upstream's usual concurrency.
    /// The limit grows only while at least half of it is in use, so at a low, steady
    /// concurrency an occasional slow call ratchets it down unopposed: the floor must cover
    /// the bursts of such a load (a minimum of 2 shed reads of a healthy swarm stack).
    pub min: usize,
    /// Nor rises above this.
    pub max: usize,
    /// A call slower than this counts as a sign of overload, like a timeout.
    pub latency_threshold: Duration,
    /// The factor the limit is multiplied by on a sign of overload, in `[0.5, 1)`.
    pub backoff: f64,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            initial: 20,
            min: 8,
            max: 200,
            latency_threshold: Duration::from_millis(50),
            backoff: 0.9,
        }
    }
}

impl LimiterConfig {
    /// The AIMD algorithm of this configuration, starting at `limit` (within min and max).
    fn aimd(&self, limit: usize) -> Aimd {
        Aimd::builder()
            .initial_limit(limit.clamp(self.min, self.max))
            .min_limit(self.min)
            .max_limit(self.max)
            .backoff_ratio(self.backoff)
            .timeout(self.latency_threshold)
            .build()
    }

    /// The configuration's mistakes, named; `tower_acc::AimdBuilder::build` would panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err("the minimum concurrency limit must be at least 1".into());
        }
        if self.min > self.max {
            return Err(format!(
                "the minimum concurrency limit ({}) is above the maximum ({})",
                self.min, self.max
            ));
        }
        if !(0.5..1.0).contains(&self.backoff) {
            return Err(format!(
                "the limit's backoff must be in [0.5, 1), not {}",
                self.backoff
            ));
        }
        Ok(())
    }
}

struct State {
    algorithm: Aimd,
    in_flight: usize,
    /// When `in_flight` last rose from zero.
    busy_since: Instant,
    slow_start: SlowStart,
}

/// Whether a call that finds the limit reached may double it instead of being refused.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SlowStart {
    /// No sign of overload yet.
    On,
    /// A sign of overload was seen: the limit moves by AIMD only.
    Over,
}

impl State {
    /// Doubles the limit (up to `config.max`) when slow start allows it now: calls have
    /// been in flight without a pause for less than the latency threshold.
    fn slow_start_doubles(&mut self, config: &LimiterConfig, now: Instant) -> bool {
        let limit = self.algorithm.max_concurrency();
        let fresh_burst = now.duration_since(self.busy_since) < config.latency_threshold;
        if self.slow_start == SlowStart::Over || !fresh_burst || limit >= config.max {
            return false;
        }
        self.algorithm = config.aimd((limit * 2).min(config.max));
        true
    }
}

/// The limit of one upstream; clones share it.
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    config: LimiterConfig,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl ConcurrencyLimiter {
    pub fn new(config: LimiterConfig) -> Result<Self, String> {
        config.validate()?;
        let algorithm = config.aimd(config.initial);
        Ok(Self {
            config,
            state: Arc::new(Mutex::new(State {
                algorithm,
                in_flight: 0,
                busy_since: Instant::now(),
                slow_start: SlowStart::On,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for one call, or `None` when the limit is reached: shed, do not wait. In
    /// slow start, a reached limit may double instead.
    pub fn try_acquire(&self) -> Option<LimitPermit> {
        let mut state = self.lock();
        let now = Instant::now();
        if state.in_flight == 0 {
            state.busy_since = now;
        }
        if state.in_flight >= state.algorithm.max_concurrency()
            && !state.slow_start_doubles(&self.config, now)
        {
            return None;
        }
        state.in_flight += 1;
        Some(LimitPermit {
            limiter: self.clone(),
            started: Instant::now(),
            overloaded: None,
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().algorithm.max_concurrency()
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

/// One call's slot. Say how the call ended with [`LimitPermit::record`]; a permit dropped
/// unrecorded (the call was cancelled) frees its slot and teaches the limit nothing.
#[must_use = "record how the call ended, or drop the permit if it was cancelled"]
pub struct LimitPermit {
    limiter: ConcurrencyLimiter,
    started: Instant,
    overloaded: Option<bool>,
}

impl LimitPermit {
    /// `overloaded`: the call ended in a sign of overload (a timeout, a 429, a 5xx).
    pub fn record(mut self, overloaded: bool) {
        self.overloaded = Some(overloaded);
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let mut state = self.limiter.lock();
        let in_flight = state.in_flight;
        match self.overloaded {
            Some(overloaded) => {
                state.algorithm.update(took, in_flight, overloaded, false);
                if overloaded || took > self.limiter.config.latency_threshold {
                    state.slow_start = SlowStart::Over;
                }
            }
            None => state.algorithm.update(took, in_flight, false, true),
        }
        state.in_flight = in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(initial: usize, min: usize, max: usize) -> ConcurrencyLimiter {
        ConcurrencyLimiter::new(LimiterConfig {
            initial,
            min,
            max,
            ..LimiterConfig::default()
        })
        .unwrap()
    }

    /// Ends slow start with one call that answered `503`.
    fn overloaded_once(limiter: &ConcurrencyLimiter) {
        limiter.try_acquire().unwrap().record(true);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_limit_are_refused_at_once() {
        let limiter = limiter(4, 1, 10);
        overloaded_once(&limiter);
        assert_eq!(limiter.limit(), 3, "4 × 0.9");
        let held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
        assert!(limiter.try_acquire().is_none(), "the fourth is shed");
        assert_eq!(limiter.in_flight(), 3);
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
        assert!(limiter.try_acquire().is_some(), "a freed slot is usable");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_calls_answer_in_time_under_load() {
        let limiter = limiter(4, 1, 10);
        for _ in 0..5 {
            let permits: Vec<_> = (0..limiter.limit())
                .map(|_| limiter.try_acquire().unwrap())
                .collect();
            tokio::time::advance(Duration::from_millis(5)).await;
            for permit in permits {
                permit.record(false);
            }
        }
        assert_eq!(limiter.limit(), 10, "grown to its maximum");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_shrinks_on_overload_and_on_slow_calls_down_to_its_minimum() {
        let limiter = limiter(20, 8, 50);
        limiter.try_acquire().unwrap().record(true);
        assert_eq!(limiter.limit(), 18, "20 × 0.9");
        let slow = limiter.try_acquire().unwrap();
        tokio::time::advance(Duration::from_millis(80)).await;
        slow.record(false);
        assert_eq!(
            limiter.limit(),
            16,
            "a call over the latency threshold is overload too"
        );
        for _ in 0..50 {
            limiter.try_acquire().unwrap().record(true);
        }
        assert_eq!(limiter.limit(), 8, "never below the minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn at_start_a_burst_over_the_limit_doubles_it_up_to_the_maximum() {
        let limiter = limiter(4, 1, 10);
        let held: Vec<_> = (0..8).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(limiter.limit(), 8, "the fifth call doubled the limit");
        let more: Vec<_> = (0..2).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(limiter.limit(), 10, "doubled again, up to the maximum");
        assert!(limiter.try_acquire().is_none(), "never above the maximum");
        assert_eq!(limiter.in_flight(), 10);
        drop((held, more));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_does_not_feed_calls_in_flight_for_longer_than_the_latency_threshold() {
        let limiter = limiter(4, 1, 10);
        let held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(
            limiter.try_acquire().is_none(),
            "busy for 50 ms without a pause: as in a hang, the limit holds"
        );
        drop(held);
        let burst: Vec<_> = (0..5).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(limiter.limit(), 8, "a new burst after a pause doubles it");
        drop(burst);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ends_at_the_first_failure_or_slow_call() {
        for slow in [false, true] {
            let limiter = limiter(4, 1, 10);
            let permit = limiter.try_acquire().unwrap();
            if slow {
                tokio::time::advance(Duration::from_millis(60)).await;
            }
            permit.record(!slow);
            assert_eq!(limiter.limit(), 3, "slow: {slow}");
            let _held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
            assert!(
                limiter.try_acquire().is_none(),
                "refused within a fresh burst, slow: {slow}"
            );
            assert_eq!(limiter.limit(), 3, "slow: {slow}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_frees_its_slot_and_teaches_nothing() {
        let limiter = limiter(20, 8, 50);
        let permit = limiter.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(permit);
        assert_eq!(limiter.limit(), 20);
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn a_wrong_configuration_is_an_error_not_a_panic() {
        for config in [
            LimiterConfig {
                min: 0,
                ..LimiterConfig::default()
            },
            LimiterConfig {
                min: 30,
                max: 10,
                ..LimiterConfig::default()
            },
            LimiterConfig {
                backoff: 1.0,
                ..LimiterConfig::default()
            },
        ] {
            assert!(ConcurrencyLimiter::new(config).is_err(), "{config:?}");
        }
    }
}
