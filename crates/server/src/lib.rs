//! What both Ferry services do alike when they serve, so that each one's
//! `run()` reads as the list of what it serves: one stop signal that every
//! listener and background task follows, gRPC health that follows a
//! readiness flag, reflection (v1 and v1alpha, for grpcurl and Postman),
//! and the HTTP stack's request id and tracing span; and the listener every
//! port is served from, plain or TLS.

mod listen;

pub use ferry_tls::{Port, ServerTls};
pub use listen::{Conn, HANDSHAKE_TIMEOUT, Listener, Ports};

use std::{convert::Infallible, future::Future};

use axum::{extract::Request, response::Response};
use ferry_telemetry::Plane;
use tokio::sync::watch;
use tonic::transport::server::Router;
use tonic_health::{ServingStatus, server::HealthReporter};

/// Fired once, at the end of a service's drain; every server and loop waits on it.
#[derive(Debug)]
pub struct StopTrigger(watch::Sender<bool>);

impl StopTrigger {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A cheap, cloneable view of the stop signal.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// The one stop signal of a service.
pub fn stop_signal() -> (StopTrigger, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopTrigger(tx), Stop(rx))
}

impl Stop {
    /// Resolves once the stop has fired (at once if it already has).
    pub fn fired(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the trigger is gone, which only happens at exit: stop too.
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// The underlying receiver, for loops that `select!` on it with other channels.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

/// Reports `services` (and the server as a whole, `""`) as SERVING exactly
/// while `ready` holds true, from now until the sender is dropped. The first
/// report is made before this returns, so no check sees tonic-health's
/// default (SERVING) before the service is ready.
pub async fn follow_health(reporter: HealthReporter, services: Vec<&'static str>, mut ready: watch::Receiver<bool>) {
    async fn report(reporter: &HealthReporter, services: &[&'static str], ready: bool) {
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        for service in services {
            reporter.set_service_status(*service, status).await;
        }
    }
    let now = *ready.borrow_and_update();
    report(&reporter, &services, now).await;
    tokio::spawn(async move {
        while ready.changed().await.is_ok() {
            let now = *ready.borrow_and_update();
            report(&reporter, &services, now).await;
        }
    });
}

/// A gRPC server with the request span every Ferry RPC gets.
pub fn grpc_server(plane: Plane) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .trace_fn(move |req| ferry_telemetry::server_span(plane, "grpc", req.uri().path(), req.headers()))
}

/// Adds what every Ferry gRPC port answers besides its own services: health
/// and server reflection (v1 and v1alpha) over Ferry's and health's descriptors.
pub fn with_common_services<L: Clone>(
    mut server: tonic::transport::Server<L>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<Router<L>, tonic_reflection::server::Error> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(server.add_service(health).add_service(reflection().build_v1()?).add_service(reflection().build_v1alpha()?))
}

/// Serves `app` on `listener` with a request id (the caller's `x-request-id`
/// or a new one, echoed back) and a request span on every request, until
/// `stop` fires; requests in flight then finish.
pub async fn serve_http<S>(listener: Listener, plane: Plane, app: S, stop: &Stop) -> std::io::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    // Layers go around the router, not on it: `Router::layer` wraps every
    // route, and the wrapped route is cloned, boxed, for each request.
    let app = tower::ServiceBuilder::new()
        .layer(ferry_telemetry::RequestIdLayer)
        .layer(ferry_telemetry::SpanLayer::new(plane))
        .service(app);
    axum::serve(listener, axum::ServiceExt::<Request>::into_make_service(app))
        .with_graceful_shutdown(stop.fired())
        .await
}

/// Serves a plain router (metrics) until `stop` fires.
pub async fn serve_plain(listener: Listener, app: axum::Router, stop: &Stop) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(stop.fired()).await
}

/// Compares two secrets in time that depends on their length only, not on
/// where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_stop_reaches_every_clone_even_those_made_after_it_fired() {
        let (trigger, stop) = stop_signal();
        let early = stop.clone();
        let waiting = tokio::spawn(early.fired());
        assert!(!stop.is_fired());
        trigger.stop();
        waiting.await.unwrap();
        let late = stop.clone();
        tokio::time::timeout(std::time::Duration::from_secs(1), late.fired()).await.unwrap();
        assert!(late.is_fired());
    }

    #[tokio::test]
    async fn health_follows_readiness() {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus as Wire, health_client::HealthClient,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        let (ready_tx, ready) = watch::channel(false);
        follow_health(reporter, vec!["x.Svc"], ready).await;
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), None, Port::Grpc).await.unwrap();
        let addr = listener.local_addr();
        let (trigger, stop) = stop_signal();
        let server = tokio::spawn(
            with_common_services(grpc_server(Plane::Data), health)
                .unwrap()
                .serve_with_incoming_shutdown(listener.incoming(), stop.fired()),
        );
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let client = HealthClient::new(channel);
        let status = |s: &'static str| {
            let mut c = client.clone();
            async move { c.check(HealthCheckRequest { service: s.into() }).await.unwrap().into_inner().status }
        };
        let until = |want: i32, s: &'static str| {
            let status = &status;
            async move {
                for _ in 0..200 {
                    if status(s).await == want {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("{s:?} never reported {want}");
            }
        };
        until(Wire::NotServing as i32, "x.Svc").await;
        ready_tx.send_replace(true);
        until(Wire::Serving as i32, "x.Svc").await;
        until(Wire::Serving as i32, "").await;
        ready_tx.send_replace(false);
        until(Wire::NotServing as i32, "").await;
        drop(client);
        trigger.stop();
        server.await.unwrap().unwrap();
    }

    /// A gRPC health server and an HTTP server on TLS listeners, until `stop`.
    async fn tls_servers(tls: &Arc<ServerTls>, stop: &Stop) -> (String, String) {
        let (reporter, health) = tonic_health::server::health_reporter();
        follow_health(reporter, vec![], watch::channel(true).1).await;
        let grpc = Listener::bind("127.0.0.1:0".parse().unwrap(), Some(tls), Port::Grpc).await.unwrap();
        let http = Listener::bind("127.0.0.1:0".parse().unwrap(), Some(tls), Port::Http).await.unwrap();
        let urls = (
            format!("https://localhost:{}", grpc.local_addr().port()),
            format!("https://localhost:{}", http.local_addr().port()),
        );
        let server = with_common_services(grpc_server(Plane::Control), health).unwrap();
        tokio::spawn(server.serve_with_incoming_shutdown(grpc.incoming(), stop.fired()));
        let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        let stop = stop.clone();
        tokio::spawn(async move { serve_plain(http, app, &stop).await });
        urls
    }

    async fn check(tls: &ferry_tls::ClientTls, url: &str) -> Result<i32, String> {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = tls.endpoint(url).unwrap().connect().await.map_err(|e| format!("{e:?}"))?;
        let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
        reply.map(|r| r.into_inner().status).map_err(|s| format!("{s:?}"))
    }

    #[tokio::test]
    async fn tls_listeners_serve_grpc_and_http_to_clients_that_trust_the_ca() {
        use ferry_tls::{ClientTls, testing::Ca};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "ferry").unwrap();
        let server = ca.server("server").unwrap();
        let tls = ServerTls::load(&server.server_args(None)).unwrap().unwrap();
        let (_trigger, stop) = stop_signal();
        let (grpc, http) = tls_servers(&tls, &stop).await;

        // A client that never starts its handshake holds up nobody.
        let _silent =
            tokio::net::TcpStream::connect(grpc.trim_start_matches("https://").replace("localhost", "127.0.0.1"))
                .await
                .unwrap();
        let trusting = ClientTls::from_files(Some(&ca.cert), None).unwrap();
        assert_eq!(check(&trusting, &grpc).await.unwrap(), 1, "SERVING");
        let web = trusting.http(reqwest::Client::builder()).unwrap().build().unwrap();
        assert_eq!(web.get(format!("{http}/hello")).send().await.unwrap().text().await.unwrap(), "hello");

        // Not trusting the CA, or speaking plaintext to a TLS port: refused.
        let err = check(&ClientTls::default(), &grpc).await.unwrap_err();
        assert!(err.contains("certificate") || err.contains("Certificate"), "{err}");
        let plain = grpc.replace("https://", "http://");
        assert!(check(&ClientTls::default(), &plain).await.is_err());
        let plain_http = reqwest::get(format!("{}/hello", http.replace("https://", "http://"))).await;
        assert!(plain_http.is_err(), "{plain_http:?}");
    }

    #[tokio::test]
    async fn with_a_client_ca_grpc_requires_a_client_certificate_and_http_does_not() {
        use ferry_tls::{ClientTls, testing::Ca};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "ferry").unwrap();
        let rogue = Ca::new(dir.path(), "rogue").unwrap();
        let server = ca.server("server").unwrap();
        let tls = ServerTls::load(&server.server_args(Some(&ca))).unwrap().unwrap();
        let (_trigger, stop) = stop_signal();
        let (grpc, http) = tls_servers(&tls, &stop).await;

        let inference = ca.client("inference").unwrap();
        let with_cert = ClientTls::from_files(Some(&ca.cert), Some((&inference.cert, &inference.key))).unwrap();
        assert_eq!(check(&with_cert, &grpc).await.unwrap(), 1);
        let without = ClientTls::from_files(Some(&ca.cert), None).unwrap();
        assert!(check(&without, &grpc).await.is_err());
        let impostor = rogue.client("impostor").unwrap();
        let forged = ClientTls::from_files(Some(&ca.cert), Some((&impostor.cert, &impostor.key))).unwrap();
        assert!(check(&forged, &grpc).await.is_err());
        let web = without.http(reqwest::Client::builder()).unwrap().build().unwrap();
        assert_eq!(web.get(format!("{http}/hello")).send().await.unwrap().text().await.unwrap(), "hello");
    }
}
