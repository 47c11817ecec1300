//! `ferry.inference.v1.Inference` over gRPC.

use std::sync::Arc;

use ferry_proto::inference::v1::{
    GetModelMetadataRequest, GetModelMetadataResponse, ListModelsRequest, ListModelsResponse, PredictRequest,
    PredictResponse, inference_server::Inference,
};
use tonic::{Request, Response, Status};

use super::{
    Handled,
    error::{deadline, status},
    handled,
};

use crate::{
    codec::pb::{from_pb, model_status, to_pb},
    serving::{Method, Models, PredictInput},
};

#[derive(Debug, Clone)]
pub(crate) struct InferenceService {
    pub(crate) models: Arc<Models>,
}

impl InferenceService {
    async fn run_predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let deadline = deadline(request.metadata());
        let (metadata, _, req) = request.into_parts();
        let inputs = req.inputs.into_iter().map(from_pb).collect::<Result<Vec<_>, _>>().map_err(status)?;
        let input = PredictInput {
            model: req.model,
            version: Some(req.version).filter(|v| !v.is_empty()),
            inputs,
            outputs: req.outputs,
            deadline,
            method: Method::GrpcPredict,
        };
        let p = self.models.predict(input, &metadata).await.map_err(status)?;
        let variant = p.variant.as_deref().map(str::to_owned);
        let resp = Response::new(PredictResponse {
            model: p.model,
            model_version: p.version,
            outputs: p.outputs.into_iter().map(to_pb).collect(),
            variant: variant.clone().unwrap_or_default(),
        });
        Ok(super::with_variant(resp, variant.as_deref()))
    }
}

#[tonic::async_trait]
impl Inference for InferenceService {
    fn predict<'s, 'a>(&'s self, request: Request<PredictRequest>) -> Handled<'a, Response<PredictResponse>>
    where
        's: 'a,
        Self: 'a,
    {
        let span = tracing::debug_span!(target: "ferry::request", "grpc.predict", model = %request.get_ref().model);
        handled(span, self.run_predict(request))
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
