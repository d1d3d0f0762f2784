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
pub use retry_after::parse_retry_after;
