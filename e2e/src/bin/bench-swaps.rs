//! Memory and latency over repeated hot swaps: 50 promotions alternating
//! between two versions of a ~5M-parameter MLP, with the inference process's
//! RSS sampled after each swap; also promotion → first answer from the new
//! version, and cold start (process start → ready): with a download, from the
//! local files, and from them with MLflow and the registry down.
//!
//!     cargo build --release --bins && target/release/bench-swaps [swaps]

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_e2e::{Mlflow, make_mlp, promote, register_file, start_inference, start_registry, wait_serving};

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let swaps: usize = std::env::args().nth(1).map_or(Ok(50), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let (f1, f2) = (d.join("mlp-1.onnx"), d.join("mlp-2.onnx"));
    make_mlp(&f1, 1)?;
    make_mlp(&f2, 2)?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "mlp", &f1).await?;
    register_file(&mut registry.client, "mlp", &f2).await?;
    promote(&mut registry.client, "mlp", "1").await?;
    let row = vec![0.1f32; 512];

    let (inference, cold) = cold_start(d, &mlflow.url, &registry.url, &[]).await?;
    let pid = inference.proc.pid();
    // Settled: load-time buffers freed and trimmed, warm-up done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_loaded = rss_kib(pid)?;

    let mut rss = Vec::with_capacity(swaps);
    let mut latency = Vec::with_capacity(swaps);
    for i in 0..swaps {
        let version = if i % 2 == 0 { "2" } else { "1" };
        let t = Instant::now();
        promote(&mut registry.client, "mlp", version).await?;
        wait_serving(&inference.client, "mlp", version, &row, Duration::from_secs(60)).await?;
        latency.push(t.elapsed());
        rss.push(rss_kib(pid)?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_settled = rss_kib(pid)?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| cold start (process start → /v2/health/ready, model downloaded, verified, loaded, warm) | {:.0} ms |",
        cold.as_secs_f64() * 1e3
    );
    println!("| RSS with one ~5M-parameter model loaded, 3 s after ready | {:.1} MiB |", mib(rss_loaded));
    for n in [1, 10, 25, swaps] {
        if n <= swaps {
            println!("| RSS after swap {n} | {:.1} MiB |", mib(rss[n - 1]));
        }
    }
    let after10 = rss[9.min(swaps - 1)];
    let last = *rss.last().context("no swaps")?;
    println!("| RSS growth, swap 10 → swap {swaps} | {:+.1} MiB |", mib(last) - mib(after10));
    println!("| RSS 3 s after the last swap | {:.1} MiB |", mib(rss_settled));
    println!("| RSS max over the run | {:.1} MiB |", mib(*rss.iter().max().context("no swaps")?));
    println!(
        "| promotion → first answer from the new version, p50 / p99 ({swaps} swaps) | {:.0} / {:.0} ms |",
        pct(&mut latency, 0.5).as_secs_f64() * 1e3,
        pct(&mut latency, 0.99).as_secs_f64() * 1e3
    );

    // Cold starts, five each: with a download (an empty model folder), from
    // the files already on disk, and from them with MLflow and the registry down.
    let model_dir = inference.model_dir.clone();
    drop(inference);
    let kept = ("FERRY_MODEL_DIR", model_dir.display().to_string());
    let mut rows: Vec<(&str, Vec<Duration>)> = Vec::new();
    for (what, cached) in [("download, verify, load, warm", false), ("from the local files: verify, load, warm", true)]
    {
        let mut times = Vec::new();
        for _ in 0..5 {
            let extra: Vec<(&str, String)> = if cached { vec![kept.clone()] } else { vec![] };
            times.push(cold_start(d, &mlflow.url, &registry.url, &extra).await?.1);
        }
        rows.push((what, times));
    }
    let (mut mlflow, mut registry) = (mlflow, registry);
    mlflow.kill();
    registry.kill();
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(cold_start(d, &mlflow.url, &registry.url, std::slice::from_ref(&kept)).await?.1);
    }
    rows.push(("from the local files with MLflow and the registry down", times));
    println!();
    println!("| cold start: process start → /v2/health/ready | runs | median |");
    println!("|---|---|---|");
    for (what, mut times) in rows {
        let cells: Vec<String> = times.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1e3)).collect();
        println!("| {what} | {} ms | **{:.0} ms** |", cells.join(", "), pct(&mut times, 0.5).as_secs_f64() * 1e3);
    }
    Ok(())
}

/// Starts inference serving `mlp:Production` and times process start → ready.
async fn cold_start(
    d: &std::path::Path,
    mlflow: &str,
    registry: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<(ferry_e2e::Inference, Duration)> {
    let started = Instant::now();
    let inference = start_inference(d, mlflow, Some(registry), "mlp:Production", extra).await?;
    let http = reqwest::Client::new();
    loop {
        let ok = http.get(format!("{}/v2/health/ready", inference.http)).send().await.is_ok_and(|r| r.status() == 200);
        if ok {
            return Ok((inference, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
