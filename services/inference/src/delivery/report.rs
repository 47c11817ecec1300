//! Reporting to the registry: every few seconds, each routed model's
//! cumulative figures per variant — requests, failures, latencies and, for a
//! shadow, its agreement — so that a rollout is decided once, on the whole
//! fleet's figures (`ReportTraffic`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use ferry_proto::registry::v1::{ReportTrafficRequest, VariantTraffic};
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
            let shadow = &s.stats.shadow;
            out.push(VariantTraffic {
                model: slot.spec.name.clone(),
                variant: v.name.clone(),
                requests: ok + failed,
                errors: failed,
                latency: s.stats.latency.snapshot(),
                shadow_classified: shadow.classified.load(Ordering::Relaxed),
                shadow_agreed: shadow.agreed.load(Ordering::Relaxed),
                shadow_diffed: shadow.diffed.load(Ordering::Relaxed),
                shadow_abs_diff_nano: shadow.abs_diff_nano.load(Ordering::Relaxed),
            });
        }
    }
    out
}

/// Reports to the registry this replica follows, while it follows one.
pub(super) async fn report_traffic(
    registry: watch::Receiver<Option<super::RegistryClient>>,
    models: Arc<Models>,
    mut shutdown: watch::Receiver<bool>,
) {
    let replica = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let mut refused = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {},
            _ = shutdown.changed() => return,
        }
        let variants = figures(&models);
        let Some(mut client) = registry.borrow().clone() else { continue };
        if variants.is_empty() {
            continue;
        }
        if let Err(e) = client.report_traffic(ReportTrafficRequest { replica: replica.clone(), variants }).await {
            // Refused for want of a token is a configuration error worth saying loudly, once.
            if e.code() == tonic::Code::Unauthenticated || e.code() == tonic::Code::PermissionDenied {
                if !refused {
                    tracing::warn!(error = %e.message(), "the registry refuses traffic reports (set FERRY_REGISTRY_TOKEN): rollouts will not advance");
                }
                refused = true;
            } else {
                debug!(error = %e.message(), "traffic report not delivered");
            }
        }
    }
}
