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

use anyhow::{Context, bail, ensure};
use ferry_proto::{
    inference::v1::{
        DataType, GetModelMetadataRequest, ModelStatus, PredictRequest, PredictResponse, Tensor,
        inference_client::InferenceClient,
    },
    registry::v1::{
        RegisterModelMetadata, RegisterModelRequest, RegisterModelResponse, Stage, TransitionStageRequest,
        model_registry_client::ModelRegistryClient, register_model_request::Payload,
    },
};
use tonic::transport::Channel;

pub mod fleet;
pub mod soak;

/// The repository root. Cargo and nextest tell a test where its package is
/// when it runs; that is preferred to the path compiled in, which is wrong
/// when a target dir shared between checkouts hands this one a test binary
/// another checkout built (cargo judges it fresh by the sources' times).
pub fn repo_root() -> PathBuf {
    let at_run = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|e2e| Some(e2e.parent()?.to_owned()))
        .filter(|root| root.join("e2e/Cargo.toml").is_file());
    at_run
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e sits inside the repo").to_owned())
}

/// The project's Python venv (FERRY_VENV, else `.venv` at the repo root).
pub fn venv() -> PathBuf {
    std::env::var_os("FERRY_VENV").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv"))
}

/// A process's resident memory (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib / 1024.0)
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
    // target/<profile>/deps/<test-exe> or target/<profile>/<bench-exe> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_owned()
    } else {
        dir.to_owned()
    }
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
    /// Where this process's own lines start in `log` (earlier runs' come first).
    log_start: u64,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        // Appended: a process restarted by a test keeps one log.
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let log_start = out.metadata()?.len();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child, log, log_start })
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

    /// What this process has written to its log: not a previous run's lines.
    pub fn own_log(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.log_start as usize..).unwrap_or_default()).into_owned()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM to the process and waits for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.child.id(), "TERM", false);
        self.wait_exit(timeout)
    }

    /// Kills the process and its group at once, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        signal(self.child.id(), "KILL", true);
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        signal(self.child.id(), "TERM", false);
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
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
    dir: PathBuf,
    opts: MlflowOptions,
    port: u16,
}

/// How to run MLflow; the default is the embedded sqlite + local-artifacts setup.
#[derive(Debug, Default, Clone)]
pub struct MlflowOptions {
    pub backend_store_uri: Option<String>,
    pub artifacts_destination: Option<String>,
    /// Instead of proxying artifacts: clients read and write this store
    /// themselves (`--default-artifact-root … --no-serve-artifacts`).
    pub default_artifact_root: Option<String>,
    pub env: Vec<(String, String)>,
    /// Serve HTTPS with this certificate (uvicorn's own TLS); clients verify it with `ca`.
    pub tls: Option<MlflowTls>,
}

/// MLflow's certificate, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct MlflowTls {
    pub server: ferry_tls::testing::Pair,
    pub ca: PathBuf,
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
        // The port is free when picked but MLflow binds it seconds later; another
        // process (often a client's ephemeral port) can take it meanwhile: retry then.
        for _ in 1..=3 {
            let port = free_port();
            let mut proc = Self::spawn(dir, &opts, port)?;
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{port}");
            if Self::healthy(&mut proc, &url, &opts).await? {
                return Ok(Self { url, proc, dir: dir.to_owned(), opts, port });
            }
            let _ = proc.terminate(Duration::from_secs(10));
        }
        bail!("MLflow could not bind a port in 3 attempts")
    }

    fn spawn(dir: &Path, opts: &MlflowOptions, port: u16) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(venv().join("bin/mlflow"));
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(
                opts.backend_store_uri
                    .clone()
                    .unwrap_or_else(|| format!("sqlite:///{}", dir.join("mlflow.db").display())),
            )
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false");
        match &opts.default_artifact_root {
            Some(root) => cmd.args(["--default-artifact-root", root, "--no-serve-artifacts"]),
            None => cmd
                .arg("--artifacts-destination")
                .arg(opts.artifacts_destination.clone().unwrap_or_else(|| dir.join("artifacts").display().to_string())),
        };
        if let Some(tls) = &opts.tls {
            let uvicorn =
                format!("--ssl-certfile {} --ssl-keyfile {}", tls.server.cert.display(), tls.server.key.display());
            cmd.arg("--uvicorn-opts").arg(uvicorn);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        Proc::spawn("mlflow", &mut cmd, dir)
    }

    /// Waits for `/health`; `false` when another process took the port first.
    async fn healthy(proc: &mut Proc, url: &str, opts: &MlflowOptions) -> anyhow::Result<bool> {
        let health = format!("{url}/health");
        let tls = match &opts.tls {
            Some(t) => ferry_tls::ClientTls::from_files(Some(&t.ca), None)?,
            None => ferry_tls::ClientTls::default(),
        };
        let http = tls.http(reqwest::Client::builder())?.build()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(true);
            }
            // Only this attempt's lines: a retry's log still holds the last collision.
            if proc.own_log().contains("address already in use") {
                return Ok(false);
            }
            let log = proc.log_tail();
            if !proc.is_running() {
                bail!("MLflow exited before answering /health\n--- mlflow log ---\n{log}");
            }
            if std::time::Instant::now() > deadline {
                bail!("timed out after 180s waiting for MLflow /health\n--- mlflow log ---\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills MLflow (the server and its workers) at once, as a crash would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts MLflow again on the same port with the same stores, and waits
    /// until it answers: what a supervisor (Kubernetes, systemd) would do.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.proc = Self::spawn(&self.dir, &self.opts, self.port)?;
            if Self::healthy(&mut self.proc, &self.url, &self.opts).await? {
                return Ok(());
            }
            // The old server's socket can linger a moment.
            ensure!(Instant::now() < deadline, "MLflow could not bind port {} again", self.port);
            self.proc.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A Ferry service binary.
pub fn ferry(bin: &str, dir: &Path, args: &[String], env: &[(&str, String)]) -> anyhow::Result<Proc> {
    ferry_under(&[], bin, dir, args, env)
}

/// A Ferry binary run by `wrapper` (a command and its arguments, such as
/// valgrind's); directly when `wrapper` is empty.
pub fn ferry_under(
    wrapper: &[String],
    bin: &str,
    dir: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let path = bin_dir().join(bin);
    if !path.exists() {
        bail!("{} not built; run `cargo build --bins` first (scripts/test.sh does)", path.display());
    }
    let mut cmd = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut c = Command::new(program);
            c.args(wrapper_args).arg(path);
            c
        }
        None => Command::new(path),
    };
    cmd.args(args).env("FERRY_LOG", "info,ferry_registry=debug,ferry_inference=debug");
    // Temp files a binary makes (a registry's default file cache) land in the
    // test's folder: a test that kills the process still leaves nothing in /tmp.
    // Not under a wrapper: valgrind keeps the FIFOs callgrind_control finds in TMPDIR.
    if wrapper.is_empty() {
        cmd.env("TMPDIR", dir);
    }
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
    run_python(cmd.arg("-c").arg(code), env, "python")
}

/// Runs one of the repo's Python scripts (`python/<name>`) in the venv, returning its stdout.
pub fn python_script(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(venv().join("bin/python"));
    run_python(cmd.arg(repo_root().join("python").join(name)).args(args), env, name)
}

/// Logs models with MLflow's Python client (`python/log_models.py NAME KINDS...`)
/// and returns what it printed for each: version, source, expected outputs, digest.
pub fn log_models(name: &str, kinds: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Vec<serde_json::Value>> {
    let args: Vec<&str> = ["--name", name].into_iter().chain(kinds.iter().copied()).collect();
    let out = python_script("log_models.py", &args, env)?;
    // MLflow prints run links on stdout too: the script's answer is its last line.
    Ok(serde_json::from_str(out.lines().last().unwrap_or_default())?)
}

fn run_python(cmd: &mut Command, env: &[(&str, &str)], what: &str) -> anyhow::Result<String> {
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private PostgreSQL cluster on a loopback port (trust auth, loopback only),
/// made with the machine's PostgreSQL binaries; stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (apt-get install postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
            })
            .context("no initdb under /usr/lib/postgresql")?;
        // PostgreSQL refuses to run as root: as root, run it as the postgres user.
        let as_postgres = Command::new("id").arg("-u").output()?.stdout.starts_with(b"0\n");
        let dir = tempfile::Builder::new().prefix("ferry-pg").tempdir_in("/tmp")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            let uid: u32 =
                String::from_utf8(Command::new("id").args(["-u", "postgres"]).output()?.stdout)?.trim().parse()?;
            let gid: u32 =
                String::from_utf8(Command::new("id").args(["-g", "postgres"]).output()?.stdout)?.trim().parse()?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        }
        let pg = Self { port: free_port(), bin, data, as_postgres, _dir: dir };
        pg.run("initdb", &["-D", &pg.data_str(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])?;
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", pg.port, pg.data_str());
        let log = format!("{}/server.log", pg.data_str());
        pg.run("pg_ctl", &["-D", &pg.data_str(), "-l", &log, "-w", "-o", &opts, "start"])?;
        let psql = Command::new(pg.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", "CREATE DATABASE mlflow"])
            .output()?;
        if !psql.status.success() {
            bail!("creating the database: {}", String::from_utf8_lossy(&psql.stderr));
        }
        Ok(pg)
    }

    fn data_str(&self) -> String {
        self.data.display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&path).args(args).output()?
        } else {
            Command::new(&path).args(args).output()?
        };
        if !out.status.success() {
            bail!("{tool} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Restarts the server (fast shutdown: open connections are cut), as a
    /// failover or a maintenance restart would.
    pub fn restart(&self) -> anyhow::Result<()> {
        // With its log file: without one the server would hold pg_ctl's output pipe open.
        let log = format!("{}/server.log", self.data_str());
        self.run("pg_ctl", &["-D", &self.data_str(), "-l", &log, "-m", "fast", "-w", "restart"])
    }

    /// The SQLAlchemy URI MLflow needs: psycopg2 explicitly (plain postgresql:// means psycopg 3).
    pub fn mlflow_uri(&self) -> String {
        format!("postgresql+psycopg2://postgres@127.0.0.1:{}/mlflow", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data_str(), "-m", "immediate", "-w", "stop"]);
    }
}

/// An S3-compatible object store (moto) with one bucket, standing in for DigitalOcean Spaces.
#[derive(Debug)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub proc: Proc,
}

impl S3 {
    pub async fn start(dir: &Path, bucket: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let mut cmd = Command::new(venv().join("bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn("moto", &mut cmd, dir)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let bucket_url = format!("{endpoint}/{bucket}");
        wait_for("moto", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), bucket_url.clone());
            async move { Ok(http.put(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())) }
        })
        .await?;
        Ok(Self { endpoint, bucket: bucket.to_owned(), proc })
    }

    /// The environment MLflow's server needs to use this store.
    pub fn mlflow_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("MLFLOW_S3_ENDPOINT_URL", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Keys of every object in the bucket (one ListObjectsV2 page).
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let xml = reqwest::get(format!("{}/{}?list-type=2", self.endpoint, self.bucket)).await?.text().await?;
        Ok(xml.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect())
    }
}

/// A running registry and a connected client.
#[derive(Debug)]
pub struct Registry {
    pub proc: Proc,
    /// How it was started, for [`Registry::restart`].
    dir: PathBuf,
    env: Vec<(String, String)>,
    pub url: String,
    pub http: String,
    /// The Prometheus endpoint (`.../metrics`).
    pub metrics: String,
    pub client: ModelRegistryClient<Channel>,
}

pub async fn start_registry(dir: &Path, mlflow_url: &str, extra: &[(&str, String)]) -> anyhow::Result<Registry> {
    for _ in 0..3 {
        let (grpc_port, http_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut env = vec![
            ("FERRY_REGISTRY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
            ("FERRY_REGISTRY_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("MLFLOW_TRACKING_URI", mlflow_url.to_owned()),
            ("FERRY_POLL_INTERVAL_MS", "300".to_owned()),
            // Tests that check auth pass a token in `extra`; the rest run open, on purpose.
            ("FERRY_ALLOW_UNAUTHENTICATED", "true".to_owned()),
            // In the test's folder: a registry the test kills leaves no temporary folder behind.
            ("FERRY_FILE_CACHE_DIR", dir.join(format!("registry-files-{grpc_port}")).display().to_string()),
        ];
        env.extend(extra.iter().cloned());
        let mut proc = ferry("ferry-registry", dir, &[], &env)?;
        let url = format!("http://127.0.0.1:{grpc_port}");
        let connect = || ModelRegistryClient::connect(url.clone());
        if let Some(client) = connect_unless_port_taken(&mut proc, "the registry", connect).await? {
            return Ok(Registry {
                proc,
                dir: dir.to_owned(),
                env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
                url,
                http: format!("http://127.0.0.1:{http_port}"),
                metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
                client,
            });
        }
    }
    bail!("the registry could not bind its ports in 3 attempts")
}

impl Registry {
    /// Kills the registry at once, as a crash would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same ports with the same settings, and reconnects.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.proc = ferry("ferry-registry", &self.dir, &[], &env)?;
        let url = self.url.clone();
        let connect = || ModelRegistryClient::connect(url.clone());
        match connect_unless_port_taken(&mut self.proc, "the restarted registry", connect).await? {
            Some(client) => self.client = client,
            None => bail!("the registry's port was taken while it was down"),
        }
        Ok(())
    }
}

/// Connects to a service just started on ports picked free. Another process
/// (tests run in parallel) can take such a port before the service binds it;
/// the service then exits with "address in use" and this returns `None`, for
/// the caller to start it again on new ports.
async fn connect_unless_port_taken<C, E, F: std::future::Future<Output = Result<C, E>>>(
    proc: &mut Proc,
    what: &str,
    connect: impl Fn() -> F,
) -> anyhow::Result<Option<C>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = connect().await {
            return Ok(Some(client));
        }
        if !proc.is_running() {
            // All of this run's lines (a backtrace can follow the error's cause),
            // and none of an earlier run's that shares the log.
            if proc.own_log().to_ascii_lowercase().contains("address already in use") {
                return Ok(None);
            }
            bail!("{what} exited before accepting connections\n{}", proc.log_tail());
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after 30s waiting for {what}\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running inference service and a connected gRPC client.
#[derive(Debug)]
pub struct Inference {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
    pub metrics: String,
    pub model_dir: PathBuf,
    pub client: InferenceClient<Channel>,
}

pub async fn start_inference(
    dir: &Path,
    mlflow_url: &str,
    registry_url: Option<&str>,
    models: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Inference> {
    start_inference_under(&[], dir, mlflow_url, registry_url, models, extra).await
}

/// [`start_inference`], the binary run by `wrapper` (see [`ferry_under`]).
pub async fn start_inference_under(
    wrapper: &[String],
    dir: &Path,
    mlflow_url: &str,
    registry_url: Option<&str>,
    models: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Inference> {
    for _ in 0..3 {
        let (grpc_port, http_port, metrics_port) = (free_port(), free_port(), free_port());
        let model_dir = dir.join(format!("models-{grpc_port}"));
        let mut env = vec![
            ("FERRY_INFERENCE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("FERRY_INFERENCE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
            ("FERRY_INFERENCE_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("MLFLOW_TRACKING_URI", mlflow_url.to_owned()),
            ("ORT_DYLIB_PATH", ort_library()?.display().to_string()),
            ("FERRY_MODEL_DIR", model_dir.display().to_string()),
            ("FERRY_POLL_INTERVAL_MS", "500".to_owned()),
        ];
        if !models.is_empty() {
            env.push(("FERRY_MODELS", models.to_owned()));
        }
        if let Some(r) = registry_url {
            env.push(("FERRY_REGISTRY_URL", r.to_owned()));
        }
        env.extend(extra.iter().cloned());
        let mut proc = ferry_under(wrapper, "ferry-inference", dir, &[], &env)?;
        let url = format!("http://127.0.0.1:{grpc_port}");
        let connect = || InferenceClient::connect(url.clone());
        if let Some(client) = connect_unless_port_taken(&mut proc, "inference gRPC", connect).await? {
            return Ok(Inference {
                proc,
                grpc: url,
                http: format!("http://127.0.0.1:{http_port}"),
                metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
                model_dir,
                client,
            });
        }
    }
    bail!("the inference service could not bind its ports in 3 attempts")
}

/// The sample model, registered, promoted and serving: what most tests start from.
pub struct IrisStack {
    pub mlflow: Mlflow,
    pub registry: Registry,
    pub inference: Inference,
    /// The ONNX file registered as version 1.
    pub model: PathBuf,
}

/// Starts MLflow (sqlite), the registry and an inference service (with
/// `inference_env`) serving `iris:Production` = version 1 of the sample model.
pub async fn serve_iris(dir: &Path, inference_env: &[(&str, String)]) -> anyhow::Result<IrisStack> {
    serve_iris_keyed(dir, inference_env, None).await
}

/// [`serve_iris`] with the inference service requiring `api_key` (`FERRY_API_KEYS`).
pub async fn serve_iris_keyed(
    dir: &Path,
    inference_env: &[(&str, String)],
    api_key: Option<&str>,
) -> anyhow::Result<IrisStack> {
    let mut inference_env = inference_env.to_vec();
    if let Some(key) = api_key {
        inference_env.push(("FERRY_API_KEYS", format!("tests={key}")));
    }
    let inference_env = inference_env.as_slice();
    let mlflow = Mlflow::start(dir).await?;
    let model = dir.join("iris.onnx");
    train_iris(&model, 1.0)?;
    let mut registry = start_registry(dir, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "iris", &model).await?;
    promote(&mut registry.client, "iris", "1").await?;
    let inference = start_inference(dir, &mlflow.url, Some(&registry.url), "iris:Production", inference_env).await?;
    wait_serving_keyed(&inference.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(60), api_key)
        .await
        .with_context(|| inference.proc.log_tail())?;
    Ok(IrisStack { mlflow, registry, inference, model })
}

/// Uploads a file through `RegisterModel` in 64 KiB chunks.
pub async fn register_file(
    client: &mut ModelRegistryClient<Channel>,
    name: &str,
    file: &Path,
) -> anyhow::Result<RegisterModelResponse> {
    register_file_as(client, name, file, None).await
}

/// [`register_file`], sending `token` as the bearer token.
pub async fn register_file_as(
    client: &mut ModelRegistryClient<Channel>,
    name: &str,
    file: &Path,
    token: Option<&str>,
) -> anyhow::Result<RegisterModelResponse> {
    let bytes = std::fs::read(file)?;
    let first = RegisterModelRequest {
        payload: Some(Payload::Metadata(RegisterModelMetadata { name: name.into(), ..Default::default() })),
    };
    let chunks: Vec<RegisterModelRequest> =
        bytes.chunks(64 << 10).map(|c| RegisterModelRequest { payload: Some(Payload::Chunk(c.to_vec())) }).collect();
    let mut req = tonic::Request::new(tokio_stream::iter(std::iter::once(first).chain(chunks)));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(client.register_model(req).await?.into_inner())
}

/// Registers the model saved in `dir` (the graph `model.onnx` and the
/// external data files beside it), as a caller of `RegisterModel` sends it.
pub async fn register_dir(
    client: &mut ModelRegistryClient<Channel>,
    name: &str,
    dir: &Path,
) -> anyhow::Result<RegisterModelResponse> {
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    files.sort_by_key(|f| (f != "model.onnx", f.clone()));
    let mut parts = vec![RegisterModelRequest {
        payload: Some(Payload::Metadata(RegisterModelMetadata { name: name.into(), ..Default::default() })),
    }];
    for f in files {
        let path = ferry_proto::registry::v1::ModelFile { path: f.clone() };
        parts.push(RegisterModelRequest { payload: Some(Payload::File(path)) });
        let bytes = std::fs::read(dir.join(&f))?;
        parts
            .extend(bytes.chunks(64 << 10).map(|c| RegisterModelRequest { payload: Some(Payload::Chunk(c.to_vec())) }));
    }
    Ok(client.register_model(tokio_stream::iter(parts)).await?.into_inner())
}

/// Saves the ONNX model at `src` into `dir` as `mlflow.onnx.log_model` does
/// by default: the graph as `model.onnx`, every weight over 1 KB in one
/// external data file beside it.
pub fn save_with_external_data(src: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    python(
        &format!(
            "import onnx\nonnx.save_model(onnx.load({:?}), {:?}, save_as_external_data=True)",
            src.display().to_string(),
            dir.join("model.onnx").display().to_string()
        ),
        &[],
    )?;
    Ok(())
}

pub async fn promote(client: &mut ModelRegistryClient<Channel>, name: &str, version: &str) -> anyhow::Result<()> {
    let req = TransitionStageRequest {
        name: name.into(),
        version: version.into(),
        stage: Stage::Production.into(),
        archive_existing_versions: true,
        ..Default::default()
    };
    client.transition_stage(req).await?;
    Ok(())
}

/// A batch-1 float32 request for input `input`.
pub fn predict_row(model: &str, row: &[f32]) -> PredictRequest {
    PredictRequest {
        model: model.into(),
        inputs: vec![Tensor {
            name: "input".into(),
            dtype: DataType::Float32.into(),
            shape: vec![1, row.len() as i64],
            float_data: row.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The row `python/log_models.py` computes its expected outputs on (64 floats).
pub fn logged_row() -> Vec<f32> {
    (0..64).map(|i| ((0.05 * f64::from(i) - 1.0) * 1000.0).round() as f32 / 1000.0).collect()
}

/// Waits until `version` of `model` answers, and returns that answer.
pub async fn wait_serving(
    client: &InferenceClient<Channel>,
    model: &str,
    version: &str,
    row: &[f32],
    timeout: Duration,
) -> anyhow::Result<PredictResponse> {
    wait_serving_keyed(client, model, version, row, timeout, None).await
}

/// [`wait_serving`], presenting `api_key` as a bearer token.
pub async fn wait_serving_keyed(
    client: &InferenceClient<Channel>,
    model: &str,
    version: &str,
    row: &[f32],
    timeout: Duration,
    api_key: Option<&str>,
) -> anyhow::Result<PredictResponse> {
    wait_for(&format!("{model} version {version} to serve"), timeout, || {
        let mut c = client.clone();
        let mut req = tonic::Request::new(predict_row(model, row));
        if let Some(v) = api_key.and_then(|k| format!("Bearer {k}").parse().ok()) {
            req.metadata_mut().insert("authorization", v);
        }
        async move { Ok(c.predict(req).await.ok().map(|r| r.into_inner()).filter(|r| r.model_version == version)) }
    })
    .await
}

/// Writes the medium benchmark model: a dense MLP (~5.3M parameters),
/// `input` float32 [N,512] → Gemm 2048 → Relu → Gemm 2048 → Relu → Gemm 10 → `output` [N,10].
pub fn make_mlp(path: &std::path::Path, seed: u32) -> anyhow::Result<()> {
    python(
        &format!(
            "import numpy as np, onnx\n\
             from onnx import helper, numpy_helper, TensorProto as T\n\
             r = np.random.default_rng({seed})\n\
             w = lambda n, s: numpy_helper.from_array((r.standard_normal(s) * np.sqrt(2.0 / s[0])).astype(np.float32), n)\n\
             z = lambda n, k: numpy_helper.from_array(np.zeros(k, np.float32), n)\n\
             nodes = [helper.make_node('Gemm', ['input', 'W1', 'B1'], ['h1']), helper.make_node('Relu', ['h1'], ['r1']),\n\
                      helper.make_node('Gemm', ['r1', 'W2', 'B2'], ['h2']), helper.make_node('Relu', ['h2'], ['r2']),\n\
                      helper.make_node('Gemm', ['r2', 'W3', 'B3'], ['output'])]\n\
             g = helper.make_graph(nodes, 'mlp', [helper.make_tensor_value_info('input', T.FLOAT, [None, 512])],\n\
                 [helper.make_tensor_value_info('output', T.FLOAT, [None, 10])],\n\
                 [w('W1', (512, 2048)), z('B1', 2048), w('W2', (2048, 2048)), z('B2', 2048), w('W3', (2048, 10)), z('B3', 10)])\n\
             onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), '{}')",
            path.display()
        ),
        &[],
    )?;
    Ok(())
}

/// Writes a twin of the [`make_mlp`] model at `src` that gives the same
/// answers some 70 ms later (`python/make_twin.py --spin 100000`).
pub fn make_slow_twin(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let (src, dst) = (src.display().to_string(), dst.display().to_string());
    python_script("make_twin.py", &["--src", &src, "--dst", &dst, "--spin", "100000"], &[]).map(drop)
}

/// Writes a twin of the [`make_mlp`] model at `src` that gives the same
/// answers but fails every request whose first value is over `line`.
pub fn make_flaky_twin(src: &Path, dst: &Path, line: f32) -> anyhow::Result<()> {
    let (src, dst, line) = (src.display().to_string(), dst.display().to_string(), line.to_string());
    python_script("make_twin.py", &["--src", &src, "--dst", &dst, "--fail-above", &line], &[]).map(drop)
}

/// Writes a twin of the [`make_mlp`] model at `src` whose input is named `name`: a signature change.
pub fn make_renamed_twin(src: &Path, dst: &Path, name: &str) -> anyhow::Result<()> {
    let (src, dst) = (src.display().to_string(), dst.display().to_string());
    python_script("make_twin.py", &["--src", &src, "--dst", &dst, "--rename-input", name], &[]).map(drop)
}

/// Writes a twin of the [`make_mlp`] model at `src`, `mb` MB larger (an unused initializer).
pub fn make_padded_twin(src: &Path, dst: &Path, mb: u32) -> anyhow::Result<()> {
    let (src, dst, mb) = (src.display().to_string(), dst.display().to_string(), mb.to_string());
    python_script("make_twin.py", &["--src", &src, "--dst", &dst, "--pad-mb", &mb], &[]).map(drop)
}

/// Checks float32 outputs against Python onnxruntime's, to 1e-5.
pub fn assert_close(got: &[f32], want: &serde_json::Value) -> anyhow::Result<()> {
    let want: Vec<f64> = serde_json::from_value(want.clone())?;
    if got.len() != want.len() || got.iter().zip(&want).any(|(g, w)| (f64::from(*g) - w).abs() > 1e-5) {
        bail!("got {got:?}, Python onnxruntime says {want:?}");
    }
    Ok(())
}

/// The next change on a `WatchModels` stream that `want` accepts, within `within`.
pub async fn next_change(
    stream: &mut tonic::Streaming<ferry_proto::registry::v1::ModelChanged>,
    within: Duration,
    want: impl Fn(&ferry_proto::registry::v1::ModelChanged) -> bool,
) -> anyhow::Result<ferry_proto::registry::v1::ModelChanged> {
    tokio::time::timeout(within, async {
        loop {
            let e = stream.message().await?.context("watch stream ended")?;
            if want(&e) {
                return Ok(e);
            }
        }
    })
    .await
    .with_context(|| format!("no matching change within {within:?}"))?
}

/// What `inf` says of `model` (GetModelMetadata).
pub async fn model_status(inf: &Inference, model: &str) -> anyhow::Result<ModelStatus> {
    let mut c = inf.client.clone();
    c.get_model_metadata(GetModelMetadataRequest { model: model.into() }).await?.into_inner().model.context("no status")
}

/// Waits until `inf` reports `want` (variant, weight, serving version) for every variant of `model`.
pub async fn wait_variants(inf: &Inference, model: &str, want: &[(&str, u32, &str)]) -> anyhow::Result<ModelStatus> {
    wait_for("the policy to be in force", Duration::from_secs(30), || async {
        let s = model_status(inf, model).await?;
        let got: Vec<_> = s.variants.iter().map(|v| (v.name.as_str(), v.weight, v.serving_version.as_str())).collect();
        Ok((got == want).then_some(s.clone()))
    })
    .await
    .with_context(|| inf.proc.log_tail())
}

/// MLflow and the registry, with iris versions 1 (C=1) and 2 (C=0.05) registered.
pub async fn two_iris_versions(d: &Path) -> anyhow::Result<(Mlflow, Registry)> {
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    for (i, c) in [1.0, 0.05].into_iter().enumerate() {
        let file = d.join(format!("iris-{i}.onnx"));
        train_iris(&file, c)?;
        register_file(&mut registry.client, "iris", &file).await?;
    }
    Ok((mlflow, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_process_reads_only_its_own_lines_of_a_shared_log() {
        let dir = tempfile::tempdir().unwrap();
        for (word, earlier) in [("first", ""), ("second", "first\n")] {
            let mut p = Proc::spawn("p", Command::new("echo").arg(word), dir.path()).unwrap();
            p.wait_exit(Duration::from_secs(10)).unwrap();
            assert_eq!(p.own_log(), format!("{word}\n"));
            assert_eq!(std::fs::read_to_string(&p.log).unwrap(), format!("{earlier}{word}\n"), "the log keeps both");
        }
    }
}
