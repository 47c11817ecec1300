//! A typed client for the MLflow tracking server and Model Registry REST API.
//!
//! Written against MLflow 3.x's quirks: versions are strings, a missing alias
//! is a 400, `model-versions/search` omits aliases, DELETE calls carry JSON
//! bodies, and artifact bytes go through the server's artifact proxy.

#[cfg(feature = "clap")]
mod args;
mod client;
mod error;
mod selector;
mod types;

#[cfg(feature = "clap")]
pub use args::MlflowArgs;
pub use client::{Auth, Client, Config, artifact_rel_path, escape_filter};
pub use error::{Error, ErrorKind, Result};
pub use selector::{ModelRef, Selector};
pub use types::{
    AliasEntry, Experiment, FileInfo, ModelVersion, Page, RegisteredModel, RunInfo, RunStatus, Tag, Webhook,
    WebhookEvent,
};

/// Model-version tags Ferry writes and reads.
pub mod tags {
    /// Hex SHA-256 of the ONNX file.
    pub const SHA256: &str = "ferry.sha256";
    /// Size of the ONNX file in bytes.
    pub const SIZE: &str = "ferry.size_bytes";
    /// Path of the ONNX file inside the model directory.
    pub const ARTIFACT_PATH: &str = "ferry.artifact_path";
}

/// MLflow's stage names in their canonical spelling (MLflow itself matches case-insensitively).
pub fn canonical_stage(s: &str) -> Option<&'static str> {
    ["None", "Staging", "Production", "Archived"].into_iter().find(|c| c.eq_ignore_ascii_case(s))
}
