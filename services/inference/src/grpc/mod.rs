//! The gRPC side: `ferry.inference.v1.Inference` and the Open Inference
//! Protocol's `GrpcInferenceService`, one file each, mirroring `http/`.
//! Errors are mapped to codes once, in `status.rs`.

pub(crate) mod inference;
pub(crate) mod oip;
mod status;

pub(crate) use self::{inference::InferenceService, oip::OipService};
