//! Following the registry's `WatchModels` stream: each change wakes the slot
//! of the model it names; losing the stream puts every slot on polling.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ferry_proto::registry::v1::{ChangeKind, WatchModelsRequest};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Trigger;

/// Follows `WatchModels`, resuming from the last revision after a reconnect.
/// With several registry URLs, a lost stream moves to the next one (another
/// registry replica: another epoch, so the stream starts with a snapshot and
/// no change is missed). `connected` holds the client of the registry
/// followed, while there is one: the loaders resolve through it.
pub(super) async fn follow_registry(
    urls: Vec<String>,
    tls: ferry_tls::ClientTls,
    token: super::BearerToken,
    triggers: HashMap<String, Arc<Trigger>>,
    models: Arc<crate::serving::Models>,
    connected: watch::Sender<Option<super::RegistryClient>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let names: Vec<String> = triggers.keys().cloned().collect();
    let (mut since, mut epoch) = (0u64, String::new());
    let mut backoff = Duration::from_millis(200);
    for url in urls.iter().cycle() {
        let attempt = async {
            let endpoint = tls.endpoint(url).map_err(|e| e.to_string())?;
            let client = token.client(endpoint.connect().await.map_err(|e| e.to_string())?);
            let req = WatchModelsRequest { names: names.clone(), since_revision: since, epoch: epoch.clone() };
            let mut stream = client.clone().watch_models(req).await.map_err(|e| e.message().to_owned())?.into_inner();
            info!(%url, since, "subscribed to registry changes");
            connected.send_replace(Some(client));
            loop {
                match stream.message().await {
                    Ok(Some(change)) => {
                        since = change.revision;
                        epoch = change.epoch.clone();
                        if change.kind() == ChangeKind::SnapshotEnd {
                            triggers.values().for_each(|n| n.fire(None));
                        } else if let Some(n) = triggers.get(&change.name) {
                            models.announce(crate::serving::Change {
                                revision: change.revision,
                                kind: change
                                    .kind()
                                    .as_str_name()
                                    .trim_start_matches("CHANGE_KIND_")
                                    .to_ascii_lowercase(),
                                name: change.name.clone(),
                                version: change.version.clone(),
                                alias: change.alias.clone(),
                            });
                            debug!(revision = change.revision, kind = ?change.kind(), model = %change.name, version = %change.version, "model changed");
                            let observed_at = change.observed_at.and_then(|t| {
                                SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                                    u64::try_from(t.seconds).ok()?,
                                    u32::try_from(t.nanos).ok()?,
                                ))
                            });
                            n.fire(observed_at);
                        }
                    }
                    Ok(None) => return Err::<(), String>("stream ended".into()),
                    Err(status) => return Err(status.message().to_owned()),
                }
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => return,
        };
        if connected.send_replace(None).is_some() {
            // Lost the stream: slots fall back to polling MLflow; catch up now.
            triggers.values().for_each(|n| n.fire(None));
            backoff = Duration::from_millis(200);
        }
        if let Err(e) = result {
            warn!(%url, error = %e, "registry unreachable; polling MLflow directly until it is back");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {},
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
