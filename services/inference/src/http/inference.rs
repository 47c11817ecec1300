//! `ferry.inference.v1` over HTTP, as `grpc/inference.rs` serves it over
//! gRPC: `POST /predict` for browsers and BFFs (one row in, one output out),
//! `POST /v1/predict` (the protobuf JSON mapping of `Predict`) and
//! `GET /v1/models`.

use std::{borrow::Cow, future::Future};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use ferry_proto::inference::v1 as pb;

use super::{AppState, Call, error::ApiError};
use crate::{
    codec::{
        self,
        pb::{dtype_to_pb, from_pb},
    },
    error::ServeError,
    serving::{Lease, Method, PredictInput},
    tensor::{DType, NamedTensor, TensorData},
};

/// `?model=…&output=…` of `/predict`; other keys are ignored.
#[derive(Debug, Default, PartialEq)]
pub(super) struct PredictQuery {
    model: Option<String>,
    output: Option<String>,
}

impl PredictQuery {
    /// Decoded without serde: axum's `Query` cost 1.4k instructions of a
    /// tiny model's request (callgrind, BENCHMARKS.md). A query with nothing
    /// to decode (no `%` or `+`) is split in place, without
    /// `form_urlencoded`'s copies.
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, String> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.bytes().any(|b| b == b'%' || b == b'+') {
            Self::from_pairs(form_urlencoded::parse(raw.as_bytes()))
        } else {
            Self::from_pairs(
                raw.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').unwrap_or((p, "")))
                    .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))),
            )
        }
    }

    pub(super) fn from_pairs<'a>(pairs: impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)>) -> Result<Self, String> {
        let mut q = Self::default();
        for (key, value) in pairs {
            let slot = match key.as_ref() {
                "model" => &mut q.model,
                "output" => &mut q.output,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(format!("query parameter {key:?} is given more than once"));
            }
        }
        Ok(q)
    }
}

/// `POST /predict {"data":[...]}` → `{"modelVersion","prediction"}`: one row of
/// numbers into the model's single input, one output back (flattened). The
/// request is taken apart and its model leased before the future is made, so
/// that the future keeps the model call's state alone: the server moves it
/// whole a few times a request, and it was 2.3 KB with the request in it.
pub(super) fn predict(st: &AppState, call: Call) -> impl Future<Output = Response> + Send + use<> {
    let span = tracing::debug_span!(target: "ferry::request", "http.predict", model = tracing::field::Empty);
    let ready = span.in_scope(|| lease_row(st, call));
    async move {
        let (lease, input, output) = match ready {
            Ok(ready) => ready,
            Err(e) => return e.into_response(),
        };
        let variant = lease.variant().map(|v| v.to_string());
        let p = match lease.run(vec![input], vec![output], None).await {
            Ok(p) => p,
            // A failure names its variant too: a challenger's errors are told from the champion's.
            Err(e) => return super::with_variant(ApiError(e).into_response(), variant.as_deref()),
        };
        let prediction = p.outputs.into_iter().next().map_or(TensorData::F32(Vec::new()), |t| t.data);
        let variant = p.variant.as_deref();
        match codec::row::reply(&p.version, variant, &prediction) {
            Ok(json) => super::with_variant(
                ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response(),
                variant,
            ),
            Err(e) => ApiError(ServeError::Internal(format!("writing the reply: {e}"))).into_response(),
        }
    }
    .instrument(span)
}

/// The lease of the model `/predict` asks for, the row as its input, and the output to return.
fn lease_row(st: &AppState, call: Call) -> Result<(Lease, NamedTensor, String), ApiError> {
    let Call { headers, uri, body } = call;
    let bad = |m: String| ApiError(ServeError::InvalidArgument(m));
    let q = PredictQuery::parse(uri.query()).map_err(bad)?;
    let row = codec::row::read(&body).map_err(|e| bad(format!("body must be {{\"data\": [numbers...]}}: {e}")))?;
    if row.is_empty() {
        return Err(bad("\"data\" must hold at least one number".into()));
    }
    let model = q.model.as_deref().unwrap_or_else(|| st.models.default_name());
    tracing::Span::current().record("model", model);
    // One lookup: the version whose signature shapes the row runs it.
    let lease = st.models.acquire(model, None, Method::RestPredict, &headers)?;
    let sig = lease.signature();
    let [input] = sig.inputs.as_slice() else {
        return Err(bad(format!(
            "model {model:?} has {} inputs; /predict serves single-input models",
            sig.inputs.len()
        )));
    };
    let n = row.len() as i64;
    let shape = match input.shape.len() {
        1 => vec![n],
        2 => vec![1, n],
        r => return Err(bad(format!("input {:?} has rank {r}; /predict sends one row (rank 1 or 2)", input.name))),
    };
    let data = match input.dtype {
        DType::F32 => TensorData::F32(row.iter().map(|&x| x as f32).collect()),
        DType::F64 => TensorData::F64(row),
        other @ (DType::I32 | DType::I64 | DType::Bool | DType::Str) => {
            return Err(bad(format!("input {:?} is {}; /predict sends numbers", input.name, other.name())));
        }
    };
    let output = q
        .output
        .or_else(|| st.rest_output.clone().filter(|o| sig.outputs.iter().any(|s| &s.name == o)))
        .or_else(|| sig.outputs.iter().find(|s| s.dtype == DType::F32).map(|s| s.name.clone()))
        .unwrap_or_else(|| sig.outputs[0].name.clone());
    let input = NamedTensor { name: input.name.clone(), shape, data };
    Ok((lease, input, output))
}

/// An int64 in the protobuf JSON mapping: a string, or (leniently) a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Int64 {
    Num(i64),
    Str(String),
}

impl Int64 {
    fn get(&self) -> Result<i64, ApiError> {
        match self {
            Int64::Num(n) => Ok(*n),
            Int64::Str(s) => {
                s.parse().map_err(|_| ApiError(ServeError::InvalidArgument(format!("{s:?} is not an int64"))))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TensorJson {
    name: String,
    dtype: Option<String>,
    #[serde(default)]
    shape: Vec<Int64>,
    #[serde(default)]
    float_data: Vec<f32>,
    #[serde(default)]
    double_data: Vec<f64>,
    #[serde(default)]
    int32_data: Vec<i32>,
    #[serde(default)]
    int64_data: Vec<Int64>,
    #[serde(default)]
    bool_data: Vec<bool>,
    #[serde(default)]
    string_data: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PredictJson {
    model: String,
    #[serde(default)]
    version: String,
    inputs: Vec<TensorJson>,
    #[serde(default)]
    outputs: Vec<String>,
}

/// `POST /v1/predict`: the protobuf JSON mapping of `ferry.inference.v1.Inference/Predict`,
/// as grpc-gateway would expose it (camelCase fields, enum names, int64 as strings).
pub(super) async fn predict_json(State(st): State<AppState>, call: Call) -> Result<Response, ApiError> {
    let Call { headers, body, .. } = call;
    let bad = |m: String| ApiError(ServeError::InvalidArgument(m));
    let req: PredictJson = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid Predict JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for t in req.inputs {
        let dtype = match t.dtype.as_deref() {
            None => pb::DataType::Unspecified,
            Some(d) => pb::DataType::from_str_name(d)
                .or_else(|| pb::DataType::from_str_name(&format!("DATA_TYPE_{}", d.to_ascii_uppercase())))
                .ok_or_else(|| bad(format!("input {:?}: unknown dtype {d:?}", t.name)))?,
        };
        let tensor = pb::Tensor {
            name: t.name,
            dtype: dtype.into(),
            shape: t.shape.iter().map(Int64::get).collect::<Result<_, _>>()?,
            float_data: t.float_data,
            double_data: t.double_data,
            int32_data: t.int32_data,
            int64_data: t.int64_data.iter().map(Int64::get).collect::<Result<_, _>>()?,
            bool_data: t.bool_data,
            string_data: t.string_data,
        };
        inputs.push(from_pb(tensor)?);
    }
    let p = st
        .models
        .predict(
            PredictInput {
                model: req.model,
                version: Some(req.version).filter(|v| !v.is_empty()),
                inputs,
                outputs: req.outputs,
                deadline: None,
                method: Method::RestV1Predict,
            },
            &headers,
        )
        .await?;
    let outputs: Vec<Value> = p
        .outputs
        .into_iter()
        .map(|t| {
            let dtype = dtype_to_pb(t.data.dtype()).as_str_name();
            let shape: Vec<String> = t.shape.iter().map(i64::to_string).collect();
            let (field, data) = match t.data {
                TensorData::F32(v) => ("floatData", json!(v)),
                TensorData::F64(v) => ("doubleData", json!(v)),
                TensorData::I32(v) => ("int32Data", json!(v)),
                TensorData::I64(v) => ("int64Data", json!(v.iter().map(i64::to_string).collect::<Vec<_>>())),
                TensorData::Bool(v) => ("boolData", json!(v)),
                TensorData::Str(v) => ("stringData", json!(v)),
            };
            json!({ "name": t.name, "dtype": dtype, "shape": shape, field: data })
        })
        .collect();
    let mut body = json!({ "model": p.model, "modelVersion": p.version, "outputs": outputs });
    if let Some(v) = &p.variant {
        body["variant"] = json!(v.as_ref());
    }
    Ok(super::with_variant(Json(body).into_response(), p.variant.as_deref()))
}

/// `GET /v1/models`: every model's state, as `ListModels` gives it over gRPC.
pub(super) async fn list_models(State(st): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = st.models.slots().map(|s| super::model_json(&s.status())).collect();
    Json(json!({ "models": models }))
}
