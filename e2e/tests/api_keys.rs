//! API keys on the data plane (`FERRY_API_KEYS`), against the real binary:
//! without a key, or with a wrong one, every prediction and metadata call is
//! refused (gRPC UNAUTHENTICATED, HTTP 401 with `WWW-Authenticate`) on both
//! transports and every API; with one, as a bearer token or `x-api-key`, it is
//! answered; probes, the OpenAPI document and the console's page stay open;
//! the key never appears in the logs.

use std::time::Duration;

use anyhow::ensure;
use ferry_e2e::{predict_row, serve_iris_keyed};
use ferry_proto::inference::v1::ListModelsRequest;
use tonic::Code;

const KEY: &str = "bff-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_every_api_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = serve_iris_keyed(dir.path(), &[], Some(KEY)).await?;
    let inf = &stack.inference;
    let mut client = inf.client.clone();
    let row = [5.1, 3.5, 1.4, 0.2];

    // gRPC: no key, a wrong key, a key in another scheme: UNAUTHENTICATED.
    let with = |header: Option<(&'static str, String)>| {
        let mut req = tonic::Request::new(predict_row("iris", &row));
        if let Some((k, v)) = header {
            req.metadata_mut().insert(k, v.parse().expect("ASCII"));
        }
        req
    };
    for (what, header) in [
        ("no key", None),
        ("a wrong key", Some(("authorization", "Bearer not-the-key-at-all".to_owned()))),
        ("another scheme", Some(("authorization", format!("Basic {KEY}")))),
    ] {
        let err = client.predict(with(header)).await.expect_err(what);
        ensure!(err.code() == Code::Unauthenticated, "{what}: {:?} {}", err.code(), err.message());
        ensure!(!err.message().contains(KEY), "the error names no key");
    }
    let err = client.list_models(ListModelsRequest {}).await.expect_err("metadata needs a key too");
    ensure!(err.code() == Code::Unauthenticated, "{err:?}");
    // Either header works.
    let ok = client.predict(with(Some(("authorization", format!("Bearer {KEY}"))))).await?;
    ensure!(ok.get_ref().model_version == "1", "{ok:?}");
    client.predict(with(Some(("x-api-key", KEY.to_owned())))).await?;
    // Health stays open for probes.
    let health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(inf.grpc.clone())?.connect().await?,
    )
    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
    .await?;
    ensure!(health.get_ref().status == 1, "SERVING without a key: {health:?}");

    // HTTP: every API refused without a key, answered with one.
    let http = reqwest::Client::new();
    let base = &inf.http;
    let body = serde_json::json!({"data": row});
    let oip = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]});
    let mlflow = serde_json::json!({"inputs": [row]});
    let calls: [(&str, Option<&serde_json::Value>); 5] = [
        ("/predict", Some(&body)),
        ("/v2/models/iris/infer", Some(&oip)),
        ("/invocations", Some(&mlflow)),
        ("/v1/models", None),
        ("/v1/console/state", None),
    ];
    for (path, json) in calls {
        let req = |key: Option<&str>| {
            let mut r = match json {
                Some(j) => http.post(format!("{base}{path}")).json(j),
                None => http.get(format!("{base}{path}")),
            };
            if let Some(k) = key {
                r = r.header("x-api-key", k);
            }
            r.timeout(Duration::from_secs(10))
        };
        let refused = req(None).send().await?;
        ensure!(refused.status() == 401, "{path} without a key: {}", refused.status());
        ensure!(refused.headers().get("www-authenticate").is_some(), "{path}: a challenge");
        let text = refused.text().await?;
        ensure!(text.contains("API key") && !text.contains(KEY), "{path}: {text}");
        let wrong = req(Some("wrong-key-wrong-key")).send().await?;
        ensure!(wrong.status() == 401, "{path} with a wrong key: {}", wrong.status());
        let answered = req(Some(KEY)).send().await?;
        ensure!(answered.status().is_success(), "{path} with the key: {}", answered.status());
    }
    for open in ["/healthz", "/readyz", "/openapi.json", "/console", "/v2/health/ready"] {
        let r = http.get(format!("{base}{open}")).send().await?;
        ensure!(r.status().is_success(), "{open} stays open: {}", r.status());
    }

    // ferryctl and the Python client present the key from FERRY_API_KEY.
    let ferryctl = |key: Option<&str>| {
        let mut cmd = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"));
        cmd.args(["--inference", &inf.grpc, "predict", "--model", "iris", "--data", "5.1,3.5,1.4,0.2"])
            .env_remove("FERRY_API_KEY");
        if let Some(k) = key {
            cmd.env("FERRY_API_KEY", k);
        }
        cmd.output()
    };
    let refused = ferryctl(None)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && said.contains("API key"), "ferryctl without the key is refused: {said}");
    let answered = ferryctl(Some(KEY))?;
    ensure!(answered.status.success(), "ferryctl with the key: {}", String::from_utf8_lossy(&answered.stderr));
    let python = ferry_e2e::python(
        &format!(
            "import sys, numpy as np; sys.path.insert(0, {:?})\n\
             from ferry_client import Ferry\n\
             f = Ferry(inference={:?}, api_key={KEY:?})\n\
             print(f.predict('iris', np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)).version)",
            ferry_e2e::repo_root().join("clients/python/src").display().to_string(),
            inf.grpc.trim_start_matches("http://"),
        ),
        &[],
    )?;
    ensure!(python.trim() == "1", "the Python client with the key: {python}");

    let log = std::fs::read_to_string(&inf.proc.log)?;
    ensure!(!log.contains(KEY), "the key never reaches the logs");
    ensure!(log.contains("API keys required"), "start-up says keys are on");
    Ok(())
}
