//! Prometheus metrics on their own port, rendered from the counters the
//! serving core keeps (no second bookkeeping on the request path).

use std::{fmt::Write, sync::Arc, sync::atomic::Ordering};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use ferry_telemetry::metrics::{escape as esc, header as family};

use crate::{
    error::ServeError,
    serving::{Models, SlotState},
};

/// What `/metrics` reads: the models, and the MLflow client's call statistics.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) models: Arc<Models>,
    pub(crate) mlflow: ferry_mlflow::Client,
}

pub(crate) fn router(sources: Sources) -> Router {
    Router::new().route("/metrics", get(render)).with_state(sources)
}

fn val(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

async fn render(State(src): State<Sources>) -> impl IntoResponse {
    let models = &src.models;
    let mut out = String::new();

    family(
        &mut out,
        "ferry_inference_requests_total",
        "counter",
        "Requests by API method, model, version and outcome code.",
    );
    // One snapshot per model, with its label set rendered once, for both families.
    let series: Vec<(String, _)> = models
        .slots()
        .flat_map(|s| {
            s.stats.requests.snapshot().into_iter().map(|((method, version), series)| {
                (format!("method=\"{method}\",model=\"{}\",version=\"{}\"", esc(&s.spec.name), esc(&version)), series)
            })
        })
        .collect();
    for (labels, s) in &series {
        for (i, n) in s.outcomes.iter().enumerate() {
            let n = val(n);
            if n > 0 {
                let code = if i == 0 { "ok" } else { ServeError::KINDS[i - 1] };
                let _ = writeln!(out, "ferry_inference_requests_total{{{labels},code=\"{code}\"}} {n}");
            }
        }
    }
    family(
        &mut out,
        "ferry_inference_request_duration_seconds",
        "histogram",
        "Time from decoded request to encoded answer, by API method, model and version.",
    );
    for (labels, s) in &series {
        s.duration.render(&mut out, "ferry_inference_request_duration_seconds", labels);
    }

    let model_label = |name: &str| format!("model=\"{}\"", esc(name));
    family(&mut out, "ferry_inference_queue_depth", "gauge", "Requests waiting for a model thread.");
    for s in models.slots() {
        let _ =
            writeln!(out, "ferry_inference_queue_depth{{{}}} {}", model_label(&s.spec.name), val(&s.stats.exec.queued));
    }
    family(
        &mut out,
        "ferry_inference_batch_rows",
        "histogram",
        "Rows per model call (stacked requests count together).",
    );
    for s in models.slots() {
        s.stats.exec.batch_rows.render(&mut out, "ferry_inference_batch_rows", &model_label(&s.spec.name));
    }
    family(&mut out, "ferry_inference_model_executions_total", "counter", "Model calls (a stacked batch is one).");
    for s in models.slots() {
        let _ = writeln!(
            out,
            "ferry_inference_model_executions_total{{{}}} {}",
            model_label(&s.spec.name),
            val(&s.stats.exec.executions)
        );
    }
    family(
        &mut out,
        "ferry_inference_model_loads_total",
        "counter",
        "Model version loads by result; a failure leaves the current version serving.",
    );
    for s in models.slots() {
        let m = model_label(&s.spec.name);
        let _ = writeln!(out, "ferry_inference_model_loads_total{{{m},result=\"success\"}} {}", val(&s.stats.loads));
        let _ = writeln!(
            out,
            "ferry_inference_model_loads_total{{{m},result=\"failure\"}} {}",
            val(&s.stats.load_failures)
        );
    }
    family(
        &mut out,
        "ferry_inference_model_load_duration_seconds",
        "histogram",
        "Successful loads: download, verify, load and warm-up.",
    );
    for s in models.slots() {
        s.stats.load_duration.render(
            &mut out,
            "ferry_inference_model_load_duration_seconds",
            &model_label(&s.spec.name),
        );
    }
    family(
        &mut out,
        "ferry_inference_delivery_lag_seconds",
        "histogram",
        "From the registry observing a change (or this process noticing it, when polling MLflow) to the new version serving.",
    );
    for s in models.slots() {
        s.stats.delivery_lag.render(&mut out, "ferry_inference_delivery_lag_seconds", &model_label(&s.spec.name));
    }
    family(&mut out, "ferry_inference_serving_info", "gauge", "The version each model serves, and its state.");
    for s in models.slots() {
        let st = s.status();
        let state = match st.state {
            SlotState::Pending => "pending",
            SlotState::Serving => "serving",
            SlotState::Degraded => "degraded",
            SlotState::Failed => "failed",
        };
        let version = esc(st.serving_version.as_deref().unwrap_or(""));
        let _ = writeln!(
            out,
            "ferry_inference_serving_info{{{},version=\"{version}\",state=\"{state}\"}} 1",
            model_label(&st.name)
        );
    }
    family(&mut out, "ferry_inference_ready", "gauge", "1 when every model is loaded and warm and not draining.");
    let _ = writeln!(out, "ferry_inference_ready {}", u8::from(models.is_ready()));
    src.mlflow.render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
