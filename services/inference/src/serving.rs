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
    batcher::ExecStats,
    engine::{Engine, NamedTensor, SessionOptions, Signature, validate},
    error::ServeError,
    remote::RemoteModel,
    spec::ModelSpec,
};

/// Where a model version runs.
#[derive(Debug)]
pub enum Backend {
    /// In this process, with ONNX Runtime, from the version's local folder.
    Local { engine: Engine, dir: PathBuf },
    /// On another Open Inference Protocol server.
    Remote(RemoteModel),
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

#[derive(Debug, Default)]
pub(crate) struct LoadFailure {
    pub(crate) version: String,
    pub(crate) sha256: String,
    pub(crate) error: String,
    pub(crate) at: Option<Instant>,
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
    pub(crate) failure: Mutex<Option<LoadFailure>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    pub stats: Stats,
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
}

impl ModelSlot {
    fn new(spec: ModelSpec, settings: ModelSettings) -> Self {
        let max_in_flight = settings.max_in_flight.max(1);
        Self {
            spec,
            settings,
            current: ArcSwapOption::empty(),
            failure: Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            stats: Stats::default(),
        }
    }

    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.load_full()
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
            last_error: failure,
            signature: current.as_ref().map(|m| m.signature.clone()),
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
        Ok(Self { slots, order, ready, draining: std::sync::atomic::AtomicBool::new(false) })
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

    /// Makes `model` the serving version of `name`. Requests already running
    /// keep the version they started with.
    pub fn swap(&self, name: &str, model: LoadedModel) -> Option<Arc<LoadedModel>> {
        let slot = self.slots.get(name)?;
        let old = slot.current.swap(Some(Arc::new(model)));
        if let Ok(mut f) = slot.failure.lock() {
            *f = None;
        }
        self.ready.send_replace(self.is_ready());
        old
    }

    /// Runs a prediction on the serving version of the named model.
    pub async fn predict(&self, req: PredictInput) -> Result<Prediction, ServeError> {
        let lease = self.acquire(&req.model, req.version.as_deref(), req.method)?;
        lease.run(req.inputs, req.outputs, req.deadline).await
    }

    /// Takes a request's hold on the version `name` serves now (or exactly
    /// `version`): an in-flight permit and the loaded version, in one lookup.
    /// An adapter that shapes its input from the signature reads it from the
    /// lease, so the version that shaped the input is the one that runs it,
    /// whatever a swap does meanwhile. Failures are counted under `method`.
    pub fn acquire(&self, name: &str, version: Option<&str>, method: &'static str) -> Result<Lease<'_>, ServeError> {
        let slot = self.slot(name)?;
        let started = Instant::now();
        let fail = |e: ServeError| {
            let elapsed = started.elapsed();
            slot.stats.record(false, elapsed.as_nanos() as u64);
            let current = slot.current().map(|m| m.version.clone()).unwrap_or_default();
            slot.stats.requests.record((method, current), 1 + e.kind_index(), elapsed);
            e
        };
        // Backpressure at the door: a bounded number in flight, never an unbounded queue.
        let permit = Arc::clone(&slot.in_flight).try_acquire_owned().map_err(|_| {
            fail(ServeError::Overloaded(format!(
                "model {name:?} has {} requests in flight; retry shortly",
                slot.max_in_flight
            )))
        })?;
        let Some(model) = slot.current() else {
            return Err(fail(ServeError::Unavailable(format!(
                "model {name:?} ({}) has no version loaded yet",
                slot.spec.selector
            ))));
        };
        if let Some(v) = version.filter(|v| !v.is_empty())
            && v != model.version
        {
            return Err(fail(ServeError::VersionMismatch(format!(
                "model {name:?} serves version {}, not {v}",
                model.version
            ))));
        }
        Ok(Lease { slot, model, permit, method, started })
    }
}

/// A request's hold on one loaded version (see [`Models::acquire`]).
#[derive(Debug)]
pub struct Lease<'a> {
    slot: &'a ModelSlot,
    model: Arc<LoadedModel>,
    permit: tokio::sync::OwnedSemaphorePermit,
    method: &'static str,
    started: Instant,
}

impl Lease<'_> {
    pub fn version(&self) -> &str {
        &self.model.version
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
        let (slot, method, started) = (self.slot, self.method, self.started);
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
        let Lease { slot, model, permit, .. } = self;
        validate(&model.signature, &inputs, &outputs)?;
        let name = slot.spec.name.clone();
        let (outputs, version) = match &model.backend {
            Backend::Local { engine, .. } => {
                let outputs = engine.infer(inputs, outputs, deadline).await?;
                drop(permit);
                (outputs, model.version.clone())
            }
            Backend::Remote(remote) => {
                let rows = crate::engine::rows(&inputs);
                let started = Instant::now();
                let (outputs, version) = remote.infer(inputs, &outputs).await?;
                drop(permit);
                slot.stats.exec.record(1, rows, started.elapsed());
                // The remote's own label, when it gives one, is the truth.
                (outputs, if version.is_empty() { model.version.clone() } else { version })
            }
        };
        Ok(Prediction { model: name, version, outputs })
    }
}
