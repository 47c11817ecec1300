//! The registry's browser console (`/console` on the HTTP port): registered
//! models with their aliases, stages, traffic policy and last rollout
//! decision, the recent moves (who, when, why), and the changes the registry
//! streams, live (server-sent events from the same hub as `WatchModels`).
//! One page compiled into the binary, no CDN; reads follow the registry's
//! access rules (with `FERRY_PROTECT_READS` the page asks for a token and
//! sends it as a bearer header).

use std::convert::Infallible;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, header},
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    auth::{Access, Auth},
    history,
    http::ApiError,
    service::Registry,
};

/// Models shown at once (one MLflow call reads them all, with their tags).
const MODELS: i32 = 100;

#[derive(Clone)]
struct Console {
    registry: Registry,
    auth: Auth,
}

pub(crate) fn routes(registry: Registry, auth: Auth) -> Router {
    Router::new()
        .route("/console", get(page))
        .route("/v1/console/models", get(models))
        .route("/v1/console/events", get(events))
        .with_state(Console { registry, auth })
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        include_str!("console.html"),
    )
}

fn allow(st: &Console, headers: &HeaderMap) -> Result<(), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    st.auth.check(authorization, Access::Read).map(drop).map_err(ApiError::from)
}

async fn models(State(st): State<Console>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    allow(&st, &headers)?;
    let (models, _) = st.registry.list_models("", MODELS, "").await?;
    let list: Vec<Value> = models
        .iter()
        .map(|m| {
            let tags = m.tag_map();
            let moves = history::parse(tags.get(history::HISTORY_TAG).map(String::as_str));
            let recent: Vec<_> = moves.iter().rev().take(5).collect();
            json!({
                "name": m.name,
                "aliases": m.aliases.iter().map(|a| json!({"alias": a.alias, "version": a.version})).collect::<Vec<_>>(),
                "stages": m.latest_versions.iter().map(|v| json!({"stage": v.current_stage, "version": v.version})).collect::<Vec<_>>(),
                "policy": tags.get(ferry_traffic::POLICY_TAG).and_then(|t| serde_json::from_str::<Value>(t).ok()),
                "rollout": tags.get(crate::rollout::STATUS_TAG).and_then(|t| serde_json::from_str::<Value>(t).ok()),
                "moves": recent,
            })
        })
        .collect();
    Ok(Json(json!({ "models": list, "revision": st.registry.hub.revision() })))
}

/// The registry's changes from now on, one `change` event each.
async fn events(
    State(st): State<Console>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    allow(&st, &headers)?;
    let hub = &st.registry.hub;
    // From the current revision: no snapshot, only what happens next.
    let sub = hub.subscribe(&[], hub.revision(), hub.epoch());
    let stream = futures::stream::unfold(Some((sub.live, sub.after)), |state| async move {
        let (mut rx, after) = state?;
        loop {
            match rx.recv().await {
                Ok(e) if e.revision <= after => {}
                Ok(e) => {
                    let data = json!({
                        "revision": e.revision,
                        "kind": e.kind().as_str_name().trim_start_matches("CHANGE_KIND_").to_ascii_lowercase(),
                        "name": e.name, "version": e.version, "alias": e.alias,
                    });
                    return Some((Ok(Event::default().event("change").data(data.to_string())), Some((rx, after))));
                }
                // Fell behind: say so; the page re-reads the models.
                Err(RecvError::Lagged(_)) => {
                    return Some((Ok(Event::default().event("lagged").data("{}")), Some((rx, after))));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
