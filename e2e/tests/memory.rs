//! A version's sessions share its weights: a model given more sessions to
//! compute batches side by side costs no more memory for it.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, make_mlp, promote, register_file, rss_mib, start_inference, start_registry, wait_serving};

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
