//! The engine: a loaded model's signature and the threads that run it —
//! on the caller's thread for cheap models (`inline.rs`), otherwise stacked
//! by the batcher (`batcher.rs`) onto sessions of ONNX Runtime (`ort.rs`).
//! The types it speaks, and request validation, are `tensor.rs`'s. No
//! transport types appear here.

pub mod batcher;
mod inline;
mod ort;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

pub use self::ort::Runtime;
use self::{
    batcher::{BatchPolicy, Batcher, ExecStats, Job, Runner},
    inline::Inline,
    ort::OrtRunner,
};
use crate::{
    error::ServeError,
    tensor::{NamedTensor, Signature, rows},
};

/// Cores this process may use: the default for per-core threads and sessions.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Session options for one model.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Sessions, each with its own worker thread: how many model calls run at once.
    pub sessions: usize,
    pub intra_threads: usize,
    /// Single-threaded sessions that run batches side by side while requests
    /// queue up, the (one) multi-threaded session serving otherwise; 0 turns
    /// this off. Used only for batchable models with more than one intra-op
    /// thread. A version's sessions share its weights (the packed forms,
    /// ~1x the file; the originals are mapped, not held); by default
    /// (`None`) models up to
    /// `THROUGHPUT_DEFAULT_MAX_BYTES` get one per core, larger ones one
    /// session, which holds only the packed forms (~1x).
    pub throughput_sessions: Option<usize>,
    pub inter_threads: usize,
    pub optimization_level: u8,
    /// Request stacking; only used when every input and output has a dynamic first dimension.
    pub batch: BatchPolicy,
    /// Models whose single-row run takes less than this run on the thread that
    /// decoded the request when no request is queued, skipping the hand-off to
    /// a model thread (which costs more than such a model's run). Zero disables.
    pub inline_below: Duration,
    /// Whether ONNX Runtime pool threads spin before sleeping: a lone request
    /// gets every core, at the cost of CPU that other work on the machine wants.
    pub spinning: bool,
}

/// Larger requests of a cheap model still go to its threads, so that the I/O
/// threads are never held for long.
const INLINE_MAX_ROWS: usize = 16;

/// A loaded model: its signature and the worker threads that run its sessions.
pub struct Engine {
    pub signature: Signature,
    batcher: Batcher,
    /// Sessions for running cheap models on the calling thread.
    inline: Option<Inline<OrtRunner>>,
    stats: Arc<ExecStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("signature", &self.signature)
            .field("batch", &self.batcher.policy())
            .field("inline", &self.inline.is_some())
            .finish()
    }
}

impl Engine {
    /// An engine over any runners (fakes, in tests of what holds an engine),
    /// one worker thread each, without batching or inline runs.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn with_runners<R: Runner>(signature: Signature, runners: Vec<R>, stats: Arc<ExecStats>) -> Self {
        let batcher = Batcher::start("test-model", runners, None, BatchPolicy::OFF, Arc::clone(&stats))
            .expect("starting test worker threads");
        Engine { signature, batcher, inline: None, stats }
    }

    /// Runs validated inputs, possibly stacked with other requests: a cheap
    /// model's on this thread, others' on a model thread. Dropping the future cancels the request if it has not run yet.
    pub async fn infer(
        &self,
        mut inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<NamedTensor>, ServeError> {
        self.signature.order(&mut inputs);
        let rows = rows(&inputs);
        let rx = match &self.inline {
            Some(inline) if rows <= INLINE_MAX_ROWS && self.stats.queued.load(Ordering::Relaxed) == 0 => {
                let inputs = match inline.run_alone(inputs, &outputs, rows, deadline, &self.stats) {
                    Ok(result) => return result,
                    Err(inputs) => inputs,
                };
                let (job, rx) = Job::new(inputs, outputs, deadline);
                inline.run(job, &self.batcher, &self.stats).await;
                rx
            }
            _ => {
                let (job, rx) = Job::new(inputs, outputs, deadline);
                self.batcher.enqueue(job);
                rx
            }
        };
        rx.await.map_err(|_| ServeError::Internal("a model worker stopped".into()))?
    }

    /// Runs the model on zero-valued inputs shaped from the signature (dynamic
    /// dims as 1), blocking; call from a blocking context.
    pub fn warm_up(&self, runs: usize) -> Result<(), ServeError> {
        for r in self.inline.iter().flat_map(Inline::runners) {
            let mut r = r.lock().map_err(|_| ServeError::Internal("an inline session panicked".into()))?;
            r.run(self.signature.zero_inputs(), &[])?;
        }
        for _ in 0..runs {
            let inputs = self.signature.zero_inputs();
            self.batcher
                .submit(inputs, Vec::new(), None)
                .blocking_recv()
                .map_err(|_| ServeError::Internal("a model worker stopped".into()))??;
        }
        Ok(())
    }
}
