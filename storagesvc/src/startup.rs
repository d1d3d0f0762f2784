//! Building and running the service: `Application::build` binds (port 0 works, for tests)
//! and wires everything; the `shared::server::Service` it returns serves until SIGTERM.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::json;
use shared::auth::require_credentials;
use shared::health::{CheckOutcome, Health, HealthCheck};
use shared::metrics::HttpMetrics;
use shared::server::Service;

use crate::admission::{Admission, admit};
use crate::config::Config;
use crate::db::Database;
use crate::routes::{self, AppState};

/// Builds storagesvc: `Application::build(config)` gives the bound, fully wired service.
pub struct Application;

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Service> {
        let listener = Service::bind(config.bind_addr).await?;
        let admin_listener = Service::bind_admin(config.admin_bind_addr).await?;
        let credentials = config.credentials()?;

        let mut registry = Registry::default();
        let http_metrics = HttpMetrics::register(&mut registry);
        let db = Database::new(
            config.database_url,
            config.db_acquire_timeout,
            config.db_query_timeout,
            config.db_commit_timeout,
            config.db_max_connections,
            &mut registry,
        );
        let watcher = tokio::spawn(Arc::clone(&db).watch());

        credentials.log_modes(Config::CREDENTIAL_VARIABLES, "/books");

        let state = AppState {
            db: Arc::clone(&db),
            retry_after: config.db_retry_after,
        };
        let admission = Admission::new(
            db.reachability(),
            config.db_max_connections as usize,
            config.db_retry_after,
            &mut registry,
        );
        // Credentials first (the outer layer), then admission: a caller without a
        // credential never takes a place among the requests in progress.
        let books = routes::books(state)
            .route_layer(axum::middleware::from_fn_with_state(admission, admit))
            .route_layer(axum::middleware::from_fn_with_state(
                credentials,
                require_credentials,
            ));
        let (books, faults_admin) = crate::faults::install(config.fault_injection, books);
        let health = Health::builder()
            .critical("database", DatabaseCheck(db))
            .build();
        let public = books.merge(health.clone().public_routes());
        let admin = health
            .admin_routes()
            .merge(shared::metrics::routes(Arc::new(registry)))
            .merge(shared::openapi::routes(&crate::openapi::document())?)
            .merge(faults_admin);

        let service = Service::new(
            (listener, public),
            (admin_listener, admin),
            http_metrics,
            config.common.server_limits(),
            vec![watcher],
        )?;
        tracing::info!(
            address = %service.address(),
            admin_address = %service.admin_address(),
            "storagesvc listening"
        );
        Ok(service)
    }
}

/// Readiness: the schema is migrated and the database answered the watcher's last check,
/// a pooled connection included. The watcher's verdict, not a ping of its own: a probe
/// must neither wait behind a full pool nor fail because the pool is busy serving.
struct DatabaseCheck(Arc<Database>);

impl HealthCheck for DatabaseCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckOutcome> + Send + '_>> {
        Box::pin(async move {
            let db = &self.0;
            if db.ready() {
                CheckOutcome::up(json!({ "migrated": true }))
            } else {
                let error = db
                    .reachability()
                    .last_error()
                    .unwrap_or_else(|| "the database has not answered yet".to_owned());
                CheckOutcome::down(json!({ "migrated": db.schema_ready(), "error": error }))
            }
        })
    }
}
