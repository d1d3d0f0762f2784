//! Waiting for conditions: poll with a deadline, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, or panics after `within` naming `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > within {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
