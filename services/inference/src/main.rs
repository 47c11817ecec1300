use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads.
    ferry_inference::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cfg = ferry_inference::Config::parse();
    let _telemetry = ferry_telemetry::init("ferry-inference", &cfg.telemetry).map_err(anyhow::Error::from_boxed)?;
    tracing::info!(config = ?cfg, "starting");
    ferry_inference::run(cfg, ferry_telemetry::shutdown_signal()).await
}
