//! Cheap models run on the I/O thread that decoded the request: handing a
//! call of a few microseconds to a model thread costs more than the call.
//!
//! Requests that arrive together are still stacked, without a hand-off: the
//! first to arrive leads. It yields once to the async runtime, which runs the
//! other requests its last I/O poll brought in (they join the leader's list)
//! and polls I/O once more without blocking; then the leader runs the list as
//! few model calls as stack and hands out the results. No timer is involved.
//! Yielding costs a lone request tens of microseconds (the runtime looks for
//! work on its other threads and polls I/O first), so a leader yields only
//! while the previous leader found company, or to probe for it: every
//! eighth lead after a probe that found company, half as often after each
//! that found none, down to once in 32 leads. Against a probe every eighth
//! lead (wrk, tiny model, one core, 4 rounds): 5-13 % more requests per
//! second at 4 callers, where probes that find nobody were the cost, the
//! same at 1, 16 and 64; a cap of 256 lost 2-3 % at 16 callers, where
//! company comes and goes (BENCHMARKS.md).
//! A request that would lead alone without yielding runs at once, without a
//! job, a channel or the pending list (`run_alone`).

use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::batcher::{Batcher, ExecStats, Job, Runner, run_now};
use crate::{error::ServeError, tensor::NamedTensor};

/// Most rows of one inline call: the I/O thread is never held for long.
const MAX_ROWS: usize = 64;

/// Leads between an idle model's probes for company after one that found
/// some; each probe that finds none doubles the gap, up to `PROBE_MOST`.
const PROBE_EVERY: u64 = 8;
const PROBE_MOST: u64 = 32;

pub(crate) struct Inline<R> {
    /// One per async worker thread, so that every thread can lead at once.
    runners: Vec<Mutex<R>>,
    pending: Mutex<Pending>,
    /// Rows per call when stacking; 1 runs each request alone.
    max_rows: usize,
    /// Requests the last leader collected.
    last_collected: AtomicUsize,
    /// Leads until the next probe, and the gap between probes now.
    until_probe: AtomicU64,
    probe_gap: AtomicU64,
}

#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    /// Whether a leader is yielding and will take `jobs`.
    led: bool,
    /// A list a leader has emptied, to take `jobs`' place: no allocation per lead.
    spare: Vec<Job>,
}

impl<R: Runner> Inline<R> {
    pub(crate) fn new(runners: Vec<R>, max_rows: usize) -> Self {
        Self {
            runners: runners.into_iter().map(Mutex::new).collect(),
            pending: Mutex::default(),
            max_rows: max_rows.clamp(1, MAX_ROWS),
            last_collected: AtomicUsize::new(0),
            until_probe: AtomicU64::new(0),
            probe_gap: AtomicU64::new(PROBE_EVERY),
        }
    }

    pub(crate) fn runners(&self) -> &[Mutex<R>] {
        &self.runners
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a request of `rows` rows at once on this thread when it would lead
    /// alone without yielding anyway (`run`): no request pending, none being
    /// collected, the model idle, an inline session free. It then needs no
    /// job and no channel for its outputs (~0.5k instructions of a tiny
    /// model's ~10k of Ferry's own per request, callgrind). Otherwise the
    /// inputs come back, for `run`.
    pub(crate) fn run_alone(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: &[String],
        rows: usize,
        deadline: Option<Instant>,
        stats: &ExecStats,
    ) -> Result<Result<Vec<NamedTensor>, ServeError>, Vec<NamedTensor>> {
        if self.yields() {
            return Err(inputs); // this lead yields: `run` probes
        }
        {
            let p = self.lock();
            if p.led || !p.jobs.is_empty() {
                return Err(inputs);
            }
        }
        let Some(mut runner) = self.runners.iter().find_map(|r| r.try_lock().ok()) else {
            return Err(inputs);
        };
        self.count_down();
        self.last_collected.store(1, Ordering::Relaxed);
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            return Ok(Err(ServeError::DeadlineExceeded("the deadline passed before the model ran".into())));
        }
        let result = runner.run(inputs, outputs);
        stats.record(1, rows, now.elapsed());
        Ok(result)
    }

    /// Runs `job` on this thread, stacked with requests that arrive meanwhile;
    /// when every inline session is busy they go to `batcher` instead. The
    /// job's receiver has its outputs once this returns (or later, from the
    /// leader or the batcher, if another request leads).
    pub(crate) async fn run(&self, job: Job, batcher: &Batcher, stats: &ExecStats) {
        let lead = {
            let mut p = self.lock();
            p.jobs.push(job);
            !std::mem::replace(&mut p.led, true)
        };
        if !lead {
            return;
        }
        let mut leader = Leader { inline: self, batcher, done: false };
        let yields = self.yields();
        if yields {
            tokio::task::yield_now().await;
        } else {
            self.count_down();
        }
        leader.finish(stats, yields);
    }

    /// Whether this lead yields to collect company: the last leader found
    /// some, or it is time to probe.
    fn yields(&self) -> bool {
        self.max_rows > 1
            && (self.last_collected.load(Ordering::Relaxed) > 1 || self.until_probe.load(Ordering::Relaxed) == 0)
    }

    /// One lead without a probe closer to the next.
    fn count_down(&self) {
        let _ = self.until_probe.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The leader's list; `yielded`: whether it waited for company, which
    /// sets when the next probe comes (module docs).
    fn take(&self, yielded: bool) -> Vec<Job> {
        let jobs = {
            let mut p = self.lock();
            p.led = false;
            let spare = std::mem::take(&mut p.spare);
            std::mem::replace(&mut p.jobs, spare)
        };
        let before = self.last_collected.swap(jobs.len(), Ordering::Relaxed);
        if yielded {
            // Company now or just before: the load may be back at any moment.
            let gap = if jobs.len() > 1 || before > 1 {
                PROBE_EVERY
            } else {
                self.probe_gap.load(Ordering::Relaxed).saturating_mul(2).min(PROBE_MOST)
            };
            self.probe_gap.store(gap, Ordering::Relaxed);
            self.until_probe.store(gap, Ordering::Relaxed);
        }
        jobs
    }

    fn give_back(&self, mut jobs: Vec<Job>) {
        jobs.clear();
        let mut p = self.lock();
        if p.spare.capacity() < jobs.capacity() {
            p.spare = jobs;
        }
    }
}

/// The leader's duty to run what it collected, even if its own caller goes away.
struct Leader<'a, R: Runner> {
    inline: &'a Inline<R>,
    batcher: &'a Batcher,
    done: bool,
}

impl<R: Runner> Leader<'_, R> {
    fn finish(&mut self, stats: &ExecStats, yielded: bool) {
        self.done = true;
        let mut jobs = self.inline.take(yielded);
        match self.inline.runners.iter().find_map(|r| r.try_lock().ok()) {
            Some(mut runner) => run_now(&mut *runner, &mut jobs, self.inline.max_rows, stats),
            None => jobs.drain(..).for_each(|j| self.batcher.enqueue(j)),
        }
        self.inline.give_back(jobs);
    }
}

impl<R: Runner> Drop for Leader<'_, R> {
    fn drop(&mut self) {
        // Cancelled while yielding: the others' requests go to the model threads.
        if !self.done {
            self.inline.take(true).into_iter().for_each(|j| self.batcher.enqueue(j));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        sync::Arc,
        task::Poll,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{
        engine::batcher::{BatchPolicy, Outputs},
        error::ServeError,
        tensor::{NamedTensor, TensorData},
    };

    type Calls = Arc<Mutex<Vec<(&'static str, usize)>>>;

    /// Doubles its input and records who ran how many rows.
    struct Doubler {
        who: &'static str,
        calls: Calls,
    }

    impl Runner for Doubler {
        fn run(&mut self, inputs: Vec<NamedTensor>, _: &[String]) -> Result<Vec<NamedTensor>, ServeError> {
            let t = &inputs[0];
            self.calls.lock().unwrap().push((self.who, t.shape[0] as usize));
            let TensorData::F32(v) = &t.data else { unreachable!() };
            let data = TensorData::F32(v.iter().map(|x| x * 2.0).collect());
            Ok(vec![NamedTensor { name: "y".into(), shape: t.shape.clone(), data }])
        }
    }

    struct Setup {
        inline: Arc<Inline<Doubler>>,
        batcher: Arc<Batcher>,
        stats: Arc<ExecStats>,
        calls: Calls,
    }

    fn setup(max_rows: usize) -> Setup {
        let calls = Calls::default();
        let stats = Arc::new(ExecStats::default());
        let policy = BatchPolicy { max_rows, max_delay: Duration::ZERO };
        let worker = Doubler { who: "model thread", calls: Arc::clone(&calls) };
        let batcher = Arc::new(Batcher::start("test", vec![worker], None, policy, Arc::clone(&stats)).unwrap());
        let inline = Arc::new(Inline::new(vec![Doubler { who: "inline", calls: Arc::clone(&calls) }], max_rows));
        Setup { inline, batcher, stats, calls }
    }

    /// One request's input: a row of two `x`.
    fn row(x: f32) -> Vec<NamedTensor> {
        vec![NamedTensor { name: "x".into(), shape: vec![1, 2], data: TensorData::F32(vec![x; 2]) }]
    }

    fn job(x: f32) -> (Job, Outputs) {
        Job::new(row(x), vec![], None)
    }

    async fn value(rx: Outputs) -> TensorData {
        tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap().unwrap().remove(0).data
    }

    #[tokio::test]
    async fn requests_arriving_together_run_as_one_call_on_the_callers_thread() {
        let s = setup(64);
        for (i, out) in together(&s, 5).await.into_iter().enumerate() {
            assert_eq!(out, TensorData::F32(vec![2.0 * i as f32; 2]), "request {i} got another row");
        }
        assert_eq!(*s.calls.lock().unwrap(), vec![("inline", 5)]);
    }

    /// Spawns `n` requests (row values 0..n) together; their outputs in order.
    async fn together(s: &Setup, n: usize) -> Vec<TensorData> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (inline, batcher, stats) = (Arc::clone(&s.inline), Arc::clone(&s.batcher), Arc::clone(&s.stats));
                tokio::spawn(async move {
                    let (j, rx) = job(i as f32);
                    inline.run(j, &batcher, &stats).await;
                    value(rx).await
                })
            })
            .collect();
        let mut outs = Vec::new();
        for t in tasks {
            outs.push(t.await.unwrap());
        }
        outs
    }

    #[tokio::test]
    async fn leaders_wait_for_company_only_while_it_comes() {
        let s = setup(64);
        together(&s, 2).await; // the first lead probes and finds company,
        together(&s, 2).await; // so the next one waits for it too;
        together(&s, 1).await; // a lone request after company still waits once,
        together(&s, 2).await; // then an idle model's leader runs at once.
        let rows: Vec<usize> = s.calls.lock().unwrap().iter().map(|c| c.1).collect();
        assert_eq!(rows, vec![2, 2, 1, 1, 1]);
    }

    #[tokio::test]
    async fn a_lone_request_runs_at_once_and_stacking_off_runs_each_alone() {
        let s = setup(64);
        let started = Instant::now();
        let (j, rx) = job(3.0);
        s.inline.run(j, &s.batcher, &s.stats).await;
        assert_eq!(value(rx).await, TensorData::F32(vec![6.0; 2]));
        assert!(started.elapsed() < Duration::from_secs(1));

        let s = setup(1);
        together(&s, 3).await;
        assert_eq!(*s.calls.lock().unwrap(), vec![("inline", 1); 3]);
    }

    #[tokio::test]
    async fn an_idle_models_lone_request_runs_alone_and_company_turns_it_back() {
        let s = setup(64);
        // The first lead probes for company: that one goes through `run`.
        assert!(s.inline.run_alone(row(1.0), &[], 1, None, &s.stats).is_err());
        together(&s, 1).await;
        let out = s.inline.run_alone(row(3.0), &[], 1, None, &s.stats).expect("runs alone").unwrap();
        assert_eq!(out[0].data, TensorData::F32(vec![6.0; 2]));
        assert_eq!(s.calls.lock().unwrap().last(), Some(&("inline", 1)));
        assert_eq!(s.stats.requests.load(Ordering::Relaxed), 2);

        // A past deadline fails the request without running it.
        let past = Instant::now() - Duration::from_millis(1);
        let late = s.inline.run_alone(row(4.0), &[], 1, Some(past), &s.stats).expect("handled alone");
        assert!(matches!(late, Err(ServeError::DeadlineExceeded(_))), "{late:?}");
        assert_eq!(s.calls.lock().unwrap().len(), 2, "a late request ran");

        // A request waiting for a leader, or busy sessions: back to `run`.
        s.inline.lock().jobs.push(job(5.0).0);
        assert!(s.inline.run_alone(row(5.0), &[], 1, None, &s.stats).is_err());
        s.inline.lock().jobs.clear();
        let busy = s.inline.runners()[0].lock().unwrap();
        assert!(s.inline.run_alone(row(6.0), &[], 1, None, &s.stats).is_err());
        drop(busy);
        // After a lead that found company, leads yield to collect again.
        s.inline.last_collected.store(2, Ordering::Relaxed);
        assert!(s.inline.run_alone(row(7.0), &[], 1, None, &s.stats).is_err());
    }

    /// One lone lead through `run_alone`, as the engine makes it; whether it
    /// was refused there to probe for company (it then runs through `run`).
    async fn probed(s: &Setup) -> bool {
        if s.inline.run_alone(row(1.0), &[], 1, None, &s.stats).is_ok() {
            return false;
        }
        together(s, 1).await;
        true
    }

    /// The leads, out of `n` lone ones, that probed for company.
    async fn probes(s: &Setup, n: usize) -> Vec<usize> {
        let mut at = Vec::new();
        for lead in 0..n {
            if probed(s).await {
                at.push(lead);
            }
        }
        at
    }

    #[tokio::test]
    async fn an_idle_model_probes_ever_less_often_and_company_brings_probes_back() {
        let s = setup(64);
        // Each probe that finds nobody doubles the gap to the next, up to 32 leads.
        let at = probes(&s, 200).await;
        let gaps: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(at[0], 0, "the first lead probes");
        assert_eq!(gaps, [17, 33, 33, 33, 33, 33]);

        // A probe that finds company: the next lead waits for it again, and
        // once it stops coming the probes are eight leads apart at first.
        let mut found = false;
        for _ in 0..PROBE_MOST {
            if probed_with_company(&s).await {
                found = true;
                break;
            }
        }
        assert!(found, "no probe within {PROBE_MOST} leads of two requests found the other");
        let at = probes(&s, 40).await;
        assert_eq!(at, [0, 9, 26], "after company: waits once, probes 8 leads later, then 16");
    }

    /// Two requests at once: whether the lead probed and found the other.
    async fn probed_with_company(s: &Setup) -> bool {
        let before = s.calls.lock().unwrap().len();
        together(s, 2).await;
        s.calls.lock().unwrap()[before..].iter().any(|c| c.1 == 2)
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_others_to_the_model_threads() {
        let s = setup(64);
        let (lead_job, lead_rx) = job(1.0);
        let mut lead = Box::pin(s.inline.run(lead_job, &s.batcher, &s.stats));
        let first = std::future::poll_fn(|cx| Poll::Ready(lead.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the leader runs before others could join");
        let (j, rx) = job(2.0);
        s.inline.run(j, &s.batcher, &s.stats).await;
        // The caller of the leading request goes away while it yields: its
        // receiver first, so the model thread that picks the hand-off up
        // finds it cancelled (in the other order the thread can race the
        // receiver's drop and run it, which failed this test once in CI).
        drop(lead_rx);
        drop(lead);
        assert_eq!(value(rx).await, TensorData::F32(vec![4.0; 2]));
        assert_eq!(*s.calls.lock().unwrap(), vec![("model thread", 1)], "the cancelled request ran");
    }

    #[tokio::test]
    #[allow(clippy::await_holding_lock, reason = "the held lock is the busy session under test")]
    async fn busy_inline_sessions_hand_the_request_to_the_model_threads() {
        let s = setup(64);
        let busy = s.inline.runners()[0].lock().unwrap();
        let (j, rx) = job(5.0);
        s.inline.run(j, &s.batcher, &s.stats).await;
        assert_eq!(value(rx).await, TensorData::F32(vec![10.0; 2]));
        drop(busy);
        assert_eq!(*s.calls.lock().unwrap(), vec![("model thread", 1)]);
    }
}
