use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = ferry_registry::Config::parse();
    let _telemetry = ferry_telemetry::init("ferry-registry", &cfg.telemetry).map_err(anyhow::Error::from_boxed)?;
    tracing::info!(config = ?cfg, "starting");
    ferry_registry::run(cfg, ferry_telemetry::shutdown_signal()).await
}
