//! A slot: one selector's serving version, swapped atomically, and the
//! state machine (pending, serving, degraded, failed) with its statistics.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use ferry_telemetry::metrics::{self, Family, Histogram, Series};
use tokio::sync::Semaphore;

use super::{
    route::{Route, Routing, VariantStatus},
    shadow::ShadowStats,
};
use crate::{
    engine::{Engine, SessionOptions, batcher::ExecStats},
    error::ServeError,
    spec::ModelSpec,
    tensor::{NamedTensor, Signature},
};

/// Where a model version runs.
#[derive(Debug)]
pub enum Backend {
    /// In this process, with ONNX Runtime, from the version's local folder.
    Local { engine: Engine, dir: PathBuf },
    /// On another Open Inference Protocol server.
    Remote(Box<dyn Forward>),
}

/// A model version served elsewhere, requests forwarded to it (`remote.rs`):
/// the seam that keeps this module free of any transport.
#[tonic::async_trait]
pub trait Forward: Send + Sync + std::fmt::Debug {
    /// Where requests go, and the model's name there.
    fn target(&self) -> (&str, &str);

    /// Forwards one request; returns the outputs and the version that computed them.
    async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: &[String],
    ) -> Result<(Vec<NamedTensor>, String), ServeError>;
}

/// One version of a model, loaded and warm (or connected, when remote).
#[derive(Debug)]
pub struct LoadedModel {
    pub version: String,
    /// Digest over the version's files (`ferry_artifact::ModelDigest`).
    pub sha256: String,
    /// Whether `sha256` was checked against the version's `ferry.sha256` tag.
    pub verified: bool,
    pub signature: Signature,
    pub backend: Backend,
    pub loaded_at: Instant,
    /// This version's request series in its slot's `Stats::requests`.
    pub requests: RequestSeries,
}

/// The API a request came by, as the request metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    GrpcPredict,
    GrpcModelInfer,
    RestPredict,
    RestV1Predict,
    RestV2Infer,
    RestInvocations,
}

impl Method {
    const COUNT: usize = 6;

    pub fn as_str(self) -> &'static str {
        match self {
            Method::GrpcPredict => "grpc.Predict",
            Method::GrpcModelInfer => "grpc.ModelInfer",
            Method::RestPredict => "rest.predict",
            Method::RestV1Predict => "rest.v1.predict",
            Method::RestV2Infer => "rest.v2.infer",
            Method::RestInvocations => "rest.invocations",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcomes a request series counts: success, then one per `ServeError::KINDS` entry.
const OUTCOMES: usize = ServeError::KINDS.len() + 1;

/// A version's request series, one per method, each taken from its slot's
/// family on the method's first request: a request then counts itself
/// without hashing its labels or taking the family's lock (~0.3k of a tiny
/// model's ~10k instructions of Ferry's own per request, callgrind).
#[derive(Debug, Default)]
pub struct RequestSeries([std::sync::OnceLock<Arc<Series<OUTCOMES>>>; Method::COUNT]);

impl RequestSeries {
    /// Counts one request of `version` by `method` into `family`.
    pub(super) fn record(
        &self,
        family: &RequestMetrics,
        method: Method,
        version: &str,
        outcome: usize,
        elapsed: std::time::Duration,
    ) {
        match self.0.get(method as usize) {
            Some(cell) => cell.get_or_init(|| family.series((method, version.to_owned()))).observe(outcome, elapsed),
            // A method added without raising `Method::COUNT`: counted all the same, by lookup.
            None => family.record((method, version.to_owned()), outcome, elapsed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Pending,
    Serving,
    Degraded,
    Failed,
}

#[derive(Debug)]
struct LoadFailure {
    version: String,
    sha256: String,
    error: String,
    at: Instant,
}

/// How long a successful load took, and how long since the registry first
/// observed the change it delivers (the delivery lag).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadTiming {
    pub(crate) took: std::time::Duration,
    pub(crate) lag: std::time::Duration,
}

/// Per-(method, version) request latency and outcomes of one model: outcome 0
/// is success, then one per `ServeError::KINDS` entry. Versions come and go
/// with promotions, so this grows by one series per version served.
pub type RequestMetrics = Family<(Method, String), OUTCOMES>;

/// Cumulative request statistics of one model (Triton's statistics extension
/// reports these): counts and total nanoseconds.
#[derive(Debug)]
pub struct Stats {
    pub success_count: AtomicU64,
    pub success_ns: AtomicU64,
    pub fail_count: AtomicU64,
    pub fail_ns: AtomicU64,
    /// Successful requests' latencies, for rollout decisions (reported to the registry).
    pub latency: ferry_traffic::latency::LatencyCounts,
    /// Model calls, rows, queue and compute time, shared with every loaded version's workers.
    pub exec: Arc<ExecStats>,
    /// Milliseconds since the epoch.
    pub last_inference_ms: AtomicU64,
    /// Versions loaded (or connected) and swapped in.
    pub loads: AtomicU64,
    /// Versions that failed to download, verify, load or warm up.
    pub load_failures: AtomicU64,
    /// Nanoseconds spent in successful loads.
    pub load_ns: AtomicU64,
    /// Successful loads: download, verify, load and warm-up.
    pub load_duration: Histogram,
    /// Traffic policies refused (each distinct error counted once).
    pub policy_refusals: AtomicU64,
    /// Requests mirrored to this slot as a shadow variant.
    pub shadow: ShadowStats,
    /// From the registry observing a change (or this process noticing it, when
    /// polling) to the new version serving.
    pub delivery_lag: Histogram,
    pub requests: RequestMetrics,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            success_count: AtomicU64::default(),
            success_ns: AtomicU64::default(),
            fail_count: AtomicU64::default(),
            fail_ns: AtomicU64::default(),
            latency: Default::default(),
            exec: Arc::default(),
            last_inference_ms: AtomicU64::default(),
            loads: AtomicU64::default(),
            load_failures: AtomicU64::default(),
            load_ns: AtomicU64::default(),
            load_duration: Histogram::seconds(metrics::SLOW_NS),
            policy_refusals: AtomicU64::default(),
            shadow: ShadowStats::default(),
            delivery_lag: Histogram::seconds(metrics::SLOW_NS),
            requests: RequestMetrics::default(),
        }
    }
}

impl Stats {
    pub(super) fn record(&self, ok: bool, elapsed_ns: u64) {
        let (count, ns) = if ok { (&self.success_count, &self.success_ns) } else { (&self.fail_count, &self.fail_ns) };
        count.fetch_add(1, Ordering::Relaxed);
        ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        if ok {
            self.latency.record(elapsed_ns);
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }
}

/// How one model is run: ONNX Runtime options, warm-up and admission.
#[derive(Debug, Clone, Copy)]
pub struct ModelSettings {
    pub session: SessionOptions,
    /// Runs on zero inputs before a new version is swapped in.
    pub warmup_runs: usize,
    /// Requests in flight before new ones get RESOURCE_EXHAUSTED / 429.
    pub max_in_flight: usize,
}

/// Mirrored copies a shadow variant runs at once; more are dropped (and counted).
const SHADOW_IN_FLIGHT: usize = 8;

/// A serving slot for one configured model.
#[derive(Debug)]
pub struct ModelSlot {
    pub spec: ModelSpec,
    pub settings: ModelSettings,
    current: ArcSwapOption<LoadedModel>,
    failure: Mutex<Option<LoadFailure>>,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) max_in_flight: usize,
    /// Mirrored copies in flight, as a shadow variant: few, so that a shadow
    /// slower than its traffic drops copies instead of building a backlog
    /// that would keep a core busy long after the callers' requests.
    pub(super) shadow_in_flight: Arc<Semaphore>,
    pub stats: Stats,
    /// The model's traffic policy (on the configured slot only; variants' slots have none).
    pub(super) route: Route,
}

/// A point-in-time view of a slot, for metadata APIs.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    pub name: String,
    pub selector: String,
    pub state: SlotState,
    pub serving_version: Option<String>,
    pub sha256: Option<String>,
    pub verified: bool,
    pub last_error: Option<String>,
    pub signature: Option<Signature>,
    /// The traffic policy's variants, when the model has one.
    pub variants: Vec<VariantStatus>,
    /// Why the policy in MLflow was refused; the last valid one stays in force.
    pub policy_error: Option<String>,
    /// Set when the operator pinned the model (`FERRY_PIN`): what is overridden.
    pub pinned: Option<String>,
}

impl ModelSlot {
    pub(crate) fn new(spec: ModelSpec, settings: ModelSettings) -> Self {
        let max_in_flight = settings.max_in_flight.max(1);
        Self {
            spec,
            settings,
            current: ArcSwapOption::empty(),
            failure: Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            shadow_in_flight: Arc::new(Semaphore::new(max_in_flight.min(SHADOW_IN_FLIGHT))),
            stats: Stats::default(),
            route: Route::default(),
        }
    }

    /// The traffic policy in force, if any.
    pub fn routing(&self) -> Option<Arc<Routing>> {
        self.route.current.load_full()
    }

    /// Puts a valid policy in force (or none), atomically: requests already
    /// routed finish where they are.
    pub(crate) fn set_routing(&self, routing: Option<Routing>) {
        self.route.current.store(routing.map(Arc::new));
        if let Ok(mut r) = self.route.refused.lock() {
            *r = None;
        }
    }

    /// Records a policy refused; returns whether it is news (not the same error again).
    pub(crate) fn refuse_policy(&self, error: String) -> bool {
        self.route.refused.lock().is_ok_and(|mut r| {
            let news = r.as_deref() != Some(error.as_str());
            if news {
                self.stats.policy_refusals.fetch_add(1, Ordering::Relaxed);
            }
            *r = Some(error);
            news
        })
    }

    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.load_full()
    }

    // The slot's state machine: PENDING until a version is installed, then
    // SERVING; a failed load makes it DEGRADED (or FAILED with nothing
    // installed) until the next install. Delivery only calls these.

    /// Swaps a loaded, warm version in (requests running keep theirs),
    /// clears any failure and counts the load; returns the version it replaced.
    pub(super) fn install(&self, model: LoadedModel, timing: Option<LoadTiming>) -> Option<Arc<LoadedModel>> {
        let old = self.current.swap(Some(Arc::new(model)));
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = timing {
            self.stats.load_ns.fetch_add(t.took.as_nanos() as u64, Ordering::Relaxed);
            self.stats.load_duration.observe_duration(t.took);
            self.stats.delivery_lag.observe_duration(t.lag);
        }
        old
    }

    /// A version failed to download, verify, load or warm up; whatever
    /// serves keeps serving.
    pub(crate) fn fail(&self, version: &str, sha256: &str, error: String) {
        self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failure.lock() {
            *f =
                Some(LoadFailure { version: version.to_owned(), sha256: sha256.to_owned(), error, at: Instant::now() });
        }
    }

    /// Whether this version, with this digest tag, failed within `window`.
    pub(crate) fn failed_recently(&self, version: &str, sha256: &str, window: std::time::Duration) -> bool {
        self.failure.lock().is_ok_and(|f| {
            f.as_ref().is_some_and(|f| f.version == version && f.sha256 == sha256 && f.at.elapsed() < window)
        })
    }

    pub fn status(&self) -> SlotStatus {
        let current = self.current();
        let failure = self.failure.lock().map(|f| f.as_ref().map(|f| f.error.clone())).unwrap_or(None);
        let state = match (&current, &failure) {
            (Some(_), None) => SlotState::Serving,
            (Some(_), Some(_)) => SlotState::Degraded,
            (None, Some(_)) => SlotState::Failed,
            (None, None) => SlotState::Pending,
        };
        SlotStatus {
            name: self.spec.name.clone(),
            selector: self.spec.selector.to_string(),
            state,
            serving_version: current.as_ref().map(|m| m.version.clone()),
            sha256: current.as_ref().map(|m| m.sha256.clone()),
            verified: current.as_ref().is_some_and(|m| m.verified),
            last_error: failure.clone(),
            signature: current.as_ref().map(|m| m.signature.clone()),
            variants: self.routing().map_or_else(Vec::new, |r| {
                let shadow = r.router.shadow();
                r.router
                    .variants()
                    .iter()
                    .zip(&r.slots)
                    .enumerate()
                    .map(|(i, (v, slot))| {
                        let st = if std::ptr::eq(Arc::as_ptr(slot), self) { None } else { Some(slot.status()) };
                        let (state, serving_version, last_error) = match st {
                            Some(st) => (st.state, st.serving_version, st.last_error),
                            None => (state, current.as_ref().map(|m| m.version.clone()), failure.clone()),
                        };
                        let sh = &slot.stats.shadow;
                        VariantStatus {
                            name: v.name.clone(),
                            selector: slot.spec.selector.to_string(),
                            pinned: self.spec.pin.variants.contains_key(&v.name),
                            weight: v.weight,
                            state,
                            serving_version,
                            last_error,
                            shadow_percent: shadow.filter(|(s, _)| *s == i).map_or(0, |(_, p)| p),
                            shadow_compared: sh.compared.load(Ordering::Relaxed),
                            shadow_dropped: sh.dropped.load(Ordering::Relaxed),
                            shadow_failed: sh.failed.load(Ordering::Relaxed),
                            agreement: sh.agreement(),
                            mean_abs_diff: sh.mean_abs_diff(),
                        }
                    })
                    .collect()
            }),
            policy_error: self.route.refused.lock().ok().and_then(|r| r.clone()),
            pinned: self.spec.pin.overrides.as_ref().map(|was| {
                format!(
                    "held at {} by FERRY_PIN; the registry's {was} and any traffic policy are not followed",
                    self.spec.selector
                )
            }),
        }
    }
}
