//! The `peers` section: MLflow's own scoring server (`mlflow models serve`),
//! serving the versions Ferry registered, against Ferry's REST `/predict` on
//! the same rows, alternating point by point.

use std::{process::Command, time::Duration};

use ferry_e2e::{Inference, Proc, free_port, venv};
use ferry_load::Target;

use crate::{Model, Suite, load, ms, ratio, wait_http_ok};

/// `mlflow models serve` for version 1 of `m` with `workers` uvicorn workers.
fn mlflow_serve(suite: &Suite, m: &Model, mlflow: &str, workers: usize) -> anyhow::Result<(Proc, String)> {
    let port = free_port();
    let bin = venv().join("bin");
    let mut cmd = Command::new(bin.join("mlflow"));
    cmd.args(["models", "serve", "--env-manager", "local", "-m", &format!("models:/{}/1", m.name)])
        .args(["-p", &port.to_string(), "-w", &workers.to_string()])
        .env("MLFLOW_TRACKING_URI", mlflow)
        // It starts uvicorn by name.
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
    let mut proc = Proc::spawn(&format!("mlflow-serve-{}-{workers}", m.name), &mut cmd, &suite.dir)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http_ok("mlflow models serve", &format!("{url}/ping"), &mut proc, Duration::from_secs(120))?;
    Ok((proc, url))
}

pub(crate) async fn section(
    suite: &mut Suite,
    models: [&Model; 2],
    ferry: &Inference,
    mlflow: &str,
) -> anyhow::Result<()> {
    suite.table(
        "MLflow's scoring server (`mlflow models serve`) vs Ferry REST /predict, same rows",
        "| model | uvicorn workers | c | Ferry req/s | p50 / p99 ms | mlflow models serve req/s | p50 / p99 ms | Ferry ÷ mlflow req/s | p99 ratio |",
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for m in models {
        // One worker, and one per core (Python needs processes to use the cores).
        for workers in [1, cores] {
            let (peer, url) = mlflow_serve(suite, m, mlflow, workers)?;
            for c in suite.args.concurrency.clone() {
                let f = load(suite.scenario(Target::Rest, &ferry.http, m, 1, c))?;
                let p = load(suite.scenario(Target::Invocations, &url, m, 1, c))?;
                let errors = f.errors + p.errors;
                suite.line(&format!(
                    "| {} | {workers} | {c} | {:.0} | {} / {} | {:.0} | {} / {} | {} | {} |{}",
                    m.name,
                    f.rps,
                    ms(f.p50_us),
                    ms(f.p99_us),
                    p.rps,
                    ms(p.p50_us),
                    ms(p.p99_us),
                    ratio(f.rps, p.rps),
                    ratio(f.p99_us, p.p99_us),
                    if errors > 0 { format!(" {errors} errors") } else { String::new() }
                ));
            }
            // The scoring server's uvicorn workers are its children: the group goes.
            drop(peer);
        }
    }
    Ok(())
}
