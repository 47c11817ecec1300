//! The consoles in a real browser (Debian's headless Chromium, driven by
//! playwright-core from npm). Inference's: the page shows the served model, a
//! prediction sent through the form built from the model's signature returns
//! the expected class with the version that served it, and a promotion made
//! while the page is open appears live. The registry's: the model with its
//! aliases and moves, and a move made meanwhile, live. Screenshots are kept
//! as test artifacts (`<target dir>/ferry-artifacts/`).

use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use ferry_e2e::{register_file, repo_root, train_iris};

/// Where screenshots are kept: `<target dir>/ferry-artifacts/<name>`.
fn artifact(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("ferry-artifacts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    Ok(path)
}

/// Runs a browser script from `e2e/console` on `url` in headless Chromium,
/// calls `on_ready` when it prints READY (the test's move, made while the page
/// is open), and returns what it printed once it prints DONE.
async fn drive<F, Fut>(
    script: &str,
    url: &str,
    shot: &std::path::Path,
    env: &[(&str, &str)],
    mut on_ready: F,
) -> anyhow::Result<Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(std::path::Path::new(&chromium).exists(), "no Chromium at {chromium} (apt-get install chromium)");
    ensure!(repo_root().join("e2e/console/node_modules").exists(), "run scripts/setup.sh (npm ci in e2e/console)");
    let mut child = Command::new("node")
        .arg(repo_root().join("e2e/console").join(script))
        .arg(url)
        .arg(shot)
        .env("CHROMIUM", &chromium)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = rx.recv().await {
            eprintln!("{script}: {line}");
            if line == "READY" {
                on_ready().await?;
            }
            let done = line == "DONE";
            lines.push(line);
            if done {
                return anyhow::Ok(());
            }
        }
        bail!("the browser script ended early")
    })
    .await;
    let output = child.wait_with_output()?;
    if !matches!(outcome, Ok(Ok(()))) {
        bail!("{outcome:?}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    ensure!(std::fs::metadata(shot)?.len() > 10_000, "a real screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_serves_and_follows_live() -> anyhow::Result<()> {
    inference_console(None, "console.png").await
}

/// With API keys on, the page asks for one, and with it works as without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_an_api_key_when_keys_are_on() -> anyhow::Result<()> {
    inference_console(Some("console-key-0123456789abcdef"), "console-keyed.png").await
}

async fn inference_console(key: Option<&str>, screenshot: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let stack = ferry_e2e::serve_iris_keyed(d, &[], key).await?;
    let client = stack.registry.client.clone();
    let v2 = d.join("iris-2.onnx");
    train_iris(&v2, 0.05)?;
    register_file(&mut client.clone(), "iris", &v2).await?;
    let shot = artifact(screenshot)?;
    let url = format!("{}/console", stack.inference.http);
    let env: Vec<(&str, &str)> = key.map(|k| ("FERRY_API_KEY", k)).into_iter().collect();
    let lines = drive("check.js", &url, &shot, &env, || {
        // The promotion, made while the page is open.
        let mut c = client.clone();
        async move { ferry_e2e::promote(&mut c, "iris", "2").await }
    })
    .await
    .with_context(|| stack.inference.proc.log_tail())?;
    let result: String =
        serde_json::from_str(lines.iter().find_map(|l| l.strip_prefix("RESULT ")).context("no prediction result")?)?;
    let (served, outputs) = result.split_once('\n').context("the answer and its outputs")?;
    ensure!(served == "served by iris version 1", "the answer names the version that served: {result}");
    let outputs: serde_json::Value = serde_json::from_str(outputs)?;
    // int64 labels travel as JSON strings in the protobuf mapping.
    let label = &outputs["label"][0];
    ensure!(label == "0" || label == 0, "the form's row is setosa (class 0): {result}");
    ensure!(outputs["probabilities"].as_array().map(Vec::len) == Some(3), "{result}");
    let event = lines.iter().find_map(|l| l.strip_prefix("EVENT ")).context("no live event")?;
    ensure!(event.contains("iris now serves version 2"), "{event}");
    let streamed = lines.iter().find_map(|l| l.strip_prefix("REGISTRY ")).context("no registry event")?;
    ensure!(streamed.contains("registry #") && streamed.contains("iris"), "the registry's change, live: {streamed}");
    ensure!(key.is_none() || lines.iter().any(|l| l == "ASKED"), "the page asked for the key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_console_lists_models_and_follows_moves_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (_mlflow, mut registry) = ferry_e2e::two_iris_versions(d).await?;
    let alias = |version: &str, reason: &str| ferry_proto::registry::v1::SetAliasRequest {
        name: "iris".into(),
        alias: "champion".into(),
        version: version.into(),
        reason: reason.into(),
    };
    registry.client.set_alias(alias("1", "first model")).await?;
    let shot = artifact("registry-console.png")?;
    let client = registry.client.clone();
    let lines = drive("check-registry.js", &format!("{}/console", registry.http), &shot, &[], || {
        let (mut c, req) = (client.clone(), alias("2", "better on the hold-out"));
        async move { c.set_alias(req).await.map(drop).map_err(anyhow::Error::from) }
    })
    .await
    .with_context(|| registry.proc.log_tail())?;
    let row = lines.iter().find_map(|l| l.strip_prefix("ROW ")).context("no updated row")?;
    ensure!(row.contains("@champion → 2") && row.contains("by anonymous"), "the move and who made it: {row}");
    Ok(())
}
