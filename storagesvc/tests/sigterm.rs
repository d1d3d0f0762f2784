//! The storagesvc process and SIGTERM: an in-flight request completes, the process exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use system_tests::containers::{Faults, Postgres, free_port};
use system_tests::metric_value;
use system_tests::poll::eventually;
use system_tests::storagesvc::TOKEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let db = Postgres::start().await;
    let port = free_port();
    let admin_port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_storagesvc"))
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_BIND_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("DATABASE_URL", db.url())
        .env("AUTH_TOKENS", TOKEN)
        // Long enough that the request below is still waiting for its connection when
        // SIGTERM arrives, and can still complete once the database is back.
        .env("DB_ACQUIRE_TIMEOUT", "5s")
        .env("DB_QUERY_TIMEOUT", "5s")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = shared::client::http_client_builder().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    eventually(
        Duration::from_secs(30),
        "the storagesvc process is ready",
        || async {
            let response = http
                .get(format!("{base}/.well-known/health"))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        },
    )
    .await;

    // Freeze the database so the next request is held in flight, waiting for it.
    db.pause().await;
    let in_flight = tokio::spawn({
        let request = http
            .get(format!("{base}/books/1"))
            .bearer_auth(TOKEN)
            .send();
        async move { request.await.map(|r| r.status()) }
    });
    // The request must be inside the server before the signal (the scrape that checks
    // is one more in flight); the paused database then holds it as long as the test wants.
    eventually(
        Duration::from_secs(5),
        "the request is in flight in storagesvc",
        || async {
            let metrics = http
                .get(format!("{admin}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let in_flight = metric_value(&metrics, "http_server_requests_in_flight")?;
            (in_flight >= 2.0).then_some(())
        },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the request should be waiting for the paused database"
    );

    let pid = child.id().unwrap().to_string();
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());

    // While draining, no new connections are accepted.
    let refused = eventually(
        Duration::from_secs(2),
        "new connections refused while draining",
        || async {
            http.get(format!("{base}/.well-known/alive"))
                .send()
                .await
                .err()
                .map(|_| ())
        },
    );
    refused.await;

    db.unpause().await;
    let status = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got a response");
    assert_eq!(
        status,
        StatusCode::OK,
        "the in-flight request completed normally"
    );

    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("storagesvc exits within 5 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}
