//! Soak: the whole system under steady load for a long time, with the
//! changes production sees — `@champion` moved between two versions every
//! `promote_every`, and every other move a traffic policy set or cleared (a
//! 90/10 split with `@challenger`). Each period reports what a user would
//! watch: requests, failures (must stay 0), p50 and p99 latency, and both
//! services' resident memory (must stay flat). `bench-soak` runs it for as long
//! as asked; `tests/soak.rs` runs a short one in CI.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use ferry_proto::registry::v1::{SetAliasRequest, SetTrafficPolicyRequest};

use crate::{Mlflow, predict_row, register_file, start_inference, start_registry, train_iris, wait_serving};

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// One row of the report per period.
    pub period: Duration,
    pub promote_every: Duration,
    /// Callers, each with one request in flight.
    pub callers: usize,
}

/// One period's figures.
#[derive(Debug, Clone)]
pub struct Period {
    pub at: Duration,
    pub requests: u64,
    pub failures: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub inference_rss_kib: u64,
    pub registry_rss_kib: u64,
    pub moves: u64,
}

#[derive(Debug)]
pub struct Report {
    pub periods: Vec<Period>,
    /// The first failure seen, if any.
    pub first_failure: Option<String>,
}

impl Report {
    pub fn failures(&self) -> u64 {
        self.periods.iter().map(|p| p.failures).sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::from(
            "| at | requests | failed | p50 | p99 | inference RSS | registry RSS | moves so far |\n|---|---|---|---|---|---|---|---|\n",
        );
        for p in &self.periods {
            let _ = writeln!(
                out,
                "| {} s | {} | {} | {:.2} ms | {:.2} ms | {:.1} MB | {:.1} MB | {} |",
                p.at.as_secs(),
                p.requests,
                p.failures,
                p.p50_us as f64 / 1000.0,
                p.p99_us as f64 / 1000.0,
                p.inference_rss_kib as f64 / 1024.0,
                p.registry_rss_kib as f64 / 1024.0,
                p.moves
            );
        }
        out
    }

    /// Resident memory of the inference service in the last period against
    /// the first one after warm-up (the second period), as a ratio.
    pub fn inference_rss_growth(&self) -> f64 {
        let base = self.periods.get(1).or(self.periods.first()).map_or(0, |p| p.inference_rss_kib);
        let last = self.periods.last().map_or(0, |p| p.inference_rss_kib);
        if base == 0 { 1.0 } else { last as f64 / base as f64 }
    }
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

fn policy(split: bool) -> String {
    if split {
        r#"{"format": 1, "variants": [{"name": "champion", "selector": "@champion", "weight": 90},
            {"name": "challenger", "selector": "@challenger", "weight": 10}], "sticky_header": "x-user-id"}"#
            .to_owned()
    } else {
        String::new()
    }
}

/// Starts MLflow, the registry and an inference service in `dir`, and soaks them.
pub async fn run(dir: &Path, opts: &Options) -> anyhow::Result<Report> {
    let mlflow = Mlflow::start(dir).await?;
    let mut registry = start_registry(dir, &mlflow.url, &[]).await?;
    for c in [1.0, 0.05] {
        let file = dir.join(format!("iris-{c}.onnx"));
        train_iris(&file, c)?;
        register_file(&mut registry.client, "iris", &file).await?;
    }
    let alias = |alias: &str, version: &str| SetAliasRequest {
        name: "iris".into(),
        alias: alias.into(),
        version: version.into(),
        ..Default::default()
    };
    registry.client.set_alias(alias("champion", "1")).await?;
    registry.client.set_alias(alias("challenger", "2")).await?;
    let inf = start_inference(dir, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::default();
    // Latencies (µs) of the current period, drained at each report.
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut callers = Vec::new();
    for _ in 0..opts.callers {
        let (mut client, stop, failures, first_failure, latencies) = (
            inf.client.clone(),
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&first_failure),
            Arc::clone(&latencies),
        );
        callers.push(tokio::spawn(async move {
            let mut user = 0u64;
            while !stop.load(Ordering::Relaxed) {
                user += 1;
                let mut req = tonic::Request::new(predict_row("iris", &ROW));
                if let Ok(v) = user.to_string().parse() {
                    req.metadata_mut().insert("x-user-id", v);
                }
                let started = Instant::now();
                match client.predict(req).await {
                    Ok(_) => {
                        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                        if let Ok(mut l) = latencies.lock() {
                            l.push(us);
                        }
                    }
                    Err(status) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = first_failure.lock() {
                            f.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                        }
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    let (mut next_report, mut next_move) = (started + opts.period, started + opts.promote_every);
    let (mut moves, mut failed_before) = (0u64, 0u64);
    let mut periods = Vec::new();
    while started.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_move {
            moves += 1;
            // Alternate the champion; every other move, set or clear the split too.
            let (champion, challenger) = if moves % 2 == 1 { ("2", "1") } else { ("1", "2") };
            registry.client.set_alias(alias("champion", champion)).await.context("moving @champion")?;
            registry.client.set_alias(alias("challenger", challenger)).await.context("moving @challenger")?;
            let req = SetTrafficPolicyRequest { name: "iris".into(), policy_json: policy(moves % 4 == 1) };
            if moves % 2 == 1 {
                registry.client.set_traffic_policy(req).await.context("setting the traffic policy")?;
            }
            next_move += opts.promote_every;
        }
        if Instant::now() >= next_report {
            let mut l = std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
            l.sort_unstable();
            let pick = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied();
            let failed_now = failures.load(Ordering::Relaxed);
            periods.push(Period {
                at: started.elapsed(),
                requests: l.len() as u64,
                failures: failed_now - failed_before,
                p50_us: pick(0.5).unwrap_or(0).into(),
                p99_us: pick(0.99).unwrap_or(0).into(),
                inference_rss_kib: rss_kib(inf.proc.pid()),
                registry_rss_kib: rss_kib(registry.proc.pid()),
                moves,
            });
            failed_before = failed_now;
            next_report += opts.period;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.await;
    }
    let first_failure = first_failure.lock().ok().and_then(|f| f.clone());
    drop(mlflow);
    Ok(Report { periods, first_failure })
}
