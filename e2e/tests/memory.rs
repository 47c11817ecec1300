//! A version's sessions share its weights: a model given more sessions to
//! compute batches side by side costs no more memory for it. And weights
//! logged the way `mlflow.onnx.log_model` writes them by default (external
//! data) are not held twice: the sessions compute with ONNX Runtime's packed
//! form, and the file's own bytes are mapped and given back to the OS.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{
    Mlflow, assert_close, log_models, logged_row, make_mlp, promote, register_file, rss_mib, start_inference,
    start_registry, wait_serving,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sessions_share_one_copy_of_the_weights() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let file = d.join("mlp.onnx"); // 21 MB of float32 weights
    make_mlp(&file, 1)?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "mlp", &file).await?;
    promote(&mut registry.client, "mlp", "1").await?;
    let row = vec![0.1f32; 512];

    // One process at a time, so that neither's threads slow the other's load.
    let mut seen = Vec::new();
    for sessions in [0usize, 6] {
        let extra = [("FERRY_THROUGHPUT_SESSIONS", sessions.to_string())];
        let inference = start_inference(d, &mlflow.url, Some(&registry.url), "mlp:Production", &extra).await?;
        let answer = wait_serving(&inference.client, "mlp", "1", &row, Duration::from_secs(60))
            .await
            .with_context(|| inference.proc.log_tail())?;
        // Load-time buffers are returned to the OS just after the swap-in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mib(inference.proc.pid())?;
        let out = answer.outputs.first().context("no output")?.float_data.clone();
        eprintln!("{sessions} throughput sessions: RSS {rss:.1} MiB");
        seen.push((sessions, rss, out));
    }
    let (_, alone, first) = &seen[0];
    let (_, more, second) = &seen[1];
    ensure!(first == second, "the sessions answered differently: {first:?} vs {second:?}");
    // Without sharing each session holds its own 20 MiB of packed weights: +120 MiB.
    ensure!(
        more - alone < 16.0,
        "six more sessions cost {:.1} MiB ({alone:.1} → {more:.1}); they should share the weights",
        more - alone
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_logged_with_mlflows_defaults_are_held_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let file = d.join("mlp.onnx");
    make_mlp(&file, 2)?;
    let mib = std::fs::metadata(&file)?.len() as f64 / f64::from(1 << 20); // ~20 MiB of float32 weights
    let env = [("MLFLOW_TRACKING_URI", mlflow.url.as_str())];
    // Both as `mlflow.onnx.log_model` writes them by default: weights as external data.
    let mut logged = log_models("tiny", &["external"], &env)?;
    logged.extend(log_models("mlp", &["--model", &file.display().to_string(), "external"], &env)?);

    let mut rss = Vec::new();
    for ((name, row), entry) in [("tiny", logged_row()), ("mlp", vec![0.1f32; 512])].into_iter().zip(&logged) {
        let version = entry["version"].as_str().context("no version")?;
        let inference = start_inference(d, &mlflow.url, None, &format!("{name}/{version}"), &[]).await?;
        let answer = wait_serving(&inference.client, name, version, &row, Duration::from_secs(60))
            .await
            .with_context(|| inference.proc.log_tail())?;
        assert_close(&answer.outputs.first().context("no output")?.float_data, &entry["expected"])
            .with_context(|| format!("{name}'s answer"))?;
        // Load-time buffers are returned to the OS just after the swap-in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(rss_mib(inference.proc.pid())?);
        eprintln!("{name}: RSS {:.1} MiB", rss[rss.len() - 1]);
    }
    let (tiny, mlp) = (rss[0], rss[1]);
    // Its three default sessions compute with one packed copy of the weights
    // (1x the file) and some overhead of their own. The file's bytes, handed
    // to them mapped, are not resident as well: with them it was ~2.5x.
    ensure!(
        mlp - tiny < 1.75 * mib,
        "the {mib:.1} MiB model costs {:.1} MiB over the tiny one ({tiny:.1} → {mlp:.1} MiB); want under 1.75x the file",
        mlp - tiny
    );
    Ok(())
}
