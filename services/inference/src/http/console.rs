//! The browser console: one page (`console.html`, compiled into the binary,
//! no CDN) that shows what this process serves — each model's version,
//! state, variants and last error, its request rate and latency from the
//! service's own counters — lists changes live (server-sent events: what it
//! serves, and the registry's `ModelChanged` stream as it arrives), and
//! sends a prediction through a form built from the model's signature
//! (`/v1/predict`, same origin).

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::State,
    http::header,
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::Stream;
use serde_json::{Value, json};

use super::{AppState, model_json};
use crate::serving::Models;

/// How often the event stream looks for changes.
const EVERY: Duration = Duration::from_millis(500);

pub(super) async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        include_str!("console.html"),
    )
}

/// Every model as `/v1/models` shows it, with its signature and cumulative request counters.
fn snapshot(models: &Models) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let spec = |t: &crate::tensor::TensorSpec| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape});
    let list: Vec<Value> = models
        .slots()
        .map(|slot| {
            let status = slot.status();
            let mut m = model_json(&status);
            let sig = status.signature.unwrap_or_default();
            m["inputs"] = sig.inputs.iter().map(spec).collect();
            m["outputs"] = sig.outputs.iter().map(spec).collect();
            m["requests"] = json!(slot.stats.success_count.load(Relaxed));
            m["failures"] = json!(slot.stats.fail_count.load(Relaxed));
            m["requestNanos"] = json!(slot.stats.success_ns.load(Relaxed));
            m
        })
        .collect();
    json!({ "models": list })
}

pub(super) async fn state(State(st): State<AppState>) -> Json<Value> {
    Json(snapshot(&st.models))
}

/// What a change is: versions and states (not counters, which move with every request).
fn serving_view(snapshot: &Value) -> Value {
    let models = snapshot["models"].as_array().cloned().unwrap_or_default();
    Value::Array(
        models
            .iter()
            .map(|m| json!([m["name"], m["servingVersion"], m["state"], m["variants"], m["lastError"]]))
            .collect(),
    )
}

/// `change` events carrying the whole state, sent when what serves changes,
/// and `registry` events: the changes the registry streams, as they arrive.
pub(super) async fn events(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = st.models.watch_changes();
    let stream = futures::stream::unfold((st, changes, Value::Null), |(st, mut changes, last)| async move {
        loop {
            let now = snapshot(&st.models);
            let view = serving_view(&now);
            if view != last {
                let event = Event::default().event("change").data(now.to_string());
                return Some((Ok(event), (st, changes, view)));
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                got = changes.recv() => {
                    if let Ok(c) = got {
                        let data = json!({"revision": c.revision, "kind": c.kind, "name": c.name,
                                          "version": c.version, "alias": c.alias});
                        let event = Event::default().event("registry").data(data.to_string());
                        return Some((Ok(event), (st, changes, last)));
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
