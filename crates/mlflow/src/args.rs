use std::{path::PathBuf, time::Duration};

use url::Url;

use crate::{Auth, Config};

/// MLflow connection options, shared by every service's command line. The
/// environment variable names are the MLflow Python client's own.
#[derive(Clone, clap::Args)]
pub struct MlflowArgs {
    /// MLflow tracking server URL.
    #[arg(long = "mlflow-url", env = "MLFLOW_TRACKING_URI", default_value = "http://127.0.0.1:5000")]
    pub url: Url,
    /// Basic-auth user for MLflow.
    #[arg(long = "mlflow-username", env = "MLFLOW_TRACKING_USERNAME")]
    pub username: Option<String>,
    /// Basic-auth password for MLflow.
    #[arg(long = "mlflow-password", env = "MLFLOW_TRACKING_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Bearer token for MLflow (instead of basic auth).
    #[arg(long = "mlflow-token", env = "MLFLOW_TRACKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Timeout of one MLflow metadata call, in milliseconds.
    #[arg(long = "mlflow-timeout-ms", env = "FERRY_MLFLOW_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Timeout of one artifact upload or download, in seconds.
    #[arg(long = "mlflow-transfer-timeout-s", env = "FERRY_MLFLOW_TRANSFER_TIMEOUT_S", default_value_t = 600)]
    pub transfer_timeout_s: u64,
    /// Extra attempts for MLflow calls that fail with 5xx or no connection.
    #[arg(long = "mlflow-retries", env = "FERRY_MLFLOW_RETRIES", default_value_t = 3)]
    pub retries: u32,
    /// PEM CA bundle an https:// MLflow's certificate is verified against,
    /// instead of the system's roots (a private CA).
    #[arg(long = "mlflow-ca", env = "MLFLOW_TRACKING_SERVER_CERT_PATH")]
    pub ca: Option<PathBuf>,
    /// PEM file holding the client certificate and its key, for an MLflow
    /// behind a proxy that asks for one.
    #[arg(long = "mlflow-client-cert", env = "MLFLOW_TRACKING_CLIENT_CERT_PATH")]
    pub client_cert: Option<PathBuf>,
}

impl std::fmt::Debug for MlflowArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowArgs")
            .field("url", &self.url.as_str())
            .field("auth", &self.auth())
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl MlflowArgs {
    fn auth(&self) -> Auth {
        match (&self.token, &self.username, &self.password) {
            (Some(t), _, _) => Auth::Bearer(t.clone()),
            (None, Some(u), p) => Auth::Basic { username: u.clone(), password: p.clone().unwrap_or_default() },
            (None, None, _) => Auth::None,
        }
    }

    /// The client configuration; fails when a certificate file named here cannot be read.
    pub fn config(&self) -> Result<Config, ferry_tls::TlsError> {
        let mut cfg = Config::new(self.url.clone());
        let identity = self.client_cert.as_deref().map(|both| (both, both));
        cfg.tls = ferry_tls::ClientTls::from_files(self.ca.as_deref(), identity)?;
        cfg.auth = self.auth();
        cfg.timeout = Duration::from_millis(self.timeout_ms);
        cfg.transfer_timeout = Duration::from_secs(self.transfer_timeout_s);
        cfg.retries = self.retries;
        Ok(cfg)
    }
}
