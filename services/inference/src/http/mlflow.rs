//! `POST /invocations`: MLflow's scoring protocol over the codec in
//! `codec/mlflow.rs`.

use axum::{
    Json,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Deserialize;

use super::{AppState, Call, error::ScoringApiError};
use crate::codec::mlflow::{self as mlflow_scoring, Format};
use crate::serving::Method;

#[derive(Debug, Deserialize)]
pub(super) struct InvocationsQuery {
    model: Option<String>,
}

/// Picks the model of an `/invocations` call: `?model=`, or the
/// `x-ferry-model` header, or the first configured model.
const MODEL_HEADER: &str = "x-ferry-model";

/// `POST /invocations`: MLflow's scoring protocol (see `codec::mlflow`), so
/// a client of `mlflow models serve` switches by changing the URL.
#[tracing::instrument(target = "ferry::request", level = "debug", name = "http.invocations", skip_all, fields(model))]
pub(super) async fn invocations(
    State(st): State<AppState>,
    Query(q): Query<InvocationsQuery>,
    call: Call,
) -> Result<axum::response::Response, ScoringApiError> {
    let Call { headers, body, .. } = call;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = Format::from_content_type(content_type).map_err(|message| ScoringApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "BAD_REQUEST",
        message,
        retry: false,
    })?;
    let model = q
        .model
        .or_else(|| headers.get(MODEL_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| st.models.default_name().to_owned());
    tracing::Span::current().record("model", model.as_str());
    // One lookup: the version whose signature shapes the input runs it.
    let lease = st.models.acquire(&model, None, Method::RestInvocations, &headers)?;
    let (inputs, shape) = mlflow_scoring::decode(format, &body, &lease.signature().inputs)?;
    let variant = lease.variant().map(|v| v.to_string());
    let p = match lease.run(inputs, Vec::new(), None).await {
        Ok(p) => p,
        Err(e) => return Ok(super::with_variant(ScoringApiError::from(e).into_response(), variant.as_deref())),
    };
    let resp = Json(mlflow_scoring::encode(p.outputs, shape)).into_response();
    Ok(super::with_variant(resp, p.variant.as_deref()))
}
