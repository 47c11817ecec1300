//! Model delivery: decide which version each slot should serve, fetch it,
//! verify it, load it, warm it up and only then swap it in.
//!
//! Triggers come from the registry's `WatchModels` stream. While the registry
//! is unreachable each slot polls MLflow itself, so the data plane never
//! depends on the control plane being up. Either way the decision is made
//! against MLflow, the source of truth; events are only hints.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ferry_mlflow::{ModelVersion, tags};
use ferry_proto::registry::v1::{ChangeKind, WatchModelsRequest, model_registry_client::ModelRegistryClient};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    engine::Runtime,
    fetch::{Fetcher, sanitize},
    remote::{self, RemoteModel},
    serving::{Backend, LoadTiming, LoadedModel, ModelSlot, Models},
    store::Stores,
};

#[derive(Debug, Clone)]
pub(crate) struct DeliveryConfig {
    pub(crate) registry_url: Option<String>,
    pub(crate) work_dir: PathBuf,
    /// Limit on the sum of one version's file sizes.
    pub(crate) max_model_bytes: u64,
    pub(crate) poll_interval: Duration,
    /// Model versions kept on disk per model (serving one included), for fast rollback.
    pub(crate) keep_versions: usize,
}

/// Starts one delivery task per slot and, when configured, the registry subscription.
pub(crate) fn spawn(
    models: Arc<Models>,
    mlflow: ferry_mlflow::Client,
    runtime: Runtime,
    cfg: DeliveryConfig,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let cfg = Arc::new(cfg);
    let (connected_tx, connected) = watch::channel(false);
    let mut triggers = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let stores = Stores::default();
    for slot in models.slots() {
        let notify = Arc::new(Trigger::default());
        triggers.insert(slot.spec.name.clone(), Arc::clone(&notify));
        let loader = Loader {
            models: Arc::clone(&models),
            slot: Arc::clone(slot),
            mlflow: mlflow.clone(),
            stores: stores.clone(),
            runtime: runtime.clone(),
            cfg: Arc::clone(&cfg),
        };
        let span = info_span!("delivery", model = %slot.spec);
        tasks.spawn(slot_task(loader, notify, connected.clone(), shutdown.clone()).instrument(span));
    }
    if let Some(url) = cfg.registry_url.clone() {
        tasks.spawn(
            watch_registry(url, triggers, connected_tx, shutdown.clone()).instrument(info_span!("registry_watch")),
        );
    }
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        tasks.shutdown().await;
    })
}

/// Reconciles one slot whenever the registry says its model changed, and on a
/// timer: every poll interval while the registry is unreachable, and at a
/// slower pace as a backstop while it is connected.
/// Wakes one slot's loader, remembering when the registry first observed the
/// change it has not yet served (for the delivery-lag metric).
#[derive(Debug, Default)]
struct Trigger {
    notify: Notify,
    observed_at: std::sync::Mutex<Option<SystemTime>>,
}

impl Trigger {
    fn fire(&self, observed_at: Option<SystemTime>) {
        if let (Some(at), Ok(mut slot)) = (observed_at, self.observed_at.lock()) {
            slot.get_or_insert(at);
        }
        self.notify.notify_one();
    }

    fn take_observed_at(&self) -> Option<SystemTime> {
        self.observed_at.lock().ok().and_then(|mut s| s.take())
    }
}

async fn slot_task(
    loader: Loader,
    notify: Arc<Trigger>,
    connected: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        loader.reconcile(notify.take_observed_at()).await;
        let wait = if *connected.borrow() { loader.cfg.poll_interval * 15 } else { loader.cfg.poll_interval };
        tokio::select! {
            () = notify.notify.notified() => {},
            () = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => return,
        }
    }
}

/// Follows `WatchModels`, resuming from the last revision after a reconnect.
async fn watch_registry(
    url: String,
    triggers: HashMap<String, Arc<Trigger>>,
    connected: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let names: Vec<String> = triggers.keys().cloned().collect();
    let (mut since, mut epoch) = (0u64, String::new());
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut client = ModelRegistryClient::connect(url.clone()).await.map_err(|e| e.to_string())?;
            let req = WatchModelsRequest { names: names.clone(), since_revision: since, epoch: epoch.clone() };
            let mut stream = client.watch_models(req).await.map_err(|e| e.message().to_owned())?.into_inner();
            info!(%url, since, "subscribed to registry changes");
            connected.send_replace(true);
            loop {
                match stream.message().await {
                    Ok(Some(change)) => {
                        since = change.revision;
                        epoch = change.epoch.clone();
                        if change.kind() == ChangeKind::SnapshotEnd {
                            triggers.values().for_each(|n| n.fire(None));
                        } else if let Some(n) = triggers.get(&change.name) {
                            debug!(revision = change.revision, kind = ?change.kind(), model = %change.name, version = %change.version, "model changed");
                            let observed_at = change.observed_at.and_then(|t| {
                                SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                                    u64::try_from(t.seconds).ok()?,
                                    u32::try_from(t.nanos).ok()?,
                                ))
                            });
                            n.fire(observed_at);
                        }
                    }
                    Ok(None) => return Err::<(), String>("stream ended".into()),
                    Err(status) => return Err(status.message().to_owned()),
                }
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => return,
        };
        if connected.send_replace(false) {
            // Lost the stream: slots fall back to polling MLflow; catch up now.
            triggers.values().for_each(|n| n.fire(None));
            backoff = Duration::from_millis(200);
        }
        if let Err(e) = result {
            warn!(%url, error = %e, "registry unreachable; polling MLflow directly until it is back");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {},
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

struct Loader {
    models: Arc<Models>,
    slot: Arc<ModelSlot>,
    mlflow: ferry_mlflow::Client,
    stores: Stores,
    runtime: Runtime,
    cfg: Arc<DeliveryConfig>,
}

/// A failed version is retried after this long, not on every trigger.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

impl Loader {
    /// `observed_at`: when the registry observed the change that woke this
    /// reconcile, if one did.
    async fn reconcile(&self, observed_at: Option<SystemTime>) {
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
                    self.clean_files(&dir).await;
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
            && matches!(&cur.backend, Backend::Remote(r) if &r.endpoint == endpoint && &r.name == remote_name)
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
                        backend: Backend::Remote(remote),
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
        let root = self.cfg.work_dir.join(sanitize(&self.slot.spec.name));
        let fetcher =
            Fetcher { mlflow: &self.mlflow, stores: &self.stores, root: &root, max_bytes: self.cfg.max_model_bytes };
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

    /// Keeps the newest `keep_versions` version folders of this model (the
    /// serving one always), and drops staging folders and single files left
    /// by an interrupted download or an older Ferry.
    async fn clean_files(&self, serving: &Path) {
        let Some(root) = serving.parent() else { return };
        let Ok(mut rd) = tokio::fs::read_dir(root).await else { return };
        let mut versions = Vec::new();
        while let Ok(Some(e)) = rd.next_entry().await {
            let p = e.path();
            if p == serving {
                continue;
            }
            let Ok(meta) = e.metadata().await else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            if meta.is_dir() && name.starts_with('v') {
                versions.push((meta.modified().ok(), p));
            } else if meta.is_file() && name.ends_with(".onnx") {
                let _ = tokio::fs::remove_file(&p).await;
            } else if meta.is_dir() && name.starts_with(".staging-") {
                // Safe: this slot's one loader task both downloads and cleans up.
                let _ = tokio::fs::remove_dir_all(&p).await;
            }
        }
        versions.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, p) in versions.into_iter().skip(self.cfg.keep_versions.saturating_sub(1)) {
            let _ = tokio::fs::remove_dir_all(&p).await;
        }
    }
}
