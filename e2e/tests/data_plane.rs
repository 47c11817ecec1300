//! The data plane under change: hot swaps under continuous load with zero
//! failed requests, several models in one process (a stage and an alias),
//! and bad versions (checksum mismatch, corrupt artifact) that never take the
//! serving version down.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, predict_row, promote, reference_predict, register_file, serve_iris, start_inference, start_registry,
    train_iris, wait_for, wait_serving,
};
use ferry_proto::{
    inference::v1::{ListModelsRequest, ModelState},
    registry::v1::SetAliasRequest,
};

const ROW: [f32; 4] = [6.0, 2.9, 4.5, 1.5];

/// The file MLflow's local artifact store keeps for a version's ONNX model.
fn stored_file(artifacts: &Path, source: &str) -> anyhow::Result<PathBuf> {
    let rel = source.strip_prefix("mlflow-artifacts:/").context("proxied source")?;
    Ok(artifacts.join(rel).join("model.onnx"))
}

fn probs(resp: &ferry_proto::inference::v1::PredictResponse) -> Vec<f32> {
    resp.outputs.iter().find(|t| t.name == "probabilities").map(|t| t.float_data.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swaps_under_load_and_bad_versions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let mut files = Vec::new();
    for (i, c) in [1.0, 0.05, 0.3, 2.0, 0.7].iter().enumerate() {
        let f = d.join(format!("v{}.onnx", i + 1));
        train_iris(&f, *c)?;
        files.push(f);
    }
    // Expected probabilities per version, from Python onnxruntime.
    let mut want: HashMap<String, Vec<f64>> = HashMap::new();
    for (i, f) in files.iter().take(3).enumerate() {
        want.insert((i + 1).to_string(), serde_json::from_value(reference_predict(f, &ROW)?["probabilities"].clone())?);
    }

    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    for f in files.iter().take(3) {
        register_file(&mut registry.client, "iris", f).await?;
    }
    register_file(&mut registry.client, "iris-b", &files[1]).await?;
    registry
        .client
        .set_alias(SetAliasRequest {
            name: "iris-b".into(),
            alias: "champion".into(),
            version: "1".into(),
            ..Default::default()
        })
        .await?;
    promote(&mut registry.client, "iris", "1").await?;

    // One process, two models: a stage and an alias.
    let inference =
        start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production,iris-b@champion", &[]).await?;
    wait_serving(&inference.client, "iris", "1", &ROW, Duration::from_secs(60))
        .await
        .with_context(|| inference.proc.log_tail())?;
    let b = wait_serving(&inference.client, "iris-b", "1", &ROW, Duration::from_secs(60)).await?;
    // iris-b v1 holds the bytes of iris v2.
    ensure!(probs(&b).iter().zip(&want["2"]).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-5), "iris-b answered {b:?}");

    // Continuous load from 6 clients while versions 2 and 3 are promoted.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (mut c, stop) = (inference.client.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<(String, Vec<f32>)> = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.predict(predict_row("iris", &ROW)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        seen.push((r.model_version.clone(), probs(&r)));
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (seen, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for v in ["2", "3"] {
        promote(&mut registry.client, "iris", v).await?;
        wait_serving(&inference.client, "iris", v, &ROW, Duration::from_secs(60))
            .await
            .with_context(|| inference.proc.log_tail())?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (seen, failures) = c.await?;
        ensure!(failures.is_empty(), "failed requests during swaps: {failures:?}");
        total += seen.len();
        let mut last = 0u32;
        for (version, p) in &seen {
            let n: u32 = version.parse()?;
            ensure!(n >= last, "versions went backwards: {last} then {n}");
            last = n;
            // The label is the version that computed it.
            let w = &want[version];
            ensure!(
                p.iter().zip(w).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-5),
                "v{version} answered {p:?}, expected {w:?}"
            );
        }
        ensure!(
            seen.first().map(|s| s.0.as_str()) == Some("1") && last == 3,
            "a client saw {:?}..{last}",
            seen.first()
        );
    }
    eprintln!("{total} requests across two swaps, none failed");

    // A checksum mismatch: version 4's stored bytes are replaced after registration.
    let r4 = register_file(&mut registry.client, "iris", &files[3]).await?;
    let v4 = r4.version.context("v4")?;
    std::fs::copy(&files[0], stored_file(&d.join("artifacts"), &v4.source)?)?;
    promote(&mut registry.client, "iris", "4").await?;
    let status = wait_for("the checksum mismatch to be reported", Duration::from_secs(30), || {
        let mut c = inference.client.clone();
        async move {
            let models = c.list_models(ListModelsRequest {}).await?.into_inner().models;
            Ok(models.into_iter().find(|m| m.name == "iris" && m.last_error.contains("checksum mismatch")))
        }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    ensure!(status.state() == ModelState::Degraded && status.serving_version == "3", "{status:?}");
    let r = inference.client.clone().predict(predict_row("iris", &ROW)).await?.into_inner();
    ensure!(r.model_version == "3", "serving {} after a bad version", r.model_version);

    // A corrupt artifact whose checksum tag matches: refused as not ONNX
    // (delivery reads the graph for its external data before ONNX Runtime does).
    let r5 = register_file(&mut registry.client, "iris", &files[4]).await?;
    let v5 = r5.version.context("v5")?;
    let junk = b"definitely not an ONNX graph".to_vec();
    std::fs::write(stored_file(&d.join("artifacts"), &v5.source)?, &junk)?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&junk))
    };
    let http = reqwest::Client::new();
    http.post(format!("{}/api/2.0/mlflow/model-versions/set-tag", mlflow.url))
        .json(&serde_json::json!({"name": "iris", "version": "5", "key": "ferry.sha256", "value": sha}))
        .send()
        .await?
        .error_for_status()?;
    promote(&mut registry.client, "iris", "5").await?;
    let status = wait_for("the load failure to be reported", Duration::from_secs(30), || {
        let mut c = inference.client.clone();
        async move {
            let models = c.list_models(ListModelsRequest {}).await?.into_inner().models;
            Ok(models.into_iter().find(|m| m.name == "iris" && m.last_error.contains("not a valid ONNX file")))
        }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    ensure!(status.serving_version == "3", "{status:?}");
    let r = inference.client.clone().predict(predict_row("iris", &ROW)).await?.into_inner();
    ensure!(r.model_version == "3", "serving {} after a corrupt version", r.model_version);

    // Reported as metrics too, and old model files are cleaned (the last 3 kept).
    let text = reqwest::get(&inference.metrics).await?.text().await?;
    let sample = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    ensure!(sample("ferry_inference_model_loads_total{model=\"iris\",result=\"failure\"}") >= 2.0, "{text}");
    ensure!(sample("ferry_inference_model_loads_total{model=\"iris\",result=\"success\"}") >= 3.0, "{text}");
    ensure!(text.contains("ferry_inference_serving_info{model=\"iris\",version=\"3\",state=\"degraded\"} 1"), "{text}");
    // Requests by method, model, version and code; they add up to what the clients sent.
    let sum = |prefix: &str, suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.rsplit_once(' ').is_some_and(|(k, _)| k.ends_with(suffix)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let ok = sum("ferry_inference_requests_total{method=\"grpc.Predict\",model=\"iris\",", "code=\"ok\"}");
    ensure!(ok >= total as f64, "{ok} ok requests counted, {total} sent:\n{text}");
    for series in [
        "ferry_inference_request_duration_seconds_count{method=\"grpc.Predict\",model=\"iris\",version=\"2\"}",
        "ferry_inference_request_duration_seconds_count{method=\"grpc.Predict\",model=\"iris\",version=\"3\"}",
        "ferry_inference_delivery_lag_seconds_count{model=\"iris\"}",
    ] {
        ensure!(sample(series) >= 1.0, "{series} missing:\n{text}");
    }
    ensure!(sample("ferry_inference_model_load_duration_seconds_count{model=\"iris\"}") >= 3.0, "{text}");
    ensure!(sample("ferry_inference_batch_rows_count{model=\"iris\"}") >= 1.0, "{text}");
    ensure!(sample("ferry_inference_queue_depth{model=\"iris\"}") >= 0.0, "{text}");
    ensure!(sum("ferry_mlflow_requests_total{", "outcome=\"ok\"}") >= 1.0, "MLflow calls are counted:\n{text}");
    // One folder per version kept (`v<version>-<digest>/`), each with its graph.
    let kept = std::fs::read_dir(inference.model_dir.join("iris"))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("model.onnx").is_file())
        .count();
    ensure!((1..=3).contains(&kept), "{kept} model versions kept on disk");
    Ok(())
}

/// The service writes where it is told to (its model folder) and nowhere
/// else: not even ONNX Runtime, whose official Linux builds keep a device id
/// and a queue of usage events under `~/.cache/Microsoft` unless telemetry is
/// turned off before they load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_to_the_home_folder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let home = d.join("home");
    std::fs::create_dir(&home)?;
    let env = [
        ("HOME", home.display().to_string()),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        // Telemetry left on by the environment: the service turns it off itself.
        ("ORT_DISABLE_TELEMETRY", "0".to_owned()),
    ];
    let stack = serve_iris(d, &env).await?;
    for _ in 0..20 {
        stack.inference.client.clone().predict(predict_row("iris", &ROW)).await?;
    }
    let written: Vec<_> = walk(&home)?;
    ensure!(written.is_empty(), "the service wrote to its home folder: {written:?}");
    Ok(())
}

/// Every path under `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path)?);
        }
        found.push(path);
    }
    Ok(found)
}
