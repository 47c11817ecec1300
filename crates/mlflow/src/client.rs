use std::{
    fmt,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ferry_telemetry::metrics::{self, Family};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::{Instrument, debug, instrument, warn};
use url::Url;

use crate::{
    error::{Error, ErrorKind, Result},
    types::{Experiment, FileInfo, ModelVersion, Page, RegisteredModel, RunInfo, RunStatus, Tag, Webhook},
};

const API: &str = "api/2.0/mlflow";
const ARTIFACTS: &str = "api/2.0/mlflow-artifacts/artifacts";

/// How to authenticate to MLflow. Never printed.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Basic { .. } => "Basic(<redacted>)",
            Auth::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub base_url: Url,
    pub auth: Auth,
    /// Deadline for one metadata call (not for artifact transfers).
    pub timeout: Duration,
    /// Deadline for one artifact upload or download.
    pub transfer_timeout: Duration,
    /// Extra attempts for idempotent calls that fail with 5xx or no connection.
    pub retries: u32,
    /// Trust anchors and client certificate for an https:// MLflow.
    pub tls: ferry_tls::ClientTls,
}

impl Config {
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            auth: Auth::None,
            timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(600),
            retries: 3,
            tls: ferry_tls::ClientTls::default(),
        }
    }
}

/// A client for one MLflow tracking server. Cheap to clone: the connection pool is shared.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    // Shared: the client is cloned into every task that calls MLflow.
    cfg: Arc<Config>,
    calls: Arc<CallMetrics>,
}

/// Latency and outcome of every HTTP call to MLflow, by endpoint (each retry
/// attempt is a call); outcomes as `OUTCOMES`.
type CallMetrics = Family<String, { OUTCOMES.len() }>;

const OUTCOMES: [&str; 8] = [
    "ok",
    "not_found",
    "already_exists",
    "invalid_argument",
    "permission_denied",
    "unavailable",
    "timeout",
    "internal",
];

fn outcome<T>(r: &Result<T>) -> usize {
    match r.as_ref().map_err(Error::kind) {
        Ok(_) => 0,
        Err(ErrorKind::NotFound) => 1,
        Err(ErrorKind::AlreadyExists) => 2,
        Err(ErrorKind::InvalidArgument) => 3,
        Err(ErrorKind::PermissionDenied) => 4,
        Err(ErrorKind::Unavailable) => 5,
        Err(ErrorKind::Timeout) => 6,
        Err(ErrorKind::Internal) => 7,
    }
}

/// A request body that can be rebuilt for each retry attempt.
enum Body<'a> {
    None,
    Json(&'a Value),
}

impl Client {
    pub fn new(mut cfg: Config) -> Result<Self> {
        // Url::join drops the last segment unless the base ends with a slash.
        if !cfg.base_url.path().ends_with('/') {
            let path = format!("{}/", cfg.base_url.path());
            cfg.base_url.set_path(&path);
        }
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).tcp_nodelay(true);
        let http = (cfg.tls.http(builder))
            .map_err(|e| Error::Protocol(format!("MLflow TLS settings: {e}")))?
            .build()
            .map_err(|e| Error::Protocol(format!("building HTTP client: {e}")))?;
        Ok(Self { http, cfg: Arc::new(cfg), calls: Arc::default() })
    }

    /// The same client, making one attempt per call: for a caller with a
    /// better fallback than waiting out the retries' backoff.
    pub fn single_attempt(&self) -> Self {
        let mut cfg = (*self.cfg).clone();
        cfg.retries = 0;
        Self { http: self.http.clone(), cfg: Arc::new(cfg), calls: Arc::clone(&self.calls) }
    }

    /// Appends the `ferry_mlflow_*` Prometheus families: calls by endpoint and
    /// outcome, and their latency.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let all = self.calls.snapshot();
        metrics::header(out, "ferry_mlflow_requests_total", "counter", "HTTP calls to MLflow by endpoint and outcome.");
        for (endpoint, s) in &all {
            for (i, n) in s.outcomes.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "ferry_mlflow_requests_total{{endpoint=\"{}\",outcome=\"{}\"}} {n}",
                        metrics::escape(endpoint),
                        OUTCOMES[i]
                    );
                }
            }
        }
        metrics::header(out, "ferry_mlflow_request_duration_seconds", "histogram", "Latency of HTTP calls to MLflow.");
        for (endpoint, s) in &all {
            let labels = format!("endpoint=\"{}\"", metrics::escape(endpoint));
            s.duration.render(out, "ferry_mlflow_request_duration_seconds", &labels);
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.cfg.base_url
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.cfg.base_url.join(path).map_err(|e| Error::Protocol(format!("bad URL path {path:?}: {e}")))
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        // Continue the caller's trace into MLflow (W3C traceparent).
        let mut headers = reqwest::header::HeaderMap::new();
        ferry_telemetry::inject_context(&mut headers);
        let rb = self.http.request(method, url).headers(headers);
        match &self.cfg.auth {
            Auth::None => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Bearer(token) => rb.bearer_auth(token),
        }
    }

    /// Runs `attempt` up to `attempts` times, backing off between tries, while
    /// it fails with a transient error (5xx, no connection, timeout).
    async fn with_retries<T, F, Fut>(&self, what: &str, attempts: u32, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            let started = Instant::now();
            let result = attempt().await;
            self.calls.record(what.to_owned(), outcome(&result), started.elapsed());
            match result {
                Err(e) if e.is_retryable() && n + 1 < attempts => {
                    warn!(what, attempt = n, error = %e, "MLflow call failed; retrying");
                    n += 1;
                    tokio::time::sleep(backoff(n)).await;
                }
                other => return other,
            }
        }
    }

    /// One JSON call, retried with backoff when `idempotent` and the failure is transient.
    async fn call(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Body<'_>,
        idempotent: bool,
    ) -> Result<Value> {
        let url = self.url(&format!("{API}/{endpoint}"))?;
        let attempts = if idempotent { self.cfg.retries + 1 } else { 1 };
        self.with_retries(endpoint, attempts, || {
            let mut rb = self.request(method.clone(), url.clone()).query(query).timeout(self.cfg.timeout);
            if let Body::Json(v) = &body {
                rb = rb.json(v);
            }
            async move {
                match rb.send().await {
                    Ok(resp) => decode(resp).await,
                    Err(e) => Err(Error::from_reqwest(e, self.cfg.timeout)),
                }
            }
        })
        .await
    }

    async fn get<T: DeserializeOwned>(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<T> {
        let v = self.call(Method::GET, endpoint, query, Body::None, true).await?;
        parse(v)
    }

    async fn post<T: DeserializeOwned>(&self, endpoint: &str, body: &impl Serialize, idempotent: bool) -> Result<T> {
        let v = serde_json::to_value(body).map_err(|e| Error::Protocol(e.to_string()))?;
        let v = self.call(Method::POST, endpoint, &[], Body::Json(&v), idempotent).await?;
        parse(v)
    }

    async fn with_body(&self, method: Method, endpoint: &str, body: Value) -> Result<Value> {
        self.call(method, endpoint, &[], Body::Json(&body), true).await
    }

    // ---- experiments and runs -------------------------------------------------

    #[instrument(skip(self))]
    pub async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment> {
        #[derive(serde::Deserialize)]
        struct R {
            experiment: Experiment,
        }
        let r: R = self.get("experiments/get-by-name", &[("experiment_name", name)]).await?;
        Ok(r.experiment)
    }

    /// The experiment's id, creating the experiment if it does not exist yet.
    #[instrument(skip(self))]
    pub async fn ensure_experiment(&self, name: &str) -> Result<String> {
        match self.get_experiment_by_name(name).await {
            Ok(e) => return Ok(e.experiment_id),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        #[derive(serde::Deserialize)]
        struct R {
            experiment_id: String,
        }
        match self.post::<R>("experiments/create", &json!({ "name": name }), false).await {
            Ok(r) => Ok(r.experiment_id),
            // Another writer created it between our two calls.
            Err(e) if e.is_already_exists() => Ok(self.get_experiment_by_name(name).await?.experiment_id),
            Err(e) => Err(e),
        }
    }

    #[instrument(skip(self, tags))]
    pub async fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[Tag]) -> Result<RunInfo> {
        #[derive(serde::Deserialize)]
        struct Run {
            info: RunInfo,
        }
        #[derive(serde::Deserialize)]
        struct R {
            run: Run,
        }
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": now_ms(),
            "tags": tags,
        });
        let r: R = self.post("runs/create", &body, false).await?;
        Ok(r.run.info)
    }

    #[instrument(skip(self))]
    pub async fn get_run(&self, run_id: &str) -> Result<RunInfo> {
        #[derive(serde::Deserialize)]
        struct Run {
            info: RunInfo,
        }
        #[derive(serde::Deserialize)]
        struct R {
            run: Run,
        }
        let r: R = self.get("runs/get", &[("run_id", run_id)]).await?;
        Ok(r.run.info)
    }

    #[instrument(skip(self))]
    pub async fn finish_run(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let body = json!({ "run_id": run_id, "status": status.as_str(), "end_time": now_ms() });
        let _: Value = self.post("runs/update", &body, true).await?;
        Ok(())
    }

    /// Logs metrics (`key -> value`) and params on a run in one call.
    #[instrument(skip(self, metrics, params))]
    pub async fn log_batch(&self, run_id: &str, metrics: &[(String, f64)], params: &[(String, String)]) -> Result<()> {
        let ts = now_ms();
        let metrics: Vec<Value> =
            metrics.iter().map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": 0})).collect();
        let params: Vec<Value> = params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let _: Value =
            self.post("runs/log-batch", &json!({"run_id": run_id, "metrics": metrics, "params": params}), true).await?;
        Ok(())
    }

    // ---- artifacts (through the tracking server's artifact proxy) ------------

    /// Uploads a local file to `artifact_uri` (an `mlflow-artifacts:/…` URI).
    #[instrument(skip(self, file))]
    pub async fn upload_artifact(&self, artifact_uri: &str, file: &Path) -> Result<()> {
        let url = self.artifact_url(artifact_uri)?;
        self.with_retries("artifact upload", self.cfg.retries + 1, || async {
            // Stream from disk: the file may be far larger than we want in memory.
            let f = tokio::fs::File::open(file)
                .await
                .map_err(|e| Error::Protocol(format!("opening {}: {e}", file.display())))?;
            let sent = self
                .request(Method::PUT, url.clone())
                .timeout(self.cfg.transfer_timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::from(f))
                .send()
                .await;
            match sent {
                Ok(resp) => decode(resp).await.map(|_| ()),
                Err(e) => Err(Error::from_reqwest(e, self.cfg.transfer_timeout)),
            }
        })
        .await
    }

    /// Starts downloading `artifact_uri` from byte `offset` on; the caller
    /// streams the body (with [`Response::chunk`]) so that large files never
    /// sit whole in memory, and resumes a dropped transfer from where it got
    /// to. A resumed answer is `206 Partial Content`; a server that ignores
    /// the range answers `200` with the whole file.
    #[instrument(skip(self))]
    pub async fn download_artifact(&self, artifact_uri: &str, offset: u64) -> Result<Response> {
        let url = self.artifact_url(artifact_uri)?;
        self.with_retries("artifact download", self.cfg.retries + 1, || async {
            let mut rb = self.request(Method::GET, url.clone()).timeout(self.cfg.transfer_timeout);
            if offset > 0 {
                rb = rb.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            match rb.send().await {
                Ok(resp) if resp.status().is_success() => Ok(resp),
                // An error answer: decode classifies it (it never succeeds on a non-2xx status).
                Ok(resp) => {
                    Err(decode(resp).await.err().unwrap_or_else(|| Error::Protocol("unexpected answer".into())))
                }
                Err(e) => Err(Error::from_reqwest(e, self.cfg.transfer_timeout)),
            }
        })
        .await
    }

    /// A small text artifact (an `MLmodel` file), refusing one over `max_bytes`.
    pub async fn read_artifact_text(&self, artifact_uri: &str, max_bytes: usize) -> Result<String> {
        let mut resp = self.download_artifact(artifact_uri, 0).await?;
        let mut raw = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::from_reqwest(e, self.cfg.transfer_timeout))? {
            raw.extend_from_slice(&chunk);
            if raw.len() > max_bytes {
                return Err(Error::Protocol(format!("{artifact_uri} is over {max_bytes} bytes")));
            }
        }
        String::from_utf8(raw).map_err(|_| Error::Protocol(format!("{artifact_uri} is not UTF-8 text")))
    }

    /// Lists the direct children of an artifact directory (basenames).
    #[instrument(skip(self))]
    pub async fn list_artifacts(&self, artifact_uri: &str) -> Result<Vec<FileInfo>> {
        let rel = artifact_rel_path(artifact_uri)?;
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct R {
            files: Vec<FileInfo>,
        }
        let url = self.url(ARTIFACTS)?;
        let resp = self
            .request(Method::GET, url)
            .query(&[("path", rel)])
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(e, self.cfg.timeout))?;
        let r: R = parse(decode(resp).await?)?;
        Ok(r.files)
    }

    /// Resolves a model version's artifact directory to an `mlflow-artifacts:/` URI.
    #[instrument(skip(self))]
    pub async fn resolve_model_uri(&self, name: &str, version: &str) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct R {
            artifact_uri: String,
        }
        let r: R = self.get("model-versions/get-download-uri", &[("name", name), ("version", version)]).await?;
        let uri = r.artifact_uri;
        // `runs:/<run>/<path>` comes back unresolved (a client-side convention).
        if let Some(rest) = uri.strip_prefix("runs:/") {
            let (run_id, path) = rest.split_once('/').unwrap_or((rest, ""));
            let run = self.get_run(run_id).await?;
            return Ok(format!("{}/{}", run.artifact_uri.trim_end_matches('/'), path.trim_start_matches('/')));
        }
        Ok(uri)
    }

    fn artifact_url(&self, artifact_uri: &str) -> Result<Url> {
        let rel = artifact_rel_path(artifact_uri)?;
        self.url(&format!("{ARTIFACTS}/{rel}"))
    }

    // ---- registered models ----------------------------------------------------

    #[instrument(skip(self))]
    pub async fn get_registered_model(&self, name: &str) -> Result<RegisteredModel> {
        #[derive(serde::Deserialize)]
        struct R {
            registered_model: RegisteredModel,
        }
        let r: R = self.get("registered-models/get", &[("name", name)]).await?;
        Ok(r.registered_model)
    }

    /// Creates the registered model unless it exists; returns whether it was created.
    #[instrument(skip(self, description))]
    pub async fn ensure_registered_model(&self, name: &str, description: &str) -> Result<bool> {
        match self.get_registered_model(name).await {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let body = json!({ "name": name, "description": description });
        match self.post::<Value>("registered-models/create", &body, false).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[instrument(skip(self))]
    pub async fn search_registered_models(
        &self,
        filter: Option<&str>,
        max_results: u32,
        page_token: Option<&str>,
    ) -> Result<Page<RegisteredModel>> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct R {
            registered_models: Vec<RegisteredModel>,
            next_page_token: Option<String>,
        }
        let max = max_results.clamp(1, 1000).to_string();
        let mut q = vec![("max_results", max.as_str())];
        if let Some(f) = filter.filter(|f| !f.is_empty()) {
            q.push(("filter", f));
        }
        if let Some(t) = page_token {
            q.push(("page_token", t));
        }
        let r: R = self.get("registered-models/search", &q).await?;
        Ok(Page { items: r.registered_models, next_page_token: r.next_page_token })
    }

    // ---- model versions ---------------------------------------------------------

    #[instrument(skip(self, description, tags))]
    pub async fn create_model_version(
        &self,
        name: &str,
        source: &str,
        run_id: &str,
        description: &str,
        tags: &[Tag],
    ) -> Result<ModelVersion> {
        #[derive(serde::Deserialize)]
        struct R {
            model_version: ModelVersion,
        }
        let body = json!({
            "name": name, "source": source, "run_id": run_id,
            "description": description, "tags": tags,
        });
        let r: R = self.post("model-versions/create", &body, false).await?;
        Ok(r.model_version)
    }

    #[instrument(skip(self))]
    pub async fn get_model_version(&self, name: &str, version: &str) -> Result<ModelVersion> {
        #[derive(serde::Deserialize)]
        struct R {
            model_version: ModelVersion,
        }
        let r: R = self.get("model-versions/get", &[("name", name), ("version", version)]).await?;
        Ok(r.model_version)
    }

    /// One page of model versions matching `filter` (MLflow's search syntax), newest first.
    #[instrument(skip(self))]
    pub async fn search_model_versions(
        &self,
        filter: &str,
        max_results: u32,
        page_token: Option<&str>,
    ) -> Result<Page<ModelVersion>> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct R {
            model_versions: Vec<ModelVersion>,
            next_page_token: Option<String>,
        }
        let max = max_results.to_string();
        let mut q = vec![("filter", filter), ("max_results", max.as_str()), ("order_by", "version_number DESC")];
        if let Some(t) = page_token {
            q.push(("page_token", t));
        }
        let r: R = self.get("model-versions/search", &q).await?;
        Ok(Page { items: r.model_versions, next_page_token: r.next_page_token })
    }

    /// Every version of one registered model, newest first.
    pub async fn all_model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let filter = format!("name = '{}'", escape_filter(name));
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self.search_model_versions(&filter, 1000, token.as_deref()).await?;
            out.extend(page.items);
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    #[instrument(skip(self))]
    pub async fn latest_version_in_stage(&self, name: &str, stage: &str) -> Result<Option<ModelVersion>> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct R {
            model_versions: Vec<ModelVersion>,
        }
        let r: R = self.get("registered-models/get-latest-versions", &[("name", name), ("stages", stage)]).await?;
        Ok(r.model_versions.into_iter().max_by_key(ModelVersion::number))
    }

    #[instrument(skip(self))]
    pub async fn transition_stage(
        &self,
        name: &str,
        version: &str,
        stage: &str,
        archive_existing: bool,
    ) -> Result<ModelVersion> {
        #[derive(serde::Deserialize)]
        struct R {
            model_version: ModelVersion,
        }
        let body = json!({
            "name": name, "version": version, "stage": stage,
            "archive_existing_versions": archive_existing,
        });
        // Idempotent: moving to the stage it is already in changes nothing.
        let r: R = self.post("model-versions/transition-stage", &body, true).await?;
        Ok(r.model_version)
    }

    #[instrument(skip(self, value))]
    pub async fn set_model_version_tag(&self, name: &str, version: &str, key: &str, value: &str) -> Result<()> {
        let body = json!({ "name": name, "version": version, "key": key, "value": value });
        let _: Value = self.post("model-versions/set-tag", &body, true).await?;
        Ok(())
    }

    #[instrument(skip(self, value))]
    pub async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let body = json!({ "name": name, "key": key, "value": value });
        let _: Value = self.post("registered-models/set-tag", &body, true).await?;
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()> {
        self.with_body(Method::DELETE, "registered-models/delete-tag", json!({ "name": name, "key": key })).await?;
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn delete_model_version(&self, name: &str, version: &str) -> Result<()> {
        self.with_body(Method::DELETE, "model-versions/delete", json!({ "name": name, "version": version })).await?;
        Ok(())
    }

    // ---- aliases ----------------------------------------------------------------

    #[instrument(skip(self))]
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        let body = json!({ "name": name, "alias": alias, "version": version });
        let _: Value = self.post("registered-models/alias", &body, true).await?;
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<()> {
        self.with_body(Method::DELETE, "registered-models/alias", json!({ "name": name, "alias": alias })).await?;
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn get_version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        #[derive(serde::Deserialize)]
        struct R {
            model_version: ModelVersion,
        }
        let r: R = self.get("registered-models/alias", &[("name", name), ("alias", alias)]).await?;
        Ok(r.model_version)
    }

    // ---- webhooks ---------------------------------------------------------------

    /// Every webhook registered in MLflow.
    #[instrument(skip(self))]
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct R {
            webhooks: Vec<Webhook>,
            next_page_token: Option<String>,
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("max_results", "1000")];
            if let Some(t) = token.as_deref() {
                q.push(("page_token", t));
            }
            let r: R = self.get("webhooks", &q).await?;
            out.extend(r.webhooks);
            match r.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Creates a webhook for `events` (`(ENTITY, ACTION)` pairs in MLflow's upper-case names).
    #[instrument(skip(self, secret))]
    pub async fn create_webhook(
        &self,
        name: &str,
        url: &str,
        events: &[(&str, &str)],
        secret: &str,
    ) -> Result<Webhook> {
        #[derive(serde::Deserialize)]
        struct R {
            webhook: Webhook,
        }
        let body =
            json!({ "name": name, "url": url, "events": webhook_events(events), "secret": secret, "status": "ACTIVE" });
        let r: R = self.post("webhooks", &body, false).await?;
        Ok(r.webhook)
    }

    /// Rewrites an existing webhook's URL, events and secret, and re-activates it.
    #[instrument(skip(self, secret))]
    pub async fn update_webhook(&self, id: &str, url: &str, events: &[(&str, &str)], secret: &str) -> Result<Webhook> {
        #[derive(serde::Deserialize)]
        struct R {
            webhook: Webhook,
        }
        let body = json!({ "url": url, "events": webhook_events(events), "secret": secret, "status": "ACTIVE" });
        let v = self.with_body(Method::PATCH, &format!("webhooks/{id}"), body).await?;
        Ok(parse::<R>(v)?.webhook)
    }

    /// `GET /health`: whether the server answers at all.
    pub async fn health(&self) -> Result<()> {
        let url = self.url("health")?;
        let resp = self
            .request(Method::GET, url)
            .timeout(self.cfg.timeout)
            .send()
            .instrument(tracing::debug_span!("mlflow.health"))
            .await
            .map_err(|e| Error::from_reqwest(e, self.cfg.timeout))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Error::Unavailable(format!("health answered {}", resp.status())))
        }
    }
}

fn webhook_events(events: &[(&str, &str)]) -> Vec<Value> {
    events.iter().map(|(entity, action)| json!({ "entity": entity, "action": action })).collect()
}

/// Turns an HTTP answer into JSON or a classified error.
async fn decode(resp: Response) -> Result<Value> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| Error::Unavailable(format!("reading response: {e}")))?;
    if status.is_success() {
        if bytes.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        return serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("invalid JSON ({e})")));
    }
    debug!(%status, "MLflow error answer");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let text = || String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>();
    let code = body.get("error_code").and_then(Value::as_str).map(str::to_owned);
    let message = body.get("message").and_then(Value::as_str).map(str::to_owned);
    Err(Error::Api {
        status: status.as_u16(),
        code: code.unwrap_or_else(|| canonical(status).to_owned()),
        message: message.unwrap_or_else(text),
    })
}

fn canonical(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("HTTP error")
}

fn parse<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Protocol(e.to_string()))
}

/// Exponential backoff with a little jitter: 100 ms, 200 ms, 400 ms … capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    let jitter = u64::from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos(),
    ) % 50;
    Duration::from_millis(base + jitter)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `mlflow-artifacts:/1/run/artifacts/model` (or `mlflow-artifacts://host/1/…`)
/// → `1/run/artifacts/model`, the path under the artifact proxy.
pub fn artifact_rel_path(uri: &str) -> Result<String> {
    let rest = uri
        .strip_prefix("mlflow-artifacts:")
        .ok_or_else(|| Error::Protocol(format!("not an mlflow-artifacts URI: {uri}")))?;
    let rest = match rest.strip_prefix("//") {
        // With an authority: drop it.
        Some(r) => r.split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => rest.trim_start_matches('/'),
    };
    if rest.split('/').any(|s| s == "..") {
        return Err(Error::Protocol(format!("artifact path escapes its root: {uri}")));
    }
    Ok(rest.to_owned())
}

/// Quotes a value for MLflow's filter syntax.
pub fn escape_filter(v: &str) -> String {
    v.replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths() {
        assert_eq!(artifact_rel_path("mlflow-artifacts:/1/abc/artifacts/model").unwrap(), "1/abc/artifacts/model");
        assert_eq!(artifact_rel_path("mlflow-artifacts://host:5000/1/abc").unwrap(), "1/abc");
        assert!(artifact_rel_path("s3://bucket/x").is_err());
        assert!(artifact_rel_path("mlflow-artifacts:/1/../../etc").is_err());
    }

    #[test]
    fn error_kinds() {
        let e = |status, code: &str, msg: &str| Error::Api { status, code: code.into(), message: msg.into() };
        assert!(e(404, "RESOURCE_DOES_NOT_EXIST", "x").is_not_found());
        assert!(e(400, "RESOURCE_ALREADY_EXISTS", "x").is_already_exists());
        assert!(e(400, "INVALID_PARAMETER_VALUE", "Registered model alias nope not found.").is_not_found());
        assert_eq!(e(400, "INVALID_PARAMETER_VALUE", "bad stage").kind(), crate::ErrorKind::InvalidArgument);
        assert!(e(503, "Service Unavailable", "").is_retryable());
        assert!(!e(400, "INVALID_PARAMETER_VALUE", "").is_retryable());
    }
}
