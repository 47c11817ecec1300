//! The performance suite: Ferry against the Node.js gateway it replaces and
//! against the in-process ONNX Runtime limit, on the same machine in the same
//! run, as ratios. Every system gets the same rows; the load generator
//! (`ferry-load`, in this process) runs on one thread, like `wrk -t1`.
//!
//!     bench/run.sh [--gateway DIR]          # builds, prepares, runs this
//!     target/release/bench-suite --gateway /tmp/fastify-gateway --duration 5
//!
//! Sections: `inproc` (the ceiling), `headline` (the targets' comparisons,
//! measured in interleaved rounds so that a machine's drift hits both sides
//! alike; medians reported), `wrk` (the REST comparison cross-checked with
//! wrk, each generator's ceiling in the same round, and one core each with
//! taskset), `instructions` (instructions per request in the
//! server process, counted by callgrind: Ferry against do-nothing servers of
//! each protocol and the in-process model call), `throughput` (tiny and medium model,
//! c = 1/16/64/256, batch 1 and 32, REST /predict, gRPC Predict, OIP
//! ModelInfer, Node gateway), `peers` (`mlflow models serve` on the versions
//! Ferry registered, against Ferry's REST), `threads` (ONNX Runtime thread settings, with
//! and without a competing CPU load), `swap` (p99 per second around a hot swap
//! under load), `delivery` (alias moved in MLflow → first answer from the new
//! version, with and without webhooks), `routing` (what a traffic policy
//! costs a request), `many` (200 small and 20 medium models in one process).

mod h2load;
mod instructions;
mod many;
mod peers;
mod routing;
mod wrk;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use ferry_e2e::{
    Inference, Mlflow, MlflowOptions, Proc, bin_dir, free_port, make_mlp, ort_library, promote, register_dir,
    register_file, save_with_external_data, start_inference, start_registry, train_iris, wait_for, wait_serving,
};
use ferry_load::{Report, Scenario, Target};
use ferry_proto::registry::v1::model_registry_client::ModelRegistryClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// A copy of the Node.js Fastify gateway with its node_modules installed (skipped when absent).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Measured seconds per point.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Concurrency levels of the per-point tables (add 256 for the saturation end).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Sections to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "inproc,headline,wrk,h2load,instructions,throughput,peers,threads,swap,delivery,routing,many"
    )]
    sections: Vec<String>,
    /// Interleaved rounds of the headline comparisons (the median is reported).
    /// Three keep the whole suite within 30 minutes on 2 vCPUs; more narrow the spread.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per point within a headline round.
    #[arg(long, default_value_t = 3.0)]
    round_duration: f64,
    /// Copies of the tiny model served by one process in the `many` section.
    #[arg(long, default_value_t = 200)]
    many_small: usize,
    /// Copies of the medium model served by one process in the `many` section.
    #[arg(long, default_value_t = 20)]
    many_medium: usize,
    /// Where the markdown results go (also printed).
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
    /// Keep the suite's working files (logs, callgrind counts for
    /// `callgrind_annotate`) in this folder instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// One model of the suite.
struct Model {
    name: &'static str,
    file: PathBuf,
    /// What is registered in MLflow: `file`, or a folder with the model as
    /// `mlflow.onnx.log_model` saves it by default (weights as external data).
    registered: PathBuf,
    width: usize,
    /// The float output the gateway and REST /predict return.
    output: &'static str,
}

/// Registers a model's file, or its folder (`Model::registered`), under `name`.
async fn register(client: &mut ModelRegistryClient<Channel>, name: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        register_dir(client, name, path).await?;
    } else {
        register_file(client, name, path).await?;
    }
    Ok(())
}

/// Puts process (or thread) `id` on `cores` (taskset's list syntax): every
/// thread of it with `all`.
fn affinity(id: &str, cores: &str, all: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("taskset");
    if all {
        cmd.arg("-a");
    }
    let o = cmd.args(["-p", "-c", cores, id]).output().context("running taskset")?;
    if !o.status.success() {
        bail!("taskset -p -c {cores} {id}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// A do-nothing floor (`ferry-load --serve-floor KIND`: `http`, `axum` or
/// `grpc`), run under `wrapper` (`valgrind …`, `taskset …`, or nothing), and
/// its URL: a process of its own on Ferry's heap, as the servers it stands
/// beside are, not threads of this process beside the generator.
async fn floor_server(suite: &Suite, kind: &str, wrapper: &[String]) -> anyhow::Result<(Proc, String)> {
    let exe = bin_dir().join("ferry-load");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["--serve-floor", kind]);
    let proc = Proc::spawn(&format!("floor-{kind}"), &mut cmd, &suite.dir)?;
    let addr = wait_for("the floor's address", Duration::from_secs(60), || {
        let own = proc.own_log();
        async move { Ok(own.lines().find(|l| l.starts_with("127.0.0.1:")).map(|a| format!("http://{a}"))) }
    })
    .await?;
    Ok((proc, addr))
}

/// Runs one load scenario on its own thread and single-threaded runtime.
fn load(s: Scenario) -> anyhow::Result<Report> {
    load_on(s, None)
}

/// [`load`], its thread on `core` when given.
fn load_on(s: Scenario, core: Option<usize>) -> anyhow::Result<Report> {
    std::thread::spawn(move || {
        if let Some(core) = core {
            // "PID/task/TID": this thread alone, not the whole process.
            let me = std::fs::read_link("/proc/thread-self")?;
            let tid = me.file_name().context("no thread id")?.to_string_lossy().into_owned();
            affinity(&tid, &core.to_string(), false)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(ferry_load::run(&s))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
}

struct Suite {
    args: Args,
    md: String,
    /// When each section started, for the run's time table.
    sections: Vec<(&'static str, Instant)>,
    dir: PathBuf,
    ort: PathBuf,
}

impl Suite {
    fn scenario(&self, target: Target, url: &str, m: &Model, batch: usize, c: usize) -> Scenario {
        Scenario {
            target,
            url: url.to_owned(),
            model: m.name.to_owned(),
            input: "input".into(),
            width: m.width,
            batch,
            concurrency: c,
            duration: Duration::from_secs_f64(self.args.duration),
            warmup: Duration::from_secs(1),
            rate: None,
            connections: c.div_ceil(16).clamp(1, 4),
            model_file: Some(m.file.clone()),
            ort_library: Some(self.ort.clone()),
            intra_threads: 1,
            small_tensors: false,
            outputs: Vec::new(),
            server_pid: None,
        }
    }

    fn started(&mut self, section: &'static str) {
        self.sections.push((section, Instant::now()));
    }

    /// How long each section took: `bench/run.sh` is meant to finish within 30 minutes.
    fn timings(&mut self) {
        let ends: Vec<Instant> = self.sections.iter().skip(1).map(|s| s.1).chain([Instant::now()]).collect();
        let took: Vec<String> = self
            .sections
            .iter()
            .zip(ends)
            .map(|((name, start), end)| format!("{name} {:.0} s", (end - *start).as_secs_f64()))
            .collect();
        self.line(&format!("\nSections' times: {}.", took.join(", ")));
    }

    /// Notes that a section did not run, and why.
    fn skipped(&mut self, section: &str, why: &str) {
        self.line("");
        self.line(&format!("({section} section skipped: {why})"));
    }

    /// Writes one request body per model into the run's folder (`{stem}-{model}.{ext}`).
    fn bodies(
        &self,
        models: &[&Model],
        stem: &str,
        ext: &str,
        body: impl Fn(&Model) -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<PathBuf>> {
        models
            .iter()
            .map(|m| {
                let path = self.dir.join(format!("{stem}-{}.{ext}", m.name));
                std::fs::write(&path, body(m)?)?;
                Ok(path)
            })
            .collect()
    }

    fn line(&mut self, s: &str) {
        println!("{s}");
        self.md.push_str(s);
        self.md.push('\n');
    }

    fn table(&mut self, title: &str, head: &str) {
        self.line("");
        self.line(&format!("### {title}"));
        self.line("");
        self.line(head);
        let cols = head.matches('|').count() - 1;
        self.line(&format!("|{}", "---|".repeat(cols)));
    }

    /// Starts a gateway process for one model, on a fresh port, run by `wrapper` (e.g. `taskset -c 1`).
    fn gateway(&self, m: &Model, intra: Option<usize>, wrapper: &[&str]) -> anyhow::Result<Option<(Proc, String)>> {
        let Some(dir) = &self.args.gateway else { return Ok(None) };
        let port = free_port();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("node");
                c
            }
            None => Command::new("node"),
        };
        cmd.arg(dir.join("server.js"))
            .env("MODEL_PATH", &m.file)
            .env("PORT", port.to_string())
            .env("OUTPUT_NAME", m.output)
            .current_dir(dir);
        if let Some(t) = intra {
            cmd.env("ORT_INTRA_THREADS", t.to_string());
        }
        let mut proc = Proc::spawn(&format!("gateway-{}", m.name), &mut cmd, &self.dir)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_http_ok("the gateway", &format!("{url}/health"), &mut proc, Duration::from_secs(10))?;
        Ok(Some((proc, url)))
    }
}

/// Waits until `url` answers with a 2xx, failing at once if `proc` exits.
fn wait_http_ok(what: &str, url: &str, proc: &mut Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while proc.is_running() && Instant::now() < deadline {
        if Command::new("curl").args(["-sf", "-o", "/dev/null", url]).stdout(Stdio::null()).status()?.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not start:\n{}", proc.log_tail())
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1e3)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}×", a / b) } else { "–".into() }
}

/// A process that keeps one core busy, for runs under contention.
fn burner() -> anyhow::Result<std::process::Child> {
    Ok(Command::new("sh").args(["-c", "while :; do :; done"]).stdin(Stdio::null()).spawn()?)
}

// Multi-threaded so that the harness's own gRPC client keeps answering (h2
// PINGs, GOAWAY) while the main task blocks on a load run or a process exit.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let d = match &args.keep {
        Some(k) => {
            std::fs::create_dir_all(k)?;
            std::path::absolute(k)?
        }
        None => tmp.path().to_owned(),
    };
    let mut suite = Suite { ort: ort_library()?, dir: d.clone(), md: String::new(), args, sections: Vec::new() };
    let want = |s: &str| suite.args.sections.iter().any(|x| x == s);
    let routing = want("routing");
    let many_section = want("many");
    let wrk_section = want("wrk");
    let h2load_section = want("h2load");
    let (inproc, headline, counted, throughput, peers, threads, swap, delivery) = (
        want("inproc"),
        want("headline"),
        want("instructions"),
        want("throughput"),
        want("peers"),
        want("threads"),
        want("swap"),
        want("delivery"),
    );

    let tiny = Model {
        name: "iris",
        file: d.join("tiny.onnx"),
        registered: d.join("tiny.onnx"),
        width: 4,
        output: "probabilities",
    };
    let medium = Model {
        name: "mlp",
        file: d.join("medium.onnx"),
        registered: d.join("medium-mlflow"),
        width: 512,
        output: "output",
    };
    train_iris(&tiny.file, 1.0)?;
    make_mlp(&medium.file, 7)?;
    save_with_external_data(&medium.file, &medium.registered)?;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load1 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    suite.line(&format!(
        "Run {} on {cpus} CPUs (load average at start: {}), {} s per point after 1 s warm-up; load generator: ferry-load, one thread.",
        std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
        load1.split_whitespace().next().unwrap_or("?"),
        suite.args.duration
    ));

    // The ceiling: the model in a loop, no network.
    let mut best_inproc: BTreeMap<&str, f64> = BTreeMap::new();
    // The medium model's best in-process setting: (rows/s, batch, sessions, intra-op threads).
    let mut best_medium = (0.0, 128, 2, 1);
    if inproc {
        suite.started("inproc");
        suite.table(
            "In-process ONNX Runtime (the ceiling: no network, no server)",
            "| model | batch | threads × intra-op | infer/s | p50 ms | p99 ms |",
        );
        for m in [&tiny, &medium] {
            let batches: &[usize] = if m.width == 4 { &[1, 32] } else { &[1, 32, 64, 128] };
            for &b in batches {
                for (c, intra) in [(1, 1), (1, 0), (2, 1)] {
                    let mut s = suite.scenario(Target::InProcess, "", m, b, c);
                    s.intra_threads = intra;
                    let r = load(s)?;
                    let e = best_inproc.entry(m.name).or_default();
                    *e = e.max(r.inferences_per_s);
                    if m.width != 4 && r.inferences_per_s > best_medium.0 {
                        best_medium = (r.inferences_per_s, b, c, intra);
                    }
                    let intra_s = if intra == 0 { "default".to_owned() } else { intra.to_string() };
                    suite.line(&format!(
                        "| {} | {b} | {c} × {intra_s} | {:.0} | {} | {} |",
                        m.name,
                        r.inferences_per_s,
                        ms(r.p50_us),
                        ms(r.p99_us)
                    ));
                }
            }
        }
    }

    let mlflow = Mlflow::start(&d).await?;
    let mut registry = start_registry(&d, &mlflow.url, &[]).await?;
    for m in [&tiny, &medium] {
        register(&mut registry.client, m.name, &m.registered).await?;
        promote(&mut registry.client, m.name, "1").await?;
    }
    let start_ferry = |extra: Vec<(&'static str, String)>| {
        let (d, mlflow, reg) = (d.clone(), mlflow.url.clone(), registry.url.clone());
        async move {
            // The service default, as users run it.
            let mut env: Vec<(&str, String)> = vec![("FERRY_LOG", "info".to_owned())];
            env.extend(extra);
            let inf = start_inference(&d, &mlflow, Some(&reg), "iris:Production,mlp:Production", &env).await?;
            wait_serving(&inf.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(60)).await?;
            wait_serving(&inf.client, "mlp", "1", &[0.1; 512], Duration::from_secs(60)).await?;
            Ok::<Inference, anyhow::Error>(inf)
        }
    };

    if headline {
        suite.started("headline");
        let mut inf = start_ferry(vec![]).await?;
        let gw = suite.gateway(&tiny, None, &[])?;
        let gw_medium = suite.gateway(&medium, None, &[])?;
        // The one-caller points run with every server on core 1 and the
        // caller on core 0: where the kernel wakes a lone request's server
        // otherwise decides its latency (on this 2-vCPU VM an answer on the
        // caller's core came ~50 µs sooner, and whether it did moved from
        // round to round: axum doing nothing 6 or 53–63 µs ahead of Ferry).
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let pin = cores >= 2;
        let on_core_1: Vec<String> = if pin { ["taskset", "-c", "1"].map(str::to_owned).to_vec() } else { Vec::new() };
        let (_http, floor) = floor_server(&suite, "http", &on_core_1).await?;
        let (_grpc, grpc_floor) = floor_server(&suite, "grpc", &on_core_1).await?;
        let (_axum, axum_floor) = floor_server(&suite, "axum", &on_core_1).await?;
        let ferry_pid = inf.proc.pid().to_string();
        let (_, best_b, best_c, best_intra) = best_medium;
        let rounds = suite.args.rounds.max(1);
        let mut rows: Vec<(&str, &str, Vec<f64>)> = vec![
            ("tiny, REST /predict c=64: Ferry ÷ gateway req/s", "≥ 4", Vec::new()),
            ("tiny, REST /predict c=64: Ferry ÷ gateway p99", "≤ 0.5", Vec::new()),
            ("medium, REST /predict c=64: Ferry ÷ gateway req/s", "≥ 3", Vec::new()),
            (
                "medium, batch-32 OIP ModelInfer c=64: Ferry ÷ in-process best rows/s (measured just before and after)",
                "≥ 0.95",
                Vec::new(),
            ),
            ("tiny c=1 p50: gRPC Predict − in-process, µs", "≤ 50", Vec::new()),
            ("tiny c=1 p50: OIP ModelInfer − in-process, µs", "≤ 50", Vec::new()),
            ("tiny c=1 p50: REST /predict − in-process, µs", "", Vec::new()),
            ("c=1 p50: tonic answering Predict, doing nothing − in-process, µs", "", Vec::new()),
            ("c=1 p50 of the loopback floor (a do-nothing HTTP/1.1 server), µs", "", Vec::new()),
            ("tiny c=1 p50: gRPC Predict − tonic doing nothing, µs", "≤ 20", Vec::new()),
            ("tiny c=1 p50: REST /predict − axum doing nothing, µs", "≤ 20", Vec::new()),
        ];
        let short = |mut s: Scenario, pid: Option<u32>| {
            s.duration = Duration::from_secs_f64(suite.args.round_duration);
            s.server_pid = pid;
            s
        };
        for _ in 0..rounds {
            let ferry = load(short(suite.scenario(Target::Rest, &inf.http, &tiny, 1, 64), None))?;
            if let Some((_, url)) = &gw {
                let g = load(short(suite.scenario(Target::Rest, url, &tiny, 1, 64), None))?;
                rows[0].2.push(ferry.rps / g.rps);
                rows[1].2.push(ferry.p99_us / g.p99_us);
            }
            // (Medium at c=1 is the wrk section's, with both generators.)
            if let Some((_, url)) = &gw_medium {
                let f = load(short(suite.scenario(Target::Rest, &inf.http, &medium, 1, 64), None))?;
                let g = load(short(suite.scenario(Target::Rest, url, &medium, 1, 64), None))?;
                rows[2].2.push(f.rps / g.rps);
            }
            // The ceiling moves by more than the gap over a minute here: measured
            // on both sides of Ferry's point, their mean is what Ferry is held to.
            let ceiling = || {
                let mut s = short(suite.scenario(Target::InProcess, "", &medium, best_b, best_c), None);
                s.intra_threads = best_intra;
                load(s).map(|r| r.inferences_per_s)
            };
            let before = ceiling()?;
            let batched = load(short(suite.scenario(Target::Oip, &inf.grpc, &medium, 32, 64), None))?;
            let after = ceiling()?;
            rows[3].2.push(batched.inferences_per_s / ((before + after) / 2.0));
            let caller = pin.then_some(0);
            let mut s = short(suite.scenario(Target::InProcess, "", &tiny, 1, 1), None);
            s.intra_threads = 1;
            let alone = load_on(s, caller)?.p50_us;
            let c1 = |target, url: &str| {
                load_on(short(suite.scenario(target, url, &tiny, 1, 1), None), caller).map(|r| r.p50_us)
            };
            if pin {
                affinity(&ferry_pid, "1", true)?;
            }
            let (grpc, oip, rest) =
                (c1(Target::Grpc, &inf.grpc)?, c1(Target::Oip, &inf.grpc)?, c1(Target::Rest, &inf.http)?);
            if pin {
                affinity(&ferry_pid, &format!("0-{}", cores - 1), true)?;
            }
            let (grpc_floor, http_floor, axum_floor) =
                (c1(Target::Grpc, &grpc_floor)?, c1(Target::Rest, &floor)?, c1(Target::Rest, &axum_floor)?);
            for (i, v) in [
                grpc - alone,
                oip - alone,
                rest - alone,
                grpc_floor - alone,
                http_floor,
                grpc - grpc_floor,
                rest - axum_floor,
            ]
            .into_iter()
            .enumerate()
            {
                rows[4 + i].2.push(v);
            }
        }
        let in_process = if best_intra == 0 { "default".to_owned() } else { best_intra.to_string() };
        suite.table(
            &format!(
                "Headline: {rounds} interleaved rounds of {} s per point (in-process best for the medium model: batch {best_b}, {best_c} × {in_process} threads)",
                suite.args.round_duration
            ),
            &format!(
                "| measure | target | {} | median |",
                (1..=rounds).map(|r| format!("round {r}")).collect::<Vec<_>>().join(" | ")
            ),
        );
        for (what, target, mut v) in rows {
            if v.is_empty() {
                continue;
            }
            let cells: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            v.sort_by(f64::total_cmp);
            let median = v[v.len() / 2];
            suite.line(&format!("| {what} | {target} | {} | **{median:.2}** |", cells.join(" | ")));
        }
        if pin {
            suite.line("- c=1 rows: every server (Ferry, the floors) pinned to core 1 and the caller to core 0 for them (taskset).");
        }
        for (mut p, _) in gw.into_iter().chain(gw_medium) {
            p.terminate(Duration::from_secs(5))?;
        }
        inf.proc.terminate(Duration::from_secs(30))?;
    }

    if wrk_section {
        suite.started("wrk");
        wrk::section(&mut suite, [&tiny, &medium], &mlflow.url, &registry.url).await?;
    }

    if h2load_section {
        suite.started("h2load");
        h2load::section(&mut suite, [&tiny, &medium], best_medium.1, &mlflow.url, &registry.url).await?;
    }

    if counted {
        suite.started("instructions");
        instructions::section(&mut suite, &tiny, &mlflow.url, &registry.url).await?;
    }

    if routing {
        suite.started("routing");
        routing::section(&mut suite, &tiny, &mlflow.url, &registry.url, registry.client.clone()).await?;
    }

    if many_section {
        suite.started("many");
        many::section(&mut suite, [&tiny, &medium], &mlflow.url, &registry.url, registry.client.clone()).await?;
    }

    if throughput {
        suite.started("throughput");
        let mut inf = start_ferry(vec![]).await?;
        let pid = Some(inf.proc.pid());
        for m in [&tiny, &medium] {
            let gw = suite.gateway(m, None, &[])?;
            suite.table(
                &format!("{} model, batch 1: Ferry vs the Node gateway", if m.width == 4 { "Tiny" } else { "Medium" }),
                "| c | Ferry REST /predict req/s | p50 / p99 ms | gateway req/s | p50 / p99 ms | REST ratio | p99 ratio | Ferry gRPC Predict req/s | p50 / p99 ms | Ferry OIP ModelInfer req/s | p50 / p99 ms | CPU ms / 1k req (Ferry REST / gateway) |",
            );
            let concs = suite.args.concurrency.clone();
            for &c in &concs {
                let mut s = suite.scenario(Target::Rest, &inf.http, m, 1, c);
                s.server_pid = pid;
                let rest = load(s)?;
                let gwr = match &gw {
                    Some((p, url)) => {
                        let mut s = suite.scenario(Target::Rest, url, m, 1, c);
                        s.server_pid = Some(p.pid());
                        Some(load(s)?)
                    }
                    None => None,
                };
                let grpc = load(suite.scenario(Target::Grpc, &inf.grpc, m, 1, c))?;
                let oip = load(suite.scenario(Target::Oip, &inf.grpc, m, 1, c))?;
                let (g_rps, g_lat, g_cpu) = gwr.as_ref().map_or((0.0, "–".to_owned(), None), |g| {
                    (g.rps, format!("{} / {}", ms(g.p50_us), ms(g.p99_us)), g.cpu_ms_per_1k)
                });
                let cpu = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"));
                let errors = rest.errors + grpc.errors + oip.errors + gwr.as_ref().map_or(0, |g| g.errors);
                suite.line(&format!(
                    "| {c} | {:.0} | {} / {} | {g_rps:.0} | {g_lat} | {} | {} | {:.0} | {} / {} | {:.0} | {} / {} | {} / {} |{}",
                    rest.rps,
                    ms(rest.p50_us),
                    ms(rest.p99_us),
                    ratio(rest.rps, g_rps),
                    gwr.as_ref().map_or_else(|| "–".to_owned(), |g| ratio(rest.p99_us, g.p99_us)),
                    grpc.rps,
                    ms(grpc.p50_us),
                    ms(grpc.p99_us),
                    oip.rps,
                    ms(oip.p50_us),
                    ms(oip.p99_us),
                    cpu(rest.cpu_ms_per_1k),
                    cpu(g_cpu),
                    if errors > 0 { format!(" {errors} errors") } else { String::new() }
                ));
            }
            if let Some((mut p, _)) = gw {
                let rss = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap_or_default();
                let rss = rss.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("").to_owned();
                p.terminate(Duration::from_secs(5))?;
                suite.line(&format!("\nGateway RSS after the runs: {}", rss.trim_start_matches("VmRSS:").trim()));
            }

            suite.table(
                &format!(
                    "{} model, client batches of 32 rows (infer/s = rows per second)",
                    if m.width == 4 { "Tiny" } else { "Medium" }
                ),
                "| c | Ferry OIP ModelInfer infer/s | p50 / p99 ms | Ferry gRPC Predict infer/s | p50 / p99 ms | Ferry REST /v2 infer/s | p50 / p99 ms | OIP ÷ the `inproc` section's best, minutes earlier (`headline` brackets it) |",
            );
            for &c in &concs {
                let oip = load(suite.scenario(Target::Oip, &inf.grpc, m, 32, c))?;
                let grpc = load(suite.scenario(Target::Grpc, &inf.grpc, m, 32, c))?;
                let v2 = load(suite.scenario(Target::RestV2, &inf.http, m, 32, c))?;
                let best = best_inproc.get(m.name).copied().unwrap_or(0.0);
                suite.line(&format!(
                    "| {c} | {:.0} | {} / {} | {:.0} | {} / {} | {:.0} | {} / {} | {} |",
                    oip.inferences_per_s,
                    ms(oip.p50_us),
                    ms(oip.p99_us),
                    grpc.inferences_per_s,
                    ms(grpc.p50_us),
                    ms(grpc.p99_us),
                    v2.inferences_per_s,
                    ms(v2.p50_us),
                    ms(v2.p99_us),
                    if best > 0.0 { format!("{:.0}%", 100.0 * oip.inferences_per_s / best) } else { "–".into() }
                ));
            }
        }
        let rss = std::fs::read_to_string(format!("/proc/{}/status", inf.proc.pid())).unwrap_or_default();
        let rss = rss.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("").to_owned();
        suite.line(&format!(
            "\nFerry inference RSS after the runs (both models loaded): {}",
            rss.trim_start_matches("VmRSS:").trim()
        ));
        inf.proc.terminate(Duration::from_secs(30))?;
    }

    if peers {
        suite.started("peers");
        let mut inf = start_ferry(vec![]).await?;
        peers::section(&mut suite, [&tiny, &medium], &inf, &mlflow.url).await?;
        inf.proc.terminate(Duration::from_secs(30))?;
    }

    if threads {
        suite.started("threads");
        suite.table(
            "ONNX Runtime thread settings, medium model, REST /predict batch 1: idle machine, then one core kept busy by another process; last column: client batches of 32 rows (OIP gRPC ModelInfer), idle",
            "| system and setting | c=1 req/s | c=1 p99 ms | c=64 req/s | c=64 p99 ms | busy c=1 req/s | busy c=1 p99 ms | busy c=64 req/s | busy c=64 p99 ms | batch-32 c=64 rows/s |",
        );
        let one = |v: &str| v.to_owned();
        let no_throughput = ("FERRY_THROUGHPUT_SESSIONS", one("0"));
        let settings: Vec<(&str, Vec<(&'static str, String)>)> = vec![
            (
                "Ferry default: 1 session × 1 thread per core (spinning), + 1 single-threaded throughput session per core",
                vec![],
            ),
            ("Ferry: 1 session × 1 thread per core, no throughput sessions", vec![no_throughput.clone()]),
            ("Ferry: 2 sessions × 1 thread", vec![("FERRY_SESSIONS", one("2")), ("FERRY_INTRA_THREADS", one("1"))]),
            (
                "Ferry: 2 sessions × 2 threads",
                vec![("FERRY_SESSIONS", one("2")), ("FERRY_INTRA_THREADS", one("2")), no_throughput],
            ),
            ("Ferry: default, ONNX Runtime threads not spinning", vec![("FERRY_ORT_SPINNING", one("false"))]),
            ("Ferry: default, batching off", vec![("FERRY_MAX_BATCH_ROWS", one("1"))]),
        ];
        let measure = |suite: &Suite, url: &str, grpc: Option<&str>| -> anyhow::Result<String> {
            let mut cells = Vec::new();
            for busy in [false, true] {
                let mut b = if busy { Some(burner()?) } else { None };
                for c in [1, 64] {
                    let r = load(suite.scenario(Target::Rest, url, &medium, 1, c));
                    if let (Err(_), Some(b)) = (&r, b.as_mut()) {
                        let _ = b.kill();
                    }
                    let r = r?;
                    cells.push(format!("{:.0} | {}", r.rps, ms(r.p99_us)));
                }
                if let Some(mut b) = b {
                    let _ = b.kill();
                    let _ = b.wait();
                }
            }
            cells.push(match grpc {
                Some(g) => format!("{:.0}", load(suite.scenario(Target::Oip, g, &medium, 32, 64))?.inferences_per_s),
                None => "–".to_owned(),
            });
            Ok(cells.join(" | "))
        };
        for (label, env) in settings {
            let mut inf = start_ferry(env).await?;
            let cells = measure(&suite, &inf.http, Some(&inf.grpc))?;
            suite.line(&format!("| {label} | {cells} |"));
            inf.proc.terminate(Duration::from_secs(30))?;
        }
        for (label, intra) in
            [("Node gateway, ONNX Runtime default threads", None), ("Node gateway, 1 intra-op thread", Some(1))]
        {
            let Some((mut p, url)) = suite.gateway(&medium, intra, &[])? else { break };
            let cells = measure(&suite, &url, None)?;
            suite.line(&format!("| {label} | {cells} |"));
            p.terminate(Duration::from_secs(5))?;
        }
    }

    if swap {
        suite.started("swap");
        // Two versions of the tiny model; REST c=16 for 8 s with a promotion at 3 s.
        let v2 = d.join("tiny-2.onnx");
        train_iris(&v2, 0.05)?;
        register_file(&mut registry.client, "iris", &v2).await?;
        let mut inf = start_ferry(vec![]).await?;
        let mut s = suite.scenario(Target::Rest, &inf.http, &tiny, 1, 16);
        s.duration = Duration::from_secs(8);
        let handle = std::thread::spawn(move || load(s));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let t = Instant::now();
        promote(&mut registry.client, "iris", "2").await?;
        wait_serving(&inf.client, "iris", "2", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(30)).await?;
        let swapped = t.elapsed();
        let r = handle.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        suite.table(
            "Hot swap under load: tiny model, REST c=16, promotion at second 3 of the measured window",
            "| second | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 |",
        );
        let cells: Vec<String> = r.p99_by_second_us.iter().map(|&v| ms(v)).collect();
        suite.line(&format!("| p99 ms | {} |", cells.join(" | ")));
        suite.line(&format!(
            "\n{} requests, {} errors; promotion → v2 answering took {:.0} ms.",
            r.requests,
            r.errors,
            swapped.as_secs_f64() * 1e3
        ));
        inf.proc.terminate(Duration::from_secs(30))?;
    }
    drop(registry);

    if delivery {
        suite.started("delivery");
        delivery_latency(&mut suite, &tiny).await?;
    }

    if let Some(parent) = suite.args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    suite.timings();
    std::fs::write(&suite.args.out, &suite.md).with_context(|| format!("writing {}", suite.args.out.display()))?;
    eprintln!("results written to {}", suite.args.out.display());
    drop(mlflow);
    Ok(())
}

/// The registry's reconcile interval in the delivery runs (its default).
const POLL_MS: u64 = 2000;

/// Alias moved in MLflow (by its REST API, as the Python client does) → first
/// answer from the new version, 20 times, with MLflow webhooks and without.
async fn delivery_latency(suite: &mut Suite, tiny: &Model) -> anyhow::Result<()> {
    suite.table(
        "Model delivery: alias moved in MLflow → first answer from the new version (20 moves)",
        "| path | p50 ms | p99 ms | max ms |",
    );
    for webhooks in [true, false] {
        let dir = suite.dir.join(if webhooks { "delivery-webhooks" } else { "delivery-poll" });
        std::fs::create_dir_all(&dir)?;
        let opts = if webhooks { MlflowOptions::default().with_webhooks()? } else { MlflowOptions::default() };
        let mlflow = Mlflow::start_with(&dir, opts).await?;
        let http_port = free_port();
        let mut env: Vec<(&str, String)> = vec![
            ("FERRY_LOG", "warn".into()),
            ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("FERRY_POLL_INTERVAL_MS", POLL_MS.to_string()),
        ];
        if webhooks {
            env.push(("FERRY_WEBHOOK_SECRET", "bench-secret".into()));
            env.push(("FERRY_PUBLIC_URL", format!("http://127.0.0.1:{http_port}")));
        }
        let mut registry = start_registry(&dir, &mlflow.url, &env).await?;
        let v2 = dir.join("tiny-2.onnx");
        train_iris(&v2, 0.05)?;
        register_file(&mut registry.client, "iris", &tiny.file).await?;
        register_file(&mut registry.client, "iris", &v2).await?;
        let http = reqwest::Client::new();
        let set_alias = |version: &'static str| {
            let (http, url) = (http.clone(), format!("{}/api/2.0/mlflow/registered-models/alias", mlflow.url));
            async move {
                let r = http
                    .post(url)
                    .json(&serde_json::json!({"name": "iris", "alias": "champion", "version": version}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("setting the alias: HTTP {}", r.status());
                }
                Ok(())
            }
        };
        set_alias("1").await?;
        let inf = start_inference(&dir, &mlflow.url, Some(&registry.url), "iris@champion", &env[..1]).await?;
        wait_serving(&inf.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(60)).await?;
        let mut took = Vec::new();
        for i in 0..20 {
            let version = if i % 2 == 0 { "2" } else { "1" };
            let t = Instant::now();
            set_alias(version).await?;
            wait_for("the new version to answer", Duration::from_secs(30), || {
                let mut c = inf.client.clone();
                async move {
                    let r = c.predict(ferry_e2e::predict_row("iris", &[5.1, 3.5, 1.4, 0.2])).await;
                    Ok(r.ok().filter(|r| r.get_ref().model_version == version).map(|_| ()))
                }
            })
            .await?;
            took.push(t.elapsed().as_secs_f64() * 1e3);
        }
        took.sort_by(f64::total_cmp);
        let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        let path = if webhooks {
            "MLflow webhook → registry → WatchModels → inference".to_owned()
        } else {
            format!("no webhooks: registry polls MLflow every {POLL_MS} ms → WatchModels → inference")
        };
        suite.line(&format!("| {path} | {:.0} | {:.0} | {:.0} |", pct(0.5), pct(0.99), took[took.len() - 1]));
        drop(inf);
        drop(registry);
        drop(mlflow);
    }
    Ok(())
}
