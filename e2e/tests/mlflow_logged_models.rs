//! Models a data scientist logs with MLflow's own Python client, with its
//! defaults, serve: `mlflow.onnx.log_model` writes weights as external data
//! (one file, or one per tensor), versions come from MLflow 3 logged models
//! (`models:/m-…`) or from run artifacts (`runs:/…`), none carries Ferry's
//! tags. A version that is not ONNX is refused by name and the one serving
//! stays.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, assert_close, log_models, logged_row, predict_row, start_inference, start_registry, wait_for, wait_serving,
};
use ferry_proto::{
    inference::v1::{GetModelMetadataRequest, ModelState, PredictRequest},
    registry::v1::SetAliasRequest,
};

const MODEL: &str = "mlp";

fn predict_request() -> PredictRequest {
    predict_row(MODEL, &logged_row())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_logged_by_the_python_client_serve() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let logged = log_models(
        MODEL,
        &["external", "inline", "many-files", "runs-uri", "sklearn"],
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let by_kind = |k: &str| logged.iter().find(|e| e["kind"] == k).cloned().context(k.to_owned());
    // What the Python client made: external data in one file and in several, and both kinds of source.
    let (external, many) = (by_kind("external")?, by_kind("many-files")?);
    ensure!(external["files"].as_array().map(Vec::len) == Some(2), "one data file expected: {external}");
    ensure!(many["files"].as_array().map(Vec::len) == Some(3), "a data file per weight expected: {many}");
    ensure!(by_kind("inline")?["files"].as_array().map(Vec::len) == Some(1));
    ensure!(external["source"].as_str().is_some_and(|s| s.starts_with("models:/m-")), "{external}");
    ensure!(by_kind("runs-uri")?["source"].as_str().is_some_and(|s| s.starts_with("runs:/")));

    let registry = start_registry(d, &mlflow.url, &[]).await?;
    let mut reg = registry.client.clone();
    let inference = start_inference(d, &mlflow.url, Some(&registry.url), &format!("{MODEL}@champion"), &[]).await?;
    let inf = inference.client.clone();

    for kind in ["external", "inline", "many-files", "runs-uri"] {
        let v = by_kind(kind)?;
        let version = v["version"].as_str().context("version")?.to_owned();
        reg.set_alias(SetAliasRequest {
            name: MODEL.into(),
            alias: "champion".into(),
            version: version.clone(),
            ..Default::default()
        })
        .await?;
        let answer = wait_serving(&inf, MODEL, &version, &logged_row(), Duration::from_secs(30))
            .await
            .with_context(|| format!("{kind}: {}", inference.proc.log_tail()))?;
        let out = answer.outputs.first().context("no output")?;
        assert_close(&out.float_data, &v["expected"]).with_context(|| format!("{kind} version {version}"))?;

        // The status reports the digest over every file, as the README
        // defines it and ONNX's own helpers compute it, and that nothing
        // checked it against a tag.
        let mut c = inf.clone();
        let status = c.get_model_metadata(GetModelMetadataRequest { model: MODEL.into() }).await?.into_inner();
        let status = status.model.context("no status")?;
        ensure!(status.sha256 == v["digest"].as_str().unwrap_or_default(), "{kind}: status {status:?}, logged {v}");
        ensure!(!status.verified, "{kind}: a version without ferry.sha256 reported as verified");
    }
    let log = std::fs::read_to_string(&inference.proc.log)?;
    ensure!(!log.contains("verified against"), "an untagged version was logged as verified");
    ensure!(log.contains("content not verified"), "no word that the content went unverified");
    // Every kind came through the registry's copy, not a fallback to MLflow.
    ensure!(log.contains("(through the registry)"), "the versions were read through the registry");
    ensure!(
        !log.contains("fetching through the registry failed"),
        "a fallback hid a failure:\n{}",
        inference.proc.log_tail()
    );

    // An sklearn model: refused, naming its flavors; the last ONNX version keeps serving.
    let sk = by_kind("sklearn")?;
    let sk_version = sk["version"].as_str().context("version")?.to_owned();
    reg.set_alias(SetAliasRequest {
        name: MODEL.into(),
        alias: "champion".into(),
        version: sk_version.clone(),
        ..Default::default()
    })
    .await?;
    let refusal = format!("version {sk_version} ");
    let status = wait_for("the sklearn version to be refused", Duration::from_secs(30), || {
        let (mut c, refusal) = (inf.clone(), refusal.clone());
        async move {
            let s = c.get_model_metadata(GetModelMetadataRequest { model: MODEL.into() }).await?.into_inner();
            Ok(s.model.filter(|m| m.last_error.contains(&refusal)))
        }
    })
    .await?;
    ensure!(status.state() == ModelState::Degraded, "{status:?}");
    ensure!(
        status.last_error.contains("python_function, sklearn") && status.last_error.contains("onnx flavor"),
        "the refusal should name the flavors found and what Ferry serves: {}",
        status.last_error
    );
    let runs = by_kind("runs-uri")?;
    let mut c = inf.clone();
    let still = c.predict(predict_request()).await?.into_inner();
    ensure!(still.model_version == runs["version"].as_str().unwrap_or_default(), "{still:?}");
    assert_close(&still.outputs[0].float_data, &runs["expected"])?;
    Ok(())
}

/// With Ferry's tag, the digest covers every file: a version whose data file
/// does not match is refused, and the right digest is reported as verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sha256_tag_covers_external_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let logged = log_models(MODEL, &["many-files", "many-files"], &[("MLFLOW_TRACKING_URI", &mlflow.url)])?;
    let (good, bad) = (&logged[0], &logged[1]);
    let tag = |v: &serde_json::Value, sha: &str| {
        format!(
            "from mlflow import MlflowClient; MlflowClient().set_model_version_tag('{MODEL}', '{}', 'ferry.sha256', '{sha}')",
            v["version"].as_str().unwrap_or_default()
        )
    };
    let env = [("MLFLOW_TRACKING_URI", mlflow.url.as_str())];
    ferry_e2e::python(&tag(good, good["digest"].as_str().unwrap_or_default()), &env)?;
    // The other version is tagged with the digest of the first one's files: its data files differ.
    ferry_e2e::python(&tag(bad, good["digest"].as_str().unwrap_or_default()), &env)?;

    let inference = start_inference(d, &mlflow.url, None, &format!("{MODEL}@champion"), &[]).await?;
    let inf = inference.client.clone();
    let alias = |v: &serde_json::Value| {
        format!(
            "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('{MODEL}', 'champion', '{}')",
            v["version"].as_str().unwrap_or_default()
        )
    };
    ferry_e2e::python(&alias(good), &env)?;
    let status = wait_for("the tagged version to serve", Duration::from_secs(30), || {
        let mut c = inf.clone();
        async move {
            let s = c.get_model_metadata(GetModelMetadataRequest { model: MODEL.into() }).await?.into_inner();
            Ok(s.model.filter(|m| m.state() == ModelState::Serving))
        }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    ensure!(status.verified && status.sha256 == good["digest"].as_str().unwrap_or_default(), "{status:?}");

    ferry_e2e::python(&alias(bad), &env)?;
    let status = wait_for("the mismatching version to be refused", Duration::from_secs(30), || {
        let mut c = inf.clone();
        async move {
            let s = c.get_model_metadata(GetModelMetadataRequest { model: MODEL.into() }).await?.into_inner();
            Ok(s.model.filter(|m| m.state() == ModelState::Degraded))
        }
    })
    .await?;
    ensure!(status.last_error.contains("checksum mismatch"), "{status:?}");
    ensure!(status.serving_version == good["version"].as_str().unwrap_or_default(), "{status:?}");
    Ok(())
}

/// Ferry's own registration takes the same shapes: `ferryctl register` with a
/// folder holding `model.onnx` and its data files, the same files as
/// multipart parts of `POST /register-model`, or a server-side folder. The
/// version is stored as `mlflow.onnx.log_model` stores it, so MLflow's client
/// loads it back, and the inference service serves it verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_uploads_external_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let model_dir = d.join("saved");
    // A model saved with ONNX's own helper: one data file per weight.
    let saved = ferry_e2e::python(
        &format!(
            "import json, sys\n\
             sys.path.insert(0, {py:?})\n\
             import numpy as np, onnx, onnxruntime as ort\n\
             from log_models import mlp, ROW\n\
             m = mlp(5)\n\
             want = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider']).run(None, {{'input': np.array([ROW], dtype=np.float32)}})[0]\n\
             import os; os.makedirs({dir:?}, exist_ok=True)\n\
             onnx.save_model(m, {dir:?} + '/model.onnx', save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)\n\
             print(json.dumps({{'expected': want.ravel().tolist(), 'files': sorted(os.listdir({dir:?}))}}))",
            py = ferry_e2e::repo_root().join("python").display().to_string(),
            dir = model_dir.display().to_string(),
        ),
        &[],
    )?;
    let saved: serde_json::Value = serde_json::from_str(saved.trim())?;
    ensure!(saved["files"] == serde_json::json!(["W1", "W2", "model.onnx"]), "{saved}");

    let mlflow = Mlflow::start(d).await?;
    let registry = start_registry(d, &mlflow.url, &[("FERRY_REGISTER_PATH_ROOT", d.display().to_string())]).await?;
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "register", "--name", "ext", "--file"])
        .arg(&model_dir)
        .output()?;
    ensure!(out.status.success(), "ferryctl register: {}", String::from_utf8_lossy(&out.stderr));
    let registered: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(registered["version"] == "1" && registered["created"] == true, "{registered}");
    let digest = registered["sha256"].as_str().context("sha256")?.to_owned();

    // The same files over HTTP, as parts or as a server-side folder: the same version.
    let http = reqwest::Client::new();
    let mut form = reqwest::multipart::Form::new().text("modelName", "ext");
    for f in ["model.onnx", "W1", "W2"] {
        let part = reqwest::multipart::Part::bytes(std::fs::read(model_dir.join(f))?).file_name(f);
        form = form.part("file", part);
    }
    let r: serde_json::Value =
        http.post(format!("{}/register-model", registry.http)).multipart(form).send().await?.json().await?;
    ensure!(r["version"] == "1" && r["created"] == false && r["sha256"] == digest.as_str(), "multipart: {r}");
    let body = serde_json::json!({"modelName": "ext", "path": model_dir});
    let r: serde_json::Value =
        http.post(format!("{}/register-model", registry.http)).json(&body).send().await?.json().await?;
    ensure!(r["version"] == "1" && r["created"] == false, "server-side folder: {r}");
    // A graph without its data is refused, naming what is missing; nothing is written.
    let part = reqwest::multipart::Part::bytes(std::fs::read(model_dir.join("model.onnx"))?).file_name("model.onnx");
    let form = reqwest::multipart::Form::new().text("modelName", "ext").part("file", part);
    let resp = http.post(format!("{}/register-model", registry.http)).multipart(form).send().await?;
    ensure!(resp.status().as_u16() == 400, "graph alone: {}", resp.status());
    let msg = resp.text().await?;
    ensure!(msg.contains("\"W1\"") || msg.contains("\\\"W1\\\""), "the refusal should name the missing file: {msg}");

    // MLflow's client loads what Ferry stored, data files included.
    let code = format!(
        "import json, mlflow, mlflow.onnx, numpy as np, onnxruntime as ort, sys\n\
         sys.path.insert(0, {py:?})\n\
         from log_models import ROW\n\
         m = mlflow.onnx.load_model('models:/ext/1')\n\
         s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n\
         files = sorted(f.path.rsplit('/', 1)[-1] for f in mlflow.MlflowClient().list_artifacts(mlflow.MlflowClient().get_model_version('ext', '1').run_id, 'model'))\n\
         print(json.dumps({{'out': s.run(None, {{'input': np.array([ROW], dtype=np.float32)}})[0].ravel().tolist(), 'files': files}}))",
        py = ferry_e2e::repo_root().join("python").display().to_string(),
    );
    let loaded: serde_json::Value =
        serde_json::from_str(ferry_e2e::python(&code, &[("MLFLOW_TRACKING_URI", &mlflow.url)])?.trim())?;
    ensure!(loaded["files"] == serde_json::json!(["MLmodel", "W1", "W2", "model.onnx"]), "{loaded}");
    let got: Vec<f32> = serde_json::from_value::<Vec<f64>>(loaded["out"].clone())?.iter().map(|x| *x as f32).collect();
    assert_close(&got, &saved["expected"])?;

    // And the inference service serves it, verified against the tag.
    let inference = start_inference(d, &mlflow.url, Some(&registry.url), "ext/1", &[]).await?;
    let mut c = inference.client.clone();
    let answer = wait_for("the registered model to serve", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { Ok(c.predict(predict_row("ext", &logged_row())).await.ok().map(|r| r.into_inner())) }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    assert_close(&answer.outputs[0].float_data, &saved["expected"])?;
    let status = c.get_model_metadata(GetModelMetadataRequest { model: "ext".into() }).await?.into_inner();
    let status = status.model.context("status")?;
    ensure!(status.verified && status.sha256 == digest, "{status:?}");
    Ok(())
}

/// A TCP proxy in front of MLflow that cuts the first connection to carry
/// more than `cut_after` bytes back to the client, mid-transfer.
async fn cutting_proxy(upstream: String, cut_after: usize) -> anyhow::Result<(String, Arc<AtomicBool>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cut = Arc::new(AtomicBool::new(false));
    let fired = Arc::clone(&cut);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, cut) = (upstream.clone(), Arc::clone(&fired));
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let (mut sent, mut buf) = (0usize, vec![0u8; 4096]);
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !cut.load(Ordering::SeqCst) && sent + n > cut_after {
                        let _ = cw.write_all(&buf[..cut_after - sent]).await;
                        cut.store(true, Ordering::SeqCst);
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
            });
        }
    });
    Ok((format!("http://{addr}"), cut))
}

/// A download cut mid-file resumes where it stopped (a range request) and
/// the model still hashes to what MLflow's client logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_download_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let logged = log_models(MODEL, &["external"], &[("MLFLOW_TRACKING_URI", &mlflow.url)])?;
    let v = &logged[0];
    // The weights file is ~38 KB; every other answer is far smaller.
    let (proxy, cut) = cutting_proxy(mlflow.url.trim_start_matches("http://").to_owned(), 20_000).await?;
    let inference = start_inference(d, &proxy, None, &format!("{MODEL}/1"), &[]).await?;
    let mut c = inference.client.clone();
    let answer = wait_for("the version to serve", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { Ok(c.predict(predict_request()).await.ok().map(|r| r.into_inner())) }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    ensure!(cut.load(Ordering::SeqCst), "the proxy never cut a transfer");
    assert_close(&answer.outputs[0].float_data, &v["expected"])?;
    let status = c.get_model_metadata(GetModelMetadataRequest { model: MODEL.into() }).await?.into_inner();
    ensure!(status.model.is_some_and(|m| m.sha256 == v["digest"].as_str().unwrap_or_default()), "digest differs");
    let log = std::fs::read_to_string(&inference.proc.log)?;
    ensure!(log.contains("download interrupted; resuming"), "no resumption in the log:\n{}", inference.proc.log_tail());
    Ok(())
}
