//! A fleet as Kubernetes runs it, on one machine: one MLflow (webhooks on),
//! registry replicas that pass verified deliveries on to each other, and
//! inference replicas each following one registry (the other as fallback).
//! MLflow sits behind a tap that records every request line, so a test can
//! count what the fleet costs MLflow. Shared by `tests/fleet.rs` and the
//! `bench-fleet` benchmark.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::{Inference, Mlflow, MlflowOptions, Registry, predict_row, start_inference, start_registry};

/// Replicas run as `deploy/k8s` runs them: ONNX Runtime's pool threads do not
/// spin. Many processes share these cores; a spinning pool after each
/// warm-up takes the CPU the other replicas need to load (BENCHMARKS.md,
/// "Fleet delivery"). `FERRY_ORT_SPINNING` in the environment overrides it.
fn replica_env() -> Vec<(&'static str, String)> {
    match std::env::var("FERRY_ORT_SPINNING") {
        Ok(_) => vec![],
        Err(_) => vec![("FERRY_ORT_SPINNING", "false".to_owned())],
    }
}

/// A TCP proxy in front of MLflow that records each HTTP request line
/// (`GET /api/2.0/... HTTP/1.1`) going through it.
#[derive(Debug, Clone)]
pub struct Tap {
    pub url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

/// MLflow requests, by what they are for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// The registries' reconciliation reads (search endpoints).
    pub reconcile: usize,
    /// Artifact listings and downloads.
    pub files: usize,
    /// Everything else (resolution, policies, download URIs, writes).
    pub other: usize,
}

impl Requests {
    pub fn total(&self) -> usize {
        self.reconcile + self.files + self.other
    }
}

impl Tap {
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut tail: Vec<u8> = Vec::new();
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let mut window = std::mem::take(&mut tail);
                            let carried = window.len();
                            window.extend_from_slice(&buf[..n]);
                            if let Ok(mut l) = seen.lock() {
                                l.extend(request_lines(&window, carried));
                            }
                            tail = window[window.len().saturating_sub(512)..].to_vec();
                        }
                    });
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
            }
        });
        Ok(Self { url: format!("http://127.0.0.1:{port}"), lines })
    }

    /// A point to count from.
    pub fn mark(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// The requests since `mark`, by kind.
    pub fn since(&self, mark: usize) -> Requests {
        let lines = self.lines.lock().map(|l| l[mark.min(l.len())..].to_vec()).unwrap_or_default();
        let mut r = Requests::default();
        for line in &lines {
            if line.contains("/search") {
                r.reconcile += 1;
            } else if line.contains("/mlflow-artifacts/") {
                r.files += 1;
            } else {
                r.other += 1;
            }
        }
        r
    }

    /// The request lines since `mark` (for a failure message).
    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        self.lines.lock().map(|l| l[mark.min(l.len())..].to_vec()).unwrap_or_default()
    }
}

/// Request lines that end in `window` past its first `carried` bytes (those
/// ending earlier were counted with the previous read).
fn request_lines(window: &[u8], carried: usize) -> Vec<String> {
    const END: &[u8] = b" HTTP/1.1\r\n";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = window[i..].windows(END.len()).position(|w| w == END).map(|p| p + i) {
        let end = at + END.len();
        if end > carried {
            let start = window[..at].windows(2).rposition(|w| w == b"\r\n").map_or(0, |p| p + 2);
            out.push(String::from_utf8_lossy(&window[start..at]).into_owned());
        }
        i = end;
    }
    out
}

/// The running fleet.
pub struct Fleet {
    pub mlflow: Mlflow,
    pub tap: Tap,
    pub registries: Vec<Registry>,
    pub replicas: Vec<Inference>,
    pub model: String,
    http: reqwest::Client,
    mlflow_dir: std::path::PathBuf,
}

pub const WEBHOOK_SECRET: &str = "fleet-webhook-secret";

impl Fleet {
    /// MLflow with webhooks and two versions of `model` (`@champion` → 1),
    /// `registries` registry replicas (peers of each other; MLflow's webhook
    /// reaches the first, as a Service would route it to one), and
    /// `replicas` inference processes serving `model@champion`, each
    /// following one registry (round robin) and the others after it.
    pub async fn start(dir: &Path, registries: usize, replicas: usize, poll_ms: u64) -> anyhow::Result<Self> {
        let mlflow = Mlflow::start_with(dir, MlflowOptions::default().with_webhooks()?).await?;
        let tap = Tap::start(&mlflow.url).await?;
        let http_ports: Vec<u16> = (0..registries).map(|_| crate::free_port()).collect();
        let mut regs = Vec::new();
        for (i, port) in http_ports.iter().enumerate() {
            let peers: Vec<String> =
                http_ports.iter().filter(|p| *p != port).map(|p| format!("127.0.0.1:{p}")).collect();
            let mut env = vec![
                ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}")),
                ("FERRY_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
                ("FERRY_POLL_INTERVAL_MS", poll_ms.to_string()),
                ("FERRY_FILE_CACHE_DIR", dir.join(format!("registry-files-{i}")).display().to_string()),
                ("FERRY_REGISTRY_PEERS", peers.join(",")),
            ];
            if i == 0 {
                env.push(("FERRY_PUBLIC_URL", format!("http://127.0.0.1:{port}")));
            }
            let reg_dir = dir.join(format!("registry-{i}"));
            std::fs::create_dir_all(&reg_dir)?;
            regs.push(start_registry(&reg_dir, &tap.url, &env).await?);
        }
        let model = "fleet".to_owned();
        let file = dir.join("fleet.onnx");
        crate::train_iris(&file, 1.0)?;
        crate::register_file(&mut regs[0].client, &model, &file).await?;
        crate::train_iris(&file, 0.05)?;
        crate::register_file(&mut regs[0].client, &model, &file).await?;
        let http = reqwest::Client::new();
        let fleet_mlflow = mlflow.url.clone();
        set_alias(&http, &fleet_mlflow, &model, "champion", "1").await?;
        let mut infs = Vec::new();
        for i in 0..replicas {
            let urls: Vec<String> = (0..registries).map(|k| regs[(i + k) % registries].url.clone()).collect();
            let inf_dir = dir.join(format!("replica-{i}"));
            std::fs::create_dir_all(&inf_dir)?;
            let selector = format!("{model}@champion");
            infs.push(start_inference(&inf_dir, &tap.url, Some(&urls.join(",")), &selector, &replica_env()).await?);
        }
        let fleet = Self { mlflow, tap, registries: regs, replicas: infs, model, http, mlflow_dir: dir.to_owned() };
        for r in &fleet.replicas {
            crate::wait_serving(&r.client, &fleet.model, "1", &ROW, Duration::from_secs(120))
                .await
                .with_context(|| r.proc.log_tail())?;
        }
        // The webhook in place, and MLflow's one-second webhook cache expired.
        crate::wait_for("the MLflow webhook", Duration::from_secs(30), || async {
            let hooks = fleet.http.get(format!("{}/api/2.0/mlflow/webhooks", fleet.mlflow.url)).send().await?;
            let text = hooks.text().await?;
            Ok(text.contains("ferry-registry").then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(fleet)
    }

    /// Registers another version of the model (iris trained with `c`); its number.
    pub async fn register_iris(&mut self, c: f64) -> anyhow::Result<String> {
        let file = self.mlflow_dir.join(format!("fleet-{c}.onnx"));
        crate::train_iris(&file, c)?;
        let r = crate::register_file(&mut self.registries[0].client, &self.model, &file).await?;
        r.version.map(|v| v.version).context("registration returned no version")
    }

    /// Moves `@champion` in MLflow directly, as its UI or Python client would
    /// (the same REST call), not through the tap; returns when MLflow answered.
    pub async fn move_champion(&self, version: &str) -> anyhow::Result<Instant> {
        set_alias(&self.http, &self.mlflow.url, &self.model, "champion", version).await?;
        Ok(Instant::now())
    }

    /// Keeps every replica busy (one request in flight each, `gap` apart)
    /// until `stop`; records, per replica, when it first answered with
    /// `version`, and counts failures.
    pub fn load(&self, version: &str, gap: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let first: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; self.replicas.len()]));
        let mut tasks = Vec::new();
        for (i, r) in self.replicas.iter().enumerate() {
            let (mut client, model, want) = (r.client.clone(), self.model.clone(), version.to_owned());
            let (stop, failures, answered, first) =
                (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&answered), Arc::clone(&first));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.predict(predict_row(&model, &ROW)).await {
                        Ok(r) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if r.get_ref().model_version == want
                                && let Ok(mut f) = first.lock()
                            {
                                f[i].get_or_insert_with(Instant::now);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(gap).await;
                }
            }));
        }
        Load { stop, failures, answered, first, tasks }
    }
}

/// Load running against the fleet ([`Fleet::load`]).
pub struct Load {
    stop: Arc<AtomicBool>,
    pub failures: Arc<AtomicU64>,
    pub answered: Arc<AtomicU64>,
    first: Arc<Mutex<Vec<Option<Instant>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Waits until every replica answered with the version, or `timeout`;
    /// each replica's delay after `since`.
    pub async fn all_switched(&self, since: Instant, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let first = self.first.lock().map(|f| f.clone()).unwrap_or_default();
            if first.iter().all(Option::is_some) {
                return Ok(first.into_iter().flatten().map(|t| t.saturating_duration_since(since)).collect());
            }
            let waiting = first.iter().filter(|f| f.is_none()).count();
            ensure!(
                Instant::now() < deadline,
                "{waiting} of {} replicas never answered with the new version",
                first.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.answered.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }
}

/// An iris row.
pub const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

async fn set_alias(
    http: &reqwest::Client,
    mlflow: &str,
    model: &str,
    alias: &str,
    version: &str,
) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{mlflow}/api/2.0/mlflow/registered-models/alias"))
        .json(&serde_json::json!({ "name": model, "alias": alias, "version": version }))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "setting {model}@{alias}: {}", resp.text().await.unwrap_or_default());
    Ok(())
}

/// The p-th percentile (0–100) of durations, nearest rank.
pub fn percentile(xs: &[Duration], p: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_request_lines_across_reads() {
        let a = b"GET /api/2.0/mlflow/registered-models/get?name=x HTTP/1.1\r\nhost: x\r\n\r\nPOST /api/2.0/mlflow-art";
        let lines = request_lines(a, 0);
        assert_eq!(lines, ["GET /api/2.0/mlflow/registered-models/get?name=x"]);
        let mut w = a[a.len() - 40..].to_vec();
        let carried = w.len();
        w.extend_from_slice(b"ifacts/artifacts/1/m.onnx HTTP/1.1\r\n\r\n");
        let lines = request_lines(&w, carried);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("POST /api/2.0/mlflow-art") && lines[0].ends_with("m.onnx"), "{lines:?}");
    }
}
