//! Prometheus metrics on their own port (FERRY_REGISTRY_METRICS_ADDR), apart
//! from the webhook receiver that MLflow must reach.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::hub::Hub;

#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) hub: Arc<Hub>,
    pub(crate) mlflow: ferry_mlflow::Client,
    pub(crate) traffic: Arc<crate::rollout::Traffic>,
    pub(crate) files: Arc<crate::files::ModelFiles>,
}

pub(crate) fn router(sources: Sources) -> Router {
    Router::new().route("/metrics", get(render)).with_state(sources)
}

async fn render(State(st): State<Sources>) -> Response {
    use std::{fmt::Write, sync::atomic::Ordering::Relaxed};
    let hub = &st.hub;
    let s = &hub.stats;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family("ferry_registry_subscribers", "gauge", "Open WatchModels streams.", &[("", hub.subscribers().to_string())]);
    family(
        "ferry_registry_changes_total",
        "counter",
        "Changes published (the newest revision).",
        &[("", hub.revision().to_string())],
    );
    family(
        "ferry_registry_reconciliations_total",
        "counter",
        "Reads of MLflow by the reconciliation loop, by result.",
        &[
            ("{result=\"success\"}", s.reconciliations_ok.load(Relaxed).to_string()),
            ("{result=\"failure\"}", s.reconciliations_failed.load(Relaxed).to_string()),
        ],
    );
    family(
        "ferry_registry_reconcile_duration_seconds_total",
        "counter",
        "Time spent reading MLflow in successful reconciliations.",
        &[("", (s.reconcile_ns.load(Relaxed) as f64 / 1e9).to_string())],
    );
    family(
        "ferry_registry_webhook_deliveries_total",
        "counter",
        "MLflow webhook deliveries, by outcome.",
        &[
            ("{result=\"accepted\"}", s.webhooks_accepted.load(Relaxed).to_string()),
            ("{result=\"duplicate\"}", s.webhooks_duplicate.load(Relaxed).to_string()),
            ("{result=\"rejected\"}", s.webhooks_rejected.load(Relaxed).to_string()),
        ],
    );
    family(
        "ferry_registry_registrations_total",
        "counter",
        "RegisterModel calls that succeeded, by whether a version was created.",
        &[
            ("{result=\"created\"}", s.registrations_created.load(Relaxed).to_string()),
            ("{result=\"existing\"}", s.registrations_existing.load(Relaxed).to_string()),
        ],
    );
    let f = &st.files.stats;
    family(
        "ferry_registry_model_file_downloads_total",
        "counter",
        "Model files downloaded from MLflow into the file cache that serves replicas.",
        &[("", f.downloads.load(Relaxed).to_string())],
    );
    family(
        "ferry_registry_model_file_reads_total",
        "counter",
        "Model files served to replicas from the file cache.",
        &[("", f.served.load(Relaxed).to_string())],
    );
    family(
        "ferry_registry_model_file_bytes_total",
        "counter",
        "Bytes of model files served to replicas from the file cache.",
        &[("", f.served_bytes.load(Relaxed).to_string())],
    );
    let decisions: Vec<_> = crate::rollout::DECISIONS
        .iter()
        .zip(&st.traffic.decisions)
        .map(|(d, n)| (format!("{{decision=\"{d}\"}}"), n.load(Relaxed).to_string()))
        .collect();
    let decisions: Vec<_> = decisions.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    family("ferry_registry_rollout_decisions_total", "counter", "Rollout decisions taken, by kind.", &decisions);
    let weights: Vec<_> = st
        .traffic
        .weights()
        .into_iter()
        .map(|(m, v, w)| (format!("{{model=\"{}\",variant=\"{}\"}}", escape(&m), escape(&v)), w.to_string()))
        .collect();
    let weights: Vec<_> = weights.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    family(
        "ferry_registry_rollout_weight_percent",
        "gauge",
        "The weight of each rollout in progress: the variant moved step by step.",
        &weights,
    );
    st.mlflow.render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
