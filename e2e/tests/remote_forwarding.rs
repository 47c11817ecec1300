//! A model configured as remote: the front Ferry resolves the version in
//! MLflow, finds the serving endpoint in the registered model's
//! `ferry.remote_endpoint` tag, and forwards over the Open Inference Protocol
//! to a second Ferry that holds the model.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, assert_close, predict_row, promote, reference_predict, register_file, start_inference, start_registry,
    train_iris, wait_serving,
};
use tonic::Code;

const ROW: [f32; 4] = [6.3, 2.8, 5.1, 1.5];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_a_second_ferry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let (f1, f2) = (d.join("v1.onnx"), d.join("v2.onnx"));
    train_iris(&f1, 1.0)?;
    train_iris(&f2, 0.05)?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "iris", &f1).await?;
    register_file(&mut registry.client, "iris", &f2).await?;
    promote(&mut registry.client, "iris", "1").await?;

    // The server that holds the model.
    let mut backend = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &[]).await?;
    wait_serving(&backend.client, "iris", "1", &ROW, Duration::from_secs(60)).await?;
    reqwest::Client::new()
        .post(format!("{}/api/2.0/mlflow/registered-models/set-tag", mlflow.url))
        .json(&serde_json::json!({"name": "iris", "key": "ferry.remote_endpoint", "value": backend.grpc}))
        .send()
        .await?
        .error_for_status()?;

    // The front holds nothing itself.
    let front =
        start_inference(d, &mlflow.url, Some(&registry.url), "", &[("FERRY_REMOTE_MODELS", "iris:Production".into())])
            .await?;
    let r = wait_serving(&front.client, "iris", "1", &ROW, Duration::from_secs(60))
        .await
        .with_context(|| front.proc.log_tail())?;
    let probs = &r.outputs.iter().find(|t| t.name == "probabilities").context("probabilities")?.float_data;
    assert_close(probs, &reference_predict(&f1, &ROW)?["probabilities"])?;
    // Validation happens at the front, against the remote model's signature.
    let err = front.client.clone().predict(predict_row("iris", &[1.0, 2.0])).await.expect_err("short row");
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("dimension 1 must be 4"), "{err:?}");
    // The Open Inference Protocol REST route of the front forwards too.
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]});
    let j: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v2/models/iris/infer", front.http))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(j["model_version"] == "1", "{j}");

    // A promotion reaches the backend, and the front's answers follow it.
    promote(&mut registry.client, "iris", "2").await?;
    let r = wait_serving(&front.client, "iris", "2", &ROW, Duration::from_secs(60))
        .await
        .with_context(|| front.proc.log_tail())?;
    let probs = &r.outputs.iter().find(|t| t.name == "probabilities").context("probabilities")?.float_data;
    assert_close(probs, &reference_predict(&f2, &ROW)?["probabilities"])?;

    // The backend going away is a prompt UNAVAILABLE, not a hang.
    backend.proc.terminate(Duration::from_secs(15))?;
    let started = std::time::Instant::now();
    let err = front.client.clone().predict(predict_row("iris", &ROW)).await.expect_err("backend is down");
    ensure!(err.code() == Code::Unavailable && err.message().contains("remote"), "{err:?}");
    ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    Ok(())
}
