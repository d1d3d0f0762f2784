//! The key a response is kept under: method, path and normalised query.
//!
//! Two requests that mean the same thing must hit the same entry: query parameters are
//! sorted, so `?offset=0&limit=10` and `?limit=10&offset=0` share one.

/// A cache key, e.g. `GET /books?limit=10&offset=0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    pub fn new(method: &str, path: &str, query: Option<&str>) -> Self {
        let mut pairs: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .collect();
        pairs.sort_unstable();
        let mut key = format!("{method} {path}");
        if !pairs.is_empty() {
            key.push('?');
            key.push_str(&pairs.join("&"));
        }
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_order_and_empty_pairs_do_not_matter() {
        let a = CacheKey::new("GET", "/books", Some("offset=0&limit=10"));
        let b = CacheKey::new("GET", "/books", Some("limit=10&&offset=0&"));
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "GET /books?limit=10&offset=0");
    }

    #[test]
    fn no_query_and_empty_query_are_the_same() {
        assert_eq!(
            CacheKey::new("GET", "/books", None),
            CacheKey::new("GET", "/books", Some(""))
        );
        assert_eq!(CacheKey::new("GET", "/books", None).as_str(), "GET /books");
    }

    #[test]
    fn different_paths_and_values_differ() {
        assert_ne!(
            CacheKey::new("GET", "/books/1", None),
            CacheKey::new("GET", "/books/2", None)
        );
        assert_ne!(
            CacheKey::new("GET", "/books", Some("limit=1")),
            CacheKey::new("GET", "/books", Some("limit=2"))
        );
    }
}
