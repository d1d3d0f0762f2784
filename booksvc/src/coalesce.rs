//! Coalescing: concurrent identical reads share one upstream call.
//!
//! When a hundred clients ask for the same list at once (a cold start, or the moment a
//! stored answer is refreshed), storagesvc sees one request, and all hundred share it.
//! The first caller starts the call and registers it under the key; callers arriving while
//! it runs join it. The call itself runs on a task of its own (see `read_path`), so it goes
//! on after its callers were answered from the store, and removes its entry when it ends.
//!
//! **An entry is removed only by the call that made it.** Each entry has an id; a call
//! that ends removes the key's entry only if it still carries that call's id, so the end of
//! an earlier call can never remove a later one's (and make the next caller start a third).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::last_good::CacheKey;

/// Which call made an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryId(u64);

struct Entry<C> {
    id: EntryId,
    call: C,
}

/// In-flight calls by key; `C` is a handle to a call that every caller can clone.
pub struct Coalescer<C> {
    in_flight: Mutex<HashMap<CacheKey, Entry<C>>>,
    next_id: AtomicU64,
}

impl<C: Clone> Coalescer<C> {
    pub fn new() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry<C>>> {
        // Each update is one insert or remove, so a poisoned map is still consistent.
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The call in flight for `key`, or the one `start` makes (given the id its entry is
    /// registered under, to pass to [`finish`](Self::finish) when it ends).
    pub fn join_or_start(&self, key: &CacheKey, start: impl FnOnce(EntryId) -> C) -> C {
        let mut in_flight = self.lock();
        match in_flight.get(key) {
            Some(entry) => entry.call.clone(),
            None => self.start(&mut in_flight, key, start),
        }
    }

    /// Like [`join_or_start`](Self::join_or_start), but joins a call in flight only if
    /// `may_join` agrees (asked under the lock that decides, so nothing can change between
    /// the look and the join). `None`: a call is in flight and `may_join` said no; nothing
    /// was started.
    pub fn join_if_or_start(
        &self,
        key: &CacheKey,
        may_join: impl FnOnce() -> bool,
        start: impl FnOnce(EntryId) -> C,
    ) -> Option<C> {
        let mut in_flight = self.lock();
        if let Some(entry) = in_flight.get(key) {
            return may_join().then(|| entry.call.clone());
        }
        Some(self.start(&mut in_flight, key, start))
    }

    /// Starts a call for `key` and registers it, under the lock the caller holds.
    fn start(
        &self,
        in_flight: &mut HashMap<CacheKey, Entry<C>>,
        key: &CacheKey,
        start: impl FnOnce(EntryId) -> C,
    ) -> C {
        let id = EntryId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let call = start(id);
        in_flight.insert(
            key.clone(),
            Entry {
                id,
                call: call.clone(),
            },
        );
        call
    }

    /// The call `id` ended: its entry goes, and any later call's entry stays.
    pub fn finish(&self, key: &CacheKey, id: EntryId) {
        let mut in_flight = self.lock();
        if in_flight.get(key).is_some_and(|entry| entry.id == id) {
            in_flight.remove(key);
        }
    }

    /// Calls in flight (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<C: Clone> Default for Coalescer<C> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn key() -> CacheKey {
        CacheKey::new("GET", "/books?limit=100&offset=0")
    }

    #[test]
    fn callers_while_a_call_is_in_flight_share_it() {
        let coalescer = Coalescer::new();
        let started = Cell::new(0);
        let calls: Vec<u32> = (0..100)
            .map(|n| {
                coalescer.join_or_start(&key(), |_| {
                    started.set(started.get() + 1);
                    n
                })
            })
            .collect();
        assert_eq!(started.get(), 1, "one call for a hundred callers");
        assert!(calls.iter().all(|call| *call == 0), "all share the first");
    }

    #[test]
    fn a_call_in_flight_is_joined_only_when_allowed() {
        let coalescer = Coalescer::new();
        coalescer.join_or_start(&key(), |_| 1);
        let asked = Cell::new(false);
        let declined = coalescer.join_if_or_start(
            &key(),
            || {
                asked.set(true);
                false
            },
            |_| 2,
        );
        assert!(asked.get(), "asked, because a call was in flight");
        assert_eq!(declined, None, "and nothing started");
        assert_eq!(coalescer.join_if_or_start(&key(), || true, |_| 3), Some(1));

        // With nothing in flight, there is nothing to decline: a call starts.
        let other = CacheKey::new("GET", "/books/7");
        assert_eq!(coalescer.join_if_or_start(&other, || false, |_| 4), Some(4));
    }

    #[test]
    fn a_finished_call_is_not_joined() {
        let coalescer = Coalescer::new();
        let mut first_id = None;
        coalescer.join_or_start(&key(), |id| {
            first_id = Some(id);
            1
        });
        coalescer.finish(&key(), first_id.unwrap());
        assert_eq!(coalescer.len(), 0);
        assert_eq!(coalescer.join_or_start(&key(), |_| 2), 2, "a new call");
    }

    #[test]
    fn a_call_removes_only_its_own_entry() {
        let coalescer = Coalescer::new();
        let mut ids = Vec::new();
        coalescer.join_or_start(&key(), |id| {
            ids.push(id);
            1
        });
        coalescer.finish(&key(), ids[0]);
        coalescer.join_or_start(&key(), |id| {
            ids.push(id);
            2
        });
        assert_ne!(ids[0], ids[1]);
        // The first call's end is reported again, late: the second call's entry stays.
        coalescer.finish(&key(), ids[0]);
        assert_eq!(coalescer.join_or_start(&key(), |_| 3), 2, "still joined");
        coalescer.finish(&key(), ids[1]);
        assert_eq!(coalescer.len(), 0);
    }

    #[test]
    fn different_keys_are_not_shared() {
        let coalescer = Coalescer::new();
        let a = coalescer.join_or_start(&CacheKey::new("GET", "/books/1"), |_| 1);
        let b = coalescer.join_or_start(&CacheKey::new("GET", "/books/2"), |_| 2);
        assert_eq!((a, b), (1, 2));
    }
}
