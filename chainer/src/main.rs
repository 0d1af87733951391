#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: chainer::Config = worker_runtime::config::load()?;
    let _telemetry = worker_runtime::telemetry::init(&config.common.telemetry, "chainer")?;
    chainer::run(config, worker_runtime::Shutdown::from_signals()).await?;
    Ok(())
}
