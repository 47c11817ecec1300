//! Artifact stores MLflow does not proxy: with `--default-artifact-root
//! s3://… --no-serve-artifacts` the Python client writes models straight to
//! the bucket, version sources are `s3://…`, and the inference service reads
//! them from the object store itself (moto standing in for DigitalOcean
//! Spaces), with the credentials and endpoint variables MLflow's clients use.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, MlflowOptions, S3, assert_close, log_models, logged_row, python, start_inference, wait_serving,
};
use ferry_proto::inference::v1::GetModelMetadataRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_reads_s3_directly_when_mlflow_does_not_proxy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let s3 = S3::start(d, "spaces-bucket").await?;
    let env = s3.mlflow_env();
    let opts = MlflowOptions {
        default_artifact_root: Some(format!("s3://{}/mlflow", s3.bucket)),
        env: env.clone(),
        ..Default::default()
    };
    let mlflow = Mlflow::start_with(d, opts).await?;
    let mut client_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    client_env.push(("MLFLOW_TRACKING_URI", &mlflow.url));
    let logged = log_models("mlp", &["external", "many-files"], &client_env)?;
    let keys = s3.keys().await?;
    ensure!(keys.iter().any(|k| k.ends_with("/model.onnx")), "the client did not write to the bucket: {keys:?}");

    // MLflow hands out s3:// locations and serves no artifact bytes itself.
    let location = python(
        "from mlflow import MlflowClient; print(MlflowClient().get_model_version_download_uri('mlp', '1'))",
        &client_env,
    )?;
    ensure!(location.trim().starts_with("s3://"), "download URI {location}");
    let proxied = reqwest::get(format!("{}/api/2.0/mlflow-artifacts/artifacts?path=1", mlflow.url)).await?;
    ensure!(!proxied.status().is_success(), "MLflow proxies artifacts after all: {}", proxied.status());

    let extra: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let inference = start_inference(d, &mlflow.url, None, "mlp@champion", &extra).await?;
    for v in &logged {
        let version = v["version"].as_str().context("version")?.to_owned();
        python(
            &format!(
                "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('mlp', 'champion', '{version}')"
            ),
            &client_env,
        )?;
        let answer = wait_serving(&inference.client, "mlp", &version, &logged_row(), Duration::from_secs(30))
            .await
            .with_context(|| inference.proc.log_tail())?;
        assert_close(&answer.outputs[0].float_data, &v["expected"])?;
        let status = inference
            .client
            .clone()
            .get_model_metadata(GetModelMetadataRequest { model: "mlp".into() })
            .await?
            .into_inner()
            .model
            .context("status")?;
        ensure!(status.sha256 == v["digest"].as_str().unwrap_or_default(), "{status:?} vs {v}");
    }
    let log = std::fs::read_to_string(&inference.proc.log)?;
    let fetched =
        log.lines().filter(|l| l.contains("content not verified") && l.contains("s3://spaces-bucket/mlflow/"));
    ensure!(fetched.count() == 2, "the log does not show both versions fetched from the bucket");
    // The keys are the client's variables; they never reach the log.
    ensure!(!log.contains("AWS_SECRET_ACCESS_KEY=") && !log.contains("\"testing\""), "credentials in the log");
    Ok(())
}
