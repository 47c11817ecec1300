//! What a replica asks the registry instead of MLflow while it is subscribed
//! to it: which version each selector designates and the traffic policy
//! (`ResolveServing`, answered from the registry's view, the same view its
//! change stream comes from), and the version's files (`ListModelFiles`,
//! `ReadModelFile`, downloaded from MLflow once per registry replica). A
//! fleet of any size then costs MLflow the same at a rollout as one replica.
//! Whenever the registry cannot answer, the replica asks MLflow itself.

use ferry_mlflow::{ModelVersion, Selector, Tag};
use ferry_proto::registry::v1::{self as pb, ListModelFilesRequest, ReadModelFileRequest, ResolveServingRequest};
use futures::{StreamExt, TryStreamExt};

use super::store::{Reading, StoreError};

/// The registry's client, presenting the configured token on every call.
pub(crate) type RegistryClient = pb::model_registry_client::ModelRegistryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub(super) fn new(token: Option<&ferry_telemetry::Secret>) -> Self {
        let value = token.filter(|t| !t.expose().is_empty()).and_then(|t| {
            let mut v: tonic::metadata::MetadataValue<_> = format!("Bearer {}", t.expose()).parse().ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Self(value)
    }

    pub(super) fn client(&self, channel: tonic::transport::Channel) -> RegistryClient {
        pb::model_registry_client::ModelRegistryClient::with_interceptor(channel, self.clone())
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The model's traffic policy (its `ferry.traffic` tag) and the version
/// each selector designates, as of the registry's last view of MLflow.
pub(super) async fn resolve(
    client: &RegistryClient,
    name: &str,
    selectors: &[&Selector],
) -> Result<(Option<String>, Vec<Option<ModelVersion>>), tonic::Status> {
    let req =
        ResolveServingRequest { name: name.to_owned(), selectors: selectors.iter().map(|s| s.suffix()).collect() };
    let r = client.clone().resolve_serving(req).await?.into_inner();
    if r.resolved.len() != selectors.len() {
        return Err(tonic::Status::internal("the registry answered for other selectors than asked"));
    }
    let policy = Some(r.policy_json).filter(|p| !p.is_empty());
    Ok((policy, r.resolved.into_iter().map(|s| s.version.map(from_pb)).collect()))
}

/// MLflow's record of a version, from the registry's message: what delivery
/// reads of it (number, stage, source, tags).
fn from_pb(v: pb::ModelVersion) -> ModelVersion {
    let stage = match v.stage() {
        pb::Stage::Staging => "Staging",
        pb::Stage::Production => "Production",
        pb::Stage::Archived => "Archived",
        pb::Stage::None | pb::Stage::Unspecified => "None",
    };
    ModelVersion {
        current_stage: stage.to_owned(),
        tags: v.tags.into_iter().map(|(key, value)| Tag { key, value }).collect(),
        name: v.name,
        version: v.version,
        source: v.source,
        run_id: v.run_id,
        aliases: v.aliases,
        ..Default::default()
    }
}

/// Where the registry says a version's files are.
pub(crate) enum Located {
    /// The registry serves them.
    Served(Box<RegistryFiles>),
    /// In a store the replica reads itself (`s3://…`).
    Elsewhere(String),
}

/// Asks the registry where a version's files are.
pub(super) async fn locate(client: &RegistryClient, name: &str, version: &str) -> Result<Located, tonic::Status> {
    let req = ListModelFilesRequest { name: name.to_owned(), version: version.to_owned(), folder: String::new() };
    let r = client.clone().list_model_files(req).await?.into_inner();
    if !r.served {
        return Ok(Located::Elsewhere(r.artifact_uri));
    }
    let uri = format!("{} (through the registry)", r.artifact_uri);
    let files = RegistryFiles { client: client.clone(), name: name.to_owned(), version: version.to_owned(), uri };
    Ok(Located::Served(Box::new(files)))
}

/// One version's files, as the registry serves them.
pub(crate) struct RegistryFiles {
    client: RegistryClient,
    name: String,
    version: String,
    pub(crate) uri: String,
}

impl RegistryFiles {
    pub(crate) async fn list(&self, folder: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        let req =
            ListModelFilesRequest { name: self.name.clone(), version: self.version.clone(), folder: folder.to_owned() };
        let r = self.client.clone().list_model_files(req).await.map_err(|s| failed(&self.uri, folder, &s))?;
        Ok(r.into_inner().files.into_iter().map(|f| (f.name, Some(f.size_bytes))).collect())
    }

    pub(crate) async fn read(&self, rel: &str, offset: u64) -> Result<Reading, StoreError> {
        let req = ReadModelFileRequest {
            name: self.name.clone(),
            version: self.version.clone(),
            path: rel.to_owned(),
            offset,
        };
        let stream = self.client.clone().read_model_file(req).await.map_err(|s| failed(&self.uri, rel, &s))?;
        let shown = format!("{}/{rel}", self.uri);
        let bytes = stream
            .into_inner()
            .map_ok(|m| bytes::Bytes::from(m.data))
            .map_err(move |s| format!("reading {shown}: {}", s.message()))
            .boxed();
        Ok(Reading { bytes, from_offset: true })
    }
}

fn failed(uri: &str, rel: &str, s: &tonic::Status) -> StoreError {
    StoreError { not_found: s.code() == tonic::Code::NotFound, message: format!("{uri}/{rel}: {}", s.message()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_version_reads_as_mlflow_gives_it() {
        let v = from_pb(pb::ModelVersion {
            name: "iris".into(),
            version: "7".into(),
            stage: pb::Stage::Production.into(),
            tags: [("ferry.sha256".to_owned(), "ab".to_owned())].into(),
            ..Default::default()
        });
        assert_eq!((v.version.as_str(), v.current_stage.as_str()), ("7", "Production"));
        assert_eq!(v.tag("ferry.sha256"), Some("ab"));
    }
}
