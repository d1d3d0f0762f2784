//! A warning that can recur on every request (a store refusing what it reads, a dependency
//! failing) logged at most once per interval, not once per request: the first is logged
//! at once, those that follow within the interval are counted, and the next line logged
//! says how many were held back. The metrics count every occurrence; the log keeps its
//! meaning (and its writer's queue) when the same thing goes wrong ten thousand times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One recurring warning's allowance. Shared by reference; lock-free.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    origin: Instant,
    /// Milliseconds after `origin` from which the next line may be logged.
    next_at: AtomicU64,
    held_back: AtomicU64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            origin: Instant::now(),
            next_at: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log this occurrence, saying that `n` like it were held back since the
    /// last line; `None`: hold it back (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let next_at = self.next_at.load(Ordering::Relaxed);
        // Of the occurrences that arrive together once the interval is over, exactly one
        // wins the exchange and is logged.
        if now_ms >= next_at
            && self
                .next_at
                .compare_exchange(
                    next_at,
                    now_ms.saturating_add(millis(self.every)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_the_rest_of_the_interval_held_back_and_counted_into_the_next() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = throttle.origin;
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(throttle.admit_at(at(0)), Some(0));
        assert_eq!(throttle.admit_at(at(1)), None);
        assert_eq!(throttle.admit_at(at(9)), None);
        assert_eq!(throttle.admit_at(at(10)), Some(2));
        assert_eq!(throttle.admit_at(at(11)), None);
        // A quiet spell: the next one is logged at once, with what was held back.
        assert_eq!(throttle.admit_at(at(60)), Some(1));
        assert_eq!(throttle.admit_at(at(60)), None);
    }

    #[test]
    fn of_many_threads_arriving_together_exactly_one_logs() {
        let throttle = std::sync::Arc::new(LogThrottle::new(Duration::from_secs(3600)));
        let logged: usize = (0..8)
            .map(|_| {
                let throttle = std::sync::Arc::clone(&throttle);
                std::thread::spawn(move || (0..1000).filter(|_| throttle.admit().is_some()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .sum();
        assert_eq!(logged, 1);
        assert_eq!(throttle.held_back.load(Ordering::Relaxed), 7999);
    }
}
