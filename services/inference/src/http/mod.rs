//! The HTTP side: REST for browsers and existing BFF clients, the Open
//! Inference Protocol's REST binding and MLflow's scoring protocol, one file
//! each, all calling the same `Models` as the gRPC side, in-process. Errors
//! are mapped to statuses once, in `error.rs`.

mod console;
mod error;
#[cfg(test)]
mod hostile_tests;
mod inference;
mod mlflow;
mod oip;
#[cfg(test)]
mod tests;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Bytes,
    extract::{FromRef, FromRequest, Request, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

pub(crate) use self::error::ApiError;
use crate::{
    keys::{self, ApiKeys},
    serving::{Models, RequestHeaders, SlotState},
};

/// Routing reads request headers by their lowercase names.
impl RequestHeaders for axum::http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The response header naming the variant that served, when the model has a traffic policy.
const VARIANT_HEADER: &str = "x-ferry-variant";

/// Adds the variant header to a response.
fn with_variant(mut resp: axum::response::Response, variant: Option<&str>) -> axum::response::Response {
    if let Some(v) = variant.and_then(|v| axum::http::HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(VARIANT_HEADER, v);
    }
    resp
}

#[derive(Debug, Clone)]
struct AppState {
    models: Arc<Models>,
    rest_output: Option<String>,
    /// The largest request body read (413 past it).
    max_request_bytes: usize,
}

impl FromRef<AppState> for Arc<Models> {
    fn from_ref(st: &AppState) -> Self {
        Arc::clone(&st.models)
    }
}

/// A call to a prediction route, taken apart once: the headers moved out of
/// the request (axum's `HeaderMap` extractor copies them), the URI for its
/// query, and the body read up to `--max-request-bytes`. Reading the limit
/// here rather than through `DefaultBodyLimit` spares every request a copy
/// of its route and an extension (`Router::layer` wraps each route): ~2.5k
/// instructions of a tiny model's request, with the header copy (callgrind).
pub(super) struct Call {
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
}

impl FromRequest<AppState> for Call {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, st.max_request_bytes).await {
            Ok(b) => b,
            Err(e) => {
                let e = e.into_inner();
                return Err(if e.is::<http_body_util::LengthLimitError>() {
                    let msg = format!("the request body is over the limit of {} bytes", st.max_request_bytes);
                    (StatusCode::PAYLOAD_TOO_LARGE, msg).into_response()
                } else {
                    (StatusCode::BAD_REQUEST, format!("reading the request body: {e}")).into_response()
                });
            }
        };
        Ok(Call { headers: parts.headers, uri: parts.uri, body })
    }
}

/// Every REST route, open to any caller until [`with_keys`].
pub(crate) fn router(models: Arc<Models>, rest_output: Option<String>, max_request_bytes: usize) -> Routes {
    let st = AppState { models, rest_output, max_request_bytes };
    let router = Router::new()
        // `Routes` answers `POST /predict` itself; the route stays here so that
        // other methods get 405 with `allow: POST`, after the key check.
        .route("/predict", post(|State(st): State<AppState>, call: Call| inference::predict(&st, call)))
        .route("/v1/predict", post(inference::predict_json))
        .route("/invocations", post(mlflow::invocations))
        .route("/openapi.json", get(openapi))
        .route("/v1/models", get(inference::list_models))
        .route("/console", get(console::page))
        .route("/v1/console/state", get(console::state))
        .route("/v1/console/events", get(console::events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(oip::routes())
        .with_state(st.clone());
    Routes { st: Arc::new(st), keys: None, router }
}

/// The routes behind the API-key check (`keys.rs`): every route but the open
/// ones (probes, the OpenAPI document, the console's page) and CORS preflights.
pub(crate) fn with_keys(routes: Routes, keys: ApiKeys) -> Routes {
    if keys.is_open() {
        return routes;
    }
    let router = routes.router.layer(axum::middleware::from_fn_with_state(keys.clone(), require_key));
    Routes { keys: Some(keys), router, ..routes }
}

/// The REST port's routes. `POST /predict`, the route that browsers' and
/// BFFs' predictions take, is matched here, before axum's router: its
/// matching, the URL parameters it puts in each request's extensions (a
/// map), the route's boxed clone and the futures around the handler cost a
/// tiny model's request ~5 % of its CPU on one core (wrk, 2026-12-04: 6 %
/// more requests a second without them). Every other request, `/predict`
/// with another method included, goes through the router.
#[derive(Clone)]
pub(crate) struct Routes {
    /// Shared, so that a request clones a pointer, not the state's strings.
    st: Arc<AppState>,
    /// Set when callers must present a key.
    keys: Option<ApiKeys>,
    router: Router,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl tower::Service<Request> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.method() != axum::http::Method::POST || req.uri().path() != "/predict" {
            // Boxed: the router's future is 320 bytes, each layer's future holds it, and they are moved.
            return Box::pin(self.router.call(req));
        }
        if let Some(refused) = self.keys.as_ref().and_then(|k| refusal(k, &req)) {
            return Box::pin(std::future::ready(Ok(ApiError(refused).into_response())));
        }
        let st = Arc::clone(&self.st);
        Box::pin(async move {
            Ok(match Call::from_request(req, &st).await {
                Ok(call) => inference::predict(&st, call).await,
                Err(rejected) => rejected,
            })
        })
    }
}

async fn require_key(
    State(keys): State<ApiKeys>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(refused) = refusal(&keys, &req) {
        return ApiError(refused).into_response();
    }
    next.run(req).await
}

/// Why a request may not pass the key check, if it may not.
fn refusal(keys: &ApiKeys, req: &axum::extract::Request) -> Option<crate::error::ServeError> {
    if keys::open_path(req.uri().path()) || req.method() == axum::http::Method::OPTIONS {
        return None;
    }
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
    keys.check(header("authorization"), header("x-api-key")).err()
}

/// The OpenAPI document of this REST API (checked against the server in CI).
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("../../openapi.json"))
}

/// One model as `/v1/models` (and the console) show it.
pub(super) fn model_json(s: &crate::serving::SlotStatus) -> Value {
    let variants: Vec<Value> = s
        .variants
        .iter()
        .map(|v| {
            json!({
                "name": v.name, "selector": v.selector, "weight": v.weight, "state": state_name(v.state),
                "servingVersion": v.serving_version, "lastError": v.last_error,
                "pinned": v.pinned, "shadowPercent": v.shadow_percent, "shadowCompared": v.shadow_compared,
                "shadowDropped": v.shadow_dropped, "shadowFailed": v.shadow_failed,
                "agreement": v.agreement, "meanAbsDiff": v.mean_abs_diff,
            })
        })
        .collect();
    json!({
        "name": s.name,
        "selector": s.selector,
        "state": state_name(s.state),
        "variants": variants,
        "policyError": s.policy_error,
        "pinned": s.pinned,
        "servingVersion": s.serving_version,
        "sha256": s.sha256,
        "verified": s.verified,
        "lastError": s.last_error,
    })
}

fn state_name(s: SlotState) -> &'static str {
    match s {
        SlotState::Pending => "PENDING",
        SlotState::Serving => "SERVING",
        SlotState::Degraded => "DEGRADED",
        SlotState::Failed => "FAILED",
    }
}

async fn ready(State(st): State<AppState>) -> StatusCode {
    if st.models.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}
