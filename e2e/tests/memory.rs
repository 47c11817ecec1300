//! A version's sessions share its weights: a model given more sessions to
//! compute batches side by side costs no more memory for it. And weights
//! are not held twice, however MLflow's Python client wrote them: the
//! sessions compute with ONNX Runtime's packed form, and the weights' own
//! bytes are mapped from a file and given back to the OS.

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
async fn weights_are_held_once_however_mlflow_wrote_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let file = d.join("mlp.onnx");
    make_mlp(&file, 2)?;
    let mib = std::fs::metadata(&file)?.len() as f64 / f64::from(1 << 20); // ~20 MiB of float32 weights
    let env = [("MLFLOW_TRACKING_URI", mlflow.url.as_str())];
    // As `mlflow.onnx.log_model` writes them by default (external data, mapped
    // where they lie), and inline in the protobuf (unaligned: written aligned
    // into the version's folder, then mapped).
    let mut logged = log_models("tiny", &["external"], &env)?;
    logged.extend(log_models("mlp", &["--model", &file.display().to_string(), "external", "inline"], &env)?);

    let mut rss = Vec::new();
    for entry in &logged {
        let (name, row) = if rss.is_empty() { ("tiny", logged_row()) } else { ("mlp", vec![0.1f32; 512]) };
        let version = entry["version"].as_str().context("no version")?;
        let inference = start_inference(d, &mlflow.url, None, &format!("{name}/{version}"), &[]).await?;
        let answer = wait_serving(&inference.client, name, version, &row, Duration::from_secs(60))
            .await
            .with_context(|| inference.proc.log_tail())?;
        assert_close(&answer.outputs.first().context("no output")?.float_data, &entry["expected"])
            .with_context(|| format!("{name} {}: the answer", entry["kind"]))?;
        // Load-time buffers are returned to the OS just after the swap-in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(rss_mib(inference.proc.pid())?);
        eprintln!("{name} {}: RSS {:.1} MiB", entry["kind"], rss[rss.len() - 1]);
    }
    // Its three default sessions compute with one packed copy of the weights
    // (1x the file) and some overhead of their own. The weights' own bytes,
    // handed to them mapped, are not resident as well: with them it was ~2x.
    for (entry, mlp) in logged[1..].iter().zip(&rss[1..]) {
        ensure!(
            mlp - rss[0] < 1.75 * mib,
            "the {mib:.1} MiB model ({} weights) costs {:.1} MiB over the tiny one ({:.1} → {mlp:.1} MiB); want under 1.75x the file",
            entry["kind"],
            mlp - rss[0],
            rss[0]
        );
    }
    Ok(())
}
