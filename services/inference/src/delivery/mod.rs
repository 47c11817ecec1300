//! Model delivery: decide which version each slot should serve, fetch it,
//! verify it, load it, warm it up and only then swap it in.
//!
//! Triggers come from the registry's `WatchModels` stream. While the registry
//! is unreachable each slot polls MLflow itself, so the data plane never
//! depends on the control plane being up. Either way the decision is made
//! against MLflow, the source of truth; events are only hints.
//!
//! `follow.rs` follows the registry's stream; `load.rs` resolves, loads and
//! installs a slot's version; `fetch.rs` downloads its files from a store
//! (`store.rs`: MLflow's proxy or S3) into the model's cache (`cache.rs`).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, info_span};

mod cache;
mod fetch;
mod follow;
mod load;
mod registry;
mod report;
mod store;

use self::{
    cache::ModelCache,
    load::Loader,
    registry::{BearerToken, RegistryClient},
    store::Stores,
};
use crate::{engine::Runtime, serving::Models};

#[derive(Debug, Clone)]
pub(crate) struct DeliveryConfig {
    /// The registry's gRPC URL; several, comma-separated, are tried in turn.
    pub(crate) registry_url: Option<String>,
    pub(crate) registry_token: Option<ferry_telemetry::Secret>,
    /// How https:// registries and remote OIP servers are verified, and the
    /// client certificate presented to them.
    pub(crate) tls: ferry_tls::ClientTls,
    pub(crate) work_dir: PathBuf,
    /// Limit on the sum of one version's file sizes.
    pub(crate) max_model_bytes: u64,
    /// No byte for this long cuts a download (it is resumed).
    pub(crate) download_stall: Duration,
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
    // The registry this replica follows, while it does: resolution and files come from it.
    let (connected_tx, connected) = watch::channel::<Option<RegistryClient>>(None);
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
            cache: ModelCache::new(&cfg.work_dir, &slot.spec.name, cfg.keep_versions),
            cfg: Arc::clone(&cfg),
            registry: connected.clone(),
        };
        let span = info_span!("delivery", model = %slot.spec);
        tasks.spawn(slot_task(loader, notify, shutdown.clone()).instrument(span));
    }
    if let Some(url) = cfg.registry_url.clone() {
        let token = BearerToken::new(cfg.registry_token.as_ref());
        let urls: Vec<String> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        tasks.spawn(report::report_traffic(connected.clone(), Arc::clone(&models), shutdown.clone()));
        tasks.spawn(
            follow::follow_registry(
                urls,
                cfg.tls.clone(),
                token,
                triggers,
                Arc::clone(&models),
                connected_tx,
                shutdown.clone(),
            )
            .instrument(info_span!("registry_watch")),
        );
    }
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        tasks.shutdown().await;
    })
}

/// Wakes one slot's loader, remembering when the registry first observed the
/// change it has not yet served (for the delivery-lag metric).
#[derive(Debug, Default)]
pub(super) struct Trigger {
    notify: Notify,
    observed_at: std::sync::Mutex<Option<SystemTime>>,
}

impl Trigger {
    pub(super) fn fire(&self, observed_at: Option<SystemTime>) {
        if let (Some(at), Ok(mut slot)) = (observed_at, self.observed_at.lock()) {
            slot.get_or_insert(at);
        }
        self.notify.notify_one();
    }

    fn take_observed_at(&self) -> Option<SystemTime> {
        self.observed_at.lock().ok().and_then(|mut s| s.take())
    }
}

/// Reconciles one slot whenever the registry says its model changed, and on a
/// timer: every poll interval while the registry is unreachable, and at a
/// slower pace as a backstop while it is connected.
async fn slot_task(loader: Loader, notify: Arc<Trigger>, mut shutdown: watch::Receiver<bool>) {
    loop {
        loader.reconcile(notify.take_observed_at()).await;
        let connected = loader.registry.borrow().is_some();
        let wait = if connected { loader.cfg.poll_interval * 15 } else { loader.cfg.poll_interval };
        tokio::select! {
            () = notify.notify.notified() => {},
            () = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => return,
        }
    }
}
