//! `ferryctl predict`'s JSON: nested arrays in, typed by the model's
//! signature (any dtype Ferry serves), and outputs back as nested arrays of
//! their shapes.

use anyhow::{Context, bail};
use ferry_proto::inference::v1::{DataType, Tensor};
use serde_json::Value;

/// A tensor of `dtype` from a nested JSON array (or a scalar): its shape is
/// the arrays' lengths, which must be rectangular.
pub(crate) fn from_json(name: &str, dtype: DataType, value: &Value) -> anyhow::Result<Tensor> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut leaves = Vec::new();
    flatten(value, &shape, &mut leaves).with_context(|| format!("input {name:?}"))?;
    let mut t = Tensor { name: name.to_owned(), dtype: dtype.into(), shape, ..Default::default() };
    let bad = |v: &Value, what: &str| anyhow::anyhow!("input {name:?}: {v} is not {what}");
    for v in leaves {
        match dtype {
            DataType::Float32 => t.float_data.push(v.as_f64().ok_or_else(|| bad(v, "a number"))? as f32),
            DataType::Float64 => t.double_data.push(v.as_f64().ok_or_else(|| bad(v, "a number"))?),
            DataType::Int32 => t
                .int32_data
                .push(v.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| bad(v, "a 32-bit integer"))?),
            DataType::Int64 => t.int64_data.push(v.as_i64().ok_or_else(|| bad(v, "an integer"))?),
            DataType::Bool => t.bool_data.push(v.as_bool().ok_or_else(|| bad(v, "true or false"))?),
            DataType::String => t.string_data.push(v.as_str().ok_or_else(|| bad(v, "a string"))?.to_owned()),
            DataType::Unspecified => bail!("input {name:?}: the model does not say its type"),
        }
    }
    Ok(t)
}

fn flatten<'a>(v: &'a Value, shape: &[i64], out: &mut Vec<&'a Value>) -> anyhow::Result<()> {
    match (v, shape.split_first()) {
        (Value::Array(items), Some((&n, rest))) => {
            if items.len() as i64 != n {
                bail!("rows of different lengths ({} and {n})", items.len());
            }
            items.iter().try_for_each(|i| flatten(i, rest, out))
        }
        (Value::Array(_), None) => bail!("nested deeper in some rows than in the first"),
        (leaf, None) => {
            out.push(leaf);
            Ok(())
        }
        (_, Some(_)) => bail!("a value where the first row has an array"),
    }
}

/// An output as a nested JSON array of its shape.
pub(crate) fn to_json(t: &Tensor) -> Value {
    let flat: Vec<Value> = match t.dtype() {
        DataType::Float32 => t.float_data.iter().map(|x| serde_json::json!(x)).collect(),
        DataType::Float64 => t.double_data.iter().map(|x| serde_json::json!(x)).collect(),
        DataType::Int32 => t.int32_data.iter().map(|x| serde_json::json!(x)).collect(),
        DataType::Int64 => t.int64_data.iter().map(|x| serde_json::json!(x)).collect(),
        DataType::Bool => t.bool_data.iter().map(|x| serde_json::json!(x)).collect(),
        DataType::String | DataType::Unspecified => t.string_data.iter().map(|x| serde_json::json!(x)).collect(),
    };
    nest(&flat, &t.shape)
}

fn nest(flat: &[Value], shape: &[i64]) -> Value {
    match shape.split_first() {
        None => flat.first().cloned().unwrap_or(Value::Null),
        Some((&n, rest)) => {
            let n = usize::try_from(n).unwrap_or(0).max(1);
            let step = flat.len() / n;
            if step == 0 {
                return Value::Array(Vec::new());
            }
            Value::Array(flat.chunks(step).map(|c| nest(c, rest)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_arrays_become_typed_tensors_and_back() {
        let t = from_json("input", DataType::Float32, &json!([[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.4, 1.4]])).unwrap();
        assert_eq!((t.shape.as_slice(), t.float_data.len()), (&[2, 4][..], 8));
        assert_eq!(to_json(&t), json!([[5.1f32, 3.5f32, 1.4f32, 0.2f32], [6.7f32, 3.1f32, 4.4f32, 1.4f32]]));
        let t = from_json("ids", DataType::Int64, &json!([[1, 2], [3, 4]])).unwrap();
        assert_eq!(t.int64_data, [1, 2, 3, 4]);
        let t = from_json("text", DataType::String, &json!(["a", "b"])).unwrap();
        assert_eq!((t.shape.as_slice(), t.string_data.len()), (&[2][..], 2));
        let t = from_json("flag", DataType::Bool, &json!(true)).unwrap();
        assert_eq!((t.shape.len(), t.bool_data.as_slice()), (0, &[true][..]));
    }

    #[test]
    fn ragged_or_mistyped_input_says_what_is_wrong() {
        let err = |dtype, v: Value| from_json("x", dtype, &v).unwrap_err().to_string();
        assert!(err(DataType::Float32, json!([[1, 2], [3]])).contains("input \"x\""));
        assert!(err(DataType::Int64, json!([1.5])).contains("not an integer"));
        assert!(err(DataType::Int32, json!([1_i64 << 40])).contains("32-bit"));
        assert!(err(DataType::Float32, json!(["a"])).contains("not a number"));
    }
}
