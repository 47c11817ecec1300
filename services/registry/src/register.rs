//! Registration: an ONNX model on local disk (one file, or the graph and its
//! external data files) becomes an MLflow model version — a run holding
//! `model/model.onnx`, its data files beside it and an onnx-flavor
//! `model/MLmodel`, as `mlflow.onnx.log_model` lays it out, the registered
//! model, and a version tagged with the model's digest
//! (`ferry_artifact::ModelDigest`).

use std::{collections::BTreeMap, io::Write, path::Path};

use ferry_mlflow::{Client, ModelVersion, RunStatus, Tag, escape_filter, tags};
use tracing::{info, warn};

use crate::{
    error::{RegistryError, Result},
    onnx::{self, OnnxInfo},
};

/// What the caller asked to register.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// Metrics and params of the training run, logged on the MLflow run.
    pub metrics: BTreeMap<String, f64>,
    pub params: BTreeMap<String, String>,
}

/// One uploaded file, already on local disk, hashed while it streamed in.
#[derive(Debug)]
pub struct UploadFile<'a> {
    /// Relative to the model directory (`model.onnx`, `weights.data`).
    pub rel: String,
    pub path: &'a Path,
    pub sha256: String,
    pub size: u64,
}

/// Every file of the uploaded model.
#[derive(Debug)]
pub struct Upload<'a> {
    pub files: Vec<UploadFile<'a>>,
    /// The caller's digest of the model, when it sent one.
    pub expected_sha256: String,
}

/// The graph among the uploaded files, checked to come with exactly the
/// external data files it references; and the model's digest.
fn check_files(upload: &Upload<'_>) -> Result<(usize, String)> {
    // (Reads only the graph's headers: external data is skipped with seeks.)
    let bad = |m: String| RegistryError::InvalidArgument(m);
    let mut seen = std::collections::BTreeSet::new();
    for f in &upload.files {
        let rel = ferry_artifact::validate_relative_path(&f.rel).map_err(|e| bad(format!("file {:?}: {e}", f.rel)))?;
        if rel != f.rel || rel == "MLmodel" || !seen.insert(rel) {
            return Err(bad(format!("file name {:?} is not allowed or sent twice", f.rel)));
        }
    }
    let graphs: Vec<usize> = (0..upload.files.len()).filter(|i| upload.files[*i].rel.ends_with(".onnx")).collect();
    let [graph] = graphs.as_slice() else {
        return Err(bad(format!(
            "send exactly one .onnx file (the graph) and its external data files; got {}",
            upload.files.iter().map(|f| f.rel.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    let g = &upload.files[*graph];
    let refs = std::fs::File::open(g.path)
        .and_then(ferry_artifact::external_data)
        .map_err(|e| bad(format!("invalid ONNX model: {e}")))?;
    let base = g.rel.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
    let wanted: std::collections::BTreeSet<String> = refs.iter().map(|r| format!("{base}{r}")).collect();
    let sent: std::collections::BTreeSet<String> =
        upload.files.iter().filter(|f| f.rel != g.rel).map(|f| f.rel.clone()).collect();
    if let Some(missing) = wanted.difference(&sent).next() {
        return Err(bad(format!("{} references external data {missing:?}, which was not uploaded", g.rel)));
    }
    if let Some(extra) = sent.difference(&wanted).next() {
        return Err(bad(format!("{extra:?} was uploaded but {} does not reference it", g.rel)));
    }
    let digests: Vec<ferry_artifact::FileDigest> = upload
        .files
        .iter()
        .map(|f| ferry_artifact::FileDigest { path: f.rel.clone(), sha256: f.sha256.clone(), size: f.size })
        .collect();
    let digest = ferry_artifact::ModelDigest::of(&digests);
    if !upload.expected_sha256.is_empty() && !upload.expected_sha256.eq_ignore_ascii_case(&digest) {
        return Err(bad(format!(
            "upload is corrupt: expected sha256 {}, received bytes hash to {digest}",
            upload.expected_sha256
        )));
    }
    Ok((*graph, digest))
}

#[derive(Debug)]
pub struct Registered {
    pub version: ModelVersion,
    /// False when identical bytes were already registered under this name.
    pub created: bool,
}

const MODEL_DIR: &str = "model";

pub fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(RegistryError::InvalidArgument("model name is required".into()));
    }
    if name.len() > 256 || name.chars().any(|c| c.is_control() || c == '/' || c == ':') {
        return Err(RegistryError::InvalidArgument(format!(
            "invalid model name {name:?}: it may not contain '/', ':' or control characters"
        )));
    }
    Ok(())
}

pub async fn register(mlflow: &Client, experiment: &str, reg: &Registration, upload: Upload<'_>) -> Result<Registered> {
    validate_name(&reg.name)?;
    // Validate before writing anything to MLflow: a bad upload leaves no trace.
    let (graph, digest) = check_files(&upload)?;
    let path = upload.files[graph].path.to_owned();
    let info = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| RegistryError::Internal(format!("reading upload: {e}")))?;
        // Mapped, not read: a model of hundreds of MB is parsed from the page
        // cache, and the weights are skipped, never copied onto the heap.
        // SAFETY: the spool file is private to this request and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| RegistryError::Internal(format!("mapping upload: {e}")))?;
        onnx::inspect(&map).map_err(|e| RegistryError::InvalidArgument(format!("invalid ONNX model: {e}")))
    })
    .await
    .map_err(|e| RegistryError::Internal(e.to_string()))??;

    if let Some(existing) = find_by_sha(mlflow, &reg.name, &digest).await? {
        info!(model = %reg.name, version = %existing.version, "identical bytes already registered");
        return Ok(Registered { version: existing, created: false });
    }

    let ctx = |what: &str| format!("registering {:?}: {what}", reg.name);
    let experiment_id =
        mlflow.ensure_experiment(experiment).await.map_err(|e| RegistryError::mlflow(ctx("experiment"), e))?;
    let run_tags = vec![
        Tag { key: "mlflow.source.name".into(), value: "ferry-registry".into() },
        Tag { key: "ferry.model_name".into(), value: reg.name.clone() },
    ];
    let run = mlflow
        .create_run(&experiment_id, &format!("register-{}", reg.name), &run_tags)
        .await
        .map_err(|e| RegistryError::mlflow(ctx("create run"), e))?;

    let logged = if reg.metrics.is_empty() && reg.params.is_empty() {
        Ok(())
    } else {
        let metrics: Vec<(String, f64)> = reg.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let params: Vec<(String, String)> = reg.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        mlflow
            .log_batch(&run.run_id, &metrics, &params)
            .await
            .map_err(|e| RegistryError::mlflow(ctx("log metrics and params"), e))
    };
    let result = match logged {
        Ok(()) => {
            let model = Model { upload: &upload, graph, digest: &digest, info: &info };
            register_in_run(mlflow, reg, &model, &run.run_id, &run.artifact_uri).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(version) => {
            if let Err(e) = mlflow.finish_run(&run.run_id, RunStatus::Finished).await {
                warn!(run_id = %run.run_id, error = %e, "could not mark the run FINISHED");
            }
            let bytes: u64 = upload.files.iter().map(|f| f.size).sum();
            info!(model = %reg.name, version = %version.version, sha256 = %digest, files = upload.files.len(), bytes, "registered");
            Ok(Registered { version, created: true })
        }
        Err(e) => {
            // Leave an honest record: the run failed, and no version points at it.
            if let Err(fe) = mlflow.finish_run(&run.run_id, RunStatus::Failed).await {
                warn!(run_id = %run.run_id, error = %fe, "could not mark the run FAILED");
            }
            Err(e)
        }
    }
}

/// A checked upload: its files, which one is the graph, its digest and signature.
struct Model<'a> {
    upload: &'a Upload<'a>,
    graph: usize,
    digest: &'a str,
    info: &'a OnnxInfo,
}

async fn register_in_run(
    mlflow: &Client,
    reg: &Registration,
    model: &Model<'_>,
    run_id: &str,
    artifact_uri: &str,
) -> Result<ModelVersion> {
    let (upload, info) = (model.upload, model.info);
    let graph = &upload.files[model.graph].rel;
    let ctx = |what: &str| format!("registering {:?}: {what}", reg.name);
    let model_uri = format!("{}/{MODEL_DIR}", artifact_uri.trim_end_matches('/'));
    for f in &upload.files {
        mlflow
            .upload_artifact(&format!("{model_uri}/{}", f.rel), f.path)
            .await
            .map_err(|e| RegistryError::mlflow(ctx(&format!("uploading {}", f.rel)), e))?;
    }
    let mlmodel = tempfile::NamedTempFile::new().map_err(|e| RegistryError::Internal(e.to_string()))?;
    mlmodel
        .as_file()
        .write_all(mlmodel_yaml(run_id, info, graph).as_bytes())
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    mlflow
        .upload_artifact(&format!("{model_uri}/MLmodel"), mlmodel.path())
        .await
        .map_err(|e| RegistryError::mlflow(ctx("MLmodel upload"), e))?;

    mlflow
        .ensure_registered_model(&reg.name, &reg.description)
        .await
        .map_err(|e| RegistryError::mlflow(ctx("registered model"), e))?;
    let mut version_tags: Vec<Tag> = reg.tags.iter().map(|(k, v)| Tag { key: k.clone(), value: v.clone() }).collect();
    let signature = |ts: &[onnx::Tensor]| {
        ts.iter().map(|t| format!("{}:{}{:?}", t.name, t.dtype, t.shape)).collect::<Vec<_>>().join(",")
    };
    for (k, v) in [
        (tags::SHA256, model.digest.to_owned()),
        (tags::SIZE, upload.files.iter().map(|f| f.size).sum::<u64>().to_string()),
        (tags::ARTIFACT_PATH, graph.clone()),
        ("ferry.onnx.opset", info.opset.to_string()),
        ("ferry.onnx.producer", info.producer.clone()),
        ("ferry.onnx.inputs", signature(&info.inputs)),
        ("ferry.onnx.outputs", signature(&info.outputs)),
    ] {
        version_tags.push(Tag { key: k.to_owned(), value: v });
    }
    mlflow
        .create_model_version(&reg.name, &model_uri, run_id, &reg.description, &version_tags)
        .await
        .map_err(|e| RegistryError::mlflow(ctx("create version"), e))
}

/// The version already registered under `name` with these exact bytes, if any.
async fn find_by_sha(mlflow: &Client, name: &str, sha: &str) -> Result<Option<ModelVersion>> {
    let filter = format!("name = '{}' AND tags.`{}` = '{}'", escape_filter(name), tags::SHA256, sha);
    match mlflow.search_model_versions(&filter, 1, None).await {
        Ok(page) => Ok(page.items.into_iter().next()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(RegistryError::mlflow(format!("looking up {name:?} by checksum"), e)),
    }
}

/// An `MLmodel` of the onnx flavor (plus python_function), so that
/// `mlflow.onnx.load_model` and `mlflow.pyfunc.load_model` load the version
/// and the MLflow UI shows its signature.
fn mlmodel_yaml(run_id: &str, info: &OnnxInfo, graph: &str) -> String {
    let spec = |ts: &[onnx::Tensor]| {
        let items: Vec<String> = ts
            .iter()
            .map(|t| {
                format!(
                    r#"{{"type": "tensor", "tensor-spec": {{"dtype": "{}", "shape": {:?}}}, "name": "{}"}}"#,
                    t.dtype, t.shape, t.name
                )
            })
            .collect();
        format!("[{}]", items.join(", "))
    };
    let created = chrono_like_now();
    format!(
        "artifact_path: {MODEL_DIR}\n\
         flavors:\n  onnx:\n    code: null\n    data: {graph}\n    providers:\n    - CPUExecutionProvider\n    onnx_version: 1.20.1\n\
         \x20 python_function:\n    data: {graph}\n    loader_module: mlflow.onnx\n    python_version: 3.11.7\n\
         mlflow_version: 3.17.2\n\
         run_id: {run_id}\n\
         signature:\n  inputs: '{}'\n  outputs: '{}'\n  params: null\n\
         utc_time_created: '{created}'\n",
        spec(&info.inputs),
        spec(&info.outputs),
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, without a date-time dependency.
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("iris").is_ok());
        assert!(validate_name(" ").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a:b").is_err());
    }

    #[test]
    fn mlmodel_has_signature() {
        let info = OnnxInfo {
            ir_version: 8,
            opset: 17,
            producer: "skl2onnx".into(),
            inputs: vec![onnx::Tensor { name: "input".into(), dtype: "float32".into(), shape: vec![-1, 4] }],
            outputs: vec![onnx::Tensor { name: "label".into(), dtype: "int64".into(), shape: vec![-1] }],
        };
        let y = mlmodel_yaml("r1", &info, "model.onnx");
        assert!(y.contains(r#"inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "input"}]'"#), "{y}");
        assert!(y.contains("loader_module: mlflow.onnx"));
        assert_eq!(chrono_like_now().len(), 26);
    }
}
