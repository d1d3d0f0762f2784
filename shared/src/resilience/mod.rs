//! Resilience policies for calls to another service (DESIGN section 4.1), each a value
//! built from configuration and tested alone with paused time:
//!
//! - [`outcome`]: what an attempt's result means (table 4.2): breaker verdict, retryable;
//! - [`retry_after`]: the upstream's `Retry-After`, in both forms;
//! - [`budget`]: retries capped at a share of requests in a sliding window;
//! - [`breaker`]: the circuit breaker, with one probe at a time in half-open;
//! - [`call`]: all of them around one call, in order, with the deadline and attempt timeout.

pub mod breaker;
pub mod budget;
pub mod call;
pub mod outcome;
pub mod retry_after;
mod window;

pub use breaker::{BreakerConfig, BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use call::{
    AttemptObserver, Attempted, CallError, CallLimits, Resilience, RetryDecision, RetryPolicy,
    RetryRefusal,
};
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
}
