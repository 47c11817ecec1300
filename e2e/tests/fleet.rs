//! A fleet as Kubernetes runs it, on one machine: MLflow with webhooks, two
//! registry replicas (MLflow's webhook reaches one; it passes deliveries on
//! to the other) and inference replicas split between them, under load.
//!
//! What a user would notice: a promotion made with MLflow's own REST call
//! reaches every replica with no failed request; the fleet costs MLflow the
//! same per change whatever its size (replicas resolve and read files through
//! the registries, not each from MLflow); killing the registry a replica
//! follows moves it to the other without missing a change.
//!
//! Timings are printed, not asserted (BENCHMARKS.md, "Fleet delivery", has
//! the release-build figures from `bench-fleet`).

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::fleet::{Fleet, percentile};

/// Replicas in the test (CI runs debug builds on two cores).
fn replicas() -> usize {
    std::env::var("FERRY_FLEET_REPLICAS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_reaches_the_whole_fleet_at_a_bounded_cost_to_mlflow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let n = replicas();
    let mut fleet = Fleet::start(dir.path(), 2, n, 2000).await?;
    let load = fleet.load("2", Duration::from_millis(20));

    // Settle, then count what MLflow sees over one change: the registries'
    // own reads, and what serving the new version costs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = fleet.tap.mark();
    let quiet = std::time::Instant::now();
    let moved = fleet.move_champion("2").await?;
    let delays = load.all_switched(moved, Duration::from_secs(60)).await.context("every replica to serve version 2")?;
    // Let stragglers (a replica's backstop, a late webhook) show up in the count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cost = fleet.tap.since(mark);
    let window = quiet.elapsed().as_secs_f64();
    eprintln!(
        "{n} replicas, 2 registries: version 2 answered everywhere; first {:?}, p50 {:?}, p99 {:?}, last {:?}",
        percentile(&delays, 0.0),
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        percentile(&delays, 100.0)
    );
    eprintln!("MLflow requests over {window:.1} s around the change: {cost:?}");
    let lines = fleet.tap.lines_since(mark);
    // Per registry: the version's download URI, a listing of its folder, MLmodel
    // and the graph (4), and its reconciliation reads; nothing per replica.
    let per_change = cost.files + cost.other;
    ensure!(
        per_change <= 2 * 4 + 2,
        "serving one change cost MLflow {per_change} requests for {n} replicas (bounded: at most 10 for 2 registries):\n{}",
        lines.join("\n")
    );
    ensure!(cost.files <= 2 * 3, "each registry reads a file from MLflow once: {cost:?}\n{}", lines.join("\n"));
    // The registries' own account: each file of the two versions served so far read from
    // MLflow once per registry (2 versions × 2 files × 2 registries), served to every replica.
    let (mut downloads, mut reads) = (0u64, 0u64);
    for r in &fleet.registries {
        let text = reqwest::get(&r.metrics).await?.text().await?;
        let value = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or_default()
        };
        downloads += value("ferry_registry_model_file_downloads_total ");
        reads += value("ferry_registry_model_file_reads_total ");
    }
    eprintln!("registries: {downloads} files from MLflow, {reads} served to replicas");
    ensure!(downloads <= 2 * 2 * 2 && reads >= 2 * n as u64, "downloads {downloads}, reads {reads}");
    // MLflow's webhook reaches registry 0 only; registry 1 had it passed on.
    let metrics = reqwest::get(&fleet.registries[1].metrics).await?.text().await?;
    ensure!(
        metrics.lines().any(
            |l| l.starts_with("ferry_registry_webhook_deliveries_total{result=\"accepted\"}") && !l.ends_with(" 0")
        ),
        "registry 1 got the delivery from its peer:\n{}",
        metrics.lines().filter(|l| l.contains("webhook")).collect::<Vec<_>>().join("\n")
    );

    // The registry the first replica follows dies; an alias moved meanwhile is
    // served by every replica, through the other registry.
    fleet.registries[0].kill();
    let moved = fleet.move_champion("1").await?;
    let back = fleet.load("1", Duration::from_millis(20));
    let delays = back.all_switched(moved, Duration::from_secs(60)).await.with_context(|| {
        format!("every replica to follow the surviving registry\n{}", fleet.replicas[0].proc.log_tail())
    })?;
    eprintln!(
        "registry 0 killed: version 1 answered everywhere; p50 {:?}, last {:?}",
        percentile(&delays, 50.0),
        percentile(&delays, 100.0)
    );
    let (answered_back, failed_back) = back.stop().await;
    let (answered, failed) = load.stop().await;
    eprintln!("callers: {} answered, {} failed", answered + answered_back, failed + failed_back);
    ensure!(failed + failed_back == 0, "{} predictions failed", failed + failed_back);
    ensure!(answered > (n as u64) * 10, "the load ran: {answered} answered");
    let switched = std::fs::read_to_string(&fleet.replicas[0].proc.log)?;
    ensure!(
        switched.matches("subscribed to registry changes").count() >= 2,
        "replica 0 moved to the other registry:\n{}",
        fleet.replicas[0].proc.log_tail()
    );
    Ok(())
}
