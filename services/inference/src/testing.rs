//! In-process fixtures for the transports' tests: models served by a fake
//! runner behind a real engine, slots and leases, so that the gRPC services
//! and the HTTP router are tested without ONNX Runtime or MLflow.

// Built for the fuzz targets too (feature `fuzzing`), which use only part of it.
#![cfg_attr(not(test), allow(dead_code))]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    engine::{
        Engine, SessionOptions,
        batcher::{BatchPolicy, ExecStats, Runner},
    },
    error::ServeError,
    serving::{Backend, LoadedModel, ModelSettings, ModelSlot, Models},
    spec::{ModelSpec, Selector},
    tensor::{DType, NamedTensor, Signature, TensorData, TensorSpec},
};

/// Every model here takes `x` (float32, `[-1, 4]`) and answers `y = 2x`.
pub(crate) const WIDTH: i64 = 4;

/// The served models: `double` (version 3, the default), `slow` (version 1,
/// one worker that takes `SLOW` per request) and `pending` (configured, never loaded).
pub(crate) const SLOW: Duration = Duration::from_millis(400);

/// Requests each model takes at once before refusing with "overloaded".
pub(crate) const MAX_IN_FLIGHT: usize = 2;

struct Doubler {
    delay: Duration,
    /// 2 for the models here; other factors make variants that disagree.
    factor: f32,
    /// Model calls begun, for tests that need the worker busy.
    started: Arc<AtomicUsize>,
}

impl Runner for Doubler {
    fn run(&mut self, inputs: Vec<NamedTensor>, _outputs: &[String]) -> Result<Vec<NamedTensor>, ServeError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let x = inputs.into_iter().next().ok_or_else(|| ServeError::Internal("no input".into()))?;
        let TensorData::F32(v) = x.data else {
            return Err(ServeError::Model("x must be float32".into()));
        };
        Ok(vec![NamedTensor {
            name: "y".into(),
            shape: x.shape,
            data: TensorData::F32(v.iter().map(|a| a * self.factor).collect()),
        }])
    }
}

fn signature() -> Signature {
    let spec = |n: &str| TensorSpec { name: n.into(), dtype: DType::F32, shape: vec![-1, WIDTH] };
    Signature { inputs: vec![spec("x")], outputs: vec![spec("y")] }
}

fn loaded(
    stats: Arc<ExecStats>,
    version: &str,
    delay: Duration,
    factor: f32,
    started: Arc<AtomicUsize>,
) -> LoadedModel {
    LoadedModel {
        version: version.into(),
        sha256: format!("sha-{version}"),
        verified: true,
        signature: signature(),
        backend: Backend::Local {
            engine: Engine::with_runners(signature(), vec![Doubler { delay, factor, started }], stats),
            dir: PathBuf::new(),
        },
        loaded_at: std::time::Instant::now(),
        requests: Default::default(),
    }
}

/// `double`, `slow` and `pending`, as described above.
pub(crate) fn models() -> Arc<Models> {
    models_and_slow_calls().0
}

/// One session, one thread, no batching: what every test model runs with.
pub(crate) fn session() -> SessionOptions {
    SessionOptions {
        sessions: 1,
        intra_threads: 1,
        throughput_sessions: None,
        inter_threads: 1,
        optimization_level: 0,
        batch: BatchPolicy::OFF,
        inline_below: Duration::ZERO,
        spinning: false,
    }
}

/// The models, and how many calls the slow model's worker has begun.
pub(crate) fn models_and_slow_calls() -> (Arc<Models>, Arc<AtomicUsize>) {
    let session = session();
    let settings = ModelSettings { session, warmup_runs: 0, max_in_flight: MAX_IN_FLIGHT };
    let spec = |name: &str| ModelSpec {
        name: name.into(),
        selector: Selector::Alias("champion".into()),
        remote: false,
        pin: Default::default(),
    };
    let models = Models::new(["double", "slow", "pending"].into_iter().map(|n| (spec(n), settings)).collect()).unwrap();
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let exec = |name: &str| Arc::clone(&models.slot(name).unwrap().stats.exec);
    models.install("double", loaded(exec("double"), "3", Duration::ZERO, 2.0, Arc::default()), None);
    models.install("slow", loaded(exec("slow"), "1", SLOW, 2.0, Arc::clone(&slow_calls)), None);
    (Arc::new(models), slow_calls)
}

/// Swaps `version` of the doubling model in as `model`'s serving version.
pub(crate) fn swap(models: &Models, model: &str, version: &str) {
    let stats = Arc::clone(&models.slot(model).unwrap().stats.exec);
    models.install(model, loaded(stats, version, Duration::ZERO, 2.0, Arc::default()), None);
}

/// A variant's slot for `model` (`selector` like `@shadow`), serving
/// `version` with `y = factor·x` after `delay`, one worker.
pub(crate) fn variant(
    models: &Models,
    model: &str,
    selector: &str,
    version: &str,
    delay: Duration,
    factor: f32,
) -> Arc<ModelSlot> {
    let primary = models.slot(model).unwrap();
    let selector = format!("{model}{selector}").parse::<ferry_mlflow::ModelRef>().unwrap().selector;
    let slot = Arc::new(ModelSlot::new(
        ModelSpec { name: model.into(), selector, remote: false, pin: Default::default() },
        primary.settings,
    ));
    let stats = Arc::clone(&slot.stats.exec);
    models.install_in(&slot, loaded(stats, version, delay, factor, Arc::default()), None);
    slot
}
