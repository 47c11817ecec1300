//! gRPC transport: `ferry.inference.v1.Inference`.

use std::sync::Arc;

use ferry_proto::inference::v1::{
    GetModelMetadataRequest, GetModelMetadataResponse, ListModelsRequest, ListModelsResponse, PredictRequest,
    PredictResponse, inference_server::Inference,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    codec::pb::{from_pb, model_status, to_pb},
    error::ServeError,
    serving::{Models, PredictInput},
};

#[derive(Debug, Clone)]
pub(crate) struct InferenceService {
    pub(crate) models: Arc<Models>,
}

/// The one mapping from serving errors to gRPC status codes.
pub(crate) fn status(e: ServeError) -> Status {
    let code = match &e {
        ServeError::NotFound(_) => Code::NotFound,
        ServeError::Unavailable(_) => Code::Unavailable,
        ServeError::InvalidArgument(_) | ServeError::Model(_) => Code::InvalidArgument,
        ServeError::VersionMismatch(_) => Code::FailedPrecondition,
        ServeError::Overloaded(_) => Code::ResourceExhausted,
        ServeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ServeError::Internal(_) => Code::Internal,
    };
    let mut s = Status::new(code, e.to_string());
    if matches!(e, ServeError::Overloaded(_)) {
        s.metadata_mut().insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
    }
    s
}

/// The caller's deadline from `grpc-timeout` (digits and a unit: H, M, S, m, u, n).
pub(crate) fn deadline(md: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    std::time::Instant::now().checked_add(d)
}

#[tonic::async_trait]
impl Inference for InferenceService {
    #[tracing::instrument(target = "ferry::request", level = "debug", name = "grpc.predict", skip_all, fields(model = %request.get_ref().model))]
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let deadline = deadline(request.metadata());
        let req = request.into_inner();
        let inputs = req.inputs.into_iter().map(from_pb).collect::<Result<Vec<_>, _>>().map_err(status)?;
        let input = PredictInput {
            model: req.model,
            version: Some(req.version).filter(|v| !v.is_empty()),
            inputs,
            outputs: req.outputs,
            deadline,
            method: "grpc.Predict",
        };
        let p = self.models.predict(input).await.map_err(status)?;
        Ok(Response::new(PredictResponse {
            model: p.model,
            model_version: p.version,
            outputs: p.outputs.into_iter().map(to_pb).collect(),
        }))
    }

    async fn get_model_metadata(
        &self,
        request: Request<GetModelMetadataRequest>,
    ) -> Result<Response<GetModelMetadataResponse>, Status> {
        let slot = self.models.slot(&request.get_ref().model).map_err(status)?;
        Ok(Response::new(GetModelMetadataResponse { model: Some(model_status(slot.status())) }))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let models = self.models.slots().map(|s| model_status(s.status())).collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}
