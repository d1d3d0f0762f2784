//! The retry budget: retries may add at most `ratio` of the requests seen in a sliding
//! window, plus a small floor so a quiet service can still retry at all.
//!
//! Why: with a fixed retry count, every failing request becomes 1 + max-retries calls, so an
//! outage multiplies the load on the service that is already failing. A budget caps the
//! extra load at 20% (by default), however many requests arrive.

use std::sync::Mutex;
use std::time::Duration;

use super::window::SlidingWindow;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request in the window (0.2 = 20%).
    pub ratio: f64,
    /// Retries always allowed per window, whatever the traffic.
    pub min_per_window: u32,
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_window: 3,
            window: Duration::from_secs(10),
        }
    }
}

/// Counts requests and retries; shared by all calls to one upstream.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// first = requests, second = retries.
    window: Mutex<SlidingWindow>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self {
            config,
            window: Mutex::new(SlidingWindow::new(config.window)),
        }
    }

    /// Records an original request (not a retry).
    pub fn record_request(&self) {
        if let Ok(mut window) = self.window.lock() {
            window.add_first(1);
        }
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        let (requests, retries) = window.totals();
        let allowed = f64::from(self.config.min_per_window) + self.config.ratio * requests as f64;
        if (retries as f64) < allowed {
            window.add_second(1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig::default())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_floor_plus_a_fifth_of_requests() {
        let budget = budget();
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..1000).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 3 + 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_still_gets_the_floor() {
        let budget = budget();
        let granted = (0..10).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let budget = budget();
        for _ in 0..10 {
            budget.record_request();
        }
        assert_eq!((0..10).filter(|_| budget.try_retry()).count(), 5);
        assert!(!budget.try_retry());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(budget.try_retry(), "old retries left the window");
    }
}
