//! Fleet delivery benchmark: MLflow (webhooks on), registry replicas and N
//! inference processes on this machine, every replica kept busy (one gRPC
//! `Predict` in flight each, 20 ms apart). `@champion` is moved to a new
//! version with MLflow's REST call (what its UI and Python client send), over
//! and over; for each move we time when each replica first answers with the
//! new version, and count the requests MLflow served for it (a tap in front
//! of MLflow records every request line).
//!
//!     cargo build --release --bins && \
//!     target/release/bench-fleet [replicas, comma-separated: 1,2,20] [changes: 10] [registries: 2] [simulated replicas]
//!
//! With a fourth argument it also runs that many simulated replicas (what
//! inference asks the registry on a change, without loading the model).

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::fleet::{Fleet, percentile};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> =
        args.get(1).map_or("1,2,20", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let changes: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let registries: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    println!(
        "| replicas | registries | changes | first replica p50 | last replica p50 | last replica max | \
         all replicas p99 | MLflow requests per change (p50 / max) | of which file reads | MLflow reconcile reads/s | failed predictions |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        println!("{}", run(n, registries, changes).await?);
    }
    if let Some(simulated) = args.get(4).map(|s| s.parse::<usize>()).transpose()? {
        println!();
        println!(
            "| simulated replicas | registries | changes | last replica p50 | last replica max | MLflow requests per change (p50 / max) |"
        );
        println!("|---|---|---|---|---|---|");
        println!("{}", simulate(simulated, registries, changes).await?);
    }
    Ok(())
}

/// `n` replicas that do what inference does on a change — hear it on
/// `WatchModels`, resolve through `ResolveServing`, list and read the
/// version's files with `ReadModelFile` — without loading the model, so that
/// the registry's side is measured at a fleet size one machine cannot run.
async fn simulate(n: usize, registries: usize, changes: usize) -> anyhow::Result<String> {
    use ferry_proto::registry::v1::{
        ChangeKind, ListModelFilesRequest, ReadModelFileRequest, ResolveServingRequest, WatchModelsRequest,
        model_registry_client::ModelRegistryClient,
    };
    let dir = tempfile::tempdir()?;
    let mut fleet = Fleet::start(dir.path(), registries, 0, 2000).await?;
    let mut versions = Vec::new();
    for k in 0..changes {
        versions.push(fleet.register_iris(0.1 + 0.05 * k as f64).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, std::time::Instant)>();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = fleet.registries[i % registries].url.clone();
        let (model, tx) = (fleet.model.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ModelRegistryClient::connect(url).await?;
            let req = WatchModelsRequest { names: vec![model.clone()], ..Default::default() };
            let mut stream = client.watch_models(req).await?.into_inner();
            while let Some(change) = stream.message().await? {
                if change.kind() != ChangeKind::AliasSet || change.alias != "champion" {
                    continue;
                }
                let req = ResolveServingRequest { name: model.clone(), selectors: vec!["@champion".into()] };
                let resolved = client.resolve_serving(req).await?.into_inner();
                let version = resolved.resolved[0].version.as_ref().map(|v| v.version.clone()).unwrap_or_default();
                let list =
                    ListModelFilesRequest { name: model.clone(), version: version.clone(), folder: String::new() };
                client.list_model_files(list).await?;
                for path in ["MLmodel", "model.onnx"] {
                    let read = ReadModelFileRequest {
                        name: model.clone(),
                        version: version.clone(),
                        path: path.into(),
                        offset: 0,
                    };
                    let mut chunks = client.read_model_file(read).await?.into_inner();
                    while chunks.message().await?.is_some() {}
                }
                let _ = tx.send((i, version, std::time::Instant::now()));
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut last, mut per_change) = (vec![], vec![]);
    for version in &versions {
        let mark = fleet.tap.mark();
        let moved = fleet.move_champion(version).await?;
        let mut done = 0;
        let mut slowest = Duration::ZERO;
        while done < n {
            let (_, v, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .context("simulated replicas to read the new version")?
                .context("simulated replicas stopped")?;
            if &v == version {
                done += 1;
                slowest = slowest.max(at.saturating_duration_since(moved));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cost = fleet.tap.since(mark);
        per_change.push(cost.files + cost.other);
        last.push(slowest);
    }
    for t in tasks {
        t.abort();
    }
    per_change.sort_unstable();
    Ok(format!(
        "| {n} | {registries} | {changes} | {} ms | {} ms | {} / {} |",
        percentile(&last, 50.0).as_millis(),
        percentile(&last, 100.0).as_millis(),
        per_change[per_change.len() / 2],
        per_change[per_change.len() - 1]
    ))
}

async fn run(replicas: usize, registries: usize, changes: usize) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let mut fleet = Fleet::start(dir.path(), registries, replicas, 2000).await?;
    // A new version per change, so that each move is a real delivery: downloaded, loaded, swapped.
    let mut versions = Vec::new();
    for k in 0..changes {
        versions.push(fleet.register_iris(0.1 + 0.05 * k as f64).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut first, mut last, mut all, mut per_change, mut files) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut answered, mut failed) = (0, 0);
    let started = std::time::Instant::now();
    let mark_all = fleet.tap.mark();
    for version in &versions {
        let load = fleet.load(version, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mark = fleet.tap.mark();
        let moved = fleet.move_champion(version).await?;
        let delays = load.all_switched(moved, Duration::from_secs(60)).await.context("every replica switched")?;
        // Requests that follow a change settle within a second (the registries' re-reads).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cost = fleet.tap.since(mark);
        per_change.push(cost.files + cost.other);
        files.push(cost.files);
        first.push(percentile(&delays, 0.0));
        last.push(percentile(&delays, 100.0));
        all.extend(delays);
        let (a, f) = load.stop().await;
        answered += a;
        failed += f;
    }
    let window = started.elapsed().as_secs_f64();
    let reconcile = fleet.tap.since(mark_all).reconcile as f64 / window;
    ensure!(answered > 0, "no prediction answered");
    per_change.sort_unstable();
    files.sort_unstable();
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    let row = format!(
        "| {replicas} | {registries} | {changes} | {} | {} | {} | {} | {} / {} | {} | {reconcile:.1} | {failed} of {answered} |",
        ms(percentile(&first, 50.0)),
        ms(percentile(&last, 50.0)),
        ms(percentile(&last, 100.0)),
        ms(percentile(&all, 99.0)),
        per_change[per_change.len() / 2],
        per_change[per_change.len() - 1],
        files[files.len() / 2],
    );
    for r in &mut fleet.replicas {
        let _ = r.proc.terminate(Duration::from_secs(5));
    }
    Ok(row)
}
