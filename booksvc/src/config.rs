//! booksvc's settings: environment variables, each also a flag (README's Configuration).
//! How to reach storagesvc (`STORAGESVC_URL`, `STORAGESVC_*` credentials) is discovered by
//! the service client, not listed here.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use resilience::{AUTO_HEDGE_DELAY, DerivedBound, StaleAfter};
use shared::config::{CommonArgs, parse_duration, parse_positive_duration};

/// Default of `CACHE_MAX_BODY_BYTES`. A page of 1000 books of ordinary length (a few hundred
/// bytes each) fits several times over; a page of books near storagesvc's field limits
/// (about 17 KiB each) does not, and a deployment with such books raises the cap.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "booksvc",
    version,
    about = "The public books API. Reads storagesvc through a resilient client and answers from the last good response when it fails.",
    after_help = "storagesvc is found through STORAGESVC_URL (required) and authenticated with STORAGESVC_API_KEY, STORAGESVC_BEARER_TOKEN, STORAGESVC_BASIC_USER/_PASSWORD or STORAGESVC_OAUTH_TOKEN_URL/_CLIENT_ID/_CLIENT_SECRET.\n\n`booksvc healthcheck` asks the instance running on this host (port of ADMIN_BIND_ADDR) for readiness and exits 0 when it is ready: the container health check."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8081")]
    pub bind_addr: SocketAddr,

    /// Address of the admin listener: /metrics and detailed health. Never publish it.
    #[arg(long, env = "ADMIN_BIND_ADDR", default_value = "0.0.0.0:9081")]
    pub admin_bind_addr: SocketAddr,

    /// Redis for the last-good store.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://redis:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Total time for the upstream work of one request, retries included.
    #[arg(long, env = "REQUEST_DEADLINE", default_value = "1500ms", value_parser = parse_positive_duration)]
    pub request_deadline: Duration,

    /// Longest time for one HTTP attempt. A read's attempt gets 4 × the recent p99
    /// latency within [ATTEMPT_TIMEOUT_FLOOR, this]; writes and the half-open probe get this.
    #[arg(long, env = "ATTEMPT_TIMEOUT", default_value = "500ms", value_parser = parse_positive_duration)]
    pub attempt_timeout: Duration,

    /// Shortest adaptive attempt timeout of a read. Set it to ATTEMPT_TIMEOUT for a fixed
    /// timeout.
    #[arg(long, env = "ATTEMPT_TIMEOUT_FLOOR", default_value = "50ms", value_parser = parse_positive_duration)]
    pub attempt_timeout_floor: Duration,

    /// When a read that has a stored answer stops waiting for a fresh one: `auto` (3 × the
    /// recent p99 latency, within 40-80 ms), a duration, or `off` (wait, unless the call
    /// fails).
    #[arg(long, env = "STALE_AFTER", default_value = "auto", value_parser = parse_stale_after)]
    pub stale_after: StaleAfter,

    /// When a read's attempt that has not answered gets a twin, sent to another address of
    /// storagesvc (only while more than one is in rotation) and paid from the retry budget:
    /// `auto` (the recent p99 latency, within 10-40 ms), a duration, or `off`.
    #[arg(long, env = "HEDGE_AFTER", default_value = "auto", value_parser = parse_hedge_after)]
    pub hedge_after: HedgeAfter,

    /// Oldest stored answer served because the fresh one is late (a failure serves any
    /// stored answer, up to CACHE_TTL).
    #[arg(long, env = "STALE_WHILE_LATE", default_value = "10m", value_parser = parse_positive_duration)]
    pub stale_while_late: Duration,

    /// Most calls in flight to storagesvc: the adaptive limit (AIMD, from 20, at least 8,
    /// doubling when reached until the first sign of overload) never exceeds this; calls
    /// beyond the limit are shed, not queued. 0: no limit.
    #[arg(long, env = "CONCURRENCY_LIMIT_MAX", default_value_t = 200)]
    pub concurrency_limit_max: usize,

    /// Delay before the first retry (doubled for each further one, plus jitter).
    #[arg(long, env = "RETRY_BASE_DELAY", default_value = "50ms", value_parser = parse_duration)]
    pub retry_base_delay: Duration,

    /// Retries per request at most.
    #[arg(long, env = "RETRY_MAX", default_value_t = 2)]
    pub retry_max: usize,

    /// Retries allowed as a share of requests in a sliding 10 s window.
    #[arg(long, env = "RETRY_BUDGET_RATIO", default_value_t = 0.2, value_parser = parse_ratio)]
    pub retry_budget_ratio: f64,

    /// Consecutive failures that open the circuit breaker.
    #[arg(long, env = "BREAKER_CONSECUTIVE_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_consecutive_failures: u32,

    /// Longest the breaker stays open before a probe (the delay grows from 1 s to this).
    #[arg(long, env = "BREAKER_OPEN_MAX", default_value = "30s", value_parser = parse_positive_duration)]
    pub breaker_open_max: Duration,

    /// While the breaker is open, how often storagesvc's health is checked to end it early.
    #[arg(long, env = "BREAKER_PROBE_INTERVAL", default_value = "250ms", value_parser = parse_positive_duration)]
    pub breaker_probe_interval: Duration,

    /// How long Redis keeps a last good answer.
    #[arg(long, env = "CACHE_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub cache_ttl: Duration,

    /// Bound on each read of the last-good store (memory, then Redis).
    #[arg(long, env = "CACHE_READ_TIMEOUT", default_value = "100ms", value_parser = parse_positive_duration)]
    pub cache_read_timeout: Duration,

    /// Size of the in-memory copy of last good answers, in bytes.
    #[arg(long, env = "CACHE_MEMORY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub cache_memory_bytes: u64,

    /// Comma-separated credentials accepted on writes (POST /books, PUT and DELETE
    /// /books/{id}), as `Authorization: Bearer` or `X-API-Key`; reads need none. Empty:
    /// every write answers 401 (fail closed; start-up warns). Not the credential booksvc
    /// sends to storagesvc (`STORAGESVC_*`): a caller's credential is never passed on.
    #[arg(
        long,
        env = "AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,

    /// Largest answer of storagesvc accepted and stored, in bytes; a larger one is an
    /// upstream failure.
    #[arg(long, env = "CACHE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = parse_body_cap)]
    pub cache_max_body_bytes: usize,

    /// Key that signs the answers booksvc writes to Redis (at least 16 bytes; the same on
    /// every replica). Unset: a random key per process, so replicas serve only their own.
    #[arg(long, env = "CACHE_SIGNING_KEY", hide_env_values = true)]
    pub cache_signing_key: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// The port of the default `ADMIN_BIND_ADDR`, where `healthcheck` looks when it is
    /// unset.
    pub const DEFAULT_ADMIN_PORT: u16 = 9081;
}

/// A body cap: at least 2 bytes (the smallest JSON list, `[]`).
fn parse_body_cap(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(bytes) if bytes >= 2 => Ok(bytes),
        _ => Err(format!(
            "expected a number of bytes of at least 2, got '{value}'"
        )),
    }
}

/// `STALE_AFTER`: `auto`, `off`, or a duration.
fn parse_stale_after(value: &str) -> Result<StaleAfter, String> {
    match value.trim() {
        "auto" => Ok(StaleAfter::AUTO),
        "off" => Ok(StaleAfter::Off),
        duration => parse_positive_duration(duration)
            .map(StaleAfter::Fixed)
            .map_err(|err| format!("expected auto, off or a duration: {err}")),
    }
}

/// `HEDGE_AFTER`: how long a read's attempt runs alone; `None`: never hedged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeAfter(pub Option<DerivedBound>);

fn parse_hedge_after(value: &str) -> Result<HedgeAfter, String> {
    match value.trim() {
        "auto" => Ok(HedgeAfter(Some(AUTO_HEDGE_DELAY))),
        "off" => Ok(HedgeAfter(None)),
        duration => parse_positive_duration(duration)
            .map(|fixed| {
                HedgeAfter(Some(DerivedBound {
                    factor: 1.0,
                    floor: fixed,
                    cap: fixed,
                }))
            })
            .map_err(|err| format!("expected auto, off or a duration: {err}")),
    }
}

/// A share, from 0 to 1.
fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("expected a number from 0 to 1, got '{value}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_tokens_are_comma_separated_and_none_by_default() {
        let config = Config::try_parse_from(["booksvc", "--auth-tokens", "a,b"]).unwrap();
        assert_eq!(config.auth_tokens, ["a", "b"]);
        let config = Config::try_parse_from(["booksvc"]).unwrap();
        assert!(config.auth_tokens.is_empty());
    }

    #[test]
    fn stale_after_is_auto_by_default_or_a_duration_or_off() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["booksvc"].iter().chain(args)).map(|c| c.stale_after)
        };
        assert_eq!(parse(&[]).unwrap(), StaleAfter::AUTO);
        assert_eq!(
            parse(&["--stale-after", "250ms"]).unwrap(),
            StaleAfter::Fixed(Duration::from_millis(250))
        );
        assert_eq!(parse(&["--stale-after", "off"]).unwrap(), StaleAfter::Off);
        let err = parse(&["--stale-after", "soon"]).unwrap_err().to_string();
        assert!(err.contains("auto, off or a duration"), "{err}");
    }

    #[test]
    fn hedge_after_is_auto_by_default_or_a_duration_or_off() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["booksvc"].iter().chain(args)).map(|c| c.hedge_after.0)
        };
        assert_eq!(parse(&[]).unwrap(), Some(AUTO_HEDGE_DELAY));
        let fixed = parse(&["--hedge-after", "25ms"]).unwrap().unwrap();
        assert_eq!(fixed.from_p99(None), Duration::from_millis(25));
        assert_eq!(
            fixed.from_p99(Some(Duration::from_millis(1))),
            Duration::from_millis(25)
        );
        assert_eq!(parse(&["--hedge-after", "off"]).unwrap(), None);
        let err = parse(&["--hedge-after", "later"]).unwrap_err().to_string();
        assert!(err.contains("auto, off or a duration"), "{err}");
    }
}
