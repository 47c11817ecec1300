//! MLflow is the source of truth: changes made with the official MLflow Python
//! client reach `WatchModels` subscribers and the inference service, and
//! delivery goes on by polling MLflow while the registry is down. What Ferry
//! registers loads with `mlflow.onnx` and `mlflow.pyfunc`.

use std::{path::Path, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, next_change, python, reference_predict, register_file, start_inference, start_registry, train_iris,
    wait_serving,
};
use ferry_proto::registry::v1::{ChangeKind, Stage, WatchModelsRequest, model_registry_client::ModelRegistryClient};
use tonic::transport::Channel;

const ROW: [f32; 4] = [6.1, 2.8, 4.7, 1.2];

/// Registers a file as a new version of "iris" and returns the version number.
async fn register(client: &mut ModelRegistryClient<Channel>, file: &Path) -> anyhow::Result<String> {
    Ok(register_file(client, "iris", file).await?.version.context("no version")?.version)
}

/// Moves an alias with the official MLflow Python client, as a data scientist would.
fn python_set_alias(tracking_uri: &str, alias: &str, version: &str) -> anyhow::Result<()> {
    python(
        &format!(
            "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('iris', '{alias}', '{version}')"
        ),
        &[("MLFLOW_TRACKING_URI", tracking_uri)],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_changes_reach_subscribers_and_inference() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let (f1, f2) = (d.join("v1.onnx"), d.join("v2.onnx"));
    train_iris(&f1, 1.0)?;
    train_iris(&f2, 0.05)?;

    let registry = start_registry(d, &mlflow.url, &[]).await?;
    let mut reg = registry.client.clone();
    ensure!(register(&mut reg, &f1).await? == "1");
    ensure!(register(&mut reg, &f2).await? == "2");

    // What Ferry registered is a proper MLflow model: mlflow.onnx and pyfunc load it.
    let want = reference_predict(&f1, &ROW)?;
    let code = format!(
        "import json, mlflow, mlflow.onnx, numpy as np, onnxruntime as ort\n\
         m = mlflow.onnx.load_model('models:/iris/1')\n\
         s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n\
         x = np.array([{ROW:?}], dtype=np.float32)\n\
         p = mlflow.pyfunc.load_model('models:/iris/1')\n\
         out = p.predict({{'input': x}})\n\
         print(json.dumps({{'onnx': s.run(['probabilities'], {{'input': x}})[0].ravel().tolist(),\n\
                            'pyfunc': np.asarray(out['probabilities']).ravel().tolist(),\n\
                            'signature': p.metadata.get_input_schema().to_dict()}}))"
    );
    let out: serde_json::Value = serde_json::from_str(python(&code, &[("MLFLOW_TRACKING_URI", &mlflow.url)])?.trim())?;
    for key in ["onnx", "pyfunc"] {
        let got: Vec<f64> = serde_json::from_value(out[key].clone())?;
        let exp: Vec<f64> = serde_json::from_value(want["probabilities"].clone())?;
        ensure!(got.iter().zip(&exp).all(|(a, b)| (a - b).abs() < 1e-5), "{key} predicted {got:?}, expected {exp:?}");
    }
    ensure!(out["signature"].to_string().contains("\"input\""), "signature not readable: {}", out["signature"]);

    // An inference service that follows an alias.
    let mut inference = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    let inf = inference.client.clone();

    // The Python client points the alias at v1: the registry reports it, inference loads it.
    let mut watch =
        reg.watch_models(WatchModelsRequest { names: vec!["iris".into()], ..Default::default() }).await?.into_inner();
    next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::SnapshotEnd).await?;
    python_set_alias(&mlflow.url, "champion", "1")?;
    let e = next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::AliasSet).await?;
    ensure!(e.alias == "champion" && e.version == "1", "event {e:?}");
    wait_serving(&inf, "iris", "1", &ROW, Duration::from_secs(30)).await.with_context(|| inference.proc.log_tail())?;

    // Moving it is reported as a new ALIAS_SET with the new version.
    python_set_alias(&mlflow.url, "champion", "2")?;
    let e = next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::AliasSet).await?;
    ensure!(e.alias == "champion" && e.version == "2", "event {e:?}");
    wait_serving(&inf, "iris", "2", &ROW, Duration::from_secs(30)).await.with_context(|| inference.proc.log_tail())?;

    // Stage changes emit no webhook; the reconciliation loop still sees them.
    python(
        "from mlflow import MlflowClient; MlflowClient().transition_model_version_stage('iris', '2', 'Staging')",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let e = next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::StageChanged).await?;
    ensure!(e.version == "2" && e.model_version.as_ref().map(|v| v.stage()) == Some(Stage::Staging), "{e:?}");

    // A subscriber that reconnects with its last revision gets exactly what it missed.
    let (since, epoch) = (e.revision, e.epoch.clone());
    drop(watch);
    python(
        "from mlflow import MlflowClient; MlflowClient().set_model_version_tag('iris', '1', 'reviewed', 'yes')",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    // Wait until the registry has seen it, then resume.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut resumed = reg
        .watch_models(WatchModelsRequest { names: vec!["iris".into()], since_revision: since, epoch })
        .await?
        .into_inner();
    let first = resumed.message().await?.context("resumed stream ended")?;
    ensure!(
        first.kind() == ChangeKind::TagsChanged && first.revision == since + 1 && first.version == "1",
        "resumed with {first:?}"
    );

    // Deleting a version (no webhook exists for it) is seen by reconciliation.
    let f3 = d.join("v3.onnx");
    train_iris(&f3, 0.3)?;
    ensure!(register(&mut reg, &f3).await? == "3");
    // Only a version the registry has seen can be reported deleted: wait for it first.
    next_change(&mut resumed, Duration::from_secs(20), |e| e.kind() == ChangeKind::VersionCreated && e.version == "3")
        .await?;
    let r = reqwest::Client::new()
        .delete(format!("{}/api/2.0/mlflow/model-versions/delete", mlflow.url))
        .json(&serde_json::json!({"name": "iris", "version": "3"}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "delete: {}", r.status());
    let e = next_change(&mut resumed, Duration::from_secs(20), |e| e.kind() == ChangeKind::VersionDeleted).await?;
    ensure!(e.version == "3", "{e:?}");

    // With the registry gone, inference polls MLflow itself and still follows.
    drop(registry);
    python_set_alias(&mlflow.url, "champion", "1")?;
    wait_serving(&inf, "iris", "1", &ROW, Duration::from_secs(30)).await.with_context(|| inference.proc.log_tail())?;

    ensure!(inference.proc.is_running(), "inference died\n{}", inference.proc.log_tail());
    Ok(())
}
