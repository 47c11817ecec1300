//! Rollouts, decided once for the fleet: inference replicas report their
//! cumulative figures per variant (`ReportTraffic`); every second this loop
//! sums the fresh reports, and for each model whose traffic policy carries a
//! rollout plan, moves the variant's weight to the next step while it holds
//! the plan's thresholds, or back to 0 on a breach — by writing the policy to
//! MLflow, which every replica follows. On completion the plan's `promote`
//! alias moves to the variant's version; on a breach its `rollback_alias`
//! moves back. The outcome is recorded in the model's `ferry.rollout` tag.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_mlflow::Selector;
use ferry_proto::registry::v1::VariantTraffic;
use ferry_traffic::{Decision, Figures, Measured, Policy, RolloutSpec, latency};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    error::{RegistryError, Result},
    service::{Registry, Who},
};

/// The registered-model tag holding the last rollout decision.
pub const STATUS_TAG: &str = "ferry.rollout";
/// The identity rollouts' alias moves are recorded under.
pub const ROLLOUT_IDENTITY: &str = "ferry-rollout";
/// A replica not heard from for this long no longer counts.
const FRESH: Duration = Duration::from_secs(30);
/// Bounds on what one report may carry, and on the replicas remembered.
const MAX_VARIANTS: usize = 4096;
const MAX_REPLICAS: usize = 10_000;

/// The latest report of each replica, and what the rollouts decided.
#[derive(Debug, Default)]
pub struct Traffic {
    reports: Mutex<HashMap<String, (Instant, Vec<VariantTraffic>)>>,
    /// Decisions taken, by kind: started, advanced, completed, rolled back.
    pub decisions: [AtomicU64; 4],
    /// The rolled-out variant's weight, per model with a plan in force.
    weights: Mutex<HashMap<String, (String, u32)>>,
}

pub const DECISIONS: [&str; 4] = ["started", "advanced", "completed", "rolled_back"];

impl Traffic {
    /// Keeps a replica's report, after checking that it is one a replica could send.
    pub fn record(&self, replica: String, variants: Vec<VariantTraffic>) -> Result<()> {
        let bad = |m: &str| Err(RegistryError::InvalidArgument(m.into()));
        if replica.is_empty() || replica.len() > 128 {
            return bad("replica is 1 to 128 characters");
        }
        if variants.len() > MAX_VARIANTS {
            return bad("too many variants in one report");
        }
        if variants.iter().any(|v| v.latency.len() > latency::BUCKETS) {
            return bad("latency has more buckets than the layout");
        }
        let Ok(mut r) = self.reports.lock() else { return Ok(()) };
        r.retain(|_, (at, _)| at.elapsed() < FRESH * 4);
        if r.len() >= MAX_REPLICAS && !r.contains_key(&replica) {
            return Err(RegistryError::FailedPrecondition(format!("more than {MAX_REPLICAS} replicas reporting")));
        }
        r.insert(replica, (Instant::now(), variants));
        Ok(())
    }

    /// `model`'s `variant`'s figures, summed over the replicas heard from lately.
    pub(crate) fn figures(&self, model: &str, variant: &str) -> Figures {
        let mut sum = Figures::default();
        let Ok(r) = self.reports.lock() else { return sum };
        for v in r
            .values()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .flat_map(|(_, vs)| vs.iter().filter(|v| v.model == model && v.variant == variant))
        {
            sum.add(&Figures {
                requests: v.requests,
                errors: v.errors,
                latency: v.latency.clone(),
                classified: v.shadow_classified,
                agreed: v.shadow_agreed,
                diffed: v.shadow_diffed,
                abs_diff_nano: v.shadow_abs_diff_nano,
            });
        }
        sum
    }

    /// The rolled-out variant's weight for each model with a plan in force.
    pub fn weights(&self) -> Vec<(String, String, u32)> {
        let Ok(w) = self.weights.lock() else { return Vec::new() };
        let mut out: Vec<_> = w.iter().map(|(m, (v, w))| (m.clone(), v.clone(), *w)).collect();
        out.sort();
        out
    }

    fn decided(&self, kind: usize) {
        self.decisions[kind].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where one model's rollout step started: both variants' figures then.
struct Step {
    source: String,
    started: Instant,
    variant: Figures,
    other: Figures,
}

pub async fn run(registry: Registry, traffic: Arc<Traffic>) {
    let mut steps: HashMap<String, Step> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut in_force = HashMap::new();
        for (model, text) in registry.hub.policies() {
            let Ok(policy) = serde_json::from_str::<Policy>(&text) else { continue };
            let Some(plan) = policy.rollout.clone().filter(|_| policy.validate(&model).is_ok()) else {
                steps.remove(&model);
                continue;
            };
            let weight = policy.variants.iter().find(|v| v.name == plan.variant).map_or(0, |v| v.weight);
            in_force.insert(model.clone(), (plan.variant.clone(), weight));
            let Some(other) = policy.variants.iter().find(|v| v.name != plan.variant).map(|v| v.name.clone()) else {
                continue;
            };
            let Some(step) = plan.steps.iter().position(|w| *w == weight) else {
                // Not on a step yet: start at the first.
                traffic.decided(0);
                let status = json!({"state": "started", "weight": plan.steps[0]});
                apply(&registry, &model, &policy, plan.steps[0], true, status).await;
                continue;
            };
            let (now_variant, now_other) = (traffic.figures(&model, &plan.variant), traffic.figures(&model, &other));
            // A new step (or a policy edited under it) starts counting from here.
            if steps.get(&model).is_none_or(|s| s.source != text) {
                let step = Step {
                    source: text.clone(),
                    started: Instant::now(),
                    variant: now_variant.clone(),
                    other: now_other.clone(),
                };
                steps.insert(model.clone(), step);
            }
            let Some(s) = steps.get(&model) else { continue };
            let (variant_fig, other_fig) = (now_variant.since(&s.variant), now_other.since(&s.other));
            let (decision, measured) = plan.decide(step, s.started.elapsed().as_secs(), &variant_fig, &other_fig);
            let figures = serde_json::to_value(&measured).unwrap_or_default();
            match decision {
                Decision::Wait => {}
                Decision::Advance(next) => {
                    info!(%model, variant = %plan.variant, from = weight, to = next, figures = %figures, "rollout advances");
                    traffic.decided(1);
                    let status = json!({"state": "advanced", "weight": next, "figures": figures});
                    apply(&registry, &model, &policy, next, true, status).await;
                }
                Decision::Complete => {
                    info!(%model, variant = %plan.variant, figures = %figures, "rollout complete");
                    traffic.decided(2);
                    complete(&registry, &model, &policy, &plan, weight, &measured).await;
                }
                Decision::RollBack(why) => {
                    warn!(%model, variant = %plan.variant, reason = %why, figures = %figures, "rollout rolled back");
                    traffic.decided(3);
                    let mut status = json!({"state": "rolled_back", "weight": 0, "reason": why, "figures": figures});
                    if let Some(alias) = &plan.rollback_alias {
                        let who = Who {
                            by: ROLLOUT_IDENTITY.into(),
                            reason: format!("rollout breach: {why}"),
                            rollback: true,
                        };
                        status["alias"] = match registry.rollback(&model, &Selector::Alias(alias.clone()), &who).await {
                            Ok((v, from)) => json!({"alias": alias, "from": from, "to": v.version}),
                            Err(e) => json!({"alias": alias, "error": e.to_string()}),
                        };
                    }
                    apply(&registry, &model, &policy, 0, false, status).await;
                }
            }
        }
        if let Ok(mut w) = traffic.weights.lock() {
            *w = in_force;
        }
    }
}

/// Completes a rollout: with a `promote` alias, moves it to the variant's
/// version first (so that a variant selecting that alias serves the same
/// version before any weight moves), then hands the weights back to that
/// variant; without, the variant keeps 100%.
async fn complete(registry: &Registry, model: &str, policy: &Policy, plan: &RolloutSpec, weight: u32, m: &Measured) {
    let mut status = json!({"state": "completed", "weight": weight, "figures": m});
    let mut final_weight = weight;
    if let Some(alias) = &plan.promote {
        let selector = policy.variants.iter().find(|v| v.name == plan.variant).map(|v| v.selector.as_str());
        let moved = async {
            let selector: Selector = selector
                .and_then(|s| format!("{model}{s}").parse::<ferry_mlflow::ModelRef>().ok())
                .map(|r| r.selector)
                .ok_or_else(|| RegistryError::Internal("the rolled-out variant's selector".into()))?;
            let (version, _) = registry.resolve(model, &selector).await?;
            let who = Who {
                by: ROLLOUT_IDENTITY.into(),
                reason: format!("rollout of variant {:?} completed", plan.variant),
                rollback: false,
            };
            registry.set_alias(model, alias, &version.version, &who).await
        };
        match moved.await {
            Ok(v) => {
                status["alias"] = json!({"alias": alias, "to": v.version});
                let other_selects_it =
                    policy.variants.iter().any(|v| v.name != plan.variant && v.selector == format!("@{alias}"));
                if other_selects_it {
                    final_weight = 0;
                }
            }
            Err(e) => {
                warn!(%model, %alias, error = %e, "rollout complete, alias not promoted");
                status["alias"] = json!({"alias": alias, "error": e.to_string()});
            }
        }
    }
    status["weight"] = json!(final_weight);
    apply(registry, model, policy, final_weight, false, status).await;
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
