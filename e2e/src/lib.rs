//! Test harness: starts a real MLflow server from the project's venv and the
//! real Ferry binaries on loopback ports picked at run time, and stops every
//! process it started (whole process groups) when dropped.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e sits inside the repo").to_owned()
}

/// The project's Python venv (FERRY_VENV, else `.venv` at the repo root).
pub fn venv() -> PathBuf {
    std::env::var_os("FERRY_VENV").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv"))
}

/// libonnxruntime from the venv's onnxruntime wheel (or ORT_DYLIB_PATH).
pub fn ort_library() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let lib = venv().join("lib");
    for py in std::fs::read_dir(&lib).with_context(|| format!("no venv at {}; run scripts/setup.sh", lib.display()))? {
        let capi = py?.path().join("site-packages/onnxruntime/capi");
        if let Ok(rd) = std::fs::read_dir(&capi) {
            for f in rd {
                let p = f?.path();
                if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")) {
                    return Ok(p);
                }
            }
        }
    }
    bail!("libonnxruntime.so not found in the venv; run scripts/setup.sh")
}

/// Where cargo put the workspace binaries (FERRY_BIN_DIR overrides).
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A child process in its own process group, killed (group and all) on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM to the process and waits for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.child.id(), "TERM", false);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, sig: &str, group: bool) {
    let target = if group { format!("-{pid}") } else { pid.to_string() };
    let _ = Command::new("kill").arg(format!("-{sig}")).arg("--").arg(target).stderr(Stdio::null()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        // MLflow's worker children ignore SIGTERM for a while: kill the whole group.
        signal(self.child.id(), "KILL", true);
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns Ok(Some) or the timeout passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real MLflow tracking server on sqlite and a local artifact store.
#[derive(Debug)]
pub struct Mlflow {
    pub url: String,
    pub proc: Proc,
}

/// How to run MLflow; the default is the embedded sqlite + local-artifacts setup.
#[derive(Debug, Default, Clone)]
pub struct MlflowOptions {
    pub backend_store_uri: Option<String>,
    pub artifacts_destination: Option<String>,
    pub env: Vec<(String, String)>,
}

impl MlflowOptions {
    /// Lets MLflow deliver webhooks to loopback receivers, as tests need.
    pub fn with_webhooks(mut self) -> anyhow::Result<Self> {
        let key = python("from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())", &[])?;
        for (k, v) in [
            ("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https"),
            ("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true"),
            ("MLFLOW_WEBHOOK_CACHE_TTL", "1"),
            ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", key.trim()),
        ] {
            self.env.push((k.to_owned(), v.to_owned()));
        }
        Ok(self)
    }
}

impl Mlflow {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, MlflowOptions::default()).await
    }

    pub async fn start_with(dir: &Path, opts: MlflowOptions) -> anyhow::Result<Self> {
        let port = free_port();
        let mut cmd = Command::new(venv().join("bin/mlflow"));
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(opts.backend_store_uri.unwrap_or_else(|| format!("sqlite:///{}", dir.join("mlflow.db").display())))
            .arg("--artifacts-destination")
            .arg(opts.artifacts_destination.unwrap_or_else(|| dir.join("artifacts").display().to_string()))
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("mlflow", &mut cmd, dir)?;
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/health");
        let http = reqwest::Client::new();
        let waited = wait_for("MLflow /health", Duration::from_secs(180), || {
            let (http, health) = (http.clone(), health.clone());
            async move { Ok(http.get(&health).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())) }
        })
        .await;
        if let Err(e) = waited {
            bail!("{e}\n--- mlflow log ---\n{}", proc.log_tail());
        }
        Ok(Self { url, proc })
    }
}

/// A Ferry service binary.
pub fn ferry(bin: &str, dir: &Path, args: &[String], env: &[(&str, String)]) -> anyhow::Result<Proc> {
    let path = bin_dir().join(bin);
    if !path.exists() {
        bail!("{} not built; run `cargo build --bins` first (scripts/test.sh does)", path.display());
    }
    let mut cmd = Command::new(path);
    cmd.args(args).env("FERRY_LOG", "info,ferry_registry=debug,ferry_inference=debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(bin, &mut cmd, dir)
}

/// Trains the sample iris model with the repo's script; `c` changes its coefficients.
pub fn train_iris(out: &Path, c: f64) -> anyhow::Result<()> {
    let status = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("python/train_iris.py"))
        .arg("--out")
        .arg(out)
        .arg("--c")
        .arg(c.to_string())
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("train_iris.py failed: {status}");
    }
    Ok(())
}

/// What Python onnxruntime computes for one float row: output name → flattened values.
pub fn reference_predict(model: &Path, row: &[f32]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("python/reference_predict.py"))
        .arg(model)
        .args(row.iter().map(f32::to_string))
        .output()?;
    if !out.status.success() {
        bail!("reference_predict.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs a Python snippet in the venv, returning its stdout.
pub fn python(code: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg("-c").arg(code);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
