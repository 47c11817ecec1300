//! TLS for Ferry's listeners and for its own clients, by configuration.
//!
//! Servers: one certificate for every listener of a service (gRPC, HTTP,
//! metrics); with a client CA the gRPC listener also requires a client
//! certificate signed by it (mutual TLS: how inference proves itself to the
//! registry). HTTP listeners never require one: browsers, MLflow's webhook
//! sender and Prometheus authenticate with tokens, API keys or not at all.
//! The files are read again when they change (cert-manager renews in place),
//! without a restart; a bad new file keeps the old certificate serving.
//!
//! Clients: the configured CA, or the system's trust store when none is
//! configured (as `curl --cacert` and Python's `verify=` do), and a client
//! certificate when one is configured, for tonic channels and reqwest clients
//! alike. rustls with aws-lc-rs, the provider reqwest already brings, so the
//! build has one crypto provider.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};

/// How often certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsError {
    fn file(what: &str, path: &Path, e: impl fmt::Display) -> Self {
        Self(format!("{what} {}: {e}", path.display()))
    }
}

/// What a service serves TLS with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain presented on every listener (gRPC, HTTP, metrics); with
    /// --tls-key set, every listener speaks TLS only. Reloaded when the file changes.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: the gRPC listener then requires a client certificate
    /// signed by one of them (mutual TLS). HTTP listeners never require one.
    #[arg(long, env = "FERRY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// How this process connects to other Ferry services over TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificates that Ferry's own https:// connections trust instead of the
    /// system's: the registry, its peers, remote OIP servers.
    #[arg(long, env = "FERRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate presented as a client (mutual TLS with a registry that
    /// sets FERRY_TLS_CLIENT_CA), with --tls-client-key.
    #[arg(long, env = "FERRY_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "FERRY_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

/// Which kind of listener a connection arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Requires a client certificate when a client CA is configured.
    Grpc,
    /// HTTP APIs and metrics: server authentication only.
    Http,
}

/// The server side: current configurations, swapped when the files change.
pub struct ServerTls {
    args: ServerTlsArgs,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
    stamp: Mutex<Vec<Option<SystemTime>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("args", &self.args).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `None` when no certificate is configured (plain listeners); an error
    /// names the file that is missing or not what it should be.
    pub fn load(args: &ServerTlsArgs) -> Result<Option<Arc<Self>>, TlsError> {
        if args.tls_cert.is_none() {
            return Ok(None);
        }
        let (grpc, http) = Self::configs(args)?;
        let tls = Arc::new(Self {
            args: args.clone(),
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
            stamp: Mutex::new(stamps(args)),
        });
        spawn_reload(Arc::downgrade(&tls));
        Ok(Some(tls))
    }

    /// The configuration a new connection on `port` is accepted with.
    pub fn config(&self, port: Port) -> Arc<ServerConfig> {
        match port {
            Port::Grpc => self.grpc.load_full(),
            Port::Http => self.http.load_full(),
        }
    }

    pub fn requires_client_certificate(&self) -> bool {
        self.args.tls_client_ca.is_some()
    }

    fn configs(args: &ServerTlsArgs) -> Result<(ServerConfig, ServerConfig), TlsError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Err(TlsError("TLS needs both a certificate and its key".into()));
        };
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::file("TLS key", key, e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))
        };
        let finish = |b: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>| {
            let mut config = b
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsError::file("TLS certificate and key", cert, e))?;
            // gRPC needs h2; the HTTP ports and grpc-web also answer HTTP/1.1.
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok::<_, TlsError>(config)
        };
        let http = finish(builder()?.with_no_client_auth())?;
        let grpc = match &args.tls_client_ca {
            None => http.clone(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
                    .build()
                    .map_err(|e| TlsError::file("TLS client CA", ca, e))?;
                finish(builder()?.with_client_cert_verifier(verifier))?
            }
        };
        Ok((grpc, http))
    }

    /// Loads the files again if any changed; a failure keeps the current
    /// configuration (and is tried again at the next change).
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.args);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let (grpc, http) = Self::configs(&self.args)?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        Ok(true)
    }
}

fn stamps(args: &ServerTlsArgs) -> Vec<Option<SystemTime>> {
    [&args.tls_cert, &args.tls_key, &args.tls_client_ca]
        .into_iter()
        .map(|p| p.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
        .collect()
}

/// Checks the files every [`RELOAD_EVERY`] for as long as the configuration is in use.
fn spawn_reload(tls: Weak<ServerTls>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let Some(tls) = tls.upgrade() else { return };
            match tls.reload_if_changed() {
                Ok(true) => tracing::info!(cert = ?tls.args.tls_cert, "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "TLS files changed but cannot be loaded; still serving the previous certificate"),
            }
        }
    });
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_in(&read("TLS certificate file", path)?, path)
}

/// The certificates in `pem`, read from `path` (named in errors).
fn certificates_in(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file("TLS certificate file", path, e))?;
    if certs.is_empty() {
        return Err(TlsError::file("TLS certificate file", path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    roots_in(&read("TLS CA file", path)?, path)
}

fn roots_in(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates_in(pem, path)? {
        store.add(cert).map_err(|e| TlsError::file("TLS CA file", path, e))?;
    }
    Ok(store)
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(what, path, e))
}

/// The client side: the trust anchors (a configured CA, else the system's)
/// and an optional client identity, for tonic endpoints and reqwest clients alike.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<Vec<u8>>,
    /// Certificate chain and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("extra_ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    pub fn load(args: &ClientTlsArgs) -> Result<Self, TlsError> {
        let identity = match (&args.tls_client_cert, &args.tls_client_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        Self::from_files(args.tls_ca.as_deref(), identity)
    }

    /// Trust `ca` (PEM, instead of the system's roots) and present `identity`
    /// (certificate, key; both may be the same PEM file holding the two).
    pub fn from_files(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        // Each file read once, checked here so that a bad one fails at start-up.
        let ca = match ca {
            Some(path) => {
                let pem = read("TLS CA file", path)?;
                roots_in(&pem, path)?;
                Some(pem)
            }
            None => None,
        };
        let identity = match identity {
            Some((cert_path, key_path)) => {
                let cert = read("TLS client certificate", cert_path)?;
                certificates_in(&cert, cert_path)?;
                let key = if key_path == cert_path { cert.clone() } else { read("TLS client key", key_path)? };
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::file("TLS client key", key_path, e))?;
                Some((cert, key))
            }
            None => None,
        };
        Ok(Self { ca, identity })
    }

    /// A gRPC endpoint for `url`: TLS when it is `https://`, verifying the
    /// server against the configured CA, or the system's roots.
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, TlsError> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| TlsError(format!("bad URL {url:?}: {e}")))?;
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint.tls_config(config).map_err(|e| TlsError(format!("TLS for {url}: {e}")))
    }

    /// `builder` trusting the configured CA instead of the system's roots, if
    /// one is configured, and presenting the client certificate, if any.
    pub fn http(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, TlsError> {
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| TlsError(format!("TLS CA: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &self.identity {
            let mut pem = cert.clone();
            if cert != key {
                pem.push(b'\n');
                pem.extend_from_slice(key);
            }
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| TlsError(format!("TLS client certificate: {e}")))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }

    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }
}

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests;
