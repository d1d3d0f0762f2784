//! booksvc's last-good store against a real Redis: answers survive in Redis, and a Redis
//! that is stopped or hangs never blocks a read or a write beyond its bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use booksvc::last_good::{
    CacheKey, LastGoodConfig, LastGoodStore, SigningKey, Source, StoredResponse,
};
use prometheus_client::registry::Registry;
use system_tests::containers::{Faults, Redis, free_port};
use system_tests::poll::eventually;

const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling slack on a busy two-core machine, on top of the promised bound.
const SLACK: Duration = Duration::from_millis(50);

fn config(redis_url: String) -> LastGoodConfig {
    LastGoodConfig {
        redis_url,
        key_prefix: booksvc::LAST_GOOD_PREFIX.into(),
        ttl: Duration::from_secs(24 * 3600),
        read_timeout: READ_TIMEOUT,
        write_timeout: Duration::from_secs(1),
        max_inflight_writes: 64,
        memory_bytes: 1 << 20,
        max_body_bytes: 1 << 20,
        signing_key: SigningKey::new(b"the signing key of the tests").unwrap(),
    }
}

/// A store following the invalidations in Redis; when Redis is up, once it knows the
/// current generation (before that, nothing from Redis is served).
async fn store(redis_url: String) -> LastGoodStore {
    let store = LastGoodStore::new(config(redis_url), &mut Registry::default()).unwrap();
    // The task ends with the test's runtime.
    let _listener = store.spawn_invalidation_listener();
    store
}

async fn synced(store: LastGoodStore) -> LastGoodStore {
    eventually(
        Duration::from_secs(5),
        "the generation from Redis",
        || async { (store.generation() != 0).then_some(()) },
    )
    .await;
    store
}

fn books_answer(store: &LastGoodStore) -> StoredResponse {
    StoredResponse {
        body: Bytes::from_static(br#"[{"id":1,"title":"One book","author":"John Doe","desc":""}]"#),
        content_type: "application/json".into(),
        fetched_at: SystemTime::now(),
        generation: store.generation(),
    }
}

fn key() -> CacheKey {
    CacheKey::new("GET", "/books?limit=100&offset=0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_answer_comes_back_from_redis_byte_for_byte() {
    let redis = Redis::start().await;
    let store = synced(store(redis.url()).await).await;
    let answer = books_answer(&store);
    store.remember(key(), answer.clone()).await;

    let (from_memory, source) = store.recall(&key()).await.unwrap();
    assert_eq!((from_memory.as_ref(), source), (&answer, Source::Memory));

    // The Redis write happens in the background: poll until a memory-less read finds it.
    let from_redis = eventually(Duration::from_secs(5), "the answer in Redis", || async {
        store.clear_memory();
        store
            .recall(&key())
            .await
            .filter(|(_, source)| *source == Source::Redis)
    })
    .await
    .0;
    assert_eq!(from_redis.body, answer.body);
    assert_eq!(from_redis.content_type, answer.content_type);
    let stored_ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(
        stored_ms(from_redis.fetched_at),
        stored_ms(answer.fetched_at)
    );
}

async fn assert_redis_fault_is_bounded(store: &LastGoodStore) {
    // A write returns at once: Redis is written in the background.
    let started = Instant::now();
    store
        .remember(CacheKey::new("GET", "/books/2"), books_answer(store))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "remember took {:?}",
        started.elapsed()
    );

    // The memory copy is still served.
    let (_, source) = store
        .recall(&CacheKey::new("GET", "/books/2"))
        .await
        .unwrap();
    assert_eq!(source, Source::Memory);

    // A read that must go to Redis misses within the read timeout.
    for _ in 0..3 {
        store.clear_memory();
        let started = Instant::now();
        assert!(store.recall(&key()).await.is_none());
        let elapsed = started.elapsed();
        assert!(elapsed <= READ_TIMEOUT + SLACK, "recall took {elapsed:?}");
    }
    assert!(store.redis_reachable().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_never_blocks_longer_than_the_read_timeout() {
    let redis = Redis::start().await;
    let store = synced(store(redis.url()).await).await;
    store.remember(key(), books_answer(&store)).await;
    redis.stop().await;
    assert_redis_fault_is_bounded(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_never_blocks_longer_than_the_read_timeout() {
    let redis = Redis::start().await;
    let store = synced(store(redis.url()).await).await;
    store.remember(key(), books_answer(&store)).await;
    assert!(store.redis_reachable().await.is_ok());
    redis.pause().await;
    assert_redis_fault_is_bounded(&store).await;
    redis.unpause().await;
    eventually(
        Duration::from_secs(5),
        "Redis answers again after unpause",
        || async { store.redis_reachable().await.ok() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_starts_without_redis() {
    let store = store(format!("redis://127.0.0.1:{}", free_port())).await;
    assert_redis_fault_is_bounded(&store).await;
}

/// A busy key is remembered on every fresh answer; Redis gets an unchanged body once every
/// ten seconds, a changed one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_answer_is_written_to_redis_at_most_once_every_ten_seconds() {
    let redis = Redis::start().await;
    let mut registry = Registry::default();
    let store = LastGoodStore::new(config(redis.url()), &mut registry).unwrap();
    let writes = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("last_good_redis_writes_total "))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .unwrap()
    };

    let started = Instant::now();
    for _ in 0..100 {
        store.remember(key(), books_answer(&store)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(1), "a quick burst");
    assert_eq!(writes(), 1, "100 identical answers, one write");

    let changed = StoredResponse {
        body: Bytes::from_static(b"[]"),
        ..books_answer(&store)
    };
    store.remember(key(), changed.clone()).await;
    assert_eq!(writes(), 2, "a changed body is written at once");

    tokio::time::sleep(Duration::from_secs(5)).await;
    store.remember(key(), changed.clone()).await;
    assert_eq!(writes(), 2, "an unchanged one not again after 5 s");
    tokio::time::sleep(Duration::from_millis(5200)).await;
    store.remember(key(), changed).await;
    assert_eq!(writes(), 3, "and again after 10 s");
    // The memory copy is always the latest.
    let (latest, _) = store.recall(&key()).await.unwrap();
    assert_eq!(latest.body, Bytes::from_static(b"[]"));
}

/// Redis hangs at the moment of a write: the writing replica at once serves nothing stored
/// before it; as soon as Redis answers, the new generation is written and announced, and
/// the other replica drops the old answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_redis_hangs_reaches_every_replica_as_soon_as_redis_answers() {
    let redis = Redis::start().await;
    let writer = synced(store(redis.url()).await).await;
    let other = synced(store(redis.url()).await).await;
    writer.remember(key(), books_answer(&writer)).await;
    eventually(
        Duration::from_secs(5),
        "the other replica has the answer",
        || async {
            other
                .recall(&key())
                .await
                .filter(|(_, source)| *source == Source::Redis)
        },
    )
    .await;

    redis.pause().await;
    let started = Instant::now();
    writer.invalidate().await;
    let took = started.elapsed();
    assert!(
        took <= READ_TIMEOUT + SLACK,
        "the write waited {took:?} for Redis"
    );
    assert!(
        writer.recall(&key()).await.is_none(),
        "the writer's copy is gone"
    );

    redis.unpause().await;
    eventually(
        Duration::from_secs(10),
        "the other replica drops the answer from before the write",
        || async { other.recall(&key()).await.is_none().then_some(()) },
    )
    .await;
    assert_eq!(writer.generation(), other.generation());
    assert!(writer.recall(&key()).await.is_none());
}
