//! Just enough of the ONNX protobuf schema (onnx.proto3, field numbers as
//! published) to validate an upload and read its signature, without loading
//! a runtime in the control plane. Unknown fields, weights included, are skipped.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorName>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// Only an initializer's name (field 8 of TensorProto): graph inputs that are
/// also initializers are weights, not model inputs.
#[derive(Clone, PartialEq, Message)]
struct TensorName {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tensor {
    pub(crate) name: String,
    /// numpy-style dtype name (`float32`), as MLflow signatures spell it.
    pub(crate) dtype: String,
    /// -1 for dynamic dimensions.
    pub(crate) shape: Vec<i64>,
}

/// What Ferry records about an ONNX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnnxInfo {
    pub(crate) ir_version: i64,
    pub(crate) opset: i64,
    pub(crate) producer: String,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) outputs: Vec<Tensor>,
}

fn dtype(elem: i32) -> &'static str {
    // TensorProto.DataType
    match elem {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "str",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        _ => "unknown",
    }
}

fn tensor(v: &ValueInfoProto) -> Tensor {
    let tt = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    Tensor {
        name: v.name.clone(),
        dtype: tt.map_or("unknown", |t| dtype(t.elem_type)).to_owned(),
        shape: tt
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.dim.iter().map(|d| d.dim_value.filter(|v| *v >= 0).unwrap_or(-1)).collect())
            .unwrap_or_default(),
    }
}

/// Parses an ONNX model and checks that it is one: a graph with inputs and outputs.
pub(crate) fn inspect(bytes: &[u8]) -> Result<OnnxInfo, String> {
    let m = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model (protobuf decode failed: {e})"))?;
    let g = m.graph.as_ref().ok_or("not an ONNX model: it has no graph")?;
    if m.ir_version <= 0 {
        return Err("not an ONNX model: ir_version is missing".into());
    }
    let weights: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<Tensor> = g.input.iter().filter(|i| !weights.contains(i.name.as_str())).map(tensor).collect();
    let outputs: Vec<Tensor> = g.output.iter().map(tensor).collect();
    if inputs.is_empty() {
        return Err("the ONNX graph declares no inputs".into());
    }
    if outputs.is_empty() {
        return Err("the ONNX graph declares no outputs".into());
    }
    let opset = m.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(0, |o| o.version);
    let producer = format!("{} {}", m.producer_name, m.producer_version).trim().to_owned();
    Ok(OnnxInfo { ir_version: m.ir_version, opset, producer, inputs, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(inspect(b"definitely not onnx").is_err());
        assert!(inspect(&[]).is_err());
    }

    #[test]
    fn reads_a_minimal_graph() {
        let vi = |n: &str| ValueInfoProto {
            name: n.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            Dimension { dim_value: None, dim_param: Some("N".into()) },
                            Dimension { dim_value: Some(4), dim_param: None },
                        ],
                    }),
                }),
            }),
        };
        let m = ModelProto {
            ir_version: 8,
            producer_name: "test".into(),
            producer_version: "1".into(),
            graph: Some(GraphProto {
                name: "g".into(),
                initializer: vec![TensorName { name: "W".into() }],
                input: vec![vi("x"), vi("W")],
                output: vec![vi("y")],
            }),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        };
        let info = inspect(&m.encode_to_vec()).unwrap();
        assert_eq!(info.inputs, vec![Tensor { name: "x".into(), dtype: "float32".into(), shape: vec![-1, 4] }]);
        assert_eq!(info.opset, 17);
        assert_eq!(info.producer, "test 1");
    }
}
