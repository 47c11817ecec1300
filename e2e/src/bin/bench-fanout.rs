//! Fan-out benchmark: N `WatchModels` subscribers on one registry; an alias is
//! moved in MLflow directly (as the UI or Python client would) and we time the
//! delay from MLflow's answer to each subscriber's event. Runs once with
//! polling only and once with webhooks, on the same machine in the same run.
//!
//!     cargo build --release --bins && \
//!     cargo run --release -p ferry-e2e --bin bench-fanout -- [subscribers] [changes]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use ferry_e2e::{Mlflow, MlflowOptions, free_port, register_file, start_registry, train_iris};
use ferry_proto::registry::v1::{ChangeKind, WatchModelsRequest, model_registry_client::ModelRegistryClient};
use tokio::sync::{Barrier, mpsc};
use tonic::transport::Channel;

const PER_CONNECTION: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let subscribers: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let changes: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    println!("| mode | subscribers | changes | last subscriber p50 | p99 | max | median subscriber p50 |");
    println!("|---|---|---|---|---|---|---|");
    for webhooks in [false, true] {
        let row = run(subscribers, changes, webhooks).await?;
        println!("{row}");
    }
    Ok(())
}

async fn run(subscribers: usize, changes: usize, webhooks: bool) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let opts = if webhooks { MlflowOptions::default().with_webhooks()? } else { MlflowOptions::default() };
    let mlflow = Mlflow::start_with(d, opts).await?;
    let model = d.join("m.onnx");
    train_iris(&model, 1.0)?;
    let http_port = free_port();
    let mut extra = vec![
        ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
        ("FERRY_POLL_INTERVAL_MS", "2000".to_owned()),
    ];
    if webhooks {
        extra.push(("FERRY_WEBHOOK_SECRET", "bench-secret".to_owned()));
        extra.push(("FERRY_PUBLIC_URL", format!("http://127.0.0.1:{http_port}")));
    }
    let mut registry = start_registry(d, &mlflow.url, &extra).await?;
    register_file(&mut registry.client, "bench", &model).await?;
    // A second version with different bytes, so the alias has somewhere to move.
    train_iris(&model, 0.5)?;
    register_file(&mut registry.client, "bench", &model).await?;
    if webhooks {
        // Let the registry create its webhook and MLflow's one-second webhook cache expire.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let mut channels = Vec::new();
    for _ in 0..subscribers.div_ceil(PER_CONNECTION) {
        channels.push(Channel::from_shared(registry.url.clone())?.connect().await?);
    }
    for s in 0..subscribers {
        let mut client = ModelRegistryClient::new(channels[s / PER_CONNECTION].clone());
        let (tx, ready) = (tx.clone(), Arc::clone(&ready));
        tokio::spawn(async move {
            let req = WatchModelsRequest { names: vec!["bench".into()], ..Default::default() };
            let mut stream = client.watch_models(req).await.expect("subscribe").into_inner();
            while let Ok(Some(e)) = stream.message().await {
                if e.kind() == ChangeKind::SnapshotEnd {
                    break;
                }
            }
            ready.wait().await;
            let mut seen = 0;
            while let Ok(Some(e)) = stream.message().await {
                if e.kind() == ChangeKind::AliasSet {
                    let _ = tx.send((s, seen, Instant::now()));
                    seen += 1;
                }
            }
        });
    }
    ready.wait().await;
    let http = reqwest::Client::new();
    let mut last = Vec::new();
    let mut median = Vec::new();
    for i in 0..changes {
        let version = if i % 2 == 0 { "1" } else { "2" };
        let body = serde_json::json!({"name": "bench", "alias": "live", "version": version});
        let r = http.post(format!("{}/api/2.0/mlflow/registered-models/alias", mlflow.url)).json(&body).send().await?;
        let t0 = Instant::now();
        r.error_for_status()?;
        let mut delays = Vec::with_capacity(subscribers);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while delays.len() < subscribers {
            let (_, idx, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .with_context(|| format!("change {i}: only {} of {subscribers} subscribers heard it", delays.len()))?
                .context("subscribers gone")?;
            if idx == i {
                delays.push(at.saturating_duration_since(t0));
            }
        }
        delays.sort();
        last.push(*delays.last().expect("at least one subscriber"));
        median.push(delays[delays.len() / 2]);
        // Spread the changes over the poll phase instead of locking to it.
        tokio::time::sleep(Duration::from_millis(700 + (i as u64 * 137) % 900)).await;
    }
    last.sort();
    median.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mode = if webhooks { "webhooks + 2 s poll" } else { "2 s poll only" };
    Ok(format!(
        "| {mode} | {subscribers} | {changes} | {} | {} | {} | {} |",
        ms(pct(&last, 0.5)),
        ms(pct(&last, 0.99)),
        ms(*last.last().expect("changes")),
        ms(pct(&median, 0.5))
    ))
}
