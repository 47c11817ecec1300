//! Open Inference Protocol compatibility, proven with Triton's official
//! Python client (tritonclient) against real Ferry binaries: gRPC with raw
//! contents, HTTP with the binary-data extension and plain JSON, health,
//! metadata, model configuration and statistics.

use std::process::Command;

use anyhow::ensure;
use ferry_e2e::{IrisStack, repo_root, serve_iris, venv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_and_http() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The MLflow and registry processes live as long as their bindings.
    let IrisStack { inference, model, mlflow: _mlflow, registry: _registry } = serve_iris(d, &[]).await?;

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
