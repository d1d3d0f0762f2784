//! The key a response is kept under: the method and the canonical request target.
//!
//! Keys are built only from a parsed request (`request::BookQuery::cache_key`), never from
//! raw input, so two requests that mean the same thing share one entry and junk cannot make
//! new ones.

/// A cache key, e.g. `GET /books?limit=10&offset=0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// `target` is already canonical (see `request`).
    pub fn new(method: &str, target: &str) -> Self {
        Self(format!("{method} {target}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_method_and_the_target() {
        assert_eq!(
            CacheKey::new("GET", "/books?limit=10&offset=0").as_str(),
            "GET /books?limit=10&offset=0"
        );
        assert_ne!(
            CacheKey::new("GET", "/books/1"),
            CacheKey::new("GET", "/books/2")
        );
    }
}
