//! The REST API matches its OpenAPI document: the served document is the one
//! in the repository, it is a valid OpenAPI 3 document, and every operation it
//! lists answers with a status it documents. Also checks the JSON mapping of
//! Predict against Python onnxruntime.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{IrisStack, assert_close, python, reference_predict, repo_root, serve_iris};
use serde_json::{Value, json};

const ROW: [f32; 4] = [5.9, 3.0, 5.1, 1.8];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_matches_its_openapi_document() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // JSON logs with the per-request spans and their answers at debug: the
    // request-id and no-payload checks below read them.
    let logging = [
        ("FERRY_LOG_JSON", "true".to_owned()),
        ("FERRY_LOG", "info,ferry::request=debug,ferry_inference=debug".into()),
    ];
    // The MLflow and registry processes live as long as their bindings.
    let IrisStack { inference, model, mlflow: _mlflow, registry: _registry } = serve_iris(d, &logging).await?;
    let http = reqwest::Client::new();
    let base = &inference.http;

    // The JSON mapping of Predict.
    let body = json!({"model": "iris", "inputs": [{"name": "input", "dtype": "DATA_TYPE_FLOAT32", "shape": ["1", "4"], "floatData": ROW}]});
    let r: Value = http.post(format!("{base}/v1/predict")).json(&body).send().await?.error_for_status()?.json().await?;
    ensure!(r["modelVersion"] == "1", "{r}");
    let probs = r["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "probabilities"))
        .context("probabilities")?;
    ensure!(probs["dtype"] == "DATA_TYPE_FLOAT32" && probs["shape"] == json!(["1", "3"]), "{probs}");
    let got: Vec<f32> = serde_json::from_value(probs["floatData"].clone())?;
    assert_close(&got, &reference_predict(&model, &ROW)?["probabilities"])?;
    let label = r["outputs"].as_array().and_then(|o| o.iter().find(|t| t["name"] == "label")).context("label")?;
    ensure!(label["int64Data"].as_array().is_some_and(|a| a.iter().all(Value::is_string)), "int64 as strings: {label}");

    // Asking for one output: the model is run for that output alone, and each
    // answer holds what its request asked for, whatever the previous one asked.
    let want = reference_predict(&model, &ROW)?;
    for output in ["label", "probabilities", "label", "probabilities"] {
        let r: Value = http
            .post(format!("{base}/predict?output={output}"))
            .json(&json!({"data": ROW}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let got: Vec<f32> = serde_json::from_value(r["prediction"].clone())?;
        assert_close(&got, &want[output]).with_context(|| format!("/predict?output={output}"))?;
        let one = json!({"model": "iris", "inputs": body["inputs"], "outputs": [output]});
        let r: Value =
            http.post(format!("{base}/v1/predict")).json(&one).send().await?.error_for_status()?.json().await?;
        let names: Vec<&str> =
            r["outputs"].as_array().context("outputs")?.iter().filter_map(|t| t["name"].as_str()).collect();
        ensure!(names == [output], "/v1/predict asked for {output}: {r}");
    }
    let r = http.post(format!("{base}/predict?output=nope")).json(&json!({"data": ROW})).send().await?;
    ensure!(r.status() == 400, "an unknown output: {}", r.status());

    // The served document is the repository's, and valid.
    let served: Value = http.get(format!("{base}/openapi.json")).send().await?.json().await?;
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("services/inference/openapi.json"))?)?;
    ensure!(served == file, "the served OpenAPI document differs from services/inference/openapi.json");
    let spec_path = d.join("openapi.json");
    std::fs::write(&spec_path, served.to_string())?;
    python(
        &format!(
            "import json; from openapi_spec_validator import validate; validate(json.load(open('{}')))",
            spec_path.display()
        ),
        &[],
    )?;

    // Every documented operation exists and answers with a documented status.
    let bodies = |path: &str| -> Value {
        if path == "/predict" {
            json!({"data": ROW})
        } else if path == "/v1/predict" {
            body.clone()
        } else if path == "/invocations" {
            json!({"inputs": [ROW]})
        } else {
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})
        }
    };
    let paths = served["paths"].as_object().context("paths")?;
    let mut checked = 0;
    for (path, ops) in paths {
        let url = format!("{base}{}", path.replace("{name}", "iris").replace("{version}", "1"));
        for (method, op) in ops.as_object().context("operations")? {
            let resp = match method.as_str() {
                "get" => http.get(&url).send().await?,
                "post" => http.post(&url).json(&bodies(path)).send().await?,
                other => anyhow::bail!("undocumented method {other}"),
            };
            let status = resp.status().as_u16().to_string();
            let documented = op["responses"].as_object().context("responses")?;
            ensure!(
                documented.contains_key(&status),
                "{method} {path} answered {status}, documented: {:?}",
                documented.keys().collect::<Vec<_>>()
            );
            ensure!(status == "200", "{method} {path} answered {status}: {}", resp.text().await?);
            checked += 1;
        }
    }
    ensure!(checked >= 18, "only {checked} operations checked");

    // Browsers on other origins: a preflight is answered, and a prediction
    // sent with an Origin carries the CORS header the page needs to read it.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/predict"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    let allowed = preflight.headers().get("access-control-allow-methods").and_then(|v| v.to_str().ok());
    ensure!(preflight.status().is_success() && allowed.is_some_and(|m| m.contains("POST")), "{preflight:?}");
    let r = http
        .post(format!("{base}/predict"))
        .header("origin", "https://app.example")
        .json(&json!({"data": ROW}))
        .send()
        .await?;
    ensure!(
        r.status() == 200 && r.headers().get("access-control-allow-origin").is_some_and(|v| v == "*"),
        "a browser's prediction without CORS headers: {r:?}"
    );

    // Request ids: the caller's is echoed and made up otherwise; the request's log
    // lines carry it; logs are JSON; no input value reaches the log.
    let distinctive = [5.4321f32, 3.1234, 1.4321, 0.2345];
    let r = http
        .post(format!("{base}/predict"))
        .header("x-request-id", "req-test-42")
        .json(&json!({"data": distinctive}))
        .send()
        .await?;
    ensure!(
        r.status() == 200 && r.headers().get("x-request-id").is_some_and(|v| v == "req-test-42"),
        "{:?}",
        r.headers()
    );
    let r = http.post(format!("{base}/predict")).json(&json!({"data": ROW})).send().await?;
    let made_up = r.headers().get("x-request-id").context("a request id is made up")?.to_str()?.to_owned();
    ensure!(made_up.len() >= 8, "{made_up}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&inference.proc.log)?;
    let json_lines: Vec<Value> =
        log.lines().filter(|l| l.starts_with('{')).map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(json_lines.len() > 5, "JSON log lines expected:\n{log}");
    for id in ["req-test-42", made_up.as_str()] {
        ensure!(json_lines.iter().any(|l| l.to_string().contains(id)), "no log line carries request id {id}:\n{log}");
    }
    ensure!(!log.contains("5.4321") && !log.contains("3.1234"), "a request payload reached the log");
    Ok(())
}
