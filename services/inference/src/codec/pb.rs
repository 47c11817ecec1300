//! `ferry.inference.v1` protobuf messages ⇄ core types, used by the gRPC
//! service and by REST's JSON mapping of `Predict` (`/v1/predict`).

use ferry_proto::inference::v1::{self as pb, DataType, ModelState};

use crate::{
    error::ServeError,
    serving::{SlotState, SlotStatus},
    tensor::{DType, NamedTensor, TensorData, TensorSpec},
};

fn state(s: SlotState) -> ModelState {
    match s {
        SlotState::Pending => ModelState::Pending,
        SlotState::Serving => ModelState::Serving,
        SlotState::Degraded => ModelState::Degraded,
        SlotState::Failed => ModelState::Failed,
    }
}

pub(crate) fn model_status(s: SlotStatus) -> pb::ModelStatus {
    let variants = s
        .variants
        .into_iter()
        .map(|v| pb::VariantStatus {
            name: v.name,
            selector: v.selector,
            weight: v.weight,
            state: state(v.state).into(),
            serving_version: v.serving_version.unwrap_or_default(),
            last_error: v.last_error.unwrap_or_default(),
            pinned: v.pinned,
            shadow_percent: v.shadow_percent,
            shadow_compared: v.shadow_compared,
            shadow_dropped: v.shadow_dropped,
            shadow_failed: v.shadow_failed,
            agreement: v.agreement,
            mean_abs_diff: v.mean_abs_diff,
        })
        .collect();
    let sig = s.signature.unwrap_or_default();
    pb::ModelStatus {
        name: s.name,
        selector: s.selector,
        serving_version: s.serving_version.unwrap_or_default(),
        state: state(s.state).into(),
        last_error: s.last_error.unwrap_or_default(),
        sha256: s.sha256.unwrap_or_default(),
        verified: s.verified,
        inputs: sig.inputs.iter().map(spec_to_pb).collect(),
        outputs: sig.outputs.iter().map(spec_to_pb).collect(),
        variants,
        policy_error: s.policy_error.unwrap_or_default(),
        pinned: s.pinned.unwrap_or_default(),
    }
}

pub(crate) fn spec_to_pb(s: &TensorSpec) -> pb::TensorSpec {
    pb::TensorSpec { name: s.name.clone(), dtype: dtype_to_pb(s.dtype).into(), shape: s.shape.clone() }
}

pub(crate) fn dtype_to_pb(d: DType) -> DataType {
    match d {
        DType::F32 => DataType::Float32,
        DType::F64 => DataType::Float64,
        DType::I32 => DataType::Int32,
        DType::I64 => DataType::Int64,
        DType::Bool => DataType::Bool,
        DType::Str => DataType::String,
    }
}

/// Takes the data field that matches `dtype` (moved, not copied). With no
/// dtype, the one non-empty field decides.
pub(crate) fn from_pb(t: pb::Tensor) -> Result<NamedTensor, ServeError> {
    let dtype = t.dtype();
    let filled = [
        (!t.float_data.is_empty(), DataType::Float32),
        (!t.double_data.is_empty(), DataType::Float64),
        (!t.int32_data.is_empty(), DataType::Int32),
        (!t.int64_data.is_empty(), DataType::Int64),
        (!t.bool_data.is_empty(), DataType::Bool),
        (!t.string_data.is_empty(), DataType::String),
    ];
    let mut present = filled.iter().filter(|(f, _)| *f).map(|(_, d)| *d);
    let dtype = match dtype {
        DataType::Unspecified => match (present.next(), present.next()) {
            (Some(one), None) => one,
            (None, _) => {
                return Err(ServeError::InvalidArgument(format!("input {:?}: no dtype and no data", t.name)));
            }
            (Some(_), Some(_)) => {
                return Err(ServeError::InvalidArgument(format!("input {:?}: data in more than one field", t.name)));
            }
        },
        d @ (DataType::Float32
        | DataType::Float64
        | DataType::Int32
        | DataType::Int64
        | DataType::Bool
        | DataType::String) => match present.find(|x| *x != d) {
            Some(other) => {
                return Err(ServeError::InvalidArgument(format!(
                    "input {:?}: dtype is {} but data is in the field for {}",
                    t.name,
                    d.as_str_name(),
                    other.as_str_name()
                )));
            }
            None => d,
        },
    };
    let data = match dtype {
        DataType::Float32 => TensorData::F32(t.float_data),
        DataType::Float64 => TensorData::F64(t.double_data),
        DataType::Int32 => TensorData::I32(t.int32_data),
        DataType::Int64 => TensorData::I64(t.int64_data),
        DataType::Bool => TensorData::Bool(t.bool_data),
        DataType::String => TensorData::Str(t.string_data),
        DataType::Unspecified => unreachable!("resolved above"),
    };
    Ok(NamedTensor { name: t.name, shape: t.shape, data })
}

pub(crate) fn to_pb(t: NamedTensor) -> pb::Tensor {
    let mut out =
        pb::Tensor { name: t.name, dtype: dtype_to_pb(t.data.dtype()).into(), shape: t.shape, ..Default::default() };
    match t.data {
        TensorData::F32(v) => out.float_data = v,
        TensorData::F64(v) => out.double_data = v,
        TensorData::I32(v) => out.int32_data = v,
        TensorData::I64(v) => out.int64_data = v,
        TensorData::Bool(v) => out.bool_data = v,
        TensorData::Str(v) => out.string_data = v,
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DataType, floats: usize, ints: usize) -> pb::Tensor {
        pb::Tensor {
            name: "x".into(),
            dtype: dtype.into(),
            shape: vec![1, 2],
            float_data: vec![1.5; floats],
            int64_data: vec![7; ints],
            ..Default::default()
        }
    }

    fn error(t: pb::Tensor) -> String {
        match from_pb(t) {
            Err(ServeError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn the_data_field_decides_when_no_dtype_is_given_and_must_agree_when_one_is() {
        let t = from_pb(tensor(DataType::Unspecified, 2, 0)).unwrap();
        assert_eq!((t.name.as_str(), t.shape, t.data), ("x", vec![1, 2], TensorData::F32(vec![1.5; 2])));
        let t = from_pb(tensor(DataType::Int64, 0, 2)).unwrap();
        assert_eq!(t.data, TensorData::I64(vec![7; 2]));
        // A declared dtype with no data is an empty tensor of that dtype.
        assert_eq!(from_pb(tensor(DataType::Float32, 0, 0)).unwrap().data, TensorData::F32(vec![]));

        assert_eq!(error(tensor(DataType::Unspecified, 0, 0)), r#"input "x": no dtype and no data"#);
        assert_eq!(error(tensor(DataType::Unspecified, 2, 2)), r#"input "x": data in more than one field"#);
        assert_eq!(
            error(tensor(DataType::Float32, 2, 2)),
            r#"input "x": dtype is DATA_TYPE_FLOAT32 but data is in the field for DATA_TYPE_INT64"#
        );
    }
}
