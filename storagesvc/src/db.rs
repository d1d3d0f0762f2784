//! PostgreSQL access, bounded in time so a dead or hanging database fails requests fast.
//!
//! Two bounds, one per phase, keep every request short when the database is in trouble:
//! - getting a connection: the pool's acquire timeout (`DB_ACQUIRE_TIMEOUT`). A stopped or
//!   refusing database fails within it, and so does a paused one when a new connection is
//!   needed or an idle one is pinged;
//! - using it: the query timeout (`DB_QUERY_TIMEOUT`) around the work on the connection, so
//!   a database that hangs mid-query (or is paused while a pooled connection looks fine)
//!   cannot hold a request longer. PostgreSQL's own `statement_timeout` is set to the same,
//!   so the server also stops work nobody waits for.
//!
//! Both shrink to the caller's deadline (`x-request-timeout-ms`, see `shared::deadline`)
//! when it is nearer: the caller then reads our 503 instead of timing out on us.
//!
//! **A `503` on a write means "not applied".** Every write runs in a transaction
//! ([`Database::with_transaction`]), single statements included, so there is one moment
//! where its fate is sealed: `COMMIT`. Until `COMMIT` is sent, a timeout or a broken
//! connection leaves an open transaction that PostgreSQL rolls back when the connection
//! closes: nothing was applied, a `503` is the truth. Once `COMMIT` is sent it is not cut
//! off by the query bound; it gets its own, longer bound (`DB_COMMIT_TIMEOUT`), and if that
//! passes or the connection breaks before the answer, nobody can know whether the write
//! was applied: [`DbError::OutcomeUnknown`], a `504`, and the connection is discarded.
//! An error *answer* to `COMMIT` means PostgreSQL rolled back, so it is not unknown.
//!
//! Only connections idle for a while are pinged before use: one used a moment ago is
//! almost surely alive, and pinging every time would double the round trips per request.
//! A connection broken since its last use fails its query at once, which is a fast 503.
//!
//! The service starts without its database: [`Database::watch`] applies migrations as soon
//! as the database answers, then keeps the reachability gauge current.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared::deadline;
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions, PgSeverity, Postgres,
};
use sqlx::types::Json;

use crate::domain::{Book, IdempotencyKey, NewBook, Page};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Connections idle longer than this are pinged before use (a database restart since then
/// would have broken them).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// How long one attempt to migrate may take; a database that hangs meanwhile is retried.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often reachability is checked while the database answers.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Back-off between attempts while it does not, from the first to the largest.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(250);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Idempotency keys are honoured for a day, then purged (checked this often).
const IDEMPOTENCY_KEY_RETENTION_HOURS: i32 = 24;
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

const REACHABILITY_UNKNOWN: u8 = 0;
const REACHABILITY_UP: u8 = 1;
const REACHABILITY_DOWN: u8 = 2;

/// Why a database operation failed, as far as a caller needs to know.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Not reachable, refusing, hanging or restarting: worth retrying later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Reachable, but the migrations have not run yet (the service started before it).
    #[error("the database schema is not ready yet: migrations have not run")]
    SchemaNotReady,
    /// `COMMIT` was sent and no answer came (timeout or broken connection): the write may
    /// or may not have been applied.
    #[error("the outcome of a commit is unknown: {0}")]
    OutcomeUnknown(String),
    /// Anything else: a bug or a broken database, not a passing outage.
    #[error("database error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            DbError::Unavailable(err.to_string())
        } else {
            DbError::Other(err.to_string())
        }
    }
}

/// Errors that mean "the database is not there right now" rather than "this query is wrong".
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: shutting down or starting up;
            // 57014: statement_timeout fired; 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "57014" || code == "53300"
        }),
        _ => false,
    }
}

/// Whether a failed `COMMIT` leaves the outcome unknown: anything but an error answer of
/// severity ERROR (after which PostgreSQL has rolled back) — a broken connection, a
/// protocol failure, or a FATAL that ended the session around the commit.
fn commit_outcome_unknown(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_none_or(|pg| !matches!(pg.severity(), PgSeverity::Error)),
        _ => true,
    }
}

/// The response of a create, as stored for `Idempotency-Key` replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedResponse {
    pub location: String,
    pub body: Vec<u8>,
}

/// What a create did.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(CreatedResponse),
    /// The key was seen before with the same request: the first response, again.
    Replayed(CreatedResponse),
    /// The key was seen before with a different request.
    KeyReused,
}

/// The books store: a lazily connecting pool plus the bounds above.
pub struct Database {
    pool: PgPool,
    acquire_timeout: Duration,
    query_timeout: Duration,
    commit_timeout: Duration,
    schema_ready: AtomicBool,
    /// Last reachability seen by the watcher: one of the `REACHABILITY_*` values.
    reachability: AtomicU8,
    reachable_gauge: Gauge<i64, AtomicI64>,
}

impl Database {
    /// Creates the pool without connecting: the service must start while the database is down.
    pub fn new(
        options: PgConnectOptions,
        acquire_timeout: Duration,
        query_timeout: Duration,
        commit_timeout: Duration,
        max_connections: u32,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let statement_timeout = format!("{}", query_timeout.as_millis().max(1));
        let options = options
            .application_name("storagesvc")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            // A fixed-size pool: opening a connection (TCP and SCRAM authentication) takes
            // long enough on a busy machine to exceed the acquire timeout, so connections,
            // once opened, are kept rather than closed when idle. sqlx opens them on demand
            // and restores the minimum only in its periodic maintenance, so right after
            // start-up or an outage the pool grows with the load.
            .min_connections(max_connections)
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        let reachable_gauge = Gauge::default();
        registry.register(
            "database_up",
            "1 when the database answered the last check, 0 when it did not",
            reachable_gauge.clone(),
        );
        Arc::new(Self {
            pool,
            acquire_timeout,
            query_timeout,
            commit_timeout,
            schema_ready: AtomicBool::new(false),
            reachability: AtomicU8::new(REACHABILITY_UNKNOWN),
            reachable_gauge,
        })
    }

    /// Runs `operation` on a pooled connection: acquiring is bounded by the pool's acquire
    /// timeout, the operation by the query timeout. A connection whose operation timed out
    /// is in an unknown state (a query may still be running), so it is closed, not reused.
    /// For reads (and work whose outcome nobody waits for); writes use
    /// [`Database::with_transaction`].
    async fn with_connection<T>(
        &self,
        operation: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbError> {
        let (mut connection, query_within) = self.acquire().await?;
        match tokio::time::timeout(query_within, operation(&mut connection)).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => {
                drop(connection.detach());
                Err(DbError::Unavailable(format!(
                    "no answer within {query_within:?}"
                )))
            }
        }
    }

    /// Runs `work` in a transaction and commits it, so that a failure is `Unavailable`
    /// (nothing applied) up to the moment `COMMIT` is sent and `OutcomeUnknown` after it
    /// (see the module documentation). `work` is bounded by the query timeout, `COMMIT` by
    /// the commit timeout. On any failure the connection is closed: PostgreSQL then rolls
    /// back whatever was not committed.
    async fn with_transaction<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbError> {
        let (mut connection, query_within) = self.acquire().await?;
        let statements = async {
            sqlx::query("BEGIN").execute(&mut *connection).await?;
            work(&mut connection).await
        };
        let value = match tokio::time::timeout(query_within, statements).await {
            Ok(Ok(value)) => value,
            Ok(Err(err)) => {
                drop(connection.detach());
                return Err(DbError::from(err));
            }
            Err(_) => {
                drop(connection.detach());
                return Err(DbError::Unavailable(format!(
                    "no answer within {query_within:?}, before the commit"
                )));
            }
        };
        // From here on the write may be applied at any moment: the commit is waited for,
        // not abandoned at the query bound, and only a bound of its own ends the wait.
        let commit_within = deadline::bounded(self.commit_timeout);
        let commit = sqlx::query("COMMIT").execute(&mut *connection);
        match tokio::time::timeout(commit_within, commit).await {
            Ok(Ok(_)) => Ok(value),
            Ok(Err(err)) if commit_outcome_unknown(&err) => {
                drop(connection.detach());
                Err(DbError::OutcomeUnknown(format!(
                    "the connection failed during COMMIT: {err}"
                )))
            }
            Ok(Err(err)) => Err(DbError::from(err)),
            Err(_) => {
                drop(connection.detach());
                Err(DbError::OutcomeUnknown(format!(
                    "no answer to COMMIT within {commit_within:?}"
                )))
            }
        }
    }

    /// A pooled connection within the acquire bound, and the time left for the query.
    async fn acquire(&self) -> Result<(PoolConnection<Postgres>, Duration), DbError> {
        if !self.schema_ready.load(Ordering::Acquire) {
            return Err(DbError::SchemaNotReady);
        }
        // Each bound shrinks to what is left of the caller's own deadline, if it sent one,
        // so the caller gets this 503 rather than giving up on us first.
        let acquire_within = deadline::bounded(self.acquire_timeout);
        let connection = match tokio::time::timeout(acquire_within, self.pool.acquire()).await {
            Ok(connection) => connection?,
            Err(_) => {
                return Err(DbError::Unavailable(format!(
                    "no connection within {acquire_within:?}"
                )));
            }
        };
        let query_within = deadline::bounded(self.query_timeout);
        if query_within.is_zero() {
            // The caller's time ran out while waiting for the connection; it goes back to
            // the pool unused.
            return Err(DbError::Unavailable(
                "the caller's deadline passed before the query could start".into(),
            ));
        }
        Ok((connection, query_within))
    }

    pub async fn list_books(&self, page: Page) -> Result<Vec<Book>, DbError> {
        self.with_connection(async |connection| {
            sqlx::query_as::<_, Book>(
                r#"SELECT id, title, author, "desc" FROM books ORDER BY id LIMIT $1 OFFSET $2"#,
            )
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(connection)
            .await
        })
        .await
    }

    pub async fn get_book(&self, id: i64) -> Result<Option<Book>, DbError> {
        self.with_connection(async |connection| {
            sqlx::query_as::<_, Book>(
                r#"SELECT id, title, author, "desc" FROM books WHERE id = $1"#,
            )
            .bind(id)
            .fetch_optional(connection)
            .await
        })
        .await
    }

    pub async fn update_book(&self, id: i64, book: &NewBook) -> Result<Option<Book>, DbError> {
        self.with_transaction(async |connection| {
            sqlx::query_as::<_, Book>(
                r#"UPDATE books SET title = $2, author = $3, "desc" = $4 WHERE id = $1
                   RETURNING id, title, author, "desc""#,
            )
            .bind(id)
            .bind(book.title())
            .bind(book.author())
            .bind(book.desc())
            .fetch_optional(connection)
            .await
        })
        .await
    }

    /// `true` when a book was deleted, `false` when there was none with that id.
    pub async fn delete_book(&self, id: i64) -> Result<bool, DbError> {
        let result = self
            .with_transaction(async |connection| {
                sqlx::query("DELETE FROM books WHERE id = $1")
                    .bind(id)
                    .execute(connection)
                    .await
            })
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Inserts a book. With a key, the insert and the stored response commit together, and
    /// concurrent requests with the same key are serialised by an advisory lock, so a key
    /// creates at most one book however often and however concurrently it is retried.
    pub async fn create_book(
        &self,
        book: &NewBook,
        key: Option<&IdempotencyKey>,
    ) -> Result<CreateOutcome, DbError> {
        self.with_transaction(async |connection| {
            if let Some(key) = key {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(key.as_str())
                    .execute(&mut *connection)
                    .await?;
                let previous: Option<(bool, String, Vec<u8>)> = sqlx::query_as(
                    "SELECT request = $2, location, response_body FROM idempotency_keys WHERE key = $1",
                )
                .bind(key.as_str())
                .bind(Json(book))
                .fetch_optional(&mut *connection)
                .await?;
                if let Some((same_request, location, body)) = previous {
                    // Nothing was written: the commit only ends the read and the lock.
                    return Ok(if same_request {
                        CreateOutcome::Replayed(CreatedResponse { location, body })
                    } else {
                        CreateOutcome::KeyReused
                    });
                }
            }
            let created: Book = sqlx::query_as(
                r#"INSERT INTO books (title, author, "desc") VALUES ($1, $2, $3)
                   RETURNING id, title, author, "desc""#,
            )
            .bind(book.title())
            .bind(book.author())
            .bind(book.desc())
            .fetch_one(&mut *connection)
            .await?;
            let response = CreatedResponse {
                location: format!("/books/{}", created.id),
                body: serde_json::to_vec(&created).map_err(|err| sqlx::Error::Encode(Box::new(err)))?,
            };
            if let Some(key) = key {
                sqlx::query(
                    "INSERT INTO idempotency_keys (key, request, response_status, location, response_body)
                     VALUES ($1, $2, 201, $3, $4)",
                )
                .bind(key.as_str())
                .bind(Json(book))
                .bind(&response.location)
                .bind(&response.body)
                .execute(&mut *connection)
                .await?;
            }
            Ok(CreateOutcome::Created(response))
        })
        .await
    }

    /// Readiness: the schema is in place and the database answers now. Every ping, the
    /// watcher's or a readiness probe's, updates the reachability gauge.
    pub async fn ping(&self) -> Result<(), DbError> {
        let result = self
            .with_connection(async |connection| sqlx::query("SELECT 1").execute(connection).await)
            .await
            .map(drop);
        self.record_reachability(&result);
        result
    }

    pub fn schema_ready(&self) -> bool {
        self.schema_ready.load(Ordering::Acquire)
    }

    /// Runs for the life of the service: migrates once the database answers, then keeps
    /// reachability (gauge and log) current and purges expired idempotency keys.
    pub async fn watch(self: Arc<Self>) {
        let mut retry = WATCH_RETRY_MIN;
        let mut last_purge: Option<Instant> = None;
        loop {
            let result = match self.migrate_if_needed().await {
                Ok(()) => self.ping().await,
                Err(err) => {
                    self.record_reachability(&Err::<(), _>(&err));
                    Err(err)
                }
            };
            let pause = match result {
                Ok(()) => {
                    if last_purge.is_none_or(|at| at.elapsed() >= PURGE_INTERVAL) {
                        self.purge_expired_keys().await;
                        last_purge = Some(Instant::now());
                    }
                    retry = WATCH_RETRY_MIN;
                    WATCH_INTERVAL
                }
                Err(_) => {
                    let pause = retry;
                    retry = (retry * 2).min(WATCH_RETRY_MAX);
                    pause
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    async fn migrate_if_needed(&self) -> Result<(), DbError> {
        if self.schema_ready() {
            return Ok(());
        }
        match tokio::time::timeout(MIGRATION_TIMEOUT, MIGRATOR.run(&self.pool)).await {
            Ok(Ok(())) => {
                self.schema_ready.store(true, Ordering::Release);
                tracing::info!("database migrations applied");
                Ok(())
            }
            Ok(Err(sqlx::migrate::MigrateError::Execute(err))) => Err(DbError::from(err)),
            Ok(Err(err)) => {
                // Not an outage: a migration itself is broken. Keep retrying (someone may
                // fix the database), but say so loudly.
                tracing::error!(error = %err, "database migrations failed");
                Err(DbError::Other(err.to_string()))
            }
            Err(_) => Err(DbError::Unavailable(format!(
                "migrations did not finish within {MIGRATION_TIMEOUT:?}"
            ))),
        }
    }

    fn record_reachability<E: std::fmt::Display>(&self, result: &Result<(), E>) {
        self.reachable_gauge.set(i64::from(result.is_ok()));
        let now = if result.is_ok() {
            REACHABILITY_UP
        } else {
            REACHABILITY_DOWN
        };
        let before = self.reachability.swap(now, Ordering::AcqRel);
        // Log changes only: an outage is one warning, not one every few seconds.
        match result {
            Ok(()) if before != REACHABILITY_UP => tracing::info!("database reachable"),
            Err(err) if before != REACHABILITY_DOWN => {
                tracing::warn!(error = %err, "database unreachable")
            }
            Err(err) => tracing::debug!(error = %err, "database still unreachable"),
            Ok(()) => {}
        }
    }

    async fn purge_expired_keys(&self) {
        let purge = async |connection: &mut PgConnection| {
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
            )
            .bind(IDEMPOTENCY_KEY_RETENTION_HOURS)
            .execute(connection)
            .await
        };
        match self.with_connection(purge).await {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(
                    purged = done.rows_affected(),
                    "purged expired idempotency keys"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not purge expired idempotency keys"),
        }
    }
}
