//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, header};

/// The delay a `Retry-After` header asks for, measured from `now`. A date in the past
/// means "now" (zero); a malformed value is ignored (`None`).
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
    fn absent_or_malformed_is_none() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
        for bad in ["soon", "-1", "1.5", "Tomorrow"] {
            assert_eq!(parse_retry_after(&headers(bad), now), None, "{bad}");
        }
    }
}
