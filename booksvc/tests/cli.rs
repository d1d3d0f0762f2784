#![allow(clippy::unwrap_used, clippy::expect_used)]
//! booksvc's command line: `--help` documents every variable, a missing or bad value stops
//! start-up with a message that names the variable.

use std::process::Output;

use system_tests::process::run_to_completion as run;
use tokio::process::Command;

/// booksvc with an otherwise valid environment: a free port, storagesvc and Redis on
/// ports where nothing listens (neither is contacted before start-up succeeds).
fn booksvc() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_booksvc"));
    command
        .env_clear()
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("ADMIN_BIND_ADDR", "127.0.0.1:0")
        .env("STORAGESVC_URL", "http://127.0.0.1:1")
        .env("REDIS_URL", "redis://127.0.0.1:1");
    command
}

/// Asserts that `output` is a failed start-up whose message names `variable`.
fn assert_stopped_naming(output: &Output, variable: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{what} should stop start-up");
    assert!(
        stderr.contains(variable),
        "{what}: message does not name {variable}:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "{what}: a clean error, not a panic:\n{stderr}"
    );
}

#[tokio::test]
async fn help_lists_every_variable_with_its_default() {
    let output = run(Command::new(env!("CARGO_BIN_EXE_booksvc"))
        .arg("--help")
        .env_clear())
    .await;
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (variable, default) in [
        ("BIND_ADDR", "0.0.0.0:8081"),
        ("ADMIN_BIND_ADDR", "0.0.0.0:9081"),
        ("HEADER_READ_TIMEOUT", "10s"),
        ("REQUEST_TIMEOUT", "10s"),
        ("MAX_CONNECTIONS", "1024"),
        ("MAX_REQUESTS_IN_FLIGHT", "512"),
        ("MAX_HEADER_BYTES", "16384"),
        ("MAX_BODY_BYTES", "65536"),
        ("REDIS_URL", "redis://redis:6379"),
        ("REQUEST_DEADLINE", "1500ms"),
        ("ATTEMPT_TIMEOUT", "500ms"),
        ("RETRY_BASE_DELAY", "50ms"),
        ("RETRY_MAX", "2"),
        ("RETRY_BUDGET_RATIO", "0.2"),
        ("BREAKER_CONSECUTIVE_FAILURES", "5"),
        ("BREAKER_OPEN_MAX", "30s"),
        ("BREAKER_PROBE_INTERVAL", "250ms"),
        ("CACHE_TTL", "24h"),
        ("CACHE_READ_TIMEOUT", "100ms"),
        ("CACHE_MEMORY_BYTES", "33554432"),
        ("LOG_FORMAT", "json"),
        ("SHUTDOWN_GRACE", "10s"),
    ] {
        // Each option's block: from its `[env: ...]` line to the next blank line.
        let block = help
            .split("\n\n")
            .find(|block| block.contains(&format!("[env: {variable}")))
            .unwrap_or_else(|| panic!("{variable} missing from:\n{help}"));
        assert!(
            block.contains(&format!("[default: {default}]")),
            "default {default} of {variable} missing:\n{block}"
        );
    }
    // How storagesvc is found and authenticated is read by the service client, not by
    // clap, so `--help` names those variables in its closing note.
    for variable in [
        "STORAGESVC_URL",
        "STORAGESVC_API_KEY",
        "STORAGESVC_BEARER_TOKEN",
        "STORAGESVC_BASIC_USER",
        "STORAGESVC_OAUTH_TOKEN_URL",
    ] {
        assert!(help.contains(variable), "{variable} missing from:\n{help}");
    }
}

#[tokio::test]
async fn missing_storagesvc_url_stops_startup_naming_the_variable() {
    for (what, value) in [("unset", None), ("empty", Some("")), ("blank", Some("  "))] {
        let mut command = booksvc();
        match value {
            None => command.env_remove("STORAGESVC_URL"),
            Some(value) => command.env("STORAGESVC_URL", value),
        };
        let output = run(&mut command).await;
        assert_stopped_naming(&output, "STORAGESVC_URL", &format!("{what} STORAGESVC_URL"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not set"), "{what}: {stderr}");
    }
}

#[tokio::test]
async fn invalid_storagesvc_url_stops_startup_naming_the_variable() {
    for value in [
        "not a url",
        "storagesvc:8082",
        "ftp://storagesvc:8082",
        "http://storagesvc:8082/?limit=1",
        "http://user:s3cret@storagesvc:8082",
    ] {
        let output = run(booksvc().env("STORAGESVC_URL", value)).await;
        assert_stopped_naming(
            &output,
            "STORAGESVC_URL",
            &format!("STORAGESVC_URL={value}"),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("s3cret"),
            "a URL with credentials is not echoed: {stderr}"
        );
    }
}

#[tokio::test]
async fn invalid_values_stop_startup_naming_the_variable() {
    for (variable, value) in [
        ("BIND_ADDR", "not-an-address"),
        ("REDIS_URL", "not-a-redis-url"),
        ("REQUEST_DEADLINE", "soon"),
        ("ATTEMPT_TIMEOUT", "500"),
        ("RETRY_MAX", "-1"),
        ("ATTEMPT_TIMEOUT", "0s"),
        ("REQUEST_DEADLINE", "0ms"),
        ("RETRY_BUDGET_RATIO", "a fifth"),
        ("RETRY_BUDGET_RATIO", "-3"),
        ("RETRY_BUDGET_RATIO", "NaN"),
        ("RETRY_BUDGET_RATIO", "1.5"),
        ("BREAKER_CONSECUTIVE_FAILURES", "many"),
        ("BREAKER_CONSECUTIVE_FAILURES", "0"),
        ("BREAKER_PROBE_INTERVAL", "often"),
        ("BREAKER_OPEN_MAX", "0s"),
        ("CACHE_TTL", "0s"),
        // Zero is no interval: the probe task's timer would panic at start-up.
        ("BREAKER_PROBE_INTERVAL", "0s"),
        ("CACHE_READ_TIMEOUT", "100"),
        ("CACHE_MEMORY_BYTES", "32MiB"),
        ("LOG_FORMAT", "xml"),
        ("SHUTDOWN_GRACE", "later"),
        // Durations no clock can take stop start-up instead of panicking a request.
        ("REQUEST_DEADLINE", "1000000y"),
        ("CACHE_TTL", "18446744073709551615s"),
        ("ADMIN_BIND_ADDR", "not-an-address"),
        ("HEADER_READ_TIMEOUT", "0s"),
        ("REQUEST_TIMEOUT", "1000000y"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_REQUESTS_IN_FLIGHT", "none"),
        ("MAX_HEADER_BYTES", "100"),
        ("MAX_BODY_BYTES", "0"),
    ] {
        let output = run(booksvc().env(variable, value)).await;
        assert_stopped_naming(&output, variable, &format!("{variable}={value}"));
    }
}
