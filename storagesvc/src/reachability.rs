//! What storagesvc believes about its database right now: up, down, or not known yet.
//!
//! One value with two writers and two readers. The database watcher writes it after each
//! check on a connection of its own, and a request that has just found the database
//! unavailable writes "down" at once, so the next requests need not find out the slow way
//! (a full acquire or query bound each). The admission gate reads it to refuse requests at
//! once while the database is down; readiness reads it instead of pinging, so a probe never
//! waits behind a full pool, nor fails because the pool is busy.
//!
//! Only the watcher writes "up", and only once a pooled connection has served (its own
//! connection answering does not prove the pool can) and the pool is full again.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last verdict on the database, its gauge (`database_up`) and the last failure.
#[derive(Debug)]
pub struct Reachability {
    state: AtomicU8,
    /// The last failure seen, for the detailed readiness on the admin listener.
    last_error: Mutex<Option<String>>,
    gauge: Gauge<i64, AtomicI64>,
}

impl Reachability {
    /// Not known yet (the service has not reached its database), registered as
    /// `database_up` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let gauge = Gauge::default();
        registry.register(
            "database_up",
            "1 when the database answered the last check, 0 when it did not",
            gauge.clone(),
        );
        Self {
            state: AtomicU8::new(UNKNOWN),
            last_error: Mutex::new(None),
            gauge,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Down, as opposed to up or not known yet: at start-up nobody knows, and requests are
    /// let through (they fail fast anyway until the schema is migrated).
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    pub fn mark_up(&self) {
        self.gauge.set(1);
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            tracing::info!("database reachable");
        }
    }

    pub fn mark_down(&self, error: &dyn std::fmt::Display) {
        self.gauge.set(0);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        // Changes only: an outage is one warning, not one per request or check.
        if self.state.swap(DOWN, Ordering::AcqRel) == DOWN {
            tracing::debug!(%error, "database still unreachable");
        } else {
            tracing::warn!(%error, "database unreachable");
        }
    }

    /// The failure behind the last "down", if there was one.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_told_then_the_last_verdict() {
        let reachability = Reachability::new(&mut Registry::default());
        assert!(!reachability.is_up() && !reachability.is_down());
        reachability.mark_down(&"connection refused");
        assert!(reachability.is_down());
        assert_eq!(
            reachability.last_error().as_deref(),
            Some("connection refused")
        );
        reachability.mark_up();
        assert!(reachability.is_up() && !reachability.is_down());
    }
}
