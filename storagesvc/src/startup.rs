//! Building and running the service: `Application::build` binds (port 0 works, for tests)
//! and wires everything; `run_until_stopped` serves until SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::json;
use shared::health::{CheckOutcome, Health, HealthCheck};
use shared::metrics::HttpMetrics;
use shared::server::{serve, shutdown_signal, with_common_layers};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Credentials, require_credentials};
use crate::config::Config;
use crate::db::Database;
use crate::routes::{self, AppState};

/// A bound, fully wired storagesvc, ready to serve.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
    shutdown_grace: Duration,
    watcher: JoinHandle<()>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.bind_addr).await.map_err(|err| {
            anyhow::anyhow!("cannot listen on BIND_ADDR={}: {err}", config.bind_addr)
        })?;
        let address = listener.local_addr()?;

        let mut registry = Registry::default();
        let http_metrics = HttpMetrics::register(&mut registry);
        let db = Database::new(
            config.database_url,
            config.db_acquire_timeout,
            config.db_query_timeout,
            config.db_max_connections,
            &mut registry,
        );
        let watcher = tokio::spawn(Arc::clone(&db).watch());

        let credentials = Credentials::new(config.auth_tokens.iter().map(String::as_str));
        if credentials.is_disabled() {
            tracing::warn!(
                "AUTH_TOKENS is empty: /books is open to anyone who can reach this service. \
                 Set AUTH_TOKENS to the credentials callers must present."
            );
        }

        let state = AppState {
            db: Arc::clone(&db),
            retry_after: config.db_retry_after,
        };
        let books = routes::books(state).route_layer(axum::middleware::from_fn_with_state(
            credentials,
            require_credentials,
        ));
        let health = Health::builder()
            .critical("database", DatabaseCheck(db))
            .build();
        let router = with_common_layers(
            books
                .merge(health.routes())
                .merge(shared::metrics::routes(Arc::new(registry))),
            http_metrics,
        );

        tracing::info!(%address, "storagesvc listening");
        Ok(Self {
            listener,
            address,
            router,
            shutdown_grace: config.common.shutdown_grace,
            watcher,
        })
    }

    /// The address actually bound (the real port when `BIND_ADDR` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves (tests use this to stop a service they started).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = serve(self.listener, self.router, shutdown, self.shutdown_grace).await;
        self.watcher.abort();
        result
    }
}

/// Readiness: the schema is migrated and the database answers a ping.
struct DatabaseCheck(Arc<Database>);

impl HealthCheck for DatabaseCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
        Box::pin(async move {
            match self.0.ping().await {
                Ok(()) => CheckOutcome::up(json!({ "migrated": true })),
                Err(err) => CheckOutcome::down(json!({
                    "migrated": self.0.schema_ready(),
                    "error": err.to_string(),
                })),
            }
        })
    }
}
