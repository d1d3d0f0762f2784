//! Client-side balancing over a service's addresses, with outlier ejection.
//!
//! Every attempt goes to one address: the less loaded (fewer attempts in flight) of two
//! picked at random among those in rotation ("power of two choices": nearly as good as
//! asking every address, and no herd on the one that just looked idlest). An address is
//! ejected, taken out of rotation for a time that grows with each ejection up to a cap, as
//! soon as an attempt to it gets no answer at all (unreachable, reset, or cut off by its
//! timeout: a hung or partitioned replica, where every attempt sent costs a timeout and
//! stalls every read waiting on it), or when its answers fail several times in a row (5xx,
//! unusable: the replica answers, so one bad answer may be the request's, not its). When that time is up it is not put back on trust: it gets one
//! health probe, and only a passing probe returns it; a failing one ejects it again, for
//! longer. So a paused replica costs a few attempts, then a few probes a second at most.
//!
//! Ejection never takes more than a share of the addresses out of rotation, and never the
//! last one: when every replica fails, storagesvc as a whole is failing, which is the
//! service-wide breaker's to see, not the balancer's to hide.
//!
//! The addresses are the caller's (`K`: a socket address, a name); this module keeps their
//! state and never does I/O. The caller asks [`Balancer::pick`] for an address, reports the
//! attempt's result on the [`Pick`] it got, sends the probes [`Balancer::due_probes`] names
//! and reports them with [`Balancer::probed`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::{instant_after, scaled};

/// How the balancer ejects and returns addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancerConfig {
    /// Failed answers (5xx, unusable) in a row that eject an address.
    pub eject_after: u32,
    /// Attempts in a row without an answer (unreachable, reset, timed out) that eject it.
    pub eject_after_unanswered: u32,
    /// The first ejection's length; the n-th lasts n times this.
    pub base_ejection: Duration,
    /// No ejection lasts longer.
    pub max_ejection: Duration,
    /// At most this share of the addresses is out of rotation at once (ejected or waiting
    /// for its probe), rounded down; never all of them.
    pub max_ejected_share: f64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            eject_after: 3,
            eject_after_unanswered: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_share: 0.5,
        }
    }
}

impl BalancerConfig {
    /// The configuration's mistakes, named.
    pub fn validate(&self) -> Result<(), String> {
        if self.eject_after == 0 || self.eject_after_unanswered == 0 {
            return Err("ejecting after 0 failures would eject every address at once".into());
        }
        if self.base_ejection.is_zero() || self.base_ejection > self.max_ejection {
            return Err(format!(
                "the base ejection time ({:?}) must be above zero and at most the maximum ({:?})",
                self.base_ejection, self.max_ejection
            ));
        }
        if !(0.0..1.0).contains(&self.max_ejected_share) {
            return Err(format!(
                "the share of addresses that may be ejected ({}) must be in [0, 1)",
                self.max_ejected_share
            ));
        }
        Ok(())
    }
}

/// Where an address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Picked for attempts.
    InRotation,
    /// Out of rotation until the given moment.
    Ejected { until: Instant },
    /// Its ejection is over and its health probe is in flight.
    Probing,
}

/// One address and what the balancer knows of it.
#[derive(Debug)]
struct Endpoint {
    in_flight: Arc<AtomicUsize>,
    state: EndpointState,
    /// Failed attempts since the last success, and of those the ones without an answer.
    consecutive_failures: u32,
    consecutive_unanswered: u32,
    /// Ejections since it was last in rotation for `max_ejection` without one; the next
    /// ejection lasts `(ejections + 1) × base_ejection`.
    ejections: u32,
    /// When it last came back into rotation (or was first seen).
    in_rotation_since: Instant,
}

impl Endpoint {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            state: EndpointState::InRotation,
            consecutive_failures: 0,
            consecutive_unanswered: 0,
            ejections: 0,
            in_rotation_since: now,
        }
    }
}

/// How many addresses are in each state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalancerCounts {
    pub in_rotation: usize,
    pub ejected: usize,
    pub probing: usize,
    /// Ejections since the balancer was made.
    pub ejections_total: u64,
    /// Health probes asked for since the balancer was made.
    pub probes_total: u64,
}

/// The addresses of one service and their state. Cheap to share behind an `Arc`; every
/// method takes `&self`.
#[derive(Debug)]
pub struct Balancer<K> {
    config: BalancerConfig,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    /// In the order the addresses were given, so that a pick is reproducible under a seed.
    order: Vec<K>,
    endpoints: HashMap<K, Endpoint>,
    rng: fastrand::Rng,
    ejections_total: u64,
    probes_total: u64,
}

/// The address picked for one attempt. It counts as in flight until dropped; dropped
/// without a report (the attempt was cut off by its timeout) it counts as unanswered.
#[derive(Debug)]
#[must_use = "report the attempt's result on the pick"]
pub struct Pick<'a, K: Eq + Hash + Clone> {
    balancer: &'a Balancer<K>,
    key: K,
    reported: bool,
}

impl<K: Eq + Hash + Clone> Pick<'_, K> {
    /// The address to send the attempt to.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The attempt answered, and not with a failure.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.balancer
            .record(&self.key, Attempt::Succeeded, Instant::now());
    }

    /// The attempt was answered with a failure: a 5xx, an unusable answer.
    pub fn failed(mut self) {
        self.reported = true;
        self.balancer
            .record(&self.key, Attempt::Failed, Instant::now());
    }

    /// The attempt got no answer: unreachable, reset.
    pub fn unanswered(mut self) {
        self.reported = true;
        self.balancer
            .record(&self.key, Attempt::Unanswered, Instant::now());
    }
}

impl<K: Eq + Hash + Clone> Drop for Pick<'_, K> {
    fn drop(&mut self) {
        let state = self.balancer.lock();
        if let Some(endpoint) = state.endpoints.get(&self.key) {
            endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        drop(state);
        if !self.reported {
            self.balancer
                .record(&self.key, Attempt::Unanswered, Instant::now());
        }
    }
}

impl<K: Eq + Hash + Clone> Balancer<K> {
    /// A balancer over no address yet; [`Balancer::set`] gives it some.
    pub fn new(config: BalancerConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// The same with a seeded random source, for reproducible picks in tests.
    pub fn with_seed(config: BalancerConfig, seed: u64) -> Self {
        Self::with_rng(config, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(config: BalancerConfig, rng: fastrand::Rng) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                order: Vec::new(),
                endpoints: HashMap::new(),
                rng,
                ejections_total: 0,
                probes_total: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // The state is a few counters, consistent after every statement: a panic while the
        // lock was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The service's addresses, as just resolved: new ones join in rotation, known ones
    /// keep their state, missing ones are dropped (an attempt in flight to one finishes
    /// unrecorded). An empty list leaves the addresses as they were: a failed resolution
    /// is not a service without replicas.
    pub fn set(&self, keys: impl IntoIterator<Item = K>) {
        let now = Instant::now();
        let mut order: Vec<K> = Vec::new();
        for key in keys {
            if !order.contains(&key) {
                order.push(key);
            }
        }
        if order.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.endpoints.retain(|key, _| order.contains(key));
        for key in &order {
            state
                .endpoints
                .entry(key.clone())
                .or_insert_with(|| Endpoint::new(now));
        }
        state.order = order;
    }

    /// The addresses, in the order given.
    pub fn keys(&self) -> Vec<K> {
        self.lock().order.clone()
    }

    /// An address for the next attempt: the less loaded of two random picks among those in
    /// rotation. An address whose attempts hang collects attempts in flight, so it loses
    /// its pairs even before it is ejected. `None` only when there is no address at all.
    pub fn pick(&self) -> Option<Pick<'_, K>> {
        self.pick_except(None)
    }

    /// Like [`pick`](Self::pick), but not `avoid` while another address is in rotation:
    /// for the next attempt of a call whose last attempt went there (a slow attempt's
    /// twin, a failed one's retry).
    pub fn pick_except(&self, avoid: Option<&K>) -> Option<Pick<'_, K>> {
        let mut state = self.lock();
        let State {
            order,
            endpoints,
            rng,
            ..
        } = &mut *state;
        let in_rotation = |key: &&K| {
            endpoints
                .get(*key)
                .is_some_and(|endpoint| endpoint.state == EndpointState::InRotation)
        };
        let mut candidates: Vec<&K> = order.iter().filter(in_rotation).collect();
        if let Some(avoid) = avoid
            && candidates.iter().any(|key| *key != avoid)
        {
            candidates.retain(|key| *key != avoid);
        }
        if candidates.is_empty() {
            // Ejection never takes the last address, but one may be waiting for its probe
            // while the others are ejected: any address is better than none.
            candidates = order.iter().collect();
        }
        let load = |key: &K| {
            endpoints.get(key).map_or(usize::MAX, |endpoint| {
                endpoint.in_flight.load(Ordering::Relaxed)
            })
        };
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let first = rng.usize(..n);
                let mut second = rng.usize(..n - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (candidates[first], candidates[second]);
                if load(b) < load(a) { b } else { a }
            }
        };
        let key = chosen.clone();
        if let Some(endpoint) = endpoints.get(&key) {
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        drop(state);
        Some(Pick {
            balancer: self,
            key,
            reported: false,
        })
    }

    fn record(&self, key: &K, attempt: Attempt, now: Instant) {
        let config = self.config;
        let mut state = self.lock();
        let total = state.order.len();
        let out = state
            .endpoints
            .values()
            .filter(|endpoint| endpoint.state != EndpointState::InRotation)
            .count();
        let Some(endpoint) = state.endpoints.get_mut(key) else {
            return;
        };
        if endpoint.state != EndpointState::InRotation {
            // An attempt that was in flight when its address was ejected: the probe decides.
            return;
        }
        if now.saturating_duration_since(endpoint.in_rotation_since) >= config.max_ejection {
            // In rotation long enough without an ejection: the next one starts short again.
            endpoint.ejections = 0;
        }
        match attempt {
            Attempt::Succeeded => {
                endpoint.consecutive_failures = 0;
                endpoint.consecutive_unanswered = 0;
                return;
            }
            Attempt::Failed => endpoint.consecutive_unanswered = 0,
            Attempt::Unanswered => {
                endpoint.consecutive_unanswered = endpoint.consecutive_unanswered.saturating_add(1);
            }
        }
        endpoint.consecutive_failures = endpoint.consecutive_failures.saturating_add(1);
        let may_eject = ejectable(total, config.max_ejected_share) > out;
        let due = endpoint.consecutive_failures >= config.eject_after
            || endpoint.consecutive_unanswered >= config.eject_after_unanswered;
        if due && may_eject {
            eject(endpoint, &config, now);
            state.ejections_total += 1;
        }
    }

    /// The addresses whose ejection is over, now waiting for their probe: the caller sends
    /// one health probe to each and reports it with [`Balancer::probed`].
    pub fn due_probes(&self) -> Vec<K> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut due = Vec::new();
        let State {
            order, endpoints, ..
        } = &mut *state;
        for key in order.iter() {
            if let Some(endpoint) = endpoints.get_mut(key)
                && let EndpointState::Ejected { until } = endpoint.state
                && until <= now
            {
                endpoint.state = EndpointState::Probing;
                due.push(key.clone());
            }
        }
        state.probes_total += due.len() as u64;
        due
    }

    /// The earliest moment an ejection ends, if any address is ejected: when to look for
    /// due probes next.
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.lock()
            .endpoints
            .values()
            .filter_map(|endpoint| match endpoint.state {
                EndpointState::Ejected { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// The result of the health probe of `key`: passed, it is back in rotation; failed, it
    /// is ejected again, for longer.
    pub fn probed(&self, key: &K, passed: bool) {
        let now = Instant::now();
        let config = self.config;
        let mut state = self.lock();
        let Some(endpoint) = state.endpoints.get_mut(key) else {
            return;
        };
        if endpoint.state != EndpointState::Probing {
            return;
        }
        if passed {
            endpoint.state = EndpointState::InRotation;
            endpoint.consecutive_failures = 0;
            endpoint.consecutive_unanswered = 0;
            endpoint.in_rotation_since = now;
        } else {
            eject(endpoint, &config, now);
            state.ejections_total += 1;
        }
    }

    /// Where `key` stands, if it is one of the addresses.
    pub fn state_of(&self, key: &K) -> Option<EndpointState> {
        self.lock()
            .endpoints
            .get(key)
            .map(|endpoint| endpoint.state)
    }

    /// How many addresses are in each state.
    pub fn counts(&self) -> BalancerCounts {
        let state = self.lock();
        let mut counts = BalancerCounts {
            ejections_total: state.ejections_total,
            probes_total: state.probes_total,
            ..BalancerCounts::default()
        };
        for endpoint in state.endpoints.values() {
            match endpoint.state {
                EndpointState::InRotation => counts.in_rotation += 1,
                EndpointState::Ejected { .. } => counts.ejected += 1,
                EndpointState::Probing => counts.probing += 1,
            }
        }
        counts
    }
}

/// How many of `total` addresses may be out of rotation at once: the share, rounded down,
/// and never all.
fn ejectable(total: usize, share: f64) -> usize {
    let allowed = (total as f64 * share).floor() as usize;
    allowed.min(total.saturating_sub(1))
}

fn eject(endpoint: &mut Endpoint, config: &BalancerConfig, now: Instant) {
    endpoint.ejections = endpoint.ejections.saturating_add(1);
    let length =
        scaled(config.base_ejection, f64::from(endpoint.ejections)).min(config.max_ejection);
    endpoint.state = EndpointState::Ejected {
        until: instant_after(now, length),
    };
    endpoint.consecutive_failures = 0;
    endpoint.consecutive_unanswered = 0;
}

/// How an attempt to an address ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Succeeded,
    Failed,
    Unanswered,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(keys: &[&'static str]) -> Balancer<&'static str> {
        let balancer = Balancer::with_seed(BalancerConfig::default(), 7);
        balancer.set(keys.iter().copied());
        balancer
    }

    /// `times` answered failures (5xx) of `key`.
    fn fail(balancer: &Balancer<&'static str>, key: &'static str, times: u32) {
        for _ in 0..times {
            balancer.record(&key, Attempt::Failed, Instant::now());
        }
    }

    fn picks(balancer: &Balancer<&'static str>, n: usize) -> HashMap<&'static str, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            let pick = balancer.pick().expect("an address");
            *seen.entry(*pick.key()).or_default() += 1;
            pick.succeeded();
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn picks_spread_over_every_address_and_prefer_the_less_loaded() {
        let balancer = balancer(&["a", "b", "c"]);
        let seen = picks(&balancer, 300);
        for key in ["a", "b", "c"] {
            assert!(seen[key] > 50, "{seen:?}");
        }

        // Two attempts in flight on "a", one on "b": "a" loses every pair it is in, and
        // "c" wins every pair it is in.
        {
            let state = balancer.lock();
            state.endpoints["a"].in_flight.store(2, Ordering::Relaxed);
            state.endpoints["b"].in_flight.store(1, Ordering::Relaxed);
        }
        let seen = picks(&balancer, 300);
        assert!(!seen.contains_key("a"), "{seen:?}");
        assert!(seen["c"] > seen["b"], "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_less_loaded_of_two_wins() {
        let balancer = balancer(&["a", "b"]);
        // With two addresses both are always the pair: the idle one is always picked.
        let held = balancer.pick().unwrap();
        let busy = *held.key();
        for _ in 0..20 {
            let pick = balancer.pick().unwrap();
            assert_ne!(*pick.key(), busy);
            pick.succeeded();
        }
        held.succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn a_next_attempt_avoids_the_last_address_while_another_is_in_rotation() {
        let three = balancer(&["a", "b", "c"]);
        for _ in 0..100 {
            let pick = three.pick_except(Some(&"a")).unwrap();
            assert_ne!(*pick.key(), "a");
            pick.succeeded();
        }
        let alone = balancer(&["a"]);
        let pick = alone.pick_except(Some(&"a")).unwrap();
        assert_eq!(*pick.key(), "a", "the only address is still an address");
        pick.succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_success_between_them_does_not() {
        let balancer = balancer(&["a", "b", "c"]);
        fail(&balancer, "a", 2);
        balancer.record(&"a", Attempt::Succeeded, Instant::now());
        fail(&balancer, "a", 2);
        assert_eq!(balancer.state_of(&"a"), Some(EndpointState::InRotation));
        fail(&balancer, "a", 1);
        let ejected_until = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            balancer.state_of(&"a"),
            Some(EndpointState::Ejected {
                until: ejected_until
            })
        );
        // Out of rotation: never picked.
        let seen = picks(&balancer, 100);
        assert!(!seen.contains_key("a"), "{seen:?}");
        assert_eq!(balancer.counts().ejected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_without_an_answer_ejects_and_a_cut_off_one_is_such() {
        let balancer = balancer(&["a", "b", "c"]);
        // Answered failures need three in a row; an unanswered attempt one.
        fail(&balancer, "a", 2);
        assert_eq!(balancer.state_of(&"a"), Some(EndpointState::InRotation));
        let pick = loop {
            let pick = balancer.pick().unwrap();
            if *pick.key() == "b" {
                break pick;
            }
            pick.succeeded();
        };
        pick.unanswered();
        assert!(matches!(
            balancer.state_of(&"b"),
            Some(EndpointState::Ejected { .. })
        ));

        // Dropped without a report: the attempt was cut off by its timeout.
        let pick = loop {
            let pick = balancer.pick().unwrap();
            if *pick.key() == "c" {
                break pick;
            }
            pick.succeeded();
        };
        drop(pick);
        // Half of three, rounded down, is one: "c" stays, its unanswered attempt counted.
        assert_eq!(balancer.state_of(&"c"), Some(EndpointState::InRotation));
        let state = balancer.lock();
        assert_eq!(state.endpoints["c"].consecutive_unanswered, 1);
        assert!(
            state
                .endpoints
                .values()
                .all(|e| e.in_flight.load(Ordering::Relaxed) == 0),
            "every pick was given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_address_returns_only_after_a_passing_probe() {
        let balancer = balancer(&["a", "b", "c"]);
        fail(&balancer, "a", 3);
        assert!(balancer.due_probes().is_empty());
        assert_eq!(
            balancer.next_probe_at(),
            Some(Instant::now() + Duration::from_secs(1))
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(balancer.due_probes(), ["a"]);
        // One probe at a time: asked again, nothing more is due.
        assert!(balancer.due_probes().is_empty());
        assert_eq!(balancer.state_of(&"a"), Some(EndpointState::Probing));
        let seen = picks(&balancer, 50);
        assert!(
            !seen.contains_key("a"),
            "probing is not in rotation: {seen:?}"
        );

        balancer.probed(&"a", true);
        assert_eq!(balancer.state_of(&"a"), Some(EndpointState::InRotation));
        let seen = picks(&balancer, 300);
        assert!(seen["a"] > 50, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_failed_probe_ejects_for_longer_up_to_the_cap() {
        let config = BalancerConfig {
            max_ejection: Duration::from_secs(3),
            ..BalancerConfig::default()
        };
        let balancer = Balancer::with_seed(config, 3);
        balancer.set(["a", "b", "c"]);
        fail(&balancer, "a", 3);
        let mut lengths = Vec::new();
        let mut ejected_at = Instant::now();
        for _ in 0..5 {
            let until = balancer.next_probe_at().unwrap();
            lengths.push((until - ejected_at).as_secs());
            tokio::time::advance(until - Instant::now()).await;
            assert_eq!(balancer.due_probes(), ["a"]);
            ejected_at = Instant::now();
            balancer.probed(&"a", false);
        }
        assert_eq!(lengths, [1, 2, 3, 3, 3]);
        assert_eq!(balancer.counts().ejections_total, 6);
        assert_eq!(balancer.counts().probes_total, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_healthy_spell_makes_the_next_ejection_short_again() {
        let balancer = balancer(&["a", "b", "c"]);
        fail(&balancer, "a", 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = balancer.due_probes();
        balancer.probed(&"a", true);
        // Soon after: the second ejection lasts 2 s.
        fail(&balancer, "a", 3);
        assert_eq!(
            balancer.next_probe_at(),
            Some(Instant::now() + Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let _ = balancer.due_probes();
        balancer.probed(&"a", true);
        // After 30 s in rotation: 1 s again.
        tokio::time::advance(Duration::from_secs(30)).await;
        fail(&balancer, "a", 3);
        assert_eq!(
            balancer.next_probe_at(),
            Some(Instant::now() + Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_address_fails_at_most_the_share_is_ejected_and_never_the_last() {
        let balancer = balancer(&["a", "b", "c"]);
        for key in ["a", "b", "c"] {
            fail(&balancer, key, 10);
        }
        // Half of three, rounded down: one. The other two stay for the breaker to judge.
        assert_eq!(balancer.counts().ejected, 1);
        assert_eq!(balancer.counts().in_rotation, 2);

        let alone = Balancer::with_seed(BalancerConfig::default(), 1);
        alone.set(["a"]);
        fail(&alone, "a", 10);
        assert_eq!(alone.state_of(&"a"), Some(EndpointState::InRotation));
        assert_eq!(ejectable(1, 0.99), 0);
        assert_eq!(ejectable(2, 0.5), 1);
        assert_eq!(ejectable(10, 0.5), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_resolution_keeps_known_addresses_state_and_an_empty_one_changes_nothing() {
        let balancer = balancer(&["a", "b", "c"]);
        fail(&balancer, "a", 3);
        balancer.set(["c", "a", "d", "d"]);
        assert_eq!(balancer.keys(), ["c", "a", "d"]);
        assert!(matches!(
            balancer.state_of(&"a"),
            Some(EndpointState::Ejected { .. })
        ));
        assert_eq!(balancer.state_of(&"b"), None);
        balancer.set(Vec::<&str>::new());
        assert_eq!(balancer.keys(), ["c", "a", "d"]);
        // A report for an address gone since is dropped.
        balancer.record(&"b", Attempt::Failed, Instant::now());
        assert_eq!(balancer.counts().in_rotation, 2);
    }

    #[test]
    fn the_configuration_is_checked() {
        assert_eq!(BalancerConfig::default().validate(), Ok(()));
        let bad = [
            BalancerConfig {
                eject_after: 0,
                ..BalancerConfig::default()
            },
            BalancerConfig {
                eject_after_unanswered: 0,
                ..BalancerConfig::default()
            },
            BalancerConfig {
                base_ejection: Duration::ZERO,
                ..BalancerConfig::default()
            },
            BalancerConfig {
                base_ejection: Duration::from_secs(60),
                ..BalancerConfig::default()
            },
            BalancerConfig {
                max_ejected_share: 1.0,
                ..BalancerConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
