//! gRPC transport for the Open Inference Protocol: `inference.GRPCInferenceService`.

use std::sync::Arc;

use ferry_proto::oip::{
    InferParameter, InferTensorContents, ModelConfigRequest, ModelConfigResponse, ModelInferRequest,
    ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ModelStatisticsRequest, ModelStatisticsResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
    grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
};
use tonic::{Request, Response, Status};

use super::{
    Handled,
    error::{deadline, status},
    handled,
};
use crate::{
    codec::oip as common,
    error::ServeError,
    serving::{Method, Models, PredictInput},
    tensor::{NamedTensor, TensorData},
};

#[derive(Debug, Clone)]
pub(crate) struct OipService {
    pub(crate) models: Arc<Models>,
}

fn not_loaded(name: &str) -> Status {
    status(ServeError::Unavailable(format!("model {name:?} has no version loaded yet")))
}

/// The typed contents for one input, moved out of the request.
fn from_contents(t: InferInputTensor) -> Result<NamedTensor, ServeError> {
    let dtype = common::parse_datatype(&t.datatype, &t.name)?;
    let c = t.contents.unwrap_or_default();
    let data = match dtype {
        crate::tensor::DType::F32 => TensorData::F32(c.fp32_contents),
        crate::tensor::DType::F64 => TensorData::F64(c.fp64_contents),
        crate::tensor::DType::I32 => TensorData::I32(c.int_contents),
        crate::tensor::DType::I64 => TensorData::I64(c.int64_contents),
        crate::tensor::DType::Bool => TensorData::Bool(c.bool_contents),
        crate::tensor::DType::Str => TensorData::Str(
            c.bytes_contents
                .into_iter()
                .map(|b| {
                    String::from_utf8(b).map_err(|_| {
                        ServeError::InvalidArgument(format!("input {:?}: BYTES element is not UTF-8", t.name))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(NamedTensor { name: t.name, shape: t.shape, data })
}

fn to_contents(data: TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::F32(v) => c.fp32_contents = v,
        TensorData::F64(v) => c.fp64_contents = v,
        TensorData::I32(v) => c.int_contents = v,
        TensorData::I64(v) => c.int64_contents = v,
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::Str(v) => c.bytes_contents = v.into_iter().map(String::into_bytes).collect(),
    }
    c
}

#[tonic::async_trait]
impl GrpcInferenceService for OipService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.models.is_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let slot = self.models.slot(&r.name).map_err(status)?;
        let ready = slot.current().is_some_and(|m| r.version.is_empty() || m.version == r.version);
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "ferry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: common::EXTENSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let name = request.into_inner().name;
        let slot = self.models.slot(&name).map_err(status)?;
        common::metadata(&slot.status()).map(Response::new).ok_or_else(|| not_loaded(&name))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let name = request.into_inner().name;
        let slot = self.models.slot(&name).map_err(status)?;
        let config = common::config(&slot.status()).ok_or_else(|| not_loaded(&name))?;
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let name = request.into_inner().name;
        let model_stats = if name.is_empty() {
            self.models.slots().map(|s| common::statistics(s)).collect()
        } else {
            vec![common::statistics(self.models.slot(&name).map_err(status)?)]
        };
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    fn model_infer<'s, 'a>(&'s self, request: Request<ModelInferRequest>) -> Handled<'a, Response<ModelInferResponse>>
    where
        's: 'a,
        Self: 'a,
    {
        let span =
            tracing::debug_span!(target: "ferry::request", "oip.model_infer", model = %request.get_ref().model_name);
        handled(span, self.run_model_infer(request))
    }
}

impl OipService {
    async fn run_model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline(request.metadata());
        let (metadata, _, r) = request.into_parts();
        let raw = !r.raw_input_contents.is_empty();
        if raw && r.raw_input_contents.len() != r.inputs.len() {
            return Err(status(ServeError::InvalidArgument(format!(
                "{} raw_input_contents for {} inputs",
                r.raw_input_contents.len(),
                r.inputs.len()
            ))));
        }
        let inputs = if raw {
            r.inputs
                .into_iter()
                .zip(&r.raw_input_contents)
                .map(|(t, bytes)| {
                    let dtype = common::parse_datatype(&t.datatype, &t.name)?;
                    Ok(NamedTensor { data: common::decode_raw(dtype, bytes, &t.name)?, name: t.name, shape: t.shape })
                })
                .collect::<Result<Vec<_>, ServeError>>()
        } else {
            r.inputs.into_iter().map(from_contents).collect()
        }
        .map_err(status)?;
        let p = self
            .models
            .predict(
                PredictInput {
                    model: r.model_name,
                    version: Some(r.model_version).filter(|v| !v.is_empty()),
                    inputs,
                    outputs: r.outputs.into_iter().map(|o| o.name).collect(),
                    deadline,
                    method: Method::GrpcModelInfer,
                },
                &metadata,
            )
            .await
            .map_err(status)?;
        // Answer in the form the caller used: raw for raw (as Triton does), typed otherwise.
        let mut resp = ModelInferResponse {
            model_name: p.model,
            model_version: p.version,
            id: r.id,
            outputs: Vec::with_capacity(p.outputs.len()),
            raw_output_contents: Vec::with_capacity(if raw { p.outputs.len() } else { 0 }),
            ..Default::default()
        };
        if let Some(v) = &p.variant {
            let param = InferParameter { parameter_choice: Some(ParameterChoice::StringParam(v.to_string())) };
            resp.parameters.insert(common::VARIANT_PARAMETER.to_owned(), param);
        }
        for t in p.outputs {
            let datatype = common::datatype(t.data.dtype()).to_owned();
            let mut out = InferOutputTensor { name: t.name, datatype, shape: t.shape, ..Default::default() };
            if raw {
                resp.raw_output_contents.push(common::encode_raw(&t.data));
            } else {
                out.contents = Some(to_contents(t.data));
            }
            resp.outputs.push(out);
        }
        let variant = p.variant.as_deref().map(str::to_owned);
        Ok(super::with_variant(Response::new(resp), variant.as_deref()))
    }
}
