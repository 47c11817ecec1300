//! Brings a model version's files from its store (`store.rs`) into a local directory laid
//! out as MLflow stores it, so that ONNX Runtime finds external data beside
//! the graph, and checks them.
//!
//! What to fetch comes from the version itself: `MLmodel` names the ONNX
//! file (a model without the onnx flavor is refused, naming what it is), and
//! the ONNX file names its external data files. Each file is streamed to
//! disk, hashed on the way and checked against MLflow's artifact listing;
//! the digest over all of them (`ferry_artifact::ModelDigest`) is compared
//! with the version's `ferry.sha256` tag when it has one. A version without
//! the tag is loaded with its sizes checked and its digest recorded, and
//! said to be unverified.

use std::{collections::HashMap, path::Path, time::Duration};

use ferry_artifact::{FileDigest, MLMODEL, MlModel, ModelDigest};
use ferry_mlflow::{ModelVersion, tags};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{
    cache::{Fetched, ModelCache, RECORD},
    registry::{self, Located, RegistryClient},
    store::{Source, Stores},
};

/// `MLmodel` is a few KB of YAML; anything much larger is not one.
const MAX_MLMODEL_BYTES: u64 = 1 << 20;
/// Consecutive failed attempts (no byte gained) before a download gives up.
const RESUME_ATTEMPTS: u32 = 5;

pub(crate) struct Fetcher<'a> {
    pub(crate) mlflow: &'a ferry_mlflow::Client,
    pub(crate) stores: &'a Stores,
    /// Where this model's versions are kept.
    pub(crate) cache: &'a ModelCache,
    /// The registry followed: its copy of the files, when it serves them.
    pub(crate) registry: Option<RegistryClient>,
    /// Limit on the sum of a version's file sizes.
    pub(crate) max_bytes: u64,
    /// A download that gets no byte for this long is cut and resumed: a stalled
    /// store must not hold the slot (and every promotion after it) for the
    /// whole transfer timeout.
    pub(crate) stall: Duration,
}

impl Fetcher<'_> {
    pub(crate) async fn fetch(&self, target: &ModelVersion) -> Result<Fetched, String> {
        let expected = target.tag(tags::SHA256).map(str::to_ascii_lowercase);
        // A tag is anyone's text in MLflow: only a well-formed digest names a cached folder.
        if let Some(sha) = expected.as_deref().filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            && let Some(cached) = self.cache.cached(&target.version, sha).await
        {
            debug!(dir = %cached.dir.display(), "using the cached copy");
            return Ok(cached);
        }
        let source = self.source(target).await?;
        debug!(source = source.uri(), "fetching the model's files");
        let onnx = self.onnx_path(&source, target).await?;
        let staging = self.cache.staging().await?;
        let mut listings = Listings::default();
        let mut budget = self.max_bytes;
        let mut files = vec![self.download(&source, &onnx, staging.path(), &mut listings, &mut budget).await?];

        // The graph names the rest: external data, relative to the graph's folder.
        let graph = staging.path().join(&onnx);
        let locations = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&graph).and_then(ferry_artifact::external_data).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{onnx}: {e}"))?;
        let base = onnx.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
        for location in locations {
            let rel = format!("{base}{location}");
            if rel == RECORD || rel == MLMODEL {
                return Err(format!("{onnx} names {rel:?} as external data, which is not a data file"));
            }
            files.push(self.download(&source, &rel, staging.path(), &mut listings, &mut budget).await?);
        }

        let digest = ModelDigest::of(&files);
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        match &expected {
            Some(want) if *want != digest => {
                return Err(format!(
                    "checksum mismatch: the version's {} tag says {want}, its {} file(s) hash to {digest}",
                    tags::SHA256,
                    files.len()
                ));
            }
            Some(_) => {
                info!(
                    source = source.uri(),
                    files = files.len(),
                    bytes,
                    %digest,
                    "model downloaded and verified against its ferry.sha256 tag"
                )
            }
            None => warn!(
                source = source.uri(),
                files = files.len(),
                bytes,
                %digest,
                "version has no {} tag: sizes match the store's listing, content not verified; the digest is in the model's status",
                tags::SHA256
            ),
        }
        self.cache.keep(staging, &target.version, &onnx, &files, digest, expected.is_some()).await
    }

    /// Where to read the version's files: the registry's copy, or the store
    /// MLflow names (its artifact proxy, or S3 read directly).
    async fn source(&self, target: &ModelVersion) -> Result<Source, String> {
        let in_store =
            |uri: &str| self.stores.source(self.mlflow, uri).map_err(|e| format!("version {}: {e}", target.version));
        if let Some(client) = &self.registry {
            return match registry::locate(client, &target.name, &target.version).await {
                Ok(Located::Served(files)) => Ok(Source::Registry(files)),
                Ok(Located::Elsewhere(uri)) => in_store(&uri),
                Err(e) => Err(format!("the registry cannot locate version {}: {}", target.version, e.message())),
            };
        }
        let uri = self.mlflow.resolve_model_uri(&target.name, &target.version).await.map_err(|e| e.to_string())?;
        in_store(&uri)
    }

    /// The ONNX file's path inside the model directory: from `MLmodel`, or
    /// for a bare folder without one, from Ferry's tag or the only `.onnx` file.
    async fn onnx_path(&self, source: &Source, target: &ModelVersion) -> Result<String, String> {
        let uri = format!("{}/{MLMODEL}", source.uri());
        let version = &target.version;
        match source.read(MLMODEL, 0).await {
            Ok(mut reading) => {
                let mut raw = Vec::new();
                while let Some(chunk) = reading.bytes.next().await {
                    raw.extend_from_slice(&chunk?);
                    if raw.len() as u64 > MAX_MLMODEL_BYTES {
                        return Err(format!("{uri} is over {MAX_MLMODEL_BYTES} bytes; not an MLmodel file"));
                    }
                }
                let text = String::from_utf8(raw).map_err(|_| format!("{uri} is not UTF-8 text"))?;
                let mlmodel = MlModel::parse(&text).map_err(|e| format!("version {version}: {e}"))?;
                mlmodel.onnx_file().map_err(|e| format!("version {version} is {e}"))
            }
            Err(e) if e.not_found => {
                if let Some(p) = target.tag(tags::ARTIFACT_PATH) {
                    return ferry_artifact::validate_relative_path(p)
                        .map_err(|e| format!("{}: {e}", tags::ARTIFACT_PATH));
                }
                let dir = source.uri();
                let files = source.list("").await.map_err(|e| e.message)?;
                let mut onnx = files.into_iter().filter(|f| f.0.ends_with(".onnx"));
                match (onnx.next(), onnx.next()) {
                    (Some(f), None) => Ok(f.0),
                    (None, _) => Err(format!("version {version}: {dir} has no MLmodel and no .onnx file")),
                    (Some(_), Some(_)) => Err(format!(
                        "version {version}: {dir} has no MLmodel and several .onnx files; log it with mlflow.onnx.log_model"
                    )),
                }
            }
            Err(e) => Err(e.message),
        }
    }

    /// Streams one file of the model to `staging/rel`, hashing it, resuming
    /// after a dropped connection or a transfer cut short, and checks its
    /// size against the store's listing.
    async fn download(
        &self,
        source: &Source,
        rel: &str,
        staging: &Path,
        listings: &mut Listings,
        budget: &mut u64,
    ) -> Result<FileDigest, String> {
        let rel = ferry_artifact::validate_relative_path(rel)?;
        let listed = listings.size(source, &rel).await?;
        if let Some(n) = listed
            && n > *budget
        {
            return Err(format!("{rel} is {n} bytes, over what is left of the limit of {} bytes", self.max_bytes));
        }
        let dest = staging.join(&rel);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| e.to_string())?;
        }
        let mut out = tokio::fs::File::create(&dest).await.map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut failures = 0u32;
        // The registry's copy is not retried: on any trouble the caller reads from MLflow instead.
        let attempts = if matches!(source, Source::Registry(_)) { 1 } else { RESUME_ATTEMPTS };
        'attempt: loop {
            let mut reading = match tokio::time::timeout(self.stall, source.read(&rel, written)).await {
                Ok(r) => r.map_err(|e| e.message)?,
                Err(_) => {
                    failures += 1;
                    if failures >= attempts {
                        return Err(format!(
                            "{rel}: no answer from the store in {:?} ({failures} attempts)",
                            self.stall
                        ));
                    }
                    warn!(file = %rel, bytes = written, "the store did not answer; retrying");
                    continue 'attempt;
                }
            };
            if written > 0 && !reading.from_offset {
                // The store sent the whole file again: start over.
                out.set_len(0).await.map_err(|e| e.to_string())?;
                out.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| e.to_string())?;
                hasher = Sha256::new();
                written = 0;
            }
            loop {
                let next = match tokio::time::timeout(self.stall, reading.bytes.next()).await {
                    Err(_) => Some(Err(format!("no data for {:?} downloading {rel} at byte {written}", self.stall))),
                    Ok(next) => next,
                };
                let next = match next {
                    // A transfer that ends short of the listed size was cut: resume it.
                    None if listed.is_some_and(|n| written < n) => {
                        Some(Err(format!("the transfer of {rel} ended at byte {written}")))
                    }
                    other => other,
                };
                match next {
                    Some(Ok(chunk)) => {
                        written += chunk.len() as u64;
                        if written > *budget {
                            return Err(format!("the model's files exceed the limit of {} bytes", self.max_bytes));
                        }
                        hasher.update(&chunk);
                        out.write_all(&chunk).await.map_err(|e| format!("writing {}: {e}", dest.display()))?;
                        failures = 0;
                    }
                    None => break 'attempt,
                    Some(Err(e)) => {
                        failures += 1;
                        if failures >= attempts {
                            return Err(format!("{e} ({failures} attempts without progress)"));
                        }
                        warn!(file = %rel, bytes = written, error = %e, "download interrupted; resuming");
                        tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                        continue 'attempt;
                    }
                }
            }
        }
        out.flush().await.map_err(|e| e.to_string())?;
        if let Some(n) = listed
            && n != written
        {
            return Err(format!("{rel}: the store lists {n} bytes, the download gave {written}"));
        }
        *budget -= written;
        debug!(file = %rel, bytes = written, "downloaded");
        Ok(FileDigest { path: rel, sha256: hex::encode(hasher.finalize()), size: written })
    }
}

/// The store's listings, one call per folder.
#[derive(Default)]
struct Listings(HashMap<String, HashMap<String, Option<u64>>>);

impl Listings {
    /// The listed size of `rel` (None when the store gives none); an error
    /// when the file is not listed at all.
    async fn size(&mut self, source: &Source, rel: &str) -> Result<Option<u64>, String> {
        let (folder, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if !self.0.contains_key(folder) {
            let sizes = source.list(folder).await.map_err(|e| e.message)?.into_iter().collect();
            self.0.insert(folder.to_owned(), sizes);
        }
        match self.0.get(folder).and_then(|m| m.get(name)) {
            Some(size) => Ok(*size),
            None => Err(format!("{rel} is not among the version's files in {}", source.uri())),
        }
    }
}
