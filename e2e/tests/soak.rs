//! A short soak in CI (`bench-soak` runs long ones; BENCHMARKS.md has the
//! last): a minute of steady load while `@champion` moves every 5 s and a
//! traffic policy is set and cleared. No request may fail, every move must
//! have happened, and the inference service's memory must not grow grossly.

use std::time::Duration;

use anyhow::ensure;
use ferry_e2e::soak::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_load_and_promotions_fails_nothing_and_memory_stays_flat() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = Options {
        duration: Duration::from_secs(60),
        period: Duration::from_secs(10),
        promote_every: Duration::from_secs(5),
        callers: 2,
    };
    let report = run(dir.path(), &opts).await?;
    eprintln!("{}", report.table());
    let growth = report.inference_rss_growth();
    eprintln!("inference RSS, last period ÷ second: {growth:.2}");
    ensure!(report.failures() == 0, "{} requests failed, first: {:?}", report.failures(), report.first_failure);
    let moves = report.periods.last().map_or(0, |p| p.moves);
    ensure!(moves >= 10, "only {moves} moves in a minute");
    ensure!(report.periods.iter().all(|p| p.requests > 100), "the load ran in every period:\n{}", report.table());
    ensure!(growth < 1.5, "inference memory grew {growth:.2}× in a minute:\n{}", report.table());
    Ok(())
}
