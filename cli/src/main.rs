//! `ferryctl`: a thin command-line client for Ferry's gRPC APIs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ferry_proto::{
    inference::v1::{
        DataType, GetModelMetadataRequest, ListModelsRequest as ListServedRequest, PredictRequest,
        inference_client::InferenceClient,
    },
    registry::v1::{
        GetTrafficPolicyRequest, ListModelsRequest, ListMovesRequest, ListVersionsRequest, ModelFile,
        RegisterModelMetadata, RegisterModelRequest, ResolveVersionRequest, RollbackRequest, SetAliasRequest,
        SetTrafficPolicyRequest, Stage, TrafficPolicy, TransitionStageRequest, WatchModelsRequest,
        model_registry_client::ModelRegistryClient, register_model_request::Payload, resolve_version_request,
        rollback_request,
    },
};
use futures::StreamExt;

mod contexts;
mod output;
mod tensors;
use tonic::Code;

#[derive(Debug, Parser)]
#[command(name = "ferryctl", version, about = "Register, promote and query models through Ferry")]
struct Cli {
    /// The registry's gRPC URL.
    #[arg(long, env = "FERRY_REGISTRY_URL", default_value = "http://127.0.0.1:50051", global = true)]
    registry: String,
    /// The inference service's gRPC URL.
    #[arg(long, env = "FERRY_INFERENCE_URL", default_value = "http://127.0.0.1:50052", global = true)]
    inference: String,
    /// Bearer token for the registry's mutating calls.
    #[arg(long, env = "FERRY_REGISTRY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// API key for the inference service, when it requires one (its FERRY_API_KEYS).
    #[arg(long, env = "FERRY_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// PEM CA certificates that https:// services are verified against, instead of the system's.
    #[arg(long, env = "FERRY_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for services that require one (mutual TLS), with --tls-client-key.
    #[arg(long, env = "FERRY_TLS_CLIENT_CERT", global = true, requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "FERRY_TLS_CLIENT_KEY", global = true, requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// How `models`, `versions`, `show`, `health` and `serving` print: a table, or JSON lines.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: output::Output,
    /// A context of the config file (services and token variable); default: the file's `current`.
    #[arg(long, env = "FERRY_CONTEXT", global = true)]
    context: Option<String>,
    /// The config file with named contexts (default: ~/.config/ferry/config.toml, if present).
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Presents the inference service's API key (`x-api-key`) on every call, when one is configured.
#[derive(Clone)]
struct ApiKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("x-api-key", v.clone());
        }
        Ok(req)
    }
}

type Inference = InferenceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ApiKey>>;

/// The inference service's client, with the API key when one is configured.
async fn inference(to: &Services, key: Option<&str>) -> anyhow::Result<Inference> {
    let channel = to.channel(&to.inference).await?;
    let mut value = key.map(str::parse).transpose().context("the API key is not a valid header value")?;
    if let Some(v) = value.as_mut() {
        tonic::metadata::MetadataValue::set_sensitive(v, true);
    }
    Ok(InferenceClient::with_interceptor(channel, ApiKey(value)))
}

/// Wraps a message with the bearer token, when one is configured.
fn authed<T>(token: Option<&str>, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("{what} {t:?} is not key=value"))
        })
        .collect()
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Upload an ONNX model and register it as a new version.
    Register {
        #[arg(long)]
        name: String,
        /// The ONNX file, or a folder holding one; external data files the
        /// graph references are read from beside it and uploaded with it.
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// key=value, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Training-run metric, key=number, repeatable.
        #[arg(long = "metric")]
        metrics: Vec<String>,
        /// Training-run param, key=value, repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// Move a version to a stage (None, Staging, Production, Archived).
    Stage {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        stage: String,
        /// Archive the versions currently in that stage.
        #[arg(long)]
        archive_existing: bool,
        /// Why: recorded with the move in MLflow.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Point an alias at a version.
    Alias {
        #[arg(long)]
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long)]
        version: String,
        /// Why: recorded with the move in MLflow.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move an alias or a stage back to the version it designated before the last move made through Ferry.
    Rollback {
        name: String,
        #[arg(long, conflicts_with = "stage", required_unless_present = "stage")]
        alias: Option<String>,
        #[arg(long)]
        stage: Option<String>,
        /// Why: recorded with the move in MLflow.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The alias and stage moves made through Ferry: who, when, why (JSON lines, oldest first).
    History { name: String },
    /// Registered models: aliases and the newest version per stage.
    Models,
    /// A model's versions: stage, aliases, digest.
    Versions { name: String },
    /// One version: NAME (newest), NAME/VERSION, NAME@ALIAS or NAME:Stage.
    Show { model: String },
    /// Both services: reachable and serving, and each served model's state and last error.
    Health,
    /// What the inference service serves: each model, its version and state, and its variants.
    Serving,
    /// Print model changes as they happen (JSON lines).
    Watch {
        /// Only these models (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// A model's traffic policy (README, "Traffic policies").
    Policy {
        #[command(subcommand)]
        action: PolicyCmd,
    },
    /// Rollouts of traffic policies (README, "Rollout plans").
    Rollout {
        #[command(subcommand)]
        action: RolloutCmd,
    },
    /// The config file's contexts, and which one is in use.
    Contexts,
    /// A shell completion script: `ferryctl completions bash > /etc/bash_completion.d/ferryctl`.
    Completions { shell: clap_complete::Shell },
    /// Predict: one row of numbers (--data), or JSON (--json FILE, `-` for stdin) mapping input
    /// names to nested arrays (or one nested array for a one-input model), typed by the
    /// model's signature. Prints the outputs as nested arrays, with the version and variant.
    Predict {
        #[arg(long)]
        model: String,
        /// Input name for --data (default: the model's first input).
        #[arg(long)]
        input: Option<String>,
        /// One row, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            allow_hyphen_values = true,
            conflicts_with = "json",
            required_unless_present = "json"
        )]
        data: Vec<f64>,
        /// A JSON file of inputs; `-` reads stdin.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Promote a version: point an alias at it, or move it to a stage.
    Promote {
        name: String,
        version: String,
        #[arg(long, conflicts_with = "stage", required_unless_present = "stage")]
        alias: Option<String>,
        /// None, Staging, Production or Archived.
        #[arg(long)]
        stage: Option<String>,
        /// With --stage: archive the versions already there.
        #[arg(long, requires = "stage")]
        archive_existing: bool,
        /// Why: recorded with the move in MLflow.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Print the policy and the version each variant designates now.
    Get { name: String },
    /// Validate a policy (a JSON file, `-` for stdin) and set it in MLflow.
    Set { name: String, file: PathBuf },
    /// Remove the policy: the configured selector serves alone.
    Clear { name: String },
}

#[derive(Debug, Subcommand)]
enum RolloutCmd {
    /// The rolled-out variant's weight and plan, and the last decision with its figures.
    Status { name: String },
}

const CHUNK: usize = 1 << 20;

const VERSION_HEADERS: &[&str] = &["NAME", "VERSION", "STAGE", "ALIASES", "SHA256", "SOURCE"];

fn version_row(v: &ferry_proto::registry::v1::ModelVersion) -> Vec<String> {
    vec![
        v.name.clone(),
        v.version.clone(),
        stage_name(v.stage()).to_owned(),
        v.aliases.join(" "),
        v.sha256.clone(),
        v.source.clone(),
    ]
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::None | Stage::Unspecified => "None",
        Stage::Staging => "Staging",
        Stage::Production => "Production",
        Stage::Archived => "Archived",
    }
}

/// Where the services are and how to connect to them.
struct Services {
    registry: String,
    inference: String,
    tls: ferry_tls::ClientTls,
}

impl Services {
    fn of(cli: &Cli) -> anyhow::Result<Self> {
        let identity = cli.tls_client_cert.as_deref().zip(cli.tls_client_key.as_deref());
        let tls = ferry_tls::ClientTls::from_files(cli.tls_ca.as_deref(), identity)?;
        Ok(Self { registry: cli.registry.clone(), inference: cli.inference.clone(), tls })
    }

    /// A connection to the service at `url`: TLS when it is `https://`.
    async fn channel(&self, url: &str) -> anyhow::Result<tonic::transport::Channel> {
        Ok(self.tls.endpoint(url)?.connect_timeout(std::time::Duration::from_secs(5)).connect().await?)
    }
}

/// The registry's client.
async fn registry(to: &Services) -> anyhow::Result<ModelRegistryClient<tonic::transport::Channel>> {
    Ok(ModelRegistryClient::new(to.channel(&to.registry).await?))
}

/// A service's gRPC health, or why it cannot be read.
async fn health(to: &Services, url: &str) -> anyhow::Result<String> {
    let channel = to.channel(url).await?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await?
        .into_inner()
        .status();
    Ok(status.as_str_name().to_owned())
}

fn parse_stage(stage: &str) -> anyhow::Result<Stage> {
    Ok(match stage.to_ascii_lowercase().as_str() {
        "none" => Stage::None,
        "staging" => Stage::Staging,
        "production" => Stage::Production,
        "archived" => Stage::Archived,
        other => bail!("unknown stage {other:?} (None, Staging, Production or Archived)"),
    })
}

fn print_policy(p: &TrafficPolicy) {
    let variants: Vec<_> = p
        .variants
        .iter()
        .map(|v| serde_json::json!({"name": v.name, "selector": v.selector, "weight": v.weight, "version": v.version}))
        .collect();
    let policy: serde_json::Value = serde_json::from_str(&p.policy_json).unwrap_or(serde_json::Value::Null);
    // The last rollout decision (started, advanced, completed, rolled_back and why).
    let rollout: serde_json::Value = serde_json::from_str(&p.rollout_status).unwrap_or(serde_json::Value::Null);
    println!("{}", serde_json::json!({"name": p.name, "policy": policy, "variants": variants, "rollout": rollout}));
}

/// One model's rollout: the variant moved (by the plan in force, else the
/// last decision), its version and weight now, the plan's steps, and the last
/// decision with the step's figures and, after a breach, why.
fn rollout_row(name: &str, p: &TrafficPolicy) -> Vec<String> {
    let policy: serde_json::Value = serde_json::from_str(&p.policy_json).unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(&p.rollout_status).unwrap_or_default();
    let plan = &policy["rollout"];
    let variant = plan["variant"].as_str().or(status["variant"].as_str()).unwrap_or_default();
    let current = p.variants.iter().find(|v| v.name == variant);
    let steps = plan["steps"].as_array().map_or_else(
        || "none in force".to_owned(),
        |s| s.iter().map(|w| format!("{w}%")).collect::<Vec<_>>().join(" → "),
    );
    let f = &status["figures"];
    let mut figures = Vec::new();
    if let (Some(q), Some(e)) = (f["requests"].as_u64(), f["errors"].as_u64()) {
        figures.push(format!("{q} requests, {e} failed"));
    }
    if let (Some(p99), Some(other)) = (f["p99_ms"].as_f64(), f["other_p99_ms"].as_f64()) {
        figures.push(format!("p99 {p99:.1} ms vs {other:.1} ms"));
    }
    if let Some(a) = f["agreement"].as_f64() {
        figures.push(format!("agreement {:.1}%", a * 100.0));
    }
    let state = status["state"].as_str().unwrap_or("none");
    let decision = match status["alias"]["to"].as_str() {
        Some(to) => format!("{state} (@{} → {to})", status["alias"]["alias"].as_str().unwrap_or_default()),
        None => state.to_owned(),
    };
    vec![
        name.to_owned(),
        if variant.is_empty() { "-".to_owned() } else { variant.to_owned() },
        current.map_or_else(|| "-".to_owned(), |v| v.version.clone()),
        current.map_or_else(|| "-".to_owned(), |v| format!("{}%", v.weight)),
        steps,
        decision,
        figures.join(", "),
        status["reason"].as_str().unwrap_or_default().to_owned(),
    ]
}

/// The files of the model at `path` (an ONNX file, or a folder with one):
/// the graph first, then the external data files it references, each with
/// its path relative to the model's folder.
fn model_files(path: &std::path::Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let (dir, graph) = if path.is_dir() {
        let graphs: Vec<String> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".onnx"))
            .collect();
        let [one] = graphs.as_slice() else {
            bail!("{} must hold exactly one .onnx file; it has {}", path.display(), graphs.len());
        };
        (path.to_owned(), one.clone())
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).context("not a file name")?;
        (path.parent().map(PathBuf::from).unwrap_or_default(), name.to_owned())
    };
    let refs = std::fs::File::open(dir.join(&graph))
        .and_then(ferry_artifact::external_data)
        .with_context(|| format!("reading {}", dir.join(&graph).display()))?;
    Ok(std::iter::once(graph).chain(refs).map(|rel| (rel.clone(), dir.join(rel))).collect())
}

/// Exit codes by error class (sysexits): scripts can tell "retry later"
/// from "fix the request" from "fix the credentials".
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
        Some(Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists) => 65,
        Some(Code::NotFound) => 66,
        Some(Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted) => 69,
        Some(Code::Unauthenticated | Code::PermissionDenied) => 77,
        Some(Code::FailedPrecondition) => 75,
        Some(Code::Ok | Code::Cancelled | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss) => 70,
        // No status: the service could not be reached, or a local file or argument is wrong.
        None if e.downcast_ref::<tonic::transport::Error>().is_some() => 69,
        None => 64,
    }
}

/// One line that says what failed and what to do; never a backtrace.
fn describe(e: &anyhow::Error, service: &str, url: &str) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        let hint = match s.code() {
            Code::Unavailable => format!("; is the {service} up, and can it reach MLflow?"),
            Code::Unauthenticated => "; set FERRY_REGISTRY_TOKEN or pass --token".to_owned(),
            Code::DeadlineExceeded => "; the service or MLflow is slow, retry".to_owned(),
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => String::new(),
        };
        // A refused client certificate (TLS 1.3) shows only once the call is sent.
        let mut cause = String::new();
        let mut source = std::error::Error::source(s);
        while let Some(e) = source {
            cause = format!("{cause}: {e}");
            source = e.source();
        }
        // A status the server sent has no source; one made from a broken connection does.
        let hint = if url.starts_with("https://") && !cause.is_empty() {
            "; the connection broke after the TLS handshake: if the server requires a client certificate \
             (mutual TLS), pass --tls-client-cert and --tls-client-key with one its CA signed"
                .to_owned()
        } else {
            hint
        };
        return format!("{service} at {url}: {} ({:?}){hint}", s.message(), s.code());
    }
    if e.downcast_ref::<tonic::transport::Error>().is_some() {
        let chain = format!("{e:#}");
        let hint = if chain.contains("certificate") || chain.contains("Certificate") {
            "its certificate is not trusted here, or it requires a client certificate: see --tls-ca and --tls-client-cert"
        } else if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
            "it may speak TLS: use an https:// URL"
        } else {
            "is it running?"
        };
        return format!("cannot reach the {service} at {url} ({chain}); {hint}");
    }
    format!("{e:#}")
}

/// Parses the command line, then fills what flags and environment left at
/// their defaults from the chosen context.
fn parse() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches)?;
    // `promote` is `alias` or `stage` by another name.
    if let Cmd::Promote { name, version, alias, stage, archive_existing, reason } = &cli.cmd {
        let (name, version, reason) = (name.clone(), version.clone(), reason.clone());
        cli.cmd = match (alias.clone(), stage.clone()) {
            (Some(alias), _) => Cmd::Alias { name, alias, version, reason },
            (None, Some(stage)) => Cmd::Stage { name, version, stage, archive_existing: *archive_existing, reason },
            (None, None) => bail!("promote to --alias or --stage"),
        };
    }
    let defaulted = |id: &str| matches.value_source(id).is_none_or(|s| s == ValueSource::DefaultValue);
    let (config, _) = contexts::Config::load(cli.config.as_ref())?;
    if let Some((name, ctx)) = config.pick(cli.context.as_deref())? {
        if let (true, Some(url)) = (defaulted("registry"), ctx.registry) {
            cli.registry = url;
        }
        if let (true, Some(url)) = (defaulted("inference"), ctx.inference) {
            cli.inference = url;
        }
        if let (None, Some(var)) = (&cli.token, ctx.token_env) {
            cli.token = std::env::var(&var).ok();
            if cli.token.is_none()
                && matches!(
                    cli.cmd,
                    Cmd::Register { .. } | Cmd::Stage { .. } | Cmd::Alias { .. } | Cmd::Rollback { .. }
                )
            {
                bail!("context {name:?} reads its token from ${var}, which is not set");
            }
        }
    }
    Ok(cli)
}

fn main() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("ferryctl: {e:#}");
            return std::process::ExitCode::from(78); // EX_CONFIG
        }
    };
    let (service, url) = match cli.cmd {
        Cmd::Predict { .. } => ("inference service", cli.inference.clone()),
        Cmd::Serving => ("inference service", cli.inference.clone()),
        Cmd::Register { .. }
        | Cmd::Models
        | Cmd::Versions { .. }
        | Cmd::Show { .. }
        | Cmd::Health
        | Cmd::Stage { .. }
        | Cmd::Alias { .. }
        | Cmd::Rollback { .. }
        | Cmd::History { .. }
        | Cmd::Watch { .. }
        | Cmd::Policy { .. }
        | Cmd::Rollout { .. }
        | Cmd::Contexts
        | Cmd::Promote { .. }
        | Cmd::Completions { .. } => ("registry", cli.registry.clone()),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferryctl: cannot start: {e}");
            return std::process::ExitCode::from(71);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl: {}", describe(&e, service, &url));
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let to = Services::of(&cli)?;
    match cli.cmd {
        Cmd::Register { name, file, description, tags, metrics, params } => {
            // The graph and its external data files, hashed as the registry will.
            let files = model_files(&file)?;
            let mut digests = Vec::with_capacity(files.len());
            for (rel, path) in &files {
                let (sha256, size) = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || ferry_artifact::hash_file(&path)
                })
                .await?
                .with_context(|| format!("reading {}", path.display()))?;
                digests.push(ferry_artifact::FileDigest { path: rel.clone(), sha256, size });
            }
            let metrics = pairs(&metrics, "metric")?
                .into_iter()
                .map(|(k, v)| Ok((k, v.parse::<f64>().with_context(|| format!("metric value {v:?}"))?)))
                .collect::<anyhow::Result<_>>()?;
            let meta = RegisterModelMetadata {
                name,
                description,
                tags: pairs(&tags, "tag")?.into_iter().collect(),
                expected_sha256: ferry_artifact::ModelDigest::of(&digests),
                metrics,
                params: pairs(&params, "param")?.into_iter().collect(),
            };
            let first = RegisterModelRequest { payload: Some(Payload::Metadata(meta)) };
            // Each file named (a model in one file needs no name), then streamed in
            // chunks: the model may be far larger than memory allows.
            let named = files.len() > 1;
            let chunks = futures::stream::iter(files).flat_map(move |(rel, path)| {
                let header =
                    named.then_some(RegisterModelRequest { payload: Some(Payload::File(ModelFile { path: rel })) });
                let body = futures::stream::once(tokio::fs::File::open(path))
                    .filter_map(|f| async move { f.ok() })
                    .flat_map(|f| {
                        futures::stream::unfold(f, |mut f| async move {
                            use tokio::io::AsyncReadExt;
                            let mut buf = vec![0u8; CHUNK];
                            match f.read(&mut buf).await {
                                Ok(0) | Err(_) => None,
                                Ok(n) => {
                                    buf.truncate(n);
                                    Some((RegisterModelRequest { payload: Some(Payload::Chunk(buf)) }, f))
                                }
                            }
                        })
                    });
                futures::stream::iter(header).chain(body)
            });
            // Upload progress on a terminal (never in a pipe or a log).
            let total: u64 = digests.iter().map(|d| d.size).sum();
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr()) && total > CHUNK as u64;
            let mut sent = 0u64;
            let chunks = chunks.inspect(move |m| {
                if let (true, Some(Payload::Chunk(c))) = (show, &m.payload) {
                    sent += c.len() as u64;
                    eprint!(
                        "\ruploading {:>3}% ({:.1} of {:.1} MB)",
                        sent * 100 / total.max(1),
                        sent as f64 / 1e6,
                        total as f64 / 1e6
                    );
                    if sent >= total {
                        eprintln!();
                    }
                }
            });
            let mut client = registry(&to).await?;
            let resp = client
                .register_model(authed(cli.token.as_deref(), futures::stream::iter([first]).chain(chunks))?)
                .await?
                .into_inner();
            let v = resp.version.unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({"name": v.name, "version": v.version, "sha256": v.sha256, "created": resp.created})
            );
        }
        Cmd::Stage { name, version, stage, archive_existing, reason } => {
            let stage = parse_stage(&stage)?;
            let mut client = registry(&to).await?;
            let req = TransitionStageRequest {
                name,
                version,
                stage: stage.into(),
                archive_existing_versions: archive_existing,
                reason,
            };
            let v = client
                .transition_stage(authed(cli.token.as_deref(), req)?)
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            println!("{}", serde_json::json!({"name": v.name, "version": v.version, "stage": v.stage().as_str_name()}));
        }
        Cmd::Rollback { name, alias, stage, reason } => {
            let target = match (alias, stage) {
                (Some(a), _) => rollback_request::Target::Alias(a),
                (None, Some(s)) => rollback_request::Target::Stage(parse_stage(&s)?.into()),
                (None, None) => bail!("name --alias or --stage"),
            };
            let mut client = registry(&to).await?;
            let req = RollbackRequest { name, target: Some(target), reason };
            let r = client.rollback(authed(cli.token.as_deref(), req)?).await?.into_inner();
            let v = r.version.unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({"name": v.name, "version": v.version, "rolledBack": r.rolled_back_version,
                    "aliases": v.aliases, "stage": v.stage().as_str_name()})
            );
        }
        Cmd::Models => {
            let mut client = registry(&to).await?;
            let req = ListModelsRequest { page_size: 1000, ..Default::default() };
            let models = client.list_models(authed(cli.token.as_deref(), req)?).await?.into_inner().models;
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|m| {
                    let aliases: Vec<String> = m.aliases.iter().map(|(a, v)| format!("{a}→{v}")).collect();
                    let stages: Vec<String> =
                        m.latest_versions.iter().map(|v| format!("{}:{}", stage_name(v.stage()), v.version)).collect();
                    vec![m.name.clone(), aliases.join(" "), stages.join(" ")]
                })
                .collect();
            println!("{}", output::rows(cli.output, &["NAME", "ALIASES", "LATEST BY STAGE"], &rows));
        }
        Cmd::Versions { name } => {
            let mut client = registry(&to).await?;
            let req = ListVersionsRequest { name, page_size: 1000, ..Default::default() };
            let versions = client.list_versions(authed(cli.token.as_deref(), req)?).await?.into_inner().versions;
            let rows: Vec<Vec<String>> = versions.iter().map(version_row).collect();
            println!("{}", output::rows(cli.output, VERSION_HEADERS, &rows));
        }
        Cmd::Show { model } => {
            let mut client = registry(&to).await?;
            let v = match model.parse::<ferry_mlflow::ModelRef>() {
                Ok(r) => {
                    let selector = match r.selector {
                        ferry_mlflow::Selector::Alias(a) => resolve_version_request::Selector::Alias(a),
                        ferry_mlflow::Selector::Version(v) => resolve_version_request::Selector::Version(v),
                        ferry_mlflow::Selector::Stage(s) => {
                            resolve_version_request::Selector::Stage(parse_stage(&s)?.into())
                        }
                    };
                    let req = ResolveVersionRequest { name: r.name, selector: Some(selector) };
                    client.resolve_version(authed(cli.token.as_deref(), req)?).await?.into_inner().version
                }
                // A bare name: its newest version.
                Err(_) => {
                    let req = ListVersionsRequest { name: model.clone(), page_size: 1000, ..Default::default() };
                    let versions =
                        client.list_versions(authed(cli.token.as_deref(), req)?).await?.into_inner().versions;
                    versions.into_iter().max_by_key(|v| v.version.parse::<u64>().unwrap_or(0))
                }
            }
            .with_context(|| format!("{model} designates no version"))?;
            println!("{}", output::rows(cli.output, VERSION_HEADERS, &[version_row(&v)]));
        }
        Cmd::Health => {
            let mut rows = Vec::new();
            for (service, url) in [("registry", cli.registry.clone()), ("inference", cli.inference.clone())] {
                let state = health(&to, &url).await.unwrap_or_else(|e| format!("UNREACHABLE ({e:#})"));
                rows.push(vec![service.to_owned(), url, state, String::new()]);
            }
            if let Ok(mut client) = inference(&to, cli.api_key.as_deref()).await
                && let Ok(list) = client.list_models(ListServedRequest {}).await
            {
                for m in list.into_inner().models {
                    let state = m.state().as_str_name().trim_start_matches("MODEL_STATE_").to_owned();
                    rows.push(vec![format!("model {}", m.name), m.selector.clone(), state, m.last_error.clone()]);
                }
            }
            println!("{}", output::rows(cli.output, &["WHAT", "WHERE", "STATE", "LAST ERROR"], &rows));
        }
        Cmd::Serving => {
            let mut client = inference(&to, cli.api_key.as_deref()).await?;
            let models = client.list_models(ListServedRequest {}).await?.into_inner().models;
            let mut rows = Vec::new();
            for m in models {
                let state = m.state().as_str_name().trim_start_matches("MODEL_STATE_").to_owned();
                let verified = if m.verified { "verified" } else { "unverified" };
                rows.push(vec![
                    m.name.clone(),
                    String::new(),
                    m.selector.clone(),
                    m.serving_version.clone(),
                    state,
                    verified.into(),
                ]);
                for v in &m.variants {
                    let state = v.state().as_str_name().trim_start_matches("MODEL_STATE_").to_owned();
                    let share = if v.shadow_percent > 0 {
                        format!("shadow {}%", v.shadow_percent)
                    } else {
                        format!("{}%", v.weight)
                    };
                    rows.push(vec![
                        String::new(),
                        format!("{} ({share})", v.name),
                        v.selector.clone(),
                        v.serving_version.clone(),
                        state,
                        String::new(),
                    ]);
                }
            }
            let headers = ["MODEL", "VARIANT", "SELECTOR", "VERSION", "STATE", "DIGEST"];
            println!("{}", output::rows(cli.output, &headers, &rows));
        }
        Cmd::History { name } => {
            let mut client = registry(&to).await?;
            let moves = client.list_moves(authed(cli.token.as_deref(), ListMovesRequest { name })?).await?.into_inner();
            for m in moves.moves {
                let at = m.at.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({"target": m.target, "from": m.from_version, "to": m.to_version, "by": m.by,
                        "atMs": at, "reason": m.reason, "rollback": m.rollback})
                );
            }
        }
        Cmd::Alias { name, alias, version, reason } => {
            let mut client = registry(&to).await?;
            let v = client
                .set_alias(authed(cli.token.as_deref(), SetAliasRequest { name, alias, version, reason })?)
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            println!("{}", serde_json::json!({"name": v.name, "version": v.version, "aliases": v.aliases}));
        }
        Cmd::Policy { action } => {
            let mut client = registry(&to).await?;
            let token = cli.token.as_deref();
            let policy = match action {
                PolicyCmd::Get { name } => {
                    client
                        .get_traffic_policy(authed(token, GetTrafficPolicyRequest { name })?)
                        .await?
                        .into_inner()
                        .policy
                }
                PolicyCmd::Set { name, file } => {
                    let policy_json = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
                    };
                    let req = SetTrafficPolicyRequest { name, policy_json };
                    client.set_traffic_policy(authed(token, req)?).await?.into_inner().policy
                }
                PolicyCmd::Clear { name } => {
                    let req = SetTrafficPolicyRequest { name, policy_json: String::new() };
                    client.set_traffic_policy(authed(token, req)?).await?.into_inner().policy
                }
            };
            print_policy(&policy.unwrap_or_default());
        }
        Cmd::Promote { .. } => bail!("promote is rewritten to alias or stage when parsed"),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ferryctl", &mut std::io::stdout());
        }
        Cmd::Contexts => {
            let (config, path) = contexts::Config::load(cli.config.as_ref())?;
            let using = config.pick(cli.context.as_deref())?.map(|(n, _)| n);
            let rows: Vec<Vec<String>> = config
                .contexts
                .iter()
                .map(|(name, c)| {
                    vec![
                        if using.as_deref() == Some(name) { "*".into() } else { String::new() },
                        name.clone(),
                        c.registry.clone().unwrap_or_default(),
                        c.inference.clone().unwrap_or_default(),
                        c.token_env.clone().map(|v| format!("${v}")).unwrap_or_default(),
                    ]
                })
                .collect();
            if path.is_none() {
                eprintln!(
                    "ferryctl: no config file (looked for {})",
                    contexts::default_path()
                        .map_or_else(|| "~/.config/ferry/config.toml".into(), |p| p.display().to_string())
                );
            }
            println!("{}", output::rows(cli.output, &["CURRENT", "NAME", "REGISTRY", "INFERENCE", "TOKEN"], &rows));
        }
        Cmd::Rollout { action: RolloutCmd::Status { name } } => {
            let mut client = registry(&to).await?;
            let req = authed(cli.token.as_deref(), GetTrafficPolicyRequest { name: name.clone() })?;
            let policy = client.get_traffic_policy(req).await?.into_inner().policy.unwrap_or_default();
            let headers = ["MODEL", "VARIANT", "VERSION", "WEIGHT", "PLAN", "LAST DECISION", "FIGURES", "REASON"];
            println!("{}", output::rows(cli.output, &headers, &[rollout_row(&name, &policy)]));
        }
        Cmd::Watch { names } => {
            let mut client = registry(&to).await?;
            let mut stream = client
                .watch_models(authed(cli.token.as_deref(), WatchModelsRequest { names, ..Default::default() })?)
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                let v = e.model_version.clone().unwrap_or_default();
                match cli.output {
                    output::Output::Json => println!(
                        "{}",
                        serde_json::json!({"revision": e.revision, "kind": e.kind().as_str_name(), "name": e.name,
                            "version": e.version, "alias": e.alias, "stage": v.stage().as_str_name(), "aliases": v.aliases})
                    ),
                    // For people: one line a change, what moved where.
                    output::Output::Table => {
                        let kind = e.kind().as_str_name().trim_start_matches("CHANGE_KIND_").to_ascii_lowercase();
                        let what = match (e.alias.is_empty(), e.version.is_empty()) {
                            (false, false) => format!("{}@{} → {}", e.name, e.alias, e.version),
                            (false, true) => format!("{}@{}", e.name, e.alias),
                            (true, false) => format!("{}/{}", e.name, e.version),
                            (true, true) => e.name.clone(),
                        };
                        let stage = v.stage().as_str_name().trim_start_matches("STAGE_").to_ascii_lowercase();
                        let aliases =
                            if v.aliases.is_empty() { String::new() } else { format!(" @{}", v.aliases.join(" @")) };
                        let detail =
                            if e.model_version.is_some() { format!("  ({stage}{aliases})") } else { String::new() };
                        println!("#{:<6} {kind:<16} {what}{detail}", e.revision);
                    }
                }
            }
        }
        Cmd::Predict { model, input, data, json } => {
            let mut client = inference(&to, cli.api_key.as_deref()).await?;
            // The signature types the inputs: any dtype the model takes.
            let status = client
                .get_model_metadata(GetModelMetadataRequest { model: model.clone() })
                .await?
                .into_inner()
                .model
                .unwrap_or_default();
            let dtype_of = |name: &str| -> anyhow::Result<DataType> {
                let spec = status.inputs.iter().find(|i| i.name == name);
                spec.map(|i| i.dtype()).with_context(|| {
                    let names: Vec<_> = status.inputs.iter().map(|i| i.name.as_str()).collect();
                    format!("{model} has no input {name:?}; its inputs: {names:?}")
                })
            };
            let first = status.inputs.first().map(|i| i.name.clone()).unwrap_or_else(|| "input".into());
            let inputs = match json {
                None => {
                    let name = input.unwrap_or(first);
                    vec![tensors::from_json(&name, dtype_of(&name)?, &serde_json::json!([data]))?]
                }
                Some(path) => {
                    let text = if path.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
                    };
                    let value: serde_json::Value = serde_json::from_str(&text).context("the inputs are not JSON")?;
                    match value {
                        serde_json::Value::Object(named) => named
                            .iter()
                            .map(|(name, v)| tensors::from_json(name, dtype_of(name)?, v))
                            .collect::<anyhow::Result<_>>()?,
                        other @ (serde_json::Value::Null
                        | serde_json::Value::Bool(_)
                        | serde_json::Value::Number(_)
                        | serde_json::Value::String(_)
                        | serde_json::Value::Array(_)) => {
                            vec![tensors::from_json(&first, dtype_of(&first)?, &other)?]
                        }
                    }
                }
            };
            let resp = client.predict(PredictRequest { model, inputs, ..Default::default() }).await?.into_inner();
            let outputs: serde_json::Map<String, serde_json::Value> =
                resp.outputs.iter().map(|t| (t.name.clone(), tensors::to_json(t))).collect();
            println!(
                "{}",
                serde_json::json!({"model": resp.model, "modelVersion": resp.model_version, "variant": resp.variant,
                                   "outputs": outputs})
            );
        }
    }
    Ok(())
}
