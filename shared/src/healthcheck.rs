//! `<service> healthcheck`: the container health check, built into the binary so the
//! image needs no curl.
//!
//! It asks the instance running in the same container (`127.0.0.1`, on the port of
//! `ADMIN_BIND_ADDR`: the admin port is never published, but the check runs inside the
//! container) and exits 0 when it answers 200, 1 otherwise, printing what it saw. What it
//! asks is the word after `healthcheck`:
//!
//! - `ready` (the default): detailed readiness, so `docker inspect` shows each
//!   dependency's state. For compose, where the health check only informs.
//! - `started`: ready at least once since start, then only alive. For Docker Swarm, which
//!   restarts a replica whose check fails: a database that goes down must not get every
//!   storagesvc replica killed, but a rolling update must still wait for the new one to be
//!   ready.
//! - `alive`: the process answers.
//!
//! It is checked before the service's own settings are parsed, so it works with whatever
//! environment the container has.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The word that selects the health check: `storagesvc healthcheck`.
pub const SUBCOMMAND: &str = "healthcheck";

/// How long the check waits for an answer (Docker's own timeout is the outer bound).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the process was started as `<service> healthcheck`.
pub fn requested() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == SUBCOMMAND)
}

/// What the check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ready,
    Started,
    Alive,
}

impl Check {
    /// The word after `healthcheck`; none is `ready`.
    pub fn parse(word: Option<&str>) -> Result<Self, String> {
        match word {
            None | Some("ready") => Ok(Check::Ready),
            Some("started") => Ok(Check::Started),
            Some("alive") => Ok(Check::Alive),
            Some(other) => Err(format!(
                "unknown check `{other}`: `ready` (the default), `started` or `alive`"
            )),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Check::Ready => "/.well-known/health",
            Check::Started => "/.well-known/started",
            Check::Alive => "/.well-known/alive",
        }
    }
}

/// Where the instance in this container answers `check`: `ADMIN_BIND_ADDR`'s port (or
/// `default_admin_port`) on loopback.
pub fn check_url(check: Check, admin_bind_addr: Option<&str>, default_admin_port: u16) -> String {
    let port = admin_bind_addr
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .map_or(default_admin_port, |addr| addr.port());
    format!("http://127.0.0.1:{port}{}", check.path())
}

/// Runs the check and says how it went; the exit code is what Docker reads.
pub async fn run(default_admin_port: u16) -> ExitCode {
    let word = std::env::args().nth(2);
    let check = match Check::parse(word.as_deref()) {
        Ok(check) => check,
        Err(error) => {
            eprintln!("healthcheck: {error}");
            return ExitCode::FAILURE;
        }
    };
    let admin_bind_addr = std::env::var("ADMIN_BIND_ADDR").ok();
    let url = check_url(check, admin_bind_addr.as_deref(), default_admin_port);
    let answer = async {
        let client = crate::client::http_client_builder()
            .timeout(TIMEOUT)
            .build()?;
        let response = client.get(&url).send().await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    };
    match answer.await {
        Ok((status, body)) if status.is_success() => {
            // The body (each check and its state) ends up in `docker inspect`'s health log.
            println!("ready: {url} answered {status}: {body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("not ready: {url} answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("not ready: {url} did not answer: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_admin_bind_addr() {
        assert_eq!(
            check_url(Check::Ready, Some("0.0.0.0:9000"), 9081),
            "http://127.0.0.1:9000/.well-known/health"
        );
        assert_eq!(
            check_url(Check::Ready, None, 9081),
            "http://127.0.0.1:9081/.well-known/health"
        );
        assert_eq!(
            check_url(Check::Ready, Some("not an address"), 9082),
            "http://127.0.0.1:9082/.well-known/health"
        );
    }

    #[test]
    fn the_word_after_healthcheck_chooses_what_is_asked() {
        for (word, path) in [
            (None, "/.well-known/health"),
            (Some("ready"), "/.well-known/health"),
            (Some("started"), "/.well-known/started"),
            (Some("alive"), "/.well-known/alive"),
        ] {
            let check = Check::parse(word).unwrap();
            assert_eq!(
                check_url(check, None, 1),
                format!("http://127.0.0.1:1{path}")
            );
        }
        let err = Check::parse(Some("readyy")).unwrap_err();
        assert!(err.contains("`readyy`") && err.contains("started"), "{err}");
    }
}
