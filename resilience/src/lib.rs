//! The policy core of a call to another service: each policy a value built from
//! configuration and tested alone with paused time, and none of them tied to an HTTP
//! framework or client (the attempt is a closure). `docs/architecture.md` describes how the
//! read path composes them.
//!
//! - [`outcome`]: what an attempt's result means (the outcome table): breaker verdict,
//!   retryable, a sign of overload;
//! - [`retry_after`]: the upstream's `Retry-After`, in both forms;
//! - [`budget`]: retries capped at a share of requests in a sliding window;
//! - [`breaker`]: the circuit breaker, with one probe at a time in half-open;
//! - [`latency`]: recent healthy latency, the adaptive attempt timeout and `STALE_AFTER`;
//! - [`limiter`]: the adaptive concurrency limit, which sheds rather than queues;
//! - [`balance`]: which of a service's addresses an attempt goes to, and outlier ejection;
//! - [`call`]: all of them around one call, in order, with the deadline and attempt timeout.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod call;
pub mod latency;
pub mod limiter;
pub mod outcome;
pub mod retry_after;
mod window;

pub use balance::{Balancer, BalancerConfig, BalancerCounts, EndpointState, Pick};
pub use breaker::{BreakerConfig, BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use call::{
    AUTO_HEDGE_DELAY, AttemptObserver, Attempted, CallError, CallLimits, Elsewhere, HedgeEvent,
    Resilience, RetryDecision, RetryPolicy, RetryRefusal,
};
pub use latency::{DerivedBound, LatencyTracker, StaleAfter};
pub use limiter::{ConcurrencyLimiter, LimitPermit, LimiterConfig};
pub use outcome::{AttemptOutcome, BreakerVerdict};
pub use retry_after::{LONGEST_RETRY_AFTER, parse_retry_after};

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait any policy puts on a clock. Delays are capped where they enter
/// (`Retry-After`, configuration); this is the last guard, where they meet the clock.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `now + delay`, which cannot panic: `Instant + Duration` does on overflow, so a delay
/// beyond [`LONGEST_WAIT`] is read as that. A year from any real clock's "now" fits; were
/// the sum still out of range, `now` is the answer (the wait ends at once) rather than a
/// panic.
pub(crate) fn instant_after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay.min(LONGEST_WAIT)).unwrap_or(now)
}

/// `duration × factor`, which cannot panic: a negative or NaN factor gives zero, and a
/// product beyond [`LONGEST_WAIT`] is read as that.
pub(crate) fn scaled(duration: Duration, factor: f64) -> Duration {
    let seconds = duration.as_secs_f64() * factor;
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds)
        .unwrap_or(LONGEST_WAIT)
        .min(LONGEST_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_delay_of_any_size_meets_the_clock_without_panicking() {
        let now = Instant::now();
        assert_eq!(
            instant_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(instant_after(now, Duration::MAX), now + LONGEST_WAIT);
        assert_eq!(
            instant_after(now, Duration::from_secs(u64::MAX)),
            now + LONGEST_WAIT
        );
    }

    #[test]
    fn a_duration_scaled_by_any_factor_does_not_panic() {
        let second = Duration::from_secs(1);
        assert_eq!(scaled(second, 2.5), Duration::from_millis(2500));
        assert_eq!(scaled(second, -1.0), Duration::ZERO);
        assert_eq!(scaled(second, f64::NAN), Duration::ZERO);
        assert_eq!(scaled(second, f64::INFINITY), LONGEST_WAIT);
        assert_eq!(scaled(Duration::MAX, 1e30), LONGEST_WAIT);
    }
}
