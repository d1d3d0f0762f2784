//! The last-good store (DESIGN 4.3): the most recent successful upstream answer for each
//! key, in a small in-memory cache and in Redis, for when the upstream fails.
//!
//! Two rules shape it:
//! - **A slow Redis never slows a fresh answer.** `remember` updates memory at once and hands
//!   the Redis write to a background task; at most `max_inflight_writes` run at a time, and
//!   a write that finds no free slot is dropped, counted and logged.
//! - **Redis down never fails a request.** `recall` reads memory first, then Redis, each
//!   bounded by `read_timeout`; a Redis error is counted and logged and reads as a miss.
//!
//! A busy key is fetched many times a second, nearly always with the same body. Such an
//! unchanged answer is written to Redis again only once `REDIS_REFRESH_AFTER` has passed
//! since the last write, so Redis sees about one write per key per second instead of one
//! per request; a changed body is written at once. (The `Age` of an answer recalled from
//! Redis may then be up to that much too old; from memory it is exact.)

mod key;
mod stored;

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Semaphore;

pub use key::CacheKey;

/// An unchanged answer is written to Redis again after this long.
const REDIS_REFRESH_AFTER: Duration = Duration::from_secs(1);
/// Bound on the keys remembered as recently written (beyond it, a write may repeat early).
const MAX_RECENT_WRITES: u64 = 100_000;
pub use stored::StoredResponse;

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
    /// Size of the in-memory copy, in bytes of stored bodies.
    pub memory_bytes: u64,
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

#[derive(Clone)]
struct StoreMetrics {
    redis_errors: Family<OperationLabels, Counter>,
    writes: Counter,
    writes_dropped: Counter,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            redis_errors: Family::default(),
            writes: Counter::default(),
            writes_dropped: Counter::default(),
        };
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
}

/// Memory plus Redis; cheap to clone.
#[derive(Clone)]
pub struct LastGoodStore {
    config: Arc<LastGoodConfig>,
    memory: Cache<CacheKey, Arc<StoredResponse>>,
    /// Keys written to Redis within the last `REDIS_REFRESH_AFTER`.
    recently_written: Cache<CacheKey, ()>,
    redis: ConnectionManager,
    write_slots: Arc<Semaphore>,
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
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        let memory = Cache::builder()
            .weigher(|_key: &CacheKey, value: &Arc<StoredResponse>| {
                u32::try_from(value.body.len()).unwrap_or(u32::MAX)
            })
            .max_capacity(config.memory_bytes)
            .build();
        let recently_written = Cache::builder()
            .max_capacity(MAX_RECENT_WRITES)
            .time_to_live(REDIS_REFRESH_AFTER)
            .build();
        Ok(Self {
            recently_written,
            write_slots: Arc::new(Semaphore::new(config.max_inflight_writes)),
            config: Arc::new(config),
            memory,
            redis,
            metrics: StoreMetrics::register(registry),
        })
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.config.key_prefix, key.as_str())
    }

    /// Keeps a fresh answer: in memory now, in Redis in the background (unless Redis got
    /// the same body less than `REDIS_REFRESH_AFTER` ago).
    pub async fn remember(&self, key: CacheKey, stored: StoredResponse) {
        let unchanged = self.memory.get(&key).await.is_some_and(|previous| {
            previous.body == stored.body && previous.content_type == stored.content_type
        });
        let redis_is_current = unchanged && self.recently_written.contains_key(&key);
        let value = (!redis_is_current).then(|| stored.encode());
        self.memory.insert(key.clone(), Arc::new(stored)).await;
        let Some(value) = value else {
            return;
        };
        let Ok(slot) = Arc::clone(&self.write_slots).try_acquire_owned() else {
            self.metrics.writes_dropped.inc();
            tracing::warn!(
                key = key.as_str(),
                "last-good write to Redis dropped: too many writes in flight"
            );
            return;
        };
        self.recently_written.insert(key.clone(), ()).await;
        self.metrics.writes.inc();
        let redis_key = self.redis_key(&key);
        let ttl = self.config.ttl.as_secs().max(1);
        let timeout = self.config.write_timeout;
        let mut redis = self.redis.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let write = redis.set_ex::<_, _, ()>(&redis_key, value, ttl);
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    metrics.redis_error("write");
                    tracing::warn!(error = %err, key = redis_key, "last-good write to Redis failed");
                }
                Err(_) => {
                    metrics.redis_error("write");
                    tracing::warn!(
                        ?timeout,
                        key = redis_key,
                        "last-good write to Redis timed out"
                    );
                }
            }
            drop(slot);
        });
    }

    /// The last good answer for `key`, from memory or else from Redis, or `None`.
    pub async fn recall(&self, key: &CacheKey) -> Option<(Arc<StoredResponse>, Source)> {
        if let Some(stored) = self.memory.get(key).await {
            return Some((stored, Source::Memory));
        }
        let redis_key = self.redis_key(key);
        let mut redis = self.redis.clone();
        let read = redis.get::<_, Option<Vec<u8>>>(&redis_key);
        let value = match tokio::time::timeout(self.config.read_timeout, read).await {
            Ok(Ok(value)) => value?,
            Ok(Err(err)) => {
                self.metrics.redis_error("read");
                tracing::warn!(error = %err, key = redis_key, "last-good read from Redis failed");
                return None;
            }
            Err(_) => {
                self.metrics.redis_error("read");
                tracing::warn!(timeout = ?self.config.read_timeout, key = redis_key, "last-good read from Redis timed out");
                return None;
            }
        };
        match StoredResponse::decode(&value) {
            Ok(stored) => {
                let stored = Arc::new(stored);
                self.memory.insert(key.clone(), Arc::clone(&stored)).await;
                Some((stored, Source::Redis))
            }
            Err(err) => {
                tracing::warn!(error = %err, key = redis_key, "unreadable last-good value in Redis; ignored");
                None
            }
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
