//! Backpressure and graceful shutdown, with a model slow enough that
//! concurrent requests overlap: beyond the in-flight limit callers get
//! RESOURCE_EXHAUSTED / 429 with a retry hint, never a queue; on SIGTERM the
//! service reports not-ready first, finishes what is in flight, then exits.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, promote, python, register_file, start_inference, start_registry};
use ferry_proto::inference::v1::{DataType, PredictRequest, Tensor};
use tonic::Code;

const WIDTH: usize = 64;
const HIDDEN: usize = 2048;
const BATCH: usize = 128;

fn slow_request() -> PredictRequest {
    PredictRequest {
        model: "slow".into(),
        inputs: vec![Tensor {
            name: "x".into(),
            dtype: DataType::Float32.into(),
            shape: vec![BATCH as i64, WIDTH as i64],
            float_data: vec![0.5; BATCH * WIDTH],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backpressure_and_graceful_drain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let model = d.join("slow.onnx");
    // Small inputs, heavy compute: x [N,64] · W1 [64,2048] · W2 [2048,2048], summed
    // per row: about 1 GFLOP for a batch of 128, so concurrent requests overlap.
    python(
        &format!(
            "import numpy as np, onnx\n\
             from onnx import helper, numpy_helper, TensorProto\n\
             W1 = numpy_helper.from_array(np.full(({WIDTH}, {HIDDEN}), 0.01, np.float32), 'W1')\n\
             W2 = numpy_helper.from_array(np.full(({HIDDEN}, {HIDDEN}), 0.001, np.float32), 'W2')\n\
             axes = numpy_helper.from_array(np.array([1], np.int64), 'axes')\n\
             g = helper.make_graph([helper.make_node('MatMul', ['x', 'W1'], ['h1']),\n\
                                    helper.make_node('MatMul', ['h1', 'W2'], ['h2']),\n\
                                    helper.make_node('ReduceSum', ['h2', 'axes'], ['y'], keepdims=0)], 'slow',\n\
                 [helper.make_tensor_value_info('x', TensorProto.FLOAT, [None, {WIDTH}])],\n\
                 [helper.make_tensor_value_info('y', TensorProto.FLOAT, [None])], [W1, W2, axes])\n\
             onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), '{}')",
            model.display()
        ),
        &[],
    )?;
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "slow", &model).await?;
    promote(&mut registry.client, "slow", "1").await?;
    // Per-model settings from a models file: the global default (256 in flight) would never reject here.
    let models_file = d.join("models.toml");
    std::fs::write(
        &models_file,
        "[[model]]\nspec = \"slow:Production\"\nsessions = 1\nintra_threads = 1\nwarmup_runs = 2\nmax_in_flight = 2\n",
    )?;
    let mut inference = start_inference(
        d,
        &mlflow.url,
        Some(&registry.url),
        "",
        &[
            ("FERRY_MODELS_FILE", models_file.display().to_string()),
            ("FERRY_DRAIN_DELAY_MS", "4000".into()),
            ("FERRY_DRAIN_TIMEOUT_MS", "20000".into()),
        ],
    )
    .await?;
    let mut probe = slow_request();
    probe.inputs[0].shape = vec![1, WIDTH as i64];
    probe.inputs[0].float_data.truncate(WIDTH);
    ferry_e2e::wait_for("the slow model to serve", Duration::from_secs(60), || {
        let (mut c, req) = (inference.client.clone(), probe.clone());
        async move { Ok(c.predict(req).await.ok().map(|_| ())) }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;

    // Backpressure over gRPC: 8 at once against a limit of 2.
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = inference.client.clone();
        calls.push(tokio::spawn(async move { c.predict(slow_request()).await }));
    }
    let (mut ok, mut rejected) = (0, 0);
    for c in calls {
        match c.await? {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                ensure!(s.metadata().get("retry-after").is_some(), "no retry-after on {s:?}");
                rejected += 1;
            }
            Err(s) => anyhow::bail!("unexpected {s:?}"),
        }
    }
    ensure!(ok >= 2 && rejected >= 1, "ok {ok}, rejected {rejected}");

    // And over REST (Open Inference Protocol, binary tensor data): 429 with Retry-After.
    let header = serde_json::json!({"inputs": [{"name": "x", "shape": [BATCH, WIDTH], "datatype": "FP32",
        "parameters": {"binary_data_size": BATCH * WIDTH * 4}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0.5f32.to_le_bytes(), BATCH * WIDTH).flatten());
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let req = http
            .post(format!("{}/v2/models/slow/infer", inference.http))
            .header("inference-header-content-length", header.len())
            .body(body.clone());
        calls.push(tokio::spawn(req.send()));
    }
    let (mut ok, mut rejected) = (0, 0);
    for c in calls {
        let r = c.await??;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                ensure!(r.headers().get("retry-after").is_some(), "429 without Retry-After");
                rejected += 1;
            }
            other => anyhow::bail!("unexpected {other}: {}", r.text().await?),
        }
    }
    ensure!(ok >= 2 && rejected >= 1, "REST: ok {ok}, rejected {rejected}");

    // Graceful shutdown: two requests in flight, then SIGTERM.
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let mut c = inference.client.clone();
        in_flight.push(tokio::spawn(async move { c.predict(slow_request()).await }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    inference.proc.sigterm();
    // Readiness goes false at once while liveness holds and requests are still served.
    let ready_url = format!("{}/v2/health/ready", inference.http);
    ferry_e2e::wait_for("readiness to turn false", Duration::from_secs(2), || {
        let (http, url) = (http.clone(), ready_url.clone());
        async move { Ok((http.get(&url).send().await?.status() == 400).then_some(())) }
    })
    .await?;
    let live = http.get(format!("{}/v2/health/live", inference.http)).send().await?.status();
    ensure!(live == 200, "live during drain: {live}");
    for c in in_flight {
        let r = c.await?;
        ensure!(r.is_ok(), "an in-flight request failed during shutdown: {r:?}");
    }
    // Still inside the drain delay: new requests are served, not refused.
    let during = inference.client.clone().predict(probe.clone()).await;
    ensure!(during.is_ok(), "a request during the drain delay failed: {during:?}");
    let status = tokio::task::spawn_blocking(move || inference.proc.wait_exit(Duration::from_secs(30))).await??;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}
