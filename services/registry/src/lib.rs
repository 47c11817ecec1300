//! Ferry Registry, the control plane: registers ONNX models in MLflow, moves
//! versions through stages and aliases, and streams every change.

pub mod auth;
pub mod config;
mod convert;
pub mod error;
mod grpc;
mod http;
pub mod hub;
mod metrics;
mod onnx;
pub mod register;
pub mod service;
pub mod webhook;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use ferry_proto::registry::v1::model_registry_server::ModelRegistryServer;
use tokio::{net::TcpListener, sync::watch};
use tracing::info;

pub use crate::config::Config;
use crate::hub::Hub;

/// Runs the service until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let mlflow = ferry_mlflow::Client::new(cfg.mlflow.config()).context("MLflow client")?;
    let listener = TcpListener::bind(cfg.grpc_addr).await.with_context(|| format!("binding {}", cfg.grpc_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr).await.with_context(|| format!("binding {}", cfg.http_addr))?;
    let metrics_listener =
        TcpListener::bind(cfg.metrics_addr).await.with_context(|| format!("binding {}", cfg.metrics_addr))?;

    let hub = Hub::new(cfg.history, 4096);
    let (healthy_tx, mut healthy) = watch::channel(false);
    let reconciler =
        tokio::spawn(Arc::clone(&hub).run(mlflow.clone(), Duration::from_millis(cfg.poll_interval_ms), healthy_tx));

    // Health follows MLflow reachability: without it the registry can do nothing.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<ModelRegistryServer<grpc::RegistryService>>().await;
    tokio::spawn(async move {
        loop {
            let status = if *healthy.borrow_and_update() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <ModelRegistryServer<grpc::RegistryService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            if healthy.changed().await.is_err() {
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
    let metrics_sources = metrics::Sources { hub: Arc::clone(&hub), mlflow: mlflow.clone() };
    let registry = service::Registry {
        mlflow: mlflow.clone(),
        hub,
        experiment: cfg.experiment.clone(),
        max_model_bytes: cfg.max_model_bytes,
        upload_dir: cfg.upload_dir.clone(),
        path_root: cfg.register_path_root.clone(),
    };
    let auth = auth::Auth::new(cfg.auth_token.as_ref().map(ferry_telemetry::Secret::expose), cfg.protect_reads);
    let verifier = cfg
        .webhook_secret
        .as_ref()
        .map(ferry_telemetry::Secret::expose)
        .filter(|s| !s.is_empty())
        .map(|s| Arc::new(webhook::Verifier::new(s, Duration::from_secs(cfg.webhook_window_s))));
    match (&cfg.webhook_secret, &cfg.public_url) {
        (Some(secret), Some(public)) if !secret.expose().is_empty() => {
            let url = format!("{}/webhooks/mlflow", public.trim_end_matches('/'));
            tokio::spawn(webhook::ensure(mlflow, url, secret.expose().to_owned()));
        }
        _ => info!("no webhook secret and public URL: changes are picked up by polling MLflow only"),
    }

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    info!(grpc = %listener.local_addr()?, http = %http_listener.local_addr()?, mlflow = %cfg.mlflow.url, "ferry-registry listening");
    let mut grpc_stop = stop.clone();
    let grpc = tonic::transport::Server::builder()
        .trace_fn(|req| {
            ferry_telemetry::server_span(ferry_telemetry::Plane::Control, "grpc", req.uri().path(), req.headers())
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ModelRegistryServer::new(grpc::RegistryService { registry: registry.clone(), auth: auth.clone() })
                .max_decoding_message_size(8 << 20),
        )
        .serve_with_incoming_shutdown(ferry_telemetry::net::nodelay_incoming(listener), async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        });
    let (set_id, echo_id) = ferry_telemetry::request_id_layers();
    let mut http_stop = stop.clone();
    let trace = tower_http::trace::TraceLayer::new_for_http()
        // Expected 503s (readiness while loading, draining) are not errors; metrics count failures.
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
        .make_span_with(|req: &::http::Request<_>| {
            ferry_telemetry::server_span(ferry_telemetry::Plane::Control, "http", req.uri().path(), req.headers())
        });
    let http = axum::serve(
        http_listener.tap_io(ferry_telemetry::net::set_nodelay),
        http::router(registry, auth, verifier).layer(trace).layer(echo_id).layer(set_id),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let mut metrics_stop = stop.clone();
    let metrics = axum::serve(metrics_listener, metrics::router(metrics_sources)).with_graceful_shutdown(async move {
        let _ = metrics_stop.wait_for(|s| *s).await;
    });
    let (g, h, m) = tokio::join!(grpc, http, metrics);
    g.context("gRPC server")?;
    h.context("HTTP server")?;
    m.context("metrics server")?;
    reconciler.abort();
    info!("ferry-registry stopped");
    Ok(())
}
