use clap::Parser;
use storagesvc::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init(config.common.log_format)?;
    let app = Application::build(config).await?;
    app.run_until_stopped().await?;
    Ok(())
}
