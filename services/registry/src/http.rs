//! HTTP adapter: MLflow's webhook deliveries and the seed-compatible control
//! endpoints for CI pipelines (`POST /register-model`, `PUT /set-model-stage`).

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::{
    auth::{Access, Auth},
    error::RegistryError,
    register::Registration,
    service::{Registry, Spooled, Who},
    webhook::{self, FORWARDED, PEER_HEADERS, SIGNED_HEADERS, Verdict, Verifier},
};

/// MLflow's deliveries are a few hundred bytes.
const WEBHOOK_MAX_BYTES: usize = 256 << 10;
/// A replica's report: a few hundred bytes per variant.
const PEER_TRAFFIC_MAX_BYTES: usize = 4 << 20;

/// What the HTTP routes need.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    pub(crate) registry: Registry,
    pub(crate) auth: Auth,
    /// Verifies MLflow's deliveries and what peers pass on; `None` without a webhook secret.
    pub(crate) webhooks: Option<Arc<Verifier>>,
    pub(crate) peers: Option<webhook::Peers>,
    pub(crate) traffic: Arc<crate::rollout::Traffic>,
    /// Whether MLflow answers: what gRPC health reports, for HTTP probes
    /// (Kubernetes' gRPC probes cannot speak TLS).
    pub(crate) ready: tokio::sync::watch::Receiver<bool>,
}

type AppState = Routes;

pub(crate) fn router(routes: Routes) -> Router {
    let (registry, auth) = (routes.registry.clone(), routes.auth.clone());
    Router::new()
        // Anyone can reach this port: a delivery is read whole before its
        // signature is checked, so it is small or refused (413).
        .route("/webhooks/mlflow", post(webhook).layer(DefaultBodyLimit::max(WEBHOOK_MAX_BYTES)))
        // Uploads stream to disk; the registry's own size limit applies.
        .route("/register-model", post(register_model).layer(DefaultBodyLimit::disable()))
        .route("/v1/peers/traffic", post(peer_traffic).layer(DefaultBodyLimit::max(PEER_TRAFFIC_MAX_BYTES)))
        .route("/set-model-stage", put(set_model_stage))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(routes)
        .merge(crate::console::routes(registry, auth))
}

/// 200 while MLflow answers, else 503: the registry can do nothing without it.
async fn readyz(State(routes): State<AppState>) -> (StatusCode, &'static str) {
    if *routes.ready.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "MLflow is not reachable")
    }
}

/// The one mapping from registry errors to HTTP statuses.
pub(crate) struct ApiError(RegistryError);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            RegistryError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::AlreadyExists(_) => StatusCode::CONFLICT,
            RegistryError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            RegistryError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            RegistryError::FailedPrecondition(_) => StatusCode::CONFLICT,
            RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

async fn webhook(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = &st.webhooks else {
        return (StatusCode::NOT_FOUND, "webhooks are not configured (set FERRY_WEBHOOK_SECRET)").into_response();
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    match verifier.verify(h("x-mlflow-delivery-id"), h("x-mlflow-timestamp"), h("x-mlflow-signature"), &body, now) {
        Ok(Verdict::Accepted) => {
            st.registry.hub.stats.webhooks_accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(delivery = h("x-mlflow-delivery-id").unwrap_or_default(), "webhook accepted");
            // A hint: re-read MLflow now rather than trusting the payload.
            st.registry.hub.poke();
            if let Some(peers) = st.peers.as_ref().filter(|_| !headers.contains_key(FORWARDED)) {
                let signed = SIGNED_HEADERS.iter().filter_map(|k| Some((*k, h(k)?.to_owned()))).collect();
                peers.forward(signed, body);
            }
            (StatusCode::OK, "accepted").into_response()
        }
        Ok(Verdict::Duplicate) => {
            st.registry.hub.stats.webhooks_duplicate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (StatusCode::OK, "duplicate").into_response()
        }
        Err(e) => {
            st.registry.hub.stats.webhooks_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(error = %e, "webhook delivery rejected");
            (StatusCode::UNAUTHORIZED, e.to_string()).into_response()
        }
    }
}

/// `POST /v1/peers/traffic`: a traffic report another registry replica
/// received, signed with the shared webhook secret; kept as if reported here
/// (and not passed on again).
async fn peer_traffic(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = &st.webhooks else {
        return (StatusCode::NOT_FOUND, "peers share traffic only with FERRY_WEBHOOK_SECRET set").into_response();
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let [id, ts, sig] = PEER_HEADERS;
    if let Err(e) = verifier.verify(h(id), h(ts), h(sig), &body, now) {
        warn!(error = %e, "a traffic report from a peer was rejected");
        return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    }
    let report = match <ferry_proto::registry::v1::ReportTrafficRequest as prost::Message>::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a ReportTrafficRequest: {e}")).into_response(),
    };
    match st.traffic.record(report.replica, report.variants) {
        Ok(()) => (StatusCode::OK, "recorded").into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterParams {
    #[serde(alias = "name")]
    model_name: Option<String>,
    description: Option<String>,
    /// A file the server can read (for CI pipelines that share a volume).
    path: Option<PathBuf>,
}

/// `POST /register-model`: multipart (`modelName`/`name`, `description`, `file`),
/// or JSON / query `{"modelName", "path", "description"}` naming a server-side file.
async fn register_model(
    State(st): State<AppState>,
    Query(q): Query<RegisterParams>,
    req: Request,
) -> Result<Response, ApiError> {
    st.auth.check(authorization(req.headers()), Access::Write)?;
    let bad = |m: &str| ApiError(RegistryError::InvalidArgument(m.to_owned()));
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let mut params = q;
    let mut files: Vec<(String, Spooled)> = Vec::new();
    let used = |files: &[(String, Spooled)]| files.last().map_or(0, |f| f.1.total);
    if is_multipart {
        let mut form = Multipart::from_request(req, &()).await.map_err(|e| bad(&format!("bad multipart body: {e}")))?;
        while let Some(mut field) = form.next_field().await.map_err(|e| bad(&format!("bad multipart body: {e}")))? {
            match field.name().unwrap_or_default() {
                // One field per file: the graph and, with external data, each data file under the
                // name the graph gives it (curl -F file=@model.onnx -F file=@weights.data).
                "file" | "model" => {
                    let rel = field.file_name().filter(|n| !n.is_empty()).unwrap_or("model.onnx").to_owned();
                    let mut spool = st.registry.spool(used(&files)).await?;
                    while let Some(chunk) = field.chunk().await.map_err(|e| bad(&format!("reading upload: {e}")))? {
                        spool.write(&chunk).await?;
                    }
                    files.push((rel, spool.finish().await?));
                }
                "modelName" | "name" => params.model_name = Some(field.text().await.map_err(|e| bad(&e.to_string()))?),
                "description" => params.description = Some(field.text().await.map_err(|e| bad(&e.to_string()))?),
                _ => {}
            }
        }
    } else {
        let body = Bytes::from_request(req, &()).await.map_err(|e| bad(&e.to_string()))?;
        if !body.is_empty() {
            let p: RegisterParams = serde_json::from_slice(&body).map_err(|e| bad(&format!("bad JSON body: {e}")))?;
            params = RegisterParams {
                model_name: p.model_name.or(params.model_name),
                description: p.description.or(params.description),
                path: p.path.or(params.path),
            };
        }
    }
    let name = params.model_name.ok_or_else(|| bad("modelName is required"))?;
    if files.is_empty() {
        let Some(path) = params.path else {
            return Err(bad("send the model as multipart \"file\" fields, or a \"path\" the server can read"));
        };
        // A server-side file, or a folder holding one .onnx file: the graph and the data files it
        // references, each only under the configured root (checked before anything is opened).
        let path = st.registry.readable_path(&path)?;
        let (dir, graph) = model_on_disk(&path).await.map_err(|e| bad(&e))?;
        let refs = {
            let g = dir.join(&graph);
            tokio::task::spawn_blocking(move || std::fs::File::open(&g).and_then(ferry_artifact::external_data))
                .await
                .map_err(|e| ApiError(RegistryError::Internal(e.to_string())))?
                .map_err(|e| bad(&format!("{}: {e}", path.display())))?
        };
        for rel in std::iter::once(graph).chain(refs) {
            let file = st.registry.readable_path(&dir.join(&rel))?;
            let mut reader =
                tokio::fs::File::open(&file).await.map_err(|e| bad(&format!("cannot read {}: {e}", file.display())))?;
            let mut spool = st.registry.spool(used(&files)).await?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                use tokio::io::AsyncReadExt;
                let n = reader.read(&mut buf).await.map_err(|e| bad(&format!("reading {}: {e}", file.display())))?;
                if n == 0 {
                    break;
                }
                spool.write(&buf[..n]).await?;
            }
            files.push((rel, spool.finish().await?));
        }
    }
    let reg = Registration { name, description: params.description.unwrap_or_default(), ..Default::default() };
    let done = st.registry.register(&reg, files, "").await?;
    let v = &done.version;
    let status = if done.created { StatusCode::CREATED } else { StatusCode::OK };
    let body = json!({
        "modelName": v.name, "version": v.version, "sha256": v.tag(ferry_mlflow::tags::SHA256),
        "created": done.created, "source": v.source,
    });
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StageParams {
    model_name: String,
    version: String,
    stage: String,
    #[serde(default)]
    archive_existing: bool,
    /// Why, recorded with the move.
    #[serde(default)]
    reason: String,
}

/// `PUT /set-model-stage?modelName=&version=&stage=[&archiveExisting=true]`
async fn set_model_stage(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<StageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = st.auth.check(authorization(&headers), Access::Write)?;
    let Query(q) = q.map_err(|e| {
        ApiError(RegistryError::InvalidArgument(format!("modelName, version and stage are required: {e}")))
    })?;
    let who = Who { by, reason: q.reason, rollback: false };
    let v = st.registry.transition(&q.model_name, &q.version, &q.stage, q.archive_existing, &who).await?;
    Ok(Json(json!({ "modelName": v.name, "version": v.version, "stage": v.current_stage })))
}

/// The folder and graph of a model on the server's disk: `path` is the ONNX
/// file itself, or a folder with exactly one `.onnx` file in it.
async fn model_on_disk(path: &std::path::Path) -> Result<(PathBuf, String), String> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_dir() {
        let name =
            path.file_name().and_then(|n| n.to_str()).ok_or_else(|| format!("{} is not a file", path.display()))?;
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        return Ok((dir, name.to_owned()));
    }
    let mut rd = tokio::fs::read_dir(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut graphs = Vec::new();
    while let Ok(Some(e)) = rd.next_entry().await {
        if let Some(n) = e.file_name().to_str().filter(|n| n.ends_with(".onnx")) {
            graphs.push(n.to_owned());
        }
    }
    match graphs.as_slice() {
        [one] => Ok((path.to_owned(), one.clone())),
        _ => Err(format!("{} must hold exactly one .onnx file; it has {}", path.display(), graphs.len())),
    }
}
