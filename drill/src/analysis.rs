//! From a run's samples to the figures of the report, and the checks of booksvc's
//! promises.

use std::time::Duration;

use crate::metrics::BreakerTimeline;
use crate::run::{Reached, ScenarioRun, TargetRun};
use crate::sample::{Class, Sample};
use crate::schedule::{Phase, Plan};
use crate::stats::Summary;

/// The breaker state `breaker_state` reports when open.
const OPEN: i64 = 2;

/// The figures of one target in one scenario.
#[derive(Debug)]
pub struct Findings {
    pub phases: Vec<(Phase, Summary)>,
    /// From the fault's injection to the first stale answer.
    pub first_stale: Option<Duration>,
    /// From the moment the faulted services were healthy again to the first fresh answer
    /// after the repair; zero when it came before the drill saw them healthy.
    pub fresh_after_healthy: Option<Duration>,
    /// Requests due during the fault while the breaker was certainly open.
    pub while_open: Option<Summary>,
}

impl Findings {
    pub fn phase(&self, phase: Phase) -> Summary {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, summary)| summary.clone())
            .unwrap_or_default()
    }
}

pub fn findings(run: &ScenarioRun, target: &TargetRun) -> Findings {
    let samples = &target.samples;
    let timing = &target.timing;
    Findings {
        phases: by_phase(&run.plan, samples),
        first_stale: first_answer(samples, Class::Stale, timing.fault_at)
            .map(|at| at.saturating_sub(timing.fault_at)),
        fresh_after_healthy: timing.healthy_at.and_then(|healthy| {
            first_answer(samples, Class::Fresh, timing.repair_at)
                .map(|at| at.saturating_sub(healthy))
        }),
        while_open: target
            .breaker
            .as_ref()
            .map(|breaker| while_open(&run.plan, breaker, samples)),
    }
}

fn by_phase(plan: &Plan, samples: &[Sample]) -> Vec<(Phase, Summary)> {
    Phase::ALL
        .iter()
        .map(|phase| {
            let summary = Summary::of(samples.iter().filter(|s| plan.phase_of(s.due) == *phase));
            (*phase, summary)
        })
        .collect()
}

/// When the first answer of `class` completed at or after `since`.
fn first_answer(samples: &[Sample], class: Class, since: Duration) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| s.class() == class)
        .map(Sample::answered)
        .filter(|answered| *answered >= since)
        .min()
}

fn while_open(plan: &Plan, breaker: &BreakerTimeline, samples: &[Sample]) -> Summary {
    Summary::of(
        samples.iter().filter(|s| {
            plan.phase_of(s.due) == Phase::Fault && breaker.state_at(s.due) == Some(OPEN)
        }),
    )
}

/// One of booksvc's promises, judged.
#[derive(Debug)]
pub struct Check {
    pub promise: String,
    pub measured: String,
    pub met: bool,
}

/// booksvc's promises in the scenarios that have them (see the acceptance list).
pub fn checks(run: &ScenarioRun, target: &TargetRun, findings: &Findings) -> Vec<Check> {
    let fault = findings.phase(Phase::Fault);
    let mut checks = vec![Check {
        promise: "100% 2xx during the fault".into(),
        measured: format!(
            "{:.2}% ({} of {})",
            fault.percent(fault.ok),
            fault.ok,
            fault.sent
        ),
        met: fault.sent > 0 && fault.ok == fault.sent,
    }];
    checks.push(within(
        "first stale answer ≤ 1.5 s after the fault",
        findings.first_stale,
        Duration::from_millis(1500),
    ));
    checks.push(within(
        "fresh again ≤ 3 s after the database is healthy",
        findings.fresh_after_healthy,
        Duration::from_secs(3),
    ));
    if let Some(open) = &findings.while_open {
        checks.push(Check {
            promise: "p99 ≤ 5 ms while the breaker is open".into(),
            measured: if open.sent == 0 {
                "the breaker was never seen open".into()
            } else {
                format!("{} over {} requests", ms(open.p99), open.sent)
            },
            met: open.sent > 0 && open.p99 <= Duration::from_millis(5),
        });
    }
    // "At most 40 in a 30 s fault", in proportion for other fault durations.
    let allowed = (40.0 * run.plan.fault.as_secs_f64() / 30.0).round() as u64;
    let (measured, met) = match &target.reached {
        Reached::Counted(count) => (count.total.to_string(), count.total <= allowed),
        Reached::Stopped => ("0 (storagesvc was stopped)".to_owned(), true),
        Reached::Unknown(why) => (format!("unknown: {why}"), false),
    };
    checks.push(Check {
        promise: format!("≤ {allowed} requests reach storagesvc during the fault"),
        measured,
        met,
    });
    checks
}

fn within(promise: &str, measured: Option<Duration>, bound: Duration) -> Check {
    Check {
        promise: promise.into(),
        measured: measured.map_or_else(|| "never".into(), secs),
        met: measured.is_some_and(|took| took <= bound),
    }
}

/// Milliseconds with two decimals below 10 ms, else whole.
pub fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::run::{Target, Timing};
    use crate::scenario::Scenario;

    fn plan() -> Plan {
        Plan {
            rate: 10,
            baseline: Duration::from_secs(2),
            fault: Duration::from_secs(3),
            recovery: Duration::from_secs(3),
        }
    }

    /// A request due at `due_ms`, answered `took_ms` later.
    fn sample(due_ms: u64, took_ms: u64, class: Class) -> Sample {
        let (status, cache_status) = match class {
            Class::Fresh => (Some(200), "booksvc; fwd=miss; stored"),
            Class::Stale => (Some(200), "booksvc; hit; detail=upstream-unavailable"),
            Class::Error => (Some(503), ""),
        };
        Sample {
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(took_ms),
            send_lag: Duration::ZERO,
            status,
            cache_status: Some(cache_status.to_owned()),
            error: None,
        }
    }

    /// The story of a database stop: fresh until 2 s; requests due in the first 0.5 s of
    /// the fault take 400 ms and then come stale; the breaker is open from 2.6 s to 5.2 s
    /// and those requests take 1 ms; fresh again from 5.5 s.
    pub(crate) fn story() -> ScenarioRun {
        let plan = plan();
        let samples = (0..plan.request_count())
            .map(|i| {
                let due = plan.due(i).as_millis() as u64;
                match due {
                    0..2000 => sample(due, 2, Class::Fresh),
                    2000..2500 => sample(due, 400, Class::Stale),
                    2500..5500 => sample(due, 1, Class::Stale),
                    _ => sample(due, 2, Class::Fresh),
                }
            })
            .collect();
        let breaker = BreakerTimeline(
            (0..80)
                .map(|tenth| {
                    let at = Duration::from_millis(tenth * 100);
                    (at, if (26..52).contains(&tenth) { OPEN } else { 0 })
                })
                .collect(),
        );
        ScenarioRun {
            scenario: Scenario::DatabaseStop,
            plan,
            targets: vec![TargetRun {
                timing: Timing {
                    fault_at: Duration::from_millis(2000),
                    fault_done: Duration::from_millis(2100),
                    repair_at: Duration::from_millis(5000),
                    repair_done: Duration::from_millis(5100),
                    healthy_at: Some(Duration::from_millis(5400)),
                },
                target: Target {
                    name: "booksvc".into(),
                    url: String::new(),
                    upstream_metrics: String::new(),
                    upstream_service: "storagesvc".into(),
                    breaker_metrics: Some(String::new()),
                },
                samples,
                breaker: Some(breaker),
                transitions: None,
                reached: Reached::Counted(crate::metrics::ApiRequests { total: 4, ok: 0 }),
            }],
        }
    }

    #[test]
    fn requests_are_counted_in_the_phase_they_were_due_in() {
        let run = story();
        let found = findings(&run, &run.targets[0]);
        let counts: Vec<_> = found
            .phases
            .iter()
            .map(|(p, s)| (*p, s.sent, s.stale))
            .collect();
        assert_eq!(
            counts,
            [
                (Phase::Baseline, 20, 0),
                (Phase::Fault, 30, 30),
                (Phase::Recovery, 30, 5)
            ]
        );
        // The 400 ms stalls are in the fault phase, where they were due.
        // Histograms keep three significant digits.
        let about = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms / 1000.0;
        assert!(about(found.phase(Phase::Fault).max, 400.0));
        assert!(about(found.phase(Phase::Baseline).max, 2.0));
    }

    #[test]
    fn first_stale_and_fresh_again_are_measured_from_the_fault_and_from_healthy() {
        let run = story();
        let found = findings(&run, &run.targets[0]);
        // Due at 2.0 s, answered 400 ms later.
        assert_eq!(found.first_stale, Some(Duration::from_millis(400)));
        // Healthy at 5.4 s; the first fresh answer is due at 5.5 s and takes 2 ms.
        assert_eq!(found.fresh_after_healthy, Some(Duration::from_millis(102)));
    }

    #[test]
    fn only_requests_due_while_the_breaker_was_surely_open_count_as_open() {
        let run = story();
        let found = findings(&run, &run.targets[0]);
        let open = found.while_open.expect("booksvc has a breaker");
        // Readings say open from 2.6 s to 5.1 s, so requests due in [2.6, 5.1) count, and
        // of those only the fault phase's, which ends at 5.0 s.
        assert_eq!(open.sent, 24);
        assert!(open.p99 >= Duration::from_millis(1) && open.p99 < Duration::from_micros(1_001));
    }

    #[test]
    fn the_story_meets_every_promise_and_a_slow_breaker_does_not() {
        let mut run = story();
        let found = findings(&run, &run.targets[0]);
        let judged = checks(&run, &run.targets[0], &found);
        assert_eq!(judged.len(), 5);
        assert!(judged.iter().all(|c| c.met), "{judged:#?}");

        // Answers from the open breaker at 6 ms miss the 5 ms p99.
        for sample in &mut run.targets[0].samples {
            if (2600..5000).contains(&(sample.due.as_millis() as u64)) {
                sample.latency = Duration::from_millis(6);
            }
        }
        let found = findings(&run, &run.targets[0]);
        let missed: Vec<_> = checks(&run, &run.targets[0], &found)
            .into_iter()
            .filter(|c| !c.met)
            .map(|c| c.promise)
            .collect();
        assert_eq!(missed, ["p99 ≤ 5 ms while the breaker is open"]);
    }

    #[test]
    fn an_error_during_the_fault_breaks_the_all_2xx_promise() {
        let mut run = story();
        run.targets[0].samples[25].status = Some(503);
        let found = findings(&run, &run.targets[0]);
        let all_2xx = &checks(&run, &run.targets[0], &found)[0];
        assert!(!all_2xx.met);
        assert_eq!(all_2xx.measured, "96.67% (29 of 30)");
    }

    #[test]
    fn no_stale_answer_is_never() {
        let mut run = story();
        for sample in &mut run.targets[0].samples {
            sample.cache_status = None;
        }
        let found = findings(&run, &run.targets[0]);
        assert_eq!(found.first_stale, None);
        assert!(!within("x", found.first_stale, Duration::from_secs(1)).met);
    }
}
