//! Loading: which version MLflow designates for a slot now, and bringing it
//! in — fetched into the cache, loaded and warmed off the async threads,
//! then installed; a failure is recorded and the serving version stays.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ferry_mlflow::{ModelVersion, tags};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    DeliveryConfig,
    cache::{Fetched, ModelCache},
    fetch::Fetcher,
    registry::{self, RegistryClient},
    store::Stores,
};
use crate::{
    engine::Runtime,
    remote::{self, RemoteModel},
    serving::{Backend, LoadTiming, LoadedModel, ModelSlot, Models, Routing},
    spec::{ModelSpec, Selector},
};

pub(super) struct Loader {
    pub(super) models: Arc<Models>,
    pub(super) slot: Arc<ModelSlot>,
    pub(super) mlflow: ferry_mlflow::Client,
    pub(super) stores: Stores,
    pub(super) runtime: Runtime,
    pub(super) cache: ModelCache,
    pub(super) cfg: Arc<DeliveryConfig>,
    /// The registry followed, while there is one: asked before MLflow.
    pub(super) registry: watch::Receiver<Option<RegistryClient>>,
}

/// A failed version is retried after this long, not on every trigger.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

impl Loader {
    /// Brings the model's slots in line with MLflow: its traffic policy, then
    /// the configured slot and each variant's. `observed_at`: when the
    /// registry observed the change that woke this reconcile, if one did.
    pub(super) async fn reconcile(&self, observed_at: Option<SystemTime>) {
        if self.slot.spec.remote {
            return match self.resolve(&self.slot).await {
                Ok(Some(target)) => self.reconcile_remote(target).await,
                Ok(None) => debug!("no version designated yet"),
                Err(e) => warn!(error = %e, "cannot resolve the serving version; keeping the current one"),
            };
        }
        self.apply_policy().await;
        self.reconcile_slot(&self.slot, observed_at).await;
        // Variants load one after another, after the configured slot.
        if let Some(routing) = self.slot.routing() {
            for slot in routing.slots.iter().filter(|s| !Arc::ptr_eq(s, &self.slot)) {
                let span = info_span!("variant", selector = %slot.spec.selector);
                self.reconcile_slot(slot, observed_at).instrument(span).await;
            }
        }
    }

    /// Reads the registered model's `ferry.traffic` tag and puts it in force
    /// when it changed; a policy that does not validate is reported (status,
    /// metric, log) and the last valid one stays. Without the tag the model
    /// is served as configured.
    async fn apply_policy(&self) {
        let name = &self.slot.spec.name;
        // A model pinned by the operator serves its pin alone.
        if self.slot.spec.pin.overrides.is_some() {
            if self.slot.routing().is_some() {
                self.slot.set_routing(None);
            }
            return;
        }
        let text = match self.registry_resolve(&[]).await {
            Some((policy, _)) => policy,
            None => match self.mlflow_now(&self.slot).await.get_registered_model(name).await {
                Ok(m) => m.tag_map().remove(ferry_traffic::POLICY_TAG),
                Err(e) if e.is_not_found() => None,
                Err(e) => return warn!(error = %e, "cannot read the traffic policy; keeping the one in force"),
            },
        };
        let current = self.slot.routing();
        let Some(text) = text else {
            if current.is_some() {
                info!("traffic policy removed; serving {} alone", self.slot.spec.selector);
                self.slot.set_routing(None);
            }
            return;
        };
        if current.as_ref().is_some_and(|r| r.source == text) {
            return;
        }
        let router = match ferry_traffic::Policy::parse(name, &text) {
            Ok(router) => router,
            Err(e) => {
                if self.slot.refuse_policy(e.to_string()) {
                    warn!(error = %e, "traffic policy refused; the last valid one stays in force");
                }
                return;
            }
        };
        // Each variant's slot: the configured one for its selector, a slot the
        // policy in force already has (it keeps its loaded version), or a new one.
        let slots = router
            .variants()
            .iter()
            .map(|v| {
                // An operator's pin for this variant wins over its selector.
                let selector = match self.slot.spec.pin.variants.get(&v.name) {
                    Some(version) => Selector::Version(version.clone()),
                    None => v.selector.clone(),
                };
                if selector == self.slot.spec.selector {
                    return Arc::clone(&self.slot);
                }
                let kept = current.iter().flat_map(|r| r.slots.iter()).find(|s| s.spec.selector == selector);
                kept.map_or_else(
                    || {
                        let spec = ModelSpec { name: name.clone(), selector, remote: false, pin: Default::default() };
                        Arc::new(ModelSlot::new(spec, self.slot.settings))
                    },
                    Arc::clone,
                )
            })
            .collect();
        info!(policy = %text, "traffic policy in force");
        self.slot.set_routing(Some(Routing::new(router, slots, text, &self.slot)));
    }

    /// Loads and installs the version `slot`'s selector designates, if it is
    /// not the one serving (and did not just fail).
    async fn reconcile_slot(&self, slot: &Arc<ModelSlot>, observed_at: Option<SystemTime>) {
        let noticed = SystemTime::now();
        let target = match self.resolve(slot).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                debug!("no version designated yet");
                return;
            }
            Err(e) => {
                if slot.current().is_none() {
                    return self.serve_last(slot, &e).await;
                }
                warn!(error = %e, "cannot resolve the serving version; keeping the current one");
                return;
            }
        };
        let sha = target.tag(tags::SHA256).unwrap_or_default().to_owned();
        if let Some(cur) = slot.current()
            && cur.version == target.version
            && (sha.is_empty() || cur.sha256 == sha)
        {
            return;
        }
        if slot.failed_recently(&target.version, &sha, RETRY_FAILED_AFTER) {
            return;
        }
        let started = Instant::now();
        let span = info_span!("model.load", version = %target.version);
        match self.load(slot, &target).instrument(span).await {
            Ok(model) => {
                let since = observed_at.map_or(noticed, |at| at.min(noticed));
                let lag = SystemTime::now().duration_since(since).unwrap_or_default();
                let timing = LoadTiming { took: started.elapsed(), lag };
                let old = self.models.install_in(slot, model, Some(timing));
                info!(
                    version = %target.version,
                    previous = old.as_ref().map(|o| o.version.as_str()).unwrap_or("none"),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "now serving"
                );
                // Loading's buffers (the parsed model, the weights read once) are
                // freed by now: give them back to the OS. The old version's
                // workers do the same for its sessions once its last request is done.
                drop(old);
                tokio::task::spawn_blocking(crate::memory::trim);
                if let Some(Backend::Local { dir, .. }) = slot.current().as_ref().map(|m| &m.backend) {
                    self.cache.mark_served(&slot.spec.selector.to_string(), dir).await;
                }
                self.cache.clean(&self.serving_dirs()).await;
            }
            Err(error) => Self::fail(slot, &target.version, &sha, error),
        }
    }

    /// MLflow cannot be reached and nothing serves yet (a restart during an
    /// outage): serve the version this selector served last, from the local
    /// cache, re-hashed first; MLflow decides again as soon as it answers.
    async fn serve_last(&self, slot: &Arc<ModelSlot>, error: &ferry_mlflow::Error) {
        let selector = slot.spec.selector.to_string();
        let Some((version, fetched)) = self.cache.last_served(&selector).await else {
            return warn!(%error, "MLflow cannot be reached and no version is kept on disk for {selector}; waiting");
        };
        let dir = fetched.dir.clone();
        match self.engine(slot, &version, fetched).await {
            Ok(model) => {
                warn!(%error, version, "MLflow cannot be reached: serving the version last served, from the local cache");
                self.models.install_in(slot, model, None);
                tokio::task::spawn_blocking(crate::memory::trim);
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Self::fail(slot, &version, "", e);
            }
        }
    }

    /// The folders of every version this model serves (all variants).
    fn serving_dirs(&self) -> Vec<std::path::PathBuf> {
        let routed = self.slot.routing().map(|r| r.slots.clone()).unwrap_or_default();
        std::iter::once(&self.slot)
            .chain(&routed)
            .filter_map(|s| match &s.current()?.backend {
                Backend::Local { dir, .. } => Some(dir.clone()),
                Backend::Remote(_) => None,
            })
            .collect()
    }

    /// Records a failed load; the current version keeps serving.
    fn fail(slot: &ModelSlot, version: &str, sha256: &str, error: String) {
        warn!(version, %error, "load failed; the current version keeps serving");
        slot.fail(version, sha256, error);
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
            return Self::fail(&self.slot, &target.version, "", error);
        };
        let remote_name = tags.get(remote::NAME_TAG).unwrap_or(name);
        if let Some(cur) = self.slot.current()
            && cur.version == target.version
            && matches!(&cur.backend, Backend::Remote(r) if r.target() == (endpoint.as_str(), remote_name.as_str()))
        {
            return;
        }
        match RemoteModel::connect(&self.cfg.tls, endpoint, remote_name).await {
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
                        requests: Default::default(),
                    },
                    None,
                );
            }
            Err(error) => Self::fail(&self.slot, &target.version, "", error),
        }
    }

    /// Which version MLflow designates for `slot` right now: as the registry
    /// followed sees it, or MLflow itself when there is none.
    async fn resolve(&self, slot: &ModelSlot) -> ferry_mlflow::Result<Option<ModelVersion>> {
        if !slot.spec.remote
            && let Some((_, mut versions)) = self.registry_resolve(&[&slot.spec.selector]).await
        {
            return Ok(versions.pop().flatten());
        }
        self.mlflow_now(slot).await.resolve(&slot.spec.name, &slot.spec.selector).await
    }

    /// MLflow, asked once per call while nothing serves on `slot` yet and a
    /// version it served is kept on disk: at a restart during an outage, the
    /// retries' backoff only delayed serving that version (3.1 s to ready,
    /// against 0.12 s; BENCHMARKS.md, cold start). Otherwise with retries.
    async fn mlflow_now(&self, slot: &ModelSlot) -> std::borrow::Cow<'_, ferry_mlflow::Client> {
        if slot.current().is_none() && self.cache.has_served(&slot.spec.selector.to_string()).await {
            std::borrow::Cow::Owned(self.mlflow.single_attempt())
        } else {
            std::borrow::Cow::Borrowed(&self.mlflow)
        }
    }

    /// The traffic policy and the selectors' versions from the registry
    /// followed; `None` (ask MLflow) without one or when it cannot answer.
    async fn registry_resolve(
        &self,
        selectors: &[&crate::spec::Selector],
    ) -> Option<(Option<String>, Vec<Option<ModelVersion>>)> {
        let client = self.registry.borrow().clone()?;
        match registry::resolve(&client, &self.slot.spec.name, selectors).await {
            Ok(answer) => Some(answer),
            Err(e) => {
                debug!(error = %e.message(), "the registry cannot resolve; asking MLflow");
                None
            }
        }
    }

    async fn load(&self, slot: &ModelSlot, target: &ModelVersion) -> Result<LoadedModel, String> {
        let registry = self.registry.borrow().clone();
        let fetcher = |registry| Fetcher {
            mlflow: &self.mlflow,
            stores: &self.stores,
            cache: &self.cache,
            registry,
            max_bytes: self.cfg.max_model_bytes,
            stall: self.cfg.download_stall,
        };
        let fetched = match registry {
            // The registry's copy first; whatever goes wrong there, MLflow's.
            Some(client) => match fetcher(Some(client)).fetch(target).await {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "fetching through the registry failed; fetching from MLflow");
                    fetcher(None).fetch(target).await?
                }
            },
            None => fetcher(None).fetch(target).await?,
        };
        self.engine(slot, &target.version, fetched).await
    }

    /// Loads and warms a version's files off the async threads.
    async fn engine(&self, slot: &ModelSlot, version: &str, fetched: Fetched) -> Result<LoadedModel, String> {
        let runtime = self.runtime.clone();
        let (opts, warmups) = (slot.settings.session, slot.settings.warmup_runs);
        let onnx = fetched.onnx.clone();
        let (threads, exec) = (format!("ort-{}", slot.spec.name), Arc::clone(&slot.stats.exec));
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
            version: version.to_owned(),
            sha256: fetched.digest,
            verified: fetched.verified,
            signature: engine.signature.clone(),
            backend: Backend::Local { engine, dir: fetched.dir },
            loaded_at: Instant::now(),
            requests: Default::default(),
        })
    }
}
