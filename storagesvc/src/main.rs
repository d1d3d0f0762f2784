use std::process::ExitCode;

use clap::Parser;
use storagesvc::{Application, Config, hash_password};

/// mimalloc rather than glibc's allocator: a proxied read makes many small, short-lived
/// allocations, and glibc's malloc and free were a tenth of booksvc's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    if shared::healthcheck::requested() {
        return Ok(shared::healthcheck::run(Config::DEFAULT_ADMIN_PORT).await);
    }
    if hash_password::requested() {
        return Ok(hash_password::run());
    }
    let config = Config::parse();
    let telemetry = shared::telemetry::init(
        config.common.log_format,
        &config.common.traces,
        env!("CARGO_PKG_NAME"),
    )?;
    let app = Application::build(config).await?;
    app.run_until_stopped().await?;
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
