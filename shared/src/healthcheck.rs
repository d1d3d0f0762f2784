//! `<service> healthcheck`: the container health check, built into the binary so the
//! image needs no curl.
//!
//! It asks the detailed readiness endpoint of the instance running in the same container
//! (`127.0.0.1`, on the port of `ADMIN_BIND_ADDR`: the admin port is never published, but
//! the check runs inside the container) and exits 0 when it answers 200, 1 otherwise,
//! printing what it saw, so `docker inspect` shows each dependency's state. It is checked
//! before the service's own settings are parsed, so it works with whatever environment
//! the container has.

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

/// Where the instance in this container answers detailed readiness: `ADMIN_BIND_ADDR`'s
/// port (or `default_admin_port`) on loopback.
pub fn readiness_url(admin_bind_addr: Option<&str>, default_admin_port: u16) -> String {
    let port = admin_bind_addr
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .map_or(default_admin_port, |addr| addr.port());
    format!("http://127.0.0.1:{port}/.well-known/health")
}

/// Runs the check and says how it went; the exit code is what Docker reads.
pub async fn run(default_admin_port: u16) -> ExitCode {
    let admin_bind_addr = std::env::var("ADMIN_BIND_ADDR").ok();
    let url = readiness_url(admin_bind_addr.as_deref(), default_admin_port);
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
            readiness_url(Some("0.0.0.0:9000"), 9081),
            "http://127.0.0.1:9000/.well-known/health"
        );
        assert_eq!(
            readiness_url(None, 9081),
            "http://127.0.0.1:9081/.well-known/health"
        );
        assert_eq!(
            readiness_url(Some("not an address"), 9082),
            "http://127.0.0.1:9082/.well-known/health"
        );
    }
}
