use std::{net::SocketAddr, path::PathBuf};

use ferry_mlflow::MlflowArgs;
use ferry_telemetry::{Secret, TelemetryArgs};

/// Ferry Registry: the ModelRegistry gRPC service over MLflow.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ferry-registry", version)]
pub struct Config {
    /// gRPC listen address (ModelRegistry, health, reflection).
    #[arg(long, env = "FERRY_REGISTRY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (MLflow webhooks, /register-model, /set-model-stage).
    #[arg(long, env = "FERRY_REGISTRY_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub mlflow: MlflowArgs,
    /// Bearer token with every right (role admin), required by mutating calls (gRPC and
    /// HTTP); its callers are named `token` in the moves recorded.
    #[arg(long, env = "FERRY_REGISTRY_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Secret>,
    /// Named tokens, `name=token` or `name:role=token`, comma-separated: each caller's
    /// name is recorded with the moves it makes. Roles: read, replica (read and report
    /// traffic: inference replicas), write (the default), admin.
    #[arg(long, env = "FERRY_REGISTRY_TOKENS", hide_env_values = true)]
    pub named_tokens: Option<Secret>,
    /// Run with no token at all, every mutating call open to anyone who reaches the ports
    /// (local development only); without a token and without this flag the registry does not start.
    #[arg(long, env = "FERRY_ALLOW_UNAUTHENTICATED", default_value_t = false)]
    pub allow_unauthenticated: bool,
    /// Prometheus /metrics listen address (a separate port from the webhook receiver).
    #[arg(long, env = "FERRY_REGISTRY_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,
    /// Require the token for reads too (GetModel, ListModels, WatchModels, ...).
    #[arg(long, env = "FERRY_PROTECT_READS", default_value_t = false)]
    pub protect_reads: bool,
    /// Secret shared with MLflow to sign webhook deliveries; enables /webhooks/mlflow.
    #[arg(long, env = "FERRY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// This registry's HTTP base URL as MLflow reaches it (e.g. http://registry:8081).
    /// With a webhook secret, the registry creates or repairs its webhook in MLflow.
    #[arg(long, env = "FERRY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Accepted clock difference for webhook timestamps, in seconds.
    #[arg(long, env = "FERRY_WEBHOOK_WINDOW_S", default_value_t = 300)]
    pub webhook_window_s: u64,
    /// MLflow experiment that holds the runs registrations create.
    #[arg(long, env = "FERRY_EXPERIMENT", default_value = "ferry-registrations")]
    pub experiment: String,
    /// How often to reconcile with MLflow, in milliseconds.
    #[arg(long, env = "FERRY_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub poll_interval_ms: u64,
    /// Changes kept for subscribers that reconnect.
    #[arg(long, env = "FERRY_HISTORY", default_value_t = 10_000)]
    pub history: usize,
    /// Largest model accepted: the sum of its files (graph and external data), in bytes.
    #[arg(long, env = "FERRY_MAX_MODEL_BYTES", default_value_t = 16 << 30)]
    pub max_model_bytes: u64,
    /// The folder `POST /register-model` may read server-side `path`s from
    /// (a shared volume for CI pipelines). Unset, server-side paths are refused.
    #[arg(long, env = "FERRY_REGISTER_PATH_ROOT")]
    pub register_path_root: Option<PathBuf>,
    /// Where uploads are spooled while they stream in.
    #[arg(long, env = "FERRY_UPLOAD_DIR", default_value_os_t = std::env::temp_dir())]
    pub upload_dir: PathBuf,
    /// Where the registry keeps the model files it serves to inference replicas (each
    /// downloaded from MLflow once). Unset: a fresh temporary folder, removed at exit.
    #[arg(long, env = "FERRY_FILE_CACHE_DIR")]
    pub file_cache_dir: Option<PathBuf>,
    /// Versions of each model kept in the file cache (the newest).
    #[arg(long, env = "FERRY_FILE_CACHE_VERSIONS", default_value_t = 3)]
    pub file_cache_versions: usize,
    /// A model file download from MLflow that gets no byte for this long is
    /// abandoned (the replica asking then reads from MLflow itself), in milliseconds.
    #[arg(long, env = "FERRY_DOWNLOAD_STALL_MS", default_value_t = 30_000)]
    pub download_stall_ms: u64,
    /// The other registry replicas, `host:port` of their HTTP listeners, comma-separated
    /// (in Kubernetes, a headless Service's name: every address it resolves to). A
    /// verified MLflow webhook delivery is passed on to each, so a change reaches
    /// subscribers of every replica at once, not at the next poll.
    #[arg(long, env = "FERRY_REGISTRY_PEERS")]
    pub peers: Option<String>,
    #[command(flatten)]
    pub tls: ferry_tls::ServerTlsArgs,
    /// How this registry verifies its peers when they serve TLS (FERRY_TLS_CA).
    #[command(flatten)]
    pub client_tls: ferry_tls::ClientTlsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
