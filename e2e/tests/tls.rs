//! TLS everywhere, with a CA made in the test: MLflow serving HTTPS (its own
//! uvicorn TLS), a registry and an inference service speaking TLS on every
//! port, inference proving itself to the registry with a client certificate
//! (mutual TLS), and the clients users run — MLflow's Python client,
//! ferryctl, Ferry's Python client — verifying the servers.
//!
//! What a user would notice: a model logged with `mlflow.onnx.log_model`
//! over HTTPS is served, an alias moved in MLflow reaches inference through
//! MLflow's HTTPS webhook and the registry's mutual-TLS stream, and anything
//! without the right certificate — or speaking plaintext — is refused, with
//! a message saying so; no private key reaches a log.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, bail, ensure};
use ferry_e2e::{
    Mlflow, MlflowOptions, MlflowTls, Proc, assert_close, bin_dir, ferry, free_port, log_models, logged_row,
    predict_row, python, wait_for,
};
use ferry_proto::inference::v1::inference_client::InferenceClient;
use ferry_tls::{
    ClientTls,
    testing::{Ca, Pair},
};

const MODEL: &str = "mlp";
const SECRET: &str = "tls-test-webhook-secret";

/// A service started on fresh ports, up when its gRPC health answers over TLS.
struct Service {
    proc: Proc,
    grpc: String,
    http: String,
    metrics: String,
}

async fn start(
    bin: &str,
    d: &Path,
    env: &[(&str, String)],
    prefix: &str,
    check: &ClientTls,
) -> anyhow::Result<Service> {
    for _ in 0..3 {
        let (g, h, m) = (free_port(), free_port(), free_port());
        let mut all = vec![
            (format!("FERRY_{prefix}_GRPC_ADDR"), format!("127.0.0.1:{g}")),
            (format!("FERRY_{prefix}_HTTP_ADDR"), format!("127.0.0.1:{h}")),
            (format!("FERRY_{prefix}_METRICS_ADDR"), format!("127.0.0.1:{m}")),
            ("FERRY_PUBLIC_URL".to_owned(), format!("https://127.0.0.1:{h}")),
        ];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let env: Vec<(&str, String)> = all.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut proc = ferry(bin, d, &[], &env)?;
        let grpc = format!("https://127.0.0.1:{g}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(endpoint) = check.endpoint(&grpc)
                && let Ok(channel) = endpoint.connect().await
                && tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok()
            {
                let (http, metrics) = (format!("https://127.0.0.1:{h}"), format!("https://127.0.0.1:{m}/metrics"));
                return Ok(Service { proc, grpc, http, metrics });
            }
            if !proc.is_running() {
                if std::fs::read_to_string(&proc.log)?.contains("ddress already in use") {
                    break;
                }
                bail!("{bin} exited\n{}", proc.log_tail());
            }
            ensure!(std::time::Instant::now() < deadline, "{bin} never answered over TLS\n{}", proc.log_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    bail!("{bin} could not bind its ports in 3 attempts")
}

/// A Prometheus counter's value (0 when absent).
async fn counter(http: &reqwest::Client, metrics: &str, line_start: &str) -> anyhow::Result<u64> {
    let text = http.get(metrics).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// MLflow's webhook sender verifies against certifi's bundle and ignores
/// REQUESTS_CA_BUNDLE; operators with a private CA append it to that bundle
/// in the MLflow image. Here the same bundle is handed to MLflow through a
/// `certifi` module earlier on its path, leaving the venv untouched.
fn certifi_with(ca: &Path, d: &Path) -> anyhow::Result<std::path::PathBuf> {
    let bundle = d.join("certifi-bundle.pem");
    let public = python("import certifi; print(certifi.where())", &[])?;
    let mut pem = std::fs::read(public.trim())?;
    pem.extend(std::fs::read(ca)?);
    std::fs::write(&bundle, pem)?;
    let shim = d.join("certifi-shim");
    std::fs::create_dir_all(shim.join("certifi"))?;
    std::fs::write(
        shim.join("certifi/__init__.py"),
        format!(
            "def where():\n    return {:?}\n\ndef contents():\n    return open(where()).read()\n",
            bundle.display().to_string()
        ),
    )?;
    Ok(shim)
}

fn ferryctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin_dir().join("ferryctl")).args(args).env_remove("FERRY_TLS_CA").output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_port_and_mutual_tls_between_inference_and_registry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = Ca::new(d, "ferry").map_err(|e| anyhow::anyhow!("{e}"))?;
    let rogue = Ca::new(d, "rogue").map_err(|e| anyhow::anyhow!("{e}"))?;
    let pair = |ca: &Ca, f: &str, client: bool| {
        if client { ca.client(f) } else { ca.server(f) }.map_err(|e| anyhow::anyhow!("{e}"))
    };
    let server: Pair = pair(&ca, "server", false)?;
    let inference_id = pair(&ca, "inference", true)?;
    let operator = pair(&ca, "operator", true)?;
    let impostor = pair(&rogue, "impostor", true)?;
    let cafile = ca.cert.display().to_string();

    // MLflow over HTTPS, its webhook sender trusting the CA.
    let mut opts = MlflowOptions::default().with_webhooks()?;
    opts.tls = Some(MlflowTls { server: server.clone(), ca: ca.cert.clone() });
    opts.env.push(("PYTHONPATH".into(), certifi_with(&ca.cert, d)?.display().to_string()));
    let mlflow = Mlflow::start_with(d, opts).await?;
    ensure!(mlflow.url.starts_with("https://"), "{}", mlflow.url);
    let mlflow_env =
        [("MLFLOW_TRACKING_URI", mlflow.url.as_str()), ("MLFLOW_TRACKING_SERVER_CERT_PATH", cafile.as_str())];

    // A data scientist logs two versions the ordinary way, over HTTPS.
    let logged = log_models(MODEL, &["external", "external"], &mlflow_env)?;
    let alias = |v: &str| {
        python(
            &format!(
                "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias({MODEL:?}, 'champion', {v:?})"
            ),
            &mlflow_env,
        )
    };
    alias("1")?;

    let tls_env = |id: Option<&Pair>| {
        let mut env = vec![
            ("MLFLOW_TRACKING_URI", mlflow.url.clone()),
            ("MLFLOW_TRACKING_SERVER_CERT_PATH", cafile.clone()),
            ("FERRY_TLS_CERT", server.cert.display().to_string()),
            ("FERRY_TLS_KEY", server.key.display().to_string()),
            ("FERRY_TLS_CA", cafile.clone()),
        ];
        if let Some(id) = id {
            env.push(("FERRY_TLS_CLIENT_CERT", id.cert.display().to_string()));
            env.push(("FERRY_TLS_CLIENT_KEY", id.key.display().to_string()));
        }
        env
    };
    let as_operator = ClientTls::from_files(Some(&ca.cert), Some((&operator.cert, &operator.key)))?;
    let trusting = ClientTls::from_files(Some(&ca.cert), None)?;

    // The registry: TLS on every port, client certificates required on gRPC.
    let mut env = tls_env(None);
    env.extend([
        ("FERRY_TLS_CLIENT_CA", cafile.clone()),
        ("FERRY_ALLOW_UNAUTHENTICATED", "true".to_owned()),
        ("FERRY_WEBHOOK_SECRET", SECRET.to_owned()),
        // Long: the alias move below must arrive by webhook, not by a poll.
        ("FERRY_POLL_INTERVAL_MS", "60000".to_owned()),
        ("FERRY_FILE_CACHE_DIR", d.join("registry-files").display().to_string()),
    ]);
    let registry = start("ferry-registry", d, &env, "REGISTRY", &as_operator).await?;

    // Inference: TLS on every port, following the registry with its client certificate.
    let mut env = tls_env(Some(&inference_id));
    env.extend([
        ("FERRY_MODELS", format!("{MODEL}@champion")),
        ("FERRY_REGISTRY_URL", registry.grpc.clone()),
        ("ORT_DYLIB_PATH", ferry_e2e::ort_library()?.display().to_string()),
        ("FERRY_MODEL_DIR", d.join("models").display().to_string()),
    ]);
    let inference = start("ferry-inference", d, &env, "INFERENCE", &trusting).await?;

    // gRPC Predict over TLS, answering what the data scientist logged.
    let channel = trusting.endpoint(&inference.grpc.replace("127.0.0.1", "localhost"))?.connect().await?;
    let client = InferenceClient::new(channel);
    let serving = |want: &'static str| {
        let c = client.clone();
        async move {
            wait_for(&format!("version {want} over TLS"), Duration::from_secs(60), || {
                let mut c = c.clone();
                async move {
                    Ok(c.predict(predict_row(MODEL, &logged_row()))
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                        .filter(|r| r.model_version == want))
                }
            })
            .await
        }
    };
    let first = serving("1").await?;
    assert_close(&first.outputs[0].float_data, &logged[0]["expected"])?;

    // REST over HTTPS, and the metrics port too.
    let web = trusting.http(reqwest::Client::builder())?.build()?;
    let rest: serde_json::Value = web
        .post(format!("{}/v2/models/{MODEL}/infer", inference.http))
        .json(&serde_json::json!({"inputs": [{"name": "input", "shape": [1, logged_row().len()], "datatype": "FP32", "data": logged_row()}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(rest["model_version"] == "1", "OIP REST over HTTPS: {rest}");
    // The files came through the registry, over mutual TLS.
    let reads = counter(&web, &registry.metrics, "ferry_registry_model_file_reads_total").await?;
    ensure!(reads > 0, "inference read the model's files through the registry: {reads}");

    // An alias moved with MLflow's client: MLflow's HTTPS webhook, then the mutual-TLS stream.
    let moved = std::time::Instant::now();
    alias("2")?;
    let second = serving("2").await?;
    assert_close(&second.outputs[0].float_data, &logged[1]["expected"])?;
    let accepted =
        counter(&web, &registry.metrics, "ferry_registry_webhook_deliveries_total{result=\"accepted\"}").await?;
    ensure!(accepted > 0, "MLflow's webhook reached the registry over HTTPS");
    eprintln!("alias move served over TLS after {:?}", moved.elapsed());

    // ferryctl verifies the servers and presents the operator's certificate.
    let versions = |id: Option<&Pair>| {
        let mut args = vec!["--registry", &registry.grpc, "--tls-ca", &cafile];
        if let Some(id) = id {
            args.extend(["--tls-client-cert", id.cert.to_str().unwrap(), "--tls-client-key", id.key.to_str().unwrap()]);
        }
        ferryctl(&[args.as_slice(), &["versions", MODEL]].concat())
    };
    let out = versions(Some(&operator))?;
    let listed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && listed.contains("champion"),
        "ferryctl over mutual TLS: {listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused: no client certificate, one from another CA, an untrusted server, plaintext.
    let out = versions(None)?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && said.contains("--tls-client-cert"), "no client certificate: {said}");
    ensure!(!versions(Some(&impostor))?.status.success(), "a certificate from another CA is refused");
    let out = ferryctl(&["--inference", &inference.grpc, "serving"])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && said.contains("--tls-ca"), "a server the system does not trust: {said}");
    let plain = reqwest::get(format!("{}/healthz", inference.http.replace("https://", "http://"))).await;
    ensure!(plain.is_err(), "plaintext HTTP to a TLS port: {plain:?}");
    let plain = InferenceClient::connect(inference.grpc.replace("https://", "http://")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.predict(predict_row(MODEL, &logged_row())).await.is_err(),
    };
    ensure!(refused, "plaintext gRPC to a TLS port is refused");

    // Ferry's Python client over TLS.
    let python_says = python(
        &format!(
            "import sys, numpy as np; sys.path.insert(0, {:?})\n\
             from ferry_client import Ferry\n\
             f = Ferry(inference={:?}, tls_ca={cafile:?})\n\
             print(f.predict({MODEL:?}, np.array([{:?}], dtype=np.float32)).version)",
            ferry_e2e::repo_root().join("clients/python/src").display().to_string(),
            inference.grpc.replace("127.0.0.1", "localhost"),
            logged_row(),
        ),
        &[],
    )?;
    ensure!(python_says.trim() == "2", "the Python client over TLS: {python_says}");

    // The handshakes refused above are explained in the registry's log; no key anywhere.
    let registry_log = std::fs::read_to_string(&registry.proc.log)?;
    ensure!(registry_log.contains("TLS handshake refused"), "the registry says why it refused");
    for key in [&server.key, &inference_id.key] {
        let secret = std::fs::read_to_string(key)?;
        let line = secret.lines().nth(1).context("a key line")?;
        for log in [&registry.proc.log, &inference.proc.log, &mlflow.proc.log] {
            ensure!(!std::fs::read_to_string(log)?.contains(line), "key material in {}", log.display());
        }
    }
    Ok(())
}
