#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: sink_clickhouse::Config = worker_runtime::config::load()?;
    let _telemetry = worker_runtime::telemetry::init(&config.common.telemetry, "sink-clickhouse")?;
    sink_clickhouse::run(config, worker_runtime::Shutdown::from_signals()).await?;
    Ok(())
}
