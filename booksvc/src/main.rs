use std::process::ExitCode;

use anyhow::Context;
use booksvc::{Application, Config};
use clap::Parser;
use shared::client::ServiceClientConfig;

/// mimalloc rather than glibc's allocator: a proxied read makes many small, short-lived
/// allocations, and glibc's malloc and free were a tenth of booksvc's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    if shared::healthcheck::requested() {
        return Ok(shared::healthcheck::run(Config::DEFAULT_ADMIN_PORT).await);
    }
    let config = Config::parse();
    let telemetry = shared::telemetry::init(
        config.common.log_format,
        &config.common.traces,
        env!("CARGO_PKG_NAME"),
    )?;
    let storagesvc = ServiceClientConfig::from_env("storagesvc")
        .context("cannot configure the storagesvc client")?;
    let app = Application::build(config, storagesvc).await?;
    app.run_until_stopped().await?;
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
