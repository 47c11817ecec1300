//! Rollout plans, decided by the registry on the fleet's reported figures:
//! a healthy challenger goes step by step to 100% and its alias is promoted;
//! one that fails, answers too slowly against the champion, or disagrees with
//! it on shadow traffic is put back to 0 (and its alias rolled back) — and
//! no caller sees a failure but the challenger's own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, Registry, register_file, start_inference, start_registry, two_iris_versions, wait_for, wait_serving,
    wait_variants,
};
use ferry_proto::registry::v1::{
    GetTrafficPolicyRequest, SetAliasRequest, SetTrafficPolicyRequest, TrafficPolicy,
    model_registry_client::ModelRegistryClient,
};
use tonic::transport::Channel;

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

/// Callers posting to REST `/predict` until stopped, counting answers and the
/// failures that were not the challenger's (those must stay at zero).
struct Callers {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    foreign_failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Callers {
    fn start(url: String, rows: Vec<Vec<f32>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (answered, foreign_failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (stop, answered, foreign) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&foreign_failures));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for row in rows.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(resp) = http.post(&url).json(&serde_json::json!({"data": row})).send().await else {
                        foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let variant =
                        resp.headers().get("x-ferry-variant").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if resp.status().is_success() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else if variant != "challenger" {
                        foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self { stop, answered, foreign_failures, task }
    }

    /// Stops them; (answered, failures not the challenger's).
    async fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        Ok((self.answered.load(Ordering::Relaxed), self.foreign_failures.load(Ordering::Relaxed)))
    }
}

/// Waits until the model's last rollout decision is `want`, taken after
/// `after_ms` (the last one seen); the policy and the decision.
async fn rollout_state(
    client: &ModelRegistryClient<Channel>,
    model: &str,
    want: &str,
    after_ms: u64,
) -> anyhow::Result<(TrafficPolicy, serde_json::Value)> {
    wait_for(&format!("the rollout to be {want}"), Duration::from_secs(120), || {
        let mut c = client.clone();
        async move {
            let p = c.get_traffic_policy(GetTrafficPolicyRequest { name: model.into() }).await?.into_inner();
            let p = p.policy.context("no policy")?;
            let status: serde_json::Value = serde_json::from_str(&p.rollout_status).unwrap_or_default();
            let fresh = status["at_ms"].as_u64().is_some_and(|t| t > after_ms);
            Ok((fresh && status["state"] == want).then_some((p, status)))
        }
    })
    .await
}

async fn set_aliases(registry: &mut Registry, model: &str, aliases: &[(&str, &str)]) -> anyhow::Result<()> {
    for (alias, version) in aliases {
        let req = SetAliasRequest {
            name: model.into(),
            alias: (*alias).into(),
            version: (*version).into(),
            ..Default::default()
        };
        registry.client.set_alias(req).await?;
    }
    Ok(())
}

async fn set_policy(registry: &mut Registry, model: &str, policy: serde_json::Value) -> anyhow::Result<()> {
    let req = SetTrafficPolicyRequest { name: model.into(), policy_json: policy.to_string() };
    registry.client.set_traffic_policy(req).await?;
    Ok(())
}

/// When a decision was taken.
fn at(status: &serde_json::Value) -> u64 {
    status["at_ms"].as_u64().unwrap_or(0)
}

fn weights(p: &TrafficPolicy) -> Vec<(&str, u32)> {
    p.variants.iter().map(|v| (v.name.as_str(), v.weight)).collect()
}

/// The registry's own count of rollout decisions of a kind.
async fn decisions(registry: &Registry, kind: &str) -> anyhow::Result<u64> {
    let metrics = reqwest::get(&registry.metrics).await?.text().await?;
    let line = format!("ferry_registry_rollout_decisions_total{{decision=\"{kind}\"}} ");
    Ok(metrics.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_promotes_a_healthy_challenger_and_rolls_back_a_failing_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_iris_versions(d).await?;
    // Version 3 cannot take iris rows: every request it gets fails.
    let broken = d.join("broken.onnx");
    ferry_e2e::make_mlp(&broken, 1)?;
    register_file(&mut registry.client, "iris", &broken).await?;
    set_aliases(&mut registry, "iris", &[("champion", "1"), ("challenger", "2")]).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start(format!("{}/predict", inf.http), vec![ROW.to_vec()]);

    let plan = |steps: &[u32]| {
        serde_json::json!({
            "format": 1,
            "variants": [{"name": "champion", "selector": "@champion", "weight": 100},
                         {"name": "challenger", "selector": "@challenger", "weight": 0}],
            "rollout": {"variant": "challenger", "steps": steps, "min_seconds": 1, "min_requests": 20,
                        "max_error_rate": 0.05, "promote": "champion", "rollback_alias": "challenger"},
        })
    };
    set_policy(&mut registry, "iris", plan(&[10, 50, 100])).await?;
    let (done, status) =
        rollout_state(&registry.client, "iris", "completed", 0).await.with_context(|| registry.proc.log_tail())?;
    eprintln!("healthy challenger: {status}");
    // Promoted: @champion now designates version 2, and the champion variant takes the traffic again.
    ensure!(status["alias"] == serde_json::json!({"alias": "champion", "to": "2"}), "{status}");
    ensure!(weights(&done) == [("champion", 100), ("challenger", 0)], "{done:?}");
    ensure!(!done.policy_json.contains("rollout"), "the plan is done: {}", done.policy_json);
    let log = std::fs::read_to_string(&registry.proc.log)?;
    ensure!(log.matches("rollout advances").count() >= 2, "stepped through 10 → 50 → 100");
    wait_variants(&inf, "iris", &[("champion", 100, "2"), ("challenger", 0, "2")]).await?;
    let moves = registry
        .client
        .list_moves(ferry_proto::registry::v1::ListMovesRequest { name: "iris".into() })
        .await?
        .into_inner()
        .moves;
    let promoted = moves.iter().rev().find(|m| m.target == "alias:champion").context("no move of @champion")?;
    ensure!(
        (promoted.from_version.as_str(), promoted.to_version.as_str(), promoted.by.as_str())
            == ("1", "2", "ferry-rollout"),
        "{promoted:?}"
    );

    // The challenger now points at a model that fails every request it gets.
    set_aliases(&mut registry, "iris", &[("challenger", "3")]).await?;
    wait_variants(&inf, "iris", &[("champion", 100, "2"), ("challenger", 0, "3")]).await?;
    set_policy(&mut registry, "iris", plan(&[10, 50, 100])).await?;
    let (back, status) = rollout_state(&registry.client, "iris", "rolled_back", at(&status))
        .await
        .with_context(|| registry.proc.log_tail())?;
    eprintln!("failing challenger: {status}");
    ensure!(weights(&back) == [("champion", 100), ("challenger", 0)], "{back:?}");
    ensure!(status["reason"].as_str().is_some_and(|r| r.contains("error rate")), "{status}");
    // ...and @challenger is back on version 2, where it was before.
    ensure!(status["alias"] == serde_json::json!({"alias": "challenger", "from": "3", "to": "2"}), "{status}");
    wait_variants(&inf, "iris", &[("champion", 100, "2"), ("challenger", 0, "2")]).await?;
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "policy", "get", "iris"])
        .output()?;
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(got["rollout"]["state"] == "rolled_back", "ferryctl shows the rollout's outcome: {got}");
    let ctl = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
            .args(["--registry", &registry.url])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let table = ctl(&["rollout", "status", "iris"])?;
    eprintln!("{table}");
    ensure!(table.starts_with("MODEL") && table.contains("rolled_back (@challenger → 2)"), "{table}");
    let row: serde_json::Value = serde_json::from_str(ctl(&["--output", "json", "rollout", "status", "iris"])?.trim())?;
    ensure!(
        row["variant"] == "challenger"
            && row["weight"] == "0%"
            && row["plan"] == "none in force"
            && row["reason"].as_str().is_some_and(|r| r.contains("error rate"))
            && row["figures"].as_str().is_some_and(|f| f.ends_with("failed")),
        "{row}"
    );
    ensure!(decisions(&registry, "rolled_back").await? == 1 && decisions(&registry, "completed").await? == 1);

    let (answered, foreign) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {foreign} failures not the challenger's");
    ensure!(answered > 100 && foreign == 0, "{answered} answered, {foreign} failures not the challenger's");
    drop(mlflow);
    Ok(())
}

/// A challenger that answers every request but slowly, or differently from
/// the champion on shadow traffic, is rolled back on the plan's latency and
/// agreement thresholds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_holds_the_challenger_to_the_champions_latency_and_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    // 1: the champion; 2: other weights (other classes); 3: the champion's answers, some 70 ms later;
    // 4: the champion's answers, but it fails on inputs whose first value is over 0.6 (a fifth of the callers').
    let files = [d.join("mlp-1.onnx"), d.join("mlp-2.onnx"), d.join("mlp-slow.onnx"), d.join("mlp-flaky.onnx")];
    ferry_e2e::make_mlp(&files[0], 1)?;
    ferry_e2e::make_mlp(&files[1], 2)?;
    ferry_e2e::make_slow_twin(&files[0], &files[2])?;
    ferry_e2e::make_flaky_twin(&files[0], &files[3], 0.6)?;
    for file in &files {
        register_file(&mut registry.client, "mlp", file).await?;
    }
    set_aliases(&mut registry, "mlp", &[("champion", "1"), ("other", "2"), ("slow", "3"), ("flaky", "4")]).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[]).await?;
    let row =
        |i: usize| -> Vec<f32> { (0..512).map(|j| (((i * 7919 + j * 104_729) % 1000) as f32 / 500.0) - 1.0).collect() };
    wait_serving(&inf.client, "mlp", "1", &row(0), Duration::from_secs(60))
        .await
        .with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start(format!("{}/predict", inf.http), (0..100).map(row).collect());

    let policy = |challenger: &str, thresholds: serde_json::Value, shadow: bool| {
        let mut rollout = serde_json::json!({"variant": "challenger", "steps": [10, 50, 100], "min_seconds": 1,
                                             "min_requests": 50, "max_error_rate": 0.05});
        rollout.as_object_mut().into_iter().for_each(|o| o.extend(thresholds.as_object().cloned().unwrap_or_default()));
        let mut p = serde_json::json!({
            "format": 1,
            "variants": [{"name": "champion", "selector": "@champion", "weight": 100},
                         {"name": "challenger", "selector": format!("@{challenger}"), "weight": 0}],
            "rollout": rollout,
        });
        if shadow {
            p["shadow"] = serde_json::json!({"variant": "challenger", "percent": 100});
        }
        p
    };

    // Other answers: the shadow comparison catches it before it takes much traffic.
    set_policy(&mut registry, "mlp", policy("other", serde_json::json!({"min_agreement": 0.9}), true)).await?;
    let (back, status) =
        rollout_state(&registry.client, "mlp", "rolled_back", 0).await.with_context(|| registry.proc.log_tail())?;
    eprintln!("disagreeing challenger: {status}");
    ensure!(weights(&back) == [("champion", 100), ("challenger", 0)], "{back:?}");
    ensure!(status["reason"].as_str().is_some_and(|r| r.contains("agreement") && r.ends_with("at 10%")), "{status}");
    ensure!(status["figures"]["agreement"].as_f64().is_some_and(|a| a < 0.9), "{status}");

    // Slower: rolled back on its p99 against the champion's, measured over the same step.
    set_policy(&mut registry, "mlp", policy("slow", serde_json::json!({"max_latency_ratio": 1.5}), false)).await?;
    let (back, status) = rollout_state(&registry.client, "mlp", "rolled_back", at(&status))
        .await
        .with_context(|| registry.proc.log_tail())?;
    eprintln!("slow challenger: {status}");
    ensure!(weights(&back) == [("champion", 100), ("challenger", 0)], "{back:?}");
    ensure!(status["reason"].as_str().is_some_and(|r| r.contains("p99 latency")), "{status}");
    let f = &status["figures"];
    let (p99, other) = (f["p99_ms"].as_f64().unwrap_or(0.0), f["other_p99_ms"].as_f64().unwrap_or(f64::MAX));
    ensure!(p99 > 1.5 * other, "the slow variant's p99 {p99} ms against the champion's {other} ms");

    // Failing on some inputs: rolled back on its error rate.
    set_policy(&mut registry, "mlp", policy("flaky", serde_json::json!({}), false)).await?;
    let (back, status) = rollout_state(&registry.client, "mlp", "rolled_back", at(&status))
        .await
        .with_context(|| registry.proc.log_tail())?;
    eprintln!("flaky challenger: {status}");
    ensure!(weights(&back) == [("champion", 100), ("challenger", 0)], "{back:?}");
    let (q, e) =
        (status["figures"]["requests"].as_f64().unwrap_or(0.0), status["figures"]["errors"].as_f64().unwrap_or(0.0));
    ensure!(status["reason"].as_str().is_some_and(|r| r.contains("error rate")) && e > 0.0 && e < q * 0.5, "{status}");

    let (answered, foreign) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {foreign} failures not the challenger's");
    ensure!(answered > 100 && foreign == 0, "{answered} answered, {foreign} failures not the challenger's");
    Ok(())
}
