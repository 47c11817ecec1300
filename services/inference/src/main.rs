use clap::Parser;

#[global_allocator]
static HEAP: ferry_heap::Heap = ferry_heap::Heap;

fn main() -> anyhow::Result<()> {
    let cfg = ferry_inference::Config::parse();
    // Before the runtime starts its threads.
    ferry_inference::memory::limit_arenas();
    if !cfg.ort_telemetry {
        // ONNX Runtime reads this once, when it initialises; the only full opt-out
        // (no uploader, device id or offline cache).
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cfg))
}

async fn run(cfg: ferry_inference::Config) -> anyhow::Result<()> {
    let _telemetry = ferry_telemetry::init("ferry-inference", &cfg.telemetry).map_err(anyhow::Error::from_boxed)?;
    tracing::info!(config = ?cfg, "starting");
    ferry_inference::run(cfg, ferry_telemetry::shutdown_signal()).await
}
