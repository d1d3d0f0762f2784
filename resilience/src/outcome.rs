//! What one attempt's result means to the breaker, the retry loop and the concurrency
//! limit: the outcome table of `docs/architecture.md`, written once as data so the whole
//! table can be read (and tested) in one place.

use std::time::Duration;

use http::StatusCode;

/// The class of one upstream attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx or 3xx.
    Success,
    /// A 2xx whose body is unusable (not valid JSON, or over the size cap): the service
    /// is broken even though its status says otherwise.
    InvalidResponse,
    /// A 4xx other than 401, 403 and 429: the request was wrong, not the service.
    Rejected,
    /// A 401 or 403: the service refuses our own credentials. The caller is misconfigured;
    /// the same request will not do better, but the calls are failing all the same.
    CredentialsRefused,
    /// A 5xx.
    ServerError,
    /// A 429; `retry_after` is the upstream's `Retry-After`, when it sent one.
    Throttled { retry_after: Option<Duration> },
    /// Connect error, reset, DNS failure: the service could not be reached or dropped us.
    Unreachable,
    /// The attempt did not finish within its timeout.
    TimedOut,
    /// Our own caller went away; says nothing about the upstream.
    Cancelled,
}

/// What the breaker learns from an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerVerdict {
    Success,
    Failure,
    /// Not recorded at all.
    Ignored,
}

impl AttemptOutcome {
    /// Classifies an HTTP response status (the caller extracts `Retry-After` for 429).
    pub fn from_status(status: StatusCode, retry_after: Option<Duration>) -> Self {
        match status.as_u16() {
            429 => AttemptOutcome::Throttled { retry_after },
            401 | 403 => AttemptOutcome::CredentialsRefused,
            400..=499 => AttemptOutcome::Rejected,
            500..=599 => AttemptOutcome::ServerError,
            // 1xx never reaches here through an HTTP client; 2xx and 3xx are successes.
            _ => AttemptOutcome::Success,
        }
    }

    pub fn breaker_verdict(self) -> BreakerVerdict {
        match self {
            AttemptOutcome::Success | AttemptOutcome::Rejected => BreakerVerdict::Success,
            AttemptOutcome::InvalidResponse
            | AttemptOutcome::CredentialsRefused
            | AttemptOutcome::ServerError
            | AttemptOutcome::Throttled { .. }
            | AttemptOutcome::Unreachable
            | AttemptOutcome::TimedOut => BreakerVerdict::Failure,
            AttemptOutcome::Cancelled => BreakerVerdict::Ignored,
        }
    }

    /// Whether another attempt may help (budget, breaker and deadline permitting).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            AttemptOutcome::InvalidResponse
                | AttemptOutcome::ServerError
                | AttemptOutcome::Throttled { .. }
                | AttemptOutcome::Unreachable
                | AttemptOutcome::TimedOut
        )
    }

    /// Whether the upstream is likely overloaded: it timed out, throttled us or failed with
    /// a 5xx. The concurrency limit shrinks on these; a refused connection or a broken
    /// answer says nothing about load.
    pub fn is_overload_signal(self) -> bool {
        matches!(
            self,
            AttemptOutcome::TimedOut
                | AttemptOutcome::Throttled { .. }
                | AttemptOutcome::ServerError
        )
    }

    /// A delay the upstream asked for, which replaces the backoff when it fits the deadline.
    pub fn requested_delay(self) -> Option<Duration> {
        match self {
            AttemptOutcome::Throttled { retry_after } => retry_after,
            _ => None,
        }
    }

    /// The label used in metrics and logs.
    pub fn class(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::InvalidResponse => "invalid_response",
            AttemptOutcome::Rejected => "client_error",
            AttemptOutcome::CredentialsRefused => "credentials_refused",
            AttemptOutcome::ServerError => "server_error",
            AttemptOutcome::Throttled { .. } => "throttled",
            AttemptOutcome::Unreachable => "unreachable",
            AttemptOutcome::TimedOut => "timeout",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptOutcome::*;
    use BreakerVerdict::{Failure, Ignored};

    const SECOND: Option<Duration> = Some(Duration::from_secs(1));

    /// The outcome table, row by row: (outcome, breaker, retried).
    #[test]
    fn classification_table() {
        let table = [
            (from(200), BreakerVerdict::Success, false),
            (from(204), BreakerVerdict::Success, false),
            (from(304), BreakerVerdict::Success, false),
            (InvalidResponse, Failure, true),
            (from(500), Failure, true),
            (from(502), Failure, true),
            (from(503), Failure, true),
            (
                Throttled {
                    retry_after: SECOND,
                },
                Failure,
                true,
            ),
            (from(401), Failure, false),
            (from(403), Failure, false),
            (from(400), BreakerVerdict::Success, false),
            (from(404), BreakerVerdict::Success, false),
            (from(422), BreakerVerdict::Success, false),
            (Unreachable, Failure, true),
            (TimedOut, Failure, true),
            (Cancelled, Ignored, false),
        ];
        for (outcome, verdict, retried) in table {
            assert_eq!(outcome.breaker_verdict(), verdict, "{outcome:?}");
            assert_eq!(outcome.is_retryable(), retried, "{outcome:?}");
        }
    }

    #[test]
    fn only_429_carries_the_upstream_delay() {
        let throttled = AttemptOutcome::from_status(StatusCode::TOO_MANY_REQUESTS, SECOND);
        assert_eq!(throttled.requested_delay(), SECOND);
        assert_eq!(
            AttemptOutcome::from_status(StatusCode::SERVICE_UNAVAILABLE, SECOND).requested_delay(),
            None
        );
    }

    fn from(status: u16) -> AttemptOutcome {
        AttemptOutcome::from_status(StatusCode::from_u16(status).unwrap(), None)
    }
}
