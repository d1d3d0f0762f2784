//! Configuration helpers shared by both services' `clap` definitions.
//!
//! Every setting is an environment variable (12-factor); `clap` gives `--help` with the
//! defaults and stops start-up with a message naming the variable when a value is invalid.

use std::time::Duration;

/// The longest duration any setting accepts. Every configured duration ends up added to a
/// clock (`Instant + Duration` panics on overflow, and `1000000000y` parses); no timeout,
/// interval or TTL here has a use beyond a year.
pub const LONGEST_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses a human duration (`500ms`, `2s`, `1m 30s`) for a `clap` argument.
///
/// A bare number is rejected rather than guessed at: `500` could mean seconds or
/// milliseconds, and a wrong guess would silently change a timeout by a factor of 1000.
/// A value beyond [`LONGEST_DURATION`] is refused (clap's message names the variable).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value.trim())
        .map_err(|err| format!("{err}; expected a duration such as `500ms` or `2s`"))?;
    if duration > LONGEST_DURATION {
        return Err(format!(
            "longer than the longest accepted duration, {}",
            humantime::format_duration(LONGEST_DURATION)
        ));
    }
    Ok(duration)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Settings every service has, flattened into each service's own `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log line format; `RUST_LOG` filters what is logged.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// How long in-flight requests may take to finish after SIGTERM before they are cut.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(" 1m 30s "), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn rejects_bare_numbers_and_words() {
        for bad in ["500", "soon", "", "-1s"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("expected a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_durations_no_clock_can_take() {
        assert_eq!(parse_duration("365days"), Ok(LONGEST_DURATION));
        for absurd in ["366days", "1000000y", "18446744073709551615s"] {
            let err = parse_duration(absurd).expect_err(absurd);
            assert!(err.contains("longest accepted"), "{absurd}: {err}");
        }
        // Whatever is accepted can be added to a clock.
        let longest = parse_duration("365days").unwrap();
        assert!(tokio::time::Instant::now().checked_add(longest).is_some());
    }
}
