//! Faults injected by killing and restarting real processes, with callers
//! predicting all along: MLflow killed in the middle of a registration and
//! down for a while, then back on the same port; the registry killed and
//! restarted; an inference process killed in the middle of a download. No caller request fails; the registry answers UNAVAILABLE fast
//! while MLflow is away; nothing half-registered becomes visible, and a
//! retry registers once; changes made meanwhile are served; everything
//! recovers by itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use ferry_e2e::{Inference, Mlflow, python, register_file, start_inference, two_iris_versions, wait_for, wait_serving};
use ferry_proto::registry::v1::{GetModelRequest, ListVersionsRequest, SetAliasRequest};
use tonic::Code;

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

/// Two callers predicting over gRPC until stopped: (answered, failed, the first failure).
struct Callers {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl Callers {
    fn start(inf: &Inference) -> Self {
        Self::start_on(inf, "iris", ROW.to_vec())
    }

    fn start_on(inf: &Inference, model: &str, row: Vec<f32>) -> Self {
        let (stop, answered, failed) = (Arc::default(), Arc::default(), Arc::default());
        let tasks = (0..2)
            .map(|_| {
                let (stop, answered, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                    (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed));
                let mut client = inf.client.clone();
                let request = ferry_e2e::predict_row(model, &row);
                tokio::spawn(async move {
                    let mut first = None;
                    while !stop.load(Ordering::Relaxed) {
                        match client.predict(request.clone()).await {
                            Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                first.get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    first
                })
            })
            .collect();
        Self { stop, answered, failed, tasks }
    }

    async fn finish(self) -> anyhow::Result<(u64, u64, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for t in self.tasks {
            first = first.or(t.await?);
        }
        Ok((self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), first))
    }
}

/// Moves an alias with MLflow's own Python client (as a data scientist would).
fn mlflow_alias(mlflow: &Mlflow, alias: &str, version: &str) -> anyhow::Result<()> {
    let code = format!(
        "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('iris', '{alias}', '{version}')"
    );
    python(&code, &[("MLFLOW_TRACKING_URI", &mlflow.url)]).map(drop)
}

/// Every file and folder under `root`, with whether it is a folder.
fn tree(root: &std::path::Path) -> Vec<(std::path::PathBuf, bool)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let is_dir = p.is_dir();
            if is_dir {
                dirs.push(p.clone());
            }
            out.push((p, is_dir));
        }
    }
    out
}

/// The `.onnx` files under MLflow's artifact store.
fn stored_models(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    tree(root)
        .into_iter()
        .filter(|(p, dir)| !dir && p.extension().is_some_and(|x| x == "onnx"))
        .map(|(p, _)| p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_killed_mid_registration_and_down_under_load() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut mlflow = Mlflow::start(d).await?;
    // The registry reaches MLflow through a proxy that can hold one request:
    // the registration's last step, its version, so that MLflow dies exactly then.
    let (armed, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let upstream = mlflow.url.trim_start_matches("http://").to_owned();
    let port =
        faulty_proxy(upstream, "model-versions/create", Fault::HoldRequest, Arc::clone(&armed), Arc::clone(&held))
            .await?;
    let mut registry = ferry_e2e::start_registry(d, &format!("http://127.0.0.1:{port}"), &[]).await?;
    for (i, c) in [1.0, 0.05].into_iter().enumerate() {
        let file = d.join(format!("iris-{i}.onnx"));
        ferry_e2e::train_iris(&file, c)?;
        register_file(&mut registry.client, "iris", &file).await?;
    }
    let req =
        SetAliasRequest { name: "iris".into(), alias: "champion".into(), version: "1".into(), ..Default::default() };
    registry.client.set_alias(req).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start(&inf);

    // A 21 MB model uploaded into MLflow, its version about to be created, when MLflow dies.
    let big = d.join("mlp.onnx");
    ferry_e2e::make_mlp(&big, 1)?;
    let before = stored_models(&d.join("artifacts")).len();
    armed.store(true, Ordering::SeqCst);
    let registering = {
        let (mut client, big) = (registry.client.clone(), big.clone());
        tokio::spawn(async move { register_file(&mut client, "mlp", &big).await })
    };
    wait_for("the registration to reach its last step", Duration::from_secs(30), || async {
        Ok((held.load(Ordering::SeqCst) > 0).then_some(()))
    })
    .await?;
    ensure!(stored_models(&d.join("artifacts")).len() > before, "the files were uploaded first");
    mlflow.kill();
    let err = registering.await?.expect_err("a registration whose MLflow died cannot succeed");
    let status = err.downcast_ref::<tonic::Status>().context("a gRPC status")?;
    eprintln!("registration as MLflow died: {:?}: {}", status.code(), status.message());
    ensure!(status.code() == Code::Unavailable, "{status:?}");
    ensure!(
        status.message().contains("registering \"mlp\": create version"),
        "the error names the step: {}",
        status.message()
    );

    // MLflow away: the registry answers UNAVAILABLE fast, naming what it could not do.
    let outage = Instant::now();
    for _ in 0..3 {
        let started = Instant::now();
        let err = registry.client.get_model(GetModelRequest { name: "iris".into() }).await.unwrap_err();
        let took = started.elapsed();
        eprintln!("GetModel with MLflow down: {:?} in {took:?}: {}", err.code(), err.message());
        ensure!(err.code() == Code::Unavailable && took < Duration::from_secs(2), "{err:?} after {took:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Back on the same port, as a supervisor would restart it; a promotion made
    // at once with MLflow's own client is served without anyone's help.
    mlflow.restart().await?;
    eprintln!("MLflow was down for {:?}", outage.elapsed());
    mlflow_alias(&mlflow, "champion", "2")?;
    wait_serving(&inf.client, "iris", "2", &ROW, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;
    wait_for("the registry to reach MLflow again", Duration::from_secs(30), || {
        let mut c = registry.client.clone();
        async move { Ok(c.get_model(GetModelRequest { name: "iris".into() }).await.ok()) }
    })
    .await?;

    // Nothing half-registered is visible; a retry registers once, and again is a no-op.
    let versions = |c: &mut ferry_proto::registry::v1::model_registry_client::ModelRegistryClient<_>| {
        let req = ListVersionsRequest { name: "mlp".into(), ..Default::default() };
        let mut c = c.clone();
        async move { c.list_versions(req).await }
    };
    match versions(&mut registry.client).await {
        Err(e) => ensure!(e.code() == Code::NotFound, "{e:?}"),
        Ok(r) => ensure!(r.into_inner().versions.is_empty(), "a half-registered version is visible"),
    }
    let first = register_file(&mut registry.client, "mlp", &big).await?;
    let again = register_file(&mut registry.client, "mlp", &big).await?;
    ensure!(first.created && !again.created && first.version == again.version, "{first:?} then {again:?}");
    let listed = versions(&mut registry.client).await?.into_inner().versions;
    ensure!(listed.len() == 1, "registered once: {listed:?}");

    let (answered, failed, first_failure) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {failed} failed");
    ensure!(failed == 0 && answered > 1000, "{failed} failed ({first_failure:?}), {answered} answered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_and_restarted_under_load() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_iris_versions(d).await?;
    mlflow_alias(&mlflow, "champion", "1")?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start(&inf);

    // The registry crashes; an alias moved meanwhile (with MLflow's client) is
    // served all the same: inference polls MLflow while the stream is down.
    registry.kill();
    mlflow_alias(&mlflow, "champion", "2")?;
    let started = Instant::now();
    wait_serving(&inf.client, "iris", "2", &ROW, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;
    eprintln!("served the move made while the registry was down after {:?}", started.elapsed());

    // Back on the same ports: inference subscribes again by itself and follows the stream.
    registry.restart().await?;
    wait_for("inference to subscribe again", Duration::from_secs(30), || async {
        let log = std::fs::read_to_string(&inf.proc.log)?;
        Ok((log.matches("subscribed to registry changes").count() >= 2).then_some(()))
    })
    .await?;
    let req =
        SetAliasRequest { name: "iris".into(), alias: "champion".into(), version: "1".into(), ..Default::default() };
    registry.client.set_alias(req).await?;
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;

    let (answered, failed, first_failure) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {failed} failed");
    ensure!(failed == 0 && answered > 1000, "{failed} failed ({first_failure:?}), {answered} answered");
    Ok(())
}

/// MLflow and the registry with `mlp` versions 1 and 2 (other weights), `@champion` on 1.
async fn two_mlp_versions(d: &std::path::Path) -> anyhow::Result<(Mlflow, ferry_e2e::Registry)> {
    let mlflow = Mlflow::start(d).await?;
    let mut registry = ferry_e2e::start_registry(d, &mlflow.url, &[]).await?;
    for seed in [1, 2] {
        let file = d.join(format!("mlp-{seed}.onnx"));
        ferry_e2e::make_mlp(&file, seed)?;
        register_file(&mut registry.client, "mlp", &file).await?;
    }
    registry.client.set_alias(champion("1")).await?;
    Ok((mlflow, registry))
}

/// Points `mlp@champion` at `version`.
fn champion(version: &str) -> SetAliasRequest {
    SetAliasRequest { name: "mlp".into(), alias: "champion".into(), version: version.into(), ..Default::default() }
}

/// One row for the `mlp` models.
fn mlp_row() -> Vec<f32> {
    (0..512).map(|j| (j % 7) as f32 / 7.0).collect()
}

/// Folders under `root` whose names start with `prefix`.
fn folders(root: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    tree(root)
        .into_iter()
        .filter(|(p, dir)| *dir && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .map(|(p, _)| p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_killed_mid_download_restarts_clean_on_the_right_version() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_mlp_versions(d).await?;
    let row = mlp_row();
    let mut first = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[]).await?;
    wait_serving(&first.client, "mlp", "1", &row, Duration::from_secs(60))
        .await
        .with_context(|| first.proc.log_tail())?;
    let models = first.model_dir.clone();

    // Promote version 2 and kill the process as soon as its download has begun.
    registry.client.set_alias(champion("2")).await?;
    let phase = wait_for("version 2's download to begin", Duration::from_secs(30), || async {
        if !folders(&models, ".staging-").is_empty() {
            return Ok(Some("downloading"));
        }
        Ok(folders(&models, "v2-").first().map(|_| "after the download"))
    })
    .await?;
    first.proc.kill();
    let left = folders(&models, ".staging-");
    eprintln!("killed {phase}; left behind: {left:?}");

    // Restarted on the same folder: the partial download is discarded and version 2 serves.
    let dir_env = ("FERRY_MODEL_DIR", models.display().to_string());
    let second = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[dir_env]).await?;
    wait_serving(&second.client, "mlp", "2", &row, Duration::from_secs(60))
        .await
        .with_context(|| second.proc.log_tail())?;
    wait_for("the partial download to be cleaned up", Duration::from_secs(10), || async {
        Ok(folders(&models, ".staging-").is_empty().then_some(()))
    })
    .await?;
    ensure!(!folders(&models, "v2-").is_empty(), "version 2 kept in its folder");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_killed_while_a_version_loads_keeps_serving_then_restarts_on_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_mlp_versions(d).await?;
    // Version 3 answers as version 1 does, each call some 0.7 s later: its
    // load (timing runs and warm-up on the new session) lasts seconds.
    let slow = d.join("mlp-slow.onnx");
    let (src, dst) = (d.join("mlp-1.onnx").display().to_string(), slow.display().to_string());
    ferry_e2e::python_script("make_twin.py", &["--src", &src, "--dst", &dst, "--spin", "1000000"], &[])?;
    register_file(&mut registry.client, "mlp", &slow).await?;
    let row = mlp_row();
    let first = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[]).await?;
    let before = wait_serving(&first.client, "mlp", "1", &row, Duration::from_secs(60))
        .await
        .with_context(|| first.proc.log_tail())?;
    let models = first.model_dir.clone();
    let mut first = first;

    // Promote version 3; once its files are in place it is loading and warming:
    // version 1 still answers every call; then the process dies.
    let callers = Callers::start_on(&first, "mlp", row.clone());
    registry.client.set_alias(champion("3")).await?;
    wait_for("version 3's files to be in place", Duration::from_secs(30), || async {
        Ok(folders(&models, "v3-").first().cloned())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = first.client.clone();
    let during = c.predict(ferry_e2e::predict_row("mlp", &row)).await?.into_inner();
    ensure!(during.model_version == "1", "version 1 serves while 3 loads: {}", during.model_version);
    let (answered, failed, error) = callers.finish().await?;
    ensure!(failed == 0, "{failed} of {answered} predictions failed while version 3 loaded: {error:?}");
    first.proc.kill();
    eprintln!("killed while version 3 loaded; {answered} predictions answered by version 1 meanwhile");

    // Restarted on the same folder: version 3, the promoted one, serves, from
    // the files already in place (hashed again), with the same answers.
    let dir_env = ("FERRY_MODEL_DIR", models.display().to_string());
    let second = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[dir_env]).await?;
    let after = wait_serving(&second.client, "mlp", "3", &row, Duration::from_secs(90))
        .await
        .with_context(|| second.proc.log_tail())?;
    ensure!(after.outputs[0].float_data == before.outputs[0].float_data, "version 3 answers as version 1");
    ensure!(folders(&models, ".staging-").is_empty(), "nothing half-written left");
    ensure!(folders(&models, "v3-").len() == 1, "version 3 kept once: {:?}", folders(&models, "v3-"));
    Ok(())
}

/// What the proxy in front of MLflow does to the one request it is armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Lets the response through for its headers and 64 KiB, then stalls:
    /// the connection stays open and not another byte comes.
    StallResponse,
    /// Never forwards the request; drops the connection when MLflow goes
    /// away, as a caller of a dying MLflow sees it.
    HoldRequest,
}

/// A TCP proxy in front of MLflow (`upstream`, host:port) that, once `armed`,
/// applies `fault` to the next request whose start contains `matching`
/// (counted in `hits`). Returns its port.
async fn faulty_proxy(
    upstream: String,
    matching: &'static str,
    fault: Fault,
    armed: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let (armed, hits) = (Arc::clone(&armed), Arc::clone(&hits));
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // Set by the request direction when the armed request goes by.
                let hit = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&hit);
                let counted = Arc::clone(&hits);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if text.contains(matching) && armed.swap(false, Ordering::SeqCst) {
                            flag.store(true, Ordering::SeqCst);
                            if fault == Fault::HoldRequest {
                                counted.fetch_add(1, Ordering::SeqCst);
                                return; // never forwarded
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 16 << 10];
                let mut after = 0usize;
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if fault == Fault::StallResponse && hit.load(Ordering::SeqCst) {
                        after += n;
                        if after > 64 << 10 {
                            hits.fetch_add(1, Ordering::SeqCst);
                            // Hold the connection open, silent, until the client gives up on it.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            break;
                        }
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // MLflow closed the connection (or died): so does the proxy.
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_store_that_stalls_mid_download_is_cut_and_resumed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_mlp_versions(d).await?;
    // Inference reaches MLflow through the proxy, on its own (as when the
    // registry is away): a second without a byte cuts a download.
    let (armed, stalls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let upstream = mlflow.url.trim_start_matches("http://").to_owned();
    let port = faulty_proxy(upstream, ".onnx", Fault::StallResponse, Arc::clone(&armed), Arc::clone(&stalls)).await?;
    let through = format!("http://127.0.0.1:{port}");
    let stall = ("FERRY_DOWNLOAD_STALL_MS", "1000".to_owned());
    let inf = start_inference(d, &through, None, "mlp@champion", &[stall]).await?;
    let row = mlp_row();
    wait_serving(&inf.client, "mlp", "1", &row, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start_on(&inf, "mlp", row.clone());

    // Version 2's download stalls after 64 KiB; it is cut after a second and resumed.
    armed.store(true, Ordering::SeqCst);
    let started = Instant::now();
    registry.client.set_alias(champion("2")).await?;
    wait_serving(&inf.client, "mlp", "2", &row, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;
    let took = started.elapsed();
    let log = std::fs::read_to_string(&inf.proc.log)?;
    eprintln!("version 2 served {took:?} after its promotion, through {} stall(s)", stalls.load(Ordering::SeqCst));
    ensure!(stalls.load(Ordering::SeqCst) == 1, "the download was stalled once");
    ensure!(log.contains("no data for 1s") && log.contains("resuming"), "cut and resumed:\n{}", inf.proc.log_tail());

    let (answered, failed, first_failure) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {failed} failed");
    ensure!(failed == 0 && answered > 100, "{failed} failed ({first_failure:?}), {answered} answered");
    Ok(())
}

/// The registry serves model files to the fleet; when MLflow stalls the
/// registry's own download, the registry gives up after its stall limit and
/// the replica reads the version from MLflow itself: served, no caller failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_stalling_the_registrys_download_sends_replicas_to_mlflow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let (armed, stalls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let upstream = mlflow.url.trim_start_matches("http://").to_owned();
    let port = faulty_proxy(upstream, ".onnx", Fault::StallResponse, Arc::clone(&armed), Arc::clone(&stalls)).await?;
    let through = format!("http://127.0.0.1:{port}");
    let stall = ("FERRY_DOWNLOAD_STALL_MS", "1000".to_owned());
    let mut registry = ferry_e2e::start_registry(d, &through, &[stall]).await?;
    for seed in [1, 2] {
        let file = d.join(format!("mlp-{seed}.onnx"));
        ferry_e2e::make_mlp(&file, seed)?;
        register_file(&mut registry.client, "mlp", &file).await?;
    }
    registry.client.set_alias(champion("1")).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[]).await?;
    let row = mlp_row();
    wait_serving(&inf.client, "mlp", "1", &row, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start_on(&inf, "mlp", row.clone());

    armed.store(true, Ordering::SeqCst);
    registry.client.set_alias(champion("2")).await?;
    wait_serving(&inf.client, "mlp", "2", &row, Duration::from_secs(30)).await.with_context(|| inf.proc.log_tail())?;
    ensure!(stalls.load(Ordering::SeqCst) == 1, "the registry's download was stalled once");
    let reg_log = std::fs::read_to_string(&registry.proc.log)?;
    ensure!(
        reg_log.contains("no byte for 1s"),
        "the registry gave up on the stalled download:\n{}",
        registry.proc.log_tail()
    );
    let log = std::fs::read_to_string(&inf.proc.log)?;
    ensure!(log.contains("fetching from MLflow"), "the replica fell back to MLflow:\n{}", inf.proc.log_tail());

    let (answered, failed, first_failure) = callers.finish().await?;
    eprintln!("callers: {answered} answered, {failed} failed");
    ensure!(failed == 0 && answered > 100, "{failed} failed ({first_failure:?}), {answered} answered");
    Ok(())
}

/// Versions that cannot serve never take the serving one down, and a
/// signature change follows a documented rule: a version over the size limit
/// or one that fails its warm-up is refused (the old one serves, the error is
/// reported); a version
/// whose input is renamed is served, and requests shaped for the old one get
/// INVALID_ARGUMENT naming the input the model now takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warm_up_is_refused_and_a_signature_change_is_served_by_the_rule() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let mut registry = ferry_e2e::start_registry(d, &mlflow.url, &[]).await?;
    let files = [d.join("mlp.onnx"), d.join("warm-up-fails.onnx"), d.join("renamed.onnx"), d.join("too-big.onnx")];
    ferry_e2e::make_mlp(&files[0], 1)?;
    // Fails on every input, the warm-up's zeros included.
    ferry_e2e::make_flaky_twin(&files[0], &files[1], -1.0)?;
    ferry_e2e::make_renamed_twin(&files[0], &files[2], "features")?;
    // 21 MB + 16 MB: over the 32 MB this inference process accepts.
    ferry_e2e::make_padded_twin(&files[0], &files[3], 16)?;
    for file in &files {
        register_file(&mut registry.client, "mlp", file).await?;
    }
    registry.client.set_alias(champion("1")).await?;
    let limit = ("FERRY_MAX_MODEL_BYTES", (32u64 << 20).to_string());
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[limit]).await?;
    let row = mlp_row();
    wait_serving(&inf.client, "mlp", "1", &row, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;
    let callers = Callers::start_on(&inf, "mlp", row.clone());

    // Version 4 is over the size limit: refused before it is downloaded whole, version 1 serves on.
    registry.client.set_alias(champion("4")).await?;
    let status = wait_for("version 4 to be refused for its size", Duration::from_secs(60), || async {
        let s = ferry_e2e::model_status(&inf, "mlp").await?;
        Ok((s.last_error.contains("limit")).then_some(s))
    })
    .await
    .with_context(|| inf.proc.log_tail())?;
    eprintln!("over the limit: {}", status.last_error);
    ensure!(status.serving_version == "1", "{status:?}");

    // Version 2 fails its warm-up: refused, reported, version 1 serves on.
    registry.client.set_alias(champion("2")).await?;
    let status = wait_for("version 2's warm-up to fail", Duration::from_secs(60), || async {
        let s = ferry_e2e::model_status(&inf, "mlp").await?;
        Ok((s.last_error.contains("warm-up failed")).then_some(s))
    })
    .await
    .with_context(|| inf.proc.log_tail())?;
    eprintln!("warm-up failure reported: {}", status.last_error);
    ensure!(status.serving_version == "1", "{status:?}");

    // Version 3 renames the input: served; the old request shape is refused, naming the new input.
    let (answered, failed, first_failure) = callers.finish().await?;
    ensure!(failed == 0, "{failed} failed while version 2 was refused ({first_failure:?}), {answered} answered");
    registry.client.set_alias(champion("3")).await?;
    let mut renamed = ferry_e2e::predict_row("mlp", &row);
    renamed.inputs[0].name = "features".into();
    wait_for("version 3 to serve", Duration::from_secs(60), || {
        let (mut c, req) = (inf.client.clone(), renamed.clone());
        async move { Ok(c.predict(req).await.ok().filter(|r| r.get_ref().model_version == "3")) }
    })
    .await
    .with_context(|| inf.proc.log_tail())?;
    let old_shape = inf.client.clone().predict(ferry_e2e::predict_row("mlp", &row)).await.unwrap_err();
    eprintln!("a request for the old signature: {:?}: {}", old_shape.code(), old_shape.message());
    ensure!(old_shape.code() == Code::InvalidArgument && old_shape.message().contains("features"), "{old_shape:?}");
    let s = ferry_e2e::model_status(&inf, "mlp").await?;
    ensure!(s.inputs.first().is_some_and(|i| i.name == "features"), "the status shows the new signature: {s:?}");
    Ok(())
}
