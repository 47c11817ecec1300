use std::{net::SocketAddr, path::PathBuf};

use ferry_mlflow::MlflowArgs;
use ferry_telemetry::TelemetryArgs;

use crate::spec::ModelSpec;

/// Ferry Inference: serves ONNX models from MLflow over gRPC and REST.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ferry-inference", version)]
pub struct Config {
    /// Models to serve: name:Stage, name@alias or name/version (repeat, or comma-separate).
    #[arg(long = "model", env = "FERRY_MODELS", value_delimiter = ',', required_unless_present_any = ["remote_models", "models_file"])]
    pub models: Vec<ModelSpec>,
    /// Models served by forwarding over the Open Inference Protocol to the server named
    /// in the registered model's `ferry.remote_endpoint` tag (same syntax as --model).
    #[arg(long = "remote-model", env = "FERRY_REMOTE_MODELS", value_delimiter = ',')]
    pub remote_models: Vec<ModelSpec>,
    /// For emergencies: hold a model (`iris=7`) or one variant of its traffic policy
    /// (`iris#challenger=7`) at a version, overriding the registry; status says so.
    #[arg(long = "pin", env = "FERRY_PIN", value_delimiter = ',')]
    pub pins: Vec<crate::spec::PinArg>,
    /// A TOML file of models with per-model settings (see README); merged with --model.
    #[arg(long, env = "FERRY_MODELS_FILE")]
    pub models_file: Option<PathBuf>,
    /// gRPC listen address (Inference, health, reflection).
    #[arg(long, env = "FERRY_INFERENCE_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (REST /predict, health).
    #[arg(long, env = "FERRY_INFERENCE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// The registry's gRPC URL to follow WatchModels from; without it, MLflow is polled.
    #[arg(long, env = "FERRY_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Bearer token presented to the registry: reporting traffic figures (which
    /// drive rollouts) is a write, and reads need it when the registry protects them.
    #[arg(long, env = "FERRY_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<ferry_telemetry::Secret>,
    /// API keys callers must present on every prediction and metadata call (gRPC and
    /// HTTP), `name=key` or `key`, comma-separated (16 characters or more), as
    /// `Authorization: Bearer <key>` or `x-api-key: <key>`. Health checks, /openapi.json
    /// and the console's page stay open. Unset: the prediction APIs are open (a warning says so).
    #[arg(long, env = "FERRY_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<ferry_telemetry::Secret>,
    /// Prometheus /metrics listen address (a separate port).
    #[arg(long, env = "FERRY_INFERENCE_METRICS_ADDR", default_value = "127.0.0.1:9091")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub tls: ferry_tls::ServerTlsArgs,
    /// How https:// registries and remote OIP servers are verified (FERRY_TLS_CA) and the
    /// client certificate presented to them (mutual TLS).
    #[command(flatten)]
    pub client_tls: ferry_tls::ClientTlsArgs,
    #[command(flatten)]
    pub mlflow: MlflowArgs,
    /// Path of libonnxruntime.so (the one from the onnxruntime Python wheel works).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: PathBuf,
    /// Where downloaded model files are kept.
    #[arg(long, env = "FERRY_MODEL_DIR", default_value = ".ferry/models")]
    pub model_dir: PathBuf,
    /// ONNX Runtime sessions per model, each on its own thread: model calls
    /// that run at once. Concurrent requests are stacked into batches, so one
    /// session with every core usually serves best (BENCHMARKS.md).
    #[arg(long, env = "FERRY_SESSIONS", default_value_t = 1)]
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session; 0 means one per available core.
    #[arg(long, env = "FERRY_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Single-threaded sessions per batchable model that compute batches side
    /// by side while requests queue up; the multi-threaded session serves
    /// when they do not (lowest latency alone). They share the version's
    /// weights: default one per core for models up to 64 MiB (ONNX file and
    /// external data); 0 = off.
    #[arg(long, env = "FERRY_THROUGHPUT_SESSIONS")]
    pub throughput_sessions: Option<usize>,
    /// ONNX Runtime inter-op threads per session.
    #[arg(long, env = "FERRY_INTER_THREADS", default_value_t = 1)]
    pub inter_threads: usize,
    /// Graph optimization level: 0 (off), 1 (basic), 2 (extended), 3 (all).
    #[arg(long, env = "FERRY_OPT_LEVEL", default_value_t = 3)]
    pub optimization_level: u8,
    /// Most rows stacked into one model call from concurrent requests (1 = no
    /// batching). Applies only to models whose inputs and outputs all have a
    /// dynamic first dimension.
    #[arg(long, env = "FERRY_MAX_BATCH_ROWS", default_value_t = 128)]
    pub max_batch_rows: usize,
    /// How long a busy model may hold a batch open for more requests, in
    /// microseconds. 0 takes only what is already queued; an idle model never waits.
    #[arg(long, env = "FERRY_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Models whose single-row run is faster than this (microseconds) run on
    /// the thread that decoded the request whenever none is queued, instead of
    /// being handed to a model thread. 0 disables.
    #[arg(long, env = "FERRY_INLINE_BELOW_US", default_value_t = 50)]
    pub inline_below_us: u64,
    /// Let ONNX Runtime's pool threads spin a while before they sleep (only a
    /// session with more than one intra-op thread has a pool). Spinning
    /// serves a lone caller faster (the medium MLP 3-29 %), but spinning
    /// threads compete with other work: 4-19 % of throughput at 64 callers,
    /// 12-54 % with another process busy on the same cores; turn it off under
    /// a CPU quota or on shared cores (BENCHMARKS.md, threads). Unset: on
    /// while the process serves no more models than it has cores, off beyond,
    /// where the models' pools would spin against each other.
    #[arg(long, env = "FERRY_ORT_SPINNING", action = clap::ArgAction::Set)]
    pub ort_spinning: Option<bool>,
    /// Leave ONNX Runtime's own telemetry on. Its recent official Linux builds (1.31
    /// on) report usage to Microsoft and keep a device id and an event cache
    /// under `~/.cache/Microsoft`, outside the places Ferry is configured to
    /// write. Off unless asked for: the process sets `ORT_DISABLE_TELEMETRY=1`
    /// before ONNX Runtime loads.
    #[arg(long, env = "FERRY_ORT_TELEMETRY", default_value_t = false, action = clap::ArgAction::Set)]
    pub ort_telemetry: bool,
    /// Warm-up runs on zero inputs before a new version is swapped in.
    #[arg(long, env = "FERRY_WARMUP_RUNS", default_value_t = 1)]
    pub warmup_runs: usize,
    /// Largest model version accepted: the sum of its files (ONNX graph and
    /// external data), in bytes. Models over 2 GB keep weights as external data.
    #[arg(long, env = "FERRY_MAX_MODEL_BYTES", default_value_t = 16 << 30)]
    pub max_model_bytes: u64,
    /// A model download that receives no byte for this long (milliseconds) is cut and
    /// resumed where it stopped; after 5 such attempts in a row the version fails to load
    /// (the serving one stays) and is tried again later.
    #[arg(long, env = "FERRY_DOWNLOAD_STALL_MS", default_value_t = 30_000)]
    pub download_stall_ms: u64,
    /// How often to poll MLflow while the registry stream is down, in milliseconds.
    #[arg(long, env = "FERRY_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub poll_interval_ms: u64,
    /// Model files kept on disk per model, for fast rollback.
    #[arg(long, env = "FERRY_KEEP_VERSIONS", default_value_t = 3)]
    pub keep_versions: usize,
    /// Requests in flight per model before new ones get RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "FERRY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Largest request body, in bytes (gRPC and HTTP).
    #[arg(long, env = "FERRY_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,
    /// On shutdown, how long to keep serving while reporting not-ready, so load
    /// balancers stop sending first (milliseconds).
    #[arg(long, env = "FERRY_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
    /// Then, how long in-flight requests may take to finish before exit (milliseconds).
    #[arg(long, env = "FERRY_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// Output REST /predict returns (default: the first float32 output).
    #[arg(long, env = "FERRY_REST_OUTPUT")]
    pub rest_output: Option<String>,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
