//! Reporting to the registry: every few seconds, each routed model's
//! cumulative request and failure counts per variant, so that a rollout is
//! decided once, on the whole fleet's figures (`ReportTraffic`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use ferry_proto::registry::v1::{ReportTrafficRequest, VariantTraffic, model_registry_client::ModelRegistryClient};
use tokio::sync::watch;
use tracing::debug;

use crate::serving::Models;

const EVERY: Duration = Duration::from_secs(2);

/// What this replica has served, per variant of each routed model.
pub(crate) fn figures(models: &Models) -> Vec<VariantTraffic> {
    let mut out = Vec::new();
    for slot in models.slots() {
        let Some(routing) = slot.routing() else { continue };
        for (v, s) in routing.router.variants().iter().zip(&routing.slots) {
            let (ok, failed) =
                (s.stats.success_count.load(Ordering::Relaxed), s.stats.fail_count.load(Ordering::Relaxed));
            out.push(VariantTraffic {
                model: slot.spec.name.clone(),
                variant: v.name.clone(),
                requests: ok + failed,
                errors: failed,
            });
        }
    }
    out
}

pub(super) async fn report_traffic(url: String, models: Arc<Models>, mut shutdown: watch::Receiver<bool>) {
    let replica = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) else { return };
    let mut client = ModelRegistryClient::new(endpoint.connect_lazy());
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {},
            _ = shutdown.changed() => return,
        }
        let variants = figures(&models);
        if variants.is_empty() {
            continue;
        }
        if let Err(e) = client.report_traffic(ReportTrafficRequest { replica: replica.clone(), variants }).await {
            debug!(error = %e.message(), "traffic report not delivered");
        }
    }
}
