//! Per-phase figures: counts by class and latency percentiles.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::sample::{Class, Sample};

/// The figures of one group of requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub stale: u64,
    pub errors: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Summary {
        let mut latencies = Latencies::new();
        let mut summary = Summary::default();
        for sample in samples {
            summary.sent += 1;
            match sample.class() {
                Class::Fresh => summary.ok += 1,
                Class::Stale => {
                    summary.ok += 1;
                    summary.stale += 1;
                }
                Class::Error => summary.errors += 1,
            }
            latencies.record(sample.latency);
        }
        summary.p50 = latencies.quantile(0.50);
        summary.p90 = latencies.quantile(0.90);
        summary.p99 = latencies.quantile(0.99);
        summary.max = latencies.max();
        summary
    }

    pub fn percent(&self, count: u64) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * count as f64 / self.sent as f64
        }
    }
}

/// How late the drill sent requests: (p99, max).
pub fn send_lag<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> (Duration, Duration) {
    let mut lags = Latencies::new();
    for sample in samples {
        lags.record(sample.send_lag);
    }
    (lags.quantile(0.99), lags.max())
}

/// Latencies in microseconds, to three significant digits (1 ms reads as 1.00 ms, 1 s as
/// 1.00 s), from 1 µs to an hour.
struct Latencies(Option<Histogram<u64>>);

impl Latencies {
    fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok())
    }

    fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(histogram) = &mut self.0 {
            histogram.saturating_record(micros.max(1));
        }
    }

    fn quantile(&self, quantile: f64) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |h| {
            if h.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_micros(h.value_at_quantile(quantile))
            }
        })
    }

    fn max(&self) -> Duration {
        self.0
            .as_ref()
            .map_or(Duration::ZERO, |h| Duration::from_micros(h.max()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(latency_ms: u64, status: Option<u16>, cache_status: &str) -> Sample {
        Sample {
            due: Duration::ZERO,
            latency: Duration::from_millis(latency_ms),
            send_lag: Duration::ZERO,
            status,
            cache_status: Some(cache_status.to_owned()),
            error: None,
        }
    }

    fn within_a_thousandth(actual: Duration, expected_ms: u64) -> bool {
        let expected = Duration::from_millis(expected_ms).as_secs_f64();
        (actual.as_secs_f64() - expected).abs() <= expected / 1000.0
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_milliseconds() {
        let samples: Vec<_> = (1..=1000)
            .map(|ms| sample(ms, Some(200), "x; fwd=miss"))
            .collect();
        let summary = Summary::of(&samples);
        assert_eq!(summary.sent, 1000);
        assert!(within_a_thousandth(summary.p50, 500), "{:?}", summary.p50);
        assert!(within_a_thousandth(summary.p90, 900), "{:?}", summary.p90);
        assert!(within_a_thousandth(summary.p99, 990), "{:?}", summary.p99);
        assert!(within_a_thousandth(summary.max, 1000), "{:?}", summary.max);
    }

    #[test]
    fn one_stall_in_a_hundred_is_the_p99_and_the_max() {
        let mut samples: Vec<_> = (0..98).map(|_| sample(1, Some(200), "x; hit")).collect();
        samples.push(sample(500, Some(200), "x; hit"));
        samples.push(sample(2_000, None, ""));
        let summary = Summary::of(&samples);
        assert!(within_a_thousandth(summary.p50, 1));
        assert!(within_a_thousandth(summary.p90, 1));
        assert!(within_a_thousandth(summary.p99, 500), "{:?}", summary.p99);
        assert!(within_a_thousandth(summary.max, 2_000));
    }

    #[test]
    fn stale_answers_count_as_2xx_and_errors_do_not() {
        let samples = [
            sample(1, Some(200), "booksvc; fwd=miss; stored"),
            sample(1, Some(200), "booksvc; hit; detail=upstream-unavailable"),
            sample(1, Some(503), "booksvc; fwd=miss"),
            sample(1, None, ""),
        ];
        let summary = Summary::of(&samples);
        assert_eq!(
            (summary.sent, summary.ok, summary.stale, summary.errors),
            (4, 2, 1, 2)
        );
        assert_eq!(summary.percent(summary.ok), 50.0);
        assert_eq!(summary.percent(summary.stale), 25.0);
    }

    #[test]
    fn no_requests_no_figures() {
        let summary = Summary::of(&[]);
        assert_eq!(summary, Summary::default());
        assert_eq!(summary.percent(0), 0.0);
    }
}
