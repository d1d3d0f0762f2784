//! Real dependencies in containers, with the faults the tests inject: stop, start, pause.
//!
//! Images come from `POSTGRES_IMAGE` (`name:tag`), defaulting to the official image; on
//! machines without a registry, `scripts/offline-images.sh` builds one and exports the name.
//!
//! A container's host port is fixed when it is created: Docker gives a restarted container
//! a new random port otherwise, and the service under test, configured once with a URL,
//! would lose its database for good.

use std::net::TcpListener;
use std::time::Duration;

use testcontainers::core::{ExecCommand, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const POSTGRES_USER: &str = "bookstore";
pub const POSTGRES_PASSWORD: &str = "bookstore-test-password";
pub const POSTGRES_DB: &str = "books";
/// Redis runs as in a deployment: with a password and a memory bound that evicts.
pub const REDIS_PASSWORD: &str = "redis-test-password";
pub const REDIS_MAXMEMORY: &str = "64mb";

/// Fails the test with a clear message when no Docker engine answers. These tests are
/// never skipped: a run without Docker is a failed run, in CI and anywhere else.
pub async fn require_docker() {
    let reachable = match testcontainers::core::client::docker_client_instance().await {
        Ok(docker) => docker.ping().await.map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = reachable {
        panic!(
            "these system tests need a running Docker engine and none answered ({err}). \
             Start Docker (and on a machine without an image registry, run \
             `eval \"$(scripts/offline-images.sh)\"` first)."
        );
    }
}

/// `name:tag` from the environment, or the default.
fn image_from_env(variable: &str, default: &str) -> (String, String) {
    split_reference(&std::env::var(variable).unwrap_or_else(|_| default.to_owned()))
}

/// Splits an image reference into name and tag. The tag follows the last ':' after the
/// last '/', since a registry host may carry a port.
fn split_reference(reference: &str) -> (String, String) {
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    match reference[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (
                reference[..colon].to_owned(),
                reference[colon + 1..].to_owned(),
            )
        }
        None => (reference.to_owned(), "latest".to_owned()),
    }
}

/// A free TCP port on the host, to fix a container's mapping before it is created.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The faults a test injects into a dependency, the same for every container.
#[allow(async_fn_in_trait)]
pub trait Faults {
    fn container(&self) -> &ContainerAsync<GenericImage>;

    /// `docker stop`: the process shuts down, connections close, new ones are refused.
    async fn stop(&self) {
        self.container()
            .stop_with_timeout(Some(10))
            .await
            .expect("docker stop");
    }

    /// `docker start` after a stop: same host port, same data.
    async fn start_again(&self) {
        self.container().start().await.expect("docker start");
    }

    /// `docker pause`: the process is frozen; connections neither fail nor answer (a hang).
    async fn pause(&self) {
        self.container().pause().await.expect("docker pause");
    }

    async fn unpause(&self) {
        self.container().unpause().await.expect("docker unpause");
    }
}

/// A PostgreSQL container on a fixed host port.
pub struct Postgres {
    container: ContainerAsync<GenericImage>,
    host_port: u16,
}

impl Postgres {
    /// Starts PostgreSQL on a free host port.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts PostgreSQL on `host_port` (which a service may already be configured with).
    pub async fn start_on(host_port: u16) -> Self {
        require_docker().await;
        let (name, tag) = image_from_env("POSTGRES_IMAGE", "postgres:15");
        let container = GenericImage::new(name, tag)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_USER", POSTGRES_USER)
            .with_env_var("POSTGRES_PASSWORD", POSTGRES_PASSWORD)
            .with_env_var("POSTGRES_DB", POSTGRES_DB)
            .with_mapped_port(host_port, 5432.tcp())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .expect("start the PostgreSQL container");
        Self {
            container,
            host_port,
        }
    }

    /// The URL a service on the host uses to reach this database.
    pub fn url(&self) -> String {
        url_for_port(self.host_port)
    }

    /// How many sessions `application_name` has open, as PostgreSQL counts them.
    pub async fn sessions_of(&self, application_name: &str) -> usize {
        let query = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
        );
        let count = self.psql(&query).await;
        count
            .parse()
            .unwrap_or_else(|_| panic!("a session count from psql, got {count:?}"))
    }
}

impl Postgres {
    /// Runs `sql` as the superuser in the database container and returns what psql printed
    /// (unaligned, tuples only).
    pub async fn psql(&self, sql: &str) -> String {
        let mut psql = self
            .container
            .exec(ExecCommand::new([
                "psql",
                "-U",
                POSTGRES_USER,
                "-d",
                POSTGRES_DB,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ]))
            .await
            .expect("psql runs in the database container");
        let stdout = String::from_utf8(psql.stdout_to_vec().await.unwrap()).unwrap();
        let stderr = String::from_utf8(psql.stderr_to_vec().await.unwrap()).unwrap();
        assert_eq!(
            psql.exit_code().await.unwrap(),
            Some(0),
            "psql -c {sql:?} failed: {stderr}"
        );
        stdout.trim().to_owned()
    }

    /// Whether PostgreSQL accepts connections now (`pg_isready` in its container): a
    /// restarted database is healthy from this moment on.
    pub async fn accepts_connections(&self) -> bool {
        let Ok(mut ready) = self
            .container
            .exec(ExecCommand::new([
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-U",
                POSTGRES_USER,
                "-d",
                POSTGRES_DB,
            ]))
            .await
        else {
            return false;
        };
        // Read to the end first: the exit code is known once the command has exited.
        let _ = ready.stdout_to_vec().await;
        ready.exit_code().await.ok().flatten() == Some(0)
    }

    /// Makes every commit wait for a synchronous standby that does not exist: the commit
    /// record is written, but `COMMIT` does not answer until the wait is released (a
    /// client that goes away meanwhile leaves the commit in place). A commit held half-way,
    /// deterministically.
    pub async fn hold_commits(&self) {
        self.psql("ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'")
            .await;
        self.psql("SELECT pg_reload_conf()").await;
    }

    /// Ends [`Postgres::hold_commits`]: held commits complete.
    pub async fn release_commits(&self) {
        self.psql("ALTER SYSTEM RESET synchronous_standby_names")
            .await;
        self.psql("SELECT pg_reload_conf()").await;
    }
}

impl Faults for Postgres {
    fn container(&self) -> &ContainerAsync<GenericImage> {
        &self.container
    }
}

/// A Redis container on a fixed host port, started with `--requirepass` and
/// `--maxmemory` + `allkeys-lru` (both the official and the offline image pass leading
/// `--options` to redis-server).
pub struct Redis {
    container: ContainerAsync<GenericImage>,
    host_port: u16,
}

impl Redis {
    pub async fn start() -> Self {
        require_docker().await;
        let host_port = free_port();
        let (name, tag) = image_from_env("REDIS_IMAGE", "redis:7");
        let container = GenericImage::new(name, tag)
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_cmd([
                "--requirepass",
                REDIS_PASSWORD,
                "--maxmemory",
                REDIS_MAXMEMORY,
                "--maxmemory-policy",
                "allkeys-lru",
            ])
            .with_mapped_port(host_port, 6379.tcp())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .expect("start the Redis container");
        Self {
            container,
            host_port,
        }
    }

    /// The URL booksvc is configured with: the password included.
    pub fn url(&self) -> String {
        self.url_with_password(REDIS_PASSWORD)
    }

    /// The same server with another password (an empty one: none at all).
    pub fn url_with_password(&self, password: &str) -> String {
        if password.is_empty() {
            format!("redis://127.0.0.1:{}", self.host_port)
        } else {
            format!("redis://:{password}@127.0.0.1:{}", self.host_port)
        }
    }

    /// A connection with the password, for a test to look into or tamper with Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }

    /// How many times Redis has served `command` (lower case, e.g. `setex`), from
    /// `INFO commandstats`.
    pub async fn calls_of(&self, command: &str) -> u64 {
        let mut redis = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    /// The keys matching `pattern`, counted with `SCAN` (never `KEYS`).
    pub async fn count_keys(&self, pattern: &str) -> usize {
        let mut redis = self.connection().await;
        let mut keys: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(&mut redis, pattern)
                .await
                .unwrap();
        let mut count = 0;
        while let Some(key) = keys.next_item().await {
            key.unwrap();
            count += 1;
        }
        count
    }
}

impl Faults for Redis {
    fn container(&self) -> &ContainerAsync<GenericImage> {
        &self.container
    }
}

/// The URL of a test database on `host_port`, whether or not one is running there yet.
pub fn url_for_port(host_port: u16) -> String {
    format!("postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{host_port}/{POSTGRES_DB}")
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn image_references_split_into_name_and_tag() {
        let split = |r: &str| split_reference(r);
        assert_eq!(split("postgres:17"), ("postgres".into(), "17".into()));
        assert_eq!(
            split("bookstore/postgres:15"),
            ("bookstore/postgres".into(), "15".into())
        );
        assert_eq!(
            split("host:5000/pg"),
            ("host:5000/pg".into(), "latest".into())
        );
    }
}
