//! The Python client as a training team uses it: `examples/python/train_and_promote.py`
//! (scikit-learn → skl2onnx → register through Ferry → score against the
//! champion as the inference service answers → promote only if better),
//! run against real MLflow, registry and inference. (`docs.rs` checks the
//! stubs it imports against `proto/`.)

use std::{process::Command, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, repo_root, start_inference, start_registry, venv, wait_serving};
use ferry_proto::registry::v1::{ResolveVersionRequest, resolve_version_request::Selector};

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

fn train_and_promote(registry: &str, inference: &str, c: &str) -> anyhow::Result<serde_json::Value> {
    let root = repo_root();
    let out = Command::new(venv().join("bin/python"))
        .arg(root.join("examples/python/train_and_promote.py"))
        .args(["--registry", registry, "--inference", inference, "--name", "iris", "--c", c])
        .env("PYTHONPATH", root.join("clients/python/src"))
        .output()?;
    ensure!(out.status.success(), "train_and_promote.py: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout)?;
    eprintln!("C={c}: {}", line.trim());
    Ok(serde_json::from_str(line.trim())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_register_and_promote_only_if_better() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;

    // No champion yet: the first model (heavily regularised, weak) becomes it, and is served.
    let first = train_and_promote(&registry.url, &inf.grpc, "0.001")?;
    ensure!(first["version"] == "1" && first["promoted"] == true && first["champion_version"].is_null(), "{first}");
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;

    // A better one beats the champion as served on the hold-out set: promoted, and served.
    let better = train_and_promote(&registry.url, &inf.grpc, "1.0")?;
    ensure!(better["version"] == "2" && better["promoted"] == true && better["champion_version"] == "1", "{better}");
    ensure!(better["candidate_accuracy"].as_f64() > better["champion_accuracy"].as_f64(), "{better}");
    wait_serving(&inf.client, "iris", "2", &ROW, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;

    // A worse one is registered (with its metrics) and kept out.
    let worse = train_and_promote(&registry.url, &inf.grpc, "0.01")?;
    ensure!(worse["version"] == "3" && worse["promoted"] == false, "{worse}");
    ensure!(worse["candidate_accuracy"].as_f64() < worse["champion_accuracy"].as_f64(), "{worse}");
    let req = ResolveVersionRequest { name: "iris".into(), selector: Some(Selector::Alias("champion".into())) };
    let champion = registry.client.resolve_version(req).await?.into_inner().version.context("no champion")?;
    ensure!(champion.version == "2", "the champion stays: {champion:?}");

    // Its metrics went to the MLflow run it was registered from.
    let run_id = {
        let v: serde_json::Value =
            reqwest::get(format!("{}/api/2.0/mlflow/model-versions/get?name=iris&version=3", mlflow.url))
                .await?
                .json()
                .await?;
        v["model_version"]["run_id"].as_str().unwrap_or_default().to_owned()
    };
    let run: serde_json::Value =
        reqwest::get(format!("{}/api/2.0/mlflow/runs/get?run_id={run_id}", mlflow.url)).await?.json().await?;
    let metrics = run["run"]["data"]["metrics"].to_string();
    ensure!(metrics.contains("holdout_accuracy"), "{metrics}");
    Ok(())
}
