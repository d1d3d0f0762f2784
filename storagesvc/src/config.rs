//! storagesvc's settings: environment variables, each also a flag (README's Configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shared::auth::{BasicUsers, Credentials, JwtVerifier};
use shared::config::{CommonArgs, parse_duration};
use sqlx::postgres::PgConnectOptions;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "storagesvc",
    version,
    about = "Serves books from PostgreSQL; fails fast with 503 + Retry-After while the database is down.",
    after_help = "`storagesvc healthcheck` asks the instance running on this host (port of ADMIN_BIND_ADDR) for readiness and exits 0 when it is ready: the container health check.\n`storagesvc hash-password` reads a password from standard input and prints its Argon2 hash, for AUTH_BASIC_USERS."
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

    /// Longest wait for the answer to `COMMIT`. A commit is never cut off at the query
    /// timeout; past this bound its outcome is unknown and the answer is 504. Longer than
    /// the query timeout, so a database that is merely slow to commit gets time to answer.
    #[arg(long, env = "DB_COMMIT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub db_commit_timeout: Duration,

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

    /// Basic users accepted on /books*: `user:hash` entries separated by `;` or whitespace,
    /// each hash an Argon2 PHC string from `storagesvc hash-password`.
    // Parsed in `credentials`, not by clap, whose error would echo the value.
    #[arg(long, env = "AUTH_BASIC_USERS", hide_env_values = true)]
    pub auth_basic_users: Option<String>,

    /// Fault injection for the failure drill: `PUT /faults` on the admin listener delays
    /// or fails /books* (storagesvc/src/faults.rs). Never on in production.
    #[arg(long, env = "FAULT_INJECTION")]
    pub fault_injection: bool,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// OAuth2 access tokens (JWT) accepted on /books*: issuer, audience and a public key, all
/// or none.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct JwtArgs {
    /// The `iss` an access token must carry (the authorization server's issuer URL).
    #[arg(long, env = "AUTH_JWT_ISSUER", requires_all = ["auth_jwt_audience", "jwt_key"])]
    pub auth_jwt_issuer: Option<String>,

    /// The audience an access token must be for (one of its `aud`).
    #[arg(long, env = "AUTH_JWT_AUDIENCE", requires_all = ["auth_jwt_issuer", "jwt_key"])]
    pub auth_jwt_audience: Option<String>,

    /// The authorization server's public key, PEM (or use AUTH_JWT_PUBLIC_KEY_FILE).
    #[arg(
        long,
        env = "AUTH_JWT_PUBLIC_KEY",
        hide_env_values = true,
        // A PEM begins with `-----BEGIN`: a value, not a flag.
        allow_hyphen_values = true,
        group = "jwt_key",
        conflicts_with = "auth_jwt_public_key_file",
        requires_all = ["auth_jwt_issuer", "auth_jwt_audience"]
    )]
    pub auth_jwt_public_key: Option<String>,

    /// A file holding the authorization server's public key, PEM.
    #[arg(
        long,
        env = "AUTH_JWT_PUBLIC_KEY_FILE",
        group = "jwt_key",
        requires_all = ["auth_jwt_issuer", "auth_jwt_audience"]
    )]
    pub auth_jwt_public_key_file: Option<PathBuf>,

    /// The signature algorithm access tokens must use: ES256, ES384, RS256, RS384, RS512,
    /// PS256, PS384, PS512 or EdDSA (never one with a shared secret).
    #[arg(long, env = "AUTH_JWT_ALGORITHM", default_value = "ES256")]
    pub auth_jwt_algorithm: String,
}

impl Config {
    /// The port of the default `ADMIN_BIND_ADDR`, where `healthcheck` looks when it is
    /// unset.
    pub const DEFAULT_ADMIN_PORT: u16 = 9082;

    /// The variables that configure who may call /books*, as start-up names them.
    pub const CREDENTIAL_VARIABLES: &str = "AUTH_TOKENS, AUTH_BASIC_USERS and AUTH_JWT_*";

    /// Everything /books* accepts: static tokens, Basic users and access tokens. Reads the
    /// public key file, if one is named.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let mut credentials = Credentials::new(self.auth_tokens.iter().map(String::as_str));
        if let Some(users) = &self.auth_basic_users {
            let users = BasicUsers::parse(users).context("AUTH_BASIC_USERS")?;
            credentials = credentials.with_basic_users(users);
        }
        if let Some(verifier) = self.jwt.verifier()? {
            credentials = credentials.with_jwt(verifier);
        }
        Ok(credentials)
    }
}

impl JwtArgs {
    /// The verifier, when issuer, audience and key are set (clap has checked it is all
    /// three or none).
    fn verifier(&self) -> anyhow::Result<Option<JwtVerifier>> {
        let (Some(issuer), Some(audience)) = (&self.auth_jwt_issuer, &self.auth_jwt_audience)
        else {
            return Ok(None);
        };
        let pem = match (&self.auth_jwt_public_key, &self.auth_jwt_public_key_file) {
            (Some(pem), _) => pem.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path).with_context(|| {
                format!("AUTH_JWT_PUBLIC_KEY_FILE: cannot read {}", path.display())
            })?,
            (None, None) => return Ok(None),
        };
        let verifier = JwtVerifier::new(issuer, audience, &self.auth_jwt_algorithm, &pem)
            .context("AUTH_JWT_*")?;
        Ok(Some(verifier))
    }
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
        assert_eq!(config.db_commit_timeout, Duration::from_secs(2));
        assert_eq!(config.db_retry_after, Duration::from_secs(1));
        assert!(!config.fault_injection);
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

    const DB: [&str; 3] = ["storagesvc", "--database-url", "postgres://u:p@h/db"];

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(DB.iter().chain(extra))
    }

    #[test]
    fn jwt_settings_are_all_three_or_none() {
        let all = parse(&[
            "--auth-jwt-issuer",
            "https://issuer.test",
            "--auth-jwt-audience",
            "storagesvc",
            "--auth-jwt-public-key-file",
            "/key.pem",
        ])
        .unwrap();
        assert_eq!(all.jwt.auth_jwt_algorithm, "ES256");
        assert!(parse(&[]).unwrap().jwt.auth_jwt_issuer.is_none());

        for partial in [
            &["--auth-jwt-issuer", "i"][..],
            &["--auth-jwt-audience", "a"],
            &["--auth-jwt-public-key", "pem"],
            &["--auth-jwt-issuer", "i", "--auth-jwt-audience", "a"],
            &["--auth-jwt-audience", "a", "--auth-jwt-public-key", "pem"],
        ] {
            let err = parse(partial).unwrap_err().to_string();
            assert!(err.contains("--auth-jwt-"), "{partial:?}: {err}");
        }
        let both_keys = parse(&[
            "--auth-jwt-issuer",
            "i",
            "--auth-jwt-audience",
            "a",
            "--auth-jwt-public-key",
            "pem",
            "--auth-jwt-public-key-file",
            "/key.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(both_keys.contains("cannot be used with"), "{both_keys}");
    }

    #[test]
    fn an_unreadable_key_file_names_the_variable() {
        let config = parse(&[
            "--auth-jwt-issuer",
            "i",
            "--auth-jwt-audience",
            "a",
            "--auth-jwt-public-key-file",
            "/nonexistent/key.pem",
        ])
        .unwrap();
        let err = format!("{:#}", config.credentials().err().unwrap());
        assert!(err.contains("AUTH_JWT_PUBLIC_KEY_FILE"), "{err}");
    }

    #[test]
    fn basic_users_are_separated_by_semicolons_or_whitespace() {
        let hash = shared::auth::hash_password("pw").unwrap();
        let config = parse(&[
            "--auth-basic-users",
            &format!("alice:{hash}; bob:{hash}\ncarol:{hash}"),
        ])
        .unwrap();
        let users = BasicUsers::parse(config.auth_basic_users.as_deref().unwrap()).unwrap();
        let mut names: Vec<&str> = users.names().collect();
        names.sort_unstable();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert!(!config.credentials().unwrap().is_empty());

        let config = parse(&["--auth-basic-users", "alice:secret"]).unwrap();
        let err = format!("{:#}", config.credentials().err().unwrap());
        assert!(err.contains("AUTH_BASIC_USERS"), "{err}");
        assert!(err.contains("Argon2"), "{err}");
        assert!(!err.contains("secret"), "the value is not echoed: {err}");
    }

    #[test]
    fn fault_injection_is_off_unless_asked_for() {
        assert!(!parse(&[]).unwrap().fault_injection);
        assert!(parse(&["--fault-injection"]).unwrap().fault_injection);
    }

    #[test]
    fn with_nothing_configured_nobody_is_accepted() {
        assert!(parse(&[]).unwrap().credentials().unwrap().is_empty());
    }
}
