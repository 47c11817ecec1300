//! `POST /invocations` answers what `mlflow models serve` answers: the same
//! request bodies (MLflow's documented forms, CSV, and the
//! `serving_input_example.json` MLflow writes beside a model logged with an
//! input example) go to both, side by side, for a model the Python client
//! logged; statuses, error codes and predictions must agree.

use std::{process::Command, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, Proc, free_port, log_models, start_inference, venv, wait_for, wait_serving};
use serde_json::{Value, json};

fn rows() -> (Vec<f64>, Vec<f64>) {
    let row = |a: f64, b: f64| (0..64).map(|i| ((a * f64::from(i) + b) * 1000.0).round() / 1000.0).collect();
    (row(0.05, -1.0), row(0.03, -0.5))
}

/// Equal up to float32 rounding: MLflow prints float32 widened to f64 digits.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            (x - y).abs() <= 1e-5 * (1.0 + x.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

async fn post(http: &reqwest::Client, url: &str, ct: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let resp = http.post(format!("{url}/invocations")).header("content-type", ct).body(body.to_owned()).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_answer_like_mlflow_models_serve() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let logged = log_models("mlp", &["example"], &[("MLFLOW_TRACKING_URI", &mlflow.url)])?;
    let example = logged[0]["serving_input_example"].as_str().context("no serving_input_example.json")?.to_owned();

    // MLflow's own scoring server for the same version.
    let port = free_port();
    let bin = venv().join("bin");
    let mut cmd = Command::new(bin.join("mlflow"));
    cmd.args(["models", "serve", "--env-manager", "local", "-m", "models:/mlp/1", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
    let mut serve = Proc::spawn("mlflow-serve", &mut cmd, d)?;
    let reference = format!("http://127.0.0.1:{port}");

    let inference = start_inference(d, &mlflow.url, None, "mlp/1", &[]).await?;
    let (r1, r2) = rows();
    let row32: Vec<f32> = r1.iter().map(|x| *x as f32).collect();
    wait_serving(&inference.client, "mlp", "1", &row32, Duration::from_secs(60))
        .await
        .with_context(|| inference.proc.log_tail())?;
    let http = reqwest::Client::new();
    wait_for("mlflow models serve", Duration::from_secs(120), || {
        let (http, url) = (http.clone(), format!("{reference}/ping"));
        async move { Ok(http.get(url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())) }
    })
    .await
    .with_context(|| serve.log_tail())?;

    let cols: Vec<String> = (0..64).map(|i| format!("c{i}")).collect();
    let record = |r: &[f64]| Value::Object(cols.iter().cloned().zip(r.iter().map(|x| json!(x))).collect());
    let csv = format!(
        "{}\n{}\n{}\n",
        cols.join(","),
        r1.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
        r2.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
    );
    let json_bodies = [
        ("serving_input_example.json", example),
        ("dataframe_split", json!({"dataframe_split": {"columns": cols, "data": [r1, r2]}}).to_string()),
        ("dataframe_split without columns", json!({"dataframe_split": {"data": [r1, r2]}}).to_string()),
        ("dataframe_records", json!({"dataframe_records": [record(&r1), record(&r2)]}).to_string()),
        ("instances", json!({"instances": [r1, r2]}).to_string()),
        ("inputs", json!({"inputs": [r1, r2]}).to_string()),
        ("no format key", json!({"data": [r1]}).to_string()),
        ("wrong width", json!({"inputs": [[1.0, 2.0]]}).to_string()),
    ];
    let mut cases: Vec<(&str, &str, String)> =
        json_bodies.into_iter().map(|(what, body)| (what, "application/json", body)).collect();
    cases.push(("CSV", "text/csv", csv));
    for (what, ct, body) in &cases {
        let (want_status, want) = post(&http, &reference, ct, body).await?;
        let (status, got) = post(&http, &inference.http, ct, body).await?;
        ensure!(status == want_status, "{what}: Ferry {status} {got}, mlflow models serve {want_status} {want}");
        if status == 200 {
            ensure!(same(&got, &want), "{what}: Ferry answered {got}\nmlflow models serve {want}");
        } else {
            // MLflow's code depends on where its check fails (schema or runtime); both are 400s.
            let codes = ["BAD_REQUEST", "INVALID_PARAMETER_VALUE"];
            ensure!(codes.iter().any(|c| got["error_code"] == *c), "{what}: Ferry {got}, mlflow models serve {want}");
            ensure!(got["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message in {got}");
        }
    }

    // Ferry's own additions: an unknown model is a 404 in MLflow's error shape;
    // the model can be named by query or header.
    let resp = http
        .post(format!("{}/invocations?model=nope", inference.http))
        .header("content-type", "application/json")
        .body(json!({"inputs": [r1]}).to_string())
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 404, "unknown model: {}", resp.status());
    let body: Value = resp.json().await?;
    ensure!(body["error_code"] == "RESOURCE_DOES_NOT_EXIST", "{body}");
    let resp = http
        .post(format!("{}/invocations", inference.http))
        .header("x-ferry-model", "mlp")
        .header("content-type", "application/json")
        .body(json!({"inputs": [r1]}).to_string())
        .send()
        .await?;
    ensure!(resp.status().is_success(), "model by header: {}", resp.status());
    let resp = http
        .post(format!("{}/invocations", inference.http))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 415, "text/plain: {}", resp.status());

    // Counted like every other API: successes and the refused bodies.
    let text = http.get(&inference.metrics).send().await?.text().await?;
    let count = |code: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("ferry_inference_requests_total{method=\"rest.invocations\"") && l.contains(code))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    ensure!(count("code=\"ok\"") >= 7.0, "successful /invocations not counted:\n{text}");
    ensure!(count("code=\"invalid_argument\"") >= 1.0, "a refused body not counted:\n{text}");
    let _ = serve.terminate(Duration::from_secs(10));
    Ok(())
}
