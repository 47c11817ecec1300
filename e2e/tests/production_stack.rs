//! The main flow on the production stack: MLflow on PostgreSQL
//! (`postgresql+psycopg2://`) with an S3-compatible artifact store (moto, as a
//! stand-in for DigitalOcean Spaces).

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, MlflowOptions, Postgres, S3, assert_close, promote, reference_predict, register_file, start_inference,
    start_registry, train_iris, wait_serving,
};

const ROW: [f32; 4] = [6.7, 3.1, 4.4, 1.4];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_s3() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let pg = Postgres::start()?;
    let s3 = S3::start(d, "ferry-models").await?;
    let opts = MlflowOptions {
        backend_store_uri: Some(pg.mlflow_uri()),
        artifacts_destination: Some(format!("s3://{}/mlartifacts", s3.bucket)),
        env: s3.mlflow_env(),
        ..Default::default()
    };
    let mlflow = Mlflow::start_with(d, opts).await?;
    let (f1, f2) = (d.join("v1.onnx"), d.join("v2.onnx"));
    train_iris(&f1, 1.0)?;
    train_iris(&f2, 0.05)?;

    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    let r1 = register_file(&mut registry.client, "iris", &f1).await?;
    ensure!(r1.created && r1.version.as_ref().map(|v| v.version.as_str()) == Some("1"), "{r1:?}");
    // The bytes went through MLflow's artifact proxy into the bucket.
    let keys = s3.keys().await?;
    ensure!(keys.iter().any(|k| k.ends_with("/model/model.onnx")), "bucket holds {keys:?}");
    ensure!(keys.iter().any(|k| k.ends_with("/model/MLmodel")), "bucket holds {keys:?}");
    promote(&mut registry.client, "iris", "1").await?;

    let inference = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &[]).await?;
    let resp = wait_serving(&inference.client, "iris", "1", &ROW, Duration::from_secs(60))
        .await
        .with_context(|| inference.proc.log_tail())?;
    let probs = &resp.outputs.iter().find(|t| t.name == "probabilities").context("probabilities")?.float_data;
    assert_close(probs, &reference_predict(&f1, &ROW)?["probabilities"])?;

    // Archive-existing works on PostgreSQL with psycopg2 (it breaks with psycopg 3).
    let r2 = register_file(&mut registry.client, "iris", &f2).await?;
    ensure!(r2.version.as_ref().map(|v| v.version.as_str()) == Some("2"), "{r2:?}");
    promote(&mut registry.client, "iris", "2").await?;
    let resp = wait_serving(&inference.client, "iris", "2", &ROW, Duration::from_secs(60))
        .await
        .with_context(|| inference.proc.log_tail())?;
    let probs = &resp.outputs.iter().find(|t| t.name == "probabilities").context("probabilities")?.float_data;
    assert_close(probs, &reference_predict(&f2, &ROW)?["probabilities"])?;
    let v1: serde_json::Value =
        reqwest::get(format!("{}/api/2.0/mlflow/model-versions/get?name=iris&version=1", mlflow.url))
            .await?
            .json()
            .await?;
    ensure!(v1["model_version"]["current_stage"] == "Archived", "{v1}");

    // PostgreSQL restarted under MLflow (its connections cut): predictions go
    // on, and the next promotion goes through without anyone stepping in.
    let (mut answered, mut failed) = (0u32, 0u32);
    let predict = |client: &ferry_proto::inference::v1::inference_client::InferenceClient<_>| {
        let mut c = client.clone();
        async move { c.predict(ferry_e2e::predict_row("iris", &ROW)).await }
    };
    pg.restart()?;
    for _ in 0..200 {
        match predict(&inference.client).await {
            Ok(_) => answered += 1,
            Err(_) => failed += 1,
        }
    }
    let started = std::time::Instant::now();
    let mut attempts = 0;
    ferry_e2e::wait_for("a promotion through MLflow after the restart", Duration::from_secs(30), || {
        attempts += 1;
        let mut c = registry.client.clone();
        let req = ferry_proto::registry::v1::SetAliasRequest {
            name: "iris".into(),
            alias: "champion".into(),
            version: "1".into(),
            ..Default::default()
        };
        async move { Ok(c.set_alias(req).await.ok()) }
    })
    .await?;
    eprintln!(
        "after the PostgreSQL restart: {answered} predictions answered, {failed} failed; promotion after {attempts} attempt(s), {:?}",
        started.elapsed()
    );
    ensure!(failed == 0, "{failed} predictions failed");
    ensure!(attempts == 1, "the first promotion after the restart failed: recovery needed a retry");
    drop(inference);
    drop(registry);
    drop(mlflow);
    drop(s3);
    drop(pg);
    Ok(())
}
