//! The models this process serves, each in a slot whose loaded version is
//! swapped atomically. A request holds an `Arc` to the version it started on,
//! so a swap never interrupts it; the old session is dropped after the last one.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use ferry_telemetry::metrics::{self, Family, Histogram};

use arc_swap::ArcSwapOption;
use tokio::sync::{Semaphore, watch};

use crate::{
    engine::{Engine, SessionOptions, batcher::ExecStats},
    error::ServeError,
    spec::ModelSpec,
    tensor::{NamedTensor, Signature, validate},
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
pub type RequestMetrics = Family<(&'static str, String), { ServeError::KINDS.len() + 1 }>;

/// Cumulative request statistics of one model (Triton's statistics extension
/// reports these): counts and total nanoseconds.
#[derive(Debug)]
pub struct Stats {
    pub success_count: AtomicU64,
    pub success_ns: AtomicU64,
    pub fail_count: AtomicU64,
    pub fail_ns: AtomicU64,
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
            exec: Arc::default(),
            last_inference_ms: AtomicU64::default(),
            loads: AtomicU64::default(),
            load_failures: AtomicU64::default(),
            load_ns: AtomicU64::default(),
            load_duration: Histogram::seconds(metrics::SLOW_NS),
            policy_refusals: AtomicU64::default(),
            delivery_lag: Histogram::seconds(metrics::SLOW_NS),
            requests: RequestMetrics::default(),
        }
    }
}

impl Stats {
    fn record(&self, ok: bool, elapsed_ns: u64) {
        let (count, ns) = if ok { (&self.success_count, &self.success_ns) } else { (&self.fail_count, &self.fail_ns) };
        count.fetch_add(1, Ordering::Relaxed);
        ns.fetch_add(elapsed_ns, Ordering::Relaxed);
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

/// A serving slot for one configured model.
#[derive(Debug)]
pub struct ModelSlot {
    pub spec: ModelSpec,
    pub settings: ModelSettings,
    current: ArcSwapOption<LoadedModel>,
    failure: Mutex<Option<LoadFailure>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    pub stats: Stats,
    /// The model's traffic policy (on the configured slot only; variants' slots have none).
    route: Route,
}

/// A model's traffic policy in force, and the last policy refused.
#[derive(Debug, Default)]
struct Route {
    current: ArcSwapOption<Routing>,
    refused: Mutex<Option<String>>,
}

/// A traffic policy in force: the router and one slot per variant, in the
/// router's order. A variant with the configured selector shares the
/// configured slot; the others have their own, loaded on their own.
#[derive(Debug)]
pub struct Routing {
    pub router: ferry_traffic::Router,
    pub slots: Vec<Arc<ModelSlot>>,
    names: Vec<Arc<str>>,
    /// The variant served by the configured slot, which takes the share of a
    /// variant that has nothing loaded yet.
    fallback: Option<usize>,
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
    fn install(&self, model: LoadedModel, timing: Option<LoadTiming>) -> Option<Arc<LoadedModel>> {
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
                r.router
                    .variants()
                    .iter()
                    .zip(&r.slots)
                    .map(|(v, slot)| {
                        let st = if std::ptr::eq(Arc::as_ptr(slot), self) { None } else { Some(slot.status()) };
                        let (state, serving_version, last_error) = match st {
                            Some(st) => (st.state, st.serving_version, st.last_error),
                            None => (state, current.as_ref().map(|m| m.version.clone()), failure.clone()),
                        };
                        VariantStatus {
                            name: v.name.clone(),
                            selector: v.selector.to_string(),
                            weight: v.weight,
                            state,
                            serving_version,
                            last_error,
                        }
                    })
                    .collect()
            }),
            policy_error: self.route.refused.lock().ok().and_then(|r| r.clone()),
        }
    }
}

/// What a caller asks of a model, independent of transport.
#[derive(Debug)]
pub struct PredictInput {
    pub model: String,
    /// When set, the request fails unless exactly this version is serving.
    pub version: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Outputs to return; empty means all.
    pub outputs: Vec<String>,
    /// The caller's deadline (gRPC `grpc-timeout`); a request still queued then is dropped.
    pub deadline: Option<Instant>,
    /// The API that carried the request, for metrics: `grpc.Predict`, `rest.predict`, ...
    pub method: &'static str,
}

#[derive(Debug)]
pub struct Prediction {
    pub model: String,
    pub version: String,
    /// The variant that served, when the model has a traffic policy.
    pub variant: Option<Arc<str>>,
    pub outputs: Vec<NamedTensor>,
}

/// Every configured model, and whether all of them are loaded.
#[derive(Debug)]
pub struct Models {
    slots: BTreeMap<String, Arc<ModelSlot>>,
    order: Vec<String>,
    ready: watch::Sender<bool>,
    /// Set at shutdown: readiness turns false so load balancers stop sending.
    draining: std::sync::atomic::AtomicBool,
    /// One number per routed request, for the weighted choice.
    draws: AtomicU64,
}

impl Models {
    pub fn new(specs: Vec<(ModelSpec, ModelSettings)>) -> Result<Self, String> {
        let mut slots = BTreeMap::new();
        let mut order = Vec::new();
        for (spec, settings) in specs {
            let name = spec.name.clone();
            if slots.insert(name.clone(), Arc::new(ModelSlot::new(spec, settings))).is_some() {
                return Err(format!("model {name:?} is configured twice"));
            }
            order.push(name);
        }
        if slots.is_empty() {
            return Err("no model configured (use --model name:Stage, name@alias or name/version)".into());
        }
        let (ready, _) = watch::channel(false);
        Ok(Self { slots, order, ready, draining: std::sync::atomic::AtomicBool::new(false), draws: AtomicU64::new(0) })
    }

    pub fn slot(&self, name: &str) -> Result<&Arc<ModelSlot>, ServeError> {
        self.slots.get(name).ok_or_else(|| {
            ServeError::NotFound(format!("model {name:?} is not served here; served models: {:?}", self.order))
        })
    }

    /// The first configured model: what REST `/predict` serves when no model is named.
    pub fn default_name(&self) -> &str {
        &self.order[0]
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<ModelSlot>> {
        self.order.iter().filter_map(|n| self.slots.get(n))
    }

    /// Follows readiness: every configured model loaded and warm, and not draining.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn all_loaded(&self) -> bool {
        self.slots.values().all(|s| s.current().is_some())
    }

    /// Ready to take traffic: every model loaded and warm, and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.all_loaded()
    }

    /// The first step of shutdown: report not-ready while still serving.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.ready.send_replace(false);
    }

    /// Makes `model` the serving version of `name` (see `ModelSlot::install`)
    /// and updates readiness. Requests already running keep their version.
    pub(crate) fn install(
        &self,
        name: &str,
        model: LoadedModel,
        timing: Option<LoadTiming>,
    ) -> Option<Arc<LoadedModel>> {
        let slot = Arc::clone(self.slots.get(name)?);
        self.install_in(&slot, model, timing)
    }

    /// Makes `model` the serving version of `slot` (a configured slot or a
    /// variant's) and updates readiness.
    pub(crate) fn install_in(
        &self,
        slot: &ModelSlot,
        model: LoadedModel,
        timing: Option<LoadTiming>,
    ) -> Option<Arc<LoadedModel>> {
        let old = slot.install(model, timing);
        self.ready.send_replace(self.is_ready());
        old
    }

    /// Runs a prediction on the serving version of the named model (of the
    /// variant its traffic policy chooses for these headers).
    pub async fn predict(&self, req: PredictInput, headers: &dyn RequestHeaders) -> Result<Prediction, ServeError> {
        let lease = self.acquire(&req.model, req.version.as_deref(), req.method, headers)?;
        lease.run(req.inputs, req.outputs, req.deadline).await
    }

    /// Takes a request's hold on the version `name` serves now (or exactly
    /// `version`): the variant its traffic policy chooses for `headers`, an
    /// in-flight permit and the loaded version, in one lookup. An adapter
    /// that shapes its input from the signature reads it from the lease, so
    /// the version that shaped the input is the one that runs it, whatever a
    /// swap does meanwhile. Failures are counted under `method`.
    pub fn acquire(
        &self,
        name: &str,
        version: Option<&str>,
        method: &'static str,
        headers: &dyn RequestHeaders,
    ) -> Result<Lease, ServeError> {
        let configured = self.slot(name)?;
        let started = Instant::now();
        let fail = |slot: &ModelSlot, e: ServeError| {
            let elapsed = started.elapsed();
            slot.stats.record(false, elapsed.as_nanos() as u64);
            let current = slot.current().map(|m| m.version.clone()).unwrap_or_default();
            slot.stats.requests.record((method, current), 1 + e.kind_index(), elapsed);
            e
        };
        let (slot, variant) = match configured.route.current.load().as_deref() {
            None => (Arc::clone(configured), None),
            Some(routing) => {
                let router = &routing.router;
                let named = router.route_header().and_then(|h| headers.header(h.as_str()));
                let sticky = router.sticky_header().and_then(|h| headers.header(h.as_str()));
                let draw = self.draws.fetch_add(1, Ordering::Relaxed);
                let (i, reason) =
                    router.choose(named, sticky, draw).map_err(|e| fail(configured, ServeError::InvalidArgument(e)))?;
                let chosen = &routing.slots[i];
                match routing.fallback {
                    // A variant with nothing loaded yet gets no traffic, unless asked for by name.
                    Some(f) if chosen.current().is_none() && reason != ferry_traffic::Reason::Header => {
                        (Arc::clone(&routing.slots[f]), Some(Arc::clone(&routing.names[f])))
                    }
                    _ => (Arc::clone(chosen), Some(Arc::clone(&routing.names[i]))),
                }
            }
        };
        // Backpressure at the door: a bounded number in flight, never an unbounded queue.
        let permit = Arc::clone(&slot.in_flight).try_acquire_owned().map_err(|_| {
            fail(
                &slot,
                ServeError::Overloaded(format!(
                    "model {name:?} has {} requests in flight; retry shortly",
                    slot.max_in_flight
                )),
            )
        })?;
        let Some(model) = slot.current() else {
            let what = match &variant {
                Some(v) => format!("variant {v:?} ({})", slot.spec.selector),
                None => format!("({})", slot.spec.selector),
            };
            return Err(fail(
                &slot,
                ServeError::Unavailable(format!("model {name:?} {what} has no version loaded yet")),
            ));
        };
        if let Some(v) = version.filter(|v| !v.is_empty())
            && v != model.version
        {
            return Err(fail(
                &slot,
                ServeError::VersionMismatch(format!("model {name:?} serves version {}, not {v}", model.version)),
            ));
        }
        Ok(Lease { slot, model, variant, permit, method, started })
    }
}

/// A request's hold on one loaded version (see [`Models::acquire`]).
#[derive(Debug)]
pub struct Lease {
    slot: Arc<ModelSlot>,
    model: Arc<LoadedModel>,
    variant: Option<Arc<str>>,
    permit: tokio::sync::OwnedSemaphorePermit,
    method: &'static str,
    started: Instant,
}

impl Lease {
    pub fn version(&self) -> &str {
        &self.model.version
    }

    /// The variant chosen, when the model has a traffic policy.
    pub fn variant(&self) -> Option<&Arc<str>> {
        self.variant.as_ref()
    }

    pub fn signature(&self) -> &Signature {
        &self.model.signature
    }

    /// Runs the request on the leased version and counts its outcome.
    pub async fn run(
        self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Prediction, ServeError> {
        let (slot, method, started) = (Arc::clone(&self.slot), self.method, self.started);
        let leased = self.model.version.clone();
        let result = self.run_in(inputs, outputs, deadline).await;
        let elapsed = started.elapsed();
        slot.stats.record(result.is_ok(), elapsed.as_nanos() as u64);
        match &result {
            Ok(p) => slot.stats.requests.record((method, p.version.clone()), 0, elapsed),
            Err(e) => slot.stats.requests.record((method, leased), 1 + e.kind_index(), elapsed),
        }
        result
    }

    async fn run_in(
        self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Prediction, ServeError> {
        let Lease { slot, model, permit, variant, .. } = self;
        validate(&model.signature, &inputs, &outputs)?;
        let name = slot.spec.name.clone();
        let (outputs, version) = match &model.backend {
            Backend::Local { engine, .. } => {
                let outputs = engine.infer(inputs, outputs, deadline).await?;
                drop(permit);
                (outputs, model.version.clone())
            }
            Backend::Remote(remote) => {
                let rows = crate::tensor::rows(&inputs);
                let started = Instant::now();
                let (outputs, version) = remote.infer(inputs, &outputs).await?;
                drop(permit);
                slot.stats.exec.record(1, rows, started.elapsed());
                // The remote's own label, when it gives one, is the truth.
                (outputs, if version.is_empty() { model.version.clone() } else { version })
            }
        };
        Ok(Prediction { model: name, version, variant, outputs })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        engine::batcher::BatchPolicy,
        spec::Selector,
        tensor::{DType, TensorSpec},
    };

    fn models(max_in_flight: usize) -> Models {
        let session = SessionOptions {
            sessions: 1,
            intra_threads: 1,
            throughput_sessions: None,
            inter_threads: 1,
            optimization_level: 0,
            batch: BatchPolicy::OFF,
            inline_below: Duration::ZERO,
            spinning: false,
        };
        let spec = ModelSpec { name: "m".into(), selector: Selector::Alias("champion".into()), remote: true };
        Models::new(vec![(spec, ModelSettings { session, warmup_runs: 0, max_in_flight })]).unwrap()
    }

    /// A version whose one input is `width` wide (a remote backend never dialled).
    fn version(v: &str, width: i64) -> LoadedModel {
        let spec = |n: &str| TensorSpec { name: n.into(), dtype: DType::F32, shape: vec![-1, width] };
        LoadedModel {
            version: v.into(),
            sha256: format!("sha-{v}"),
            verified: true,
            signature: Signature { inputs: vec![spec("x")], outputs: vec![spec("y")] },
            backend: Backend::Remote(Box::new(crate::remote::RemoteModel::lazy("http://127.0.0.1:9", "m"))),
            loaded_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn the_slot_moves_through_its_states() {
        let m = models(4);
        let slot = m.slot("m").unwrap();
        assert_eq!(slot.status().state, SlotState::Pending);
        slot.fail("1", "sha-1", "no such file".into());
        assert_eq!(slot.status().state, SlotState::Failed);
        assert!(slot.failed_recently("1", "sha-1", Duration::from_secs(30)));
        assert!(!slot.failed_recently("1", "other", Duration::from_secs(30)), "a new digest is retried at once");
        let mut ready = m.ready();
        m.install("m", version("1", 4), None);
        assert!(*ready.borrow_and_update(), "readiness follows the install");
        let s = slot.status();
        assert_eq!((s.state, s.serving_version.as_deref(), s.last_error), (SlotState::Serving, Some("1"), None));
        slot.fail("2", "sha-2", "checksum mismatch".into());
        let s = slot.status();
        assert_eq!((s.state, s.serving_version.as_deref()), (SlotState::Degraded, Some("1")));
        assert!(s.last_error.is_some_and(|e| e.contains("checksum")));
        m.install("m", version("2", 8), Some(LoadTiming { took: Duration::from_millis(5), lag: Duration::ZERO }));
        assert_eq!(slot.status().state, SlotState::Serving);
        assert_eq!(slot.stats.loads.load(Ordering::Relaxed), 2);
        assert_eq!(slot.stats.load_failures.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_lease_keeps_its_version_across_a_swap() {
        let m = models(4);
        m.install("m", version("1", 4), None);
        let lease = m.acquire("m", None, "test", &()).unwrap();
        m.install("m", version("2", 8), None);
        // The input shaped from the lease's signature is for the version it holds.
        assert_eq!((lease.version(), lease.signature().inputs[0].shape[1]), ("1", 4));
        let err = m.acquire("m", Some("1"), "test", &()).unwrap_err();
        assert!(matches!(err, ServeError::VersionMismatch(_)), "{err:?}");
        assert_eq!(m.acquire("m", Some("2"), "test", &()).unwrap().version(), "2");
        assert!(matches!(m.acquire("nope", None, "test", &()), Err(ServeError::NotFound(_))));
    }

    #[tokio::test]
    async fn leases_are_bounded_and_refusals_counted() {
        let m = models(1);
        assert!(matches!(m.acquire("m", None, "test", &()), Err(ServeError::Unavailable(_))), "nothing loaded yet");
        m.install("m", version("1", 4), None);
        let held = m.acquire("m", None, "test", &()).unwrap();
        assert!(matches!(m.acquire("m", None, "test", &()), Err(ServeError::Overloaded(_))));
        drop(held);
        assert!(m.acquire("m", None, "test", &()).is_ok(), "the permit comes back with the lease");
        assert_eq!(m.slot("m").unwrap().stats.fail_count.load(Ordering::Relaxed), 2);
    }
}
