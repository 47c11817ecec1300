//! The registry's operations, free of any transport: the gRPC service and the
//! HTTP adapter both call these, and map `RegistryError` once each.

use std::{path::PathBuf, sync::Arc};

use ferry_mlflow::{Client, ModelVersion, RegisteredModel, Selector, canonical_stage, escape_filter, tags};
use ferry_traffic::{Policy, Variant};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::history;

use crate::{
    error::{RegistryError, Result},
    hub::Hub,
    register::{self, Registered, Registration, Upload, UploadFile},
};

#[derive(Debug, Clone)]
pub struct Registry {
    pub(crate) mlflow: Client,
    pub(crate) hub: Arc<Hub>,
    pub(crate) experiment: String,
    pub(crate) max_model_bytes: u64,
    pub(crate) upload_dir: PathBuf,
    /// Where server-side registration paths may point; `None`: nowhere.
    pub(crate) path_root: Option<PathBuf>,
}

/// An upload being written to disk, hashed as it streams in, with a size limit.
#[derive(Debug)]
pub struct Spool {
    tmp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: Sha256,
    /// Bytes of the model so far: earlier files and this one.
    size: u64,
    start: u64,
    max: u64,
}

impl Spool {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            return Err(RegistryError::InvalidArgument(format!(
                "the model's files exceed the limit of {} bytes",
                self.max
            )));
        }
        self.hasher.update(bytes);
        self.file.write_all(bytes).await.map_err(|e| RegistryError::Internal(format!("spooling upload: {e}")))
    }

    /// The complete file (the caller's digest is checked over the whole model).
    pub async fn finish(mut self) -> Result<Spooled> {
        self.file.flush().await.map_err(|e| RegistryError::Internal(format!("spooling upload: {e}")))?;
        if self.size == self.start {
            return Err(RegistryError::InvalidArgument("no model bytes were uploaded".into()));
        }
        let sha256 = hex::encode(self.hasher.finalize());
        Ok(Spooled { tmp: self.tmp, sha256, len: self.size - self.start, total: self.size })
    }
}

/// A complete, hashed file on local disk (deleted when dropped).
#[derive(Debug)]
pub struct Spooled {
    tmp: tempfile::NamedTempFile,
    pub sha256: String,
    /// This file's size.
    pub len: u64,
    /// The model's files so far, this one included (for the next `spool`).
    pub total: u64,
}

fn page_size(n: i32) -> u32 {
    if n <= 0 { 100 } else { n.min(1000) as u32 }
}

impl Registry {
    /// `path` resolved (symlinks and `..` included) and checked to lie under
    /// the configured root, before anything opens it.
    pub fn readable_path(&self, path: &std::path::Path) -> Result<PathBuf> {
        let denied = |why: String| RegistryError::PermissionDenied(why);
        let Some(root) = &self.path_root else {
            return Err(denied(
                "server-side paths are off: upload the files, or set FERRY_REGISTER_PATH_ROOT to the folder the \
                 registry may read models from"
                    .into(),
            ));
        };
        let root =
            root.canonicalize().map_err(|e| RegistryError::Internal(format!("FERRY_REGISTER_PATH_ROOT: {e}")))?;
        let outside = || denied(format!("{} is not under FERRY_REGISTER_PATH_ROOT", path.display()));
        if !path.is_absolute() {
            return Err(outside());
        }
        let real = path.canonicalize().map_err(|_| outside())?;
        if real.starts_with(&root) { Ok(real) } else { Err(outside()) }
    }

    /// Starts spooling one file of an upload to disk; `used` is what the
    /// model's files before it took of the size limit.
    pub async fn spool(&self, used: u64) -> Result<Spool> {
        let internal = |e: std::io::Error| RegistryError::Internal(format!("upload directory: {e}"));
        tokio::fs::create_dir_all(&self.upload_dir).await.map_err(internal)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.upload_dir).map_err(internal)?;
        let file = tokio::fs::File::from_std(tmp.reopen().map_err(internal)?);
        Ok(Spool { tmp, file, hasher: Sha256::new(), size: used, start: used, max: self.max_model_bytes })
    }

    /// Registers a model from its spooled files (path relative to the model
    /// directory, and the file); `expected_sha256` is the caller's digest, if any.
    pub async fn register(
        &self,
        reg: &Registration,
        files: Vec<(String, Spooled)>,
        expected_sha256: &str,
    ) -> Result<Registered> {
        let files_up = files
            .iter()
            .map(|(rel, f)| UploadFile { rel: rel.clone(), path: f.tmp.path(), sha256: f.sha256.clone(), size: f.len })
            .collect();
        let up = Upload { files: files_up, expected_sha256: expected_sha256.to_owned() };
        let done = register::register(&self.mlflow, &self.experiment, reg, up).await?;
        let counter =
            if done.created { &self.hub.stats.registrations_created } else { &self.hub.stats.registrations_existing };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.hub.poke();
        Ok(done)
    }

    /// Moves a version to a stage and records the move (who, when, why).
    pub async fn transition(
        &self,
        name: &str,
        version: &str,
        stage: &str,
        archive_existing: bool,
        who: &Who,
    ) -> Result<ModelVersion> {
        required("name", name)?;
        required("version", version)?;
        let stage = canonical_stage(stage).ok_or_else(|| {
            RegistryError::InvalidArgument(format!(
                "unknown stage {stage:?}; use None, Staging, Production or Archived"
            ))
        })?;
        let ctx = format!("moving {name} version {version} to {stage}");
        let before = self.mlflow.get_model_version(name, version).await.map_err(|e| RegistryError::mlflow(&ctx, e))?;
        let serving =
            self.mlflow.latest_version_in_stage(name, stage).await.map_err(|e| RegistryError::mlflow(&ctx, e))?;
        let v = self
            .mlflow
            .transition_stage(name, version, stage, archive_existing)
            .await
            .map_err(|e| RegistryError::mlflow(&ctx, e))?;
        info!(model = %name, version, stage, archive_existing, by = %who.by, "stage changed");
        let mut mv = who.moved(format!("stage:{stage}"), serving.map(|s| s.version), version);
        mv.to_previous_stage = before.current_stage;
        self.record(name, mv).await;
        self.hub.poke();
        Ok(v)
    }

    /// Points an alias at a version and records the move (who, when, why).
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str, who: &Who) -> Result<ModelVersion> {
        required("name", name)?;
        required("alias", alias)?;
        required("version", version)?;
        let ctx = format!("pointing alias {alias:?} of {name} at version {version}");
        let before = self
            .mlflow
            .resolve(name, &Selector::Alias(alias.to_owned()))
            .await
            .map_err(|e| RegistryError::mlflow(&ctx, e))?;
        self.mlflow.set_alias(name, alias, version).await.map_err(|e| RegistryError::mlflow(&ctx, e))?;
        info!(model = %name, alias, version, by = %who.by, "alias set");
        let mv = who.moved(format!("alias:{alias}"), before.map(|v| v.version), version);
        self.record(name, mv).await;
        self.hub.poke();
        self.mlflow.get_model_version(name, version).await.map_err(|e| RegistryError::mlflow(&ctx, e))
    }

    /// Moves an alias or stage back to the version it designated before the
    /// last move Ferry recorded, in one call; returns the version now
    /// designated and the one it replaced.
    pub async fn rollback(&self, name: &str, target: &Selector, who: &Who) -> Result<(ModelVersion, String)> {
        required("name", name)?;
        let key = match target {
            Selector::Alias(a) => format!("alias:{a}"),
            Selector::Stage(s) => format!(
                "stage:{}",
                canonical_stage(s).ok_or_else(|| RegistryError::InvalidArgument(format!("unknown stage {s:?}")))?
            ),
            Selector::Version(_) => {
                return Err(RegistryError::InvalidArgument("roll back an alias or a stage, not a version".into()));
            }
        };
        let target = match target {
            Selector::Stage(_) => Selector::Stage(key["stage:".len()..].to_owned()),
            other @ (Selector::Alias(_) | Selector::Version(_)) => other.clone(),
        };
        let model = self.get_model(name).await?;
        let moves = history::parse(model.tag_map().get(history::HISTORY_TAG).map(String::as_str));
        let current = self
            .mlflow
            .resolve(name, &target)
            .await
            .map_err(|e| RegistryError::mlflow(format!("{key} of model {name:?}"), e))?
            .map(|v| v.version);
        let last = history::rollback_of(&moves, &key, current.as_deref()).map_err(RegistryError::FailedPrecondition)?;
        if last.from.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "{key} designated no version before version {}; nothing to roll back to",
                last.to
            )));
        }
        let who = Who { rollback: true, ..who.clone() };
        let (from, to) = (last.to.clone(), last.from.clone());
        let v = match &target {
            Selector::Alias(a) => self.set_alias(name, a, &to, &who).await?,
            Selector::Stage(stage) => {
                // Back in the stage, and the rolled-back version where it came from.
                let v = self.transition(name, &to, stage, false, &who).await?;
                let back = if last.to_previous_stage.is_empty() { "Archived" } else { &last.to_previous_stage };
                let ctx = format!("returning {name} version {from} to {back}");
                self.mlflow
                    .transition_stage(name, &from, back, false)
                    .await
                    .map_err(|e| RegistryError::mlflow(&ctx, e))?;
                v
            }
            Selector::Version(_) => unreachable!("refused above"),
        };
        info!(model = %name, target = %key, from = %from, to = %to, by = %who.by, "rolled back");
        Ok((v, from))
    }

    /// The moves Ferry recorded for a model, oldest first.
    pub async fn moves(&self, name: &str) -> Result<Vec<history::Move>> {
        let model = self.get_model(name).await?;
        Ok(history::parse(model.tag_map().get(history::HISTORY_TAG).map(String::as_str)))
    }

    /// Records a move in MLflow: the model's history tag (what Rollback
    /// reads) and the moved-to version's last-move tag. The move itself has
    /// happened; a failure to record it is logged, not returned.
    async fn record(&self, name: &str, mv: history::Move) {
        let tag = match self.mlflow.get_registered_model(name).await {
            Ok(m) => m.tag_map().remove(history::HISTORY_TAG),
            Err(e) => return warn!(model = %name, error = %e, "move not recorded: cannot read the model's history"),
        };
        let json = serde_json::to_string(&mv).unwrap_or_default();
        let text = history::append(history::parse(tag.as_deref()), mv.clone());
        if let Err(e) = self.mlflow.set_registered_model_tag(name, history::HISTORY_TAG, &text).await {
            warn!(model = %name, error = %e, "move not recorded in the model's history");
        }
        if let Err(e) = self.mlflow.set_model_version_tag(name, &mv.to, history::LAST_MOVE_TAG, &json).await {
            warn!(model = %name, version = %mv.to, error = %e, "move not recorded on the version");
        }
    }

    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<()> {
        required("name", name)?;
        required("alias", alias)?;
        self.mlflow
            .delete_alias(name, alias)
            .await
            .map_err(|e| RegistryError::mlflow(format!("deleting alias {alias:?} of {name}"), e))?;
        info!(model = %name, alias, "alias deleted");
        self.hub.poke();
        Ok(())
    }

    /// The model's traffic policy (its `ferry.traffic` tag), if any, with the
    /// version each variant designates now.
    pub async fn traffic_policy(
        &self,
        name: &str,
    ) -> Result<(Option<(String, Vec<(Variant, String)>)>, Option<String>)> {
        // One read of the model: the policy and the rollout's last decision agree.
        let mut tags = self.get_model(name).await?.tag_map();
        let rollout = tags.remove(crate::rollout::STATUS_TAG);
        let Some(text) = tags.remove(ferry_traffic::POLICY_TAG) else { return Ok((None, rollout)) };
        // What is in MLflow may have been edited by hand: report it as it is.
        let resolved = match Policy::parse(name, &text) {
            Ok(router) => self.resolve_variants(name, router.variants()).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok((Some((text, resolved)), rollout))
    }

    /// Validates a policy, checks that every variant's selector designates a
    /// version now, and writes it to MLflow; `""` removes it.
    pub async fn set_traffic_policy(&self, name: &str, text: &str) -> Result<Option<(String, Vec<(Variant, String)>)>> {
        required("name", name)?;
        let ctx = format!("traffic policy of model {name:?}");
        if text.trim().is_empty() {
            match self.mlflow.delete_registered_model_tag(name, ferry_traffic::POLICY_TAG).await {
                Ok(()) => {}
                // Removing a policy that is not there is done already.
                Err(e) if e.is_not_found() && self.get_model(name).await.is_ok() => {}
                Err(e) => return Err(RegistryError::mlflow(&ctx, e)),
            }
            info!(model = %name, "traffic policy removed");
            self.hub.poke();
            return Ok(None);
        }
        let router = Policy::parse(name, text).map_err(|e| RegistryError::InvalidArgument(e.to_string()))?;
        let resolved = self.resolve_variants(name, router.variants()).await?;
        // Stored compact and canonical, so what the MLflow UI shows is what was validated.
        let policy: Policy = serde_json::from_str(text).map_err(|e| RegistryError::InvalidArgument(e.to_string()))?;
        let canonical = serde_json::to_string(&policy).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.mlflow
            .set_registered_model_tag(name, ferry_traffic::POLICY_TAG, &canonical)
            .await
            .map_err(|e| RegistryError::mlflow(&ctx, e))?;
        info!(model = %name, policy = %canonical, "traffic policy set");
        self.hub.poke();
        Ok(Some((canonical, resolved)))
    }

    async fn resolve_variants(&self, name: &str, variants: &[Variant]) -> Result<Vec<(Variant, String)>> {
        let mut out = Vec::with_capacity(variants.len());
        for v in variants {
            let version = self
                .mlflow
                .resolve(name, &v.selector)
                .await
                .map_err(|e| RegistryError::mlflow(format!("variant {:?} of model {name:?}", v.name), e))?
                .ok_or_else(|| {
                    RegistryError::InvalidArgument(format!(
                        "variant {:?}: {} of model {name:?} designates no version",
                        v.name, v.selector
                    ))
                })?;
            out.push((v.clone(), version.version));
        }
        Ok(out)
    }

    pub async fn get_model(&self, name: &str) -> Result<RegisteredModel> {
        required("name", name)?;
        self.mlflow.get_registered_model(name).await.map_err(|e| RegistryError::mlflow(format!("model {name:?}"), e))
    }

    pub async fn list_models(
        &self,
        filter: &str,
        page_size: i32,
        token: &str,
    ) -> Result<(Vec<RegisteredModel>, String)> {
        let page = self
            .mlflow
            .search_registered_models(Some(filter), self::page_size(page_size), Some(token).filter(|t| !t.is_empty()))
            .await
            .map_err(|e| RegistryError::mlflow("listing models", e))?;
        Ok((page.items, page.next_page_token.unwrap_or_default()))
    }

    /// One page of versions, newest first, with their aliases filled in
    /// (MLflow's version search leaves them out).
    pub async fn list_versions(&self, name: &str, page_size: i32, token: &str) -> Result<(Vec<ModelVersion>, String)> {
        let model = self.get_model(name).await?;
        let aliases = model.alias_map();
        let filter = format!("name = '{}'", escape_filter(name));
        let page = self
            .mlflow
            .search_model_versions(&filter, self::page_size(page_size), Some(token).filter(|t| !t.is_empty()))
            .await
            .map_err(|e| RegistryError::mlflow(format!("listing versions of {name:?}"), e))?;
        let versions = page
            .items
            .into_iter()
            .map(|mut v| {
                v.aliases = aliases.iter().filter(|(_, ver)| **ver == v.version).map(|(a, _)| a.clone()).collect();
                v
            })
            .collect();
        Ok((versions, page.next_page_token.unwrap_or_default()))
    }

    /// The version a selector designates (the same resolver inference follows),
    /// and the URI of its ONNX graph: the file `MLmodel` names, as inference
    /// downloads it; external data files sit beside it.
    pub async fn resolve(&self, name: &str, selector: &Selector) -> Result<(ModelVersion, String)> {
        required("name", name)?;
        let selector = match selector {
            Selector::Stage(s) => Selector::Stage(
                canonical_stage(s)
                    .ok_or_else(|| RegistryError::InvalidArgument(format!("unknown stage {s:?}")))?
                    .to_owned(),
            ),
            other @ (Selector::Alias(_) | Selector::Version(_)) => other.clone(),
        };
        let v = self
            .mlflow
            .resolve(name, &selector)
            .await
            .map_err(|e| RegistryError::mlflow(format!("model {name:?}"), e))?
            .ok_or_else(|| RegistryError::NotFound(format!("model {name:?} has no version for {selector}")))?;
        let dir = self
            .mlflow
            .resolve_model_uri(name, &v.version)
            .await
            .map_err(|e| RegistryError::mlflow(format!("download URI of {name:?} version {}", v.version), e))?;
        let dir = dir.trim_end_matches('/');
        let file = match self.mlflow.read_artifact_text(&format!("{dir}/{}", ferry_artifact::MLMODEL), 1 << 20).await {
            Ok(text) => ferry_artifact::MlModel::parse(&text)
                .and_then(|m| m.onnx_file())
                .map_err(|e| RegistryError::InvalidArgument(format!("model {name:?} version {}: {e}", v.version)))?,
            // A bare folder (registered before MLmodel was written): Ferry's tag, or its default.
            Err(e) if e.is_not_found() => v.tag(tags::ARTIFACT_PATH).unwrap_or("model.onnx").to_owned(),
            Err(e) => return Err(RegistryError::mlflow(format!("MLmodel of {name:?} version {}", v.version), e)),
        };
        Ok((v, format!("{dir}/{file}")))
    }
}

/// Who asks for a move, and why: recorded with it.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// The caller's identity (its token's name).
    pub by: String,
    pub reason: String,
    pub rollback: bool,
}

impl Who {
    /// The record of a move this caller makes now.
    fn moved(&self, target: String, from: Option<String>, to: &str) -> history::Move {
        let at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        history::Move {
            target,
            from: from.unwrap_or_default(),
            to: to.to_owned(),
            by: self.by.clone(),
            at_ms,
            reason: self.reason.clone(),
            to_previous_stage: String::new(),
            rollback: self.rollback,
        }
    }
}

pub(crate) fn required(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(RegistryError::InvalidArgument(format!("{field} is required")));
    }
    Ok(())
}
