//! gRPC transport: `ferry.registry.v1.ModelRegistry`.

use std::{pin::Pin, sync::Arc, time::Duration};

use ferry_mlflow::Client;
use ferry_proto::registry::v1::{
    self as pb, DeleteAliasRequest, DeleteAliasResponse, GetModelRequest, GetModelResponse, ModelChanged,
    RegisterModelRequest, RegisterModelResponse, ResolveVersionRequest, ResolveVersionResponse, SetAliasRequest,
    SetAliasResponse, TransitionStageRequest, TransitionStageResponse, WatchModelsRequest,
    model_registry_server::ModelRegistry, register_model_request::Payload, resolve_version_request::Selector,
};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::broadcast::error::RecvError};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, instrument};

use crate::{
    convert,
    error::RegistryError,
    hub::Hub,
    register::{self, Registration, Upload},
};

#[derive(Debug, Clone)]
pub(crate) struct RegistryService {
    pub(crate) mlflow: Client,
    pub(crate) hub: Arc<Hub>,
    pub(crate) experiment: String,
    pub(crate) max_model_bytes: u64,
    pub(crate) upload_dir: std::path::PathBuf,
}

/// The one mapping from registry errors to gRPC status codes.
pub(crate) fn status(e: RegistryError) -> Status {
    let code = match &e {
        RegistryError::InvalidArgument(_) => Code::InvalidArgument,
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::AlreadyExists(_) => Code::AlreadyExists,
        RegistryError::Unauthenticated(_) => Code::Unauthenticated,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RegistryError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    if v.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<ModelChanged, Status>> + Send>>;

#[tonic::async_trait]
impl ModelRegistry for RegistryService {
    #[instrument(name = "grpc.register_model", skip_all, fields(model))]
    async fn register_model(
        &self,
        request: Request<Streaming<RegisterModelRequest>>,
    ) -> Result<Response<RegisterModelResponse>, Status> {
        let mut stream = request.into_inner();
        let meta = match stream.message().await? {
            Some(RegisterModelRequest { payload: Some(Payload::Metadata(m)) }) => m,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must carry metadata (name, description, tags)",
                ));
            }
        };
        tracing::Span::current().record("model", meta.name.as_str());
        register::validate_name(&meta.name).map_err(status)?;
        // Spool to disk while hashing: the model may be far larger than memory allows.
        tokio::fs::create_dir_all(&self.upload_dir).await.map_err(|e| Status::internal(e.to_string()))?;
        let tmp = tempfile::NamedTempFile::new_in(&self.upload_dir).map_err(|e| Status::internal(e.to_string()))?;
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| Status::internal(e.to_string()))?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(msg) = stream.message().await? {
            match msg.payload {
                Some(Payload::Chunk(bytes)) => {
                    size += bytes.len() as u64;
                    if size > self.max_model_bytes {
                        return Err(Status::invalid_argument(format!(
                            "model file exceeds the limit of {} bytes",
                            self.max_model_bytes
                        )));
                    }
                    hasher.update(&bytes);
                    file.write_all(&bytes).await.map_err(|e| Status::internal(e.to_string()))?;
                }
                Some(Payload::Metadata(_)) => return Err(Status::invalid_argument("metadata may only be sent first")),
                None => {}
            }
        }
        file.flush().await.map_err(|e| Status::internal(e.to_string()))?;
        if size == 0 {
            return Err(Status::invalid_argument("no model bytes were uploaded"));
        }
        let sha256 = hex::encode(hasher.finalize());
        if !meta.expected_sha256.is_empty() && !meta.expected_sha256.eq_ignore_ascii_case(&sha256) {
            return Err(Status::invalid_argument(format!(
                "upload is corrupt: expected sha256 {}, received bytes hash to {sha256}",
                meta.expected_sha256
            )));
        }
        let reg =
            Registration { name: meta.name, description: meta.description, tags: meta.tags.into_iter().collect() };
        let done = register::register(&self.mlflow, &self.experiment, &reg, Upload { path: tmp.path(), sha256, size })
            .await
            .map_err(status)?;
        self.hub.poke();
        Ok(Response::new(RegisterModelResponse {
            version: Some(convert::version(&done.version, None)),
            created: done.created,
        }))
    }

    #[instrument(name = "grpc.transition_stage", skip_all, fields(model = %request.get_ref().name, version = %request.get_ref().version))]
    async fn transition_stage(
        &self,
        request: Request<TransitionStageRequest>,
    ) -> Result<Response<TransitionStageResponse>, Status> {
        let r = request.into_inner();
        required("name", &r.name)?;
        required("version", &r.version)?;
        let stage = convert::stage_to_mlflow(r.stage()).map_err(status)?;
        let v = self.mlflow.transition_stage(&r.name, &r.version, stage, r.archive_existing_versions).await.map_err(
            |e| status(RegistryError::mlflow(format!("moving {} version {} to {stage}", r.name, r.version), e)),
        )?;
        info!(model = %r.name, version = %r.version, stage, "stage changed");
        self.hub.poke();
        Ok(Response::new(TransitionStageResponse { version: Some(convert::version(&v, None)) }))
    }

    #[instrument(name = "grpc.set_alias", skip_all, fields(model = %request.get_ref().name, alias = %request.get_ref().alias))]
    async fn set_alias(&self, request: Request<SetAliasRequest>) -> Result<Response<SetAliasResponse>, Status> {
        let r = request.into_inner();
        required("name", &r.name)?;
        required("alias", &r.alias)?;
        required("version", &r.version)?;
        let ctx = format!("pointing alias {:?} of {} at version {}", r.alias, r.name, r.version);
        self.mlflow
            .set_alias(&r.name, &r.alias, &r.version)
            .await
            .map_err(|e| status(RegistryError::mlflow(&ctx, e)))?;
        let v = self
            .mlflow
            .get_model_version(&r.name, &r.version)
            .await
            .map_err(|e| status(RegistryError::mlflow(&ctx, e)))?;
        self.hub.poke();
        Ok(Response::new(SetAliasResponse { version: Some(convert::version(&v, None)) }))
    }

    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let r = request.into_inner();
        required("name", &r.name)?;
        required("alias", &r.alias)?;
        self.mlflow
            .delete_alias(&r.name, &r.alias)
            .await
            .map_err(|e| status(RegistryError::mlflow(format!("deleting alias {:?} of {}", r.alias, r.name), e)))?;
        self.hub.poke();
        Ok(Response::new(DeleteAliasResponse {}))
    }

    async fn get_model(&self, request: Request<GetModelRequest>) -> Result<Response<GetModelResponse>, Status> {
        let name = request.into_inner().name;
        required("name", &name)?;
        let m = self
            .mlflow
            .get_registered_model(&name)
            .await
            .map_err(|e| status(RegistryError::mlflow(format!("model {name:?}"), e)))?;
        Ok(Response::new(GetModelResponse { model: Some(convert::registered_model(&m)) }))
    }

    async fn resolve_version(
        &self,
        request: Request<ResolveVersionRequest>,
    ) -> Result<Response<ResolveVersionResponse>, Status> {
        let r = request.into_inner();
        required("name", &r.name)?;
        let name = r.name.as_str();
        let v = match r.selector {
            Some(Selector::Stage(s)) => {
                let stage = convert::stage_to_mlflow(pb::Stage::try_from(s).unwrap_or(pb::Stage::Unspecified))
                    .map_err(status)?;
                self.mlflow
                    .latest_version_in_stage(name, stage)
                    .await
                    .map_err(|e| status(RegistryError::mlflow(format!("model {name:?}"), e)))?
                    .ok_or_else(|| Status::not_found(format!("model {name:?} has no version in stage {stage}")))?
            }
            Some(Selector::Alias(a)) => self
                .mlflow
                .get_version_by_alias(name, &a)
                .await
                .map_err(|e| status(RegistryError::mlflow(format!("alias {a:?} of model {name:?}"), e)))?,
            Some(Selector::Version(v)) => self
                .mlflow
                .get_model_version(name, &v)
                .await
                .map_err(|e| status(RegistryError::mlflow(format!("model {name:?} version {v}"), e)))?,
            None => return Err(Status::invalid_argument("one of stage, alias or version is required")),
        };
        let dir =
            self.mlflow.resolve_model_uri(name, &v.version).await.map_err(|e| {
                status(RegistryError::mlflow(format!("download URI of {name:?} version {}", v.version), e))
            })?;
        let file = v.tag(ferry_mlflow::tags::ARTIFACT_PATH).unwrap_or("model.onnx");
        let download_uri = format!("{}/{}", dir.trim_end_matches('/'), file);
        Ok(Response::new(ResolveVersionResponse { version: Some(convert::version(&v, None)), download_uri }))
    }

    type WatchModelsStream = ChangeStream;

    async fn watch_models(
        &self,
        request: Request<WatchModelsRequest>,
    ) -> Result<Response<Self::WatchModelsStream>, Status> {
        let r = request.into_inner();
        if !self.hub.wait_initialized(Duration::from_secs(15)).await {
            return Err(Status::unavailable("the registry has not been able to read MLflow yet; retry shortly"));
        }
        let sub = self.hub.subscribe(&r.names, r.since_revision, &r.epoch);
        let names = r.names;
        let backlog = futures::stream::iter(sub.backlog.into_iter().map(|e| Ok((*e).clone())));
        let live = futures::stream::unfold(Some((sub.live, sub.after)), move |state| {
            let names = names.clone();
            async move {
                let (mut rx, after) = state?;
                loop {
                    match rx.recv().await {
                        Ok(e) if e.revision <= after => continue,
                        Ok(e) if !names.is_empty() && !names.contains(&e.name) => continue,
                        Ok(e) => return Some((Ok((*e).clone()), Some((rx, after)))),
                        // The subscriber fell behind the channel: end the stream; it
                        // resumes from its last revision and gets what it missed.
                        Err(RecvError::Lagged(n)) => {
                            let msg = format!("subscriber fell {n} changes behind; resume from your last revision");
                            return Some((Err(Status::aborted(msg)), None));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(backlog.chain(live))))
    }
}
