//! Ferry Registry, the control plane: registers ONNX models in MLflow, moves
//! versions through stages and aliases, and streams every change.

#[cfg(test)]
mod adapter_tests;
pub mod auth;
pub mod config;
mod console;
mod convert;
pub mod error;
pub mod files;
mod grpc;
pub mod history;
mod http;
pub mod hub;
mod metrics;
mod onnx;
pub mod register;
pub mod rollout;
pub mod service;
pub mod webhook;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use ferry_proto::registry::v1::model_registry_server::ModelRegistryServer;
use ferry_telemetry::Plane;
use tokio::sync::watch;
use tracing::info;

pub use crate::config::Config;
use crate::hub::Hub;

/// Runs the service until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let mlflow = ferry_mlflow::Client::new(cfg.mlflow.config()?).context("MLflow client")?;
    let client_tls = ferry_tls::ClientTls::load(&cfg.client_tls)?;
    let ports = ferry_server::Ports::bind(&cfg.tls, cfg.grpc_addr, cfg.http_addr, cfg.metrics_addr).await?;

    let hub = Hub::new(cfg.history, 4096);
    let (healthy_tx, healthy) = watch::channel(false);
    let reconciler =
        tokio::spawn(Arc::clone(&hub).run(mlflow.clone(), Duration::from_millis(cfg.poll_interval_ms), healthy_tx));

    // Health follows MLflow reachability: without it the registry can do nothing.
    let (reporter, health) = tonic_health::server::health_reporter();
    let services = vec![<ModelRegistryServer<grpc::RegistryService> as tonic::server::NamedService>::NAME];
    ferry_server::follow_health(reporter, services, healthy.clone()).await;

    // Rollouts are decided here, once for the fleet, from the replicas' reports.
    let traffic = Arc::new(rollout::Traffic::default());
    // Held until the process ends: a temporary cache folder is removed then.
    let (file_cache, _temporary) = match &cfg.file_cache_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp =
                tempfile::Builder::new().prefix("ferry-registry-files-").tempdir().context("file cache folder")?;
            (tmp.path().to_owned(), Some(tmp))
        }
    };
    let files = Arc::new(files::ModelFiles::new(
        mlflow.clone(),
        Arc::clone(&hub),
        file_cache,
        cfg.max_model_bytes,
        cfg.file_cache_versions,
        Duration::from_millis(cfg.download_stall_ms),
    ));
    let metrics_sources = metrics::Sources {
        hub: Arc::clone(&hub),
        mlflow: mlflow.clone(),
        traffic: Arc::clone(&traffic),
        files: Arc::clone(&files),
    };
    let registry = service::Registry {
        mlflow: mlflow.clone(),
        hub,
        experiment: cfg.experiment.clone(),
        max_model_bytes: cfg.max_model_bytes,
        upload_dir: cfg.upload_dir.clone(),
        path_root: cfg.register_path_root.clone(),
    };
    let named = match &cfg.named_tokens {
        Some(t) => auth::Auth::parse_named(t.expose()).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    // The single token has every right; named tokens carry their own roles.
    let single = cfg.auth_token.as_ref().map(|t| auth::Token {
        name: "token".into(),
        role: auth::Role::Admin,
        secret: t.expose().to_owned(),
    });
    let auth = auth::Auth::with_tokens(single.into_iter().chain(named), cfg.protect_reads);
    if auth.is_open() {
        if !cfg.allow_unauthenticated {
            anyhow::bail!(
                "no FERRY_REGISTRY_TOKEN or FERRY_REGISTRY_TOKENS: every registration, promotion and policy change \
                 would be open to anyone who reaches this registry. Set a token, or FERRY_ALLOW_UNAUTHENTICATED=true \
                 to run open on purpose (local development)"
            );
        }
        tracing::warn!(
            "RUNNING WITHOUT AUTHENTICATION (FERRY_ALLOW_UNAUTHENTICATED): anyone who reaches this registry's ports \
             can register models, move aliases and stages, and change traffic policies"
        );
    }
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

    let secret = cfg.webhook_secret.as_ref().map(ferry_telemetry::Secret::expose);
    let peers = cfg
        .peers
        .as_deref()
        .and_then(|list| webhook::Peers::parse(list, secret, ports.tls.is_some().then(|| client_tls.clone())));
    if let (Some(p), Some(list)) = (&peers, &cfg.peers) {
        info!(peers = %list, "verified webhook deliveries are passed on to the registry peers");
        if !p.shares_traffic() {
            tracing::warn!(
                "FERRY_REGISTRY_PEERS without FERRY_WEBHOOK_SECRET: webhooks are not verified and traffic reports are \
                 not shared, so each registry replica decides rollouts on the share of the fleet reporting to it"
            );
        }
    }
    tokio::spawn(rollout::run(registry.clone(), Arc::clone(&traffic)));
    let (trigger, stop) = ferry_server::stop_signal();
    tokio::spawn(async move {
        shutdown.await;
        trigger.stop();
    });
    info!(
        grpc = %ports.grpc.local_addr(),
        http = %ports.http.local_addr(),
        mlflow = %cfg.mlflow.url,
        tls = ports.describe_tls(),
        "ferry-registry listening"
    );
    let grpc = ferry_server::with_common_services(ferry_server::grpc_server(Plane::Control), health)?
        .add_service(
            ModelRegistryServer::new(grpc::RegistryService {
                registry: registry.clone(),
                auth: auth.clone(),
                traffic: Arc::clone(&traffic),
                files,
                peers: peers.clone(),
            })
            .max_decoding_message_size(8 << 20),
        )
        .serve_with_incoming_shutdown(ports.grpc.incoming(), stop.fired());
    let http = ferry_server::serve_http(
        ports.http,
        Plane::Control,
        http::router(http::Routes { registry, auth, webhooks: verifier, peers, traffic, ready: healthy }),
        &stop,
    );
    let metrics = ferry_server::serve_plain(ports.metrics, metrics::router(metrics_sources), &stop);
    let (g, h, m) = tokio::join!(grpc, http, metrics);
    g.context("gRPC server")?;
    h.context("HTTP server")?;
    m.context("metrics server")?;
    reconciler.abort();
    info!("ferry-registry stopped");
    Ok(())
}
