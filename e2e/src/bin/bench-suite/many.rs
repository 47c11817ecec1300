//! The `many` section: one process serving many models. Copies of the tiny
//! model (200 by default) and of the medium one (20), each registered in
//! MLflow as a model of its own, against a process serving one of them:
//! time from start to ready, RSS per model, latency at the same total
//! request rate spread over every model (open loop; routing a request to one
//! of 200 models must cost what routing it to one does), and a restart that
//! serves them all again from the local file cache.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_e2e::{Inference, promote, rss_mib, start_inference};
use ferry_load::{Report, Target};
use ferry_proto::registry::v1::model_registry_client::ModelRegistryClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{Model, Suite, load, ms, register};

/// Registrations in flight at once.
const REGISTER_AT_ONCE: usize = 4;

/// Registers `names` from `m`, each as version 1 in Production.
async fn register_all(client: &ModelRegistryClient<Channel>, m: &Model, names: &[String]) -> anyhow::Result<()> {
    for chunk in names.chunks(REGISTER_AT_ONCE) {
        let mut tasks = JoinSet::new();
        for name in chunk {
            let (mut c, name, path) = (client.clone(), name.clone(), m.registered.clone());
            tasks.spawn(async move {
                register(&mut c, &name, &path).await?;
                promote(&mut c, &name, "1").await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok(())
}

/// Starts inference serving `names` and times process start → `/v2/health/ready`.
async fn start_ready(
    suite: &Suite,
    mlflow: &str,
    registry: &str,
    names: &[String],
    extra: &[(&str, String)],
) -> anyhow::Result<(Inference, Duration)> {
    let specs: Vec<String> = names.iter().map(|n| format!("{n}:Production")).collect();
    let started = Instant::now();
    let inf = start_inference(&suite.dir, mlflow, Some(registry), &specs.join(","), extra).await?;
    let http = reqwest::Client::new();
    let deadline = started + Duration::from_secs(600);
    loop {
        let url = format!("{}/v2/health/ready", inf.http);
        if http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
            return Ok((inf, started.elapsed()));
        }
        anyhow::ensure!(Instant::now() < deadline, "not ready after 10 minutes:\n{}", inf.proc.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn section(
    suite: &mut Suite,
    models: [&Model; 2],
    mlflow: &str,
    registry_url: &str,
    client: ModelRegistryClient<Channel>,
) -> anyhow::Result<()> {
    let rounds = suite.args.rounds.max(1);
    suite.table(
        &format!(
            "Many models in one process (gRPC Predict, open loop at the same total rate, {rounds} interleaved rounds × {} s; medians)",
            suite.args.round_duration
        ),
        "| model | models | start → ready | restart → ready (local files) | RSS: one / all | RSS per added model | rate req/s | p50 one / all ms | p99 one / all ms | errors |",
    );
    for (m, count, rate) in [(models[0], suite.args.many_small, 2000.0), (models[1], suite.args.many_medium, 200.0)] {
        if count == 0 {
            continue;
        }
        let names: Vec<String> = (0..count).map(|i| format!("{}-{i:03}", m.name)).collect();
        register_all(&client, m, &names).await.context("registering the copies")?;

        let (mut one, _) = start_ready(suite, mlflow, registry_url, &names[..1], &[]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_one = rss_mib(one.proc.pid())?;
        let (mut all, ready) = start_ready(suite, mlflow, registry_url, &names, &[]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_all = rss_mib(all.proc.pid())?;

        let scenario = |url: &str, model: String| {
            let mut s = suite.scenario(Target::Grpc, url, m, 1, 64);
            s.model = model;
            s.rate = Some(rate);
            s.duration = Duration::from_secs_f64(suite.args.round_duration);
            s
        };
        let (mut on_one, mut on_all): (Vec<Report>, Vec<Report>) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            on_one.push(load(scenario(&one.grpc, names[0].clone()))?);
            on_all.push(load(scenario(&all.grpc, names.join(",")))?);
        }
        one.proc.terminate(Duration::from_secs(30))?;
        all.proc.terminate(Duration::from_secs(30))?;

        // The same folder again: every version is on disk already.
        let kept = [("FERRY_MODEL_DIR", all.model_dir.display().to_string())];
        let (mut again, restart) = start_ready(suite, mlflow, registry_url, &names, &kept).await?;
        again.proc.terminate(Duration::from_secs(30))?;

        let median = |v: &[Report], f: fn(&Report) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let errors: u64 = on_one.iter().chain(&on_all).map(|r| r.errors).sum();
        suite.line(&format!(
            "| {} | {count} | {:.1} s | {:.1} s | {rss_one:.1} / {rss_all:.0} MiB | {:.2} MiB | {rate:.0} | {} / {} | {} / {} | {errors} |",
            m.name,
            ready.as_secs_f64(),
            restart.as_secs_f64(),
            (rss_all - rss_one) / (count.saturating_sub(1).max(1)) as f64,
            ms(median(&on_one, |r| r.p50_us)),
            ms(median(&on_all, |r| r.p50_us)),
            ms(median(&on_one, |r| r.p99_us)),
            ms(median(&on_all, |r| r.p99_us)),
        ));
    }
    Ok(())
}
