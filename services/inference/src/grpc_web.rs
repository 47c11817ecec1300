//! gRPC-Web and CORS for browsers, on the gRPC port, without taxing the rest.
//!
//! Wrapping every call in tonic-web and tower-http's CORS cost a native gRPC
//! request about a tenth of its instructions in the server (the CORS layer
//! alone builds `vary` headers for every response). Only requests a browser
//! sends need them: gRPC-Web content types, HTTP/1.1, and anything carrying an
//! `Origin` (preflights included). Native HTTP/2 gRPC goes straight to the
//! services, with the same status codes and bodies either way.

use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response, Version, header};
use tonic::body::Body;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, Service};
use tower_http::cors::{Any, Cors, CorsLayer};

/// Routes browser requests through gRPC-Web translation and CORS.
#[derive(Debug, Clone, Default)]
pub(crate) struct BrowserLayer;

impl<S: Clone> Layer<S> for BrowserLayer {
    type Service = Browser<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // Pages served from other origins may call; grpc-status and friends
        // travel as headers or trailers the page must be allowed to read.
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([http::Method::POST, http::Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                http::HeaderName::from_static("grpc-status"),
                http::HeaderName::from_static("grpc-message"),
                http::HeaderName::from_static("grpc-status-details-bin"),
            ]);
        Browser { web: cors.layer(GrpcWebLayer::new().layer(inner.clone())), native: inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Browser<S> {
    native: S,
    web: Cors<GrpcWebService<S>>,
}

/// Native gRPC: HTTP/2, an `application/grpc` content type (not gRPC-Web), no `Origin`.
fn is_native_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && !req.headers().contains_key(header::ORIGIN)
        && req.headers().get(header::CONTENT_TYPE).is_some_and(|ct| {
            let ct = ct.as_bytes();
            ct.starts_with(b"application/grpc") && !ct.starts_with(b"application/grpc-web")
        })
}

impl<S> Service<Request<Body>> for Browser<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, <Cors<GrpcWebService<S>> as Service<Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        std::task::ready!(self.native.poll_ready(cx))?;
        Service::<Request<Body>>::poll_ready(&mut self.web, cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_native_grpc(&req) { Either::Left(self.native.call(req)) } else { Either::Right(self.web.call(req)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, content_type: &str, origin: bool) -> Request<()> {
        let mut b = Request::post("/ferry.inference.v1.Inference/Predict").version(version);
        b = b.header(header::CONTENT_TYPE, content_type);
        if origin {
            b = b.header(header::ORIGIN, "https://app.example");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_browser_requests_take_the_web_path() {
        assert!(is_native_grpc(&req(Version::HTTP_2, "application/grpc", false)));
        assert!(is_native_grpc(&req(Version::HTTP_2, "application/grpc+proto", false)));
        assert!(!is_native_grpc(&req(Version::HTTP_2, "application/grpc-web+proto", false)));
        assert!(!is_native_grpc(&req(Version::HTTP_11, "application/grpc-web-text", false)));
        assert!(!is_native_grpc(&req(Version::HTTP_11, "application/grpc", false)), "HTTP/1.1 gets tonic-web's 400");
        assert!(!is_native_grpc(&req(Version::HTTP_2, "application/grpc", true)), "an Origin gets CORS headers");
        let preflight = Request::options("/x").header(header::ORIGIN, "https://app.example").body(()).unwrap();
        assert!(!is_native_grpc(&preflight));
    }
}
