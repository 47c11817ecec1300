//! The gRPC side: `ferry.inference.v1.Inference` and the Open Inference
//! Protocol's `GrpcInferenceService`, one file each, mirroring `http/`.
//! Errors are mapped to codes once, in `error.rs`.

mod error;
#[cfg(test)]
mod hostile_tests;
pub(crate) mod inference;
pub(crate) mod oip;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ferry_proto::{
    inference::v1::inference_server::InferenceServer, oip::grpc_inference_service_server::GrpcInferenceServiceServer,
};

use tonic::server::NamedService;

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

/// A handler's future, boxed as tonic's service traits return it.
type Handled<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tonic::Status>> + Send + 'a>>;

/// `handler`, boxed, in `span` only when the span is enabled.
/// `#[tracing::instrument]` on the handler would wrap its body in one more
/// async block, whose state (the handler's whole, ~2 KB) is copied once more
/// per request: ~1k instructions of a tiny model's gRPC request (callgrind,
/// BENCHMARKS.md).
fn handled<'a, T>(
    span: tracing::Span,
    handler: impl std::future::Future<Output = Result<T, tonic::Status>> + Send + 'a,
) -> Handled<'a, T> {
    if span.is_disabled() { Box::pin(handler) } else { Box::pin(tracing::Instrument::instrument(handler, span)) }
}

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
pub(crate) fn with_keys<S>(service: S, keys: ApiKeys) -> Keyed<S> {
    Keyed { inner: service, keys }
}

/// Refuses a call without a valid API key, from its headers, before tonic
/// decodes anything. With no keys configured it only passes calls on: the
/// `InterceptedService` it replaces took every call apart into metadata and
/// back to check nothing, ~1.4k instructions of a tiny model's call
/// (callgrind).
#[derive(Debug, Clone)]
pub(crate) struct Keyed<S> {
    inner: S,
    keys: ApiKeys,
}

impl<S: NamedService> NamedService for Keyed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Keyed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        if !self.keys.is_open() {
            let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
            if let Err(e) = self.keys.check(header("authorization"), header("x-api-key")) {
                return Either::Right(std::future::ready(Ok(error::status(e).into_http())));
            }
        }
        Either::Left(self.inner.call(req))
    }
}
