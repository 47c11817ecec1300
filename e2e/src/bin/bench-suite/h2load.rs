//! The `h2load` section: gRPC `Predict` measured by `ferry-load` and
//! cross-checked by a standard HTTP/2 generator, nghttp2's `h2load`
//! (Debian's `nghttp2-client`; `ghz` is in no registry this machine
//! reaches), in the same interleaved rounds. Each generator's ceiling is
//! measured in the same round: tonic answering the same request with
//! nothing. A figure within 90 % of it measures the generator. Then one
//! core each: Ferry pinned to one core, each generator to the other, so
//! that what a generator spends per request cannot move the server's figure.
//!
//! The batched medium point is taken one core each as well: Ferry on core
//! 1 answering OIP `ModelInfer` batches of 32 rows from 64 callers on core
//! 0, against the model in a loop in process on core 1 alone, measured just
//! before and after Ferry in each round. With shared cores the loop has
//! both cores and Ferry shares them with the generator, which the ratio
//! then measures as well.
//!
//! h2load sees HTTP statuses only, and a gRPC error travels in a 200's
//! trailers, so Ferry's own request counters (`/metrics`) say how many of
//! the answers it gave h2load were errors.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use ferry_load::Target;
use prost::Message;

use crate::{Model, Suite, load, load_on, wrk};

const PREDICT: &str = "/ferry.inference.v1.Inference/Predict";
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Rows per request and callers of the batched point, as in `headline`.
const BATCH: usize = 32;
const BATCH_C: usize = 64;

/// The most rows Ferry stacks into one call by default (`--max-batch-rows`).
const FERRY_MAX_BATCH_ROWS: usize = 128;

/// Clients with the generator sharing the cores: c=64 only, where a
/// generator's ceiling matters; the one-core runs cover c=1 too, and the
/// section stays short.
const SHARED_C: usize = 64;

/// The `Predict` request ferry-load sends (one row), framed.
fn body(m: &Model) -> Vec<u8> {
    let req =
        ferry_load::predict_request(m.name.to_owned(), "input", vec![1, m.width as i64], ferry_load::rows(m.width, 1));
    framed(&req.encode_to_vec())
}

/// The OIP request ferry-load sends (`batch` rows), framed.
fn oip_body(m: &Model, batch: usize) -> Vec<u8> {
    let shape = vec![batch as i64, m.width as i64];
    let req = ferry_load::model_infer_request(m.name.to_owned(), "input", shape, &ferry_load::rows(m.width, batch));
    framed(&req.encode_to_vec())
}

/// A gRPC message as it travels: uncompressed, length-prefixed.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    framed
}

/// One h2load run calling `method` (`PREDICT`, `MODEL_INFER`), shaped as
/// ferry-load's gRPC callers are: `c` streams over the same number of
/// connections. Requests per second.
fn h2load(
    url: &str,
    method: &str,
    body: &Path,
    c: usize,
    connections: usize,
    secs: f64,
    core: Option<usize>,
) -> anyhow::Result<f64> {
    let mut cmd = pinned("h2load", core);
    let out = cmd
        .args(["-t", "1", "-c", &connections.to_string(), "-m", &c.div_ceil(connections).to_string()])
        .args(["-D", &format!("{secs}"), "--warm-up-time", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("{url}{method}"))
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 3.00s, 12345.67 req/s, ..." and "requests: N total, N started, N done, N succeeded, F failed, ..."
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok());
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" failed")))
        .and_then(|n| n.parse::<u64>().ok());
    match (rps, failed) {
        (Some(rps), Some(0)) => Ok(rps),
        (Some(_), Some(n)) => bail!("h2load saw {n} failed requests: {text}"),
        _ => bail!("h2load printed no result: {text}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// `program`, on `core` when given.
fn pinned(program: &str, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &core.to_string(), program]);
            c
        }
        None => Command::new(program),
    }
}

/// The generators in the order `round` runs them: which goes first
/// alternates, so that drift within a round hits both alike.
fn in_turn(round: usize) -> [&'static str; 2] {
    if round.is_multiple_of(2) { ["h2load", "ferry-load"] } else { ["ferry-load", "h2load"] }
}

/// One ferry-load run as its own process on `core` (the section's other
/// runs are threads of this one, which cannot be pinned apart from it):
/// `target` is `grpc` (`Predict`, one row) or `oip` (`ModelInfer`, `batch`
/// rows). Requests per second.
fn ferry_load_on(
    core: usize,
    target: &str,
    url: &str,
    m: &Model,
    batch: usize,
    c: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?.with_file_name("ferry-load");
    let out = pinned(&exe.to_string_lossy(), Some(core))
        .args(["--target", target, "--url", url, "--model", m.name, "--width", &m.width.to_string()])
        .args(["--batch", &batch.to_string(), "-c", &c.to_string()])
        .args(["--duration", &secs.to_string(), "--warmup", "1"])
        .output()
        .context("running ferry-load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.lines().last().unwrap_or_default().split('\t').collect();
    match (fields.get(5).and_then(|v| v.parse::<f64>().ok()), fields.get(11)) {
        (Some(rps), Some(&"0")) => Ok(rps),
        _ => bail!("ferry-load failed or saw errors: {text}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Ferry's `Predict` and `ModelInfer` answers other than "ok" so far, per
/// model, from its metrics.
async fn errors(metrics: &str, models: &[&Model; 2]) -> anyhow::Result<Vec<u64>> {
    let text = reqwest::get(metrics).await?.error_for_status()?.text().await?;
    let grpc = |l: &str| l.contains("method=\"grpc.Predict\"") || l.contains("method=\"grpc.ModelInfer\"");
    let count = |model: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("ferry_inference_requests_total{") && grpc(l))
            .filter(|l| l.contains(&format!("model=\"{model}\"")) && !l.contains("code=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    Ok(models.iter().map(|m| count(m.name)).collect())
}

#[derive(Default)]
struct Point {
    ceiling: Vec<f64>,
    ferry: Vec<f64>,
}

/// The batched point of one round, one core each (rows per second).
#[derive(Default)]
struct Batched {
    /// The loop in process on core 1, just before and just after Ferry.
    ceiling: Vec<f64>,
    ferry_load: Vec<f64>,
    h2load: Vec<f64>,
    /// The loop's rows per call: the better on core 1 of two, chosen in the first round.
    batch: usize,
}

/// `ceiling_batch`: the rows per call of the in-process loop's best setting
/// on two cores (the `inproc` section's), one of the batches the batched
/// point's loop tries on one core.
pub(crate) async fn section(
    suite: &mut Suite,
    models: [&Model; 2],
    ceiling_batch: usize,
    mlflow: &str,
    registry: &str,
) -> anyhow::Result<()> {
    if Command::new("h2load").arg("--version").output().is_err() {
        suite.skipped("h2load", "no h2load; apt-get install nghttp2-client");
        return Ok(());
    }
    let bodies = suite.bodies(&models, "h2load", "grpc", |m| Ok(body(m)))?;
    let medium = models[1];
    let batched_body = suite.bodies(&[medium], "h2load-oip", "grpc", |m| Ok(oip_body(m, BATCH)))?.remove(0);
    let (_floor, floor) = crate::floor_server(suite, "grpc", &[]).await?;
    let inf = wrk::ferry(suite, &[], mlflow, registry).await?;
    let before = errors(&inf.metrics, &models).await?;
    let secs = suite.args.round_duration;
    let rounds = suite.args.rounds.max(1);
    let mut points: BTreeMap<(usize, usize, &str), Point> = BTreeMap::new();
    for round in 0..rounds {
        for (mi, m) in models.iter().enumerate() {
            {
                let c = SHARED_C;
                let connections = suite.scenario(Target::Grpc, &floor, m, 1, c).connections;
                for generator in in_turn(round) {
                    let run = |url: &str| -> anyhow::Result<f64> {
                        if generator == "h2load" {
                            h2load(url, PREDICT, &bodies[mi], c, connections, secs, None)
                        } else {
                            let mut s = suite.scenario(Target::Grpc, url, m, 1, c);
                            s.duration = Duration::from_secs_f64(secs);
                            let r = load(s)?;
                            if r.errors > 0 {
                                bail!("ferry-load saw {} errors: {:?}", r.errors, r.first_error);
                            }
                            Ok(r.rps)
                        }
                    };
                    let p = points.entry((mi, c, generator)).or_default();
                    p.ceiling.push(run(&floor)?);
                    p.ferry.push(run(&inf.grpc)?);
                }
            }
        }
    }
    // Errors Ferry answered, per model, summed over the section's two instances.
    let mut failed: Vec<u64> = errors(&inf.metrics, &models).await?.iter().zip(&before).map(|(a, b)| a - b).collect();
    drop(inf);

    // One core each: Ferry on core 1, each generator on core 0, so that what a
    // generator spends per request cannot take CPU from the server.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut one_core: BTreeMap<(usize, usize, &str), Vec<f64>> = BTreeMap::new();
    let mut batched = Batched::default();
    if cores >= 2 {
        let inf = wrk::ferry(suite, &["taskset".into(), "-c".into(), "1".into()], mlflow, registry).await?;
        let before = errors(&inf.metrics, &models).await?;
        for round in 0..rounds {
            for (mi, m) in models.iter().enumerate() {
                for c in [1usize, 64] {
                    let connections = suite.scenario(Target::Grpc, &inf.grpc, m, 1, c).connections;
                    for generator in in_turn(round) {
                        let rps = if generator == "h2load" {
                            h2load(&inf.grpc, PREDICT, &bodies[mi], c, connections, secs, Some(0))?
                        } else {
                            ferry_load_on(0, "grpc", &inf.grpc, m, 1, c, secs)?
                        };
                        one_core.entry((mi, c, generator)).or_default().push(rps);
                    }
                }
            }
            let ceiling = |batch: usize| {
                let mut s = suite.scenario(Target::InProcess, "", medium, batch, 1);
                s.duration = Duration::from_secs_f64(secs);
                load_on(s, Some(1)).map(|r| r.inferences_per_s)
            };
            if round == 0 {
                // On one core the best batch may be another than on two: the
                // better there of the two-core best and the most Ferry stacks.
                let mut best = (0.0, ceiling_batch);
                let mut batches = vec![ceiling_batch, FERRY_MAX_BATCH_ROWS];
                batches.dedup();
                for batch in batches {
                    let rows = ceiling(batch)?;
                    if rows > best.0 {
                        best = (rows, batch);
                    }
                }
                batched.batch = best.1;
            }
            batched.ceiling.push(ceiling(batched.batch)?);
            let connections = suite.scenario(Target::Oip, &inf.grpc, medium, BATCH, BATCH_C).connections;
            let rows = BATCH as f64;
            for generator in in_turn(round) {
                if generator == "h2load" {
                    let rps = h2load(&inf.grpc, MODEL_INFER, &batched_body, BATCH_C, connections, secs, Some(0))?;
                    batched.h2load.push(rps * rows);
                } else {
                    let rps = ferry_load_on(0, "oip", &inf.grpc, medium, BATCH, BATCH_C, secs)?;
                    batched.ferry_load.push(rps * rows);
                }
            }
            batched.ceiling.push(ceiling(batched.batch)?);
        }
        for ((f, a), b) in failed.iter_mut().zip(errors(&inf.metrics, &models).await?).zip(&before) {
            *f += a - b;
        }
        drop(inf);
    }

    suite.table(
        &format!(
            "gRPC Predict, two generators: h2load -t1 and ferry-load (one thread each, the same connections and streams), {rounds} interleaved rounds of {secs} s per point; the ceiling is tonic answering with nothing, in the same round"
        ),
        "| model | c | generator | tonic doing nothing req/s | Ferry req/s | Ferry ÷ nothing by round | verdict |",
    );
    for ((mi, c, generator), p) in &points {
        let ratios: Vec<f64> = p.ferry.iter().zip(&p.ceiling).map(|(f, n)| f / n).collect();
        let verdict = wrk::verdict(ratios.iter().filter(|r| **r >= 0.9).count(), ratios.len());
        let by_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        suite.line(&format!(
            "| {} | {c} | {generator} | {:.0} | {:.0} | {} | {verdict} |",
            models[*mi].name,
            wrk::median(p.ceiling.clone()),
            wrk::median(p.ferry.clone()),
            by_round.join(", ")
        ));
    }
    suite.line("");
    for (mi, m) in models.iter().enumerate() {
        {
            let c = SHARED_C;
            let of = |g: &str| points.get(&(mi, c, g)).map_or(f64::NAN, |p| wrk::median(p.ferry.clone()));
            suite.line(&format!(
                "- {} c={c}: Ferry under h2load ÷ under ferry-load **{:.2}**",
                m.name,
                of("h2load") / of("ferry-load")
            ));
        }
    }
    if !one_core.is_empty() {
        suite.table(
            &format!("One core each: Ferry pinned to core 1 (taskset), each generator to core 0; {rounds} interleaved rounds of {secs} s"),
            "| model | c | Ferry req/s under ferry-load | under h2load | h2load ÷ ferry-load by round | median |",
        );
        for (mi, m) in models.iter().enumerate() {
            for c in [1usize, 64] {
                let (Some(fl), Some(h2)) = (one_core.get(&(mi, c, "ferry-load")), one_core.get(&(mi, c, "h2load")))
                else {
                    continue;
                };
                let ratios: Vec<f64> = h2.iter().zip(fl).map(|(h, f)| h / f).collect();
                let by_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                suite.line(&format!(
                    "| {} | {c} | {:.0} | {:.0} | {} | **{:.2}** |",
                    m.name,
                    wrk::median(fl.clone()),
                    wrk::median(h2.clone()),
                    by_round.join(", "),
                    wrk::median(ratios.clone())
                ));
            }
        }
        suite.line("");
    }
    if !batched.ceiling.is_empty() {
        suite.table(
            &format!(
                "Batched, one core each: {} OIP ModelInfer, {BATCH} rows a request, c={BATCH_C}, Ferry on core 1 and each generator on core 0, against the model in a loop in process on core 1 (1 session × 1 thread, batch {}{}) just before and after Ferry; {rounds} interleaved rounds of {secs} s",
                medium.name,
                batched.batch,
                if ceiling_batch == FERRY_MAX_BATCH_ROWS {
                    String::new()
                } else {
                    format!(", the better of {ceiling_batch} and {FERRY_MAX_BATCH_ROWS} there")
                }
            ),
            "| generator | in-process rows/s | Ferry rows/s | Ferry ÷ in-process by round | median |",
        );
        // Each round's ceiling: the mean of the loop just before and just after.
        let ceilings: Vec<f64> = batched.ceiling.chunks(2).map(|p| p.iter().sum::<f64>() / p.len() as f64).collect();
        for (generator, ferry) in [("ferry-load", &batched.ferry_load), ("h2load", &batched.h2load)] {
            let ratios: Vec<f64> = ferry.iter().zip(&ceilings).map(|(f, c)| f / c).collect();
            let by_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            suite.line(&format!(
                "| {generator} | {:.0} | {:.0} | {} | **{:.2}** |",
                wrk::median(ceilings.clone()),
                wrk::median(ferry.clone()),
                by_round.join(", "),
                wrk::median(ratios.clone())
            ));
        }
        suite.line("");
    }
    let errs: Vec<String> = models.iter().zip(&failed).map(|(m, n)| format!("{} {n}", m.name)).collect();
    suite.line(&format!(
        "- Ferry's gRPC Predict and ModelInfer answers other than OK over the section (its metrics): {}",
        errs.join(", ")
    ));
    Ok(())
}
