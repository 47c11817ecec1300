//! An inference process restarted while MLflow and the registry are down
//! serves the version it served last, from its local cache (re-hashed
//! first), instead of waiting for MLflow: an outage plus a restart (a node
//! drained, a crash) does not take the model off the air.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, promote, register_file, start_inference, start_registry, train_iris, wait_for, wait_serving};

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_mlflow_outage_serves_the_last_version_from_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    let model = d.join("iris.onnx");
    train_iris(&model, 1.0)?;
    register_file(&mut registry.client, "iris", &model).await?;
    promote(&mut registry.client, "iris", "1").await?;
    let models = d.join("kept-models");
    let env = [("FERRY_MODEL_DIR", models.display().to_string())];
    let mut first = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &env).await?;
    let before = wait_serving(&first.client, "iris", "1", &ROW, Duration::from_secs(60)).await?;
    first.proc.terminate(Duration::from_secs(30))?;

    // The outage: MLflow and the registry both gone.
    mlflow.proc.terminate(Duration::from_secs(30))?;
    registry.proc.terminate(Duration::from_secs(30))?;

    let second = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &env).await?;
    let after = wait_serving(&second.client, "iris", "1", &ROW, Duration::from_secs(30))
        .await
        .with_context(|| second.proc.log_tail())?;
    ensure!(after.outputs == before.outputs, "the same version answers the same");
    let ready = wait_for("readiness", Duration::from_secs(10), || {
        let url = format!("{}/readyz", second.http);
        async move { Ok(reqwest::get(&url).await?.status().is_success().then_some(())) }
    })
    .await;
    ensure!(ready.is_ok(), "not ready while serving from the cache");
    let log = std::fs::read_to_string(&second.proc.log)?;
    ensure!(log.contains("serving the version last served, from the local cache"), "{log}");

    // A damaged copy is never served: the restart waits for MLflow instead.
    drop(second);
    let kept = std::fs::read_dir(models.join("iris"))?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with('v'))
        .context("no version folder kept")?;
    std::fs::write(kept.path().join("model.onnx"), b"tampered")?;
    let third = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &env).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = third.client.clone().predict(ferry_e2e::predict_row("iris", &ROW)).await;
    ensure!(refused.is_err_and(|s| s.code() == tonic::Code::Unavailable), "a tampered copy was served");
    Ok(())
}
