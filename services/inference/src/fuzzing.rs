//! Entry points for `fuzz/` (feature `fuzzing`): raw bytes from the fuzzer
//! into every request decoder, through the same router and gRPC services the
//! binaries serve, with the in-process test models behind them. Each returns
//! whether the answer is one a client can act on (a success or a client
//! error); the fuzz targets assert it, so a panic or a server error is a crash.

use std::sync::{Arc, OnceLock};

use axum::{
    body::Body,
    http::{Request, header},
};
use ferry_proto::{
    inference::v1::{PredictRequest, inference_server::Inference},
    oip::grpc_inference_service_server::GrpcInferenceService,
};
use tonic::Code;
use tower::ServiceExt;

use crate::{
    grpc::{InferenceService, OipService},
    serving::Models,
    testing,
};

/// The limit the fuzzed router enforces (the binaries' default is larger).
const LIMIT: usize = 1 << 20;

/// The HTTP endpoints that decode bodies.
pub const ENDPOINTS: &[&str] =
    &["/predict", "/v2/models/double/infer", "/invocations", "/v1/predict", "/predict?model=double"];

fn fixture() -> &'static (tokio::runtime::Runtime, Arc<Models>) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, Arc<Models>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let models = rt.block_on(async { testing::models() });
        (rt, models)
    })
}

/// POSTs `body` to `ENDPOINTS[endpoint % len]`: as JSON, or as a binary OIP
/// body with `header_length` as its `Inference-Header-Content-Length`.
pub fn http(endpoint: u8, header_length: Option<u32>, body: &[u8]) -> bool {
    let (rt, models) = fixture();
    let path = ENDPOINTS[usize::from(endpoint) % ENDPOINTS.len()];
    let mut req = Request::post(path);
    req = match header_length {
        None => req.header(header::CONTENT_TYPE, "application/json"),
        Some(n) => req
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("inference-header-content-length", n.to_string()),
    };
    let Ok(req) = req.body(Body::from(body.to_vec())) else { return true };
    rt.block_on(async {
        let app = crate::http::router(Arc::clone(models), None, LIMIT);
        let Ok(resp) = app.oneshot(req).await;
        let status = resp.status();
        let read = axum::body::to_bytes(resp.into_body(), usize::MAX).await.is_ok();
        read && (status.is_success() || status.is_client_error())
    })
}

/// Decodes `bytes` as a `Predict` request and as an OIP `ModelInfer`
/// request (either may fail to decode: that is the transport's answer) and
/// serves each that decodes.
pub fn grpc(bytes: &[u8]) -> bool {
    let (rt, models) = fixture();
    let fine = |r: Result<(), tonic::Status>| {
        r.map_or_else(
            |s| !matches!(s.code(), Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented),
            |()| true,
        )
    };
    rt.block_on(async {
        let mut ok = true;
        if let Ok(req) = <PredictRequest as prost::Message>::decode(bytes) {
            let svc = InferenceService { models: Arc::clone(models) };
            ok &= fine(svc.predict(tonic::Request::new(req)).await.map(drop));
        }
        if let Ok(req) = <ferry_proto::oip::ModelInferRequest as prost::Message>::decode(bytes) {
            let svc = OipService { models: Arc::clone(models) };
            ok &= fine(svc.model_infer(tonic::Request::new(req)).await.map(drop));
        }
        ok
    })
}
