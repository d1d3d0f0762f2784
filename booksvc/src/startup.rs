//! Building and running booksvc: `Application::build` wires the client, the policies, the
//! last-good store, the health probe and the routes, and binds (port 0 works, for tests).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use resilience::{
    BreakerConfig, BreakerState, CallLimits, CircuitBreaker, ConcurrencyLimiter, DerivedBound,
    Elsewhere, LimiterConfig, Resilience, RetryBudget, RetryBudgetConfig, RetryPolicy,
};
use serde_json::json;
use shared::auth::{Credentials, require_credentials};
use shared::client::{ServiceClient, ServiceClientConfig};
use shared::health::{CheckOutcome, Health, HealthCheck};
use shared::metrics::HttpMetrics;
use shared::server::Service;

use crate::config::Config;
use crate::last_good::{LastGoodConfig, LastGoodStore, SigningKey};
use crate::read_path::{self, ReadPath, StalePolicy};
use crate::upstream::Upstream;
use crate::write_path;

/// What the handlers share: reads take the read path, writes the bare upstream and the
/// store they invalidate. axum clones the state, and then the part a handler takes, for
/// every request: behind `Arc`s that is four reference counts, not the dozens of the
/// policies, caches and metrics inside.
#[derive(Clone, FromRef)]
struct Routes {
    read_path: Arc<ReadPath>,
    upstream: Arc<Upstream>,
    store: Arc<LastGoodStore>,
}

/// Builds booksvc: `Application::build(config, storagesvc)` gives the bound, fully wired
/// service.
pub struct Application;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

impl Application {
    /// `storagesvc` says where storagesvc is and how to authenticate (from `STORAGESVC_*`
    /// in `main`, built directly in tests).
    pub async fn build(config: Config, storagesvc: ServiceClientConfig) -> anyhow::Result<Service> {
        let listener = Service::bind(config.bind_addr).await?;
        let admin_listener = Service::bind_admin(config.admin_bind_addr).await?;
        let mut registry = Registry::default();
        let http_metrics = HttpMetrics::register(&mut registry);

        let breaker = breaker(&config, &mut registry);
        let mut resilience = Resilience {
            adaptive_timeout: Some(DerivedBound {
                factor: ATTEMPT_TIMEOUT_FACTOR,
                floor: config.attempt_timeout_floor,
                cap: config.attempt_timeout,
            }),
            limiter: limiter(config.concurrency_limit_max)?,
            ..Resilience::new(
                CallLimits {
                    deadline: config.request_deadline,
                    attempt_timeout: config.attempt_timeout,
                },
                RetryPolicy {
                    base: config.retry_base_delay,
                    max_retries: config.retry_max,
                    ..Default::default()
                },
                RetryBudget::new(RetryBudgetConfig {
                    ratio: config.retry_budget_ratio,
                    ..Default::default()
                }),
                breaker,
            )
        };
        let client = ServiceClient::new(
            storagesvc,
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        )?;
        // A slow read's twin, and a failed attempt's first retry, go to another address
        // while more than one is in rotation.
        resilience.hedge = config.hedge_after.0;
        let balanced = client.clone();
        resilience.elsewhere = Some(Elsewhere::new(move || {
            balanced
                .balancer_counts()
                .is_some_and(|counts| counts.in_rotation >= 2)
        }));
        let upstream = Upstream::new(
            client,
            resilience,
            config.cache_max_body_bytes,
            &mut registry,
        );
        let store = LastGoodStore::new(
            LastGoodConfig {
                redis_url: config.redis_url.clone(),
                key_prefix: LAST_GOOD_PREFIX.into(),
                ttl: config.cache_ttl,
                read_timeout: config.cache_read_timeout,
                write_timeout: Duration::from_secs(1),
                max_inflight_writes: 64,
                memory_bytes: config.cache_memory_bytes,
                max_body_bytes: config.cache_max_body_bytes,
                signing_key: signing_key(config.cache_signing_key.as_deref())?,
            },
            &mut registry,
        )
        .map_err(|err| anyhow::anyhow!("REDIS_URL is not usable: {err}"))?;
        store.sync_generation().await;
        let invalidations = store.spawn_invalidation_listener();

        let probe = tokio::spawn(probe_while_open(
            upstream.clone(),
            config.breaker_probe_interval,
            config.attempt_timeout,
        ));
        let health = Health::builder()
            .optional("storagesvc", StoragesvcCheck(upstream.clone()))
            .optional("redis", RedisCheck(store.clone()))
            .build();
        let state = Routes {
            read_path: Arc::new(ReadPath::new(
                upstream.clone(),
                store.clone(),
                StalePolicy {
                    stale_after: config.stale_after,
                    stale_while_late: config.stale_while_late,
                },
                &mut registry,
            )),
            upstream: Arc::new(upstream),
            store: Arc::new(store),
        };
        // Reads are public; writes need a caller credential, checked before anything is
        // sent. booksvc's own credential to storagesvc is another secret, added by the
        // client: the caller's is never passed on.
        let writers = Credentials::new(config.auth_tokens.iter().map(String::as_str));
        writers.warn_if_none("AUTH_TOKENS", "every write (POST, PUT, DELETE)");
        let authenticated = || from_fn_with_state(writers.clone(), require_credentials);
        let routes = Router::new()
            .route("/", get(read_path::read))
            .route(
                "/books",
                get(read_path::read).merge(post(write_path::write).route_layer(authenticated())),
            )
            .route(
                "/books/{id}",
                get(read_path::read).merge(
                    put(write_path::write)
                        .delete(write_path::write)
                        .route_layer(authenticated()),
                ),
            )
            .with_state(state);
        let public = routes.merge(health.clone().public_routes());
        let admin = health
            .admin_routes()
            .merge(shared::metrics::routes(Arc::new(registry)))
            .merge(shared::openapi::routes(&crate::openapi::document())?);
        let service = Service::new(
            (listener, public),
            (admin_listener, admin),
            http_metrics,
            config.common.server_limits(),
            vec![probe, invalidations],
        )?;
        tracing::info!(
            address = %service.address(),
            admin_address = %service.admin_address(),
            "booksvc listening"
        );
        Ok(service)
    }
}

/// A read's attempt timeout is this many times the recent p99 latency (within
/// `ATTEMPT_TIMEOUT_FLOOR` and `ATTEMPT_TIMEOUT`): far above a healthy answer's time, far
/// below the fixed timeout, so a hang is recognised within tens of milliseconds.
const ATTEMPT_TIMEOUT_FACTOR: f64 = 4.0;

/// The adaptive concurrency limit toward storagesvc, or none when `max` is 0.
fn limiter(max: usize) -> anyhow::Result<Option<ConcurrencyLimiter>> {
    if max == 0 {
        return Ok(None);
    }
    let defaults = LimiterConfig::default();
    let config = LimiterConfig {
        max,
        min: defaults.min.min(max),
        initial: defaults.initial.min(max),
        ..defaults
    };
    ConcurrencyLimiter::new(config)
        .map(Some)
        .map_err(|err| anyhow::anyhow!("CONCURRENCY_LIMIT_MAX: {err}"))
}

/// Prefix of booksvc's Redis keys; the version changes with the value format.
pub const LAST_GOOD_PREFIX: &str = "booksvc:v2:";

/// `CACHE_SIGNING_KEY`, or a random key for this process only (and a warning).
fn signing_key(configured: Option<&str>) -> anyhow::Result<SigningKey> {
    match configured.filter(|key| !key.is_empty()) {
        Some(key) => SigningKey::new(key.as_bytes())
            .map_err(|err| anyhow::anyhow!("CACHE_SIGNING_KEY: {err}")),
        None => {
            tracing::warn!(
                "CACHE_SIGNING_KEY is not set: answers are signed with a random key of this process, so answers stored in Redis by other replicas, or before a restart, will not be served"
            );
            SigningKey::random().map_err(|err| anyhow::anyhow!(err))
        }
    }
}

/// The breaker, with every transition logged and counted, and its state as a gauge.
fn breaker(config: &Config, registry: &mut Registry) -> CircuitBreaker {
    let transitions = Family::<TransitionLabels, Counter>::default();
    let state = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    registry.register(
        "breaker_transitions",
        "Circuit breaker state changes for storagesvc, by from and to",
        transitions.clone(),
    );
    registry.register(
        "breaker_state",
        "Circuit breaker for storagesvc: 0 closed, 1 half-open, 2 open",
        state.clone(),
    );
    let breaker_config = BreakerConfig {
        consecutive_failures: config.breaker_consecutive_failures,
        open_max: config.breaker_open_max,
        ..Default::default()
    };
    CircuitBreaker::with_transition_hook(breaker_config, move |from, to| {
        transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        state.set(match to {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
        match to {
            BreakerState::Open => {
                tracing::warn!(%from, %to, "circuit breaker for storagesvc opened")
            }
            _ => tracing::info!(%from, %to, "circuit breaker for storagesvc changed state"),
        }
    })
}

/// While the breaker is open, asks storagesvc's readiness every `interval`; when it is
/// healthy, moves the breaker to half-open so recovery does not wait out the whole delay.
async fn probe_while_open(upstream: Upstream, interval: Duration, timeout: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let breaker = &upstream.resilience().breaker;
        if breaker.state() != BreakerState::Open {
            continue;
        }
        let check =
            upstream
                .client()
                .execute(Method::GET, "/.well-known/health", HeaderMap::new(), None);
        if let Ok(Ok(response)) = tokio::time::timeout(timeout, check).await
            && response.status() == StatusCode::OK
        {
            tracing::info!("storagesvc reports healthy; letting a probe through");
            breaker.half_open();
        }
    }
}

/// Reported, never fatal: serving stale answers while storagesvc is down is booksvc's job.
struct StoragesvcCheck(Upstream);

impl HealthCheck for StoragesvcCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
        Box::pin(async move {
            let state = self.0.resilience().breaker.state();
            let details = json!({ "breaker": state.as_str() });
            if state == BreakerState::Closed {
                CheckOutcome::up(details)
            } else {
                CheckOutcome::down(details)
            }
        })
    }
}

/// Reported, never fatal: without Redis the memory copy still serves.
struct RedisCheck(LastGoodStore);

impl HealthCheck for RedisCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
        Box::pin(async move {
            match self.0.redis_reachable().await {
                Ok(()) => CheckOutcome::up(json!({})),
                Err(error) => CheckOutcome::down(json!({ "error": error })),
            }
        })
    }
}
