//! Adaptive batching on dedicated threads.
//!
//! Each loaded model version owns a queue and one OS thread per ONNX Runtime
//! session: inference never runs on the async runtime. With a *wide* session
//! (its own intra-op threads, one per core) and *narrow* ones (one thread
//! each, one per core), a batch that leaves the queue empty while no other
//! batch runs goes to the wide session, which finishes a lone request
//! fastest; while requests keep queuing, batches run side by side on the
//! narrow sessions, which waste no time synchronising threads (ONNX Runtime
//! splitting one call over cores computes fewer rows per second than the same
//! cores running separate calls: BENCHMARKS.md). A worker takes the
//! oldest request and, when batching is on, every queued request that stacks
//! with it (same trailing input shapes, same outputs) up to `max_rows`, runs
//! them as one call and splits the outputs back by rows. It waits for more
//! only when `max_delay` is set *and* the model is under load (more than one
//! request was queued, or the previous batch had more than one row), so a lone
//! request on an idle queue runs at once. Requests whose caller went away or
//! whose deadline passed are dropped before they reach the model; a failed
//! batch is retried one request at a time so that one bad request fails alone.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_telemetry::metrics::Histogram;
use tokio::sync::oneshot;

use crate::{
    error::ServeError,
    tensor::{NamedTensor, TensorData},
};

/// Runs one (possibly stacked) request; implemented by the ONNX Runtime session.
pub(crate) trait Runner: Send + 'static {
    fn run(&mut self, inputs: Vec<NamedTensor>, outputs: &[String]) -> Result<Vec<NamedTensor>, ServeError>;
}

/// How requests to one model are stacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows in one model call; 1 turns batching off.
    pub max_rows: usize,
    /// How long a worker under load may wait to fill a batch; zero never waits.
    pub max_delay: Duration,
}

impl BatchPolicy {
    pub const OFF: BatchPolicy = BatchPolicy { max_rows: 1, max_delay: Duration::ZERO };

    pub(crate) fn enabled(self) -> bool {
        self.max_rows > 1
    }
}

/// Upper bounds of the batch-size histogram buckets (rows per model call).
const BATCH_ROWS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// What the workers of every version of one model add up (Triton's statistics
/// and the Prometheus families read these).
#[derive(Debug)]
pub struct ExecStats {
    /// Model calls (a stacked batch is one).
    pub executions: AtomicU64,
    /// Rows computed, counting each row of a batch.
    pub rows: AtomicU64,
    pub compute_ns: AtomicU64,
    /// Requests that reached the model, and their summed queue wait and compute
    /// time (a batch's compute counts once for each request in it, as Triton does).
    pub requests: AtomicU64,
    pub request_queue_ns: AtomicU64,
    pub request_compute_ns: AtomicU64,
    /// Requests waiting for a worker.
    pub queued: AtomicU64,
    /// Rows per model call.
    pub batch_rows: Histogram,
}

impl Default for ExecStats {
    fn default() -> Self {
        Self {
            executions: AtomicU64::default(),
            rows: AtomicU64::default(),
            compute_ns: AtomicU64::default(),
            requests: AtomicU64::default(),
            request_queue_ns: AtomicU64::default(),
            request_compute_ns: AtomicU64::default(),
            queued: AtomicU64::default(),
            batch_rows: Histogram::new(BATCH_ROWS, 1.0),
        }
    }
}

impl ExecStats {
    /// Records one model call of `requests` requests and `rows` rows.
    pub(crate) fn record(&self, requests: usize, rows: usize, elapsed: Duration) {
        let ns = elapsed.as_nanos() as u64;
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.request_compute_ns.fetch_add(ns * requests as u64, Ordering::Relaxed);
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.compute_ns.fetch_add(ns, Ordering::Relaxed);
        self.batch_rows.observe(rows as u64);
    }
}

type Reply = oneshot::Sender<Result<Vec<NamedTensor>, ServeError>>;
pub(crate) type Outputs = oneshot::Receiver<Result<Vec<NamedTensor>, ServeError>>;

/// One request on its way to the model; dropping the receiver cancels it.
pub(crate) struct Job {
    /// In signature order, validated.
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    rows: usize,
    deadline: Option<Instant>,
    queued_at: Instant,
    reply: Reply,
}

impl Job {
    /// A request with validated inputs in signature order, and where its outputs will arrive.
    pub(crate) fn new(inputs: Vec<NamedTensor>, outputs: Vec<String>, deadline: Option<Instant>) -> (Job, Outputs) {
        let (reply, rx) = oneshot::channel();
        let rows = crate::tensor::rows(&inputs);
        (Job { inputs, outputs, rows, deadline, queued_at: Instant::now(), reply }, rx)
    }

    /// Whether `other` can be stacked under this job: same outputs, same trailing shapes.
    fn stacks_with(&self, other: &Job) -> bool {
        self.outputs == other.outputs
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                a.name == b.name && a.data.dtype() == b.data.dtype() && a.shape.get(1..) == b.shape.get(1..)
            })
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Batches being computed, and whether one of them holds the wide session
    /// (which uses every core, so nothing else starts meanwhile).
    running: usize,
    wide_running: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Arc<ExecStats>,
    policy: BatchPolicy,
    /// Workers still running; the last one out has dropped every session.
    workers: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked mid-batch leaves the queue itself consistent.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The queue and worker threads of one loaded model version. Dropping it lets
/// the workers finish what is queued, then exit.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// One worker thread per runner. With `wide`, the runners are the narrow
    /// sessions and any worker may borrow the wide one (module docs).
    pub(crate) fn start<R: Runner>(
        thread_name: &str,
        runners: Vec<R>,
        wide: Option<R>,
        policy: BatchPolicy,
        stats: Arc<ExecStats>,
    ) -> std::io::Result<Self> {
        let workers = AtomicUsize::new(runners.len());
        let shared =
            Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new(), stats, policy, workers });
        let wide = wide.map(|w| Arc::new(Mutex::new(w)));
        for (i, runner) in runners.into_iter().enumerate() {
            let (shared, wide) = (Arc::clone(&shared), wide.clone());
            std::thread::Builder::new().name(format!("{thread_name}-{i}")).spawn(move || {
                work(&shared, runner, wide.as_deref());
                drop(wide);
                // The version's sessions are gone: give their memory back to the OS
                // (the C allocator keeps freed pages otherwise; memory.rs).
                if shared.workers.fetch_sub(1, Ordering::AcqRel) == 1 {
                    crate::memory::trim();
                }
            })?;
        }
        Ok(Self { shared })
    }

    pub(crate) fn policy(&self) -> BatchPolicy {
        self.shared.policy
    }

    /// Queues a request; the receiver yields its outputs. Dropping the receiver cancels it.
    pub(crate) fn submit(&self, inputs: Vec<NamedTensor>, outputs: Vec<String>, deadline: Option<Instant>) -> Outputs {
        let (job, rx) = Job::new(inputs, outputs, deadline);
        self.enqueue(job);
        rx
    }

    pub(crate) fn enqueue(&self, job: Job) {
        let mut q = self.shared.lock();
        if q.closed {
            drop(q);
            let _ = job.reply.send(Err(ServeError::Unavailable("this model version is unloading".into())));
            return;
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

fn rows_of(batch: &[Job]) -> usize {
    batch.iter().map(|j| j.rows).sum()
}

/// Moves queued jobs that stack with `batch[0]` into `batch`, oldest first,
/// while they fit in `max_rows`. Jobs that do not stack stay queued in order.
fn take_more(q: &mut Queue, batch: &mut Vec<Job>, max_rows: usize) {
    let mut rows = rows_of(batch);
    let mut i = 0;
    while i < q.jobs.len() && rows < max_rows {
        let fits = rows + q.jobs[i].rows <= max_rows;
        if fits && batch[0].stacks_with(&q.jobs[i]) {
            if let Some(job) = q.jobs.remove(i) {
                rows += job.rows;
                batch.push(job);
            }
        } else if !fits {
            break;
        } else {
            i += 1;
        }
    }
}

fn work<R: Runner>(shared: &Shared, mut runner: R, wide: Option<&Mutex<R>>) {
    let policy = shared.policy;
    let mut last_rows = 0;
    loop {
        let mut batch = Vec::new();
        let use_wide;
        {
            let mut q = shared.lock();
            let first = loop {
                if !q.wide_running
                    && let Some(job) = q.jobs.pop_front()
                {
                    break job;
                }
                if q.closed && q.jobs.is_empty() {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner);
            };
            let under_load = !q.jobs.is_empty() || last_rows > 1;
            batch.push(first);
            if policy.enabled() {
                take_more(&mut q, &mut batch, policy.max_rows);
                if under_load && !policy.max_delay.is_zero() {
                    // Never past the earliest deadline in the batch.
                    let mut until = Instant::now() + policy.max_delay;
                    if let Some(earliest) = batch.iter().filter_map(|j| j.deadline).min() {
                        until = until.min(earliest);
                    }
                    while rows_of(&batch) < policy.max_rows && !q.closed {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        q = shared
                            .wake
                            .wait_timeout(q, until - now)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                        take_more(&mut q, &mut batch, policy.max_rows);
                    }
                }
            }
            use_wide = wide.is_some() && q.jobs.is_empty() && q.running == 0;
            q.running += 1;
            q.wide_running = use_wide;
        }
        shared.stats.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let waited: u64 = batch.iter().map(|j| now.duration_since(j.queued_at).as_nanos() as u64).sum();
        shared.stats.request_queue_ns.fetch_add(waited, Ordering::Relaxed);
        drop_finished(&mut batch, now);
        if !batch.is_empty() {
            last_rows = rows_of(&batch);
            match wide.filter(|_| use_wide) {
                Some(w) => {
                    execute(&mut *w.lock().unwrap_or_else(std::sync::PoisonError::into_inner), batch, &shared.stats)
                }
                None => execute(&mut runner, batch, &shared.stats),
            }
        }
        let mut q = shared.lock();
        q.running -= 1;
        if use_wide {
            q.wide_running = false;
            drop(q);
            // Workers that found jobs while the wide session held every core.
            shared.wake.notify_all();
        }
    }
}

/// Drops requests whose caller went away, and answers those past their deadline.
fn drop_finished(batch: &mut Vec<Job>, now: Instant) {
    batch.retain_mut(|j| !finished(j, now));
}

/// Whether `job` needs no run: its caller left, or its deadline passed (it is told so).
fn finished(job: &mut Job, now: Instant) -> bool {
    if job.reply.is_closed() {
        return true;
    }
    if job.deadline.is_some_and(|d| d <= now) {
        let (tx, _) = oneshot::channel();
        let reply = std::mem::replace(&mut job.reply, tx);
        let _ = reply.send(Err(ServeError::DeadlineExceeded("the deadline passed while queued".into())));
        return true;
    }
    false
}

/// Runs `jobs` on the calling thread, stacking those that stack (oldest first,
/// at most `max_rows` rows a call).
/// `jobs` is left empty, its allocation kept for the caller to reuse.
pub(crate) fn run_now<R: Runner>(runner: &mut R, jobs: &mut Vec<Job>, max_rows: usize, stats: &ExecStats) {
    // A lone request, the usual case inline: nothing to stack, one clock read.
    if jobs.len() == 1
        && let Some(mut job) = jobs.pop()
    {
        let now = Instant::now();
        if !finished(&mut job, now) {
            run_one_from(runner, job, stats, now);
        }
        return;
    }
    let mut q = Queue { jobs: jobs.drain(..).collect(), ..Queue::default() };
    while let Some(first) = q.jobs.pop_front() {
        let mut batch = vec![first];
        take_more(&mut q, &mut batch, max_rows);
        drop_finished(&mut batch, Instant::now());
        if !batch.is_empty() {
            execute(runner, batch, stats);
        }
    }
}

fn run_one<R: Runner>(runner: &mut R, job: Job, stats: &ExecStats) {
    run_one_from(runner, job, stats, Instant::now());
}

/// Runs `job` alone; `started` is now, read by the caller.
fn run_one_from<R: Runner>(runner: &mut R, job: Job, stats: &ExecStats, started: Instant) {
    let result = runner.run(job.inputs, &job.outputs);
    stats.record(1, job.rows, started.elapsed());
    let _ = job.reply.send(result);
}

fn execute<R: Runner>(runner: &mut R, mut batch: Vec<Job>, stats: &ExecStats) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            run_one(runner, job, stats);
        }
        return;
    }
    let total = rows_of(&batch);
    let stacked = stack(&batch, total);
    let started = Instant::now();
    let result = runner.run(stacked, &batch[0].outputs);
    let outputs = match result.and_then(|outs| split(outs, &batch, total)) {
        Ok(per_job) => per_job,
        Err(_) => {
            // One request's data may be what failed: retry each alone so the others succeed.
            for job in batch {
                run_one(runner, job, stats);
            }
            return;
        }
    };
    stats.record(batch.len(), total, started.elapsed());
    for (job, out) in batch.into_iter().zip(outputs) {
        let _ = job.reply.send(Ok(out));
    }
}

/// One input tensor per model input, rows of every job in order.
fn stack(batch: &[Job], total: usize) -> Vec<NamedTensor> {
    (0..batch[0].inputs.len())
        .map(|i| {
            let first = &batch[0].inputs[i];
            let mut shape = first.shape.clone();
            shape[0] = total as i64;
            let data = TensorData::concat(batch.iter().map(|j| &j.inputs[i].data), first.data.dtype());
            NamedTensor { name: first.name.clone(), shape, data }
        })
        .collect()
}

/// Splits each output along its first dimension back into per-job outputs.
fn split(outputs: Vec<NamedTensor>, batch: &[Job], total: usize) -> Result<Vec<Vec<NamedTensor>>, ServeError> {
    let mut per_job: Vec<Vec<NamedTensor>> = batch.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        if out.shape.first() != Some(&(total as i64)) {
            return Err(ServeError::Model(format!(
                "output {:?} has shape {:?}, which does not split into {total} rows",
                out.name, out.shape
            )));
        }
        let per_row = out.data.len().checked_div(total).unwrap_or(0);
        let mut start = 0;
        for (job, dst) in batch.iter().zip(per_job.iter_mut()) {
            let mut shape = out.shape.clone();
            shape[0] = job.rows as i64;
            let end = start + job.rows * per_row;
            dst.push(NamedTensor { name: out.name.clone(), shape, data: out.data.slice(start..end) });
            start = end;
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its single input; records the rows of every call; fails on a negative value.
    struct Doubler {
        calls: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl Runner for Doubler {
        fn run(&mut self, inputs: Vec<NamedTensor>, _: &[String]) -> Result<Vec<NamedTensor>, ServeError> {
            std::thread::sleep(self.delay);
            let t = &inputs[0];
            self.calls.lock().unwrap().push(t.shape[0] as usize);
            let TensorData::F32(v) = &t.data else { unreachable!() };
            if v.iter().any(|x| *x < 0.0) {
                return Err(ServeError::Model("negative".into()));
            }
            let data = TensorData::F32(v.iter().map(|x| x * 2.0).collect());
            Ok(vec![NamedTensor { name: "y".into(), shape: t.shape.clone(), data }])
        }
    }

    fn row(x: f32, width: usize) -> Vec<NamedTensor> {
        vec![NamedTensor { name: "x".into(), shape: vec![1, width as i64], data: TensorData::F32(vec![x; width]) }]
    }

    fn start(policy: BatchPolicy, delay: Duration) -> (Batcher, Arc<Mutex<Vec<usize>>>, Arc<ExecStats>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(ExecStats::default());
        let b = Batcher::start(
            "test",
            vec![Doubler { calls: Arc::clone(&calls), delay }],
            None,
            policy,
            Arc::clone(&stats),
        )
        .unwrap();
        (b, calls, stats)
    }

    /// Waits until the worker has taken everything queued (it is then busy with it).
    async fn until_taken(stats: &ExecStats) {
        while stats.queued.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn stacks_queued_requests_and_splits_the_outputs_back() {
        let (b, calls, stats) =
            start(BatchPolicy { max_rows: 8, max_delay: Duration::ZERO }, Duration::from_millis(30));
        // The first request occupies the only worker; the next 5 queue up behind it.
        let mut rxs = vec![b.submit(row(0.0, 2), vec![], None)];
        until_taken(&stats).await;
        rxs.extend((1..6).map(|i| b.submit(row(i as f32, 2), vec![], None)));
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.await.unwrap().unwrap();
            assert_eq!(out[0].shape, vec![1, 2]);
            assert_eq!(out[0].data, TensorData::F32(vec![2.0 * i as f32; 2]), "request {i} got another row");
        }
        assert_eq!(*calls.lock().unwrap(), vec![1, 5]);
        assert_eq!(stats.executions.load(Ordering::Relaxed), 2);
        assert_eq!(stats.rows.load(Ordering::Relaxed), 6);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn respects_max_rows_and_never_mixes_shapes() {
        let (b, calls, stats) =
            start(BatchPolicy { max_rows: 3, max_delay: Duration::ZERO }, Duration::from_millis(30));
        let mut rxs = vec![b.submit(row(0.0, 2), vec![], None)];
        until_taken(&stats).await;
        rxs.extend((1..5).map(|i| b.submit(row(i as f32, 2), vec![], None)));
        rxs.push(b.submit(row(9.0, 3), vec![], None));
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        // 1 alone (idle worker), then 4 same-shape rows in batches of at most 3, the other shape alone.
        assert_eq!(*calls.lock().unwrap(), vec![1, 3, 1, 1]);
    }

    #[tokio::test]
    async fn an_idle_queue_never_waits_for_a_batch() {
        let (b, _, _) = start(BatchPolicy { max_rows: 64, max_delay: Duration::from_secs(5) }, Duration::ZERO);
        let started = Instant::now();
        b.submit(row(1.0, 2), vec![], None).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "a lone request waited {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn one_bad_request_fails_alone() {
        let (b, _, stats) = start(BatchPolicy { max_rows: 8, max_delay: Duration::ZERO }, Duration::from_millis(20));
        let first = b.submit(row(1.0, 2), vec![], None);
        until_taken(&stats).await;
        let good = b.submit(row(2.0, 2), vec![], None);
        let bad = b.submit(row(-1.0, 2), vec![], None);
        first.await.unwrap().unwrap();
        assert_eq!(good.await.unwrap().unwrap()[0].data, TensorData::F32(vec![4.0; 2]));
        assert!(matches!(bad.await.unwrap(), Err(ServeError::Model(_))));
    }

    #[tokio::test]
    async fn skips_cancelled_and_expired_requests() {
        let (b, calls, stats) =
            start(BatchPolicy { max_rows: 8, max_delay: Duration::ZERO }, Duration::from_millis(50));
        let first = b.submit(row(1.0, 2), vec![], None);
        until_taken(&stats).await;
        drop(b.submit(row(2.0, 2), vec![], None));
        let expired = b.submit(row(3.0, 2), vec![], Some(Instant::now() + Duration::from_millis(10)));
        let kept = b.submit(row(4.0, 2), vec![], None);
        first.await.unwrap().unwrap();
        assert!(matches!(expired.await.unwrap(), Err(ServeError::DeadlineExceeded(_))));
        kept.await.unwrap().unwrap();
        assert_eq!(*calls.lock().unwrap(), vec![1, 1], "the cancelled and expired requests reached the model");
    }

    /// Counts the calls running at once.
    struct Overlap {
        calls: Arc<Mutex<Vec<usize>>>,
        now: Arc<AtomicU64>,
        most: Arc<AtomicU64>,
    }

    impl Runner for Overlap {
        fn run(&mut self, inputs: Vec<NamedTensor>, _: &[String]) -> Result<Vec<NamedTensor>, ServeError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(40));
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.calls.lock().unwrap().push(inputs[0].shape[0] as usize);
            Ok(vec![NamedTensor { name: "y".into(), shape: inputs[0].shape.clone(), data: inputs[0].data.clone() }])
        }
    }

    #[tokio::test]
    async fn a_lone_request_gets_the_wide_session_and_a_queue_runs_side_by_side_on_the_narrow_ones() {
        let (now, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let runner = |calls: &Arc<Mutex<Vec<usize>>>| Overlap {
            calls: Arc::clone(calls),
            now: Arc::clone(&now),
            most: Arc::clone(&most),
        };
        let (wide, narrow) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let stats = Arc::new(ExecStats::default());
        let policy = BatchPolicy { max_rows: 2, max_delay: Duration::ZERO };
        let b = Batcher::start(
            "test",
            vec![runner(&narrow), runner(&narrow)],
            Some(runner(&wide)),
            policy,
            Arc::clone(&stats),
        )
        .unwrap();
        b.submit(row(1.0, 2), vec![], None).await.unwrap().unwrap();
        assert_eq!(*wide.lock().unwrap(), vec![1], "a lone request on an idle model");
        assert!(narrow.lock().unwrap().is_empty());

        // One request holds the wide session (every core); six more queue behind it.
        let first = b.submit(row(1.0, 2), vec![], None);
        until_taken(&stats).await;
        let rest: Vec<_> = (0..6).map(|i| b.submit(row(i as f32, 2), vec![], None)).collect();
        first.await.unwrap().unwrap();
        for rx in rest {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(wide.lock().unwrap()[..2], [1, 1]);
        let narrow = narrow.lock().unwrap().clone();
        assert!(narrow.len() >= 2 && narrow.iter().all(|&r| r == 2), "queued batches ran on {narrow:?}");
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "the narrow sessions never ran side by side, or three calls ran at once"
        );
    }
}
