//! Configuration helpers shared by both services' `clap` definitions.
//!
//! Every setting is an environment variable (12-factor); `clap` gives `--help` with the
//! defaults and stops start-up with a message naming the variable when a value is invalid.

use std::time::Duration;

use crate::server::ServerLimits;

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

/// [`parse_duration`], and longer than zero: a zero limit would fail every request, and a
/// zero interval would panic a timer (a background probe would die at start-up while the
/// service kept running without it).
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err("must be longer than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Which answers get an access log line (`finished processing request`, with the status
/// and the latency, in the request's span). A line per answer is the costliest thing a
/// proxied read does besides its I/O: formatting it, with its span, and writing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLog {
    /// Every answer.
    #[default]
    All,
    /// Only 4xx and 5xx answers; the request metrics still count every answer.
    Errors,
    /// None; the request metrics still count every answer.
    Off,
}

impl AccessLog {
    /// Whether an answer with `status` gets a line.
    pub fn logs(self, status: axum::http::StatusCode) -> bool {
        match self {
            AccessLog::All => true,
            AccessLog::Errors => status.is_client_error() || status.is_server_error(),
            AccessLog::Off => false,
        }
    }
}

/// Settings every service has, flattened into each service's own `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log line format; `RUST_LOG` filters what is logged.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Which answers get an access log line: `all`, `errors` (4xx and 5xx) or `off`.
    #[arg(long, env = "ACCESS_LOG", value_enum, default_value = "all")]
    pub access_log: AccessLog,

    /// How long in-flight requests may take to finish after SIGTERM before they are cut.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a client may take to send a request's headers (an idle keep-alive
    /// connection included) before its connection is closed: slow clients are cut off.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// Longest a request may take once its headers are in (body and handling); past it
    /// the answer is 504, since the request may have been applied.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// Open connections on the public port at most; further clients wait in the listen
    /// backlog until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Requests in progress on the public port at most; beyond it a request is answered
    /// 503 + Retry-After at once.
    #[arg(long, env = "MAX_REQUESTS_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_in_flight: u32,

    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(8192..=1024 * 1024))]
    pub max_header_bytes: u32,

    /// Largest request body, in bytes; a larger announced `Content-Length` is answered
    /// 413 before the body is read.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1..=64 * 1024 * 1024))]
    pub max_body_bytes: u32,

    /// Traces over OTLP (the standard OpenTelemetry variables).
    #[command(flatten)]
    pub traces: crate::telemetry::TracesArgs,
}

impl CommonArgs {
    /// The bounds of both listeners, as configured.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections as usize,
            max_requests_in_flight: self.max_requests_in_flight as usize,
            max_header_bytes: self.max_header_bytes as usize,
            max_body_bytes: self.max_body_bytes as usize,
            shutdown_grace: self.shutdown_grace,
            access_log: self.access_log,
        }
    }
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

    #[test]
    fn the_access_log_keeps_what_it_is_told_to() {
        use axum::http::StatusCode;
        for (mode, logged) in [
            (AccessLog::All, [true, true, true]),
            (AccessLog::Errors, [false, true, true]),
            (AccessLog::Off, [false, false, false]),
        ] {
            let statuses = [
                StatusCode::OK,
                StatusCode::NOT_FOUND,
                StatusCode::SERVICE_UNAVAILABLE,
            ];
            assert_eq!(statuses.map(|status| mode.logs(status)), logged, "{mode:?}");
        }
    }

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(
            parse_positive_duration("0s"),
            Err("must be longer than zero".to_owned())
        );
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[derive(Debug, clap::Parser)]
    struct OnlyCommon {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn server_limits_have_named_defaults_and_are_checked() {
        use clap::Parser;
        let limits = OnlyCommon::try_parse_from(["svc"])
            .unwrap()
            .common
            .server_limits();
        assert_eq!(limits, ServerLimits::default());
        let err = OnlyCommon::try_parse_from(["svc", "--max-header-bytes", "100"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAX_HEADER_BYTES"), "{err}");
        let err = OnlyCommon::try_parse_from(["svc", "--request-timeout", "1000000y"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REQUEST_TIMEOUT"), "{err}");
    }
}
