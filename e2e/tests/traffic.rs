//! Traffic policies set in MLflow: a policy written with MLflow's own Python
//! client (the registered model's `ferry.traffic` tag) splits a model's
//! traffic between two aliases by weight, routes by header exactly, keeps a
//! sticky key on one variant on two inference processes alike, and every
//! answer says which variant served it. A policy edited by hand into nonsense
//! is reported and ignored; removing it serves the configured alias alone.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{
    Inference, Mlflow, model_status, promote, python, register_file, start_inference, start_registry, train_iris,
    two_iris_versions, wait_for, wait_serving, wait_variants,
};
use ferry_proto::{
    inference::v1::GetModelMetadataRequest,
    registry::v1::{SetAliasRequest, SetTrafficPolicyRequest},
};

const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

fn policy(champion: u32) -> String {
    serde_json::json!({
        "format": 1,
        "variants": [
            {"name": "champion", "selector": "@champion", "weight": champion},
            {"name": "challenger", "selector": "@challenger", "weight": 100 - champion},
        ],
        "sticky_header": "x-user-id",
    })
    .to_string()
}

/// Sets (or with `None` deletes) the policy tag with MLflow's Python client.
fn set_policy(mlflow: &Mlflow, text: Option<&str>) -> anyhow::Result<()> {
    let code = match text {
        Some(t) => format!(
            "from mlflow import MlflowClient; MlflowClient().set_registered_model_tag('iris', 'ferry.traffic', {})",
            serde_json::to_string(t)?
        ),
        None => "from mlflow import MlflowClient; MlflowClient().delete_registered_model_tag('iris', 'ferry.traffic')"
            .into(),
    };
    python(&code, &[("MLFLOW_TRACKING_URI", &mlflow.url)]).map(drop)
}

/// One REST `/predict` call: (variant header, model version).
async fn predict(
    http: &reqwest::Client,
    inf: &Inference,
    headers: &[(&str, &str)],
) -> anyhow::Result<(String, String)> {
    let mut req = http.post(format!("{}/predict", inf.http)).json(&serde_json::json!({"data": ROW}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    let variant = resp.headers().get("x-ferry-variant").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body: serde_json::Value = resp.json().await?;
    ensure!(body["variant"].as_str().unwrap_or_default() == variant, "body and header disagree: {body}");
    Ok((variant, body["modelVersion"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_with_mlflows_client_splits_routes_and_sticks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mlflow, mut registry) = two_iris_versions(d).await?;
    promote(&mut registry.client, "iris", "1").await?;
    for (alias, version) in [("champion", "1"), ("challenger", "2")] {
        let req =
            SetAliasRequest { name: "iris".into(), alias: alias.into(), version: version.into(), ..Default::default() };
        registry.client.set_alias(req).await?;
    }
    let a = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    let b = start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[]).await?;
    for inf in [&a, &b] {
        wait_serving(&inf.client, "iris", "1", &ROW, Duration::from_secs(60))
            .await
            .with_context(|| inf.proc.log_tail())?;
    }
    let http = reqwest::Client::new();
    let (variant, version) = predict(&http, &a, &[]).await?;
    ensure!(variant.is_empty() && version == "1", "without a policy: as configured ({variant:?}, {version})");

    // Written with MLflow's client: delivered through the registry's change stream.
    set_policy(&mlflow, Some(&policy(90)))?;
    for inf in [&a, &b] {
        wait_variants(inf, "iris", &[("champion", 90, "1"), ("challenger", 10, "2")]).await?;
    }

    // The operator's pins: one variant held at version 1, or the whole model at 2, policy or not.
    let pinned_variant = start_inference(
        d,
        &mlflow.url,
        Some(&registry.url),
        "iris@champion",
        &[("FERRY_PIN", "iris#challenger=1".into())],
    )
    .await?;
    let s = wait_variants(&pinned_variant, "iris", &[("champion", 90, "1"), ("challenger", 10, "1")]).await?;
    ensure!(s.variants[1].pinned && !s.variants[0].pinned, "{s:?}");
    let pinned_model =
        start_inference(d, &mlflow.url, Some(&registry.url), "iris@champion", &[("FERRY_PIN", "iris=2".into())])
            .await?;
    wait_serving(&pinned_model.client, "iris", "2", &ROW, Duration::from_secs(60)).await?;
    let s = model_status(&pinned_model, "iris").await?;
    ensure!(s.pinned.contains("FERRY_PIN") && s.pinned.contains("alias:champion") && s.variants.is_empty(), "{s:?}");
    ensure!(
        predict(&http, &pinned_model, &[("x-ferry-variant", "champion")]).await? == (String::new(), "2".to_owned())
    );
    drop((pinned_variant, pinned_model));

    // 2,000 requests at 90/10: the challenger's count is binomial (mean 200,
    // sd 13.4); ±5 sd fails by chance about once in 3.5 million runs.
    let mut counts = BTreeMap::new();
    for _ in 0..2000 {
        let (variant, version) = predict(&http, &a, &[]).await?;
        let want = if variant == "challenger" { "2" } else { "1" };
        ensure!(version == want, "variant {variant:?} answered with version {version}");
        *counts.entry(variant).or_insert(0u32) += 1;
    }
    let challenger = f64::from(counts.get("challenger").copied().unwrap_or(0));
    ensure!(counts.len() == 2 && (challenger - 200.0).abs() < 5.0 * 13.4, "split {counts:?}");
    eprintln!("90/10 over 2,000 requests: {counts:?}");

    // The route header names a variant exactly, over REST and gRPC.
    for _ in 0..50 {
        ensure!(predict(&http, &a, &[("x-ferry-variant", "challenger")]).await? == ("challenger".into(), "2".into()));
    }
    let mut req = tonic::Request::new(ferry_e2e::predict_row("iris", &ROW));
    req.metadata_mut().insert("x-ferry-variant", "champion".parse()?);
    let resp = a.client.clone().predict(req).await?;
    ensure!(resp.metadata().get("x-ferry-variant").and_then(|v| v.to_str().ok()) == Some("champion"));
    let resp = resp.into_inner();
    ensure!((resp.variant.as_str(), resp.model_version.as_str()) == ("champion", "1"), "{resp:?}");

    // A sticky key: the same variant on every call and on both processes.
    let mut before = BTreeMap::new();
    for user in 0..200 {
        let key = format!("user-{user}");
        let first = predict(&http, &a, &[("x-user-id", &key)]).await?.0;
        for inf in [&a, &b, &a] {
            let again = predict(&http, inf, &[("x-user-id", &key)]).await?.0;
            ensure!(again == first, "{key}: {first} then {again}");
        }
        before.insert(key, first);
    }
    let on_challenger = before.values().filter(|v| *v == "challenger").count();
    ensure!((5..=45).contains(&on_challenger), "{on_challenger} of 200 sticky users on the 10% challenger");

    // Set through the registry (validated there): 75/25 moves only champion users, about 15% of them.
    let refused = registry
        .client
        .set_traffic_policy(SetTrafficPolicyRequest {
            name: "iris".into(),
            policy_json: policy(75).replace("@challenger", "@nobody"),
        })
        .await
        .expect_err("a selector that designates no version");
    ensure!(refused.code() == tonic::Code::InvalidArgument && refused.message().contains("nobody"), "{refused:?}");
    let set = registry
        .client
        .set_traffic_policy(SetTrafficPolicyRequest { name: "iris".into(), policy_json: policy(75) })
        .await?
        .into_inner()
        .policy
        .context("no policy")?;
    let designated: Vec<_> = set.variants.iter().map(|v| (v.name.as_str(), v.weight, v.version.as_str())).collect();
    ensure!(designated == [("champion", 75, "1"), ("challenger", 25, "2")], "{set:?}");
    for inf in [&a, &b] {
        wait_variants(inf, "iris", &[("champion", 75, "1"), ("challenger", 25, "2")]).await?;
    }
    // ferryctl reads it back with the version each variant designates.
    let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
        .args(["--registry", &registry.url, "policy", "get", "iris"])
        .output()?;
    ensure!(out.status.success(), "ferryctl policy get: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(got["variants"][1]["version"] == "2" && got["policy"]["sticky_header"] == "x-user-id", "{got}");
    // What operators read: tables for people, JSON lines for scripts.
    let ctl = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(ferry_e2e::bin_dir().join("ferryctl"))
            .args(["--registry", &registry.url, "--inference", &a.grpc])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let serving = ctl(&["serving"])?;
    ensure!(serving.lines().next().is_some_and(|h| h.starts_with("MODEL") && h.contains("VARIANT")), "{serving}");
    ensure!(serving.contains("challenger (25%)") && serving.contains("alias:challenger"), "{serving}");
    let show: serde_json::Value = serde_json::from_str(ctl(&["--output", "json", "show", "iris@challenger"])?.trim())?;
    ensure!(show["version"] == "2" && show["aliases"] == "challenger", "{show}");
    let versions = ctl(&["--output", "json", "versions", "iris"])?;
    ensure!(versions.lines().count() == 2, "{versions}");
    ensure!(ctl(&["models"])?.contains("champion→1"), "models lists aliases");
    let health = ctl(&["health"])?;
    ensure!(health.lines().filter(|l| l.contains("SERVING")).count() >= 3, "both services and the model: {health}");
    let mut moved = 0;
    for (key, first) in &before {
        let now = predict(&http, &b, &[("x-user-id", key)]).await?.0;
        if &now != first {
            ensure!(first == "champion" && now == "challenger", "{key} moved from {first} to {now}");
            moved += 1;
        }
    }
    ensure!((10..=50).contains(&moved), "{moved} of 200 sticky users moved for a 15% shift");
    eprintln!("sticky users on the challenger at 90/10: {on_challenger} of 200; moved at 75/25: {moved}");

    // An invalid policy written by hand: reported, and the last valid one stays.
    set_policy(&mlflow, Some(r#"{"format":1,"variants":[{"name":"champion","selector":"@champion","weight":80}]}"#))?;
    let s = wait_for("the invalid policy to be reported", Duration::from_secs(30), || async {
        let s = model_status(&a, "iris").await?;
        Ok((!s.policy_error.is_empty()).then_some(s))
    })
    .await?;
    ensure!(s.policy_error.contains("sum to 80"), "{}", s.policy_error);
    ensure!(
        s.variants.len() == 2 && s.variants[0].weight == 75,
        "the last valid policy stays in force: {:?}",
        s.variants
    );
    ensure!(predict(&http, &a, &[("x-ferry-variant", "challenger")]).await?.1 == "2");

    // Removed: the configured alias serves alone again.
    set_policy(&mlflow, None)?;
    wait_variants(&a, "iris", &[]).await?;
    let (variant, version) = predict(&http, &a, &[("x-ferry-variant", "challenger")]).await?;
    ensure!(variant.is_empty() && version == "1", "({variant:?}, {version})");
    Ok(())
}

/// Waits until `inf`'s shadow variant has `n` mirrored requests accounted for
/// (compared, dropped or failed), and returns its status.
async fn shadow_settled(
    inf: &Inference,
    model: &str,
    n: u64,
) -> anyhow::Result<ferry_proto::inference::v1::VariantStatus> {
    wait_for("the shadow to account for every mirrored request", Duration::from_secs(30), || async {
        let mut c = inf.client.clone();
        let s = c.get_model_metadata(GetModelMetadataRequest { model: model.into() }).await?.into_inner();
        let v = s.model.and_then(|m| m.variants.into_iter().find(|v| v.shadow_percent > 0));
        Ok(v.filter(|v| v.shadow_compared + v.shadow_dropped + v.shadow_failed >= n))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_is_compared_and_never_reaches_the_caller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    // Version 1 and 2: two MLPs with different weights; version 3: a model that does not take the input.
    for (i, seed) in [1, 2].into_iter().enumerate() {
        let file = d.join(format!("mlp-{i}.onnx"));
        ferry_e2e::make_mlp(&file, seed)?;
        register_file(&mut registry.client, "mlp", &file).await?;
    }
    let iris = d.join("iris.onnx");
    train_iris(&iris, 1.0)?;
    register_file(&mut registry.client, "mlp", &iris).await?;
    // Version 4: version 1's answers, some 70 ms later.
    let slow = d.join("mlp-slow.onnx");
    ferry_e2e::make_slow_twin(&d.join("mlp-0.onnx"), &slow)?;
    register_file(&mut registry.client, "mlp", &slow).await?;
    for (alias, version) in [("champion", "1"), ("twin", "1"), ("other", "2"), ("broken", "3"), ("slow", "4")] {
        let req =
            SetAliasRequest { name: "mlp".into(), alias: alias.into(), version: version.into(), ..Default::default() };
        registry.client.set_alias(req).await?;
    }
    let inf = start_inference(d, &mlflow.url, Some(&registry.url), "mlp@champion", &[]).await?;
    let row =
        |i: usize| -> Vec<f32> { (0..512).map(|j| (((i * 7919 + j * 104_729) % 1000) as f32 / 500.0) - 1.0).collect() };
    wait_serving(&inf.client, "mlp", "1", &row(0), Duration::from_secs(60))
        .await
        .with_context(|| inf.proc.log_tail())?;
    let mut baseline = Vec::new();
    for i in 0..100 {
        baseline.push(inf.client.clone().predict(ferry_e2e::predict_row("mlp", &row(i))).await?.into_inner().outputs);
    }
    // Callers' latencies, one request at a time: (p50, p99).
    let timed = |n: usize| {
        let client = inf.client.clone();
        async move {
            let mut took = Vec::with_capacity(n);
            for i in 0..n {
                let started = std::time::Instant::now();
                let resp = client.clone().predict(ferry_e2e::predict_row("mlp", &row(i % 100))).await?.into_inner();
                took.push(started.elapsed());
                ensure!(resp.model_version == "1", "{resp:?}");
            }
            took.sort();
            anyhow::Ok((took[n / 2], took[n * 99 / 100]))
        }
    };
    let alone = timed(500).await?;

    // Requests refused while version 1 loaded (wait_serving's) are not the shadow's doing.
    let errors_before = caller_errors(&inf).await?;
    let mut mirrored = 0;
    for (shadow, want_agreement) in [("twin", Some(1.0)), ("other", None), ("broken", None)] {
        let policy = serde_json::json!({
            "format": 1,
            "variants": [{"name": "champion", "selector": "@champion", "weight": 100},
                         {"name": shadow, "selector": format!("@{shadow}"), "weight": 0}],
            "shadow": {"variant": shadow, "percent": 100},
        });
        let req = SetTrafficPolicyRequest { name: "mlp".into(), policy_json: policy.to_string() };
        registry.client.set_traffic_policy(req).await?;
        let want_version = match shadow {
            "twin" => "1",
            "other" => "2",
            _ => "3",
        };
        let state = wait_for("the shadow variant to load or fail", Duration::from_secs(60), || async {
            let mut c = inf.client.clone();
            let s = c.get_model_metadata(GetModelMetadataRequest { model: "mlp".into() }).await?.into_inner();
            let v = s.model.and_then(|m| m.variants.into_iter().find(|v| v.name == shadow));
            Ok(v.filter(|v| v.serving_version == want_version).map(|v| v.state))
        })
        .await
        .with_context(|| inf.proc.log_tail())?;
        // The callers' answers: the champion's, unchanged, every one.
        for (i, want) in baseline.iter().enumerate() {
            let resp = inf.client.clone().predict(ferry_e2e::predict_row("mlp", &row(i))).await?.into_inner();
            ensure!((resp.variant.as_str(), resp.model_version.as_str()) == ("champion", "1"), "{shadow}: {resp:?}");
            ensure!(&resp.outputs == want, "{shadow}: request {i} answered differently with a shadow");
        }
        let v = shadow_settled(&inf, "mlp", 100).await?;
        eprintln!(
            "shadow {shadow} (state {state}): compared {}, dropped {}, failed {}, agreement {:?}, mean abs diff {:?}",
            v.shadow_compared, v.shadow_dropped, v.shadow_failed, v.agreement, v.mean_abs_diff
        );
        match shadow {
            "twin" => {
                ensure!(
                    v.shadow_compared > 0 && v.agreement == want_agreement && v.mean_abs_diff == Some(0.0),
                    "{v:?}"
                );
            }
            "other" => ensure!(
                v.shadow_compared > 0
                    && v.agreement.is_some_and(|a| a < 0.9)
                    && v.mean_abs_diff.is_some_and(|d| d > 0.0),
                "another model disagrees: {v:?}"
            ),
            _ => ensure!(
                v.shadow_failed > 0 && v.shadow_compared == 0,
                "a shadow that cannot take the input fails: {v:?}"
            ),
        }
        mirrored += 100;
    }
    let metrics = reqwest::get(&inf.metrics).await?.text().await?;
    ensure!(
        metrics.contains("ferry_inference_shadow_requests_total{model=\"mlp\",variant=\"broken\",result=\"failed\"}"),
        "{metrics}"
    );

    // A shadow slower than the traffic (each copy some 70 ms): the callers
    // never wait for it — a caller that did would take 70 ms — and the copies
    // it cannot take are dropped and counted, not queued.
    let policy = serde_json::json!({
        "format": 1,
        "variants": [{"name": "champion", "selector": "@champion", "weight": 100},
                     {"name": "slow", "selector": "@slow", "weight": 0}],
        "shadow": {"variant": "slow", "percent": 100},
    });
    registry
        .client
        .set_traffic_policy(SetTrafficPolicyRequest { name: "mlp".into(), policy_json: policy.to_string() })
        .await?;
    wait_variants(&inf, "mlp", &[("champion", 100, "1"), ("slow", 0, "4")]).await?;
    let shadowed = timed(500).await?;
    let v = shadow_settled(&inf, "mlp", 500).await?;
    eprintln!(
        "callers alone: p50 {:?} p99 {:?}; with a 70 ms shadow: p50 {:?} p99 {:?} (compared {}, dropped {})",
        alone.0, alone.1, shadowed.0, shadowed.1, v.shadow_compared, v.shadow_dropped
    );
    ensure!(shadowed.1 < Duration::from_millis(50), "a caller waited for the shadow: p99 {:?}", shadowed.1);
    ensure!(v.shadow_dropped > 0 && v.shadow_compared > 0 && v.agreement == Some(1.0), "{v:?}");
    mirrored += 500;
    let errors = caller_errors(&inf).await? - errors_before;
    ensure!(errors == 0, "callers saw {errors} errors over {mirrored} mirrored requests");
    Ok(())
}

/// Failed requests to `mlp` so far, from the service's own metrics.
async fn caller_errors(inf: &Inference) -> anyhow::Result<u64> {
    let metrics = reqwest::get(&inf.metrics).await?.text().await?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("ferry_inference_requests_total{")
                && l.contains("model=\"mlp\"")
                && !l.contains("code=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}
