//! Prometheus metrics on their own port, rendered from the counters the
//! serving core keeps (no second bookkeeping on the request path).

use std::{fmt::Write, sync::Arc, sync::atomic::Ordering};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

use crate::serving::{Models, SlotState, Stats};

pub(crate) fn router(models: Arc<Models>) -> Router {
    Router::new().route("/metrics", get(render)).with_state(models)
}

/// Prometheus label values escape backslashes, quotes and newlines.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn val(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Writes one metric family: its header, then one sample per model.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = (String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

async fn render(State(models): State<Arc<Models>>) -> impl IntoResponse {
    let by_result = |ok: fn(&Stats) -> u64, bad: fn(&Stats) -> u64| {
        models
            .slots()
            .flat_map(|s| {
                let m = esc(&s.spec.name);
                [
                    (format!("{{model=\"{m}\",result=\"success\"}}"), ok(&s.stats).to_string()),
                    (format!("{{model=\"{m}\",result=\"failure\"}}"), bad(&s.stats).to_string()),
                ]
            })
            .collect::<Vec<_>>()
    };
    let mut out = String::new();
    family(
        &mut out,
        "ferry_inference_requests_total",
        "counter",
        "Requests by model and result.",
        by_result(|s| val(&s.success_count), |s| val(&s.fail_count)),
    );
    let per_model = |f: &dyn Fn(&Stats) -> String| {
        models.slots().map(|s| (format!("{{model=\"{}\"}}", esc(&s.spec.name)), f(&s.stats))).collect::<Vec<_>>()
    };
    family(
        &mut out,
        "ferry_inference_request_duration_seconds_total",
        "counter",
        "Total time spent answering requests, by model.",
        per_model(&|s| ((val(&s.success_ns) + val(&s.fail_ns)) as f64 / 1e9).to_string()),
    );
    family(
        &mut out,
        "ferry_inference_model_loads_total",
        "counter",
        "Model version loads by result; a failure leaves the current version serving.",
        by_result(|s| val(&s.loads), |s| val(&s.load_failures)),
    );
    family(
        &mut out,
        "ferry_inference_model_load_duration_seconds_total",
        "counter",
        "Time spent in successful loads (download, verify, load, warm-up), by model.",
        per_model(&|s| (val(&s.load_ns) as f64 / 1e9).to_string()),
    );
    let serving = models.slots().map(|s| {
        let st = s.status();
        let state = match st.state {
            SlotState::Pending => "pending",
            SlotState::Serving => "serving",
            SlotState::Degraded => "degraded",
            SlotState::Failed => "failed",
        };
        let version = esc(st.serving_version.as_deref().unwrap_or(""));
        (format!("{{model=\"{}\",version=\"{version}\",state=\"{state}\"}}", esc(&st.name)), "1".to_owned())
    });
    family(&mut out, "ferry_inference_serving_info", "gauge", "The version each model serves, and its state.", serving);
    let ready = [(String::new(), u8::from(models.is_ready()).to_string())];
    family(
        &mut out,
        "ferry_inference_ready",
        "gauge",
        "1 when every model is loaded and warm and not draining.",
        ready,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
