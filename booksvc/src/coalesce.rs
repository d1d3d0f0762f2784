//! Coalescing (DESIGN 4.1, step 1): concurrent identical reads share one upstream call.
//!
//! When a hundred clients ask for the same list at once (a cold start, or the moment a
//! cache expires), storagesvc sees one request, and all hundred get its answer. The first
//! caller's call is shared; callers arriving while it runs wait for it; the entry is gone
//! as soon as it finishes, so nothing is ever served from here after the fact.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::last_good::CacheKey;

/// In-flight calls by key.
pub struct Coalescer<T: Clone> {
    in_flight: Mutex<HashMap<CacheKey, Shared<BoxFuture<'static, T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    pub fn new() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `call` for `key`, unless a call for `key` is already running: then its result.
    pub async fn run<F>(self: &Arc<Self>, key: &CacheKey, call: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        match self.run_or_decline(key, call, || true).await {
            Ok(result) => result,
            // Never declined (`may_join` always agrees); were it, the call runs alone.
            Err(call) => call.await,
        }
    }

    /// Like [`run`](Self::run), but when a call for `key` is already running, joins it only
    /// if `may_join` says so (asked under the same lock that decides, so there is no window
    /// between looking and joining); otherwise `call` comes back unstarted.
    pub async fn run_or_decline<F>(
        self: &Arc<Self>,
        key: &CacheKey,
        call: F,
        may_join: impl FnOnce() -> bool,
    ) -> Result<T, F>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(running) = in_flight.get(key) {
                if !may_join() {
                    return Err(call);
                }
                running.clone()
            } else {
                let this = Arc::clone(self);
                let owned_key = key.clone();
                let shared = async move {
                    let result = call.await;
                    this.forget(&owned_key);
                    result
                }
                .boxed()
                .shared();
                in_flight.insert(key.clone(), shared.clone());
                shared
            }
        };
        // A waiter that gives up (its client hung up) removes the entry, so later callers
        // start afresh rather than join a call that may never finish: once every waiter is
        // gone, the shared call is dropped with the last of them.
        let mut guard = ForgetOnDrop {
            coalescer: self,
            key,
            armed: true,
        };
        let result = shared.await;
        guard.armed = false;
        Ok(result)
    }

    fn forget(&self, key: &CacheKey) {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

impl<T: Clone + Send + Sync + 'static> Default for Coalescer<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes the entry when a waiter is dropped before the call finished (see `run`).
struct ForgetOnDrop<'a, T: Clone + Send + Sync + 'static> {
    coalescer: &'a Coalescer<T>,
    key: &'a CacheKey,
    armed: bool,
}

impl<T: Clone + Send + Sync + 'static> Drop for ForgetOnDrop<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            self.coalescer.forget(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn counted_call(
        calls: &Arc<AtomicUsize>,
        answer: u32,
    ) -> impl Future<Output = u32> + Send + 'static {
        let calls = Arc::clone(calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_calls_share_one() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new("GET", "/books");
        let results = futures::future::join_all(
            (0..100).map(|n| coalescer.run(&key, counted_call(&calls, n))),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            results.iter().all(|r| *r == 0),
            "everyone gets the first call's answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_call_is_joined_only_when_allowed_and_a_declined_call_comes_back_unstarted() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new("GET", "/books");
        let first = coalescer.run(&key, counted_call(&calls, 1));
        let declined = async {
            // Let the first call start, then ask while it runs.
            tokio::task::yield_now().await;
            let asked = std::cell::Cell::new(false);
            let outcome = coalescer
                .run_or_decline(&key, counted_call(&calls, 2), || {
                    asked.set(true);
                    false
                })
                .await;
            assert!(asked.get(), "asked, because a call was running");
            outcome
        };
        let (first, declined) = tokio::join!(first, declined);
        assert_eq!(first, 1);
        let Err(unstarted) = declined else {
            panic!("joined although not allowed")
        };
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the declined call never ran"
        );
        assert_eq!(unstarted.await, 2, "and can still be run by the caller");

        // With nothing running there is nothing to decline: the call runs.
        let alone = coalescer.run_or_decline(&key, counted_call(&calls, 3), || false);
        assert!(matches!(alone.await, Ok(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_call_is_not_reused() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new("GET", "/books");
        assert_eq!(coalescer.run(&key, counted_call(&calls, 1)).await, 1);
        assert_eq!(coalescer.run(&key, counted_call(&calls, 2)).await, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_are_not_shared() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, b) = (
            CacheKey::new("GET", "/books/1"),
            CacheKey::new("GET", "/books/2"),
        );
        let (x, y) = tokio::join!(
            coalescer.run(&a, counted_call(&calls, 1)),
            coalescer.run(&b, counted_call(&calls, 2))
        );
        assert_eq!((x, y, calls.load(Ordering::SeqCst)), (1, 2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_abandoned_by_its_waiter_leaves_no_entry() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new("GET", "/books");
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            coalescer.run(&key, counted_call(&calls, 1)),
        );
        assert!(abandoned.await.is_err());
        assert_eq!(
            coalescer.run(&key, counted_call(&calls, 2)).await,
            2,
            "a new call, not a stuck one"
        );
    }
}
