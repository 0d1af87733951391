#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: sink_archive::Config = worker_runtime::config::load()?;
    let _telemetry = worker_runtime::telemetry::init(&config.common.telemetry, "sink-archive")?;
    sink_archive::run(config, worker_runtime::Shutdown::from_signals()).await?;
    Ok(())
}
