//! `ferryctl`: a thin command-line client for Ferry's gRPC APIs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ferry_proto::{
    inference::v1::{DataType, PredictRequest, Tensor, inference_client::InferenceClient},
    registry::v1::{
        RegisterModelMetadata, RegisterModelRequest, SetAliasRequest, Stage, TransitionStageRequest,
        WatchModelsRequest, model_registry_client::ModelRegistryClient, register_model_request::Payload,
    },
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

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
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Upload an ONNX file and register it as a new version.
    Register {
        #[arg(long)]
        name: String,
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
    },
    /// Point an alias at a version.
    Alias {
        #[arg(long)]
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long)]
        version: String,
    },
    /// Print model changes as they happen (JSON lines).
    Watch {
        /// Only these models (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Predict on one float32 row.
    Predict {
        #[arg(long)]
        model: String,
        /// Input name (default: "input").
        #[arg(long, default_value = "input")]
        input: String,
        /// Comma-separated numbers.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        data: Vec<f32>,
    },
}

const CHUNK: usize = 1 << 20;

async fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Register { name, file, description, tags, metrics, params } => {
            let sha = sha256_file(&file).await.with_context(|| format!("reading {}", file.display()))?;
            let metrics = pairs(&metrics, "metric")?
                .into_iter()
                .map(|(k, v)| Ok((k, v.parse::<f64>().with_context(|| format!("metric value {v:?}"))?)))
                .collect::<anyhow::Result<_>>()?;
            let meta = RegisterModelMetadata {
                name,
                description,
                tags: pairs(&tags, "tag")?.into_iter().collect(),
                expected_sha256: sha,
                metrics,
                params: pairs(&params, "param")?.into_iter().collect(),
            };
            let first = RegisterModelRequest { payload: Some(Payload::Metadata(meta)) };
            // Stream the file in chunks: the model may be far larger than memory allows.
            let f = tokio::fs::File::open(&file).await?;
            let chunks = futures::stream::unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; CHUNK];
                match f.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((RegisterModelRequest { payload: Some(Payload::Chunk(buf)) }, f))
                    }
                }
            });
            let mut client = ModelRegistryClient::connect(cli.registry).await?;
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
        Cmd::Stage { name, version, stage, archive_existing } => {
            let stage = match stage.to_ascii_lowercase().as_str() {
                "none" => Stage::None,
                "staging" => Stage::Staging,
                "production" => Stage::Production,
                "archived" => Stage::Archived,
                other => bail!("unknown stage {other:?}"),
            };
            let mut client = ModelRegistryClient::connect(cli.registry).await?;
            let req = TransitionStageRequest {
                name,
                version,
                stage: stage.into(),
                archive_existing_versions: archive_existing,
            };
            let v = client
                .transition_stage(authed(cli.token.as_deref(), req)?)
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            println!("{}", serde_json::json!({"name": v.name, "version": v.version, "stage": v.stage().as_str_name()}));
        }
        Cmd::Alias { name, alias, version } => {
            let mut client = ModelRegistryClient::connect(cli.registry).await?;
            let v = client
                .set_alias(SetAliasRequest { name, alias, version })
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            println!("{}", serde_json::json!({"name": v.name, "version": v.version, "aliases": v.aliases}));
        }
        Cmd::Watch { names } => {
            let mut client = ModelRegistryClient::connect(cli.registry).await?;
            let mut stream = client
                .watch_models(authed(cli.token.as_deref(), WatchModelsRequest { names, ..Default::default() })?)
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                let v = e.model_version.clone().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({"revision": e.revision, "kind": e.kind().as_str_name(), "name": e.name,
                        "version": e.version, "alias": e.alias, "stage": v.stage().as_str_name(), "aliases": v.aliases})
                );
            }
        }
        Cmd::Predict { model, input, data } => {
            let mut client = InferenceClient::connect(cli.inference).await?;
            let tensor = Tensor {
                name: input,
                dtype: DataType::Float32.into(),
                shape: vec![1, data.len() as i64],
                float_data: data,
                ..Default::default()
            };
            let resp = client
                .predict(PredictRequest { model, inputs: vec![tensor], ..Default::default() })
                .await?
                .into_inner();
            let outputs: serde_json::Map<String, serde_json::Value> = resp
                .outputs
                .into_iter()
                .map(|t| {
                    let v = match t.dtype() {
                        DataType::Float32 => serde_json::json!(t.float_data),
                        DataType::Float64 => serde_json::json!(t.double_data),
                        DataType::Int32 => serde_json::json!(t.int32_data),
                        DataType::Int64 => serde_json::json!(t.int64_data),
                        DataType::Bool => serde_json::json!(t.bool_data),
                        DataType::String | DataType::Unspecified => serde_json::json!(t.string_data),
                    };
                    (t.name, v)
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"model": resp.model, "modelVersion": resp.model_version, "outputs": outputs})
            );
        }
    }
    Ok(())
}
