//! The `wrk` section: the REST comparison with Ferry's own generator
//! cross-checked by a standard one, Debian's `wrk` (one thread, like
//! `ferry-load`), in the same interleaved rounds, and each generator's
//! ceiling measured in the same round: a do-nothing HTTP/1.1 server answering
//! the same bodies. A ratio where either server reaches 90 % of that ceiling
//! measures the generator, not the servers, and is marked so rather than
//! counted as met.
//!
//! Then one core each: Ferry and the gateway (single-threaded JavaScript)
//! each pinned to the same core with `taskset`, wrk pinned to the other, one
//! server at a time: the per-core comparison, which no generator caps.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use ferry_e2e::{Inference, Proc, start_inference_under, wait_serving};
use ferry_load::Target;

use crate::{Model, Suite, load};

/// One wrk run: requests per second, latency, errors, and the server's CPU.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    p99_us: f64,
    errors: u64,
    /// Server CPU milliseconds per 1,000 requests, when its pid was given.
    cpu_ms_per_1k: Option<f64>,
}

/// The Lua script: POST the body in `$WRK_BODY`, print one machine-readable line.
const SCRIPT: &str = r#"local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("FERRY_WRK requests=%d secs=%.3f p99_us=%.1f errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"#;

/// CPU time (user + system) of `pid` so far, in milliseconds.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0) // USER_HZ is 100 on Linux
}

fn wrk(
    dir: &Path,
    url: &str,
    body: &Path,
    c: usize,
    secs: f64,
    core: Option<usize>,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let script = dir.join("ferry-wrk.lua");
    if !script.exists() {
        std::fs::write(&script, SCRIPT)?;
    }
    let mut cmd = match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &core.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t1", &format!("-c{c}"), &format!("-d{secs}s"), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(url)
        .env("WRK_BODY", body);
    let before = pid.and_then(cpu_ms);
    let out = cmd.output().context("running wrk (apt-get install wrk)")?;
    let after = pid.and_then(cpu_ms);
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("FERRY_WRK ")) else {
        bail!("wrk printed no result: {text}{}", String::from_utf8_lossy(&out.stderr));
    };
    let field = |k: &str| -> anyhow::Result<f64> {
        let v = line.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).context(k.to_owned())?;
        Ok(v.parse()?)
    };
    let (requests, secs) = (field("requests")?, field("secs")?);
    let cpu_ms_per_1k = before.zip(after).map(|(b, a)| (a - b) / requests.max(1.0) * 1000.0);
    Ok(Run { rps: requests / secs, p99_us: field("p99_us")?, errors: field("errors")? as u64, cpu_ms_per_1k })
}

/// Whether a point measured the server or the generator, from how many of
/// its rounds came within 90 % of the generator's ceiling.
pub(crate) fn verdict(bound: usize, rounds: usize) -> String {
    if bound * 2 > rounds {
        format!("**generator-bound** ({bound} of {rounds} rounds within 90 % of the ceiling)")
    } else if bound > 0 {
        format!("{bound} of {rounds} rounds generator-bound")
    } else {
        "server-bound".to_owned()
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What one generator saw in one round at one point: ceiling, Ferry, gateway.
#[derive(Debug, Default, Clone)]
struct Point {
    ceiling: Vec<f64>,
    ferry: Vec<Run>,
    gateway: Vec<Run>,
}

impl Point {
    fn ratios(&self) -> Vec<f64> {
        self.ferry.iter().zip(&self.gateway).map(|(f, g)| f.rps / g.rps).collect()
    }

    /// The columns both tables share: Ferry and gateway req/s, the ratio by
    /// round and its median, CPU per 1k requests each and their ratio, errors.
    fn columns(&self) -> String {
        let ratios = self.ratios();
        let f_cpu = median(self.ferry.iter().filter_map(|r| r.cpu_ms_per_1k).collect());
        let g_cpu = median(self.gateway.iter().filter_map(|r| r.cpu_ms_per_1k).collect());
        let errors: u64 = self.ferry.iter().chain(&self.gateway).map(|r| r.errors).sum();
        format!(
            "{} | {} | {} | **{:.2}×** | {f_cpu:.0} / {g_cpu:.0} | {:.2}× | {errors}",
            cell(median(self.ferry.iter().map(|r| r.rps).collect())),
            cell(median(self.gateway.iter().map(|r| r.rps).collect())),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
            median(ratios.clone()),
            f_cpu / g_cpu,
        )
    }

    /// Rounds in which either server reached 90 % of the generator's ceiling.
    fn bound_rounds(&self) -> usize {
        (0..self.ferry.len())
            .filter(|&i| {
                let top = self.ceiling.get(i).copied().unwrap_or(f64::INFINITY);
                self.ferry[i].rps >= 0.9 * top || self.gateway.get(i).is_some_and(|g| g.rps >= 0.9 * top)
            })
            .count()
    }
}

fn cell(v: f64) -> String {
    if v.is_nan() { "–".to_owned() } else { format!("{v:.0}") }
}

pub(crate) async fn section(
    suite: &mut Suite,
    models: [&Model; 2],
    mlflow: &str,
    registry: &str,
) -> anyhow::Result<()> {
    let gateways: Vec<(Proc, String)> =
        models.iter().map(|m| suite.gateway(m, None, &[])).collect::<Result<Option<Vec<_>>, _>>()?.unwrap_or_default();
    if gateways.is_empty() {
        suite.skipped("wrk", "no --gateway");
        return Ok(());
    }
    let bodies = suite.bodies(&models, "wrk", "json", |m| {
        let row: Vec<f32> = (0..m.width).map(|j| (j % 7) as f32 / 7.0 + 0.1).collect();
        Ok(serde_json::to_vec(&serde_json::json!({ "data": row }))?)
    })?;
    let (_floor, floor) = crate::floor_server(suite, "http", &[]).await?;
    let inf = ferry(suite, &[], mlflow, registry).await?;
    let pid = inf.proc.pid();
    let secs = suite.args.round_duration;
    let rounds = suite.args.rounds.max(1);
    // The ends the targets name; c=16 sits between them in the throughput tables.
    let concs = [1usize, 64];
    // (model, c, generator) → what each round saw.
    let mut points: BTreeMap<(usize, usize, &str), Point> = BTreeMap::new();
    for round in 0..rounds {
        for (mi, m) in models.iter().enumerate() {
            let path = format!("/predict?model={}", m.name);
            let (gw_proc, gw_url) = &gateways[mi];
            for &c in &concs {
                // Alternate which server goes first, so drift within a round hits both alike.
                let order: [(bool, &str, u32); 2] = if round % 2 == 0 {
                    [(true, inf.http.as_str(), pid), (false, gw_url.as_str(), gw_proc.pid())]
                } else {
                    [(false, gw_url.as_str(), gw_proc.pid()), (true, inf.http.as_str(), pid)]
                };
                let p = points.entry((mi, c, "wrk")).or_default();
                p.ceiling.push(wrk(&suite.dir, &format!("{floor}{path}"), &bodies[mi], c, secs, None, None)?.rps);
                for (is_ferry, url, server) in order {
                    let r = wrk(&suite.dir, &format!("{url}{path}"), &bodies[mi], c, secs, None, Some(server))?;
                    if is_ferry { p.ferry.push(r) } else { p.gateway.push(r) }
                }
                let short = |url: &str, server: Option<u32>| {
                    let mut s = suite.scenario(Target::Rest, url, m, 1, c);
                    s.duration = Duration::from_secs_f64(secs);
                    s.server_pid = server;
                    s
                };
                let ceiling = load(short(&floor, None))?.rps;
                let mut runs = Vec::new();
                for (is_ferry, url, server) in order {
                    let r = load(short(url, Some(server)))?;
                    runs.push((
                        is_ferry,
                        Run { rps: r.rps, p99_us: r.p99_us, errors: r.errors, cpu_ms_per_1k: r.cpu_ms_per_1k },
                    ));
                }
                let p = points.entry((mi, c, "ferry-load")).or_default();
                p.ceiling.push(ceiling);
                for (is_ferry, r) in runs {
                    if is_ferry { p.ferry.push(r) } else { p.gateway.push(r) }
                }
            }
        }
    }
    drop(inf);

    suite.table(
        &format!(
            "REST /predict, two generators: wrk -t1 and ferry-load, {rounds} interleaved rounds of {secs} s per point, each generator's ceiling (a do-nothing HTTP/1.1 server) in the same round"
        ),
        "| model | c | generator | ceiling req/s | Ferry req/s | gateway req/s | Ferry ÷ gateway by round | median | CPU ms / 1k req, Ferry / gateway | CPU ratio | errors | Ferry ÷ gateway p99 | verdict |",
    );
    for ((mi, c, generator), p) in &points {
        let (bound, rounds) = (p.bound_rounds(), p.ferry.len());
        let p99 = median(p.ferry.iter().zip(&p.gateway).map(|(f, g)| f.p99_us / g.p99_us).collect());
        let verdict = verdict(bound, rounds);
        let name = models[*mi].name;
        let ceiling = cell(median(p.ceiling.clone()));
        suite.line(&format!("| {name} | {c} | {generator} | {ceiling} | {} | {p99:.2}× | {verdict} |", p.columns()));
    }
    for (mut p, _) in gateways {
        p.terminate(Duration::from_secs(5))?;
    }

    // One core each: the server on core 1, wrk on core 0, one server at a time.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        suite.line("(one-core-each comparison skipped: fewer than two cores)");
        return Ok(());
    }
    let pin = ["taskset", "-c", "1"];
    // onnxruntime-node sizes its pool by the machine, not the affinity: on one
    // core the gateway's best is one intra-op thread (two thrash). Ferry sizes
    // its threads by the affinity it is given.
    let gateways: Vec<(Proc, String)> = models
        .iter()
        .map(|m| suite.gateway(m, Some(1), &pin))
        .collect::<Result<Option<Vec<_>>, _>>()?
        .unwrap_or_default();
    let wrapper: Vec<String> = pin.iter().map(|s| (*s).to_owned()).collect();
    let inf = ferry(suite, &wrapper, mlflow, registry).await?;
    let mut pinned: BTreeMap<(usize, usize), Point> = BTreeMap::new();
    for round in 0..rounds {
        for (mi, m) in models.iter().enumerate() {
            let path = format!("/predict?model={}", m.name);
            let (gw_proc, gw_url) = &gateways[mi];
            for c in [16usize, 64] {
                let p = pinned.entry((mi, c)).or_default();
                let ferry_first = round % 2 == 0;
                for is_ferry in [ferry_first, !ferry_first] {
                    let (url, server) =
                        if is_ferry { (inf.http.as_str(), inf.proc.pid()) } else { (gw_url.as_str(), gw_proc.pid()) };
                    let r = wrk(&suite.dir, &format!("{url}{path}"), &bodies[mi], c, secs, Some(0), Some(server))?;
                    if is_ferry { p.ferry.push(r) } else { p.gateway.push(r) }
                }
            }
        }
    }
    suite.table(
        &format!("One core each: every server pinned to core 1 (taskset), wrk -t1 on core 0; {rounds} interleaved rounds of {secs} s"),
        "| model | c | Ferry req/s | gateway req/s | Ferry ÷ gateway by round | median | CPU ms / 1k req, Ferry / gateway | CPU ratio | errors |",
    );
    for ((mi, c), p) in &pinned {
        suite.line(&format!("| {} | {c} | {} |", models[*mi].name, p.columns()));
    }
    for (mut p, _) in gateways {
        p.terminate(Duration::from_secs(5))?;
    }
    drop(inf);
    Ok(())
}

/// Ferry's inference service with its defaults, serving both models, run by `wrapper`.
pub(crate) async fn ferry(
    suite: &Suite,
    wrapper: &[String],
    mlflow: &str,
    registry: &str,
) -> anyhow::Result<Inference> {
    let env = vec![("FERRY_LOG", "info".to_owned())];
    let inf =
        start_inference_under(wrapper, &suite.dir, mlflow, Some(registry), "iris:Production,mlp:Production", &env)
            .await?;
    wait_serving(&inf.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(60)).await?;
    wait_serving(&inf.client, "mlp", "1", &[0.1; 512], Duration::from_secs(60)).await?;
    Ok(inf)
}
