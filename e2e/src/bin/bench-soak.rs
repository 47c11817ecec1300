//! Soak: steady load on the whole system (MLflow, registry, inference, all
//! real) with `@champion` moved every few seconds and a traffic policy set
//! and cleared on every other move; one row per period (requests, failures,
//! p50/p99, both services' RSS). Exits non-zero if any request failed.
//!
//!     cargo build --release --bins && \
//!     target/release/bench-soak [minutes: 10] [period seconds: 60] [move every seconds: 30] [callers: 4]

use std::time::Duration;

use ferry_e2e::soak::{Options, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).map_or(Ok(default), |s| s.parse::<u64>());
    let opts = Options {
        duration: Duration::from_secs(arg(1, 10)? * 60),
        period: Duration::from_secs(arg(2, 60)?),
        promote_every: Duration::from_secs(arg(3, 30)?),
        callers: usize::try_from(arg(4, 4)?)?,
    };
    eprintln!("soaking for {:?}: {opts:?}", opts.duration);
    let dir = tempfile::tempdir()?;
    let report = run(dir.path(), &opts).await?;
    println!("{}", report.table());
    println!(
        "failed requests: {} ({}); inference RSS, last period ÷ second: {:.2}",
        report.failures(),
        report.first_failure.as_deref().unwrap_or("none"),
        report.inference_rss_growth()
    );
    anyhow::ensure!(report.failures() == 0, "requests failed during the soak");
    Ok(())
}
