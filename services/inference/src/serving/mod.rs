//! The models this process serves, each in a slot whose loaded version is
//! swapped atomically. A request holds an `Arc` to the version it started on,
//! so a swap never interrupts it; the old session is dropped after the last one.

mod route;
mod shadow;
mod slot;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::watch;

pub(crate) use self::slot::LoadTiming;
pub use self::{
    route::{RequestHeaders, Routing, VariantStatus},
    shadow::ShadowStats,
    slot::{
        Backend, Forward, LoadedModel, Method, ModelSettings, ModelSlot, RequestMetrics, RequestSeries, SlotState,
        SlotStatus, Stats,
    },
};
use crate::{
    error::ServeError,
    spec::ModelSpec,
    tensor::{NamedTensor, Signature, validate},
};

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
    /// The API that carried the request, for metrics.
    pub method: Method,
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
    /// The registry's changes as this process receives them (for the console).
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// A change the registry streamed (`WatchModels`), as the console shows it.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: u64,
    /// `alias_set`, `stage_changed`, `policy_changed`, ...
    pub kind: String,
    pub name: String,
    pub version: String,
    pub alias: String,
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
        Ok(Self {
            slots,
            order,
            ready,
            draining: std::sync::atomic::AtomicBool::new(false),
            draws: AtomicU64::new(0),
            // A slow reader misses changes, never holds up delivery.
            changes: tokio::sync::broadcast::channel(256).0,
        })
    }

    /// Passes on a change the registry streamed to whoever watches (none, usually).
    pub fn announce(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    pub fn watch_changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
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
        method: Method,
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
        let (slot, variant, shadow) = match configured.route.current.load().as_deref() {
            None => (Arc::clone(configured), None, None),
            Some(routing) => {
                let router = &routing.router;
                let named = router.route_header().and_then(|h| headers.header(h.as_str()));
                let sticky = router.sticky_header().and_then(|h| headers.header(h.as_str()));
                let draw = self.draws.fetch_add(1, Ordering::Relaxed);
                let (i, reason) =
                    router.choose(named, sticky, draw).map_err(|e| fail(configured, ServeError::InvalidArgument(e)))?;
                let shadow =
                    router.shadow().filter(|_| router.mirrors(i, draw)).map(|(s, _)| Arc::clone(&routing.slots[s]));
                // A variant with nothing loaded yet gets no traffic, unless asked for by name:
                // its share goes to the configured slot (as that variant, when one shares it).
                if routing.slots[i].current().is_none() && reason != ferry_traffic::Reason::Header {
                    match routing.fallback {
                        Some(f) => (Arc::clone(&routing.slots[f]), Some(Arc::clone(&routing.names[f])), shadow),
                        None => (Arc::clone(configured), None, shadow),
                    }
                } else {
                    (Arc::clone(&routing.slots[i]), Some(Arc::clone(&routing.names[i])), shadow)
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
        Ok(Lease { slot, model, variant, shadow, permit, method, started })
    }
}

/// A request's hold on one loaded version (see [`Models::acquire`]).
#[derive(Debug)]
pub struct Lease {
    slot: Arc<ModelSlot>,
    model: Arc<LoadedModel>,
    variant: Option<Arc<str>>,
    /// The shadow variant this request is mirrored to, if it is.
    shadow: Option<Arc<ModelSlot>>,
    permit: tokio::sync::OwnedSemaphorePermit,
    method: Method,
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

    /// Runs the request on the leased version and counts its outcome. One
    /// async function down to `execute`: each level of nested futures keeps
    /// its arguments and its callee's state, and is copied whole into its
    /// caller (~1 KB a level here).
    pub async fn run(
        self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Prediction, ServeError> {
        let Lease { slot, model, variant, shadow, permit, method, started } = self;
        // Mirrored requests keep a copy of their input for the shadow.
        let mirror = shadow.map(|s| (s, inputs.clone(), outputs.clone()));
        let result = execute(&slot, &model, inputs, outputs, deadline).await;
        drop(permit);
        let elapsed = started.elapsed();
        slot.stats.record(result.is_ok(), elapsed.as_nanos() as u64);
        let (outputs, version) = match result {
            Ok(done) => done,
            Err(e) => {
                model.requests.record(&slot.stats.requests, method, &model.version, 1 + e.kind_index(), elapsed);
                return Err(e);
            }
        };
        if version == model.version {
            model.requests.record(&slot.stats.requests, method, &model.version, 0, elapsed);
        } else {
            // A remote's own label for the version that answered.
            slot.stats.requests.record((method, version.clone()), 0, elapsed);
        }
        if let Some((shadow, inputs, wanted)) = mirror {
            shadow::mirror(shadow, inputs, wanted, outputs.clone());
        }
        Ok(Prediction { model: slot.spec.name.clone(), version, variant, outputs })
    }
}

/// Validates and runs a request on `model` (a version of `slot`); returns
/// the outputs and the version that computed them.
async fn execute(
    slot: &ModelSlot,
    model: &LoadedModel,
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    deadline: Option<Instant>,
) -> Result<(Vec<NamedTensor>, String), ServeError> {
    validate(&model.signature, &inputs, &outputs)?;
    match &model.backend {
        Backend::Local { engine, .. } => Ok((engine.infer(inputs, outputs, deadline).await?, model.version.clone())),
        Backend::Remote(remote) => {
            let rows = crate::tensor::rows(&inputs);
            let started = Instant::now();
            let (outputs, version) = remote.infer(inputs, &outputs).await?;
            slot.stats.exec.record(1, rows, started.elapsed());
            // The remote's own label, when it gives one, is the truth.
            Ok((outputs, if version.is_empty() { model.version.clone() } else { version }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        spec::Selector,
        tensor::{DType, TensorData, TensorSpec},
    };

    fn models(max_in_flight: usize) -> Models {
        let session = crate::testing::session();
        let spec = ModelSpec {
            name: "m".into(),
            selector: Selector::Alias("champion".into()),
            remote: true,
            pin: Default::default(),
        };
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
            requests: Default::default(),
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
        let lease = m.acquire("m", None, Method::GrpcPredict, &()).unwrap();
        m.install("m", version("2", 8), None);
        // The input shaped from the lease's signature is for the version it holds.
        assert_eq!((lease.version(), lease.signature().inputs[0].shape[1]), ("1", 4));
        let err = m.acquire("m", Some("1"), Method::GrpcPredict, &()).unwrap_err();
        assert!(matches!(err, ServeError::VersionMismatch(_)), "{err:?}");
        assert_eq!(m.acquire("m", Some("2"), Method::GrpcPredict, &()).unwrap().version(), "2");
        assert!(matches!(m.acquire("nope", None, Method::GrpcPredict, &()), Err(ServeError::NotFound(_))));
    }

    #[tokio::test]
    async fn leases_are_bounded_and_refusals_counted() {
        let m = models(1);
        assert!(
            matches!(m.acquire("m", None, Method::GrpcPredict, &()), Err(ServeError::Unavailable(_))),
            "nothing loaded yet"
        );
        m.install("m", version("1", 4), None);
        let held = m.acquire("m", None, Method::GrpcPredict, &()).unwrap();
        assert!(matches!(m.acquire("m", None, Method::GrpcPredict, &()), Err(ServeError::Overloaded(_))));
        drop(held);
        assert!(m.acquire("m", None, Method::GrpcPredict, &()).is_ok(), "the permit comes back with the lease");
        assert_eq!(m.slot("m").unwrap().stats.fail_count.load(Ordering::Relaxed), 2);
    }

    /// Headers for routing, as a transport would pass them.
    struct Headers(&'static [(&'static str, &'static str)]);

    impl RequestHeaders for Headers {
        fn header(&self, name: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
    }

    #[tokio::test]
    async fn a_policy_routes_each_request_to_its_variant() {
        let m = models(64);
        m.install("m", version("1", 4), None);
        let primary = Arc::clone(m.slot("m").unwrap());
        let policy = r#"{"format":1,"variants":[{"name":"champion","selector":"@champion","weight":50},
            {"name":"challenger","selector":"@challenger","weight":50}]}"#;
        let router = ferry_traffic::Policy::parse("m", policy).unwrap();
        let spec = ModelSpec {
            name: "m".into(),
            selector: Selector::Alias("challenger".into()),
            remote: true,
            pin: Default::default(),
        };
        let challenger = Arc::new(ModelSlot::new(spec, primary.settings));
        let slots = vec![Arc::clone(&primary), Arc::clone(&challenger)];
        primary.set_routing(Some(Routing::new(router, slots, policy.into(), &primary)));
        let named = |v: &'static str| -> Headers {
            match v {
                "challenger" => Headers(&[("x-ferry-variant", "challenger")]),
                _ => Headers(&[("x-ferry-variant", "nope")]),
            }
        };
        let pick = |h: &dyn RequestHeaders| {
            let l = m.acquire("m", None, Method::GrpcPredict, h).unwrap();
            (l.version().to_owned(), l.variant().map(|v| v.to_string()))
        };
        // Nothing loaded for the challenger yet: its share falls back, asking for it by name is refused.
        for _ in 0..20 {
            assert_eq!(pick(&()), ("1".to_owned(), Some("champion".to_owned())));
        }
        assert!(matches!(
            m.acquire("m", None, Method::GrpcPredict, &named("challenger")),
            Err(ServeError::Unavailable(_))
        ));
        let unknown = m.acquire("m", None, Method::GrpcPredict, &named("nope")).unwrap_err();
        assert!(matches!(&unknown, ServeError::InvalidArgument(e) if e.contains("challenger")), "{unknown:?}");
        m.install_in(&challenger, version("2", 8), None);
        assert_eq!(pick(&named("challenger")), ("2".to_owned(), Some("challenger".to_owned())));
        let drawn: std::collections::BTreeSet<_> = (0..100).map(|_| pick(&())).collect();
        assert_eq!(drawn.len(), 2, "both variants drawn at 50/50: {drawn:?}");
        let variants: Vec<_> =
            primary.status().variants.into_iter().map(|v| (v.name, v.weight, v.serving_version)).collect();
        assert_eq!(variants, [("champion".into(), 50, Some("1".into())), ("challenger".into(), 50, Some("2".into()))]);
        // A policy none of whose variants is the configured selector: until they load,
        // the configured slot keeps answering (as no variant), never UNAVAILABLE.
        let other = r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":50},{"name":"b","selector":"@b","weight":50}]}"#;
        let router = ferry_traffic::Policy::parse("m", other).unwrap();
        let new_slot = |alias: &str| {
            let spec = ModelSpec {
                name: "m".into(),
                selector: Selector::Alias(alias.into()),
                remote: true,
                pin: Default::default(),
            };
            Arc::new(ModelSlot::new(spec, primary.settings))
        };
        primary.set_routing(Some(Routing::new(router, vec![new_slot("a"), new_slot("b")], other.into(), &primary)));
        for _ in 0..20 {
            assert_eq!(pick(&()), ("1".to_owned(), None));
        }
        // The policy removed: as configured, no variant named.
        primary.set_routing(None);
        assert_eq!(pick(&named("challenger")), ("1".to_owned(), None));
    }

    fn input(model: &str) -> PredictInput {
        PredictInput {
            model: model.into(),
            version: None,
            inputs: vec![NamedTensor {
                name: "x".into(),
                shape: vec![1, 4],
                data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]),
            }],
            outputs: Vec::new(),
            deadline: None,
            method: Method::GrpcPredict,
        }
    }

    /// Requests are counted by API, version and outcome, and each version
    /// in its own series across a swap (the series is kept on the version).
    #[tokio::test]
    async fn requests_are_counted_by_method_version_and_outcome() {
        let m = crate::testing::models();
        let with = |method| PredictInput { method, ..input("double") };
        for method in [Method::GrpcPredict, Method::GrpcPredict, Method::RestPredict] {
            m.predict(with(method), &()).await.unwrap();
        }
        let mut bad = with(Method::GrpcPredict);
        bad.inputs[0].shape = vec![1, 3];
        bad.inputs[0].data = TensorData::F32(vec![1.0, 2.0, 3.0]);
        assert!(matches!(m.predict(bad, &()).await, Err(ServeError::InvalidArgument(_))));
        crate::testing::swap(&m, "double", "4");
        m.predict(with(Method::GrpcPredict), &()).await.unwrap();
        let counts: Vec<_> = m
            .slot("double")
            .unwrap()
            .stats
            .requests
            .snapshot()
            .into_iter()
            .map(|((method, version), s)| {
                let n: Vec<u64> = s.outcomes.iter().map(|n| n.load(Ordering::Relaxed)).collect();
                (method.as_str(), version, n[0], n[1..].iter().sum::<u64>(), s.duration.count())
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("grpc.Predict", "3".to_owned(), 2, 1, 3),
                ("grpc.Predict", "4".to_owned(), 1, 0, 1),
                ("rest.predict", "3".to_owned(), 1, 0, 1)
            ]
        );
    }

    fn shadowed(m: &Models, shadow: &Arc<ModelSlot>) {
        let primary = Arc::clone(m.slot("double").unwrap());
        let policy = r#"{"format":1,"variants":[{"name":"champion","selector":"@champion","weight":100},
            {"name":"shadow","selector":"@shadow","weight":0}],"shadow":{"variant":"shadow","percent":100}}"#;
        let router = ferry_traffic::Policy::parse("double", policy).unwrap();
        let slots = vec![Arc::clone(&primary), Arc::clone(shadow)];
        primary.set_routing(Some(Routing::new(router, slots, policy.into(), &primary)));
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_shadow_never_changes_or_holds_up_the_callers_answer() {
        let m = crate::testing::models();
        let shadow = crate::testing::variant(&m, "double", "@shadow", "9", crate::testing::SLOW, 2.0);
        shadowed(&m, &shadow);
        for _ in 0..20 {
            let started = Instant::now();
            let p = m.predict(input("double"), &()).await.unwrap();
            assert!(started.elapsed() < crate::testing::SLOW / 4, "the caller waited for the shadow");
            assert_eq!((p.version.as_str(), p.variant.as_deref()), ("3", Some("champion")));
            assert_eq!(p.outputs[0].data, TensorData::F32(vec![2.0, 4.0, 6.0, 8.0]));
        }
        // The shadow's in-flight limit took what fit; the rest was dropped, and counted.
        let sh = &shadow.stats.shadow;
        until("the shadow to finish", || {
            sh.compared.load(Ordering::Relaxed) + sh.dropped.load(Ordering::Relaxed) == 20
        })
        .await;
        let compared = sh.compared.load(Ordering::Relaxed);
        assert!((1..=crate::testing::MAX_IN_FLIGHT as u64).contains(&compared), "{compared} compared");
        assert_eq!((sh.agreement(), sh.mean_abs_diff()), (Some(1.0), Some(0.0)), "an identical model agrees");
    }

    #[tokio::test]
    async fn a_shadow_that_disagrees_or_fails_is_measured_and_the_caller_never_notices() {
        let m = crate::testing::models();
        // y = -x: every row's top class moves; |2x - (-x)| averages 3 · 2.5.
        let shadow = crate::testing::variant(&m, "double", "@shadow", "9", Duration::ZERO, -1.0);
        shadowed(&m, &shadow);
        for _ in 0..5 {
            let p = m.predict(input("double"), &()).await.unwrap();
            assert_eq!(p.outputs[0].data, TensorData::F32(vec![2.0, 4.0, 6.0, 8.0]));
            // One at a time, so none is dropped.
            let sh = &shadow.stats.shadow;
            let before = sh.compared.load(Ordering::Relaxed);
            until("the shadow to compare", || sh.compared.load(Ordering::Relaxed) > before).await;
        }
        let sh = &shadow.stats.shadow;
        assert_eq!(sh.agreement(), Some(0.0));
        assert!((sh.mean_abs_diff().unwrap() - 7.5).abs() < 1e-6, "{:?}", sh.mean_abs_diff());
        // A shadow with nothing loaded: each copy is dropped, and counted; the caller is served.
        let spec = ModelSpec {
            name: "double".into(),
            selector: Selector::Alias("shadow".into()),
            remote: false,
            pin: Default::default(),
        };
        let empty = Arc::new(ModelSlot::new(spec, m.slot("double").unwrap().settings));
        shadowed(&m, &empty);
        assert_eq!(m.predict(input("double"), &()).await.unwrap().version, "3");
        assert_eq!(empty.stats.shadow.dropped.load(Ordering::Relaxed), 1);
        let status = m.slot("double").unwrap().status();
        assert_eq!((status.variants[1].shadow_percent, status.variants[1].shadow_dropped), (100, 1));
    }
}
