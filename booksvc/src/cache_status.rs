//! RFC 9211 `Cache-Status` values, with the cache name `booksvc`, and the `Age` header.
//!
//! A read is either fresh, forwarded to storagesvc and then stored, or a fallback, served
//! from the last-good store because the upstream failed. A write is always forwarded.

use std::time::Duration;

/// The cache name in every `Cache-Status` value.
pub const CACHE_NAME: &str = "booksvc";

/// Forwarded to the upstream (nothing usable was selected: we never answer from the store
/// while the upstream works) and stored for later.
pub fn forwarded_and_stored() -> String {
    format!("{CACHE_NAME}; fwd=miss; stored")
}

/// Forwarded, but the response was not stored (a non-2xx answer, for example).
pub fn forwarded_not_stored() -> String {
    format!("{CACHE_NAME}; fwd=miss")
}

/// Forwarded because of the method: writes are never answered by, nor stored in, the cache.
pub fn forwarded_uncacheable() -> String {
    format!("{CACHE_NAME}; fwd=method")
}

/// Served from the store because the upstream failed; `detail` says how.
pub fn stale_hit(detail: &str) -> String {
    format!("{CACHE_NAME}; hit; detail={detail}")
}

/// `Age` in whole seconds, as RFC 9111 requires.
pub fn age_seconds(age: Duration) -> String {
    age.as_secs().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_rfc_9211() {
        assert_eq!(forwarded_and_stored(), "booksvc; fwd=miss; stored");
        assert_eq!(forwarded_not_stored(), "booksvc; fwd=miss");
        assert_eq!(forwarded_uncacheable(), "booksvc; fwd=method");
        assert_eq!(
            stale_hit("upstream-unavailable"),
            "booksvc; hit; detail=upstream-unavailable"
        );
    }

    #[test]
    fn age_is_whole_seconds() {
        assert_eq!(age_seconds(Duration::from_millis(2999)), "2");
        assert_eq!(age_seconds(Duration::ZERO), "0");
    }
}
