//! The gRPC side: `ferry.inference.v1.Inference` and the Open Inference
//! Protocol's `GrpcInferenceService`, one file each, mirroring `http/`.
//! Errors are mapped to codes once, in `status.rs`.

#[cfg(test)]
mod hostile_tests;
pub(crate) mod inference;
pub(crate) mod oip;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ferry_proto::{
    inference::v1::inference_server::InferenceServer, oip::grpc_inference_service_server::GrpcInferenceServiceServer,
};

use tonic::service::interceptor::InterceptedService;

pub(crate) use self::{inference::InferenceService, oip::OipService};
use crate::{
    keys::ApiKeys,
    serving::{Models, RequestHeaders},
};

/// Routing reads gRPC metadata the way HTTP adapters read headers.
impl RequestHeaders for tonic::metadata::MetadataMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Metadata naming the variant that served, when the model has a traffic policy.
pub(crate) const VARIANT_KEY: &str = "x-ferry-variant";

/// Adds the variant to a response's metadata.
fn with_variant<T>(mut resp: tonic::Response<T>, variant: Option<&str>) -> tonic::Response<T> {
    if let Some(v) = variant.and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok()) {
        resp.metadata_mut().insert(VARIANT_KEY, v);
    }
    resp
}

/// `ferry.inference.v1.Inference`, taking requests up to `max_request_bytes`.
pub(crate) fn inference_server(models: Arc<Models>, max_request_bytes: usize) -> InferenceServer<InferenceService> {
    InferenceServer::new(InferenceService { models })
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(usize::MAX)
}

/// The Open Inference Protocol, taking requests up to `max_request_bytes`.
pub(crate) fn oip_server(models: Arc<Models>, max_request_bytes: usize) -> GrpcInferenceServiceServer<OipService> {
    GrpcInferenceServiceServer::new(OipService { models })
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(usize::MAX)
}

/// A service behind the API-key check (`keys.rs`); health and reflection
/// are other services, so probes never need a key.
pub(crate) fn with_keys<S>(service: S, keys: ApiKeys) -> InterceptedService<S, KeyCheck> {
    InterceptedService::new(service, KeyCheck(keys))
}

/// Refuses a call without a valid API key, before any method runs.
#[derive(Debug, Clone)]
pub(crate) struct KeyCheck(ApiKeys);

impl tonic::service::Interceptor for KeyCheck {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata();
        let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        self.0.check(header("authorization"), header("x-api-key")).map_err(status::status)?;
        Ok(req)
    }
}
