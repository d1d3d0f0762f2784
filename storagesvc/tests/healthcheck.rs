//! `storagesvc healthcheck`, the container health check: exit 0 only while the instance on
//! this host is ready, with what it saw on the output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};
use std::time::Duration;

use system_tests::containers::{Faults, Postgres, free_port};
use system_tests::poll::eventually;
use system_tests::storagesvc::TOKEN;

/// `storagesvc healthcheck` with the environment of the container: it asks the admin port.
async fn healthcheck(admin_port: u16) -> Output {
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_storagesvc"))
        .arg("healthcheck")
        .env_clear()
        .env("ADMIN_BIND_ADDR", format!("0.0.0.0:{admin_port}"))
        .output();
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .expect("the health check ends within 5 s")
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_passes_only_while_the_instance_is_ready() {
    let port = free_port();
    let admin_port = free_port();
    let nothing_there = healthcheck(admin_port).await;
    assert!(!nothing_there.status.success());
    assert!(
        text(&nothing_there).contains("did not answer"),
        "{}",
        text(&nothing_there)
    );

    let db = Postgres::start().await;
    let _service = tokio::process::Command::new(env!("CARGO_BIN_EXE_storagesvc"))
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_BIND_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("DATABASE_URL", db.url())
        .env("AUTH_TOKENS", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(30), "healthcheck exits 0", || async {
        let output = healthcheck(admin_port).await;
        output.status.success().then_some(output)
    })
    .await;
    assert!(text(&ready).contains("ready"), "{}", text(&ready));

    db.stop().await;
    let not_ready = eventually(
        Duration::from_secs(10),
        "healthcheck fails with the database stopped",
        || async {
            let output = healthcheck(admin_port).await;
            (!output.status.success()).then_some(output)
        },
    )
    .await;
    assert!(
        text(&not_ready).contains("not ready") && text(&not_ready).contains("503"),
        "{}",
        text(&not_ready)
    );
}
