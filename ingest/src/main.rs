#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: ingest::Config = worker_runtime::config::load()?;
    let _telemetry = worker_runtime::telemetry::init(&config.common.telemetry, "ingest")?;
    ingest::run(config, worker_runtime::Shutdown::from_signals()).await?;
    Ok(())
}
