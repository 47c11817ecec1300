//! Where a model version's files are read from: MLflow's artifact proxy
//! (`mlflow-artifacts:/…`, MLflow 3's default) or, when the server does not
//! proxy artifacts, the object store itself (`s3://…`: AWS, DigitalOcean
//! Spaces, MinIO) through the `object_store` crate, with credentials from the
//! variables MLflow's own clients read (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `MLFLOW_S3_ENDPOINT_URL`).
//! `fetch.rs` asks both the same two things: list a folder, read a file from
//! an offset on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{GetOptions, GetRange, ObjectStore, aws::AmazonS3Builder, path::Path as StorePath};

/// A failure to list or read, and whether the thing is simply not there.
#[derive(Debug)]
pub(crate) struct StoreError {
    pub(crate) not_found: bool,
    pub(crate) message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failed(message: String) -> StoreError {
    StoreError { not_found: false, message }
}

/// A file's bytes from an offset on.
pub(crate) struct Reading {
    pub(crate) bytes: BoxStream<'static, Result<Bytes, String>>,
    /// False when the store ignored the offset and sends the whole file.
    pub(crate) from_offset: bool,
}

/// One model version's directory in its store.
pub(crate) enum Source {
    Proxy {
        mlflow: ferry_mlflow::Client,
        uri: String,
    },
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        uri: String,
    },
    /// The registry's copy (`registry.rs`), so the fleet does not each ask MLflow.
    Registry(Box<super::registry::RegistryFiles>),
}

impl Source {
    pub(crate) fn uri(&self) -> &str {
        match self {
            Source::Proxy { uri, .. } | Source::S3 { uri, .. } => uri,
            Source::Registry(r) => &r.uri,
        }
    }

    /// The files directly in `folder` (relative to the version's directory,
    /// `""` for its root): base name and size, when the store gives one.
    pub(crate) async fn list(&self, folder: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        match self {
            Source::Proxy { mlflow, uri } => {
                let uri = join(uri, folder);
                let files = mlflow.list_artifacts(&uri).await.map_err(|e| failed(format!("listing {uri}: {e}")))?;
                Ok(files
                    .into_iter()
                    .filter(|f| !f.is_dir)
                    .map(|f| {
                        let base = f.path.rsplit('/').next().unwrap_or(&f.path).to_owned();
                        (base, f.file_size.and_then(|n| u64::try_from(n).ok()))
                    })
                    .collect())
            }
            Source::S3 { store, prefix, uri } => {
                let path = StorePath::from(join(prefix, folder));
                let listed = store
                    .list_with_delimiter(Some(&path))
                    .await
                    .map_err(|e| failed(format!("listing {}: {e}", join(uri, folder))))?;
                Ok(listed
                    .objects
                    .into_iter()
                    .filter_map(|o| o.location.filename().map(|n| (n.to_owned(), Some(o.size))))
                    .collect())
            }
            Source::Registry(r) => r.list(folder).await,
        }
    }

    /// Starts reading `rel` (relative to the version's directory) at `offset`.
    pub(crate) async fn read(&self, rel: &str, offset: u64) -> Result<Reading, StoreError> {
        match self {
            Source::Proxy { mlflow, uri } => {
                let uri = join(uri, rel);
                let resp = mlflow.download_artifact(&uri, offset).await.map_err(|e| StoreError {
                    not_found: e.is_not_found(),
                    message: format!("downloading {uri}: {e}"),
                })?;
                let from_offset = offset == 0 || resp.status() == http::StatusCode::PARTIAL_CONTENT;
                let bytes = resp.bytes_stream().map_err(move |e| format!("downloading {uri}: {e}")).boxed();
                Ok(Reading { bytes, from_offset })
            }
            Source::S3 { store, prefix, uri } => {
                let path = StorePath::from(join(prefix, rel));
                let opts = GetOptions { range: (offset > 0).then_some(GetRange::Offset(offset)), ..Default::default() };
                let shown = join(uri, rel);
                let got = store.get_opts(&path, opts).await.map_err(|e| StoreError {
                    not_found: matches!(e, object_store::Error::NotFound { .. }),
                    message: format!("downloading {shown}: {e}"),
                })?;
                let bytes = got.into_stream().map_err(move |e| format!("downloading {shown}: {e}")).boxed();
                Ok(Reading { bytes, from_offset: true })
            }
            Source::Registry(r) => r.read(rel, offset).await,
        }
    }
}

fn join(base: &str, rel: &str) -> String {
    match (base.trim_end_matches('/'), rel.trim_matches('/')) {
        (b, "") => b.to_owned(),
        ("", r) => r.to_owned(),
        (b, r) => format!("{b}/{r}"),
    }
}

/// Object-store clients, one per bucket, made on first use.
#[derive(Default, Clone)]
pub(crate) struct Stores {
    s3: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores")
    }
}

impl Stores {
    /// The store a version's resolved source URI lives in.
    pub(crate) fn source(&self, mlflow: &ferry_mlflow::Client, uri: &str) -> Result<Source, String> {
        let uri = uri.trim_end_matches('/').to_owned();
        if uri.starts_with("mlflow-artifacts:") {
            return Ok(Source::Proxy { mlflow: mlflow.clone(), uri });
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.split('/').any(|s| s == "..") {
                return Err(format!("{uri} is not an s3://bucket/key URI"));
            }
            let store = self.s3(bucket)?;
            return Ok(Source::S3 { store, prefix: key.to_owned(), uri });
        }
        Err(format!(
            "{uri}: Ferry reads model files through MLflow's artifact proxy (mlflow-artifacts:/) or from S3-compatible \
             storage (s3://)"
        ))
    }

    fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let mut stores = self.s3.lock().map_err(|_| "object-store clients poisoned".to_owned())?;
        if let Some(s) = stores.get(bucket) {
            return Ok(Arc::clone(s));
        }
        // The AWS_* variables (keys, region, AWS_ENDPOINT_URL), then MLflow's
        // own name for a non-AWS endpoint (Spaces, MinIO).
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var_os("AWS_REGION").is_none()
            && let Ok(region) = std::env::var("AWS_DEFAULT_REGION")
        {
            builder = builder.with_region(region);
        }
        // A private CA for the store, under the name boto3 (and so MLflow) reads.
        if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE") {
            let pem = std::fs::read(&bundle).map_err(|e| format!("AWS_CA_BUNDLE {}: {e}", bundle.display()))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("AWS_CA_BUNDLE {}: {e}", bundle.display()))?;
            let options = certs.into_iter().fold(object_store::ClientOptions::new(), |o, c| o.with_root_certificate(c));
            builder = builder.with_client_options(options);
        }
        if let Ok(endpoint) = std::env::var("MLFLOW_S3_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT_URL")) {
            builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
        }
        // The error names the missing setting, never a credential's value.
        let store: Arc<dyn ObjectStore> =
            Arc::new(builder.build().map_err(|e| format!("S3 client for bucket {bucket:?}: {e}"))?);
        stores.insert(bucket.to_owned(), Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths() {
        assert_eq!(join("s3://b/k/", "model.onnx"), "s3://b/k/model.onnx");
        assert_eq!(join("k", ""), "k");
        assert_eq!(join("", "w/x.data"), "w/x.data");
    }

    #[test]
    fn sources_by_scheme() {
        let mlflow =
            ferry_mlflow::Client::new(ferry_mlflow::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let stores = Stores::default();
        assert!(matches!(stores.source(&mlflow, "mlflow-artifacts:/1/m/artifacts/"), Ok(Source::Proxy { .. })));
        match stores.source(&mlflow, "s3://bucket/root/1/models/m-1/artifacts") {
            Ok(Source::S3 { prefix, .. }) => assert_eq!(prefix, "root/1/models/m-1/artifacts"),
            Ok(Source::Proxy { .. } | Source::Registry(_)) | Err(_) => panic!("not an S3 source"),
        }
        for bad in ["s3:///key", "s3://b/../x", "gs://b/k", "/local/path", "file:///x"] {
            assert!(stores.source(&mlflow, bad).is_err(), "{bad}");
        }
    }
}
