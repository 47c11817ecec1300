//! The `MLmodel` file: which flavors a model has and, for the onnx flavor,
//! which file holds the graph.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::onnx::validate_relative_path;

/// The parts of an `MLmodel` file that serving needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlModel {
    /// Flavor names in the file's order (`onnx`, `python_function`, `sklearn`, ...).
    pub flavors: Vec<String>,
    /// The onnx flavor's `data`: the ONNX file, relative to the model directory.
    onnx_data: Option<String>,
}

/// A model without the onnx flavor: what it is instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an ONNX model: its MLmodel has the flavors {} and Ferry serves the onnx flavor \
     (log the model with mlflow.onnx.log_model)",
    if flavors.is_empty() { "(none)".to_owned() } else { flavors.join(", ") }
)]
pub struct NotOnnx {
    pub flavors: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    flavors: BTreeMap<String, Flavor>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Flavor {
    data: Option<String>,
}

impl MlModel {
    /// Parses an `MLmodel` file's text (YAML, as MLflow writes it).
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Raw = serde_saphyr::from_str(text).map_err(|e| format!("MLmodel is not valid YAML: {e}"))?;
        // A BTreeMap sorts the names; report them in the file's order, which
        // is how a person reading the file sees them.
        let mut flavors: Vec<String> = raw.flavors.keys().cloned().collect();
        flavors.sort_by_key(|f| text.find(&format!("\n  {f}:")).unwrap_or(usize::MAX));
        let onnx_data = raw.flavors.get("onnx").map(|f| f.data.clone().unwrap_or_else(|| "model.onnx".to_owned()));
        Ok(Self { flavors, onnx_data })
    }

    /// The ONNX file's path inside the model directory, checked to stay inside it.
    pub fn onnx_file(&self) -> Result<String, String> {
        let data = self.onnx_data.as_deref().ok_or_else(|| NotOnnx { flavors: self.flavors.clone() }.to_string())?;
        validate_relative_path(data).map_err(|e| format!("MLmodel's onnx flavor names {data:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `mlflow.onnx.log_model` (MLflow 3.17) writes it.
    const ONNX: &str = "artifact_path: mlflow-artifacts:/1/models/m-0a1b/artifacts
flavors:
  onnx:
    code: null
    data: model.onnx
    onnx_version: 1.20.1
    providers:
    - CUDAExecutionProvider
    - CPUExecutionProvider
  python_function:
    data: model.onnx
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.onnx
    python_version: 3.11.7
is_signature_from_type_hint: false
mlflow_version: 3.17.2
model_id: m-0a1b
model_size_bytes: 21004113
model_uuid: m-0a1b
signature:
  inputs: '[{\"type\": \"tensor\", \"tensor-spec\": {\"dtype\": \"float32\", \"shape\": [-1, 512]}}]'
  outputs: null
utc_time_created: '2026-12-02 10:00:00.000000'
";

    #[test]
    fn onnx_flavor_names_its_file() {
        let m = MlModel::parse(ONNX).unwrap();
        assert_eq!(m.flavors, ["onnx", "python_function"]);
        assert_eq!(m.onnx_file().unwrap(), "model.onnx");
    }

    #[test]
    fn other_flavors_are_named_in_the_refusal() {
        let sk = "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n  sklearn:\n    pickled_model: model.pkl\n    sklearn_version: 1.7.2\n";
        let err = MlModel::parse(sk).unwrap().onnx_file().unwrap_err();
        assert!(err.contains("python_function, sklearn"), "{err}");
        assert!(err.contains("onnx flavor"), "{err}");
        let none = MlModel::parse("mlflow_version: 3.17.2\n").unwrap().onnx_file().unwrap_err();
        assert!(none.contains("(none)"), "{none}");
    }

    #[test]
    fn a_data_path_outside_the_model_is_refused() {
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b"] {
            let m = MlModel::parse(&format!("flavors:\n  onnx:\n    data: {bad}\n")).unwrap();
            assert!(m.onnx_file().is_err(), "{bad} accepted");
        }
        let nested = MlModel::parse("flavors:\n  onnx:\n    data: graph/model.onnx\n").unwrap();
        assert_eq!(nested.onnx_file().unwrap(), "graph/model.onnx");
    }

    #[test]
    fn not_yaml_is_an_error() {
        assert!(MlModel::parse("flavors: [unclosed").is_err());
    }
}
