//! Work per request, counted rather than timed: the instructions a server
//! process executes for each request, from valgrind's callgrind. The count is
//! the same on a quiet machine and a busy one, so it shows what Ferry itself
//! adds to a request, apart from the transport it rides on (a do-nothing
//! server of the same protocol) and the model call (the in-process loop),
//! where timings on a shared 2-core machine move by more than that.
//!
//! Only user-space instructions are counted: the kernel's share (TCP, waking
//! threads) is the same for every server here, and callgrind cannot see it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use ferry_e2e::{Proc, bin_dir, start_inference_under, wait_serving};
use ferry_load::{Scenario, Target};

use crate::{Model, Suite, load};

/// Measured seconds per count; callgrind runs programs ~50× slower.
const MEASURE: Duration = Duration::from_secs(5);

/// The tiny model's output `/predict` returns (its first float output).
const REST_OUTPUT: &str = "probabilities";

/// A server process under callgrind, whose counters can be reset and read.
struct Counted {
    proc: Proc,
    out: PathBuf,
    dumps: usize,
}

impl Counted {
    /// Instructions per request of `scenario` (after one unmeasured second).
    fn per_request(&mut self, mut scenario: Scenario) -> anyhow::Result<f64> {
        scenario.warmup = Duration::from_secs(1);
        scenario.duration = Duration::from_secs(1);
        load(scenario.clone())?;
        control(self.proc.pid(), "-z")?;
        scenario.warmup = Duration::ZERO;
        scenario.duration = MEASURE;
        let r = load(scenario)?;
        control(self.proc.pid(), "-d")?;
        self.dumps += 1;
        if r.requests == 0 || r.errors > 0 {
            bail!("{} requests, {} errors: {:?}", r.requests, r.errors, r.first_error);
        }
        let dump = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        Ok(summary(&dump)? as f64 / r.requests as f64)
    }
}

/// valgrind's command line for counting into `out`.
fn callgrind(out: &Path) -> Vec<String> {
    ["valgrind", "--tool=callgrind", &format!("--callgrind-out-file={}", out.display())].map(str::to_owned).to_vec()
}

/// `ferry-load` under callgrind (with more of its options), counting into `out`.
fn ferry_load_counted(out: &Path, options: &[&str]) -> Command {
    let wrapper = callgrind(out);
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..]).args(options).arg(bin_dir().join("ferry-load"));
    cmd
}

fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    let o = Command::new("callgrind_control").args([what, &pid.to_string()]).output()?;
    if !o.status.success() {
        bail!("callgrind_control {what}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// The instructions a callgrind output file counts.
fn summary(file: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no summary line in {}", file.display()))
}

/// A floor server (`ferry-load --serve-floor`) under callgrind, and its address.
async fn floor(suite: &Suite, kind: &str) -> anyhow::Result<(Counted, String)> {
    let out = suite.dir.join(format!("callgrind-floor-{kind}.out"));
    let (proc, addr) = crate::floor_server(suite, kind, &callgrind(&out)).await?;
    Ok((Counted { proc, out, dumps: 0 }, addr))
}

/// Instructions per in-process call: two runs of different lengths, so that
/// the one-time cost of the first call cancels out. `options`: more of
/// ferry-load's (`--small-tensors`: the sessions as Ferry builds them for a
/// model it runs inline).
fn in_process(suite: &Suite, m: &Model, options: &[&str]) -> anyhow::Result<f64> {
    let mut points = Vec::new();
    for secs in [4, 8] {
        let out = suite.dir.join(format!("callgrind-inproc{}-{secs}.out", options.concat()));
        // Only the call itself: the loop, the clock and the tally are not the model's.
        let o = ferry_load_counted(&out, &["--toggle-collect=ferry_load::in_process_call"])
            .args(["--target", "in-process", "-c", "1", "--warmup", "0", "--duration", &secs.to_string()])
            .arg("--model-file")
            .arg(&m.file)
            .arg("--ort-library")
            .arg(&suite.ort)
            .args(options)
            .output()?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let rps: f64 = stdout
            .lines()
            .last()
            .and_then(|l| l.split('\t').nth(5))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("ferry-load printed no rate:\n{stdout}"))?;
        points.push((rps * f64::from(secs), summary(&out)? as f64));
    }
    let ((n1, i1), (n2, i2)) = (points[0], points[1]);
    Ok((i2 - i1) / (n2 - n1))
}

/// The `instructions` section: Ferry, the floors and the model call, counted.
pub(crate) async fn section(suite: &mut Suite, tiny: &Model, mlflow: &str, registry: &str) -> anyhow::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        suite.skipped("instructions", "valgrind is not installed");
        return Ok(());
    }
    // The tiny model runs inline, in sessions built for small tensors: Ferry's
    // own share is counted over that call; ONNX Runtime's defaults, which the
    // gateway's sessions keep, are shown beside it.
    let default_call = in_process(suite, tiny, &[])?;
    let call = in_process(suite, tiny, &["--small-tensors"])?;
    // `/predict` answers with one output (the model's first float one, the
    // tiny model's `probabilities`) and asks ONNX Runtime for that alone;
    // its row is counted over the same call.
    let one_output_call = in_process(suite, tiny, &["--small-tensors", "--output", REST_OUTPUT])?;
    let (mut grpc_floor, grpc_floor_url) = floor(suite, "grpc").await?;
    let grpc_floor_n = grpc_floor.per_request(suite.scenario(Target::Grpc, &grpc_floor_url, tiny, 1, 1))?;
    grpc_floor.proc.terminate(Duration::from_secs(10))?;
    let (mut http_floor, http_floor_url) = floor(suite, "axum").await?;
    let http_floor_n = http_floor.per_request(suite.scenario(Target::Rest, &http_floor_url, tiny, 1, 1))?;
    http_floor.proc.terminate(Duration::from_secs(10))?;

    let out = suite.dir.join("callgrind-inference.out");
    // Whether a model runs on the I/O thread is decided from a timed run at
    // load; under callgrind that run is ~50× slower, so the natively taken
    // choice is forced.
    let env = [("FERRY_INLINE_BELOW_US", "1000000000".to_owned()), ("FERRY_LOG", "info".to_owned())];
    let inf =
        start_inference_under(&callgrind(&out), &suite.dir, mlflow, Some(registry), "iris:Production", &env).await?;
    wait_serving(&inf.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(120)).await?;
    let mut ferry = Counted { proc: inf.proc, out, dumps: 0 };
    let mut rows = Vec::new();
    for (what, target, url, floor_n, call) in [
        ("gRPC Predict", Target::Grpc, &inf.grpc, grpc_floor_n, call),
        ("OIP ModelInfer", Target::Oip, &inf.grpc, grpc_floor_n, call),
        ("REST /predict", Target::Rest, &inf.http, http_floor_n, one_output_call),
    ] {
        let n = ferry.per_request(suite.scenario(target, url, tiny, 1, 1))?;
        rows.push((what, n, floor_n, call));
    }
    ferry.proc.terminate(Duration::from_secs(30))?;

    suite.table(
        "Instructions per request in the server process (callgrind, tiny model, one caller; user space only)",
        "| request | Ferry | the same stack doing nothing | model call in process: as Ferry makes it (ONNX Runtime's defaults) | Ferry's own: Ferry − stack − model call as Ferry makes it |",
    );
    let k = |v: f64| format!("{:.1}k", v / 1e3);
    for (what, n, floor_n, call) in rows {
        let (floor, what) = if what.starts_with("REST") {
            ("axum", format!("{what} (model call: `{REST_OUTPUT}` alone)"))
        } else {
            ("tonic", what.to_owned())
        };
        suite.line(&format!(
            "| {what} | {} | {} ({floor}) | {} ({}) | **{}** |",
            k(n),
            k(floor_n),
            k(call),
            k(default_call),
            k(n - floor_n - call)
        ));
    }
    Ok(())
}
