//! Ferry's wire contracts, generated from `proto/`.
//!
//! Each package is a versioned module; the encoded descriptor set serves gRPC
//! server reflection so that operators can use grpcurl without .proto files.
#![allow(unreachable_pub, clippy::all)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("ferry.registry.v1");
    }
}

pub mod inference {
    pub mod v1 {
        tonic::include_proto!("ferry.inference.v1");
    }
}

/// The Open Inference Protocol (KServe V2) with Triton's configuration and
/// statistics extensions: package `inference`, wire-compatible with their clients.
pub mod oip {
    tonic::include_proto!("inference");
}

/// Descriptors of every Ferry package, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
