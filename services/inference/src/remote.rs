//! Remote models: requests forwarded over the Open Inference Protocol (gRPC)
//! to another server (Triton, KServe, another Ferry) for models too large to
//! hold here. The endpoint comes from the registered model's tags in MLflow.

use ferry_proto::oip::{
    ModelInferRequest, ModelMetadataRequest,
    grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
};
use tonic::{Code, transport::Channel};

use crate::{
    codec::oip,
    error::ServeError,
    serving::Forward,
    tensor::{NamedTensor, Signature, TensorSpec},
};

/// Registered-model tag naming the OIP gRPC endpoint (e.g. `http://big-models:8001`).
pub const ENDPOINT_TAG: &str = "ferry.remote_endpoint";
/// Optional registered-model tag: the model's name on the remote server (default: the same name).
pub const NAME_TAG: &str = "ferry.remote_model";

#[derive(Debug, Clone)]
pub struct RemoteModel {
    pub endpoint: String,
    pub name: String,
    client: GrpcInferenceServiceClient<Channel>,
}

impl RemoteModel {
    /// A handle that connects on first use, for tests of what holds one.
    #[cfg(test)]
    pub(crate) fn lazy(endpoint: &'static str, name: &str) -> Self {
        let channel = Channel::from_static(endpoint).connect_lazy();
        Self { endpoint: endpoint.to_owned(), name: name.to_owned(), client: GrpcInferenceServiceClient::new(channel) }
    }

    /// Connects and reads the remote model's signature.
    pub async fn connect(tls: &ferry_tls::ClientTls, endpoint: &str, name: &str) -> Result<(Self, Signature), String> {
        let channel = (tls.endpoint(endpoint))
            .map_err(|e| format!("bad remote endpoint {endpoint:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot reach remote endpoint {endpoint}: {e}"))?;
        let mut client = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let md = client
            .model_metadata(ModelMetadataRequest { name: name.to_owned(), version: String::new() })
            .await
            .map_err(|s| format!("remote {endpoint} has no model {name:?}: {}", s.message()))?
            .into_inner();
        let spec = |t: &ferry_proto::oip::model_metadata_response::TensorMetadata| {
            Ok::<_, String>(TensorSpec {
                name: t.name.clone(),
                dtype: oip::parse_datatype(&t.datatype, &t.name).map_err(|e| e.to_string())?,
                shape: t.shape.clone(),
            })
        };
        let signature = Signature {
            inputs: md.inputs.iter().map(spec).collect::<Result<_, _>>()?,
            outputs: md.outputs.iter().map(spec).collect::<Result<_, _>>()?,
        };
        Ok((Self { endpoint: endpoint.to_owned(), name: name.to_owned(), client }, signature))
    }

    /// The remote's answer, mapped to what our caller can act on.
    fn error(&self, s: tonic::Status) -> ServeError {
        let msg = format!("remote {}: {}", self.endpoint, s.message());
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => ServeError::InvalidArgument(msg),
            Code::NotFound => ServeError::NotFound(msg),
            Code::ResourceExhausted => ServeError::Overloaded(msg),
            Code::FailedPrecondition => ServeError::VersionMismatch(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                ServeError::Unavailable(msg)
            }
            Code::Ok
            | Code::Unknown
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss
            | Code::Unauthenticated => ServeError::Internal(msg),
        }
    }
}

#[tonic::async_trait]
impl Forward for RemoteModel {
    fn target(&self) -> (&str, &str) {
        (&self.endpoint, &self.name)
    }

    async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: &[String],
    ) -> Result<(Vec<NamedTensor>, String), ServeError> {
        let mut req = ModelInferRequest { model_name: self.name.clone(), ..Default::default() };
        for t in inputs {
            req.raw_input_contents.push(oip::encode_raw(&t.data));
            req.inputs.push(InferInputTensor {
                name: t.name,
                datatype: oip::datatype(t.data.dtype()).to_owned(),
                shape: t.shape,
                ..Default::default()
            });
        }
        req.outputs =
            outputs.iter().map(|o| InferRequestedOutputTensor { name: o.clone(), ..Default::default() }).collect();
        let mut headers = ::http::HeaderMap::new();
        ferry_telemetry::inject_context(&mut headers);
        let mut req = tonic::Request::new(req);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        let resp = self.client.clone().model_infer(req).await.map_err(|s| self.error(s))?.into_inner();
        let mut out = Vec::with_capacity(resp.outputs.len());
        for (i, t) in resp.outputs.into_iter().enumerate() {
            let dtype = oip::parse_datatype(&t.datatype, &t.name)?;
            let data = match resp.raw_output_contents.get(i) {
                Some(raw) => oip::decode_raw(dtype, raw, &t.name)?,
                None => {
                    return Err(ServeError::Internal(format!(
                        "remote {} sent no raw contents for {}",
                        self.endpoint, t.name
                    )));
                }
            };
            out.push(NamedTensor { name: t.name, shape: t.shape, data });
        }
        Ok((out, resp.model_version))
    }
}
