#![allow(clippy::unwrap_used, clippy::expect_used)]
//! storagesvc's command line: `--help` documents every variable, bad values stop it.

use system_tests::process::run_to_completion as run;
use tokio::process::Command;

#[tokio::test]
async fn help_lists_every_variable_with_its_default() {
    let output = run(Command::new(env!("CARGO_BIN_EXE_storagesvc"))
        .arg("--help")
        .env_clear())
    .await;
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (variable, default) in [
        ("BIND_ADDR", Some("0.0.0.0:8082")),
        ("ADMIN_BIND_ADDR", Some("0.0.0.0:9082")),
        ("HEADER_READ_TIMEOUT", Some("10s")),
        ("REQUEST_TIMEOUT", Some("10s")),
        ("MAX_CONNECTIONS", Some("1024")),
        ("MAX_REQUESTS_IN_FLIGHT", Some("512")),
        ("MAX_HEADER_BYTES", Some("16384")),
        ("MAX_BODY_BYTES", Some("65536")),
        ("DATABASE_URL", None),
        ("DB_ACQUIRE_TIMEOUT", Some("500ms")),
        ("DB_QUERY_TIMEOUT", Some("500ms")),
        ("DB_MAX_CONNECTIONS", Some("16")),
        ("DB_RETRY_AFTER", Some("1s")),
        ("AUTH_TOKENS", None),
        ("LOG_FORMAT", Some("json")),
        ("SHUTDOWN_GRACE", Some("10s")),
    ] {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable} missing from:\n{help}"
        );
        if let Some(default) = default {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "default {default} of {variable} missing:\n{help}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_values_stop_startup_naming_the_variable() {
    for (variable, value) in [
        ("DB_ACQUIRE_TIMEOUT", "soon"),
        ("DATABASE_URL", "mysql://nope"),
        ("BIND_ADDR", "not-an-address"),
        ("LOG_FORMAT", "xml"),
        ("DB_MAX_CONNECTIONS", "0"),
        ("ADMIN_BIND_ADDR", "not-an-address"),
        ("DB_QUERY_TIMEOUT", "1000000y"),
        ("SHUTDOWN_GRACE", "18446744073709551615s"),
    ] {
        let output = run(Command::new(env!("CARGO_BIN_EXE_storagesvc"))
            .env_clear()
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("ADMIN_BIND_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
            .env(variable, value))
        .await;
        assert!(
            !output.status.success(),
            "{variable}={value} should stop start-up"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(variable),
            "{variable}={value}: message does not name it:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn missing_database_url_names_the_variable() {
    let output = run(Command::new(env!("CARGO_BIN_EXE_storagesvc")).env_clear()).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}
