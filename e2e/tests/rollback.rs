//! Rollback and audit: every alias and stage move made through Ferry is
//! recorded in MLflow (who — the token's name —, when, why), readable with
//! ListMoves, ferryctl and MLflow's own client; Rollback returns an alias or
//! a stage to the version before in one call, under load without a failed
//! request, and refuses when the alias was moved elsewhere since. The
//! registry does not start without a token unless told to run open.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, python, start_inference, start_registry, train_iris, wait_for, wait_serving};
use ferry_proto::registry::v1::{
    GetModelRequest, ListMovesRequest, RollbackRequest, SetAliasRequest, Stage, TransitionStageRequest,
    rollback_request::Target,
};
use tonic::{Code, Request};

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

fn as_<T>(token: &str, msg: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

fn alias(version: &str, reason: &str) -> SetAliasRequest {
    SetAliasRequest { name: "iris".into(), alias: "champion".into(), version: version.into(), reason: reason.into() }
}

fn rollback(target: Target, reason: &str) -> RollbackRequest {
    RollbackRequest { name: "iris".into(), target: Some(target), reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_in_one_call_with_the_history_in_mlflow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let tokens = ("FERRY_REGISTRY_TOKENS", "ci=tok-ci,alice=tok-alice,grafana:read=tok-ro".to_owned());
    let registry = start_registry(d, &mlflow.url, &[tokens, ("FERRY_ALLOW_UNAUTHENTICATED", "false".into())]).await?;
    let mut reg = registry.client.clone();
    for (i, c) in [1.0, 0.05].into_iter().enumerate() {
        let file = d.join(format!("iris-{i}.onnx"));
        train_iris(&file, c)?;
        ferry_e2e::register_file_as(&mut reg, "iris", &file, Some("tok-ci")).await?;
    }
    // A read token may look, not move: PERMISSION_DENIED, saying what it lacks.
    let denied = reg.set_alias(as_("tok-ro", alias("1", "not mine to move"))?).await.unwrap_err();
    ensure!(denied.code() == tonic::Code::PermissionDenied && denied.message().contains("role read"), "{denied:?}");
    reg.set_alias(as_("tok-ci", alias("1", "first model"))?).await?;
    reg.set_alias(as_("tok-alice", alias("2", "better f1 on the hold-out"))?).await?;
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    wait_serving(&inf.client, "iris", "2", &ROW, Duration::from_secs(60)).await.with_context(|| inf.proc.log_tail())?;

    // Rollback under load: every request answered, by 2 and then by 1.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, ok, failed) = (inf.client.clone(), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.clone().predict(ferry_e2e::predict_row("iris", &ROW)).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = reg.rollback(as_("tok-alice", rollback(Target::Alias("champion".into()), "p99 regression"))?).await?;
    let back = back.into_inner();
    ensure!(
        back.version.as_ref().map(|v| v.version.as_str()) == Some("1") && back.rolled_back_version == "2",
        "{back:?}"
    );
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rollback under load: {ok} answered, {failed} failed");
    ensure!(ok > 100 && failed == 0, "{ok} answered, {failed} failed");

    // The history: who, when, why, through the API and in MLflow.
    let moves = reg.list_moves(ListMovesRequest { name: "iris".into() }).await?.into_inner().moves;
    let seen: Vec<_> = moves
        .iter()
        .map(|m| (m.target.as_str(), m.from_version.as_str(), m.to_version.as_str(), m.by.as_str(), m.rollback))
        .collect();
    ensure!(
        seen == [
            ("alias:champion", "", "1", "ci", false),
            ("alias:champion", "1", "2", "alice", false),
            ("alias:champion", "2", "1", "alice", true)
        ],
        "{moves:?}"
    );
    ensure!(moves[2].reason == "p99 regression" && moves.iter().all(|m| m.at.is_some()), "{moves:?}");
    let in_mlflow = python(
        "import json; from mlflow import MlflowClient; c = MlflowClient(); \
         print(json.dumps([json.loads(c.get_registered_model('iris').tags['ferry.history']), \
         json.loads(c.get_model_version('iris', '1').tags['ferry.last_move'])]))",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let in_mlflow: serde_json::Value = serde_json::from_str(in_mlflow.trim())?;
    ensure!(in_mlflow[0].as_array().map(Vec::len) == Some(3), "{in_mlflow}");
    ensure!(in_mlflow[1]["by"] == "alice" && in_mlflow[1]["reason"] == "p99 regression", "{in_mlflow}");
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "--token", "tok-ci", "history", "iris"])
        .output()?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 3, "{out:?}");

    // Rolling back again undoes the rollback; with ferryctl this time.
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "--token", "tok-ci", "rollback", "iris", "--alias", "champion"])
        .output()?;
    ensure!(out.status.success(), "ferryctl rollback: {}", String::from_utf8_lossy(&out.stderr));
    wait_serving(&inf.client, "iris", "2", &ROW, Duration::from_secs(30)).await?;

    // A wrong token: one line that says what to do, and the exit code for credentials.
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "--token", "guess", "rollback", "iris", "--alias", "champion"])
        .env("RUST_BACKTRACE", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(77), "{out:?}");
    ensure!(stderr.lines().count() == 1 && stderr.contains("FERRY_REGISTRY_TOKEN"), "{stderr}");

    // Named contexts: where the registry is and which variable holds the token; flags win over them.
    let config = d.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[contexts.ci]\nregistry = \"{url}\"\ntoken_env = \"CI_TOKEN\"\n\
             [contexts.dashboard]\nregistry = \"{url}\"\ntoken_env = \"RO_TOKEN\"\n",
            url = registry.url
        ),
    )?;
    let ctl = |context: &str, args: &[&str]| {
        std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
            .args(["--config", config.to_str().unwrap_or_default(), "--context", context])
            .args(args)
            .env_remove("FERRY_REGISTRY_URL")
            .env_remove("FERRY_REGISTRY_TOKEN")
            .env("CI_TOKEN", "tok-ci")
            .env("RO_TOKEN", "tok-ro")
            .output()
    };
    let out = ctl("dashboard", &["alias", "--name", "iris", "--alias", "champion", "--version", "2"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(77) && stderr.contains("role read"), "the read context may not move: {out:?}");
    let out = ctl("ci", &["alias", "--name", "iris", "--alias", "champion", "--version", "2"])?;
    ensure!(out.status.success(), "the ci context moves: {}", String::from_utf8_lossy(&out.stderr));
    let out = ctl("ci", &["--output", "json", "contexts"])?;
    let listed = String::from_utf8_lossy(&out.stdout);
    ensure!(listed.contains(r#""current":"*","name":"ci""#) && listed.contains("$RO_TOKEN"), "{listed}");
    ensure!(!listed.contains("tok-"), "no token is ever printed: {listed}");
    let out = ctl("nope", &["models"])?;
    ensure!(out.status.code() == Some(78) && String::from_utf8_lossy(&out.stderr).contains("\"ci\""), "{out:?}");
    let out = ctl("ci", &["completions", "bash"])?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_ferryctl()"), "{out:?}");

    // promote (alias or stage), predict (a row, or JSON typed by the signature), watch (for people).
    let out = ctl("ci", &["promote", "iris", "1", "--alias", "champion", "--reason", "ferryctl promote"])?;
    ensure!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(30)).await?;
    let out = ctl("ci", &["--inference", &inf.grpc, "predict", "--model", "iris", "--data", "5.1,3.5,1.4,0.2"])?;
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{out:?}"))?;
    ensure!(one["modelVersion"] == "1" && one["outputs"]["label"] == serde_json::json!([0]), "{one}");
    let mut child = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--inference", &inf.grpc, "predict", "--model", "iris", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        br#"{"input": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.4, 1.4]]}"#,
    )?;
    let two: serde_json::Value = serde_json::from_slice(&child.wait_with_output()?.stdout)?;
    let probs = two["outputs"]["probabilities"].as_array().context("probabilities")?;
    ensure!(probs.len() == 2 && probs[0].as_array().map(Vec::len) == Some(3), "two rows of three: {two}");
    let out = ctl("ci", &["--inference", &inf.grpc, "predict", "--model", "iris", "--input", "nope", "--data", "1"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("its inputs: [\"input\"]"), "{stderr}");
    let mut watch = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "watch", "--name", "iris"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let first = {
        let stdout = watch.stdout.take().context("stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        });
        tokio::time::timeout(Duration::from_secs(10), line).await???
    };
    let _ = watch.kill();
    ensure!(first.starts_with('#') && first.contains("snapshot") && first.contains("iris/"), "{first:?}");

    // Moved elsewhere (MLflow's Python client) since: refused, saying so.
    python(
        "from mlflow import MlflowClient; MlflowClient().set_registered_model_alias('iris', 'champion', '2')",
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    )?;
    let refused = reg.rollback(as_("tok-ci", rollback(Target::Alias("champion".into()), ""))?).await.unwrap_err();
    ensure!(refused.code() == Code::FailedPrecondition && refused.message().contains("moved elsewhere"), "{refused:?}");

    // A stage: Production back to version 1, version 2 back where it came from.
    for (version, token) in [("1", "tok-ci"), ("2", "tok-alice")] {
        let req = TransitionStageRequest {
            name: "iris".into(),
            version: version.into(),
            stage: Stage::Production.into(),
            archive_existing_versions: false,
            reason: "release".into(),
        };
        reg.transition_stage(as_(token, req)?).await?;
    }
    reg.rollback(as_("tok-alice", rollback(Target::Stage(Stage::Production.into()), "bad release"))?).await?;
    let stages = wait_for("the stages to settle", Duration::from_secs(10), || async {
        let m = reg.clone().get_model(GetModelRequest { name: "iris".into() }).await?.into_inner();
        let latest = m.model.map(|m| m.latest_versions).unwrap_or_default();
        let of = |v: &str| latest.iter().find(|l| l.version == v).map(|l| l.stage());
        Ok(Some((of("1"), of("2"))))
    })
    .await?;
    ensure!(stages == (Some(Stage::Production), Some(Stage::None)), "{stages:?}");
    Ok(())
}

#[tokio::test]
async fn the_registry_does_not_start_open_unless_told_to() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = [
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:9".to_owned()),
        ("FERRY_REGISTRY_GRPC_ADDR", format!("127.0.0.1:{}", ferry_e2e::free_port())),
        ("FERRY_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{}", ferry_e2e::free_port())),
        ("FERRY_REGISTRY_METRICS_ADDR", format!("127.0.0.1:{}", ferry_e2e::free_port())),
    ];
    let mut proc = ferry_e2e::ferry("ferry-registry", dir.path(), &[], &env)?;
    let status = proc.wait_exit(Duration::from_secs(20))?;
    ensure!(!status.success(), "started with every mutating call open");
    let log = std::fs::read_to_string(&proc.log)?;
    ensure!(log.contains("FERRY_ALLOW_UNAUTHENTICATED") && log.contains("no FERRY_REGISTRY_TOKEN"), "{log}");
    Ok(())
}
