//! The whole path, real at every step: a real MLflow server, the registry and
//! inference binaries; register → promote → serve → register v2 → promote →
//! inference switches to it. Predictions are checked against Python onnxruntime.

use std::{path::Path, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, assert_close, next_change, predict_row, reference_predict, start_inference, start_registry, train_iris,
    wait_for,
};
use ferry_proto::{
    inference::v1::{PredictResponse, Tensor, inference_client::InferenceClient},
    registry::v1::{
        ChangeKind, RegisterModelMetadata, RegisterModelRequest, RegisterModelResponse, Stage, TransitionStageRequest,
        WatchModelsRequest, model_registry_client::ModelRegistryClient, register_model_request::Payload,
    },
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const ROW: [f32; 4] = [5.9, 3.0, 5.1, 1.8];

async fn register(
    client: &mut ModelRegistryClient<Channel>,
    name: &str,
    file: &Path,
) -> anyhow::Result<RegisterModelResponse> {
    let bytes = std::fs::read(file)?;
    let first = RegisterModelRequest {
        payload: Some(Payload::Metadata(RegisterModelMetadata {
            name: name.into(),
            description: "iris logistic regression".into(),
            tags: [("team".to_owned(), "e2e".to_owned())].into(),
            ..Default::default()
        })),
    };
    // Small chunks, so the upload really streams.
    let chunks: Vec<RegisterModelRequest> =
        bytes.chunks(256).map(|c| RegisterModelRequest { payload: Some(Payload::Chunk(c.to_vec())) }).collect();
    let stream = futures_iter(std::iter::once(first).chain(chunks));
    Ok(client.register_model(stream).await?.into_inner())
}

fn futures_iter<I: Iterator<Item = RegisterModelRequest> + Send + 'static>(
    it: I,
) -> impl tokio_stream::Stream<Item = RegisterModelRequest> + Send + 'static {
    tokio_stream::iter(it)
}

fn output<'a>(resp: &'a PredictResponse, name: &str) -> anyhow::Result<&'a Tensor> {
    resp.outputs.iter().find(|t| t.name == name).with_context(|| format!("no output {name} in {resp:?}"))
}

/// A model version as MLflow's REST API reports it.
async fn mlflow_version(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{url}/api/2.0/mlflow/model-versions/get?name={name}&version={version}");
    Ok(http.get(url).send().await?.error_for_status()?.json().await?)
}

async fn transition(client: &mut ModelRegistryClient<Channel>, name: &str, version: &str) -> anyhow::Result<()> {
    client
        .transition_stage(TransitionStageRequest {
            name: name.into(),
            version: version.into(),
            stage: Stage::Production.into(),
            archive_existing_versions: true,
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_promote_serve_and_switch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let (v1, v2) = (d.join("iris-v1.onnx"), d.join("iris-v2.onnx"));
    train_iris(&v1, 1.0)?;
    train_iris(&v2, 0.05)?;

    let registry = start_registry(d, &mlflow.url, &[]).await?;
    let mut reg = registry.client.clone();

    // Register v1 through the client-streaming upload.
    let r1 = register(&mut reg, "iris", &v1).await?;
    let mv1 = r1.version.clone().context("no version")?;
    ensure!(r1.created && mv1.version == "1", "unexpected {r1:?}");
    let sha1 = sha256_hex(&std::fs::read(&v1)?);
    ensure!(mv1.sha256 == sha1, "sha256 tag {} != {sha1}", mv1.sha256);
    // The same bytes again: the existing version, no duplicate.
    let again = register(&mut reg, "iris", &v1).await?;
    ensure!(
        !again.created && again.version.as_ref().map(|v| v.version.as_str()) == Some("1"),
        "not idempotent: {again:?}"
    );
    // Garbage is refused before anything is written.
    let junk = d.join("junk.onnx");
    std::fs::write(&junk, b"this is not an onnx model")?;
    let err = register(&mut reg, "iris", &junk).await.expect_err("junk must be refused");
    let status = err.downcast_ref::<tonic::Status>().context("a gRPC status")?;
    ensure!(status.code() == Code::InvalidArgument, "junk gave {status:?}");

    // The version really is in MLflow, with its bytes in the artifact store.
    let http = reqwest::Client::new();
    let got = mlflow_version(&http, &mlflow.url, "iris", "1").await?;
    let tags = got["model_version"]["tags"].as_array().context("tags")?;
    ensure!(tags.iter().any(|t| t["key"] == "ferry.sha256" && t["value"] == sha1.as_str()), "sha tag missing: {got}");
    let source = got["model_version"]["source"].as_str().context("source")?;
    let rel = source.strip_prefix("mlflow-artifacts:/").context("proxied source")?;
    let stored = http
        .get(format!("{}/api/2.0/mlflow-artifacts/artifacts/{rel}/model.onnx", mlflow.url))
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(sha256_hex(&stored) == sha1, "stored artifact differs from the upload");

    // Start inference before anything is in Production: it must say so clearly.
    let mut inference = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &[]).await?;
    let channel = Channel::from_shared(inference.grpc.clone())?.connect().await?;
    let mut inf = InferenceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let check = |h: &mut HealthClient<Channel>| {
        let mut h = h.clone();
        async move {
            let s = h.check(HealthCheckRequest { service: "ferry.inference.v1.Inference".into() }).await?;
            anyhow::Ok(s.into_inner().status())
        }
    };
    ensure!(check(&mut health).await? == ServingStatus::NotServing, "healthy before any model is loaded");
    let err = inf.predict(predict_row("iris", &ROW)).await.expect_err("nothing is loaded yet");
    ensure!(err.code() == Code::Unavailable, "before load: {err:?}");
    let rest = format!("{}/predict", inference.http);
    let r = http.post(&rest).json(&serde_json::json!({"data": ROW})).send().await?;
    ensure!(r.status() == 503, "REST before load: {}", r.status());

    // Subscribe to changes, then promote v1.
    let mut watch =
        reg.watch_models(WatchModelsRequest { names: vec!["iris".into()], ..Default::default() }).await?.into_inner();
    next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::SnapshotEnd).await?;
    transition(&mut reg, "iris", "1").await?;
    let e =
        next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::StageChanged && e.version == "1")
            .await?;
    ensure!(e.model_version.as_ref().map(|v| v.stage()) == Some(Stage::Production), "event {e:?}");

    let resp = wait_for("v1 to serve", Duration::from_secs(60), || {
        let mut inf = inf.clone();
        async move { Ok(inf.predict(predict_row("iris", &ROW)).await.ok().map(|r| r.into_inner())) }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    ensure!(resp.model_version == "1", "serving {}", resp.model_version);
    let want = reference_predict(&v1, &ROW)?;
    assert_close(&output(&resp, "probabilities")?.float_data, &want["probabilities"])?;
    ensure!(serde_json::json!(output(&resp, "label")?.int64_data) == want["label"], "labels differ");
    ensure!(check(&mut health).await? == ServingStatus::Serving, "not healthy while serving");

    // REST /predict, as existing BFF clients call it.
    let body: serde_json::Value =
        http.post(&rest).json(&serde_json::json!({"data": ROW})).send().await?.error_for_status()?.json().await?;
    ensure!(body["modelVersion"] == "1", "REST said {body}");
    let pred: Vec<f32> = serde_json::from_value(body["prediction"].clone())?;
    assert_close(&pred, &want["probabilities"])?;

    // Malformed input gets 400 / INVALID_ARGUMENT naming the problem; unknown model 404 / NOT_FOUND.
    let r = http.post(&rest).body("{not json").send().await?;
    ensure!(r.status() == 400, "bad JSON gave {}", r.status());
    let r = http.post(&rest).json(&serde_json::json!({"data": [1.0, 2.0]})).send().await?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status == 400 && text.contains("dimension 1 must be 4"), "short row gave {status}: {text}");
    let err = inf.predict(predict_row("iris", &[1.0, 2.0, 3.0])).await.expect_err("wrong shape");
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("input"), "{err:?}");
    let err = inf.predict(predict_row("nope", &ROW)).await.expect_err("unknown model");
    ensure!(err.code() == Code::NotFound, "{err:?}");
    let r = http.post(format!("{rest}?model=nope")).json(&serde_json::json!({"data": ROW})).send().await?;
    ensure!(r.status() == 404, "unknown model over REST gave {}", r.status());

    // Version 2: register, promote, and inference switches.
    let r2 = register(&mut reg, "iris", &v2).await?;
    ensure!(r2.created && r2.version.as_ref().map(|v| v.version.as_str()) == Some("2"), "{r2:?}");
    next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::VersionCreated && e.version == "2")
        .await?;
    transition(&mut reg, "iris", "2").await?;
    let resp = wait_for("v2 to serve", Duration::from_secs(60), || {
        let mut inf = inf.clone();
        async move {
            let r = inf.predict(predict_row("iris", &ROW)).await?.into_inner();
            Ok((r.model_version == "2").then_some(r))
        }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    let want2 = reference_predict(&v2, &ROW)?;
    assert_close(&output(&resp, "probabilities")?.float_data, &want2["probabilities"])?;
    ensure!(want2["probabilities"] != want["probabilities"], "the two versions should differ");
    // v1 was archived by the promotion.
    let got = mlflow_version(&http, &mlflow.url, "iris", "1").await?;
    ensure!(got["model_version"]["current_stage"] == "Archived", "v1 is {}", got["model_version"]["current_stage"]);

    // SIGTERM stops the service cleanly.
    let status = inference.proc.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "inference exited with {status}\n{}", inference.proc.log_tail());
    drop(registry);
    drop(mlflow);
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
