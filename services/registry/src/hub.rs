//! The change feed. One reconciliation loop per process reads MLflow, diffs
//! it against the last view and numbers each change with a revision; every
//! `WatchModels` stream is fed from that one loop.
//!
//! MLflow's timestamps miss alias and tag changes, and stage changes emit no
//! webhook, so the loop compares stages, aliases and tags themselves.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ferry_mlflow::{Client, ModelVersion, Selector};
use ferry_proto::registry::v1::{self as pb, ChangeKind, ModelChanged};
use tokio::sync::{Notify, broadcast, watch};
use tracing::{debug, warn};

use crate::convert;

type Key = (String, u64);

#[derive(Debug, Default)]
struct View {
    versions: BTreeMap<Key, ModelVersion>,
    /// (model, alias) -> version
    aliases: BTreeMap<(String, String), String>,
    /// model -> its traffic policy tag's text
    policies: BTreeMap<String, String>,
}

impl View {
    fn aliases_of(&self, name: &str, version: &str) -> Vec<String> {
        self.aliases
            .iter()
            .filter(|((n, _), v)| n == name && v.as_str() == version)
            .map(|((_, a), _)| a.clone())
            .collect()
    }

    /// The version `selector` designates in this view, as MLflow's own
    /// resolver would: the alias's version, the highest number in the stage.
    fn designated(&self, name: &str, selector: &Selector) -> Option<Key> {
        let key = |v: &str| Some((name.to_owned(), v.parse().ok()?)).filter(|k| self.versions.contains_key(k));
        match selector {
            Selector::Version(v) => key(v),
            Selector::Alias(a) => key(self.aliases.get(&(name.to_owned(), a.clone()))?),
            Selector::Stage(s) => self
                .versions
                .range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
                .rev()
                .find(|(_, v)| v.current_stage.eq_ignore_ascii_case(s))
                .map(|(k, _)| k.clone()),
        }
    }

    fn pb_version(&self, key: &Key) -> Option<pb::ModelVersion> {
        self.versions.get(key).map(|v| convert::version(v, Some(self.aliases_of(&key.0, &v.version))))
    }
}

#[derive(Debug)]
struct State {
    revision: u64,
    view: View,
    history: VecDeque<Arc<ModelChanged>>,
}

/// Counters the registry exports as Prometheus metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    pub reconciliations_ok: std::sync::atomic::AtomicU64,
    pub reconciliations_failed: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent reading MLflow in successful reconciliations.
    pub reconcile_ns: std::sync::atomic::AtomicU64,
    pub webhooks_accepted: std::sync::atomic::AtomicU64,
    pub webhooks_duplicate: std::sync::atomic::AtomicU64,
    pub webhooks_rejected: std::sync::atomic::AtomicU64,
    pub registrations_created: std::sync::atomic::AtomicU64,
    pub registrations_existing: std::sync::atomic::AtomicU64,
}

/// Shared by the reconciler and every stream.
#[derive(Debug)]
pub struct Hub {
    pub stats: HubStats,
    epoch: String,
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<ModelChanged>>,
    poke: Notify,
    initialized: watch::Sender<bool>,
    history_limit: usize,
}

/// One model as a serving replica resolves it ([`Hub::serving`]).
#[derive(Debug)]
pub struct Serving {
    pub revision: u64,
    pub policy: Option<String>,
    pub versions: Vec<Option<pb::ModelVersion>>,
}

/// How a new subscriber starts.
#[derive(Debug)]
pub struct Subscription {
    /// Events to send first (a snapshot or the missed changes).
    pub backlog: Vec<Arc<ModelChanged>>,
    /// Live changes; skip those at or below `after`.
    pub live: broadcast::Receiver<Arc<ModelChanged>>,
    pub after: u64,
}

fn now() -> Option<prost_types::Timestamp> {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Some(prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

impl Hub {
    pub fn new(history_limit: usize, channel_capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(channel_capacity.max(16));
        let (initialized, _) = watch::channel(false);
        let epoch = format!(
            "{:x}-{:x}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            std::process::id()
        );
        Arc::new(Self {
            stats: HubStats::default(),
            epoch,
            state: Mutex::new(State { revision: 0, view: View::default(), history: VecDeque::new() }),
            tx,
            poke: Notify::new(),
            initialized,
            history_limit,
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The newest revision (the number of changes seen since start).
    pub fn revision(&self) -> u64 {
        self.state.lock().map(|s| s.revision).unwrap_or(0)
    }

    /// Ask for a reconciliation now (after a change made through Ferry).
    /// Each model's traffic policy tag, as last read from MLflow.
    pub fn policies(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .map(|st| st.view.policies.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// What a serving replica needs of one model, from the last view of
    /// MLflow: the revision it reflects, the model's traffic policy, and the
    /// version each selector designates. `None` before the first view is in.
    pub fn serving(&self, name: &str, selectors: &[Selector]) -> Option<Serving> {
        if !*self.initialized.borrow() {
            return None;
        }
        let st = self.state.lock().ok()?;
        Some(Serving {
            revision: st.revision,
            policy: st.view.policies.get(name).cloned(),
            versions: selectors
                .iter()
                .map(|s| st.view.designated(name, s).and_then(|k| st.view.pb_version(&k)))
                .collect(),
        })
    }

    /// One version as last seen, if the view has it.
    pub fn version(&self, name: &str, version: &str) -> Option<ModelVersion> {
        let key = (name.to_owned(), version.parse().ok()?);
        self.state.lock().ok()?.view.versions.get(&key).cloned()
    }

    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Waits until the first view of MLflow is in, or `timeout`.
    pub async fn wait_initialized(&self, timeout: Duration) -> bool {
        let mut rx = self.initialized.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn subscribe(&self, names: &[String], since: u64, epoch: &str) -> Subscription {
        let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
        let st = self.state.lock().expect("hub state lock poisoned; this is a bug");
        let live = self.tx.subscribe();
        let oldest = st.history.front().map_or(st.revision + 1, |e| e.revision);
        let can_resume = since > 0 && epoch == self.epoch && since <= st.revision && since + 1 >= oldest;
        let backlog = if can_resume {
            st.history.iter().filter(|e| e.revision > since && wanted(&e.name)).cloned().collect()
        } else {
            let mut out: Vec<Arc<ModelChanged>> = st
                .view
                .versions
                .keys()
                .filter(|k| wanted(&k.0))
                .map(|k| {
                    Arc::new(ModelChanged {
                        revision: st.revision,
                        kind: ChangeKind::Snapshot.into(),
                        name: k.0.clone(),
                        version: k.1.to_string(),
                        alias: String::new(),
                        model_version: st.view.pb_version(k),
                        observed_at: now(),
                        epoch: self.epoch.clone(),
                    })
                })
                .collect();
            out.push(Arc::new(ModelChanged {
                revision: st.revision,
                kind: ChangeKind::SnapshotEnd.into(),
                observed_at: now(),
                epoch: self.epoch.clone(),
                ..Default::default()
            }));
            out
        };
        Subscription { backlog, live, after: st.revision }
    }

    /// Reconciles forever: on every poll interval, and at once when poked.
    pub async fn run(self: Arc<Self>, mlflow: Client, interval: Duration, healthy: watch::Sender<bool>) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let started = std::time::Instant::now();
            match read_view(&mlflow).await {
                Ok(view) => {
                    self.stats.reconciliations_ok.fetch_add(1, Relaxed);
                    self.stats.reconcile_ns.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    self.apply(view);
                    self.initialized.send_replace(true);
                    healthy.send_replace(true);
                }
                Err(e) => {
                    self.stats.reconciliations_failed.fetch_add(1, Relaxed);
                    warn!(error = %e, "cannot read MLflow; will retry");
                    healthy.send_replace(false);
                }
            }
            tokio::select! {
                () = self.poke.notified() => {},
                () = tokio::time::sleep(interval) => {},
            }
        }
    }

    /// Diffs a fresh view against the last one and publishes the changes.
    fn apply(&self, new: View) {
        let mut st = self.state.lock().expect("hub state lock poisoned; this is a bug");
        let first = !*self.initialized.borrow();
        let changes = if first { Vec::new() } else { diff(&st.view, &new) };
        st.view = new;
        for (kind, key, alias) in changes {
            st.revision += 1;
            let event = Arc::new(ModelChanged {
                revision: st.revision,
                kind: kind.into(),
                name: key.0.clone(),
                // A model-level change (its traffic policy) names no version.
                version: if key.1 == 0 { String::new() } else { key.1.to_string() },
                alias,
                model_version: st.view.pb_version(&key),
                observed_at: now(),
                epoch: self.epoch.clone(),
            });
            debug!(revision = event.revision, ?kind, model = %event.name, version = %event.version, "change");
            st.history.push_back(Arc::clone(&event));
            while st.history.len() > self.history_limit {
                st.history.pop_front();
            }
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(event);
        }
    }
}

fn diff(old: &View, new: &View) -> Vec<(ChangeKind, Key, String)> {
    let mut out = Vec::new();
    for (key, v) in &new.versions {
        match old.versions.get(key) {
            None => out.push((ChangeKind::VersionCreated, key.clone(), String::new())),
            Some(o) => {
                if !o.current_stage.eq_ignore_ascii_case(&v.current_stage) {
                    out.push((ChangeKind::StageChanged, key.clone(), String::new()));
                }
                if o.tag_map() != v.tag_map() {
                    out.push((ChangeKind::TagsChanged, key.clone(), String::new()));
                }
            }
        }
    }
    for key in old.versions.keys().filter(|k| !new.versions.contains_key(*k)) {
        out.push((ChangeKind::VersionDeleted, key.clone(), String::new()));
    }
    let names: BTreeSet<&(String, String)> = old.aliases.keys().chain(new.aliases.keys()).collect();
    for k in names {
        let (model, alias) = k;
        match (old.aliases.get(k), new.aliases.get(k)) {
            (a, Some(b)) if a != Some(b) => {
                out.push((ChangeKind::AliasSet, (model.clone(), b.parse().unwrap_or(0)), alias.clone()));
            }
            (Some(a), None) => {
                out.push((ChangeKind::AliasDeleted, (model.clone(), a.parse().unwrap_or(0)), alias.clone()));
            }
            _ => {}
        }
    }
    let models: BTreeSet<&String> = old.policies.keys().chain(new.policies.keys()).collect();
    for m in models.into_iter().filter(|m| old.policies.get(*m) != new.policies.get(*m)) {
        out.push((ChangeKind::PolicyChanged, (m.clone(), 0), String::new()));
    }
    out
}

/// All versions (with stages and tags) and all aliases, in two paged calls.
async fn read_view(mlflow: &Client) -> ferry_mlflow::Result<View> {
    let mut view = View::default();
    let mut token: Option<String> = None;
    loop {
        let page = mlflow.search_registered_models(None, 1000, token.as_deref()).await?;
        for m in &page.items {
            for a in &m.aliases {
                view.aliases.insert((m.name.clone(), a.alias.clone()), a.version.clone());
            }
            if let Some(policy) = m.tag_map().remove(ferry_traffic::POLICY_TAG) {
                view.policies.insert(m.name.clone(), policy);
            }
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    token = None;
    loop {
        let page = mlflow.search_model_versions("", 10_000, token.as_deref()).await?;
        for v in page.items {
            view.versions.insert((v.name.clone(), v.number()), v);
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(name: &str, version: &str, stage: &str) -> ModelVersion {
        ModelVersion { name: name.into(), version: version.into(), current_stage: stage.into(), ..Default::default() }
    }

    fn view(vs: &[ModelVersion], aliases: &[(&str, &str, &str)]) -> View {
        View {
            versions: vs.iter().map(|v| ((v.name.clone(), v.number()), v.clone())).collect(),
            aliases: aliases.iter().map(|(m, a, v)| ((m.to_string(), a.to_string()), v.to_string())).collect(),
            policies: BTreeMap::new(),
        }
    }

    #[test]
    fn detects_every_kind_of_change() {
        let old =
            view(&[mv("m", "1", "Production"), mv("m", "2", "None")], &[("m", "champion", "1"), ("m", "old", "1")]);
        let mut v2 = mv("m", "2", "Production");
        v2.tags.push(ferry_mlflow::Tag { key: "k".into(), value: "v".into() });
        let new = view(&[mv("m", "1", "Archived"), v2, mv("m", "3", "None")], &[("m", "champion", "2")]);
        let kinds: Vec<(ChangeKind, u64, String)> =
            diff(&old, &new).into_iter().map(|(k, key, a)| (k, key.1, a)).collect();
        assert!(kinds.contains(&(ChangeKind::StageChanged, 1, String::new())));
        assert!(kinds.contains(&(ChangeKind::StageChanged, 2, String::new())));
        assert!(kinds.contains(&(ChangeKind::TagsChanged, 2, String::new())));
        assert!(kinds.contains(&(ChangeKind::VersionCreated, 3, String::new())));
        assert!(kinds.contains(&(ChangeKind::AliasSet, 2, "champion".into())));
        assert!(kinds.contains(&(ChangeKind::AliasDeleted, 1, "old".into())));
        assert_eq!(kinds.len(), 6);
        assert!(diff(&new, &new).is_empty());
        let mut routed = view(&[], &[]);
        routed.policies.insert("m".into(), r#"{"format":1}"#.into());
        let set: Vec<_> = diff(&view(&[], &[]), &routed).into_iter().map(|(k, key, _)| (k, key)).collect();
        assert_eq!(set, [(ChangeKind::PolicyChanged, ("m".to_owned(), 0))], "a policy set, edited or removed");
        assert_eq!(diff(&routed, &view(&[], &[])).len(), 1);
    }

    #[test]
    fn resolves_selectors_as_mlflow_does() {
        let hub = Hub::new(100, 16);
        assert!(hub.serving("m", &[]).is_none(), "no answer before the first view");
        hub.initialized.send_replace(true);
        let mut routed = view(
            &[
                mv("m", "2", "Production"),
                mv("m", "10", "production"),
                mv("m", "11", "Staging"),
                mv("n", "12", "Production"),
            ],
            &[("m", "champion", "2"), ("m", "gone", "7")],
        );
        routed.policies.insert("m".into(), "{}".into());
        hub.apply(routed);
        let sel = |s: &str| format!("m{s}").parse::<ferry_mlflow::ModelRef>().unwrap().selector;
        let got =
            hub.serving("m", &[sel(":Production"), sel("@champion"), sel("/11"), sel("@gone"), sel("/3")]).unwrap();
        let versions: Vec<Option<String>> =
            got.versions.iter().map(|v| v.as_ref().map(|v| v.version.clone())).collect();
        // The highest number in the stage (any spelling); an alias to a missing version designates nothing.
        assert_eq!(versions, [Some("10".into()), Some("2".into()), Some("11".into()), None, None]);
        assert_eq!(got.versions[1].as_ref().map(|v| v.aliases.clone()), Some(vec!["champion".to_owned()]));
        assert_eq!(got.policy.as_deref(), Some("{}"));
        assert!(hub.serving("n", &[]).unwrap().policy.is_none());
    }

    #[test]
    fn resumes_or_snapshots() {
        let hub = Hub::new(100, 16);
        hub.initialized.send_replace(true);
        hub.apply(view(&[mv("m", "1", "None")], &[]));
        hub.apply(view(&[mv("m", "1", "Production")], &[]));
        hub.apply(view(&[mv("m", "1", "Production")], &[("m", "champion", "1")]));
        let epoch = hub.epoch().to_owned();
        // Revisions: 1 created, 2 stage, 3 alias. Resume after 2: only the alias follows.
        let sub = hub.subscribe(&[], 2, &epoch);
        assert_eq!(sub.backlog.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![3]);
        assert_eq!(sub.backlog[0].kind(), ChangeKind::AliasSet);
        // Another epoch (a restarted registry): a snapshot.
        let sub = hub.subscribe(&[], 1, "other");
        assert_eq!(sub.backlog.last().map(|e| e.kind()), Some(ChangeKind::SnapshotEnd));
        assert_eq!(sub.backlog[0].model_version.as_ref().map(|v| v.aliases.clone()), Some(vec!["champion".to_owned()]));
        // Filtering by name.
        let sub = hub.subscribe(&["other-model".to_owned()], 0, "");
        assert_eq!(sub.backlog.len(), 1);
    }
}
