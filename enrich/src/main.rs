#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: enrich::Config = worker_runtime::config::load()?;
    let _telemetry = worker_runtime::telemetry::init(&config.common.telemetry, "enrich")?;
    enrich::run(config, worker_runtime::Shutdown::from_signals()).await?;
    Ok(())
}
