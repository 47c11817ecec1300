//! Loading: which version MLflow designates for a slot now, and bringing it
//! in — fetched into the cache, loaded and warmed off the async threads,
//! then installed; a failure is recorded and the serving version stays.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ferry_mlflow::{ModelVersion, tags};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{DeliveryConfig, cache::ModelCache, fetch::Fetcher, store::Stores};
use crate::{
    engine::Runtime,
    remote::{self, RemoteModel},
    serving::{Backend, LoadTiming, LoadedModel, ModelSlot, Models},
};

pub(super) struct Loader {
    pub(super) models: Arc<Models>,
    pub(super) slot: Arc<ModelSlot>,
    pub(super) mlflow: ferry_mlflow::Client,
    pub(super) stores: Stores,
    pub(super) runtime: Runtime,
    pub(super) cache: ModelCache,
    pub(super) cfg: Arc<DeliveryConfig>,
}

/// A failed version is retried after this long, not on every trigger.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

impl Loader {
    /// `observed_at`: when the registry observed the change that woke this
    /// reconcile, if one did.
    pub(super) async fn reconcile(&self, observed_at: Option<SystemTime>) {
        let noticed = SystemTime::now();
        let target = match self.resolve().await {
            Ok(Some(t)) => t,
            Ok(None) => {
                debug!("no version designated yet");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot resolve the serving version; keeping the current one");
                return;
            }
        };
        if self.slot.spec.remote {
            return self.reconcile_remote(target).await;
        }
        let sha = target.tag(tags::SHA256).unwrap_or_default().to_owned();
        if let Some(cur) = self.slot.current()
            && cur.version == target.version
            && (sha.is_empty() || cur.sha256 == sha)
        {
            return;
        }
        if self.slot.failed_recently(&target.version, &sha, RETRY_FAILED_AFTER) {
            return;
        }
        let started = Instant::now();
        let span = info_span!("model.load", version = %target.version);
        match self.load(&target).instrument(span).await {
            Ok(model) => {
                let dir = match &model.backend {
                    Backend::Local { dir, .. } => Some(dir.clone()),
                    Backend::Remote(_) => None,
                };
                let since = observed_at.map_or(noticed, |at| at.min(noticed));
                let lag = SystemTime::now().duration_since(since).unwrap_or_default();
                let timing = LoadTiming { took: started.elapsed(), lag };
                let old = self.models.install(&self.slot.spec.name, model, Some(timing));
                info!(
                    version = %target.version,
                    previous = old.as_ref().map(|o| o.version.as_str()).unwrap_or("none"),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "now serving"
                );
                // The last holder frees the old sessions; give the memory back to the OS.
                if old.is_some_and(|o| Arc::strong_count(&o) == 1) {
                    tokio::task::spawn_blocking(crate::memory::trim);
                }
                if let Some(dir) = dir {
                    self.cache.clean(&dir).await;
                }
            }
            Err(error) => self.fail(&target.version, &sha, error),
        }
    }

    /// Records a failed load; the current version keeps serving.
    fn fail(&self, version: &str, sha256: &str, error: String) {
        warn!(version, %error, "load failed; the current version keeps serving");
        self.slot.fail(version, sha256, error);
    }

    /// A remote slot: the registered model's tags say where the version is
    /// served; connect there and read its signature.
    async fn reconcile_remote(&self, target: ModelVersion) {
        let name = &self.slot.spec.name;
        let model = match self.mlflow.get_registered_model(name).await {
            Ok(m) => m,
            Err(e) => return warn!(error = %e, "cannot read the registered model; keeping the current target"),
        };
        let tags = model.tag_map();
        let Some(endpoint) = tags.get(remote::ENDPOINT_TAG) else {
            let error = format!("registered model {name:?} has no {} tag naming its server", remote::ENDPOINT_TAG);
            return self.fail(&target.version, "", error);
        };
        let remote_name = tags.get(remote::NAME_TAG).unwrap_or(name);
        if let Some(cur) = self.slot.current()
            && cur.version == target.version
            && matches!(&cur.backend, Backend::Remote(r) if r.target() == (endpoint.as_str(), remote_name.as_str()))
        {
            return;
        }
        match RemoteModel::connect(endpoint, remote_name).await {
            Ok((remote, signature)) => {
                info!(version = %target.version, %endpoint, "now forwarding to the remote server");
                self.models.install(
                    name,
                    LoadedModel {
                        version: target.version.clone(),
                        sha256: String::new(),
                        verified: false,
                        signature,
                        backend: Backend::Remote(Box::new(remote)),
                        loaded_at: Instant::now(),
                    },
                    None,
                );
            }
            Err(error) => self.fail(&target.version, "", error),
        }
    }

    /// Which version MLflow designates for this slot right now.
    async fn resolve(&self) -> ferry_mlflow::Result<Option<ModelVersion>> {
        self.mlflow.resolve(&self.slot.spec.name, &self.slot.spec.selector).await
    }

    async fn load(&self, target: &ModelVersion) -> Result<LoadedModel, String> {
        let fetcher = Fetcher {
            mlflow: &self.mlflow,
            stores: &self.stores,
            cache: &self.cache,
            max_bytes: self.cfg.max_model_bytes,
        };
        let fetched = fetcher.fetch(target).await?;
        let runtime = self.runtime.clone();
        let (opts, warmups) = (self.slot.settings.session, self.slot.settings.warmup_runs);
        let onnx = fetched.onnx.clone();
        let (threads, exec) = (format!("ort-{}", self.slot.spec.name), Arc::clone(&self.slot.stats.exec));
        // ONNX Runtime reads the graph from its path, so external data resolves beside it.
        let loaded = tokio::task::spawn_blocking(move || {
            let engine = runtime.load_model(&onnx, opts, &threads, exec)?;
            engine.warm_up(warmups).map_err(|e| format!("warm-up failed: {e}"))?;
            Ok::<_, String>(engine)
        })
        .await
        .map_err(|e| format!("load task failed: {e}"))
        .and_then(|r| r);
        let engine = match loaded {
            Ok(engine) => engine,
            Err(e) => {
                // A version that does not load is of no use for a rollback either.
                let _ = tokio::fs::remove_dir_all(&fetched.dir).await;
                return Err(e);
            }
        };
        Ok(LoadedModel {
            version: target.version.clone(),
            sha256: fetched.digest,
            verified: fetched.verified,
            signature: engine.signature.clone(),
            backend: Backend::Local { engine, dir: fetched.dir },
            loaded_at: Instant::now(),
        })
    }
}
