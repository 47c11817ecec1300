//! A model's traffic policy in force: its variants' slots, and what routing
//! reads from a request. The choice itself is `ferry_traffic::Router`'s.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use super::slot::{ModelSlot, SlotState};

/// A model's traffic policy in force, and the last policy refused.
#[derive(Debug, Default)]
pub(super) struct Route {
    pub(super) current: ArcSwapOption<Routing>,
    pub(super) refused: Mutex<Option<String>>,
}

/// A traffic policy in force: the router and one slot per variant, in the
/// router's order. A variant with the configured selector shares the
/// configured slot; the others have their own, loaded on their own.
#[derive(Debug)]
pub struct Routing {
    pub router: ferry_traffic::Router,
    pub slots: Vec<Arc<ModelSlot>>,
    pub(super) names: Vec<Arc<str>>,
    /// The variant served by the configured slot, which takes the share of a
    /// variant that has nothing loaded yet.
    pub(super) fallback: Option<usize>,
    /// The tag's text this was built from, to notice edits.
    pub source: String,
}

impl Routing {
    /// `primary` is the configured slot the variants' slots were matched against.
    pub fn new(
        router: ferry_traffic::Router,
        slots: Vec<Arc<ModelSlot>>,
        source: String,
        primary: &Arc<ModelSlot>,
    ) -> Self {
        let names = router.variants().iter().map(|v| Arc::from(v.name.as_str())).collect();
        let fallback = slots.iter().position(|s| Arc::ptr_eq(s, primary));
        Self { router, slots, names, fallback, source }
    }
}

/// One variant of a routed model, for status APIs.
#[derive(Debug, Clone)]
pub struct VariantStatus {
    pub name: String,
    pub selector: String,
    pub weight: u32,
    pub state: SlotState,
    pub serving_version: Option<String>,
    pub last_error: Option<String>,
    /// Held at a version by the operator (`FERRY_PIN=model#variant=version`).
    pub pinned: bool,
    /// Percent of the other variants' requests mirrored here (0: not the shadow).
    pub shadow_percent: u32,
    /// Mirrored requests compared, dropped (busy) and failed.
    pub shadow_compared: u64,
    pub shadow_dropped: u64,
    pub shadow_failed: u64,
    /// Share of compared answers whose top classes matched the caller's.
    pub agreement: Option<f64>,
    /// Mean absolute difference of float outputs over compared answers.
    pub mean_abs_diff: Option<f64>,
}

/// What routing reads from a request: HTTP headers or gRPC metadata, by
/// lowercase name. Each transport implements it for its own map.
pub trait RequestHeaders: Sync {
    fn header(&self, name: &str) -> Option<&str>;
}

/// A request without headers (warm-up, tests): routed by weight alone.
impl RequestHeaders for () {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}
