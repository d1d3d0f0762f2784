//! storagesvc's settings: environment variables (DESIGN section 6), each also a flag.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use shared::config::{CommonArgs, parse_duration};
use sqlx::postgres::PgConnectOptions;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "storagesvc",
    version,
    about = "Serves books from PostgreSQL; fails fast with 503 + Retry-After while the database is down.",
    after_help = "`storagesvc healthcheck` asks the instance running on this host (port of ADMIN_BIND_ADDR) for readiness and exits 0 when it is ready: the container health check."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8082")]
    pub bind_addr: SocketAddr,

    /// Address of the admin listener: /metrics and detailed health. Never publish it.
    #[arg(long, env = "ADMIN_BIND_ADDR", default_value = "0.0.0.0:9082")]
    pub admin_bind_addr: SocketAddr,

    /// PostgreSQL URL, e.g. postgres://user:password@database:5432/books.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub database_url: PgConnectOptions,

    /// Longest wait for a database connection: how fast a request fails while the
    /// database is down.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,

    /// Longest a query may run once it has a connection (also sent to PostgreSQL as
    /// `statement_timeout`); bounds a request when the database hangs mid-query.
    #[arg(long, env = "DB_QUERY_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub db_query_timeout: Duration,

    /// Size of the connection pool (kept open: a fixed-size pool).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// `Retry-After` sent with 503 while the database is unavailable.
    #[arg(long, env = "DB_RETRY_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub db_retry_after: Duration,

    /// Comma-separated credentials accepted on /books*, as `Authorization: Bearer` or
    /// `X-API-Key`. Empty: /books answers 401 to everyone (fail closed; start-up warns).
    #[arg(
        long,
        env = "AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// The port of the default `ADMIN_BIND_ADDR`, where `healthcheck` looks when it is
    /// unset.
    pub const DEFAULT_ADMIN_PORT: u16 = 9082;
}

fn parse_database_url(value: &str) -> Result<PgConnectOptions, String> {
    // The driver's parser ignores the scheme; a `mysql://` URL would only fail at the first
    // connection, long after start-up, so the scheme is checked here.
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        return Err("expected a URL starting with postgres:// or postgresql://".to_owned());
    }
    PgConnectOptions::from_str(value).map_err(|err| format!("not a PostgreSQL URL: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let config =
            Config::try_parse_from(["storagesvc", "--database-url", "postgres://u:p@h/db"])
                .unwrap();
        assert_eq!(config.bind_addr, "0.0.0.0:8082".parse().unwrap());
        assert_eq!(config.db_acquire_timeout, Duration::from_millis(500));
        assert_eq!(config.db_retry_after, Duration::from_secs(1));
    }

    #[test]
    fn invalid_duration_names_the_variable() {
        let err = Config::try_parse_from([
            "storagesvc",
            "--database-url",
            "postgres://u:p@h/db",
            "--db-acquire-timeout",
            "soon",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--db-acquire-timeout"), "{err}");
        assert!(err.contains("expected a duration"), "{err}");
    }

    #[test]
    fn database_url_must_be_postgres() {
        let err = Config::try_parse_from(["storagesvc", "--database-url", "mysql://u:p@h/db"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres://"), "{err}");
    }

    #[test]
    fn tokens_are_comma_separated() {
        let config = Config::try_parse_from([
            "storagesvc",
            "--database-url",
            "postgres://u:p@h/db",
            "--auth-tokens",
            "a,b",
        ])
        .unwrap();
        assert_eq!(config.auth_tokens, ["a", "b"]);
    }
}
