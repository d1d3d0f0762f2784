//! A sliding time window of two counters, in buckets: the retry budget counts requests and
//! retries in it, the breaker counts calls and failures.
//!
//! Time is tokio's, so tests with paused time move the window deterministically.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slot of time this bucket currently holds (`elapsed / bucket width`).
    epoch: u64,
    first: u64,
    second: u64,
}

/// Two counts over the last `window`, with a resolution of a tenth of it.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    origin: Instant,
    bucket_width: Duration,
    buckets: [Bucket; BUCKETS],
}

impl SlidingWindow {
    pub fn new(window: Duration) -> Self {
        let bucket_width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            origin: Instant::now(),
            bucket_width,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn current_epoch(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        (elapsed.as_nanos() / self.bucket_width.as_nanos()) as u64
    }

    fn current_bucket(&mut self) -> &mut Bucket {
        let epoch = self.current_epoch();
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                first: 0,
                second: 0,
            };
        }
        bucket
    }

    pub fn add_first(&mut self, n: u64) {
        self.current_bucket().first += n;
    }

    pub fn add_second(&mut self, n: u64) {
        self.current_bucket().second += n;
    }

    /// `(first, second)` summed over the buckets still inside the window.
    pub fn totals(&self) -> (u64, u64) {
        let epoch = self.current_epoch();
        self.buckets
            .iter()
            .filter(|bucket| {
                epoch.saturating_sub(bucket.epoch) < BUCKETS as u64 && bucket.epoch <= epoch
            })
            .fold((0, 0), |(first, second), bucket| {
                (first + bucket.first, second + bucket.second)
            })
    }

    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
        self.origin = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_expire_after_the_window() {
        let mut window = SlidingWindow::new(Duration::from_secs(10));
        window.add_first(3);
        window.add_second(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        window.add_first(2);
        assert_eq!(window.totals(), (5, 1));
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(window.totals(), (2, 0), "the first bucket left the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(window.totals(), (0, 0));
    }
}
