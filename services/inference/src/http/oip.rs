//! REST transport for the Open Inference Protocol (`/v2/...`), including
//! Triton's binary-data extension and its `config` and `stats` routes.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, Call};
use crate::{
    codec::oip as common,
    error::ServeError,
    serving::{Method, ModelSlot, Models, PredictInput},
    tensor::{DType, NamedTensor, TensorData},
};

const HEADER_LENGTH: &str = "inference-header-content-length";

pub(super) fn routes() -> Router<super::AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(model_config_v))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v2/models/{name}/versions/{version}/stats", get(model_stats_v))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
}

/// The slot, checking a version given in the path against the serving one.
fn slot<'a>(models: &'a Models, name: &str, version: Option<&str>) -> Result<&'a Arc<ModelSlot>, ApiError> {
    let slot = models.slot(name)?;
    if let Some(v) = version {
        let serving = slot.current().map(|m| m.version.clone());
        if serving.as_deref() != Some(v) {
            return Err(ServeError::NotFound(format!(
                "model {name:?} version {v} is not served here (serving: {})",
                serving.as_deref().unwrap_or("none")
            ))
            .into());
        }
    }
    Ok(slot)
}

fn loaded<T>(v: Option<T>, name: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ServeError::Unavailable(format!("model {name:?} has no version loaded yet")).into())
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "ferry", "version": env!("CARGO_PKG_VERSION"), "extensions": common::EXTENSIONS }))
}

/// 200 when every configured model is loaded and warm, 400 otherwise (the spec's "4xx = false").
async fn server_ready(State(models): State<Arc<Models>>) -> StatusCode {
    if models.is_ready() { StatusCode::OK } else { StatusCode::BAD_REQUEST }
}

async fn model_metadata(State(m): State<Arc<Models>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    metadata_json(&m, &name, None)
}

async fn model_metadata_v(
    State(m): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata_json(&m, &name, Some(&version))
}

fn metadata_json(models: &Models, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let md = loaded(common::metadata(&slot(models, name, version)?.status()), name)?;
    let tensors = |ts: &[ferry_proto::oip::model_metadata_response::TensorMetadata]| -> Vec<Value> {
        ts.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
    };
    Ok(Json(json!({
        "name": md.name, "versions": md.versions, "platform": md.platform,
        "inputs": tensors(&md.inputs), "outputs": tensors(&md.outputs),
    })))
}

async fn model_ready(State(m): State<Arc<Models>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    ready(&m, &name, None)
}

async fn model_ready_v(
    State(m): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ready(&m, &name, Some(&version))
}

fn ready(models: &Models, name: &str, version: Option<&str>) -> Result<StatusCode, ApiError> {
    let slot = models.slot(name)?;
    let ok = slot.current().is_some_and(|m| version.is_none_or(|v| v == m.version));
    Ok(if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST })
}

async fn model_config(State(m): State<Arc<Models>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    config_json(&m, &name, None)
}

async fn model_config_v(
    State(m): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    config_json(&m, &name, Some(&version))
}

/// Triton's JSON form of the model configuration.
fn config_json(models: &Models, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let c = loaded(common::config(&slot(models, name, version)?.status()), name)?;
    let dt = |d: i32| ferry_proto::oip::DataType::try_from(d).unwrap_or_default().as_str_name();
    Ok(Json(json!({
        "name": c.name, "platform": c.platform, "backend": c.backend, "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({"name": i.name, "data_type": dt(i.data_type), "dims": i.dims})).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({"name": o.name, "data_type": dt(o.data_type), "dims": o.dims})).collect::<Vec<_>>(),
    })))
}

async fn model_stats(State(m): State<Arc<Models>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    stats_json(&m, &name, None)
}

async fn model_stats_v(
    State(m): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    stats_json(&m, &name, Some(&version))
}

fn stats_json(models: &Models, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let s = common::statistics(slot(models, name, version)?);
    let d = |x: &Option<ferry_proto::oip::StatisticDuration>| {
        let x = x.unwrap_or_default();
        json!({ "count": x.count, "ns": x.ns })
    };
    let i = s.inference_stats.unwrap_or_default();
    Ok(Json(json!({ "model_stats": [{
        "name": s.name, "version": s.version, "last_inference": s.last_inference,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {
            "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
            "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer), "compute_output": d(&i.compute_output),
        },
        "batch_stats": [],
    }]})))
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(State(m): State<Arc<Models>>, Path(name): Path<String>, call: Call) -> Result<Response, ApiError> {
    infer_in(&m, name, None, &call.headers, call.body).await
}

async fn infer_v(
    State(m): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
    call: Call,
) -> Result<Response, ApiError> {
    infer_in(&m, name, Some(version), &call.headers, call.body).await
}

fn bad(msg: String) -> ApiError {
    ServeError::InvalidArgument(msg).into()
}

/// `POST .../infer`: JSON, or Triton's binary-data extension (a JSON header of
/// `Inference-Header-Content-Length` bytes followed by raw tensors).
async fn infer_in(
    models: &Models,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| bad(format!("invalid {HEADER_LENGTH} header")))?,
        None => body.len(),
    };
    let req: InferRequest =
        serde_json::from_slice(&body[..json_len]).map_err(|e| bad(format!("invalid inference request JSON: {e}")))?;
    let mut binary = &body[json_len..];
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for t in req.inputs {
        let dtype = common::parse_datatype(&t.datatype, &t.name)?;
        let data = match t.parameters.get("binary_data_size").and_then(Value::as_u64) {
            Some(n) => {
                let (chunk, rest) = binary
                    .split_at_checked(n as usize)
                    .ok_or_else(|| bad(format!("input {:?}: binary_data_size {n} exceeds the body", t.name)))?;
                binary = rest;
                common::decode_raw(dtype, chunk, &t.name)?
            }
            None => from_json(dtype, t.data.as_ref(), &t.name)?,
        };
        inputs.push(NamedTensor { name: t.name, shape: t.shape, data });
    }
    let all_binary = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let binary_outputs: Vec<String> = req
        .outputs
        .iter()
        .filter(|o| all_binary || o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(false))
        .map(|o| o.name.clone())
        .collect();
    let p = models
        .predict(
            PredictInput {
                model: name,
                version,
                inputs,
                outputs: req.outputs.into_iter().map(|o| o.name).collect(),
                deadline: None,
                method: Method::RestV2Infer,
            },
            headers,
        )
        .await?;
    let mut blobs = Vec::new();
    let mut outputs = Vec::with_capacity(p.outputs.len());
    for t in p.outputs {
        let mut o = Map::new();
        o.insert("name".into(), json!(t.name));
        o.insert("datatype".into(), json!(common::datatype(t.data.dtype())));
        o.insert("shape".into(), json!(t.shape));
        if all_binary || binary_outputs.contains(&t.name) {
            let raw = common::encode_raw(&t.data);
            o.insert("parameters".into(), json!({ "binary_data_size": raw.len() }));
            blobs.push(raw);
        } else {
            // No "parameters" object here: Triton's HTTP client reads any such object as binary.
            o.insert("data".into(), to_json(t.data));
        }
        outputs.push(Value::Object(o));
    }
    let mut resp = json!({ "model_name": p.model, "model_version": p.version, "outputs": outputs });
    if let Some(v) = &p.variant {
        resp["parameters"] = json!({ common::VARIANT_PARAMETER: v.as_ref() });
    }
    if let Some(id) = req.id {
        resp["id"] = json!(id);
    }
    let header = serde_json::to_vec(&resp).map_err(|e| ServeError::Internal(e.to_string()))?;
    let variant = p.variant.as_deref();
    if blobs.is_empty() {
        let resp = ([(header::CONTENT_TYPE, "application/json")], header).into_response();
        return Ok(super::with_variant(resp, variant));
    }
    let header_len = header.len();
    let mut body = header;
    for b in blobs {
        body.extend_from_slice(&b);
    }
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(header_len));
    Ok(super::with_variant(r, variant))
}

/// Flattens JSON `data` (flat or nested row-major arrays) into typed elements.
fn from_json(dtype: DType, data: Option<&Value>, name: &str) -> Result<TensorData, ApiError> {
    let data = data.ok_or_else(|| bad(format!("input {name:?} has neither data nor binary_data_size")))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let wrong = |v: &Value| bad(format!("input {name:?}: {v} is not a valid {} element", common::datatype(dtype)));
    Ok(match dtype {
        DType::F32 => TensorData::F32(
            flat.iter().map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| wrong(v))).collect::<Result<_, _>>()?,
        ),
        DType::F64 => {
            TensorData::F64(flat.iter().map(|v| v.as_f64().ok_or_else(|| wrong(v))).collect::<Result<_, _>>()?)
        }
        DType::I32 => TensorData::I32(
            flat.iter()
                .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(|| wrong(v)))
                .collect::<Result<_, _>>()?,
        ),
        DType::I64 => {
            TensorData::I64(flat.iter().map(|v| v.as_i64().ok_or_else(|| wrong(v))).collect::<Result<_, _>>()?)
        }
        DType::Bool => {
            TensorData::Bool(flat.iter().map(|v| v.as_bool().ok_or_else(|| wrong(v))).collect::<Result<_, _>>()?)
        }
        DType::Str => TensorData::Str(
            flat.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(|| wrong(v))).collect::<Result<_, _>>()?,
        ),
    })
}

#[allow(clippy::wildcard_enum_match_arm)] // every non-array JSON value is one element
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn to_json(d: TensorData) -> Value {
    match d {
        TensorData::F32(v) => json!(v),
        TensorData::F64(v) => json!(v),
        TensorData::I32(v) => json!(v),
        TensorData::I64(v) => json!(v),
        TensorData::Bool(v) => json!(v),
        TensorData::Str(v) => json!(v),
    }
}
