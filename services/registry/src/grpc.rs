//! gRPC transport: `ferry.registry.v1.ModelRegistry`.

use std::{pin::Pin, time::Duration};

use ferry_proto::registry::v1::{
    self as pb, DeleteAliasRequest, DeleteAliasResponse, GetModelRequest, GetModelResponse, GetTrafficPolicyRequest,
    GetTrafficPolicyResponse, ListModelFilesRequest, ListModelFilesResponse, ListModelsRequest, ListModelsResponse,
    ListMovesRequest, ListMovesResponse, ListVersionsRequest, ListVersionsResponse, ModelChanged, ReadModelFileRequest,
    ReadModelFileResponse, RegisterModelRequest, RegisterModelResponse, ReportTrafficRequest, ReportTrafficResponse,
    ResolveServingRequest, ResolveServingResponse, ResolveVersionRequest, ResolveVersionResponse, ResolvedSelector,
    RollbackRequest, RollbackResponse, SetAliasRequest, SetAliasResponse, SetTrafficPolicyRequest,
    SetTrafficPolicyResponse, StoredFile, TrafficPolicy, TrafficVariant, TransitionStageRequest,
    TransitionStageResponse, WatchModelsRequest, model_registry_server::ModelRegistry, register_model_request::Payload,
    resolve_version_request::Selector, rollback_request,
};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::instrument;

use crate::{
    auth::{Access, Auth},
    convert,
    error::RegistryError,
    register::{self, Registration},
    service::{Registry, Spool, Spooled, Who},
};

#[derive(Debug, Clone)]
pub(crate) struct RegistryService {
    pub(crate) registry: Registry,
    pub(crate) auth: Auth,
    pub(crate) traffic: std::sync::Arc<crate::rollout::Traffic>,
    pub(crate) files: std::sync::Arc<crate::files::ModelFiles>,
    /// The other registry replicas, which get every traffic report too.
    pub(crate) peers: Option<crate::webhook::Peers>,
}

impl RegistryService {
    /// Checks the caller's token; returns its identity.
    fn allow<T>(&self, req: &Request<T>, access: Access) -> Result<String, Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        self.auth.check(header, access).map_err(status)
    }
}

/// The one mapping from registry errors to gRPC status codes.
pub(crate) fn status(e: RegistryError) -> Status {
    let code = match &e {
        RegistryError::InvalidArgument(_) => Code::InvalidArgument,
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::AlreadyExists(_) => Code::AlreadyExists,
        RegistryError::Unauthenticated(_) => Code::Unauthenticated,
        RegistryError::PermissionDenied(_) => Code::PermissionDenied,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RegistryError::FailedPrecondition(_) => Code::FailedPrecondition,
        RegistryError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<ModelChanged, Status>> + Send>>;
type FileStream = Pin<Box<dyn Stream<Item = Result<ReadModelFileResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ModelRegistry for RegistryService {
    #[instrument(name = "grpc.register_model", skip_all, fields(model))]
    async fn register_model(
        &self,
        request: Request<Streaming<RegisterModelRequest>>,
    ) -> Result<Response<RegisterModelResponse>, Status> {
        self.allow(&request, Access::Write)?;
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
        // Chunks before any ModelFile are the graph, `model.onnx`.
        let mut files: Vec<(String, Spooled)> = Vec::new();
        let mut current: Option<(String, Spool)> = None;
        let used = |files: &[(String, Spooled)]| files.last().map_or(0, |f| f.1.total);
        while let Some(msg) = stream.message().await? {
            match msg.payload {
                Some(Payload::Chunk(bytes)) => {
                    if current.is_none() {
                        current = Some(("model.onnx".into(), self.registry.spool(used(&files)).await.map_err(status)?));
                    }
                    if let Some((_, spool)) = current.as_mut() {
                        spool.write(&bytes).await.map_err(status)?;
                    }
                }
                Some(Payload::File(f)) => {
                    if let Some((rel, spool)) = current.take() {
                        files.push((rel, spool.finish().await.map_err(status)?));
                    }
                    current = Some((f.path, self.registry.spool(used(&files)).await.map_err(status)?));
                }
                Some(Payload::Metadata(_)) => return Err(Status::invalid_argument("metadata may only be sent first")),
                None => {}
            }
        }
        match current.take() {
            Some((rel, spool)) => files.push((rel, spool.finish().await.map_err(status)?)),
            None if files.is_empty() => return Err(Status::invalid_argument("no model bytes were uploaded")),
            None => {}
        }
        let reg = Registration {
            name: meta.name,
            description: meta.description,
            tags: meta.tags.into_iter().collect(),
            metrics: meta.metrics.into_iter().collect(),
            params: meta.params.into_iter().collect(),
        };
        let done = self.registry.register(&reg, files, &meta.expected_sha256).await.map_err(status)?;
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
        let by = self.allow(&request, Access::Write)?;
        let r = request.into_inner();
        let stage = convert::stage_to_mlflow(r.stage()).map_err(status)?;
        let who = Who { by, reason: r.reason, rollback: false };
        let v = self
            .registry
            .transition(&r.name, &r.version, stage, r.archive_existing_versions, &who)
            .await
            .map_err(status)?;
        Ok(Response::new(TransitionStageResponse { version: Some(convert::version(&v, None)) }))
    }

    #[instrument(name = "grpc.set_alias", skip_all, fields(model = %request.get_ref().name, alias = %request.get_ref().alias))]
    async fn set_alias(&self, request: Request<SetAliasRequest>) -> Result<Response<SetAliasResponse>, Status> {
        let by = self.allow(&request, Access::Write)?;
        let r = request.into_inner();
        let who = Who { by, reason: r.reason, rollback: false };
        let v = self.registry.set_alias(&r.name, &r.alias, &r.version, &who).await.map_err(status)?;
        Ok(Response::new(SetAliasResponse { version: Some(convert::version(&v, None)) }))
    }

    #[instrument(name = "grpc.delete_alias", skip_all, fields(model = %request.get_ref().name, alias = %request.get_ref().alias))]
    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        self.allow(&request, Access::Write)?;
        let r = request.into_inner();
        self.registry.delete_alias(&r.name, &r.alias).await.map_err(status)?;
        Ok(Response::new(DeleteAliasResponse {}))
    }

    async fn get_model(&self, request: Request<GetModelRequest>) -> Result<Response<GetModelResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let m = self.registry.get_model(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(GetModelResponse { model: Some(convert::registered_model(&m)) }))
    }

    async fn list_models(&self, request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        let (items, next_page_token) =
            self.registry.list_models(&r.filter, r.page_size, &r.page_token).await.map_err(status)?;
        Ok(Response::new(ListModelsResponse {
            models: items.iter().map(convert::registered_model).collect(),
            next_page_token,
        }))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        let (items, next_page_token) =
            self.registry.list_versions(&r.name, r.page_size, &r.page_token).await.map_err(status)?;
        Ok(Response::new(ListVersionsResponse {
            versions: items.iter().map(|v| convert::version(v, None)).collect(),
            next_page_token,
        }))
    }

    async fn resolve_version(
        &self,
        request: Request<ResolveVersionRequest>,
    ) -> Result<Response<ResolveVersionResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        let selector = match r.selector {
            Some(Selector::Stage(s)) => {
                let stage = pb::Stage::try_from(s).unwrap_or(pb::Stage::Unspecified);
                ferry_mlflow::Selector::Stage(convert::stage_to_mlflow(stage).map_err(status)?.to_owned())
            }
            Some(Selector::Alias(a)) => ferry_mlflow::Selector::Alias(a),
            Some(Selector::Version(v)) => ferry_mlflow::Selector::Version(v),
            None => return Err(Status::invalid_argument("one of stage, alias or version is required")),
        };
        let (v, download_uri) = self.registry.resolve(&r.name, &selector).await.map_err(status)?;
        Ok(Response::new(ResolveVersionResponse { version: Some(convert::version(&v, None)), download_uri }))
    }

    type WatchModelsStream = ChangeStream;
    type ReadModelFileStream = FileStream;

    #[instrument(name = "grpc.rollback", skip_all, fields(model = %request.get_ref().name))]
    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<RollbackResponse>, Status> {
        let by = self.allow(&request, Access::Write)?;
        let r = request.into_inner();
        let target = match r.target {
            Some(rollback_request::Target::Alias(a)) => ferry_mlflow::Selector::Alias(a),
            Some(rollback_request::Target::Stage(s)) => {
                let stage = pb::Stage::try_from(s).unwrap_or(pb::Stage::Unspecified);
                ferry_mlflow::Selector::Stage(convert::stage_to_mlflow(stage).map_err(status)?.to_owned())
            }
            None => return Err(Status::invalid_argument("name the alias or the stage to roll back")),
        };
        let who = Who { by, reason: r.reason, rollback: true };
        let (v, rolled_back) = self.registry.rollback(&r.name, &target, &who).await.map_err(status)?;
        Ok(Response::new(RollbackResponse {
            version: Some(convert::version(&v, None)),
            rolled_back_version: rolled_back,
        }))
    }

    async fn report_traffic(
        &self,
        request: Request<ReportTrafficRequest>,
    ) -> Result<Response<ReportTrafficResponse>, Status> {
        // The figures move weights and aliases: a replica's token (or above) only.
        self.allow(&request, Access::Report)?;
        let r = request.into_inner();
        if let Some(peers) = &self.peers {
            peers.share_traffic(&r.replica, prost::Message::encode_to_vec(&r));
        }
        self.traffic.record(r.replica, r.variants).map_err(status)?;
        Ok(Response::new(ReportTrafficResponse {}))
    }

    async fn list_moves(&self, request: Request<ListMovesRequest>) -> Result<Response<ListMovesResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let moves = self.registry.moves(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(ListMovesResponse { moves: moves.into_iter().map(convert::move_to_pb).collect() }))
    }

    #[instrument(name = "grpc.get_traffic_policy", skip_all, fields(model = %request.get_ref().name))]
    async fn get_traffic_policy(
        &self,
        request: Request<GetTrafficPolicyRequest>,
    ) -> Result<Response<GetTrafficPolicyResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let name = request.into_inner().name;
        let (policy, rollout) = self.registry.traffic_policy(&name).await.map_err(status)?;
        let mut policy = traffic_policy(name, policy);
        policy.rollout_status = rollout.unwrap_or_default();
        Ok(Response::new(GetTrafficPolicyResponse { policy: Some(policy) }))
    }

    #[instrument(name = "grpc.set_traffic_policy", skip_all, fields(model = %request.get_ref().name))]
    async fn set_traffic_policy(
        &self,
        request: Request<SetTrafficPolicyRequest>,
    ) -> Result<Response<SetTrafficPolicyResponse>, Status> {
        self.allow(&request, Access::Write)?;
        let r = request.into_inner();
        let policy = self.registry.set_traffic_policy(&r.name, &r.policy_json).await.map_err(status)?;
        Ok(Response::new(SetTrafficPolicyResponse { policy: Some(traffic_policy(r.name, policy)) }))
    }

    async fn watch_models(
        &self,
        request: Request<WatchModelsRequest>,
    ) -> Result<Response<Self::WatchModelsStream>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        let hub = &self.registry.hub;
        if !hub.wait_initialized(Duration::from_secs(15)).await {
            return Err(Status::unavailable("the registry has not been able to read MLflow yet; retry shortly"));
        }
        let sub = hub.subscribe(&r.names, r.since_revision, &r.epoch);
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

    #[instrument(name = "grpc.resolve_serving", skip_all, fields(model = %request.get_ref().name))]
    async fn resolve_serving(
        &self,
        request: Request<ResolveServingRequest>,
    ) -> Result<Response<ResolveServingResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        register::validate_name(&r.name).map_err(status)?;
        let selectors = r
            .selectors
            .iter()
            .map(|s| {
                format!("{}{s}", r.name)
                    .parse::<ferry_mlflow::ModelRef>()
                    .ok()
                    .filter(|m| m.name == r.name)
                    .map(|m| m.selector)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("selector {s:?}: expected @alias, :Stage or /version"))
                    })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let hub = &self.registry.hub;
        let serving = hub
            .serving(&r.name, &selectors)
            .ok_or_else(|| Status::unavailable("the registry has not been able to read MLflow yet; retry shortly"))?;
        Ok(Response::new(ResolveServingResponse {
            revision: serving.revision,
            epoch: hub.epoch().to_owned(),
            policy_json: serving.policy.unwrap_or_default(),
            resolved: r
                .selectors
                .into_iter()
                .zip(serving.versions)
                .map(|(selector, version)| ResolvedSelector { selector, version })
                .collect(),
        }))
    }

    #[instrument(name = "grpc.list_model_files", skip_all, fields(model = %request.get_ref().name, version = %request.get_ref().version))]
    async fn list_model_files(
        &self,
        request: Request<ListModelFilesRequest>,
    ) -> Result<Response<ListModelFilesResponse>, Status> {
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        let listing = self.files.list(&r.name, &r.version, &r.folder).await.map_err(status)?;
        Ok(Response::new(ListModelFilesResponse {
            artifact_uri: listing.artifact_uri,
            served: listing.served,
            files: listing
                .files
                .iter()
                .map(|(name, size)| StoredFile { name: name.clone(), size_bytes: *size })
                .collect(),
        }))
    }

    #[instrument(name = "grpc.read_model_file", skip_all, fields(model = %request.get_ref().name, version = %request.get_ref().version))]
    async fn read_model_file(
        &self,
        request: Request<ReadModelFileRequest>,
    ) -> Result<Response<Self::ReadModelFileStream>, Status> {
        use tokio::io::AsyncReadExt;
        self.allow(&request, Access::Read)?;
        let r = request.into_inner();
        // A file the version does not have is an error now, not in the stream.
        let file = self.files.locate(&r.name, &r.version, &r.path).await.map_err(status)?;
        let files = std::sync::Arc::clone(&self.files);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // While the registry downloads the file from MLflow, an empty
            // message a second tells the reader the transfer is alive.
            let fetch = files.fetch(&file);
            tokio::pin!(fetch);
            let fetched = loop {
                tokio::select! {
                    done = &mut fetch => break done,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tx.send(Ok(ReadModelFileResponse::default())).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let opened = match fetched {
                Ok(()) => files.open(&file, r.offset).await,
                Err(e) => Err(e),
            };
            let mut f = match opened {
                Ok(f) => f,
                Err(e) => return drop(tx.send(Err(status(e))).await),
            };
            loop {
                let mut data = vec![0u8; FILE_CHUNK];
                let msg = match f.read(&mut data).await {
                    Ok(0) => return,
                    Ok(n) => {
                        data.truncate(n);
                        Ok(ReadModelFileResponse { data })
                    }
                    Err(e) => Err(Status::internal(format!("reading the cached file: {e}"))),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Bytes per `ReadModelFile` message: well under the default 4 MiB message limit.
const FILE_CHUNK: usize = 1 << 20;

fn traffic_policy(name: String, policy: Option<(String, Vec<(ferry_traffic::Variant, String)>)>) -> TrafficPolicy {
    let (policy_json, variants) = policy.unwrap_or_default();
    let variants = variants
        .into_iter()
        .map(|(v, version)| TrafficVariant {
            name: v.name,
            selector: v.selector.to_string(),
            weight: v.weight,
            version,
        })
        .collect();
    TrafficPolicy { name, policy_json, variants, rollout_status: String::new() }
}
