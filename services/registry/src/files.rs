//! Model files for the fleet. Without this every inference replica asks
//! MLflow for each file of each version it loads, all of them at the moment
//! of a rollout: MLflow's load grows with the fleet exactly when it matters.
//! The registry downloads each file from MLflow's artifact proxy once, keeps
//! it in its cache folder and serves it to every replica (`ListModelFiles`,
//! `ReadModelFile`); MLflow sees one download per registry replica. Versions
//! whose files are in an object store (`s3://`) are read by the replicas from
//! the store itself, which scales on its own.
//!
//! Only versions in the hub's view are served, and only paths that validate
//! as relative paths inside the model directory: nothing outside the cache
//! folder is read or written. Integrity is the reader's to check: inference
//! verifies every file against the version's digest as it does for MLflow.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use ferry_mlflow::Client;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::{
    error::{RegistryError, Result},
    hub::Hub,
};

/// Listings (and download URIs) kept in memory; beyond this they are dropped wholesale.
const MAX_LISTINGS: usize = 4096;

/// Counters the registry exports as Prometheus metrics.
#[derive(Debug, Default)]
pub struct FileStats {
    /// Files downloaded from MLflow into the cache.
    pub downloads: AtomicU64,
    /// Files served from the cache (each replica's read counts once).
    pub served: AtomicU64,
    pub served_bytes: AtomicU64,
}

#[derive(Debug)]
pub struct ModelFiles {
    mlflow: Client,
    hub: Arc<Hub>,
    dir: PathBuf,
    max_bytes: u64,
    keep_versions: usize,
    /// A download from MLflow that gets no byte for this long is abandoned
    /// (the replica asking falls back to MLflow itself).
    stall: Duration,
    pub stats: FileStats,
    /// A version's model directory in MLflow: fixed once the version exists.
    /// Held across the MLflow call, so a fleet asking at once makes one.
    uris: tokio::sync::Mutex<HashMap<(String, String), String>>,
    /// Folder listings, likewise one MLflow call for the fleet.
    listings: tokio::sync::Mutex<HashMap<(String, String, String), Files>>,
    /// One download per file at a time; callers behind it read its result.
    downloading: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// One file of a version: where it is in MLflow and in the cache.
#[derive(Debug)]
pub struct Cached {
    uri: String,
    version_dir: PathBuf,
    local: PathBuf,
}

/// Where a version's files are, and whether the registry serves them.
#[derive(Debug)]
pub struct Listing {
    pub artifact_uri: String,
    pub served: bool,
    /// Base name and size of each file directly in the folder (empty unless served).
    pub files: Files,
}

/// Base name and size of each file in a folder.
pub type Files = Arc<Vec<(String, u64)>>;

impl ModelFiles {
    pub fn new(
        mlflow: Client,
        hub: Arc<Hub>,
        dir: PathBuf,
        max_bytes: u64,
        keep_versions: usize,
        stall: Duration,
    ) -> Self {
        Self {
            mlflow,
            hub,
            dir,
            max_bytes,
            keep_versions: keep_versions.max(1),
            stall,
            stats: FileStats::default(),
            uris: tokio::sync::Mutex::default(),
            listings: tokio::sync::Mutex::default(),
            downloading: Mutex::default(),
        }
    }

    /// The files directly in `folder` of a version's model directory.
    pub async fn list(&self, name: &str, version: &str, folder: &str) -> Result<Listing> {
        let folder = match folder.trim_matches('/') {
            "" => String::new(),
            f => relative(f)?,
        };
        let artifact_uri = self.uri(name, version).await?;
        if !served(&artifact_uri) {
            return Ok(Listing { artifact_uri, served: false, files: Arc::default() });
        }
        let key = (name.to_owned(), version.to_owned(), folder.clone());
        let mut listings = self.listings.lock().await;
        if let Some(files) = listings.get(&key).cloned() {
            return Ok(Listing { artifact_uri, served: true, files });
        }
        let uri = join(&artifact_uri, &folder);
        let listed =
            self.mlflow.list_artifacts(&uri).await.map_err(|e| RegistryError::mlflow(format!("listing {uri}"), e))?;
        let files: Files = Arc::new(
            listed
                .into_iter()
                .filter(|f| !f.is_dir)
                .map(|f| {
                    let base = f.path.rsplit('/').next().unwrap_or(&f.path).to_owned();
                    (base, f.file_size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
                })
                .collect(),
        );
        if listings.len() >= MAX_LISTINGS {
            listings.clear();
        }
        listings.insert(key, Arc::clone(&files));
        Ok(Listing { artifact_uri, served: true, files })
    }

    /// Where one file of a version is cached, once [`ModelFiles::fetch`] has
    /// it. A file the version does not have is `NotFound` here, before any
    /// download: callers tell "no such file" from "cannot read it now".
    pub async fn locate(&self, name: &str, version: &str, path: &str) -> Result<Cached> {
        let rel = relative(path)?;
        let (folder, base) = rel.rsplit_once('/').unwrap_or(("", &rel));
        let listing = self.list(name, version, folder).await?;
        if !listing.served {
            return Err(RegistryError::FailedPrecondition(format!(
                "model {name:?} version {version}'s files are at {}: read them from the store",
                listing.artifact_uri
            )));
        }
        if !listing.files.iter().any(|(n, _)| n == base) {
            return Err(RegistryError::NotFound(format!("model {name:?} version {version} has no file {rel}")));
        }
        let version_dir = self.dir.join(model_folder(self.mlflow.base_url().as_str(), name)).join(version);
        Ok(Cached { uri: join(&listing.artifact_uri, &rel), local: version_dir.join(&rel), version_dir })
    }

    /// Brings a located file into the cache unless it is there; one download
    /// per file at a time, later callers wait for it.
    pub async fn fetch(&self, file: &Cached) -> Result<()> {
        let lock = {
            let mut map = self.downloading.lock().map_err(|_| RegistryError::Internal("file cache poisoned".into()))?;
            Arc::clone(map.entry(file.local.clone()).or_default())
        };
        let result = async {
            let _one_at_a_time = lock.lock().await;
            if tokio::fs::metadata(&file.local).await.is_err() {
                self.download(&file.uri, &file.local).await?;
                self.stats.downloads.fetch_add(1, Relaxed);
                self.evict(&file.version_dir).await;
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            warn!(uri = %file.uri, error = %e, "cannot cache a model file; the replicas asking read it from MLflow");
        }
        drop(lock);
        if let Ok(mut map) = self.downloading.lock()
            && map.get(&file.local).is_some_and(|l| Arc::strong_count(l) == 1)
        {
            // Nobody else waits on it; a later miss makes a new one.
            map.remove(&file.local);
        }
        result
    }

    /// Opens a fetched file at `offset`.
    pub async fn open(&self, file: &Cached, offset: u64) -> Result<tokio::fs::File> {
        use tokio::io::AsyncSeekExt;
        let failed = |e: std::io::Error| RegistryError::Internal(format!("cached {}: {e}", file.uri));
        let mut f = tokio::fs::File::open(&file.local).await.map_err(failed)?;
        let size = f.metadata().await.map_err(failed)?.len();
        if offset > size {
            return Err(RegistryError::InvalidArgument(format!(
                "offset {offset} is past the end of {} ({size} bytes)",
                file.uri
            )));
        }
        f.seek(std::io::SeekFrom::Start(offset)).await.map_err(failed)?;
        self.stats.served.fetch_add(1, Relaxed);
        self.stats.served_bytes.fetch_add(size - offset, Relaxed);
        Ok(f)
    }

    /// The version's model directory in MLflow. Only versions the hub has
    /// seen are looked up, so a caller cannot make the registry ask MLflow
    /// (or fill its cache) for names it does not know.
    async fn uri(&self, name: &str, version: &str) -> Result<String> {
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RegistryError::InvalidArgument(format!("version {version:?} is not a version number")));
        }
        let key = (name.to_owned(), version.to_owned());
        let mut uris = self.uris.lock().await;
        if let Some(uri) = uris.get(&key).cloned() {
            return Ok(uri);
        }
        if self.hub.version(name, version).is_none() {
            return Err(RegistryError::NotFound(format!(
                "model {name:?} has no version {version} (as of the registry's last view of MLflow)"
            )));
        }
        let uri = self
            .mlflow
            .resolve_model_uri(name, version)
            .await
            .map_err(|e| RegistryError::mlflow(format!("download URI of {name:?} version {version}"), e))?;
        let uri = uri.trim_end_matches('/').to_owned();
        if uris.len() >= MAX_LISTINGS {
            uris.clear();
        }
        uris.insert(key, uri.clone());
        Ok(uri)
    }

    /// Streams `uri` from MLflow into `local`, through a partial file renamed
    /// into place when complete, so a reader never sees half a file.
    async fn download(&self, uri: &str, local: &Path) -> Result<()> {
        let parent = local.parent().ok_or_else(|| RegistryError::Internal("cache path has no folder".into()))?;
        let internal = |e: std::io::Error| RegistryError::Internal(format!("file cache {}: {e}", parent.display()));
        tokio::fs::create_dir_all(parent).await.map_err(internal)?;
        let partial = tempfile::Builder::new().prefix(".partial-").tempfile_in(parent).map_err(internal)?;
        let mut out = tokio::fs::File::from_std(partial.reopen().map_err(internal)?);
        let resp = self
            .mlflow
            .download_artifact(uri, 0)
            .await
            .map_err(|e| RegistryError::mlflow(format!("downloading {uri}"), e))?;
        let mut body = resp.bytes_stream();
        let mut written = 0u64;
        loop {
            let chunk = match tokio::time::timeout(self.stall, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(RegistryError::Unavailable(format!("downloading {uri}: {e}"))),
                Err(_) => {
                    return Err(RegistryError::Unavailable(format!("downloading {uri}: no byte for {:?}", self.stall)));
                }
            };
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(RegistryError::FailedPrecondition(format!(
                    "{uri} is over the limit of {} bytes",
                    self.max_bytes
                )));
            }
            out.write_all(&chunk).await.map_err(internal)?;
        }
        out.flush().await.map_err(internal)?;
        partial.persist(local).map_err(|e| internal(e.error))?;
        debug!(%uri, bytes = written, "cached a model file for the fleet");
        Ok(())
    }

    /// Keeps the newest `keep_versions` versions of the model on disk.
    async fn evict(&self, version_dir: &Path) {
        let Some(model_dir) = version_dir.parent() else { return };
        let Ok(mut entries) = tokio::fs::read_dir(model_dir).await else { return };
        let mut versions = Vec::new();
        while let Ok(Some(e)) = entries.next_entry().await {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                versions.push((n, e.path()));
            }
        }
        versions.sort_unstable_by_key(|v| std::cmp::Reverse(v.0));
        for (n, path) in versions.into_iter().skip(self.keep_versions) {
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => info!(version = n, "dropped an old version from the registry's file cache"),
                Err(e) => warn!(version = n, error = %e, "cannot drop an old version from the file cache"),
            }
        }
    }
}

/// Whether the registry serves files under this URI (MLflow's artifact proxy).
fn served(uri: &str) -> bool {
    uri.starts_with("mlflow-artifacts:")
}

/// A path from a request, accepted only as a plain relative path.
fn relative(path: &str) -> Result<String> {
    ferry_artifact::validate_relative_path(path)
        .map_err(|e| RegistryError::InvalidArgument(format!("path {path:?}: {e}")))
}

/// A model's folder in the cache: a digest of the MLflow server and the
/// model's name, so that no name (MLflow allows `/` and `..` in them) can
/// reach outside the cache, and two MLflow servers' "version 2" of a model
/// never share a folder.
fn model_folder(mlflow: &str, name: &str) -> String {
    let digest =
        Sha256::new().chain_update(mlflow.as_bytes()).chain_update([0]).chain_update(name.as_bytes()).finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn join(base: &str, rel: &str) -> String {
    match rel {
        "" => base.to_owned(),
        r => format!("{}/{r}", base.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_requests_stay_inside() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "c:\\x", "a\0b", "..", "%2e%2e/x:y"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
        assert_eq!(relative("./weights/w.data").unwrap(), "weights/w.data");
        let folder = model_folder("http://mlflow:5000/", "../../etc");
        assert!(folder.len() == 32 && folder.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(folder, model_folder("http://other:5000/", "../../etc"), "one folder per MLflow server");
        assert!(served("mlflow-artifacts:/1/models/m-1/artifacts"));
        assert!(!served("s3://bucket/1/models/m-1/artifacts"));
    }
}
