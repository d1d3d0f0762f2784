//! Writes invalidate (docs/architecture.md, "The last-good store"): after a successful write through any booksvc replica, no
//! replica serves a stored answer that may show the old state of a book.
//!
//! The signal is an **invalidation generation**: a random 64-bit token in Redis
//! (`<prefix>generation`), replaced by every successful write and announced on the pub/sub
//! channel `<prefix>invalidations`. Every stored answer carries the generation its replica
//! knew *before* the fetch started, signed with the rest of the entry, and is served only
//! while that is still the current generation. A write changes every list, and lists are
//! most of what is read, so one generation for the whole store is both simple and nearly as
//! selective as one per book: after a write, each key is stored again by its next fresh
//! read.
//!
//! Why this order of events is safe:
//! - A fetch that was under way while the write happened is tagged with the old generation
//!   and is not stored (the tag no longer matches when it completes), nor served later.
//! - The fresh path stays cheap: the generation is read from memory (an atomic), never from
//!   Redis; each replica's copy follows the channel, and is re-read from Redis whenever it
//!   (re)subscribes and on every fallback read from Redis (which reads the value with the
//!   entry, in one round trip).
//! - A random token, not a counter: if Redis evicts or loses the generation, a fresh random
//!   one is set, and no old entry can match it by accident.
//!
//! **Redis down at the moment of the write**: the writing replica at once adopts the new
//! generation locally, which drops its own memory copies and refuses its own Redis reads
//! (they might predate the write) until the new generation is in Redis. The background
//! listener keeps trying to set and publish it, and does so as soon as Redis answers; the
//! other replicas learn of the write then (they cannot sooner, as Redis was their only
//! link), and a replica that was disconnected re-reads the generation when it subscribes
//! again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// This replica's view of the invalidation generation.
#[derive(Debug, Default)]
pub(super) struct Generation {
    /// The generation answers fetched now are tagged with; 0 until it has been read from
    /// Redis (no Redis value is ever 0, so nothing from Redis matches before that).
    current: AtomicU64,
    /// A write's generation not yet in Redis (it was unreachable then).
    pending: Mutex<Option<u64>>,
    /// Wakes the listener to write `pending`, or to set a generation Redis lost.
    pub(super) wake: Notify,
}

impl Generation {
    pub(super) fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Makes `generation` the current one; true when it changed (memory copies must go).
    pub(super) fn adopt(&self, generation: u64) -> bool {
        self.current.swap(generation, Ordering::AcqRel) != generation
    }

    /// A new generation for a write that just succeeded: adopted at once, and pending until
    /// it is in Redis.
    pub(super) fn next(&self) -> u64 {
        let generation = random_generation();
        // Pending first, then current: `observe` checks them in the other order, so it
        // can never put an older generation from Redis over this one.
        if let Ok(mut pending) = self.pending.lock() {
            *pending = Some(generation);
        }
        self.adopt(generation);
        generation
    }

    /// Adopts the generation Redis holds, read while `seen` was current, unless this
    /// replica has changed its own since (a write) or has one not yet in Redis. `Some(true)`
    /// when adopted and different (memory copies must go), `None` when not adopted: then
    /// the value read from Redis must not be trusted either.
    pub(super) fn observe(&self, seen: u64, redis: u64) -> Option<bool> {
        if self.pending().is_some() {
            return None;
        }
        self.current
            .compare_exchange(seen, redis, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|previous| previous != redis)
    }

    pub(super) fn pending(&self) -> Option<u64> {
        self.pending.lock().ok().and_then(|pending| *pending)
    }

    /// `generation` is in Redis now: no longer pending, unless a later write replaced it.
    pub(super) fn written(&self, generation: u64) {
        if let Ok(mut pending) = self.pending.lock()
            && *pending == Some(generation)
        {
            *pending = None;
        }
    }
}

/// A random non-zero generation. It needs to be unique, not secret: entries are
/// authenticated by their signature.
pub(super) fn random_generation() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_adopts_a_new_generation_and_stays_pending_until_written() {
        let generation = Generation::default();
        assert_eq!(generation.current(), 0);
        assert!(generation.adopt(7));
        assert!(!generation.adopt(7), "the same generation changes nothing");

        let first = generation.next();
        assert_eq!(generation.current(), first);
        assert_ne!(first, 7);
        assert_eq!(generation.pending(), Some(first));

        let second = generation.next();
        generation.written(first);
        assert_eq!(
            generation.pending(),
            Some(second),
            "a later write stays pending"
        );
        generation.written(second);
        assert_eq!(generation.pending(), None);
    }

    #[test]
    fn redis_is_followed_unless_a_local_write_is_newer() {
        let generation = Generation::default();
        assert_eq!(generation.observe(0, 5), Some(true));
        assert_eq!(generation.observe(5, 5), Some(false));
        let seen = generation.current();
        let local = generation.next();
        assert_eq!(
            generation.observe(seen, 9),
            None,
            "a write since the read wins"
        );
        generation.written(local);
        assert_eq!(
            generation.observe(seen, 9),
            None,
            "read before the write: stale"
        );
        assert_eq!(generation.observe(local, 9), Some(true));
        assert_eq!(generation.current(), 9);
    }
}
