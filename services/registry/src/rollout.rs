//! Rollouts, decided once for the fleet: inference replicas report their
//! cumulative counts per variant (`ReportTraffic`); every second this loop
//! sums the fresh reports, and for each model whose traffic policy carries a
//! rollout plan, moves the variant's weight to the next step while its error
//! rate holds, or back to 0 on a breach — by writing the policy to MLflow,
//! which every replica follows. The outcome is recorded in the model's
//! `ferry.rollout` tag.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_proto::registry::v1::VariantTraffic;
use ferry_traffic::{Decision, Policy};
use serde_json::json;
use tracing::{info, warn};

use crate::service::Registry;

/// The registered-model tag holding the last rollout decision.
pub const STATUS_TAG: &str = "ferry.rollout";
/// A replica not heard from for this long no longer counts.
const FRESH: Duration = Duration::from_secs(30);

/// The latest report of each replica.
#[derive(Debug, Default)]
pub struct Traffic {
    reports: Mutex<HashMap<String, (Instant, Vec<VariantTraffic>)>>,
}

impl Traffic {
    pub fn record(&self, replica: String, variants: Vec<VariantTraffic>) {
        if let Ok(mut r) = self.reports.lock() {
            r.insert(replica, (Instant::now(), variants));
            r.retain(|_, (at, _)| at.elapsed() < FRESH * 4);
        }
    }

    /// Requests and failures of `model`'s `variant`, summed over the replicas heard from lately.
    fn totals(&self, model: &str, variant: &str) -> (u64, u64) {
        let Ok(r) = self.reports.lock() else { return (0, 0) };
        r.values()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .flat_map(|(_, vs)| vs.iter().filter(|v| v.model == model && v.variant == variant))
            .fold((0, 0), |(q, e), v| (q + v.requests, e + v.errors))
    }
}

/// Where one model's rollout step started.
struct Step {
    source: String,
    started: Instant,
    baseline: (u64, u64),
}

pub async fn run(registry: Registry, traffic: Arc<Traffic>) {
    let mut steps: HashMap<String, Step> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (model, text) in registry.hub.policies() {
            let Ok(policy) = serde_json::from_str::<Policy>(&text) else { continue };
            let Some(plan) = policy.rollout.clone().filter(|_| policy.validate(&model).is_ok()) else {
                steps.remove(&model);
                continue;
            };
            let weight = policy.variants.iter().find(|v| v.name == plan.variant).map_or(0, |v| v.weight);
            let Some(step) = plan.steps.iter().position(|w| *w == weight) else {
                // Not on a step yet: start at the first.
                apply(
                    &registry,
                    &model,
                    &policy,
                    plan.steps[0],
                    true,
                    json!({"state": "started", "weight": plan.steps[0]}),
                )
                .await;
                continue;
            };
            let now_totals = traffic.totals(&model, &plan.variant);
            let s = steps.entry(model.clone()).or_insert_with(|| Step {
                source: text.clone(),
                started: Instant::now(),
                baseline: now_totals,
            });
            if s.source != text {
                *s = Step { source: text.clone(), started: Instant::now(), baseline: now_totals };
            }
            let requests = now_totals.0.saturating_sub(s.baseline.0);
            let errors = now_totals.1.saturating_sub(s.baseline.1);
            match plan.decide(step, s.started.elapsed().as_secs(), requests, errors) {
                Decision::Wait => {}
                Decision::Advance(next) => {
                    info!(%model, variant = %plan.variant, from = weight, to = next, requests, errors, "rollout advances");
                    let status = json!({"state": "advanced", "weight": next, "requests": requests, "errors": errors});
                    apply(&registry, &model, &policy, next, true, status).await;
                }
                Decision::Complete => {
                    info!(%model, variant = %plan.variant, "rollout complete");
                    let status =
                        json!({"state": "completed", "weight": weight, "requests": requests, "errors": errors});
                    apply(&registry, &model, &policy, weight, false, status).await;
                }
                Decision::RollBack(why) => {
                    warn!(%model, variant = %plan.variant, reason = %why, "rollout rolled back");
                    let status = json!({"state": "rolled_back", "weight": 0, "reason": why});
                    apply(&registry, &model, &policy, 0, false, status).await;
                }
            }
        }
    }
}

/// Writes the policy with the rolled-out variant at `weight` (the other
/// variant takes the rest), keeping the plan while `keep_plan`, and records
/// `status` in the model's rollout tag.
async fn apply(
    registry: &Registry,
    model: &str,
    policy: &Policy,
    weight: u32,
    keep_plan: bool,
    mut status: serde_json::Value,
) {
    let mut next = policy.clone();
    let Some(plan) = policy.rollout.as_ref() else { return };
    for v in &mut next.variants {
        v.weight = if v.name == plan.variant { weight } else { 100 - weight };
    }
    if !keep_plan {
        next.rollout = None;
    }
    status["variant"] = json!(plan.variant);
    status["at_ms"] =
        json!(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    let Ok(text) = serde_json::to_string(&next) else { return };
    if let Err(e) = registry.set_traffic_policy(model, &text).await {
        return warn!(%model, error = %e, "rollout step not applied");
    }
    if let Err(e) = registry.mlflow.set_registered_model_tag(model, STATUS_TAG, &status.to_string()).await {
        warn!(%model, error = %e, "rollout status not recorded");
    }
}
