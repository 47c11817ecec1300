//! Ferry Inference, the data plane: follows the registry, loads ONNX models
//! with ONNX Runtime and serves them over gRPC and REST.

mod browser;
mod codec;
pub mod config;
mod delivery;
pub mod engine;
pub mod error;
mod fetch;
mod grpc;
mod http;
pub mod memory;
mod metrics;
mod models_file;
pub mod remote;
pub mod serving;
pub mod spec;
mod store;
pub mod tensor;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use ferry_proto::{
    inference::v1::inference_server::InferenceServer, oip::grpc_inference_service_server::GrpcInferenceServiceServer,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::server::NamedService;
use tracing::info;

pub use crate::config::Config;
pub use crate::engine::batcher::BatchPolicy;
use crate::{
    delivery::DeliveryConfig,
    engine::{Runtime, SessionOptions},
    serving::{ModelSettings, Models},
};

/// Runs the service until `shutdown` resolves, then drains and returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let runtime = Runtime::load(&cfg.ort_library).map_err(anyhow::Error::msg)?;
    let defaults = ModelSettings {
        session: SessionOptions {
            sessions: cfg.sessions,
            // ONNX Runtime's own 0 also means "all cores", but with spinning pool threads.
            intra_threads: if cfg.intra_threads == 0 { engine::cores() } else { cfg.intra_threads },
            throughput_sessions: cfg.throughput_sessions,
            inter_threads: cfg.inter_threads,
            optimization_level: cfg.optimization_level,
            batch: BatchPolicy {
                max_rows: cfg.max_batch_rows.max(1),
                max_delay: Duration::from_micros(cfg.max_queue_delay_us),
            },
            inline_below: Duration::from_micros(cfg.inline_below_us),
            spinning: cfg.ort_spinning,
        },
        warmup_runs: cfg.warmup_runs,
        max_in_flight: cfg.max_in_flight,
    };
    let mut specs: Vec<(spec::ModelSpec, ModelSettings)> = cfg.models.iter().cloned().map(|s| (s, defaults)).collect();
    specs.extend(cfg.remote_models.iter().cloned().map(|mut s| {
        s.remote = true;
        (s, defaults)
    }));
    if let Some(path) = &cfg.models_file {
        specs.extend(models_file::load(path, defaults).map_err(anyhow::Error::msg)?);
    }
    let models = Arc::new(Models::new(specs).map_err(anyhow::Error::msg)?);
    let mlflow = ferry_mlflow::Client::new(cfg.mlflow.config()).context("MLflow client")?;
    let grpc_listener = TcpListener::bind(cfg.grpc_addr).await.with_context(|| format!("binding {}", cfg.grpc_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr).await.with_context(|| format!("binding {}", cfg.http_addr))?;
    let metrics_listener =
        TcpListener::bind(cfg.metrics_addr).await.with_context(|| format!("binding {}", cfg.metrics_addr))?;

    // Shutdown: readiness false first, keep serving for the drain delay, then
    // stop accepting and let in-flight requests finish (bounded below).
    let (stop_tx, stop) = watch::channel(false);
    let drain_delay = Duration::from_millis(cfg.drain_delay_ms);
    let draining = Arc::clone(&models);
    tokio::spawn(async move {
        shutdown.await;
        draining.start_draining();
        info!(delay_ms = drain_delay.as_millis() as u64, "draining: reporting not-ready");
        tokio::time::sleep(drain_delay).await;
        stop_tx.send_replace(true);
    });

    let delivery = delivery::spawn(
        Arc::clone(&models),
        mlflow.clone(),
        runtime,
        DeliveryConfig {
            registry_url: cfg.registry_url.clone(),
            work_dir: cfg.model_dir.clone(),
            max_model_bytes: cfg.max_model_bytes,
            poll_interval: Duration::from_millis(cfg.poll_interval_ms),
            keep_versions: cfg.keep_versions,
        },
        stop.clone(),
    );

    // Health: NOT_SERVING until every configured model is loaded and warm.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<InferenceServer<grpc::InferenceService>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let mut ready = models.ready();
    tokio::spawn(async move {
        loop {
            let status = if *ready.borrow_and_update() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            for service in [
                <InferenceServer<grpc::InferenceService> as NamedService>::NAME,
                <GrpcInferenceServiceServer<grpc::OipService> as NamedService>::NAME,
            ] {
                reporter.set_service_status(service, status).await;
            }
            if ready.changed().await.is_err() {
                return;
            }
        }
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let inference = InferenceServer::new(grpc::InferenceService { models: Arc::clone(&models) })
        .max_decoding_message_size(cfg.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let oip = GrpcInferenceServiceServer::new(grpc::OipService { models: Arc::clone(&models) })
        .max_decoding_message_size(cfg.max_request_bytes)
        .max_encoding_message_size(usize::MAX);

    info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, models = ?cfg.models.iter().map(ToString::to_string).collect::<Vec<_>>(), "ferry-inference listening");

    let mut grpc_stop = stop.clone();
    let grpc = tonic::transport::Server::builder()
        .trace_fn(|req| {
            ferry_telemetry::server_span(ferry_telemetry::Plane::Data, "grpc", req.uri().path(), req.headers())
        })
        // gRPC-Web for browsers on the same port (HTTP/1.1 accepted).
        .accept_http1(true)
        .layer(browser::GrpcBrowserLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(inference)
        .add_service(oip)
        .serve_with_incoming_shutdown(ferry_telemetry::net::nodelay_incoming(grpc_listener), async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        });
    let mut http_stop = stop.clone();
    let trace = tower_http::trace::TraceLayer::new_for_http()
        // Expected 503s (readiness while loading, draining) are not errors; metrics count failures.
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
        .make_span_with(|req: &::http::Request<_>| {
            ferry_telemetry::server_span(ferry_telemetry::Plane::Data, "http", req.uri().path(), req.headers())
        });
    let (set_id, echo_id) = ferry_telemetry::request_id_layers();
    // Around the router, not on it: `Router::layer` wraps every route, and
    // the wrapped route is cloned, boxed, for each request.
    let app = tower::ServiceBuilder::new()
        .map_response(|r: ::http::Response<_>| r.map(axum::body::Body::new))
        .layer(set_id)
        .layer(echo_id)
        .layer(trace)
        .layer(browser::HttpBrowserLayer)
        .service(http::router(Arc::clone(&models), cfg.rest_output.clone(), cfg.max_request_bytes));
    let http = axum::serve(
        http_listener.tap_io(ferry_telemetry::net::set_nodelay),
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let mut metrics_stop = stop.clone();
    let metrics =
        axum::serve(metrics_listener, metrics::router(metrics::Sources { models: Arc::clone(&models), mlflow }))
            .with_graceful_shutdown(async move {
                let _ = metrics_stop.wait_for(|s| *s).await;
            });
    let servers = async { tokio::join!(grpc, http, metrics) };
    let mut deadline_stop = stop.clone();
    let drain_timeout = Duration::from_millis(cfg.drain_timeout_ms);
    let deadline = async move {
        let _ = deadline_stop.wait_for(|s| *s).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        (g, h, m) = servers => {
            g.context("gRPC server")?;
            h.context("HTTP server")?;
            m.context("metrics server")?;
        }
        () = deadline => tracing::warn!(timeout_ms = cfg.drain_timeout_ms, "drain timeout: exiting with requests in flight"),
    }
    let _ = delivery.await;
    info!("ferry-inference stopped");
    Ok(())
}
