//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.
//!
//! The value comes from another service and ends up added to a clock (the breaker's open
//! delay, the wait before a retry), so it is capped here, once, before anything uses it:
//! `Instant + Duration` panics on overflow, and `18446744073709551615` is valid
//! delta-seconds.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};

/// The longest delay a `Retry-After` is taken to ask for (the breaker's floor
/// and the retry wait are capped at 60 s). A longer one is read as this.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The delay a `Retry-After` header asks for, measured from `now`, at most
/// [`LONGEST_RETRY_AFTER`]. A date in the past means "now" (zero); delta-seconds too large
/// for any integer type and dates far in the future mean the cap; a malformed value is
/// ignored (`None`).
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Digits only: delta-seconds, however many (an overflow of u64 is "very long").
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(LONGEST_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let delay = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(delay.min(LONGEST_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, value.parse().unwrap());
        headers
    }

    #[test]
    fn delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(&headers("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(&headers(" 0 "), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn http_date_is_relative_to_now() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let later = headers("Sun, 06 Nov 1994 08:49:42 GMT");
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(5)));
        let past = headers("Sun, 06 Nov 1994 08:49:30 GMT");
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn huge_values_are_capped_not_overflowed() {
        let now = SystemTime::now();
        for huge in [
            "61",
            "18446744073709551615",
            "99999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(&headers(huge), now),
                Some(LONGEST_RETRY_AFTER),
                "{huge}"
            );
        }
        assert_eq!(
            parse_retry_after(&headers("60"), now),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn absent_or_malformed_is_none() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
        for bad in ["soon", "-1", "1.5", "Tomorrow"] {
            assert_eq!(parse_retry_after(&headers(bad), now), None, "{bad}");
        }
    }
}
