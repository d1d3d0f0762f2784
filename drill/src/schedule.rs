//! When each request is due, and which phase a moment belongs to.
//!
//! The load is open-loop: request `i` is due at `i / rate` seconds after the start,
//! whatever happened to the ones before it. Everything is an offset from the start of the
//! run, so the schedule, the phases and the chart share one clock.

use std::fmt;
use std::time::Duration;

/// The three phases of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Baseline,
    Fault,
    Recovery,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Baseline, Phase::Fault, Phase::Recovery];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Baseline => "baseline",
            Phase::Fault => "fault",
            Phase::Recovery => "recovery",
        })
    }
}

/// How long each phase lasts and how many requests a second are due.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rate: u32,
    pub baseline: Duration,
    pub fault: Duration,
    pub recovery: Duration,
}

impl Plan {
    pub fn total(&self) -> Duration {
        self.baseline + self.fault + self.recovery
    }

    /// When the fault is injected.
    pub fn fault_start(&self) -> Duration {
        self.baseline
    }

    /// When the fault is repaired.
    pub fn fault_end(&self) -> Duration {
        self.baseline + self.fault
    }

    /// The phase a request due at `offset` belongs to. A request belongs to the phase in
    /// which it was due, not the one in which it was answered: a request sent just before
    /// the fault and stalled by it counts for the baseline, as it would for its caller.
    pub fn phase_of(&self, offset: Duration) -> Phase {
        if offset < self.fault_start() {
            Phase::Baseline
        } else if offset < self.fault_end() {
            Phase::Fault
        } else {
            Phase::Recovery
        }
    }

    /// How many requests the run sends: those due before the end.
    pub fn request_count(&self) -> u64 {
        // Exact for whole milliseconds; no float rounding at the phase boundaries.
        let millis = u64::try_from(self.total().as_millis()).unwrap_or(u64::MAX);
        (millis * u64::from(self.rate)).div_ceil(1000)
    }

    /// When request `index` is due.
    pub fn due(&self, index: u64) -> Duration {
        let nanos = u128::from(index) * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: u32, baseline: u64, fault: u64, recovery: u64) -> Plan {
        Plan {
            rate,
            baseline: Duration::from_secs(baseline),
            fault: Duration::from_secs(fault),
            recovery: Duration::from_secs(recovery),
        }
    }

    #[test]
    fn requests_are_due_at_a_constant_rate_from_zero() {
        let plan = plan(200, 20, 30, 30);
        assert_eq!(plan.due(0), Duration::ZERO);
        assert_eq!(plan.due(1), Duration::from_millis(5));
        assert_eq!(plan.due(200), Duration::from_secs(1));
        assert_eq!(plan.due(4_000), Duration::from_secs(20));
    }

    #[test]
    fn the_run_sends_rate_times_duration_requests_all_due_before_the_end() {
        let plan = plan(200, 20, 30, 30);
        assert_eq!(plan.request_count(), 16_000);
        assert!(plan.due(plan.request_count() - 1) < plan.total());
        assert_eq!(plan.due(plan.request_count()), plan.total());
    }

    #[test]
    fn a_rate_that_does_not_divide_a_second_keeps_its_average() {
        let plan = plan(3, 1, 1, 1);
        assert_eq!(plan.request_count(), 9);
        assert_eq!(plan.due(1), Duration::from_nanos(333_333_333));
        assert_eq!(plan.due(3), Duration::from_secs(1));
    }

    #[test]
    fn each_request_belongs_to_the_phase_it_was_due_in() {
        let plan = plan(10, 20, 30, 30);
        assert_eq!(plan.phase_of(Duration::ZERO), Phase::Baseline);
        assert_eq!(
            plan.phase_of(Duration::from_millis(19_999)),
            Phase::Baseline
        );
        assert_eq!(plan.phase_of(Duration::from_secs(20)), Phase::Fault);
        assert_eq!(plan.phase_of(Duration::from_millis(49_999)), Phase::Fault);
        assert_eq!(plan.phase_of(Duration::from_secs(50)), Phase::Recovery);
        assert_eq!(plan.phase_of(Duration::from_secs(79)), Phase::Recovery);
    }

    #[test]
    fn phases_split_the_requests_by_their_durations() {
        let plan = plan(200, 20, 30, 30);
        let mut counts = [0u64; 3];
        for i in 0..plan.request_count() {
            counts[plan.phase_of(plan.due(i)) as usize] += 1;
        }
        assert_eq!(counts, [4_000, 6_000, 6_000]);
    }
}
