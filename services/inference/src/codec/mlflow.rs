//! MLflow's scoring protocol (`POST /invocations`, as `mlflow models serve`
//! and MLServer answer it): the codec between its request and response
//! bodies and the core's tensors, given the model's signature. Pure: the
//! HTTP route lives in `http.rs`.
//!
//! Requests: JSON with exactly one of `dataframe_split`, `dataframe_records`,
//! `instances` or `inputs` (`params` is accepted and ignored: ONNX models
//! take none), or CSV with a header row. A data frame feeds a single-input
//! model its rows as one tensor (`[rows, columns]`, reshaped to the input's
//! fixed dimensions), and a multi-input model one column per input, matched
//! by name. Tensor forms (`inputs`, `instances`) give an array for a
//! single-input model or an object of arrays by input name; `instances` may
//! also be a list of per-row objects.
//!
//! Responses take the form `mlflow models serve` gives an ONNX model (checked
//! side by side in the e2e tests): for tensor input,
//! `{"predictions": {"<output>": <nested array>, ...}}`; for a data frame,
//! MLflow's ONNX flavor builds a data frame of the outputs each flattened,
//! so `{"predictions": [{"<output>": <element>}, ...]}`, one record per
//! element. Where MLflow fails (outputs of different sizes), Ferry answers
//! one record per row, each output's row as a nested array.

use serde_json::{Map, Value, json};

use crate::tensor::{DType, NamedTensor, TensorData, TensorSpec};

/// A request MLflow's scoring server would refuse, with its error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScoringError {
    /// MLflow's `error_code`: `BAD_REQUEST` for a malformed body,
    /// `INVALID_PARAMETER_VALUE` for data that does not fit the model.
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn bad_request(message: impl Into<String>) -> ScoringError {
    ScoringError { code: "BAD_REQUEST", message: message.into() }
}

fn invalid(message: impl Into<String>) -> ScoringError {
    ScoringError { code: "INVALID_PARAMETER_VALUE", message: message.into() }
}

const FORMATS: [&str; 4] = ["dataframe_split", "dataframe_records", "instances", "inputs"];

/// The body's media type, as the scoring server reads `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
}

impl Format {
    /// `Err` carries the message for a 415 answer.
    pub(crate) fn from_content_type(ct: Option<&str>) -> Result<Self, String> {
        let ct = ct.unwrap_or("application/json");
        let mut parts = ct.split(';').map(str::trim);
        let mime = parts.next().unwrap_or_default().to_ascii_lowercase();
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            if !k.eq_ignore_ascii_case("charset") || !v.trim_matches('"').eq_ignore_ascii_case("utf-8") {
                return Err(format!("unsupported content type parameter {p:?}; only charset=utf-8"));
            }
        }
        match mime.as_str() {
            "application/json" => Ok(Format::Json),
            "text/csv" => Ok(Format::Csv),
            _ => Err(format!("this server accepts application/json and text/csv; got {ct:?}")),
        }
    }
}

/// How the request gave its data, which decides the response's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `dataframe_split`, `dataframe_records` or CSV.
    Frame,
    /// `inputs` or `instances`.
    Tensors,
}

/// The model's input tensors for one request body, and the form to answer in.
pub(crate) fn decode(
    format: Format,
    body: &[u8],
    inputs: &[TensorSpec],
) -> Result<(Vec<NamedTensor>, Shape), ScoringError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("the body is not UTF-8"))?;
    match format {
        Format::Csv => {
            let (columns, rows) = parse_csv(text)?;
            Ok((frame(Some(columns), rows, inputs)?, Shape::Frame))
        }
        Format::Json => decode_json(text, inputs),
    }
}

fn decode_json(text: &str, inputs: &[TensorSpec]) -> Result<(Vec<NamedTensor>, Shape), ScoringError> {
    let v: Value = serde_json::from_str(text).map_err(|e| bad_request(format!("invalid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(bad_request(required_format(&[])));
    };
    let found: Vec<&str> = FORMATS.into_iter().filter(|k| obj.contains_key(*k)).collect();
    let [key] = found.as_slice() else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(bad_request(required_format(&keys)));
    };
    let data = obj.remove(*key).unwrap_or(Value::Null);
    Ok(match *key {
        "dataframe_split" => (dataframe_split(data, inputs)?, Shape::Frame),
        "dataframe_records" => (dataframe_records(data, inputs)?, Shape::Frame),
        "instances" => (instances(data, inputs)?, Shape::Tensors),
        _ => (tensors(data, inputs)?, Shape::Tensors),
    })
}

fn required_format(keys: &[&str]) -> String {
    format!(
        "The input must be a JSON dictionary with exactly one of the input fields {{'dataframe_split', \
         'dataframe_records', 'instances', 'inputs'}}. Received dictionary with input fields: {keys:?}"
    )
}

/// `inputs`: an array for a single-input model, or arrays by input name.
fn tensors(data: Value, inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, ScoringError> {
    if let Value::Object(map) = data { by_name(map, inputs) } else { Ok(vec![tensor(&data, single(inputs)?)?]) }
}

/// `instances`: rows; each row a value of the single input or an object by input name.
fn instances(data: Value, inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, ScoringError> {
    if let Value::Object(map) = data {
        return by_name(map, inputs);
    }
    let Value::Array(rows) = data else { return Ok(vec![tensor(&data, single(inputs)?)?]) };
    if !rows.first().is_some_and(Value::is_object) {
        return Ok(vec![tensor(&Value::Array(rows), single(inputs)?)?]);
    }
    let mut columns = Map::new();
    for (i, row) in rows.into_iter().enumerate() {
        let Value::Object(row) = row else {
            return Err(bad_request(format!("instance {i} is not an object like the first one")));
        };
        for (k, v) in row {
            let col = columns.entry(k).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(c) = col {
                c.push(v);
            }
        }
    }
    by_name(columns, inputs)
}

fn by_name(mut map: Map<String, Value>, inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, ScoringError> {
    inputs
        .iter()
        .map(|spec| {
            let v = map
                .remove(&spec.name)
                .ok_or_else(|| invalid(format!("missing input {:?}; the model takes {}", spec.name, names(inputs))))?;
            tensor(&v, spec)
        })
        .collect()
}

fn dataframe_split(data: Value, inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, ScoringError> {
    let Value::Object(mut obj) = data else {
        return Err(bad_request("dataframe_split must be an object with \"data\" (and \"columns\")"));
    };
    let columns = match obj.remove("columns") {
        None | Some(Value::Null) => None,
        Some(Value::Array(c)) => {
            Some(c.into_iter().map(|c| if let Value::String(s) = c { s } else { c.to_string() }).collect())
        }
        Some(_) => return Err(bad_request("dataframe_split \"columns\" must be an array")),
    };
    let Some(Value::Array(rows)) = obj.remove("data") else {
        return Err(bad_request("dataframe_split needs \"data\": an array of rows"));
    };
    let rows = rows.into_iter().map(|r| if let Value::Array(cells) = r { cells } else { vec![r] }).collect();
    frame(columns, rows, inputs)
}

fn dataframe_records(data: Value, inputs: &[TensorSpec]) -> Result<Vec<NamedTensor>, ScoringError> {
    let Value::Array(records) = data else {
        return Err(bad_request("dataframe_records must be an array of objects"));
    };
    let mut columns: Vec<String> = Vec::new();
    let mut maps = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let Value::Object(m) = r else {
            return Err(bad_request(format!("dataframe_records[{i}] is not an object")));
        };
        for k in m.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        maps.push(m);
    }
    let rows =
        maps.into_iter().map(|mut m| columns.iter().map(|c| m.remove(c).unwrap_or(Value::Null)).collect()).collect();
    frame(Some(columns), rows, inputs)
}

/// A data frame: for one input, its rows are the tensor; for several, each
/// input is the column of its name.
fn frame(
    columns: Option<Vec<String>>,
    rows: Vec<Vec<Value>>,
    inputs: &[TensorSpec],
) -> Result<Vec<NamedTensor>, ScoringError> {
    if rows.is_empty() {
        return Err(invalid("the data frame has no rows"));
    }
    if let [spec] = inputs
        && !(columns.as_ref().is_some_and(|c| c.len() == 1 && c[0] == spec.name) && spec.shape.len() > 1)
    {
        let mut t = tensor(&Value::Array(rows.into_iter().map(Value::Array).collect()), &relaxed(spec))?;
        // Fixed trailing dimensions: a row of their product fills one item (MLflow reshapes too).
        let fixed: Vec<i64> = spec.shape.iter().skip(1).copied().collect();
        if t.shape.len() == 2
            && fixed.len() > 1
            && fixed.iter().all(|d| *d > 0)
            && fixed.iter().product::<i64>() == t.shape[1]
        {
            t.shape = std::iter::once(t.shape[0]).chain(fixed).collect();
        } else if spec.shape.len() == 1 && t.shape.len() == 2 && t.shape[1] == 1 {
            t.shape.truncate(1);
        }
        return Ok(vec![t]);
    }
    let columns = columns.ok_or_else(|| {
        invalid(format!(
            "the model has {} inputs ({}): name the data frame's columns after them",
            inputs.len(),
            names(inputs)
        ))
    })?;
    let mut by_column = Map::new();
    for (i, name) in columns.iter().enumerate() {
        let col: Vec<Value> = rows.iter().map(|r| r.get(i).cloned().unwrap_or(Value::Null)).collect();
        by_column.insert(name.clone(), Value::Array(col));
    }
    by_name(by_column, inputs)
}

/// The spec with any rank accepted, for a frame whose reshape comes after.
fn relaxed(spec: &TensorSpec) -> TensorSpec {
    TensorSpec { name: spec.name.clone(), dtype: spec.dtype, shape: Vec::new() }
}

fn single(inputs: &[TensorSpec]) -> Result<&TensorSpec, ScoringError> {
    match inputs {
        [one] => Ok(one),
        _ => Err(invalid(format!(
            "the model has {} inputs ({}): send an object of arrays by input name",
            inputs.len(),
            names(inputs)
        ))),
    }
}

fn names(inputs: &[TensorSpec]) -> String {
    inputs.iter().map(|s| format!("{:?}", s.name)).collect::<Vec<_>>().join(", ")
}

/// A nested JSON array (or a scalar) as a tensor of `spec`'s dtype. A single
/// item without the batch dimension gets one (`[1, 2, 3, 4]` for a `[-1, 4]`
/// input is one row).
fn tensor(v: &Value, spec: &TensorSpec) -> Result<NamedTensor, ScoringError> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    let mut leaves = Vec::new();
    flatten(v, &shape, 0, &spec.name, &mut leaves)?;
    if !spec.shape.is_empty() && shape.len() + 1 == spec.shape.len() {
        shape.insert(0, 1);
    }
    let name = &spec.name;
    let at = |i: usize| format!("input {name:?} element {i}");
    let data = match spec.dtype {
        DType::F32 => TensorData::F32(
            leaves.iter().enumerate().map(|(i, x)| number(x, &at(i)).map(|f| f as f32)).collect::<Result<_, _>>()?,
        ),
        DType::F64 => {
            TensorData::F64(leaves.iter().enumerate().map(|(i, x)| number(x, &at(i))).collect::<Result<_, _>>()?)
        }
        DType::I32 => TensorData::I32(
            leaves
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    integer(x, &at(i))
                        .and_then(|n| i32::try_from(n).map_err(|_| invalid(format!("{}: {n} overflows int32", at(i)))))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::I64 => {
            TensorData::I64(leaves.iter().enumerate().map(|(i, x)| integer(x, &at(i))).collect::<Result<_, _>>()?)
        }
        DType::Bool => TensorData::Bool(
            leaves
                .iter()
                .enumerate()
                .map(|(i, x)| x.as_bool().ok_or_else(|| invalid(format!("{}: expected true or false, got {x}", at(i)))))
                .collect::<Result<_, _>>()?,
        ),
        DType::Str => TensorData::Str(
            leaves
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{}: expected a string, got {x}", at(i))))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(NamedTensor { name: name.clone(), shape, data })
}

/// Leaves in row-major order, checking the nesting is rectangular.
fn flatten<'a>(
    v: &'a Value,
    shape: &[i64],
    depth: usize,
    name: &str,
    out: &mut Vec<&'a Value>,
) -> Result<(), ScoringError> {
    match (v, shape.get(depth)) {
        (Value::Array(items), Some(&n)) if items.len() as i64 == n => {
            items.iter().try_for_each(|item| flatten(item, shape, depth + 1, name, out))
        }
        (Value::Array(_), _) | (_, Some(_)) => {
            Err(invalid(format!("input {name:?} is ragged: every row must have the same shape {shape:?}")))
        }
        (leaf, None) => {
            out.push(leaf);
            Ok(())
        }
    }
}

fn number(v: &Value, at: &str) -> Result<f64, ScoringError> {
    if let Value::Number(n) = v {
        return n.as_f64().ok_or_else(|| invalid(format!("{at}: {n} is not a number")));
    }
    // CSV cells and pandas' JSON may carry numbers as strings.
    if let Value::String(s) = v {
        return s.trim().parse().map_err(|_| invalid(format!("{at}: expected a number, got {s:?}")));
    }
    Err(invalid(format!("{at}: expected a number, got {v}")))
}

fn integer(v: &Value, at: &str) -> Result<i64, ScoringError> {
    if let Some(n) = v.as_i64() {
        return Ok(n);
    }
    let f = number(v, at)?;
    if f.fract() != 0.0 || !f.is_finite() {
        return Err(invalid(format!("{at}: expected an integer, got {f}")));
    }
    Ok(f as i64)
}

/// A CSV body with a header row (as `pandas.DataFrame.to_csv(index=False)` writes it).
fn parse_csv(text: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), ScoringError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| bad_request("the CSV body is empty"))?;
    let columns = csv_fields(header)?;
    let rows = lines
        .enumerate()
        .map(|(i, line)| {
            let cells = csv_fields(line)?;
            if cells.len() != columns.len() {
                return Err(bad_request(format!(
                    "CSV row {} has {} fields, the header {}",
                    i + 1,
                    cells.len(),
                    columns.len()
                )));
            }
            Ok(cells.into_iter().map(|c| c.trim().parse::<f64>().map_or(Value::String(c), |f| json!(f))).collect())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((columns, rows))
}

fn csv_fields(line: &str) -> Result<Vec<String>, ScoringError> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("starts with one field");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err(bad_request("unterminated quote in the CSV body"));
    }
    Ok(fields)
}

/// The response body (see the module's docs for its two forms).
pub(crate) fn encode(outputs: Vec<NamedTensor>, shape: Shape) -> Value {
    if shape == Shape::Frame {
        return json!({ "predictions": records(outputs) });
    }
    let mut predictions = Map::new();
    for t in outputs {
        predictions.insert(t.name, nest(&mut elements(t.data).into_iter(), &t.shape));
    }
    json!({ "predictions": predictions })
}

fn elements(data: TensorData) -> Vec<Value> {
    match data {
        TensorData::F32(v) => v.into_iter().map(|x| json!(x)).collect(),
        TensorData::F64(v) => v.into_iter().map(|x| json!(x)).collect(),
        TensorData::I32(v) => v.into_iter().map(|x| json!(x)).collect(),
        TensorData::I64(v) => v.into_iter().map(|x| json!(x)).collect(),
        TensorData::Bool(v) => v.into_iter().map(|x| json!(x)).collect(),
        TensorData::Str(v) => v.into_iter().map(|x| json!(x)).collect(),
    }
}

/// Data-frame records of the outputs.
fn records(outputs: Vec<NamedTensor>) -> Vec<Value> {
    let columns: Vec<(String, Vec<i64>, Vec<Value>)> =
        outputs.into_iter().map(|t| (t.name, t.shape, elements(t.data))).collect();
    let len = columns.first().map_or(0, |c| c.2.len());
    if columns.iter().all(|c| c.2.len() == len) {
        // MLflow's ONNX flavor: each output flattened into one column.
        return (0..len)
            .map(|i| Value::Object(columns.iter().map(|(name, _, v)| (name.clone(), v[i].clone())).collect()))
            .collect();
    }
    // Sizes differ (MLflow fails here): one record per row.
    let rows = columns.iter().map(|c| c.1.first().copied().unwrap_or(1)).max().unwrap_or(0).max(0) as usize;
    let mut out: Vec<Map<String, Value>> = vec![Map::new(); rows];
    for (name, shape, values) in columns {
        let mut flat = values.into_iter();
        let inner = shape.get(1..).unwrap_or_default();
        for record in out.iter_mut() {
            record.insert(name.clone(), nest(&mut flat, inner));
        }
    }
    out.into_iter().map(Value::Object).collect()
}

fn nest(flat: &mut impl Iterator<Item = Value>, shape: &[i64]) -> Value {
    match shape.split_first() {
        None => flat.next().unwrap_or(Value::Null),
        Some((&n, rest)) => Value::Array((0..n.max(0)).map(|_| nest(flat, rest)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }
    fn iris() -> Vec<TensorSpec> {
        vec![spec("input", DType::F32, &[-1, 4])]
    }
    fn json_body(v: Value) -> Result<Vec<NamedTensor>, ScoringError> {
        decode(Format::Json, v.to_string().as_bytes(), &iris()).map(|d| d.0)
    }
    fn two_rows() -> NamedTensor {
        NamedTensor {
            name: "input".into(),
            shape: vec![2, 4],
            data: TensorData::F32(vec![5.1, 3.5, 1.4, 0.2, 6.2, 3.4, 5.4, 2.3]),
        }
    }

    /// Bodies in the forms MLflow's documentation gives for `/invocations`.
    #[test]
    fn every_documented_form_gives_the_same_tensor() {
        let cols = json!(["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]);
        let rows = json!([[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]);
        let records = json!([
            {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2},
            {"sepal length (cm)": 6.2, "sepal width (cm)": 3.4, "petal length (cm)": 5.4, "petal width (cm)": 2.3}
        ]);
        for body in [
            json!({"dataframe_split": {"columns": cols, "data": rows}}),
            json!({"dataframe_split": {"index": [0, 1], "columns": cols, "data": rows}}),
            json!({"dataframe_records": records}),
            json!({"instances": rows}),
            json!({"inputs": rows}),
            json!({"inputs": {"input": rows}}),
            json!({"instances": [{"input": [5.1, 3.5, 1.4, 0.2]}, {"input": [6.2, 3.4, 5.4, 2.3]}]}),
            json!({"inputs": rows, "params": {"ignored": 1}}),
        ] {
            assert_eq!(json_body(body.clone()).unwrap(), vec![two_rows()], "{body}");
        }
        let csv = "a,b,c,d\n5.1,3.5,1.4,0.2\n6.2,3.4,5.4,2.3\n";
        assert_eq!(decode(Format::Csv, csv.as_bytes(), &iris()).unwrap(), (vec![two_rows()], Shape::Frame));
        let frame = json!({"dataframe_split": {"data": [[1, 2, 3, 4]]}}).to_string();
        assert_eq!(decode(Format::Json, frame.as_bytes(), &iris()).unwrap().1, Shape::Frame);
        let tensors = json!({"inputs": [[1, 2, 3, 4]]}).to_string();
        assert_eq!(decode(Format::Json, tensors.as_bytes(), &iris()).unwrap().1, Shape::Tensors);
    }

    #[test]
    fn one_row_without_the_batch_dimension() {
        let t = json_body(json!({"inputs": [5.1, 3.5, 1.4, 0.2]})).unwrap();
        assert_eq!(t[0].shape, [1, 4]);
    }

    #[test]
    fn several_inputs_by_column_or_name() {
        let inputs = vec![spec("age", DType::I64, &[-1]), spec("score", DType::F64, &[-1, 1])];
        let split = json!({"dataframe_split": {"columns": ["score", "age"], "data": [[[0.5], 30], [[0.25], 41]]}});
        let t = decode(Format::Json, split.to_string().as_bytes(), &inputs).unwrap().0;
        assert_eq!(t[0], NamedTensor { name: "age".into(), shape: vec![2], data: TensorData::I64(vec![30, 41]) });
        assert_eq!(
            t[1],
            NamedTensor { name: "score".into(), shape: vec![2, 1], data: TensorData::F64(vec![0.5, 0.25]) }
        );
        let missing = json!({"inputs": {"age": [1]}});
        let err = decode(Format::Json, missing.to_string().as_bytes(), &inputs).unwrap_err();
        assert_eq!(err.code, "INVALID_PARAMETER_VALUE");
        assert!(err.message.contains("\"score\""), "{err:?}");
    }

    #[test]
    fn bad_bodies_get_mlflows_error_codes() {
        for (body, code) in [
            (json!({"foo": 1}), "BAD_REQUEST"),
            (json!({"inputs": [[1.0]], "instances": [[1.0]]}), "BAD_REQUEST"),
            (json!([1, 2]), "BAD_REQUEST"),
            (json!({"dataframe_split": [1]}), "BAD_REQUEST"),
            (json!({"inputs": [[1.0, 2.0], [3.0]]}), "INVALID_PARAMETER_VALUE"),
            (json!({"inputs": [["a", "b", "c", "d"]]}), "INVALID_PARAMETER_VALUE"),
            (json!({"dataframe_records": []}), "INVALID_PARAMETER_VALUE"),
        ] {
            assert_eq!(json_body(body.clone()).unwrap_err().code, code, "{body}");
        }
        assert_eq!(decode(Format::Json, b"{not json", &iris()).unwrap_err().code, "BAD_REQUEST");
        assert_eq!(decode(Format::Csv, b"a,b\n1,\"2\n", &iris()).unwrap_err().code, "BAD_REQUEST");
        assert!(Format::from_content_type(Some("text/plain")).is_err());
        assert!(Format::from_content_type(Some("application/json; charset=latin-1")).is_err());
        assert_eq!(Format::from_content_type(Some("application/json; charset=UTF-8")), Ok(Format::Json));
        assert_eq!(Format::from_content_type(Some("text/csv")), Ok(Format::Csv));
    }

    #[test]
    fn outputs_nest_by_shape() {
        let outputs = || {
            vec![
                NamedTensor { name: "label".into(), shape: vec![2], data: TensorData::I64(vec![0, 2]) },
                NamedTensor {
                    name: "probabilities".into(),
                    shape: vec![2, 2],
                    data: TensorData::F32(vec![0.75, 0.25, 0.5, 0.5]),
                },
            ]
        };
        assert_eq!(
            encode(outputs(), Shape::Tensors),
            json!({"predictions": {"label": [0, 2], "probabilities": [[0.75, 0.25], [0.5, 0.5]]}})
        );
        // Sizes differ: a record per row.
        assert_eq!(
            encode(outputs(), Shape::Frame),
            json!({"predictions": [{"label": 0, "probabilities": [0.75, 0.25]}, {"label": 2, "probabilities": [0.5, 0.5]}]})
        );
        // One output: MLflow's flattened column.
        let one = NamedTensor { name: "y".into(), shape: vec![1, 2], data: TensorData::F32(vec![0.5, 1.5]) };
        assert_eq!(encode(vec![one], Shape::Frame), json!({"predictions": [{"y": 0.5}, {"y": 1.5}]}));
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_fields(r#"a,"b,c","d""e""#).unwrap(), ["a", "b,c", "d\"e"]);
    }
}
