//! A model version's files as MLflow stores them.
//!
//! An MLflow model is a directory: an `MLmodel` file naming its flavors, and
//! for the onnx flavor an ONNX file whose large tensors may live in separate
//! *external data* files beside it (`mlflow.onnx.log_model` writes every
//! tensor over 1 KB that way by default). This crate answers the three
//! questions delivery and registration both ask, without a runtime or a
//! network: which file is the ONNX model ([`MlModel`]), which other files it
//! needs ([`external_data`]), and what one digest covers them all
//! ([`ModelDigest`]). It also reads a model's large weights once
//! ([`initializers`]), so that the sessions serving a version can share them.

mod digest;
mod initializers;
mod mlmodel;
mod onnx;

pub use digest::{FileDigest, ModelDigest, hash_file};
pub use initializers::{Initializer, initializers};
pub use mlmodel::{MlModel, NotOnnx};
pub use onnx::{external_data, validate_relative_path};

/// The file MLflow writes at the root of every model directory.
pub const MLMODEL: &str = "MLmodel";
