//! Ferry Inference, the data plane: follows the registry, loads ONNX models
//! with ONNX Runtime and serves them over gRPC and REST.

mod browser;
mod codec;
pub mod config;
mod delivery;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod grpc;
mod http;
mod keys;
pub mod memory;
mod metrics;
mod models_file;
pub mod remote;
pub mod serving;
pub mod spec;
pub mod tensor;
#[cfg(any(test, feature = "fuzzing"))]
mod testing;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use ferry_proto::{
    inference::v1::inference_server::InferenceServer, oip::grpc_inference_service_server::GrpcInferenceServiceServer,
};
use ferry_telemetry::Plane;
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
    let runtime = Runtime::load(&cfg.ort_library, cfg.ort_telemetry).map_err(anyhow::Error::msg)?;
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
            spinning: true, // decided below, once the models are known
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
    {
        let mut only: Vec<spec::ModelSpec> = specs.iter().map(|(s, _)| s.clone()).collect();
        spec::apply_pins(&mut only, &cfg.pins).map_err(anyhow::Error::msg)?;
        for ((s, _), pinned) in specs.iter_mut().zip(only) {
            if pinned.pin != s.pin {
                tracing::warn!(model = %s.name, pin = ?pinned.pin, "pinned by FERRY_PIN: the registry does not move what is pinned");
            }
            *s = pinned;
        }
    }
    // Each model's pool spins on its own: with more models than cores they
    // spin against each other (20 medium models on 2 cores: p50 0.5 → 10 ms
    // at the same total rate, 2.6 ms without spinning; BENCHMARKS.md, "Many models").
    let local = specs.iter().filter(|(s, _)| !s.remote).count();
    let spinning = cfg.ort_spinning.unwrap_or(local <= engine::cores());
    for (_, settings) in &mut specs {
        settings.session.spinning = spinning;
    }
    info!(spinning, models = local, cores = engine::cores(), "ONNX Runtime pool threads");
    let models = Arc::new(Models::new(specs).map_err(anyhow::Error::msg)?);
    let keys = match &cfg.api_keys {
        Some(k) => keys::ApiKeys::parse(k.expose()).map_err(anyhow::Error::msg)?,
        None => keys::ApiKeys::default(),
    };
    if keys.is_open() {
        tracing::warn!(
            "no FERRY_API_KEYS: the prediction APIs (gRPC and HTTP) answer anyone who reaches their ports; \
             set keys unless a network policy or a gateway in front decides who may call"
        );
    } else {
        info!(?keys, "API keys required on the prediction APIs");
    }
    let mlflow = ferry_mlflow::Client::new(cfg.mlflow.config()?).context("MLflow client")?;
    let client_tls = ferry_tls::ClientTls::load(&cfg.client_tls)?;
    let ports = ferry_server::Ports::bind(&cfg.tls, cfg.grpc_addr, cfg.http_addr, cfg.metrics_addr).await?;

    // Shutdown: readiness false first, keep serving for the drain delay, then
    // stop accepting and let in-flight requests finish (bounded below).
    let (trigger, stop) = ferry_server::stop_signal();
    let drain_delay = Duration::from_millis(cfg.drain_delay_ms);
    let draining = Arc::clone(&models);
    tokio::spawn(async move {
        shutdown.await;
        draining.start_draining();
        info!(delay_ms = drain_delay.as_millis() as u64, "draining: reporting not-ready");
        tokio::time::sleep(drain_delay).await;
        trigger.stop();
    });

    let delivery = delivery::spawn(
        Arc::clone(&models),
        mlflow.clone(),
        runtime,
        DeliveryConfig {
            registry_url: cfg.registry_url.clone(),
            registry_token: cfg.registry_token.clone(),
            tls: client_tls,
            work_dir: cfg.model_dir.clone(),
            max_model_bytes: cfg.max_model_bytes,
            download_stall: Duration::from_millis(cfg.download_stall_ms.max(1)),
            poll_interval: Duration::from_millis(cfg.poll_interval_ms),
            keep_versions: cfg.keep_versions,
        },
        stop.receiver(),
    );

    // Health: NOT_SERVING until every configured model is loaded and warm.
    let (reporter, health) = tonic_health::server::health_reporter();
    let services = vec![
        <InferenceServer<grpc::InferenceService> as NamedService>::NAME,
        <GrpcInferenceServiceServer<grpc::OipService> as NamedService>::NAME,
    ];
    ferry_server::follow_health(reporter, services, models.ready()).await;

    info!(
        grpc = %ports.grpc.local_addr(),
        http = %ports.http.local_addr(),
        models = ?cfg.models.iter().map(ToString::to_string).collect::<Vec<_>>(),
        tls = ports.describe_tls(),
        "ferry-inference listening"
    );
    // gRPC-Web for browsers on the same port (HTTP/1.1 accepted).
    let grpc_server = ferry_server::grpc_server(Plane::Data).accept_http1(true).layer(browser::GrpcBrowserLayer);
    let grpc = ferry_server::with_common_services(grpc_server, health)?
        .add_service(grpc::with_keys(grpc::inference_server(Arc::clone(&models), cfg.max_request_bytes), keys.clone()))
        .add_service(grpc::with_keys(grpc::oip_server(Arc::clone(&models), cfg.max_request_bytes), keys.clone()))
        .serve_with_incoming_shutdown(ports.grpc.incoming(), stop.fired());
    let router = http::router(Arc::clone(&models), cfg.rest_output.clone(), cfg.max_request_bytes);
    let app = tower::ServiceBuilder::new().layer(browser::HttpBrowserLayer).service(http::with_keys(router, keys));
    let http = ferry_server::serve_http(ports.http, Plane::Data, app, &stop);
    let metrics = ferry_server::serve_plain(
        ports.metrics,
        metrics::router(metrics::Sources { models: Arc::clone(&models), mlflow }),
        &stop,
    );
    let servers = async { tokio::join!(grpc, http, metrics) };
    let drain_timeout = Duration::from_millis(cfg.drain_timeout_ms);
    let stopped = stop.fired();
    let deadline = async move {
        stopped.await;
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
