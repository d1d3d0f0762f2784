//! One request of the drill, as it was sent and answered.

use std::time::Duration;

/// What a request got back, as its caller would judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A 2xx answer straight from the origin.
    Fresh,
    /// A 2xx answer from a stored copy (`Cache-Status` with a `hit` parameter).
    Stale,
    /// Anything else: a non-2xx status, a timeout, a refused connection.
    Error,
}

impl Class {
    pub fn of(status: Option<u16>, cache_status: Option<&str>) -> Class {
        match status {
            Some(200..=299) if cache_status.is_some_and(is_hit) => Class::Stale,
            Some(200..=299) => Class::Fresh,
            _ => Class::Error,
        }
    }
}

/// Whether a `Cache-Status` field (RFC 9211) says some cache answered from storage: one of
/// its list members carries the `hit` parameter.
pub fn is_hit(cache_status: &str) -> bool {
    cache_status.split(',').any(|member| {
        member.split(';').skip(1).any(|param| {
            param
                .split('=')
                .next()
                .is_some_and(|key| key.trim().eq_ignore_ascii_case("hit"))
        })
    })
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// When the request was due, from the start of the run.
    pub due: Duration,
    /// From when it was due (not when it was sent) to the end of its answer's body, so a
    /// stall in the target or in the drill itself is counted, not hidden.
    pub latency: Duration,
    /// How late the drill sent it; a self-check of the load generator.
    pub send_lag: Duration,
    /// `None` when no answer came: timeout, refused or reset connection.
    pub status: Option<u16>,
    pub cache_status: Option<String>,
    /// What went wrong when no status came.
    pub error: Option<String>,
}

impl Sample {
    pub fn class(&self) -> Class {
        Class::of(self.status, self.cache_status.as_deref())
    }

    /// When the answer was complete, from the start of the run.
    pub fn answered(&self) -> Duration {
        self.due + self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_parameter_marks_a_stored_answer() {
        assert!(is_hit("booksvc; hit; detail=upstream-unavailable"));
        assert!(is_hit("nginx; hit"));
        assert!(is_hit("edge; fwd=miss, booksvc; hit"));
        assert!(is_hit("booksvc;HIT"));
        assert!(!is_hit("booksvc; fwd=miss; stored"));
        assert!(!is_hit("nginx; fwd=bypass; stored"));
        // The name of a cache is not a parameter.
        assert!(!is_hit("hit; fwd=miss"));
        assert!(!is_hit(""));
    }

    #[test]
    fn answers_are_fresh_stale_or_errors() {
        assert_eq!(
            Class::of(Some(200), Some("booksvc; fwd=miss")),
            Class::Fresh
        );
        assert_eq!(Class::of(Some(200), None), Class::Fresh);
        assert_eq!(Class::of(Some(200), Some("booksvc; hit")), Class::Stale);
        assert_eq!(Class::of(Some(204), Some("nginx; hit")), Class::Stale);
        assert_eq!(Class::of(Some(503), Some("booksvc; hit")), Class::Error);
        assert_eq!(Class::of(Some(404), None), Class::Error);
        assert_eq!(Class::of(None, None), Class::Error);
    }
}
