//! The Open Inference Protocol (KServe V2) and Triton's configuration and
//! statistics extensions: the pieces shared by the gRPC and REST front ends.

use std::sync::atomic::Ordering;

use ferry_proto::oip;

use crate::{
    error::ServeError,
    serving::{ModelSlot, SlotStatus},
    tensor::{DType, TensorData, TensorSpec},
};

/// Triton's platform and backend names for ONNX Runtime models.
pub(crate) const PLATFORM: &str = "onnxruntime_onnx";
pub(crate) const BACKEND: &str = "onnxruntime";
/// Advertised in server metadata.
pub(crate) const EXTENSIONS: &[&str] = &["model_configuration", "statistics", "binary_tensor_data"];
/// The batch size Ferry advertises for models with a dynamic leading dimension.
pub(crate) const MAX_BATCH_SIZE: i32 = 1024;

/// The response parameter naming the variant that served, when the model has a traffic policy.
pub(crate) const VARIANT_PARAMETER: &str = "ferry_variant";

pub(crate) fn datatype(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::Bool => "BOOL",
        DType::Str => "BYTES",
    }
}

pub(crate) fn parse_datatype(name: &str, tensor: &str) -> Result<DType, ServeError> {
    Ok(match name {
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "BOOL" => DType::Bool,
        "BYTES" => DType::Str,
        other => {
            return Err(ServeError::InvalidArgument(format!(
                "input {tensor:?}: datatype {other:?} is not supported (FP32, FP64, INT32, INT64, BOOL, BYTES are)"
            )));
        }
    })
}

fn config_type(d: DType) -> oip::DataType {
    match d {
        DType::F32 => oip::DataType::TypeFp32,
        DType::F64 => oip::DataType::TypeFp64,
        DType::I32 => oip::DataType::TypeInt32,
        DType::I64 => oip::DataType::TypeInt64,
        DType::Bool => oip::DataType::TypeBool,
        DType::Str => oip::DataType::TypeString,
    }
}

/// Decodes a raw, row-major, little-endian buffer. BYTES elements are each a
/// 4-byte little-endian length followed by the bytes.
pub(crate) fn decode_raw(dtype: DType, raw: &[u8], tensor: &str) -> Result<TensorData, ServeError> {
    let bad = |what: String| ServeError::InvalidArgument(format!("input {tensor:?}: {what}"));
    fn fixed<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Option<Vec<T>> {
        raw.len()
            .is_multiple_of(N)
            .then(|| raw.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect())
    }
    let size_err =
        |n: usize| bad(format!("raw contents of {} bytes are not a whole number of {n}-byte elements", raw.len()));
    Ok(match dtype {
        DType::F32 => TensorData::F32(fixed(raw, f32::from_le_bytes).ok_or_else(|| size_err(4))?),
        DType::F64 => TensorData::F64(fixed(raw, f64::from_le_bytes).ok_or_else(|| size_err(8))?),
        DType::I32 => TensorData::I32(fixed(raw, i32::from_le_bytes).ok_or_else(|| size_err(4))?),
        DType::I64 => TensorData::I64(fixed(raw, i64::from_le_bytes).ok_or_else(|| size_err(8))?),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DType::Str => {
            let mut out = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                let (len, tail) =
                    rest.split_at_checked(4).ok_or_else(|| bad("truncated BYTES length prefix".into()))?;
                let n = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                let (s, tail) = tail.split_at_checked(n).ok_or_else(|| bad("truncated BYTES element".into()))?;
                out.push(String::from_utf8(s.to_vec()).map_err(|_| bad("BYTES element is not UTF-8".into()))?);
                rest = tail;
            }
            TensorData::Str(out)
        }
    })
}

/// Encodes tensor elements as raw little-endian bytes (BYTES length-prefixed).
pub(crate) fn encode_raw(data: &TensorData) -> Vec<u8> {
    match data {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        TensorData::Str(v) => {
            let mut out = Vec::with_capacity(v.iter().map(|s| s.len() + 4).sum());
            for s in v {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out
        }
    }
}

fn tensor_metadata(s: &TensorSpec) -> oip::model_metadata_response::TensorMetadata {
    oip::model_metadata_response::TensorMetadata {
        name: s.name.clone(),
        datatype: datatype(s.dtype).to_owned(),
        shape: s.shape.clone(),
    }
}

/// The model's metadata; `None` until a version is loaded.
pub(crate) fn metadata(st: &SlotStatus) -> Option<oip::ModelMetadataResponse> {
    let sig = st.signature.as_ref()?;
    Some(oip::ModelMetadataResponse {
        name: st.name.clone(),
        versions: st.serving_version.iter().cloned().collect(),
        platform: PLATFORM.to_owned(),
        inputs: sig.inputs.iter().map(tensor_metadata).collect(),
        outputs: sig.outputs.iter().map(tensor_metadata).collect(),
    })
}

/// Triton-style configuration: when every input has a dynamic leading
/// dimension, it is the batch dimension (max_batch_size > 0, dims without it).
pub(crate) fn config(st: &SlotStatus) -> Option<oip::ModelConfig> {
    let sig = st.signature.as_ref()?;
    let batched = sig.inputs.iter().all(|s| s.shape.first() == Some(&-1));
    let dims = |s: &TensorSpec| if batched && !s.shape.is_empty() { s.shape[1..].to_vec() } else { s.shape.clone() };
    Some(oip::ModelConfig {
        name: st.name.clone(),
        platform: PLATFORM.to_owned(),
        backend: BACKEND.to_owned(),
        max_batch_size: if batched { MAX_BATCH_SIZE } else { 0 },
        input: sig
            .inputs
            .iter()
            .map(|s| oip::ModelInput { name: s.name.clone(), data_type: config_type(s.dtype).into(), dims: dims(s) })
            .collect(),
        output: sig
            .outputs
            .iter()
            .map(|s| oip::ModelOutput { name: s.name.clone(), data_type: config_type(s.dtype).into(), dims: dims(s) })
            .collect(),
    })
}

pub(crate) fn statistics(slot: &ModelSlot) -> oip::ModelStatistics {
    let s = &slot.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let dur = |count: u64, ns: u64| Some(oip::StatisticDuration { count, ns });
    let e = &s.exec;
    let requests = get(&e.requests);
    oip::ModelStatistics {
        name: slot.spec.name.clone(),
        version: slot.current().map(|m| m.version.clone()).unwrap_or_default(),
        last_inference: get(&s.last_inference_ms),
        inference_count: get(&e.rows),
        execution_count: get(&e.executions),
        // Counted per request, as Triton does: perf_analyzer finds the serving
        // version by the growth of the queue count and requires equal compute
        // counts. Input and output handling is inside the compute time.
        inference_stats: Some(oip::InferStatistics {
            success: dur(get(&s.success_count), get(&s.success_ns)),
            fail: dur(get(&s.fail_count), get(&s.fail_ns)),
            queue: dur(requests, get(&e.request_queue_ns)),
            compute_input: dur(requests, 0),
            compute_infer: dur(requests, get(&e.request_compute_ns)),
            compute_output: dur(requests, 0),
        }),
        batch_stats: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trips() {
        for data in [
            TensorData::F32(vec![1.5, -2.0]),
            TensorData::F64(vec![0.25]),
            TensorData::I32(vec![7, -7]),
            TensorData::I64(vec![1 << 40]),
            TensorData::Bool(vec![true, false]),
            TensorData::Str(vec!["héllo".into(), String::new()]),
        ] {
            let raw = encode_raw(&data);
            assert_eq!(decode_raw(data.dtype(), &raw, "x").unwrap(), data);
        }
        assert!(decode_raw(DType::F32, &[0, 0, 0], "x").is_err());
        assert!(decode_raw(DType::Str, &[5, 0, 0, 0, b'a'], "x").is_err());
    }
}
