use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = ferry_inference::Config::parse();
    let _telemetry = ferry_telemetry::init("ferry-inference", &cfg.telemetry).map_err(anyhow::Error::from_boxed)?;
    tracing::info!(config = ?cfg, "starting");
    ferry_inference::run(cfg, ferry_telemetry::shutdown_signal()).await
}
