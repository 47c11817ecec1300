//! The registry as a control plane over a real MLflow server: access control,
//! run metrics and params, the self-provisioned webhook (HMAC, replay and
//! duplicate handling) delivering outside changes far faster than the poll
//! interval, the HTTP control endpoints, paged listing, resolution, and a
//! clean UNAVAILABLE when MLflow goes away.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, MlflowOptions, ferry, free_port, next_change, python, train_iris, wait_for};
use ferry_proto::registry::v1::{
    ChangeKind, DeleteAliasRequest, GetModelRequest, ListModelsRequest, ListVersionsRequest, RegisterModelMetadata,
    RegisterModelRequest, ResolveVersionRequest, Stage, WatchModelsRequest, model_registry_client::ModelRegistryClient,
    register_model_request::Payload, resolve_version_request::Selector,
};
use tonic::{Code, Request, transport::Channel};

const TOKEN: &str = "t0ken-for-tests";
const SECRET: &str = "webhook-secret-for-tests";

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("valid header"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_over_real_mlflow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut mlflow = Mlflow::start_with(d, MlflowOptions::default().with_webhooks()?).await?;
    let (f1, f2) = (d.join("v1.onnx"), d.join("v2.onnx"));
    train_iris(&f1, 1.0)?;
    train_iris(&f2, 0.05)?;

    let (grpc_port, http_port, metrics_port) = (free_port(), free_port(), free_port());
    let http_base = format!("http://127.0.0.1:{http_port}");
    let registry = ferry(
        "ferry-registry",
        d,
        &[],
        &[
            ("FERRY_REGISTRY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
            ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("FERRY_REGISTRY_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("MLFLOW_TRACKING_URI", mlflow.url.clone()),
            // Far slower than any assertion below: only webhooks can be that fast.
            ("FERRY_POLL_INTERVAL_MS", "60000".into()),
            ("FERRY_REGISTRY_TOKEN", TOKEN.into()),
            ("FERRY_REGISTER_PATH_ROOT", d.display().to_string()),
            ("FERRY_WEBHOOK_SECRET", SECRET.into()),
            ("FERRY_PUBLIC_URL", http_base.clone()),
            ("FERRY_MLFLOW_RETRIES", "1".into()),
            ("FERRY_MLFLOW_TIMEOUT_MS", "3000".into()),
        ],
    )?;
    let url = format!("http://127.0.0.1:{grpc_port}");
    let mut reg: ModelRegistryClient<Channel> = wait_for("the registry", Duration::from_secs(30), || {
        let url = url.clone();
        async move { Ok(ModelRegistryClient::connect(url).await.ok()) }
    })
    .await
    .with_context(|| registry.log_tail())?;

    // --- access control: writes need the token, reads are open by default.
    let meta = RegisterModelMetadata {
        name: "iris".into(),
        description: "iris".into(),
        metrics: [("accuracy".to_owned(), 0.973)].into(),
        params: [("C".to_owned(), "1.0".to_owned())].into(),
        ..Default::default()
    };
    let upload = |meta: RegisterModelMetadata, bytes: Vec<u8>| {
        tokio_stream::iter([
            RegisterModelRequest { payload: Some(Payload::Metadata(meta)) },
            RegisterModelRequest { payload: Some(Payload::Chunk(bytes)) },
        ])
    };
    let err = reg.register_model(upload(meta.clone(), std::fs::read(&f1)?)).await.expect_err("no token");
    ensure!(err.code() == Code::Unauthenticated, "{err:?}");
    let err = reg.get_model(GetModelRequest { name: "iris".into() }).await.expect_err("not registered yet");
    ensure!(err.code() == Code::NotFound && err.message().contains("iris"), "{err:?}");
    let v1 = reg.register_model(authed(upload(meta, std::fs::read(&f1)?))).await?.into_inner().version.context("v1")?;
    ensure!(v1.version == "1");

    // Metrics have their own port; the webhook port MLflow reaches does not expose them.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let on_webhook_port = reqwest::get(format!("{http_base}/metrics")).await?.status();
    ensure!(on_webhook_port == reqwest::StatusCode::NOT_FOUND, "metrics on the webhook port: {on_webhook_port}");
    let before = reqwest::get(&metrics_url).await?.text().await?;

    // The training run carries the metrics and params, and finished.
    let run: serde_json::Value =
        reqwest::get(format!("{}/api/2.0/mlflow/runs/get?run_id={}", mlflow.url, v1.run_id)).await?.json().await?;
    let data = run["run"]["data"].to_string();
    ensure!(data.contains("accuracy") && data.contains("0.973") && data.contains("\"C\""), "run data: {data}");
    ensure!(run["run"]["info"]["status"] == "FINISHED", "run: {}", run["run"]["info"]);

    // A failure after the run exists (MLflow refuses a param key with "!"):
    // the run is marked FAILED and no version points at it.
    let bad = RegisterModelMetadata {
        name: "iris".into(),
        params: [("bad!key".to_owned(), "x".to_owned())].into(),
        ..Default::default()
    };
    let err = reg.register_model(authed(upload(bad, std::fs::read(&f2)?))).await.expect_err("invalid param key");
    ensure!(err.code() == Code::InvalidArgument, "{err:?}");
    let exp: serde_json::Value = reqwest::get(format!(
        "{}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ferry-registrations",
        mlflow.url
    ))
    .await?
    .json()
    .await?;
    let runs: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/2.0/mlflow/runs/search", mlflow.url))
        .json(&serde_json::json!({"experiment_ids": [exp["experiment"]["experiment_id"]], "filter": "attributes.status = 'FAILED'"}))
        .send()
        .await?
        .json()
        .await?;
    ensure!(runs["runs"].as_array().map(Vec::len) == Some(1), "expected one FAILED run: {runs}");
    let got = reg.get_model(GetModelRequest { name: "iris".into() }).await?.into_inner().model.context("model")?;
    ensure!(got.latest_versions.iter().all(|v| v.version == "1"), "a version was left behind: {got:?}");

    // --- the registry created its own webhook in MLflow.
    let hook_url = format!("{http_base}/webhooks/mlflow");
    let webhooks_url = format!("{}/api/2.0/mlflow/webhooks", mlflow.url);
    wait_for("the webhook to be provisioned", Duration::from_secs(30), || {
        let (webhooks_url, hook_url) = (webhooks_url.clone(), hook_url.clone());
        async move {
            let hooks: serde_json::Value = reqwest::get(&webhooks_url).await?.json().await?;
            Ok(hooks["webhooks"].as_array().and_then(|a| a.iter().find(|w| w["url"] == hook_url.as_str())).map(|_| ()))
        }
    })
    .await
    .with_context(|| registry.log_tail())?;

    // --- a change made with the MLflow Python client arrives through the webhook.
    let mut watch =
        reg.watch_models(WatchModelsRequest { names: vec!["iris".into()], ..Default::default() }).await?.into_inner();
    next_change(&mut watch, Duration::from_secs(20), |e| e.kind() == ChangeKind::SnapshotEnd).await?;
    // MLflow caches its webhook list per worker for a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    python(
        "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('iris', 'champion', '1')",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let e = next_change(&mut watch, Duration::from_secs(15), |e| e.kind() == ChangeKind::AliasSet).await?;
    let took = started.elapsed();
    ensure!(e.alias == "champion" && e.version == "1", "{e:?}");
    eprintln!("alias set in MLflow (Python client) -> WatchModels event: {took:?} (poll interval 60 s)");
    ensure!(took < Duration::from_secs(15), "took {took:?}");

    // A version tag set in MLflow arrives through the webhook too.
    python(
        "from mlflow import MlflowClient; MlflowClient().set_model_version_tag('iris', '1', 'validated', 'true')",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let e = next_change(&mut watch, Duration::from_secs(15), |e| e.kind() == ChangeKind::TagsChanged).await?;
    let tags = e.model_version.as_ref().map(|v| v.tags.clone()).unwrap_or_default();
    ensure!(tags.get("validated").map(String::as_str) == Some("true"), "{e:?}");

    // --- forged, replayed and stale deliveries.
    let http = reqwest::Client::new();
    let body =
        r#"{"entity":"model_version_alias","action":"created","data":{"name":"iris","alias":"x","version":"1"}}"#;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs().to_string();
    let deliver = |id: &str, ts: &str, sig: String| {
        http.post(&hook_url)
            .header("x-mlflow-delivery-id", id)
            .header("x-mlflow-timestamp", ts)
            .header("x-mlflow-signature", sig)
            .body(body)
            .send()
    };
    let forged = ferry_registry::webhook::sign(b"wrong-secret", "d-1", &now, body.as_bytes());
    ensure!(deliver("d-1", &now, forged).await?.status() == 401, "forged delivery accepted");
    let good = ferry_registry::webhook::sign(SECRET.as_bytes(), "d-2", &now, body.as_bytes());
    let r = deliver("d-2", &now, good.clone()).await?;
    ensure!(r.status() == 200 && r.text().await? == "accepted");
    let r = deliver("d-2", &now, good).await?;
    ensure!(r.status() == 200 && r.text().await? == "duplicate", "replay not deduplicated");
    let stale_ts = "1000000000";
    let stale = ferry_registry::webhook::sign(SECRET.as_bytes(), "d-3", stale_ts, body.as_bytes());
    ensure!(deliver("d-3", stale_ts, stale).await?.status() == 401, "stale delivery accepted");

    // --- HTTP control endpoints, as CI pipelines call them.
    let form = || -> anyhow::Result<reqwest::multipart::Form> {
        Ok(reqwest::multipart::Form::new()
            .text("modelName", "iris")
            .part("file", reqwest::multipart::Part::bytes(std::fs::read(&f2)?).file_name("model.onnx")))
    };
    let r = http.post(format!("{http_base}/register-model")).multipart(form()?).send().await?;
    ensure!(r.status() == 401, "register without token: {}", r.status());
    let r = http.post(format!("{http_base}/register-model")).bearer_auth(TOKEN).multipart(form()?).send().await?;
    ensure!(r.status() == 201, "multipart register: {}", r.status());
    let j: serde_json::Value = r.json().await?;
    ensure!(j["version"] == "2" && j["created"] == true, "{j}");
    let r = http
        .post(format!("{http_base}/register-model"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"modelName": "iris", "path": f2}))
        .send()
        .await?;
    let j: serde_json::Value = r.json().await?;
    ensure!(j["version"] == "2" && j["created"] == false, "same bytes by path must be idempotent: {j}");
    // Server-side paths only under FERRY_REGISTER_PATH_ROOT: nothing outside is opened.
    for outside in [std::path::PathBuf::from("/etc/passwd"), d.join("..").join("..").join("etc/passwd")] {
        let r = http
            .post(format!("{http_base}/register-model"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"modelName": "iris", "path": outside}))
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        ensure!(status == 403 && text.contains("FERRY_REGISTER_PATH_ROOT"), "{}: {status} {text}", outside.display());
    }
    let junk = reqwest::multipart::Form::new()
        .text("modelName", "iris")
        .part("file", reqwest::multipart::Part::bytes(b"not onnx at all".to_vec()).file_name("bad.onnx"));
    let r = http.post(format!("{http_base}/register-model")).bearer_auth(TOKEN).multipart(junk).send().await?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status == 400 && text.contains("invalid ONNX"), "junk: {status} {text}");
    let versions: serde_json::Value =
        reqwest::get(format!("{}/api/2.0/mlflow/model-versions/search?filter=name%3D%27iris%27", mlflow.url))
            .await?
            .json()
            .await?;
    ensure!(versions["model_versions"].as_array().map(Vec::len) == Some(2), "junk left a version behind: {versions}");

    let stage_url = format!("{http_base}/set-model-stage?modelName=iris&version=2&stage=Production");
    let r = http.put(&stage_url).bearer_auth(TOKEN).send().await?;
    ensure!(r.status() == 200, "set-model-stage: {}", r.status());
    let r = http
        .put(format!("{http_base}/set-model-stage?modelName=iris&version=2&stage=Prod"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status() == 400, "bad stage: {}", r.status());
    let r = http
        .put(format!("{http_base}/set-model-stage?modelName=iris&version=99&stage=Staging"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status() == 404, "missing version: {}", r.status());
    let e = next_change(&mut watch, Duration::from_secs(10), |e| e.kind() == ChangeKind::StageChanged).await?;
    ensure!(e.version == "2", "{e:?}");

    // --- listing and resolution.
    let models = reg.list_models(ListModelsRequest::default()).await?.into_inner();
    ensure!(models.models.len() == 1 && models.models[0].aliases.get("champion").map(String::as_str) == Some("1"));
    let page1 = reg
        .list_versions(ListVersionsRequest { name: "iris".into(), page_size: 1, ..Default::default() })
        .await?
        .into_inner();
    ensure!(
        page1.versions.len() == 1 && page1.versions[0].version == "2" && !page1.next_page_token.is_empty(),
        "{page1:?}"
    );
    let page2 = reg
        .list_versions(ListVersionsRequest { name: "iris".into(), page_size: 1, page_token: page1.next_page_token })
        .await?
        .into_inner();
    ensure!(page2.versions.len() == 1 && page2.versions[0].version == "1", "{page2:?}");
    ensure!(page2.versions[0].aliases == vec!["champion".to_owned()], "{page2:?}");
    let by_alias = reg
        .resolve_version(ResolveVersionRequest {
            name: "iris".into(),
            selector: Some(Selector::Alias("champion".into())),
        })
        .await?
        .into_inner();
    ensure!(by_alias.version.as_ref().map(|v| v.version.as_str()) == Some("1"));
    ensure!(by_alias.download_uri.starts_with("mlflow-artifacts:/") && by_alias.download_uri.ends_with("/model.onnx"));
    let by_stage = reg
        .resolve_version(ResolveVersionRequest {
            name: "iris".into(),
            selector: Some(Selector::Stage(Stage::Production.into())),
        })
        .await?
        .into_inner();
    ensure!(by_stage.version.as_ref().map(|v| v.version.as_str()) == Some("2"));
    let err = reg
        .resolve_version(ResolveVersionRequest { name: "iris".into(), selector: Some(Selector::Alias("nope".into())) })
        .await
        .expect_err("no such alias");
    ensure!(err.code() == Code::NotFound && err.message().contains("nope"), "{err:?}");

    // --- alias deletion through Ferry is streamed too.
    reg.delete_alias(authed(DeleteAliasRequest { name: "iris".into(), alias: "champion".into() })).await?;
    let e = next_change(&mut watch, Duration::from_secs(10), |e| e.kind() == ChangeKind::AliasDeleted).await?;
    ensure!(e.alias == "champion", "{e:?}");

    // --- Prometheus metrics: what happened above, and the values move.
    let after = reqwest::get(&metrics_url).await?.text().await?;
    let sample = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    for (series, min) in [
        ("ferry_registry_subscribers", 1.0),
        ("ferry_registry_webhook_deliveries_total{result=\"accepted\"}", 2.0),
        ("ferry_registry_webhook_deliveries_total{result=\"duplicate\"}", 1.0),
        ("ferry_registry_webhook_deliveries_total{result=\"rejected\"}", 2.0),
        ("ferry_registry_registrations_total{result=\"created\"}", 2.0),
        ("ferry_registry_registrations_total{result=\"existing\"}", 1.0),
    ] {
        ensure!(sample(&after, series) >= min, "{series} below {min}:\n{after}");
    }
    for series in [
        "ferry_registry_changes_total",
        "ferry_registry_reconciliations_total{result=\"success\"}",
        // Every MLflow call is timed and counted by endpoint and outcome.
        "ferry_mlflow_request_duration_seconds_count{endpoint=\"model-versions/create\"}",
        "ferry_mlflow_requests_total{endpoint=\"model-versions/create\",outcome=\"ok\"}",
    ] {
        ensure!(
            sample(&after, series).max(0.0) > sample(&before, series).max(0.0),
            "{series} did not move:\n{before}\n---\n{after}"
        );
    }
    ensure!(
        sample(&after, "ferry_mlflow_requests_total{endpoint=\"registered-models/get\",outcome=\"not_found\"}") >= 1.0,
        "the NOT_FOUND answer to GetModel before registration is counted:\n{after}"
    );
    // No secret reaches the log (the bearer token and the webhook secret were both used above).
    let log = std::fs::read_to_string(&registry.log)?;
    if let Some(line) = log.lines().find(|l| l.contains(TOKEN) || l.contains(SECRET)) {
        anyhow::bail!("a secret is in the registry log: {line}");
    }

    // --- a registry that starts with another public URL repairs the webhook in place.
    let moved = format!("http://127.0.0.1:{}", free_port());
    let second = ferry(
        "ferry-registry",
        d,
        &[],
        &[
            ("FERRY_REGISTRY_GRPC_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            // Not the default :9090, which another process on the machine may hold.
            ("FERRY_REGISTRY_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("MLFLOW_TRACKING_URI", mlflow.url.clone()),
            ("FERRY_WEBHOOK_SECRET", SECRET.into()),
            ("FERRY_PUBLIC_URL", moved.clone()),
            ("FERRY_REGISTRY_TOKEN", TOKEN.into()),
        ],
    )?;
    let moved_hook = format!("{moved}/webhooks/mlflow");
    wait_for("the webhook to be repaired", Duration::from_secs(30), || {
        let (webhooks_url, moved_hook) = (webhooks_url.clone(), moved_hook.clone());
        async move {
            let hooks: serde_json::Value = reqwest::get(&webhooks_url).await?.json().await?;
            let ours: Vec<&serde_json::Value> = hooks["webhooks"]
                .as_array()
                .map(|a| a.iter().filter(|w| w["name"] == "ferry-registry").collect())
                .unwrap_or_default();
            Ok((ours.len() == 1 && ours[0]["url"] == moved_hook.as_str() && ours[0]["status"] == "ACTIVE")
                .then_some(()))
        }
    })
    .await
    .with_context(|| second.log_tail())?;
    drop(second);

    // --- MLflow down: a prompt UNAVAILABLE, never a hang.
    mlflow.proc.terminate(Duration::from_secs(20)).ok();
    drop(mlflow);
    let started = Instant::now();
    let err = reg.get_model(GetModelRequest { name: "iris".into() }).await.expect_err("MLflow is down");
    ensure!(err.code() == Code::Unavailable, "{err:?}");
    ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    Ok(())
}
