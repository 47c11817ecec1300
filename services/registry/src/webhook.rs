//! MLflow webhooks: verification of deliveries and provisioning of Ferry's own
//! webhook. A delivery is only a hint that something changed; the hub then
//! re-reads MLflow, so a lost, late or repeated delivery never corrupts state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{debug, info, warn};

use crate::auth::constant_time_eq;

/// The registry events MLflow can deliver that matter to serving.
pub const EVENTS: &[(&str, &str)] = &[
    ("REGISTERED_MODEL", "CREATED"),
    ("MODEL_VERSION", "CREATED"),
    ("MODEL_VERSION_TAG", "SET"),
    ("MODEL_VERSION_TAG", "DELETED"),
    ("MODEL_VERSION_ALIAS", "CREATED"),
    ("MODEL_VERSION_ALIAS", "DELETED"),
];

/// The name of the webhook Ferry creates and repairs in MLflow.
pub const WEBHOOK_NAME: &str = "ferry-registry";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the accepted window")]
    Stale,
}

/// What to do with a verified delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Seen before (MLflow retries with the same delivery id).
    Duplicate,
}

/// Verifies `X-MLflow-Signature: v1,<base64(HMAC-SHA256(secret, "{id}.{ts}.{body}"))>`,
/// rejects timestamps outside `window` of now, and drops repeated delivery ids.
#[derive(Debug)]
pub struct Verifier {
    secret: Vec<u8>,
    window: Duration,
    seen: Mutex<HashMap<String, Instant>>,
}

impl Verifier {
    pub fn new(secret: &str, window: Duration) -> Self {
        Self { secret: secret.as_bytes().to_vec(), window, seen: Mutex::new(HashMap::new()) }
    }

    pub fn verify(
        &self,
        delivery_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_unix: u64,
    ) -> Result<Verdict, Rejection> {
        let id = delivery_id.ok_or(Rejection::MissingHeader("X-MLflow-Delivery-Id"))?;
        let ts = timestamp.ok_or(Rejection::MissingHeader("X-MLflow-Timestamp"))?;
        let sig = signature.ok_or(Rejection::MissingHeader("X-MLflow-Signature"))?;
        let expected = sign(&self.secret, id, ts, body);
        // Several signatures may be listed, space-separated (Standard Webhooks).
        if !sig.split(' ').any(|s| constant_time_eq(s.as_bytes(), expected.as_bytes())) {
            return Err(Rejection::BadSignature);
        }
        let ts: u64 = ts.parse().map_err(|_| Rejection::Stale)?;
        if now_unix.abs_diff(ts) > self.window.as_secs() {
            return Err(Rejection::Stale);
        }
        let mut seen = self.seen.lock().expect("webhook dedup lock poisoned; this is a bug");
        // Anything older than the window can no longer pass the timestamp check.
        let horizon = self.window * 2;
        seen.retain(|_, at| at.elapsed() < horizon);
        if seen.insert(id.to_owned(), Instant::now()).is_some() {
            return Ok(Verdict::Duplicate);
        }
        Ok(Verdict::Accepted)
    }
}

/// Marks a delivery one replica passed on to the others: not passed on again.
pub const FORWARDED: &str = "x-ferry-forwarded";
/// The headers a delivery is verified by, passed on unchanged.
pub const SIGNED_HEADERS: [&str; 3] = ["x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature"];

/// The other registry replicas. Behind one Service, MLflow's webhook reaches
/// one replica; the others would learn of the change at their next poll, and
/// so would every inference replica subscribed to them. The replica that
/// verified a delivery passes it on, unchanged, to each peer: the peer
/// verifies the same signature (the shared secret never travels), and the
/// delivery id makes any second copy a duplicate — including the one a
/// replica sends itself when the peer list resolves to its own address.
///
/// Inference replicas' traffic reports are shared the same way, so that each
/// registry decides rollouts on the whole fleet's figures, not on the share
/// of replicas that report to it: a report one replica receives is signed
/// with the webhook secret and posted to each peer's `/v1/peers/traffic`.
#[derive(Clone)]
pub struct Peers {
    /// `host:port` each, resolved at every delivery (a headless Service's
    /// name resolves to every ready replica).
    targets: Vec<String>,
    http: reqwest::Client,
    /// With TLS (peers serve what this registry serves), the client for each
    /// peer address: it connects to that address and verifies the certificate
    /// against the target's name (a pod IP is in no certificate).
    tls: Option<(ferry_tls::ClientTls, PeerClients)>,
    /// Signs traffic reports passed on; without it they are not shared.
    secret: Option<Vec<u8>>,
}

/// Peer addresses whose HTTPS clients are kept (far more than replicas).
const MAX_PEER_CLIENTS: usize = 64;

/// One HTTPS client per peer address, each verifying the peers' name.
type PeerClients = Arc<Mutex<HashMap<std::net::SocketAddr, reqwest::Client>>>;

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("targets", &self.targets).finish_non_exhaustive()
    }
}

/// The headers a traffic report passed on between peers is verified by.
pub const PEER_HEADERS: [&str; 3] = ["x-ferry-peer-id", "x-ferry-peer-timestamp", "x-ferry-peer-signature"];

impl Peers {
    /// `tls`: the peers serve TLS (as this registry does) and are verified with it.
    pub fn parse(list: &str, secret: Option<&str>, tls: Option<ferry_tls::ClientTls>) -> Option<Self> {
        let targets: Vec<String> =
            list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        let secret = secret.filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec());
        let tls = tls.map(|t| (t, Arc::default()));
        (!targets.is_empty()).then_some(Self { targets, http, tls, secret })
    }

    /// The URL and client for one resolved address of `target` (`host:port`).
    fn client(
        &self,
        target: &str,
        addr: std::net::SocketAddr,
        path: &str,
    ) -> Result<(String, reqwest::Client), String> {
        let Some((tls, clients)) = &self.tls else { return Ok((format!("http://{addr}{path}"), self.http.clone())) };
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h).trim_matches(['[', ']']);
        let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = match clients.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let builder = reqwest::Client::builder().timeout(Duration::from_secs(2)).resolve(host, addr);
                let c = tls.http(builder).map_err(|e| e.to_string())?.build().map_err(|e| e.to_string())?;
                // Pod addresses change with every rollout: forget old ones rather than grow.
                if clients.len() >= MAX_PEER_CLIENTS {
                    clients.clear();
                }
                clients.insert(addr, c.clone());
                c
            }
        };
        Ok((format!("https://{target}{path}"), client))
    }

    /// Whether traffic reports are shared (a secret to sign them with).
    pub fn shares_traffic(&self) -> bool {
        self.secret.is_some()
    }

    /// Passes a replica's traffic report (encoded `ReportTrafficRequest`) on to every peer.
    pub fn share_traffic(&self, replica: &str, body: Vec<u8>) {
        let Some(secret) = &self.secret else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (id, ts) = (format!("{replica}-{}", now.as_nanos()), now.as_secs().to_string());
        let signature = sign(secret, &id, &ts, &body);
        let headers = PEER_HEADERS.into_iter().zip([id, ts, signature]).collect();
        self.post("/v1/peers/traffic", headers, body.into());
    }

    /// Passes a verified delivery on to every peer, in the background.
    pub fn forward(&self, headers: Vec<(&'static str, String)>, body: bytes::Bytes) {
        let mut headers = headers;
        headers.push((FORWARDED, "1".to_owned()));
        self.post("/webhooks/mlflow", headers, body);
    }

    fn post(&self, path: &'static str, headers: Vec<(&'static str, String)>, body: bytes::Bytes) {
        for target in self.targets.clone() {
            let (peers, headers, body) = (self.clone(), headers.clone(), body.clone());
            tokio::spawn(async move {
                let addrs = match tokio::net::lookup_host(target.as_str()).await {
                    Ok(a) => a.collect::<Vec<_>>(),
                    Err(e) => return warn!(peer = %target, error = %e, "cannot resolve a registry peer"),
                };
                for addr in addrs {
                    let (url, http) = match peers.client(&target, addr, path) {
                        Ok(c) => c,
                        Err(e) => return warn!(peer = %target, error = %e, "cannot set up TLS to a registry peer"),
                    };
                    let mut req = http.post(url);
                    for (k, v) in &headers {
                        req = req.header(*k, v);
                    }
                    match req.body(body.clone()).send().await {
                        Ok(r) if r.status().is_success() => debug!(peer = %addr, "webhook delivery passed on"),
                        Ok(r) => {
                            warn!(peer = %addr, status = %r.status(), "a registry peer refused a passed-on delivery")
                        }
                        Err(e) => warn!(peer = %addr, error = %e, "cannot pass a webhook delivery on to a peer"),
                    }
                }
            });
        }
    }
}

/// The signature header value MLflow sends for a delivery.
pub fn sign(secret: &[u8], delivery_id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Creates Ferry's webhook in MLflow, or repairs it (URL, events, secret,
/// status), retrying until MLflow answers.
pub async fn ensure(mlflow: ferry_mlflow::Client, url: String, secret: String) {
    let mut delay = Duration::from_millis(500);
    loop {
        let result = async {
            let existing = mlflow.list_webhooks().await?;
            match existing.iter().find(|w| w.name == WEBHOOK_NAME) {
                // The secret is never returned, so always rewrite it along with the rest.
                Some(w) => mlflow.update_webhook(&w.webhook_id, &url, EVENTS, &secret).await,
                None => mlflow.create_webhook(WEBHOOK_NAME, &url, EVENTS, &secret).await,
            }
        }
        .await;
        match result {
            Ok(w) => {
                info!(webhook_id = %w.webhook_id, %url, "MLflow webhook in place");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot set up the MLflow webhook yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_signs_and_deduplicates() {
        let v = Verifier::new("s3cr3t", Duration::from_secs(300));
        let body = br#"{"entity":"model_version_alias"}"#;
        let sig = sign(b"s3cr3t", "d1", "1000", body);
        assert_eq!(v.verify(Some("d1"), Some("1000"), Some(&sig), body, 1010), Ok(Verdict::Accepted));
        assert_eq!(v.verify(Some("d1"), Some("1000"), Some(&sig), body, 1011), Ok(Verdict::Duplicate));
        assert_eq!(v.verify(Some("d1"), Some("1000"), Some(&sig), b"tampered", 1010), Err(Rejection::BadSignature));
        let wrong = sign(b"other", "d2", "1000", body);
        assert_eq!(v.verify(Some("d2"), Some("1000"), Some(&wrong), body, 1010), Err(Rejection::BadSignature));
        let old = sign(b"s3cr3t", "d3", "1000", body);
        assert_eq!(v.verify(Some("d3"), Some("1000"), Some(&old), body, 2000), Err(Rejection::Stale));
        assert_eq!(
            v.verify(None, Some("1000"), Some(&old), body, 1000),
            Err(Rejection::MissingHeader("X-MLflow-Delivery-Id"))
        );
    }

    /// Peers serving TLS are reached by name (the certificate's) at each
    /// address the name resolves to, and verified against the configured CA.
    #[tokio::test]
    async fn passes_deliveries_on_to_tls_peers_verified_by_name() {
        use ferry_tls::{ClientTls, Port, ServerTls, testing::Ca};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "ferry").unwrap();
        let rogue = Ca::new(dir.path(), "rogue").unwrap();
        let server = ca.server("peer").unwrap();
        let tls = ServerTls::load(&server.server_args(None)).unwrap().unwrap();
        let listener =
            ferry_server::Listener::bind("127.0.0.1:0".parse().unwrap(), Some(&tls), Port::Http).await.unwrap();
        let port = listener.local_addr().port();
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let app = axum::Router::new().route(
            "/webhooks/mlflow",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let forwarded = headers.get(FORWARDED).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                got_tx.send((forwarded, body)).unwrap();
                async { "ok" }
            }),
        );
        let (_trigger, stop) = ferry_server::stop_signal();
        tokio::spawn(async move { ferry_server::serve_plain(listener, app, &stop).await });

        let target = format!("localhost:{port}");
        let trusting = ClientTls::from_files(Some(&ca.cert), None).unwrap();
        let peers = Peers::parse(&target, Some("s"), Some(trusting)).unwrap();
        peers.forward(vec![], bytes::Bytes::from_static(b"delivery"));
        let (forwarded, body) = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
        assert_eq!((forwarded.as_str(), body.as_str()), ("1", "delivery"));

        // A peer whose certificate the CA did not sign gets nothing.
        let untrusting = ClientTls::from_files(Some(&rogue.cert), None).unwrap();
        Peers::parse(&target, Some("s"), Some(untrusting)).unwrap().forward(vec![], bytes::Bytes::from_static(b"x"));
        assert!(tokio::time::timeout(Duration::from_millis(500), got.recv()).await.is_err());
    }
}
