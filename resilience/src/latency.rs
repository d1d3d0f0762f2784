//! Recent healthy latency of one upstream, and the bounds derived from it.
//!
//! Two decisions depend on how fast the upstream usually is, not on a fixed guess:
//! - the **attempt timeout**: a hang is recognised after a few times the usual latency
//!   rather than after the configured ceiling, so the breaker hears of it within a fraction
//!   of a second even when only one call per key is in flight;
//! - the **stale-after bound**: how long a caller who has a stored answer waits for a fresh
//!   one before being given the stored one.
//!
//! Both are `factor × p99` of the recent samples, clamped to a floor and a cap
//! ([`DerivedBound`]). Until enough samples are in, the cap is used: a new process is as
//! patient as the fixed configuration.
//!
//! The samples are the durations of attempts that answered (2xx, or a 4xx, which is the
//! caller's fault) and of attempts that timed out, counted as their timeout. Counting the
//! timeouts keeps the adaptive timeout honest when the upstream becomes slower for good:
//! once more than 1% of attempts time out, p99 is the timeout itself and the next bound
//! grows by `factor`, up to the cap. A burst of fast errors is not counted, so it cannot
//! shrink the bounds.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::scaled;

/// Samples kept: at 200 calls a second, the last 2.5 s.
const CAPACITY: usize = 512;
/// p99 is recomputed after this many new samples (a selection among 512 values, a few
/// microseconds), not on every sample.
const RECOMPUTE_EVERY: usize = 32;
/// Fewer samples than this and p99 would be the maximum of a handful: not yet trusted.
/// With this many, p99 is the third slowest, so one or two timeouts at the onset of a hang
/// do not yet stretch the adaptive timeout (the breaker needs five in a row to open).
const MIN_SAMPLES: usize = 256;

/// A ring of the most recent latency samples and their p99; shared by every call to one
/// upstream.
#[derive(Debug, Default)]
pub struct LatencyTracker {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    samples: Vec<Duration>,
    /// Where the next sample goes once the ring is full.
    next: usize,
    since_recompute: usize,
    p99: Option<Duration>,
    /// The samples copied for the selection, kept so that a recomputation allocates
    /// nothing.
    scratch: Vec<Duration>,
}

impl LatencyTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every update leaves the ring consistent, so a poisoned lock is safe to use.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record(&self, took: Duration) {
        let mut ring = self.lock();
        if ring.samples.len() < CAPACITY {
            ring.samples.push(took);
        } else {
            let next = ring.next;
            ring.samples[next] = took;
            ring.next = (next + 1) % CAPACITY;
        }
        ring.since_recompute += 1;
        let enough = ring.samples.len() >= MIN_SAMPLES;
        if enough && (ring.p99.is_none() || ring.since_recompute >= RECOMPUTE_EVERY) {
            let ring = &mut *ring;
            ring.p99 = nearest_rank_p99(&ring.samples, &mut ring.scratch);
            ring.since_recompute = 0;
        }
    }

    /// The 99th percentile of the recent samples; `None` until there are enough.
    pub fn p99(&self) -> Option<Duration> {
        self.lock().p99
    }
}

/// The sample below which 99% of `samples` fall (nearest rank), found by selection in
/// `scratch` rather than by sorting: the lock is held for a few microseconds, not ten.
fn nearest_rank_p99(samples: &[Duration], scratch: &mut Vec<Duration>) -> Option<Duration> {
    scratch.clear();
    scratch.extend_from_slice(samples);
    let rank = (scratch.len() * 99).div_ceil(100).checked_sub(1)?;
    let (_, p99, _) = scratch.select_nth_unstable(rank);
    Some(*p99)
}

/// `factor × p99`, clamped to `[floor, cap]`; the cap while p99 is unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DerivedBound {
    pub factor: f64,
    pub floor: Duration,
    pub cap: Duration,
}

impl DerivedBound {
    pub fn from_p99(&self, p99: Option<Duration>) -> Duration {
        match p99 {
            // `max` then `min` rather than `clamp`, which panics were floor > cap.
            Some(p99) => scaled(p99, self.factor).max(self.floor).min(self.cap),
            None => self.cap,
        }
    }
}

/// When a late fresh answer gives way to the stored one (`STALE_AFTER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StaleAfter {
    /// Derived from recent healthy latency.
    Auto(DerivedBound),
    /// A fixed duration.
    Fixed(Duration),
    /// Never: a caller with a stored answer waits for the call, unless it fails.
    Off,
}

impl StaleAfter {
    /// `auto`: three times the recent p99, no sooner than 40 ms (a healthy answer that is
    /// merely unlucky is not given up on) and no later than 80 ms (a caller with an answer
    /// in hand never waits much longer than a healthy call takes).
    pub const AUTO: StaleAfter = StaleAfter::Auto(DerivedBound {
        factor: 3.0,
        floor: Duration::from_millis(40),
        cap: Duration::from_millis(80),
    });

    /// How long to wait for a fresh answer before serving the stored one; `None`: wait.
    pub fn bound(&self, latency: &LatencyTracker) -> Option<Duration> {
        match self {
            StaleAfter::Auto(bound) => Some(bound.from_p99(latency.p99())),
            StaleAfter::Fixed(after) => Some(*after),
            StaleAfter::Off => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tracker_with(samples: impl IntoIterator<Item = Duration>) -> LatencyTracker {
        let tracker = LatencyTracker::new();
        for sample in samples {
            tracker.record(sample);
        }
        tracker
    }

    #[test]
    fn p99_is_unknown_until_enough_samples_are_in() {
        let tracker = tracker_with(std::iter::repeat_n(ms(5), MIN_SAMPLES - 1));
        assert_eq!(tracker.p99(), None);
        tracker.record(ms(5));
        assert_eq!(tracker.p99(), Some(ms(5)));
    }

    #[test]
    fn p99_ignores_the_slowest_one_percent() {
        // 495 fast samples and 5 slow ones: the slow ones are under 1%.
        let tracker =
            tracker_with(std::iter::repeat_n(ms(4), 495).chain(std::iter::repeat_n(ms(900), 5)));
        // Recomputed every 32 samples: add enough to be sure it ran after the last.
        for _ in 0..RECOMPUTE_EVERY {
            tracker.record(ms(4));
        }
        assert_eq!(tracker.p99(), Some(ms(4)));
    }

    #[test]
    fn the_selected_p99_is_the_sorted_nearest_rank() {
        let mut scratch = Vec::new();
        assert_eq!(nearest_rank_p99(&[], &mut scratch), None);
        // Values in a scrambled order, with repeats, for several lengths.
        for len in [1_usize, 2, 99, 100, 101, 256, 512] {
            let samples: Vec<Duration> = (0..len)
                .map(|i| Duration::from_micros((i * 7919 % 613) as u64))
                .collect();
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let rank = (len * 99).div_ceil(100) - 1;
            assert_eq!(
                nearest_rank_p99(&samples, &mut scratch),
                Some(sorted[rank]),
                "{len} samples"
            );
        }
    }

    #[test]
    fn old_samples_leave_the_ring() {
        let tracker = tracker_with(std::iter::repeat_n(ms(300), CAPACITY));
        assert_eq!(tracker.p99(), Some(ms(300)));
        for _ in 0..CAPACITY {
            tracker.record(ms(3));
        }
        assert_eq!(tracker.p99(), Some(ms(3)));
    }

    #[test]
    fn a_derived_bound_is_clamped_to_its_floor_and_cap() {
        let bound = DerivedBound {
            factor: 4.0,
            floor: ms(50),
            cap: ms(500),
        };
        assert_eq!(bound.from_p99(None), ms(500), "the cap until p99 is known");
        assert_eq!(bound.from_p99(Some(ms(2))), ms(50), "never below the floor");
        assert_eq!(bound.from_p99(Some(ms(30))), ms(120));
        assert_eq!(
            bound.from_p99(Some(ms(400))),
            ms(500),
            "never above the cap"
        );
        assert_eq!(bound.from_p99(Some(Duration::MAX)), ms(500));
    }

    #[test]
    fn stale_after_auto_follows_recent_healthy_latency() {
        let fast = tracker_with(std::iter::repeat_n(ms(3), MIN_SAMPLES));
        assert_eq!(StaleAfter::AUTO.bound(&fast), Some(ms(40)), "the floor");
        let usual = tracker_with(std::iter::repeat_n(ms(20), MIN_SAMPLES));
        assert_eq!(StaleAfter::AUTO.bound(&usual), Some(ms(60)), "3 × p99");
        let slow = tracker_with(std::iter::repeat_n(ms(200), MIN_SAMPLES));
        assert_eq!(StaleAfter::AUTO.bound(&slow), Some(ms(80)), "the cap");
        assert_eq!(
            StaleAfter::AUTO.bound(&LatencyTracker::new()),
            Some(ms(80)),
            "the cap while nothing is known"
        );
        assert_eq!(StaleAfter::Fixed(ms(250)).bound(&fast), Some(ms(250)));
        assert_eq!(StaleAfter::Off.bound(&fast), None);
    }
}
