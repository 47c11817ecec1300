//! Open Inference Protocol compatibility, proven with Triton's official
//! Python client (tritonclient) against real Ferry binaries: gRPC with raw
//! contents, HTTP with the binary-data extension and plain JSON, health,
//! metadata, model configuration and statistics.

use std::{process::Command, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, promote, register_file, repo_root, start_inference, start_registry, train_iris, venv, wait_serving,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_and_http() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let model = d.join("iris.onnx");
    train_iris(&model, 1.0)?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "iris", &model).await?;
    promote(&mut registry.client, "iris", "1").await?;
    let inference = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &[]).await?;
    wait_serving(&inference.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(60))
        .await
        .with_context(|| inference.proc.log_tail())?;

    let grpc = inference.grpc.trim_start_matches("http://").to_owned();
    let http = inference.http.trim_start_matches("http://").to_owned();
    let out = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("python/oip_compat.py"))
        .args(["--grpc", &grpc, "--http", &http, "--model", "iris", "--onnx"])
        .arg(&model)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "tritonclient check failed:\n{stdout}\n{}\n--- inference log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        inference.proc.log_tail()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    ensure!(report["ok"] == true && report["grpc_version"] == "1", "{report}");
    Ok(())
}
