//! The last-good store (docs/architecture.md): the most recent successful upstream answer for each
//! key, in a small in-memory cache and in Redis, for when the upstream fails.
//!
//! Two rules shape it:
//! - **A slow Redis never slows a fresh answer.** `remember` updates memory at once and hands
//!   the Redis write to a background task; at most `max_inflight_writes` run at a time, and
//!   a write that finds no free slot is dropped, counted and logged.
//! - **Redis down never fails a request.** `recall` reads memory first, then Redis, each
//!   bounded by `read_timeout`; a Redis error is counted and logged and reads as a miss.
//!
//! - **Bounded and trustworthy.** Only JSON bodies within `max_body_bytes` are kept; the
//!   memory bound counts each entry's key, body, content type and a fixed overhead, so many
//!   small entries cannot outgrow it; a value read back from Redis is served only if booksvc
//!   signed it (`stored`).
//! - **Writes invalidate** every replica's copies, through Redis (`generation`).
//!
//! A busy key is fetched many times a second, nearly always with the same body. Such an
//! unchanged answer is written to Redis again only once `REDIS_REFRESH_AFTER` has passed
//! since the last write, so Redis sees one write per key every ten seconds instead of one
//! per request; a changed body is written at once. (The `Age` of an answer recalled from
//! Redis may then be up to that much too old; from memory it is exact. Redis is read only
//! when memory has nothing: after a restart, or for another replica's keys.)

mod generation;
mod key;
mod stored;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use moka::future::Cache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::log_throttle::LogThrottle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use generation::{Generation, random_generation};
pub use key::CacheKey;

/// An unchanged answer is written to Redis again after this long. At 1 s, 900 keys read
/// over and over cost 900 signed writes a second, one per four or five proxied reads.
const REDIS_REFRESH_AFTER: Duration = Duration::from_secs(10);
/// Bound on the keys remembered as recently written (beyond it, a write may repeat early).
const MAX_RECENT_WRITES: u64 = 100_000;

/// The longest a warning that a read can log is held back: `held_back` on the next line
/// says how many like it were not logged (the metrics count every one).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// What one memory entry costs besides its key, body and content type: the entry and its
/// `Arc`, and the cache's own bookkeeping per entry (an estimate, on the safe side).
pub const ENTRY_OVERHEAD_BYTES: u32 = 256;
/// Wait before subscribing to invalidations again after the subscription failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
pub use stored::{MIN_SIGNING_KEY_BYTES, SigningKey, StoredResponse, is_json};

#[derive(Debug, Clone)]
pub struct LastGoodConfig {
    pub redis_url: String,
    /// Prefix of every Redis key, versioned so a format change can start afresh.
    pub key_prefix: String,
    /// How long Redis keeps an answer.
    pub ttl: Duration,
    /// Bound on each read, from memory and from Redis.
    pub read_timeout: Duration,
    /// Bound on each background write.
    pub write_timeout: Duration,
    pub max_inflight_writes: usize,
    /// Size of the in-memory copy, in bytes of keys, bodies and per-entry overhead.
    pub memory_bytes: u64,
    /// Largest body stored (and accepted back from Redis).
    pub max_body_bytes: usize,
    /// Signs what goes to Redis and checks what comes back.
    pub signing_key: SigningKey,
}

/// Where a recalled answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone)]
struct StoreMetrics {
    redis_errors: Family<OperationLabels, Counter>,
    writes: Counter,
    writes_dropped: Counter,
    refused: Family<RefusalLabels, Counter>,
    invalidations: Counter,
    /// The warnings a read can log, each at most once per [`WARN_EVERY`]: when Redis is
    /// down or slow, or holds what another signing key signed, every read would log one.
    redis_failed_log: Arc<LogThrottle>,
    refused_log: Arc<LogThrottle>,
    dropped_write_log: Arc<LogThrottle>,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            redis_errors: Family::default(),
            redis_failed_log: Arc::new(LogThrottle::new(WARN_EVERY)),
            refused_log: Arc::new(LogThrottle::new(WARN_EVERY)),
            dropped_write_log: Arc::new(LogThrottle::new(WARN_EVERY)),
            writes: Counter::default(),
            writes_dropped: Counter::default(),
            refused: Family::default(),
            invalidations: Counter::default(),
        };
        registry.register(
            "last_good_refused",
            "Answers the last-good store would not keep or serve, by reason (not_json, too_large, unverified, older_generation)",
            metrics.refused.clone(),
        );
        registry.register(
            "last_good_invalidations",
            "Successful writes that invalidated the stored answers",
            metrics.invalidations.clone(),
        );
        registry.register(
            "last_good_redis_writes",
            "Answers sent to Redis by the last-good store",
            metrics.writes.clone(),
        );
        registry.register(
            "last_good_redis_errors",
            "Redis operations of the last-good store that failed or timed out, by operation",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "last_good_writes_dropped",
            "Redis writes skipped because too many were already in flight",
            metrics.writes_dropped.clone(),
        );
        metrics
    }

    fn redis_error(&self, operation: &'static str) {
        self.redis_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// `call` within `timeout`. A Redis error or a time-out is counted under `operation`,
    /// logged with `key`, and comes back as `None`: Redis failing never fails a request.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        key: &str,
        timeout: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.redis_error(operation);
                if let Some(held_back) = self.redis_failed_log.admit() {
                    tracing::warn!(
                        %error,
                        operation,
                        key,
                        held_back,
                        "last-good store: Redis failed"
                    );
                }
                None
            }
            Err(_) => {
                self.redis_error(operation);
                if let Some(held_back) = self.redis_failed_log.admit() {
                    tracing::warn!(
                        ?timeout,
                        operation,
                        key,
                        held_back,
                        "last-good store: Redis did not answer in time"
                    );
                }
                None
            }
        }
    }
}

/// The in-memory copy, bounded by `max_bytes` of keys, bodies, content types and
/// [`ENTRY_OVERHEAD_BYTES`] per entry.
pub fn memory_cache(max_bytes: u64) -> Cache<CacheKey, Arc<StoredResponse>> {
    Cache::builder()
        .weigher(|key: &CacheKey, value: &Arc<StoredResponse>| {
            let bytes = key.as_str().len() + value.body.len() + value.content_type.len();
            u32::try_from(bytes)
                .unwrap_or(u32::MAX)
                .saturating_add(ENTRY_OVERHEAD_BYTES)
        })
        .max_capacity(max_bytes)
        .build()
}

/// Memory plus Redis; cheap to clone.
#[derive(Clone)]
pub struct LastGoodStore {
    config: Arc<LastGoodConfig>,
    memory: Cache<CacheKey, Arc<StoredResponse>>,
    /// Keys written to Redis within the last `REDIS_REFRESH_AFTER`.
    recently_written: Cache<CacheKey, ()>,
    client: redis::Client,
    redis: ConnectionManager,
    write_slots: Arc<Semaphore>,
    generation: Arc<Generation>,
    metrics: StoreMetrics,
}

impl LastGoodStore {
    /// Connects lazily: booksvc starts, and serves fresh answers, while Redis is down.
    pub fn new(config: LastGoodConfig, registry: &mut Registry) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        // The driver's own timeouts match ours; it must not retry for longer than a read may
        // take, so its reconnect attempts are few and short.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.read_timeout))
            .set_response_timeout(Some(config.read_timeout.max(config.write_timeout)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let memory = memory_cache(config.memory_bytes);
        let recently_written = Cache::builder()
            .max_capacity(MAX_RECENT_WRITES)
            .time_to_live(REDIS_REFRESH_AFTER)
            .build();
        Ok(Self {
            recently_written,
            write_slots: Arc::new(Semaphore::new(config.max_inflight_writes)),
            config: Arc::new(config),
            memory,
            client,
            redis,
            generation: Arc::default(),
            metrics: StoreMetrics::register(registry),
        })
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.config.key_prefix, key.as_str())
    }

    fn generation_key(&self) -> String {
        format!("{}generation", self.config.key_prefix)
    }

    fn invalidation_channel(&self) -> String {
        format!("{}invalidations", self.config.key_prefix)
    }

    /// The invalidation generation to tag an answer with: read it *before* the fetch
    /// starts, so an answer that may predate a write is never kept.
    pub fn generation(&self) -> u64 {
        self.generation.current()
    }

    /// Keeps a fresh answer: in memory now, in Redis in the background (unless Redis got
    /// the same body less than `REDIS_REFRESH_AFTER` ago). Not kept: a body that is not
    /// JSON or over the cap, and an answer whose fetch began before the latest write.
    pub async fn remember(&self, key: CacheKey, stored: StoredResponse) {
        if stored.generation != self.generation.current() {
            tracing::debug!(
                key = key.as_str(),
                "not stored: a write invalidated the store while it was fetched"
            );
            return;
        }
        let refusal = if !is_json(&stored.content_type) {
            Some("not_json")
        } else if stored.body.len() > self.config.max_body_bytes {
            Some("too_large")
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.metrics.refused(reason);
            tracing::warn!(key = key.as_str(), reason, "answer not stored");
            return;
        }
        let unchanged = self.memory.get(&key).await.is_some_and(|previous| {
            previous.body == stored.body && previous.content_type == stored.content_type
        });
        let redis_is_current = unchanged && self.recently_written.contains_key(&key);
        let value = (!redis_is_current).then(|| stored.encode(&key, &self.config.signing_key));
        self.memory.insert(key.clone(), Arc::new(stored)).await;
        let Some(value) = value else {
            return;
        };
        let Ok(slot) = Arc::clone(&self.write_slots).try_acquire_owned() else {
            self.metrics.writes_dropped.inc();
            if let Some(held_back) = self.metrics.dropped_write_log.admit() {
                tracing::warn!(
                    key = key.as_str(),
                    held_back,
                    "last-good write to Redis dropped: too many writes in flight"
                );
            }
            return;
        };
        self.recently_written.insert(key.clone(), ()).await;
        self.metrics.writes.inc();
        let redis_key = self.redis_key(&key);
        let ttl = self.config.ttl.as_secs().max(1);
        let timeout = self.config.write_timeout;
        let mut redis = self.redis.clone();
        let metrics = self.metrics.clone();
        // Boxed, as the read path's call: the write's future is large, and a task moves it
        // by value.
        tokio::spawn(Box::pin(async move {
            let write = redis.set_ex::<_, _, ()>(&redis_key, value, ttl);
            metrics.bounded("write", &redis_key, timeout, write).await;
            drop(slot);
        }));
    }

    /// The last good answer for `key`, from memory or else from Redis, or `None`; only
    /// one of the current invalidation generation.
    pub async fn recall(&self, key: &CacheKey) -> Option<(Arc<StoredResponse>, Source)> {
        // The store read, for traces: where the answer was found (`none`: nowhere usable).
        let span = shared::trace_only_span!("store read", booksvc.store.source = "none",);
        let recalled = self.recall_untraced(key).instrument(span.clone()).await;
        if let Some((_, source)) = &recalled {
            span.record("booksvc.store.source", source.as_str());
        }
        recalled
    }

    async fn recall_untraced(&self, key: &CacheKey) -> Option<(Arc<StoredResponse>, Source)> {
        let seen = self.generation.current();
        if let Some(stored) = self.memory.get(key).await {
            if stored.generation == seen {
                return Some((stored, Source::Memory));
            }
            self.memory.invalidate(key).await;
        }
        if self.generation.pending().is_some() {
            // This replica's last write is not in Redis yet: what Redis holds may predate it.
            tracing::debug!(
                key = key.as_str(),
                "Redis not asked: an invalidation is still to be written"
            );
            return None;
        }
        let redis_key = self.redis_key(key);
        let mut redis = self.redis.clone();
        // The entry and the current generation in one round trip.
        let mut read = redis::cmd("MGET");
        read.arg(&redis_key).arg(self.generation_key());
        let read = read.query_async::<(Option<Vec<u8>>, Option<u64>)>(&mut redis);
        let (value, current) = self
            .metrics
            .bounded("read", &redis_key, self.config.read_timeout, read)
            .await?;
        let Some(current) = current else {
            // Redis lost the generation (evicted, restarted): nothing in it can be trusted
            // to postdate the last write until the listener sets a new one.
            self.generation.wake.notify_one();
            return None;
        };
        match self.generation.observe(seen, current) {
            Some(true) => self.memory.invalidate_all(),
            Some(false) => {}
            None => return None,
        }
        let value = value?;
        let stored = match StoredResponse::decode(
            &value,
            key,
            &self.config.signing_key,
            self.config.max_body_bytes,
        ) {
            Ok(stored) => stored,
            Err(err) => {
                self.metrics.refused("unverified");
                if let Some(held_back) = self.metrics.refused_log.admit() {
                    tracing::warn!(
                        error = %err,
                        key = redis_key,
                        held_back,
                        "last-good value in Redis refused"
                    );
                }
                return None;
            }
        };
        if stored.generation != current {
            self.metrics.refused("older_generation");
            tracing::debug!(key = redis_key, "last-good value in Redis predates a write");
            return None;
        }
        let stored = Arc::new(stored);
        self.memory.insert(key.clone(), Arc::clone(&stored)).await;
        Some((stored, Source::Redis))
    }

    /// After a successful write: no answer stored so far is served again, by this replica
    /// or any other. Memory is dropped at once; Redis gets the new generation within the
    /// read timeout, or from the listener as soon as it answers again (see `generation`).
    pub async fn invalidate(&self) {
        self.metrics.invalidations.inc();
        let generation = self.generation.next();
        self.memory.invalidate_all();
        let published = self.publish(generation);
        let channel = self.invalidation_channel();
        match self
            .metrics
            .bounded("invalidate", &channel, self.config.read_timeout, published)
            .await
        {
            Some(()) => self.generation.written(generation),
            None => {
                tracing::warn!(
                    "invalidation not in Redis yet; the listener writes it when Redis answers"
                );
                self.generation.wake.notify_one();
            }
        }
    }

    /// Sets `generation` in Redis and announces it to every replica.
    async fn publish(&self, generation: u64) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .set(self.generation_key(), generation)
            .ignore()
            .publish(self.invalidation_channel(), generation)
            .ignore()
            .query_async::<()>(&mut redis)
            .await
    }

    /// Follows the invalidations of every replica until the task is aborted (with the
    /// service); see `generation`.
    pub fn spawn_invalidation_listener(&self) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                match store.subscribe().await {
                    Ok(messages) => {
                        store.follow(messages).await;
                        tracing::warn!(
                            "invalidation subscription to Redis lost; subscribing again"
                        );
                    }
                    Err(err) => {
                        store.metrics.redis_error("subscribe");
                        tracing::warn!(error = %err, "cannot subscribe to invalidations in Redis; trying again");
                        // A write's invalidation may be waiting, and Redis may answer
                        // commands although subscribing failed.
                        store.sync_generation().await;
                    }
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        })
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSubStream> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.invalidation_channel()).await?;
            Ok(pubsub.into_on_message())
        };
        match tokio::time::timeout(self.config.write_timeout, connect).await {
            Ok(subscribed) => subscribed,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "subscribing timed out",
            ))),
        }
    }

    /// Applies every announced generation until the subscription ends.
    async fn follow(&self, mut messages: redis::aio::PubSubStream) {
        // Announcements made while this replica was not subscribed are lost: read the
        // generation now, after subscribing, so none falls in between.
        self.sync_generation().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return };
                    match message.get_payload::<u64>() {
                        Ok(announced) => self.follow_redis(self.generation.current(), announced),
                        Err(err) => tracing::warn!(error = %err, "unreadable invalidation message ignored"),
                    }
                }
                () = self.generation.wake.notified() => self.sync_generation().await,
                // A write's generation that could not be written yet is tried again.
                () = tokio::time::sleep(RESUBSCRIBE_DELAY), if self.generation.pending().is_some() => {
                    self.sync_generation().await;
                }
            }
        }
    }

    fn follow_redis(&self, seen: u64, generation: u64) {
        if self.generation.observe(seen, generation) == Some(true) {
            self.memory.invalidate_all();
            tracing::debug!("stored answers invalidated by a write");
        }
    }

    /// Writes a pending generation, makes sure Redis holds one, and follows it. Failures are
    /// counted and logged; the listener tries again. Start-up calls it once before serving:
    /// an answer fetched before the generation is known could not be kept.
    pub async fn sync_generation(&self) {
        let seen = self.generation.current();
        let sync = async {
            if let Some(pending) = self.generation.pending() {
                self.publish(pending).await?;
                self.generation.written(pending);
                tracing::info!("a delayed invalidation is now in Redis");
            }
            let mut redis = self.redis.clone();
            let (current,) = redis::pipe()
                .cmd("SET")
                .arg(self.generation_key())
                .arg(random_generation())
                .arg("NX")
                .ignore()
                .get(self.generation_key())
                .query_async::<(Option<u64>,)>(&mut redis)
                .await?;
            Ok::<_, redis::RedisError>(current)
        };
        let generation_key = self.generation_key();
        let synced = self
            .metrics
            .bounded("sync", &generation_key, self.config.write_timeout, sync)
            .await;
        if let Some(Some(current)) = synced {
            self.follow_redis(seen, current);
        }
    }

    /// For readiness details: does Redis answer a PING within the read timeout?
    pub async fn redis_reachable(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        match tokio::time::timeout(self.config.read_timeout, redis.ping::<String>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.config.read_timeout)),
        }
    }

    /// Forgets the in-memory copy (tests use it to force a read from Redis).
    pub fn clear_memory(&self) {
        self.memory.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use axum::body::Bytes;

    use super::*;

    /// The bound holds for many small entries too: keys and per-entry costs are counted,
    /// not only bodies.
    #[tokio::test]
    async fn a_hundred_thousand_distinct_keys_stay_under_the_memory_bound() {
        const BOUND: u64 = 4 * 1024 * 1024;
        let memory = memory_cache(BOUND);
        let body = Bytes::from_static(b"[]");
        for offset in 0..100_000u64 {
            let key = CacheKey::new("GET", &format!("/books?limit=100&offset={offset}"));
            let stored = StoredResponse {
                body: body.clone(),
                content_type: "application/json".into(),
                fetched_at: SystemTime::now(),
                generation: 1,
            };
            memory.insert(key, Arc::new(stored)).await;
        }
        memory.run_pending_tasks().await;
        let weighed = memory.weighted_size();
        assert!(
            weighed <= BOUND,
            "{weighed} bytes over the bound of {BOUND}"
        );
        // Each entry weighs at least its overhead, so far fewer than 100,000 remain.
        let most = BOUND / u64::from(ENTRY_OVERHEAD_BYTES);
        assert!(
            memory.entry_count() <= most,
            "{} entries",
            memory.entry_count()
        );
        assert!(memory.entry_count() > 0);
    }
}
