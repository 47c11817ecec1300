//! One model's versions on local disk: where a download is staged, the
//! folder each version is kept in (`v<version>-<digest prefix>`, with a
//! record of its files), a kept copy found again and re-checked in one pass
//! (path and digest together), and the old ones pruned.

use std::path::{Path, PathBuf};

use ferry_artifact::{FileDigest, ModelDigest};

/// A model version's files on local disk.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// The version's directory (`<work>/<model>/v<version>-<digest prefix>`).
    pub(crate) dir: PathBuf,
    /// The ONNX file inside it; its external data sits beside it.
    pub(crate) onnx: PathBuf,
    /// `ferry_artifact::ModelDigest` over every file.
    pub(crate) digest: String,
    /// Whether `digest` was checked against the version's `ferry.sha256` tag.
    pub(crate) verified: bool,
}

/// The record kept beside the files, so a cached copy can be re-checked
/// without asking MLflow.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    onnx: String,
    /// Every file of the model, relative to its folder (re-hashed before reuse).
    files: Vec<String>,
    /// The version and the digest over its files, for a start without MLflow.
    #[serde(default)]
    version: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    verified: bool,
}

/// Beside the versions: which folder each selector served last.
const SERVED: &str = ".ferry-served.json";

pub(super) const RECORD: &str = ".ferry-files.json";

/// One model's folder under the work directory.
#[derive(Debug)]
pub(crate) struct ModelCache {
    root: PathBuf,
    /// Versions kept (the serving one included), for fast rollback.
    keep_versions: usize,
}

impl ModelCache {
    pub(crate) fn new(work_dir: &Path, model: &str, keep_versions: usize) -> Self {
        Self { root: work_dir.join(sanitize(model)), keep_versions }
    }

    fn folder(&self, version: &str, digest: &str) -> PathBuf {
        self.root.join(format!("v{}-{}", sanitize(version), &digest[..16]))
    }

    /// A copy already on disk whose files still hash to `sha`.
    pub(super) async fn cached(&self, version: &str, sha: &str) -> Option<Fetched> {
        let dir = self.folder(version, sha);
        let record: Record = serde_json::from_slice(&tokio::fs::read(dir.join(RECORD)).await.ok()?).ok()?;
        let check = dir.clone();
        let files = tokio::task::spawn_blocking(move || {
            record
                .files
                .iter()
                .map(|path| {
                    let rel = ferry_artifact::validate_relative_path(path).ok()?;
                    let (sha256, size) = ferry_artifact::hash_file(&check.join(&rel)).ok()?;
                    Some(FileDigest { path: rel, sha256, size })
                })
                .collect::<Option<Vec<_>>>()
                .map(|files| (record.onnx, files))
        })
        .await
        .ok()??;
        let (onnx, files) = files;
        let onnx = ferry_artifact::validate_relative_path(&onnx).ok()?;
        // Matched the digest asked for (a version's ferry.sha256 tag, when fetching).
        (ModelDigest::of(&files) == sha).then(|| Fetched {
            onnx: dir.join(onnx),
            dir,
            digest: sha.to_owned(),
            verified: true,
        })
    }

    /// Remembers that `selector` serves the version kept in `dir`.
    pub(super) async fn mark_served(&self, selector: &str, dir: &Path) {
        let path = self.root.join(SERVED);
        let mut served: std::collections::BTreeMap<String, String> =
            tokio::fs::read(&path).await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { return };
        served.insert(selector.to_owned(), name.to_owned());
        if let Ok(json) = serde_json::to_vec(&served) {
            let tmp = self.root.join(format!("{SERVED}.tmp"));
            if tokio::fs::write(&tmp, json).await.is_ok() {
                let _ = tokio::fs::rename(&tmp, &path).await;
            }
        }
    }

    /// Whether a version `selector` served is recorded (its files not checked).
    pub(super) async fn has_served(&self, selector: &str) -> bool {
        let Ok(bytes) = tokio::fs::read(self.root.join(SERVED)).await else { return false };
        serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&bytes)
            .is_ok_and(|s| s.contains_key(selector))
    }

    /// The version `selector` served last, if its files are still intact:
    /// what a restart serves while MLflow cannot be reached.
    pub(super) async fn last_served(&self, selector: &str) -> Option<(String, Fetched)> {
        let served: std::collections::BTreeMap<String, String> =
            serde_json::from_slice(&tokio::fs::read(self.root.join(SERVED)).await.ok()?).ok()?;
        let name = served.get(selector)?;
        // Only a folder name this cache made: never a path out of it.
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return None;
        }
        let record: Record =
            serde_json::from_slice(&tokio::fs::read(self.root.join(name).join(RECORD)).await.ok()?).ok()?;
        if record.digest.len() != 64 {
            return None;
        }
        let mut fetched = self.cached(&record.version, &record.digest).await?;
        // Intact as recorded; checked against a tag only if it was when downloaded.
        fetched.verified = record.verified;
        Some((record.version, fetched))
    }

    /// A fresh folder to download a version into, removed unless kept.
    pub(super) async fn staging(&self) -> Result<tempfile::TempDir, String> {
        tokio::fs::create_dir_all(&self.root).await.map_err(|e| format!("creating {}: {e}", self.root.display()))?;
        tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.root)
            .map_err(|e| format!("creating a staging folder in {}: {e}", self.root.display()))
    }

    /// Moves a staged version, whose `files` were hashed as they arrived,
    /// into its folder with the record that lets it be found again.
    pub(super) async fn keep(
        &self,
        staging: tempfile::TempDir,
        version: &str,
        onnx: &str,
        files: &[FileDigest],
        digest: String,
        verified: bool,
    ) -> Result<Fetched, String> {
        let record = Record {
            onnx: onnx.to_owned(),
            files: files.iter().map(|f| f.path.clone()).collect(),
            version: version.to_owned(),
            digest: digest.clone(),
            verified,
        };
        let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        tokio::fs::write(staging.path().join(RECORD), json)
            .await
            .map_err(|e| format!("writing the file record: {e}"))?;
        let dir = self.folder(version, &digest);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            // A stale or damaged copy: a serving session keeps its open files.
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        let staged = staging.keep();
        tokio::fs::rename(&staged, &dir).await.map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            format!("saving {}: {e}", dir.display())
        })?;
        Ok(Fetched { onnx: dir.join(onnx), dir, digest, verified })
    }

    /// Keeps the versions serving (every variant's) and the newest others up
    /// to `keep_versions` in all, and drops staging folders and single files left
    /// by an interrupted download or an older Ferry.
    pub(super) async fn clean(&self, serving: &[PathBuf]) {
        let Ok(mut rd) = tokio::fs::read_dir(&self.root).await else { return };
        let mut versions = Vec::new();
        while let Ok(Some(e)) = rd.next_entry().await {
            let p = e.path();
            if serving.contains(&p) {
                continue;
            }
            let Ok(meta) = e.metadata().await else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            if meta.is_dir() && name.starts_with('v') {
                versions.push((meta.modified().ok(), p));
            } else if meta.is_file() && name.ends_with(".onnx") {
                let _ = tokio::fs::remove_file(&p).await;
            } else if meta.is_dir() && name.starts_with(".staging-") {
                // Safe: this slot's one loader task both downloads and cleans up.
                let _ = tokio::fs::remove_dir_all(&p).await;
            }
        }
        versions.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, p) in versions.into_iter().skip(self.keep_versions.saturating_sub(serving.len())) {
            let _ = tokio::fs::remove_dir_all(&p).await;
        }
    }
}

/// A file-name-safe form of a model name or version: never `.`, `..` or a
/// hidden name, so it cannot step out of the folder it is joined to.
fn sanitize(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    match safe.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None if safe.is_empty() => "_".to_owned(),
        None => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages `files` (path, content) as a download would and keeps them.
    async fn keep(cache: &ModelCache, version: &str, files: &[(&str, &[u8])]) -> Fetched {
        let staging = cache.staging().await.unwrap();
        let mut digests = Vec::new();
        for (path, bytes) in files {
            std::fs::write(staging.path().join(path), bytes).unwrap();
            let (sha256, size) = ferry_artifact::hash_file(&staging.path().join(path)).unwrap();
            digests.push(FileDigest { path: (*path).to_owned(), sha256, size });
        }
        let digest = ModelDigest::of(&digests);
        cache.keep(staging, version, files[0].0, &digests, digest, true).await.unwrap()
    }

    #[tokio::test]
    async fn a_kept_version_is_found_again_only_while_its_files_are_intact() {
        let work = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(work.path(), "team/iris", 3);
        let kept = keep(&cache, "7", &[("model.onnx", b"graph"), ("model.onnx.data", b"weights")]).await;
        assert!(kept.dir.starts_with(work.path().join("team_iris")), "{}", kept.dir.display());
        assert_eq!(kept.onnx, kept.dir.join("model.onnx"));
        let found = cache.cached("7", &kept.digest).await.expect("found by version and digest");
        assert_eq!(
            (found.dir, found.onnx, found.digest.as_str()),
            (kept.dir.clone(), kept.onnx.clone(), kept.digest.as_str())
        );
        assert!(cache.cached("8", &kept.digest).await.is_none(), "another version");
        std::fs::write(kept.dir.join("model.onnx.data"), b"tampered").unwrap();
        assert!(cache.cached("7", &kept.digest).await.is_none(), "a changed data file is not reused");
    }

    #[tokio::test]
    async fn cleaning_keeps_the_newest_versions_and_drops_leftovers() {
        let work = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(work.path(), "iris", 2);
        let mut dirs = Vec::new();
        for v in 1..=3 {
            dirs.push(keep(&cache, &v.to_string(), &[("model.onnx", v.to_string().as_bytes())]).await.dir);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let leftover = cache.staging().await.unwrap().keep();
        cache.clean(&dirs[2..]).await;
        let exists: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
        assert_eq!(exists, [false, true, true], "the serving version and one more are kept");
        assert!(!leftover.exists(), "an interrupted download's staging folder is removed");
    }

    #[test]
    fn names_stay_inside_their_folder() {
        assert_eq!(sanitize("iris"), "iris");
        assert_eq!(sanitize("team/model v2"), "team_model_v2");
        for bad in ["..", ".", "", "../etc", ".hidden"] {
            let s = sanitize(bad);
            assert!(!s.starts_with('.') && !s.is_empty() && !s.contains('/'), "{bad:?} → {s:?}");
        }
    }
}
