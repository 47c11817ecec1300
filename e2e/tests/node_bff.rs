//! The Node.js BFF example (`examples/node-bff`: Fastify, `@grpc/grpc-js`)
//! against the real services: the seed's `POST /predict` answered by Ferry's
//! `Predict` with the version that served, bad input a 400, routing headers
//! passed through, and an inference service gone a 503 after the retries —
//! within the deadline, never a hang.

use std::{process::Command, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{Proc, free_port, repo_root, serve_iris, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_bff_calls_predict_over_grpc() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut stack = serve_iris(d, &[]).await?;
    let port = free_port();
    let app = repo_root().join("examples/node-bff");
    ensure!(app.join("node_modules").exists(), "run scripts/setup.sh (npm ci in examples/node-bff)");
    let target = stack.inference.grpc.trim_start_matches("http://").to_owned();
    let mut cmd = Command::new("node");
    cmd.arg(app.join("server.js")).env("FERRY_INFERENCE_URL", &target).env("PORT", port.to_string());
    let bff = Proc::spawn("node-bff", &mut cmd, d)?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("the BFF to listen", Duration::from_secs(30), || async {
        Ok(http.get(format!("{url}/healthz")).send().await.ok().filter(|r| r.status().is_success()))
    })
    .await
    .with_context(|| bff.log_tail())?;

    let resp =
        http.post(format!("{url}/predict")).json(&serde_json::json!({"data": [5.1, 3.5, 1.4, 0.2]})).send().await?;
    ensure!(resp.status() == 200, "{}", resp.status());
    let body: serde_json::Value = resp.json().await?;
    eprintln!("BFF answered: {body}");
    let p = body["prediction"].as_array().context("prediction")?;
    ensure!(body["modelVersion"] == "1" && p.len() == 3, "{body}");
    ensure!(p[0].as_f64() > p[2].as_f64(), "a setosa row is setosa: {body}");

    // The model's own refusal (a row of the wrong width) comes back as a 400 with Ferry's message.
    let resp = http.post(format!("{url}/predict")).json(&serde_json::json!({"data": [1.0, 2.0]})).send().await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    ensure!(status == 400 && body["code"] == "INVALID_ARGUMENT", "{status}: {body}");
    let resp = http.post(format!("{url}/predict")).json(&serde_json::json!({"rows": 1})).send().await?;
    ensure!(resp.status() == 400, "{}", resp.status());

    // The inference service gone: retried on UNAVAILABLE, then a 503 inside the deadline.
    stack.inference.proc.kill();
    let started = std::time::Instant::now();
    let resp =
        http.post(format!("{url}/predict")).json(&serde_json::json!({"data": [5.1, 3.5, 1.4, 0.2]})).send().await?;
    let took = started.elapsed();
    let status = resp.status();
    ensure!(status == 503 || status == 504, "{status} after {took:?}");
    ensure!(took < Duration::from_secs(3), "{took:?}");
    Ok(())
}
