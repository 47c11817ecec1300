//! CORS and gRPC-Web for browsers, without taxing the calls that need neither.
//!
//! Wrapping every call in tower-http's CORS (which builds a `vary` header for
//! each response) and tonic-web cost a native gRPC request about a tenth of
//! its instructions in the server, and a REST prediction a twentieth. Only
//! requests a browser sends need them: anything carrying an `Origin`
//! (preflights included), gRPC-Web content types and HTTP/1.1 on the gRPC
//! port. The rest go straight to the services; responses are the same either
//! way, but for the CORS headers a request without an `Origin` has no use for.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::Either;
use http::{Method, Request, Response, Version, header};
use tonic_web::GrpcWebLayer;
use tower::{Layer, Service, ServiceExt, layer::util::Stack, util::Oneshot};
use tower_http::cors::{Any, CorsLayer};

/// Sends requests that `native` accepts to the inner service, the others
/// through the inner service behind `web`'s browser-only layers. Those are
/// built per browser request: hyper clones the service for every request,
/// and cloning tower-http's CORS (its lists of origins, methods and headers)
/// cost each native call ~0.5k instructions it had no use for.
#[derive(Debug)]
pub(crate) struct Split<S, L> {
    inner: S,
    web: Arc<L>,
    native: fn(&http::HeaderMap, &Method, Version) -> bool,
}

impl<S: Clone, L> Clone for Split<S, L> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), web: Arc::clone(&self.web), native: self.native }
    }
}

impl<S, L, B, R> Service<Request<B>> for Split<S, L>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    L: Layer<S>,
    L::Service: Service<Request<B>, Response = Response<R>, Error = S::Error>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Oneshot<L::Service, Request<B>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if (self.native)(req.headers(), req.method(), req.version()) {
            Either::Left(self.inner.call(req))
        } else {
            // The service polled ready goes into the browser's stack and a clone
            // takes its place (tower's usual swap); `oneshot` polls the stack.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            Either::Right(self.web.layer(ready).oneshot(req))
        }
    }
}

/// CORS and gRPC-Web translation for browsers on the gRPC port.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrpcBrowserLayer;

impl<S: Clone> Layer<S> for GrpcBrowserLayer {
    type Service = Split<S, Stack<GrpcWebLayer, CorsLayer>>;

    fn layer(&self, inner: S) -> Self::Service {
        // grpc-status and friends travel as headers or trailers the page must be allowed to read.
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                http::HeaderName::from_static("grpc-status"),
                http::HeaderName::from_static("grpc-message"),
                http::HeaderName::from_static("grpc-status-details-bin"),
            ]);
        Split { web: Arc::new(Stack::new(GrpcWebLayer::new(), cors)), inner, native: native_grpc }
    }
}

/// CORS for browsers on the REST port.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpBrowserLayer;

impl<S: Clone> Layer<S> for HttpBrowserLayer {
    type Service = Split<S, CorsLayer>;

    fn layer(&self, inner: S) -> Self::Service {
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
        Split { web: Arc::new(cors), inner, native: native_post }
    }
}

/// Native gRPC: HTTP/2, an `application/grpc` content type (not gRPC-Web), no `Origin`.
fn native_grpc(headers: &http::HeaderMap, _: &Method, version: Version) -> bool {
    version == Version::HTTP_2
        && !headers.contains_key(header::ORIGIN)
        && headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
            let ct = ct.as_bytes();
            ct.starts_with(b"application/grpc") && !ct.starts_with(b"application/grpc-web")
        })
}

/// A POST from no browser: its response needs no CORS headers, and no cache
/// keeps it (GETs keep `vary: origin` for caches that might).
fn native_post(headers: &http::HeaderMap, method: &Method, _: Version) -> bool {
    method == Method::POST && !headers.contains_key(header::ORIGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str, origin: bool) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        if origin {
            h.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        }
        h
    }

    #[test]
    fn only_browser_grpc_requests_take_the_web_path() {
        let post = &Method::POST;
        assert!(native_grpc(&headers("application/grpc", false), post, Version::HTTP_2));
        assert!(native_grpc(&headers("application/grpc+proto", false), post, Version::HTTP_2));
        assert!(!native_grpc(&headers("application/grpc-web+proto", false), post, Version::HTTP_2));
        assert!(!native_grpc(&headers("application/grpc-web-text", false), post, Version::HTTP_11));
        assert!(!native_grpc(&headers("application/grpc", false), post, Version::HTTP_11), "tonic-web answers 400");
        assert!(!native_grpc(&headers("application/grpc", true), post, Version::HTTP_2), "an Origin gets CORS");
        assert!(!native_grpc(&headers("application/grpc", true), &Method::OPTIONS, Version::HTTP_2), "preflight");
    }

    #[test]
    fn only_posts_without_an_origin_skip_cors_on_rest() {
        let json = headers("application/json", false);
        assert!(native_post(&json, &Method::POST, Version::HTTP_11));
        assert!(!native_post(&headers("application/json", true), &Method::POST, Version::HTTP_11));
        assert!(!native_post(&json, &Method::GET, Version::HTTP_11), "GETs keep vary for caches");
        assert!(!native_post(&headers("text/plain", true), &Method::OPTIONS, Version::HTTP_11), "preflight");
    }
}
