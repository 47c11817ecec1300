//! Prometheus metrics on their own port, rendered from the counters the
//! serving core keeps (no second bookkeeping on the request path).

use std::{fmt::Write, sync::Arc, sync::atomic::Ordering};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use ferry_telemetry::metrics::{escape as esc, header as family};

use crate::{
    error::ServeError,
    serving::{ModelSlot, Models, SlotState},
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
    // One snapshot per model (per variant, for a model with a traffic policy),
    // with its label set rendered once, for both families.
    let series: Vec<(String, _)> = served(models)
        .into_iter()
        .flat_map(|(s, variant)| {
            let variant = variant.map(|v| format!(",variant=\"{}\"", esc(&v))).unwrap_or_default();
            s.stats.requests.snapshot().into_iter().map(move |((method, version), series)| {
                let labels = format!(
                    "method=\"{method}\",model=\"{}\",version=\"{}\"{variant}",
                    esc(&s.spec.name),
                    esc(&version)
                );
                (labels, series)
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
        let state = state_name(st.state);
        let version = esc(st.serving_version.as_deref().unwrap_or(""));
        let _ = writeln!(
            out,
            "ferry_inference_serving_info{{{},version=\"{version}\",state=\"{state}\"}} 1",
            model_label(&st.name)
        );
    }
    family(
        &mut out,
        "ferry_inference_variant_info",
        "gauge",
        "Each variant of a model's traffic policy: its selector, weight, serving version and state.",
    );
    for s in models.slots() {
        for v in s.status().variants {
            let _ = writeln!(
                out,
                "ferry_inference_variant_info{{{},variant=\"{}\",selector=\"{}\",weight=\"{}\",version=\"{}\",state=\"{}\"}} 1",
                model_label(&s.spec.name),
                esc(&v.name),
                esc(&v.selector),
                v.weight,
                esc(v.serving_version.as_deref().unwrap_or("")),
                state_name(v.state),
            );
        }
    }
    family(
        &mut out,
        "ferry_inference_shadow_requests_total",
        "counter",
        "Requests mirrored to a shadow variant: compared with the caller's answer, dropped (busy) or failed.",
    );
    let shadows: Vec<_> = models
        .slots()
        .flat_map(|s| {
            let name = s.spec.name.clone();
            s.status().variants.into_iter().filter(|v| v.shadow_percent > 0).map(move |v| (name.clone(), v))
        })
        .collect();
    for (model, v) in &shadows {
        let labels = format!("{},variant=\"{}\"", model_label(model), esc(&v.name));
        for (result, n) in [("compared", v.shadow_compared), ("dropped", v.shadow_dropped), ("failed", v.shadow_failed)]
        {
            let _ = writeln!(out, "ferry_inference_shadow_requests_total{{{labels},result=\"{result}\"}} {n}");
        }
    }
    family(
        &mut out,
        "ferry_inference_shadow_agreement_ratio",
        "gauge",
        "Share of compared shadow answers whose top classes matched the caller's.",
    );
    for (model, v) in &shadows {
        if let Some(a) = v.agreement {
            let _ = writeln!(
                out,
                "ferry_inference_shadow_agreement_ratio{{{},variant=\"{}\"}} {a}",
                model_label(model),
                esc(&v.name)
            );
        }
    }
    family(
        &mut out,
        "ferry_inference_shadow_mean_abs_diff",
        "gauge",
        "Mean absolute difference of a shadow variant's float outputs from the caller's answers.",
    );
    for (model, v) in &shadows {
        if let Some(d) = v.mean_abs_diff {
            let _ = writeln!(
                out,
                "ferry_inference_shadow_mean_abs_diff{{{},variant=\"{}\"}} {d}",
                model_label(model),
                esc(&v.name)
            );
        }
    }
    family(
        &mut out,
        "ferry_inference_policy_refusals_total",
        "counter",
        "Traffic policies in MLflow refused as invalid (the last valid one stays in force).",
    );
    for s in models.slots() {
        let _ = writeln!(
            out,
            "ferry_inference_policy_refusals_total{{{}}} {}",
            model_label(&s.spec.name),
            val(&s.stats.policy_refusals)
        );
    }
    family(&mut out, "ferry_inference_ready", "gauge", "1 when every model is loaded and warm and not draining.");
    let _ = writeln!(out, "ferry_inference_ready {}", u8::from(models.is_ready()));
    src.mlflow.render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn state_name(s: SlotState) -> &'static str {
    match s {
        SlotState::Pending => "pending",
        SlotState::Serving => "serving",
        SlotState::Degraded => "degraded",
        SlotState::Failed => "failed",
    }
}

/// Every slot serving requests, with its variant's name when the model has a
/// traffic policy (a slot shared by the configured selector and a variant once).
fn served(models: &Models) -> Vec<(Arc<ModelSlot>, Option<String>)> {
    let mut out = Vec::new();
    for s in models.slots() {
        match s.routing() {
            None => out.push((Arc::clone(s), None)),
            Some(r) => {
                let mut primary = false;
                for (slot, v) in r.slots.iter().zip(r.router.variants()) {
                    primary |= Arc::ptr_eq(slot, s);
                    if !out.iter().any(|(o, _): &(Arc<ModelSlot>, _)| Arc::ptr_eq(o, slot)) {
                        out.push((Arc::clone(slot), Some(v.name.clone())));
                    }
                }
                if !primary {
                    out.push((Arc::clone(s), None));
                }
            }
        }
    }
    out
}
