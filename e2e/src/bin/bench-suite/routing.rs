//! The `routing` section: what a traffic policy costs a request. One
//! inference process serves the tiny model twice — `iris` as configured, and
//! `routed` (the same file) with a 50/50 policy over two aliases of it — and
//! the two are measured alternately, round by round, over REST and gRPC.

use std::time::Duration;

use ferry_e2e::{register_file, start_inference, wait_for, wait_serving};
use ferry_load::Target;
use ferry_proto::{
    inference::v1::GetModelMetadataRequest,
    registry::v1::{SetAliasRequest, SetTrafficPolicyRequest, model_registry_client::ModelRegistryClient},
};

use tonic::transport::Channel;

use crate::{Model, Suite, load};

pub(crate) async fn section(
    suite: &mut Suite,
    tiny: &Model,
    mlflow: &str,
    registry_url: &str,
    mut client: ModelRegistryClient<Channel>,
) -> anyhow::Result<()> {
    register_file(&mut client, "routed", &tiny.file).await?;
    for alias in ["champion", "challenger"] {
        let req =
            SetAliasRequest { name: "routed".into(), alias: alias.into(), version: "1".into(), ..Default::default() };
        client.set_alias(req).await?;
    }
    let policy = serde_json::json!({"format": 1, "variants": [
        {"name": "champion", "selector": "@champion", "weight": 50},
        {"name": "challenger", "selector": "@challenger", "weight": 50}]});
    let req = SetTrafficPolicyRequest { name: "routed".into(), policy_json: policy.to_string() };
    client.set_traffic_policy(req).await?;
    let env = vec![("FERRY_LOG", "info".to_owned())];
    let mut inf =
        start_inference(&suite.dir, mlflow, Some(registry_url), "iris:Production,routed@champion", &env).await?;
    let row = [5.1, 3.5, 1.4, 0.2];
    wait_serving(&inf.client, "iris", "1", &row, Duration::from_secs(60)).await?;
    wait_serving(&inf.client, "routed", "1", &row, Duration::from_secs(60)).await?;
    wait_for("both variants to load", Duration::from_secs(60), || {
        let mut c = inf.client.clone();
        async move {
            let s = c.get_model_metadata(GetModelMetadataRequest { model: "routed".into() }).await?.into_inner();
            let v = s.model.map(|m| m.variants).unwrap_or_default();
            Ok((v.len() == 2 && v.iter().all(|v| v.serving_version == "1")).then_some(()))
        }
    })
    .await?;

    let rounds = suite.args.rounds.max(1);
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("REST /predict c=1 p50: routed − unrouted, µs", Vec::new()),
        ("REST /predict c=64: routed ÷ unrouted req/s", Vec::new()),
        ("gRPC Predict c=1 p50: routed − unrouted, µs", Vec::new()),
        ("gRPC Predict c=64: routed ÷ unrouted req/s", Vec::new()),
    ];
    let named = |name: &'static str| Model {
        name,
        file: tiny.file.clone(),
        registered: tiny.registered.clone(),
        width: tiny.width,
        output: tiny.output,
    };
    let (plain, routed) = (named("iris"), named("routed"));
    let mut errors = 0;
    for _ in 0..rounds {
        for (i, (target, url, c)) in [
            (Target::Rest, &inf.http, 1),
            (Target::Rest, &inf.http, 64),
            (Target::Grpc, &inf.grpc, 1),
            (Target::Grpc, &inf.grpc, 64),
        ]
        .into_iter()
        .enumerate()
        {
            let run = |m: &Model| {
                let mut s = suite.scenario(target, url, m, 1, c);
                s.duration = Duration::from_secs_f64(suite.args.round_duration);
                load(s)
            };
            let (a, b) = (run(&plain)?, run(&routed)?);
            errors += a.errors + b.errors;
            rows[i].1.push(if c == 1 { b.p50_us - a.p50_us } else { b.rps / a.rps });
        }
    }
    suite.table(
        &format!(
            "Routing: a 50/50 policy vs none, same model and process, {rounds} interleaved rounds of {} s",
            suite.args.round_duration
        ),
        &format!(
            "| measure | {} | median |",
            (1..=rounds).map(|r| format!("round {r}")).collect::<Vec<_>>().join(" | ")
        ),
    );
    for (what, mut v) in rows {
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        suite.line(&format!("| {what} | {} | **{median:.2}** |", cells.join(" | ")));
    }
    if errors > 0 {
        suite.line(&format!("\n{errors} requests failed"));
    }
    inf.proc.terminate(Duration::from_secs(30))?;
    Ok(())
}
