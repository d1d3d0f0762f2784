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
//! as the database answers, then keeps [`Reachability`] current and the pool full.
//!
//! **Learning fast that the database is gone.** A request that finds the database
//! unavailable marks it down at once and wakes the watcher, so the admission gate refuses
//! the next requests in milliseconds instead of each waiting out a bound of its own. The
//! watcher checks on a connection of its own, never a pooled one: a full pool must not
//! delay the verdict. While the database is down it checks every 250 ms, so its return is
//! noticed as quickly.
//!
//! **Keeping the pool full.** Opening a connection (a PostgreSQL process start and a
//! password exchange) takes 100 ms or more on a busy machine, so the pool has a fixed size
//! and the watcher opens every missing connection: after start-up and after an outage
//! before it says "up" and requests are let in, and at each check while the database is
//! up ([`Database::refill`]). Left to itself, a lazily connected sqlx pool grows with the
//! load, one connection at a time, each opened on a request's clock. When the watcher
//! finds the database down, the idle connections are closed: after a restart they are
//! broken, and a paused database may hold them in any state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shared::deadline;
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions, PgSeverity, Postgres,
};
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::domain::{Book, IdempotencyKey, NewBook, Page};
use crate::reachability::Reachability;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A row of `books`, as the queries select it; a [`Book`] on the wire.
#[derive(sqlx::FromRow)]
struct BookRow {
    id: i64,
    title: String,
    author: String,
    desc: String,
}

impl From<BookRow> for Book {
    fn from(row: BookRow) -> Self {
        Book {
            id: row.id,
            title: row.title,
            author: row.author,
            desc: row.desc,
        }
    }
}

/// Connections idle longer than this are pinged before use (a database restart since then
/// would have broken them).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// How long one attempt to migrate may take; a database that hangs meanwhile is retried.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often reachability is checked while the database answers. Requests notice an
/// outage sooner (and wake the watcher) when the service is in use.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How often it is checked while the database does not answer: its return is noticed
/// within this.
const WATCH_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Connections opened at the same time while the pool is refilled: enough to fill 16 in a
/// few hundred milliseconds, few enough not to crowd out the requests being served.
const REFILL_PARALLELISM: usize = 4;
/// Longest a refill may keep requests out after an outage; what is still missing then is
/// opened at the next check.
const REFILL_TIMEOUT: Duration = Duration::from_secs(2);
/// Idempotency keys are honoured for a day, then purged (checked this often).
const IDEMPOTENCY_KEY_RETENTION_HOURS: i32 = 24;
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// How the watcher's own connection is named in `pg_stat_activity`, apart from the pool's.
const WATCHER_APPLICATION_NAME: &str = "storagesvc-watcher";

/// What a query does, for its span (an OpenTelemetry database client span, made for traces
/// only: the acquire bound, the statements and, for a write, the commit).
#[derive(Debug, Clone, Copy)]
struct Statement {
    /// `db.operation.name`.
    operation: &'static str,
    /// `db.collection.name`: the table, if one.
    table: Option<&'static str>,
    /// The span's name: the operation and the table.
    name: &'static str,
}

impl Statement {
    const SELECT: Self = Self::on("SELECT", "books", "SELECT books");
    const INSERT: Self = Self::on("INSERT", "books", "INSERT books");
    const UPDATE: Self = Self::on("UPDATE", "books", "UPDATE books");
    const DELETE: Self = Self::on("DELETE", "books", "DELETE books");
    /// The watcher's check that a pooled connection serves.
    const PING: Self = Self {
        operation: "SELECT",
        table: None,
        name: "SELECT",
    };
    const PURGE_KEYS: Self = Self::on("DELETE", "idempotency_keys", "DELETE idempotency_keys");

    const fn on(operation: &'static str, table: &'static str, name: &'static str) -> Self {
        Self {
            operation,
            table: Some(table),
            name,
        }
    }

    fn span(self) -> Span {
        shared::trace_only_span!(
            "query",
            otel.name = self.name,
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.operation.name = self.operation,
            db.collection.name = self.table,
            error.type = Empty,
        )
    }
}

/// Marks a query's span as failed, naming the kind of failure.
fn record_error<T>(span: &Span, result: &Result<T, DbError>) {
    if let Err(err) = result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", err.kind());
    }
}

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

impl DbError {
    /// A short, stable name of the failure (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Unavailable(_) => "unavailable",
            DbError::SchemaNotReady => "schema_not_ready",
            DbError::OutcomeUnknown(_) => "outcome_unknown",
            DbError::Other(_) => "other",
        }
    }
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
    max_connections: u32,
    acquire_timeout: Duration,
    query_timeout: Duration,
    commit_timeout: Duration,
    schema_ready: AtomicBool,
    reachability: Arc<Reachability>,
    /// Wakes the watcher when a request has just found the database unavailable.
    check_now: Notify,
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
            // once opened, are kept as long as they work, never closed for being idle or
            // old, and the watcher opens the missing ones (see the module documentation).
            // sqlx's own upkeep of a minimum stays off: after each connection lost in an
            // outage it retries in the background with a back-off of up to a minute,
            // holding a place in the pool all the while, so the pool would look full and
            // not be.
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
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
        let reachability = Arc::new(Reachability::new(registry));
        registry.register_collector(Box::new(PoolGauges(pool.clone())));
        Arc::new(Self {
            pool,
            max_connections,
            acquire_timeout,
            query_timeout,
            commit_timeout,
            schema_ready: AtomicBool::new(false),
            reachability,
            check_now: Notify::new(),
        })
    }

    /// What the watcher and recent requests know about the database; the admission gate
    /// reads it.
    pub fn reachability(&self) -> Arc<Reachability> {
        Arc::clone(&self.reachability)
    }

    /// Readiness: migrated, and the database answered the watcher's last check, a pooled
    /// connection included.
    pub fn ready(&self) -> bool {
        self.schema_ready() && self.reachability.is_up()
    }

    /// Learns from a request's failure: `Unavailable` means the database is not answering,
    /// and the requests after this one are better refused at once (the watcher, woken,
    /// checks and says "up" again if it was a fluke). Unless the caller's own deadline cut
    /// the request short: then the database may just not have had the time.
    fn learn_from<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        if let Err(err @ DbError::Unavailable(_)) = &result {
            let callers_deadline_passed =
                deadline::answer_by().is_some_and(|at| at <= tokio::time::Instant::now());
            if !callers_deadline_passed {
                self.reachability.mark_down(err);
                self.check_now.notify_one();
            }
        }
        result
    }

    /// Runs `operation` on a pooled connection: acquiring is bounded by the pool's acquire
    /// timeout, the operation by the query timeout. A connection whose operation timed out
    /// is in an unknown state (a query may still be running), so it is closed, not reused.
    /// For reads (and work whose outcome nobody waits for); writes use
    /// [`Database::with_transaction`].
    async fn with_connection<T>(
        &self,
        statement: Statement,
        operation: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbError> {
        let span = statement.span();
        let result = self
            .run_on_connection(operation)
            .instrument(span.clone())
            .await;
        record_error(&span, &result);
        self.learn_from(result)
    }

    async fn run_on_connection<T>(
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
        statement: Statement,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbError> {
        let span = statement.span();
        let result = self.run_in_transaction(work).instrument(span.clone()).await;
        record_error(&span, &result);
        self.learn_from(result)
    }

    async fn run_in_transaction<T>(
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
        let rows = self
            .with_connection(Statement::SELECT, async |connection| {
                sqlx::query_as::<_, BookRow>(
                    r#"SELECT id, title, author, "desc" FROM books ORDER BY id LIMIT $1 OFFSET $2"#,
                )
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(connection)
                .await
            })
            .await?;
        Ok(rows.into_iter().map(Book::from).collect())
    }

    pub async fn get_book(&self, id: i64) -> Result<Option<Book>, DbError> {
        let row = self
            .with_connection(Statement::SELECT, async |connection| {
                sqlx::query_as::<_, BookRow>(
                    r#"SELECT id, title, author, "desc" FROM books WHERE id = $1"#,
                )
                .bind(id)
                .fetch_optional(connection)
                .await
            })
            .await?;
        Ok(row.map(Book::from))
    }

    pub async fn update_book(&self, id: i64, book: &NewBook) -> Result<Option<Book>, DbError> {
        let row = self
            .with_transaction(Statement::UPDATE, async |connection| {
                sqlx::query_as::<_, BookRow>(
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
            .await?;
        Ok(row.map(Book::from))
    }

    /// `true` when a book was deleted, `false` when there was none with that id.
    pub async fn delete_book(&self, id: i64) -> Result<bool, DbError> {
        let result = self
            .with_transaction(Statement::DELETE, async |connection| {
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
        self.with_transaction(Statement::INSERT, async |connection| {
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
            let created: BookRow = sqlx::query_as(
                r#"INSERT INTO books (title, author, "desc") VALUES ($1, $2, $3)
                   RETURNING id, title, author, "desc""#,
            )
            .bind(book.title())
            .bind(book.author())
            .bind(book.desc())
            .fetch_one(&mut *connection)
            .await?;
            let created = Book::from(created);
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

    pub fn schema_ready(&self) -> bool {
        self.schema_ready.load(Ordering::Acquire)
    }

    /// Runs for the life of the service: migrates once the database answers, then keeps
    /// [`Reachability`] current, the pool full, and purges expired idempotency keys. Checks
    /// every [`WATCH_INTERVAL`] while the database answers, every [`WATCH_RETRY_INTERVAL`]
    /// while it does not, and as soon as a request has found it unavailable, but never more
    /// often than every [`WATCH_RETRY_INTERVAL`]: a database that answers pings while
    /// failing queries must not set the watcher spinning.
    pub async fn watch(self: Arc<Self>) {
        let mut own_connection = None;
        let mut last_purge: Option<Instant> = None;
        loop {
            let checked_at = tokio::time::Instant::now();
            match self.check(&mut own_connection).await {
                Ok(()) => {
                    // After start-up or an outage, requests are let in once the pool can
                    // serve them without opening connections on their clock.
                    self.refill().await;
                    self.reachability.mark_up();
                    if last_purge.is_none_or(|at| at.elapsed() >= PURGE_INTERVAL) {
                        self.purge_expired_keys().await;
                        last_purge = Some(Instant::now());
                    }
                }
                Err(err) => {
                    self.reachability.mark_down(&err);
                    self.close_idle_connections();
                }
            }
            let pause = if self.reachability.is_up() {
                WATCH_INTERVAL
            } else {
                WATCH_RETRY_INTERVAL
            };
            tokio::select! {
                () = tokio::time::sleep_until(checked_at + pause) => {}
                () = self.check_now.notified() => {}
            }
            tokio::time::sleep_until(checked_at + WATCH_RETRY_INTERVAL).await;
        }
    }

    /// One check, in the order the answers are needed: does the database answer (on the
    /// watcher's own connection), is the schema migrated, and, before "up" is said after
    /// start-up or an outage, does a pooled connection serve.
    async fn check(&self, own_connection: &mut Option<PgConnection>) -> Result<(), DbError> {
        self.ping_own(own_connection).await?;
        self.migrate_if_needed().await?;
        if !self.reachability.is_up() {
            self.with_connection(Statement::PING, async |connection| {
                sqlx::query("SELECT 1").execute(connection).await
            })
            .await?;
        }
        Ok(())
    }

    /// Pings on the watcher's own connection, opening it first when there is none. Opening
    /// it and the ping each get the acquire bound, the time a request would wait for a
    /// connection. The bound matters for opening too: a database restarting behind a
    /// published port may drop the first packets, and a connect left to TCP's own
    /// retries would wait a second or more where a new attempt 250 ms later succeeds.
    /// A connection that failed is dropped; the next check opens a new one.
    async fn ping_own(&self, own_connection: &mut Option<PgConnection>) -> Result<(), DbError> {
        let connection = match own_connection {
            Some(connection) => connection,
            None => {
                let options = (*self.pool.connect_options())
                    .clone()
                    .application_name(WATCHER_APPLICATION_NAME);
                let connect = PgConnection::connect_with(&options);
                let connection = tokio::time::timeout(self.acquire_timeout, connect)
                    .await
                    .map_err(|_| {
                        DbError::Unavailable(format!(
                            "no connection within {:?}",
                            self.acquire_timeout
                        ))
                    })??;
                own_connection.insert(connection)
            }
        };
        let result = match tokio::time::timeout(self.acquire_timeout, connection.ping()).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => Err(DbError::Unavailable(format!(
                "no answer to a ping within {:?}",
                self.acquire_timeout
            ))),
        };
        if result.is_err() {
            *own_connection = None;
        }
        result
    }

    /// Opens the pool's missing connections, a few at a time, so that requests find them
    /// open instead of opening them on their own clock. Each connection acquired is held
    /// until the pool is full: given back at once, it would be handed out again to the
    /// next acquire, and no new one would be opened. Held, it is out of reach of requests,
    /// which is why the big refills (after start-up or an outage) run before requests are
    /// let in. While they are served, only a connection closed meanwhile (a query cut
    /// off, a connection found broken) is missing, and the few milliseconds of holding
    /// the idle ones while it is replaced cost less than the request that would otherwise
    /// open it. A time-out of one acquire (a busy machine) is tried again; any other
    /// failure stops the refill, and so does [`REFILL_TIMEOUT`]: a pool partly full
    /// serves too, and the next check opens the rest.
    async fn refill(&self) {
        let max = self.max_connections as usize;
        if self.pool.size() as usize >= max {
            return;
        }
        let started = Instant::now();
        let mut held = Vec::with_capacity(max);
        let mut acquiring = JoinSet::new();
        let filling = async {
            while (self.pool.size() as usize) < max {
                // The idle connections are handed out first; only acquires beyond them open
                // new ones.
                let wanted = idle_connections(&self.pool)
                    .saturating_add(max.saturating_sub(self.pool.size() as usize));
                while acquiring.len() < REFILL_PARALLELISM.min(wanted) {
                    acquiring.spawn(self.pool.acquire());
                }
                match acquiring.join_next().await {
                    Some(Ok(Ok(connection))) => held.push(connection),
                    Some(Ok(Err(sqlx::Error::PoolTimedOut))) => {}
                    Some(Ok(Err(err))) => return Err(DbError::from(err)),
                    Some(Err(err)) => return Err(DbError::Other(err.to_string())),
                    None => break,
                }
            }
            Ok(())
        };
        let filled = tokio::time::timeout(REFILL_TIMEOUT, filling).await;
        drop(held);
        // The acquires still under way end with the connections just given back, or with
        // the ones they are opening (aborting those would close them half-open).
        while acquiring.join_next().await.is_some() {}
        let connections = self.pool.size();
        match filled {
            Ok(Ok(())) => tracing::info!(
                connections,
                elapsed_ms = started.elapsed().as_millis(),
                "connection pool filled"
            ),
            Ok(Err(error)) => {
                tracing::warn!(%error, connections, "could not fill the connection pool");
            }
            Err(_) => tracing::warn!(
                connections,
                "the connection pool was not full within {REFILL_TIMEOUT:?}"
            ),
        }
    }

    /// Closes the pool's idle connections once the database is found down: after a
    /// restart each would fail a request before being replaced, and after a pause it may
    /// be in any state. Fresh ones are opened when the database answers again.
    fn close_idle_connections(&self) {
        for _ in 0..idle_connections(&self.pool) {
            match self.pool.try_acquire() {
                // Detached and dropped: closed without the goodbye message, which a paused
                // database would never read.
                Some(connection) => drop(connection.detach()),
                None => break,
            }
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

    async fn purge_expired_keys(&self) {
        let purge = async |connection: &mut PgConnection| {
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
            )
            .bind(IDEMPOTENCY_KEY_RETENTION_HOURS)
            .execute(connection)
            .await
        };
        match self.with_connection(Statement::PURGE_KEYS, purge).await {
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

/// The pool's idle connections, at most its size. sqlx keeps the idle count in an atomic
/// counter that can read below zero, wrapped to near `usize::MAX`, for a moment while
/// connections change hands (seen once as an overflow in `refill`).
fn idle_connections(pool: &PgPool) -> usize {
    pool.num_idle().min(pool.size() as usize)
}

/// `db_pool_connections` and `db_pool_idle_connections`, read from the pool at each scrape.
#[derive(Debug)]
struct PoolGauges(PgPool);

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let idle = i64::try_from(idle_connections(&self.0)).unwrap_or(i64::MAX);
        let gauges = [
            (
                "db_pool_connections",
                "Connections in the pool, in use, idle or being opened",
                i64::from(self.0.size()),
            ),
            (
                "db_pool_idle_connections",
                "Pooled connections not in use",
                idle,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
