//! RFC 9211 `Cache-Status` values, with the cache name `booksvc`, and the `Age` header.
//!
//! A read is either fresh, forwarded to storagesvc and then stored, or a fallback, served
//! from the last-good store because the upstream failed. A write is always forwarded.

use std::time::Duration;

use shared::openapi::{HeaderSpec, string_enum_schema, string_schema};

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

/// `Cache-Status` as a document lists it: one of `values`, on every response of its
/// status if `required`.
pub fn header(values: Vec<String>, required: bool) -> HeaderSpec {
    let header = HeaderSpec::new(
        "Cache-Status",
        "RFC 9211, cache `booksvc`: `fwd=miss; stored` a fresh answer from storagesvc, kept; \
         `fwd=miss` a fresh answer not kept (a 4xx); `fwd=method` a write's answer, passed \
         on; `hit; detail=...` the last good answer, served because storagesvc failed \
         (`upstream-unavailable`), was late (`upstream-late`), the breaker is open \
         (`breaker-open`) or the concurrency limit refused the call (`shed`).",
        string_enum_schema(values),
    );
    if required { header.required() } else { header }
}

/// `Age` as a document lists it: on stored answers only.
pub fn age_header() -> HeaderSpec {
    HeaderSpec::new(
        "Age",
        "How old the stored answer is, in whole seconds; only on answers from the store \
         (`Cache-Status: booksvc; hit; ...`).",
        string_schema(Some("^[0-9]+$")),
    )
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
