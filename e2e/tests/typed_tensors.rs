//! Every tensor type Ferry supports, end to end through ONNX Runtime, over
//! ferry.inference.v1 and the Open Inference Protocol; each validation case
//! named precisely; request size limits on gRPC and HTTP.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, promote, python, register_file, start_inference, start_registry, wait_for};
use ferry_proto::{
    inference::v1::{DataType, PredictRequest, Tensor},
    oip::{self, InferTensorContents, ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient},
};
use tonic::Code;

/// A named change that breaks a valid request, and the message it must produce.
type Mutation = Box<dyn Fn(&mut PredictRequest)>;

fn t(name: &str, dtype: DataType, shape: Vec<i64>) -> Tensor {
    Tensor { name: name.into(), dtype: dtype.into(), shape, ..Default::default() }
}

/// A valid request: f64 [3,2], i32 [3], i64 [3], bool [3], string [3].
fn request() -> PredictRequest {
    PredictRequest {
        model: "types".into(),
        inputs: vec![
            Tensor { double_data: vec![1.5, -2.0, 0.25, 4.0, 3.0, -1.0], ..t("a", DataType::Float64, vec![3, 2]) },
            Tensor { int32_data: vec![1, -2, 3], ..t("b", DataType::Int32, vec![3]) },
            Tensor { int64_data: vec![1 << 40, -5, 7], ..t("c", DataType::Int64, vec![3]) },
            Tensor { bool_data: vec![true, false, true], ..t("d", DataType::Bool, vec![3]) },
            Tensor {
                string_data: vec!["héllo".into(), String::new(), "ferry".into()],
                ..t("s", DataType::String, vec![3])
            },
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_tensors_validation_and_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let model = d.join("types.onnx");
    python(
        &format!(
            "import onnx\n\
             from onnx import helper, TensorProto as T\n\
             vi = helper.make_tensor_value_info\n\
             g = helper.make_graph([\n\
                 helper.make_node('Mul', ['a', 'a'], ['a2']),\n\
                 helper.make_node('Add', ['b', 'b'], ['b2']),\n\
                 helper.make_node('Neg', ['c'], ['c2']),\n\
                 helper.make_node('Not', ['d'], ['d2']),\n\
                 helper.make_node('Identity', ['s'], ['s2'])], 'types',\n\
                 [vi('a', T.DOUBLE, [None, 2]), vi('b', T.INT32, [None]), vi('c', T.INT64, [None]),\n\
                  vi('d', T.BOOL, [None]), vi('s', T.STRING, [None])],\n\
                 [vi('a2', T.DOUBLE, [None, 2]), vi('b2', T.INT32, [None]), vi('c2', T.INT64, [None]),\n\
                  vi('d2', T.BOOL, [None]), vi('s2', T.STRING, [None])])\n\
             onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), '{}')",
            model.display()
        ),
        &[],
    )?;
    let mlflow = Mlflow::start(d).await?;
    let mut registry = start_registry(d, &mlflow.url, &[]).await?;
    register_file(&mut registry.client, "types", &model).await?;
    promote(&mut registry.client, "types", "1").await?;
    let inference = start_inference(
        d,
        &mlflow.url,
        Some(&registry.url),
        "types:Production",
        &[("FERRY_MAX_REQUEST_BYTES", (64 << 10).to_string())],
    )
    .await?;
    let mut c = inference.client.clone();
    let resp = wait_for("the typed model to serve", Duration::from_secs(60), || {
        let mut c = c.clone();
        async move { Ok(c.predict(request()).await.ok().map(|r| r.into_inner())) }
    })
    .await
    .with_context(|| inference.proc.log_tail())?;
    let out = |n: &str| resp.outputs.iter().find(|t| t.name == n).cloned().unwrap_or_default();
    ensure!(
        out("a2").double_data == vec![2.25, 4.0, 0.0625, 16.0, 9.0, 1.0] && out("a2").shape == vec![3, 2],
        "{resp:?}"
    );
    ensure!(out("b2").int32_data == vec![2, -4, 6], "{resp:?}");
    ensure!(out("c2").int64_data == vec![-(1 << 40), 5, -7], "{resp:?}");
    ensure!(out("d2").bool_data == vec![false, true, false], "{resp:?}");
    ensure!(out("s2").string_data == vec!["héllo".to_owned(), String::new(), "ferry".to_owned()], "{resp:?}");
    ensure!(out("s2").dtype() == DataType::String, "{resp:?}");
    // Inputs in any order: the session is handed them in the model's own.
    let mut reversed = request();
    reversed.inputs.reverse();
    let again = c.predict(reversed).await?.into_inner();
    ensure!(again.outputs == resp.outputs, "reversed inputs: {again:?}");

    // The same through the Open Inference Protocol with typed contents (BYTES, BOOL, INT32 ...).
    let mut oipc = GrpcInferenceServiceClient::connect(inference.grpc.clone()).await?;
    let input = |name: &str, datatype: &str, shape: Vec<i64>, contents: InferTensorContents| {
        oip::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            contents: Some(contents),
            ..Default::default()
        }
    };
    let r = oipc
        .model_infer(ModelInferRequest {
            model_name: "types".into(),
            inputs: vec![
                input(
                    "a",
                    "FP64",
                    vec![1, 2],
                    InferTensorContents { fp64_contents: vec![2.0, 3.0], ..Default::default() },
                ),
                input("b", "INT32", vec![1], InferTensorContents { int_contents: vec![21], ..Default::default() }),
                input("c", "INT64", vec![1], InferTensorContents { int64_contents: vec![9], ..Default::default() }),
                input("d", "BOOL", vec![1], InferTensorContents { bool_contents: vec![false], ..Default::default() }),
                input(
                    "s",
                    "BYTES",
                    vec![1],
                    InferTensorContents { bytes_contents: vec![b"oip".to_vec()], ..Default::default() },
                ),
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    let o = |n: &str| r.outputs.iter().find(|t| t.name == n).and_then(|t| t.contents.clone()).unwrap_or_default();
    ensure!(o("a2").fp64_contents == vec![4.0, 9.0] && o("b2").int_contents == vec![42], "{r:?}");
    ensure!(o("d2").bool_contents == vec![true] && o("s2").bytes_contents == vec![b"oip".to_vec()], "{r:?}");
    ensure!(r.outputs.iter().any(|t| t.name == "s2" && t.datatype == "BYTES"), "{r:?}");

    // Each validation failure is INVALID_ARGUMENT naming the input and what was expected.
    let cases: Vec<(&str, Mutation, &str)> = vec![
        ("unknown input", Box::new(|r| r.inputs[0].name = "zzz".into()), "unknown input \"zzz\""),
        (
            "missing input",
            Box::new(|r| {
                r.inputs.remove(4);
            }),
            "missing input \"s\"",
        ),
        (
            "wrong dtype",
            Box::new(|r| {
                let a = &mut r.inputs[0];
                a.dtype = DataType::Float32.into();
                a.float_data = vec![0.0; 6];
                a.double_data.clear();
            }),
            "input \"a\": expected float64, got float32",
        ),
        ("wrong rank", Box::new(|r| r.inputs[0].shape = vec![6]), "input \"a\": expected rank 2"),
        ("wrong dimension", Box::new(|r| r.inputs[0].shape = vec![2, 3]), "input \"a\": dimension 1 must be 2"),
        (
            "element count",
            Box::new(|r| r.inputs[1].int32_data.push(9)),
            "input \"b\": shape [3] needs 3 elements, got 4",
        ),
        ("non-finite", Box::new(|r| r.inputs[0].double_data[1] = f64::NAN), "input \"a\": NaN and infinite values"),
        (
            "data in the wrong field",
            Box::new(|r| r.inputs[2].int32_data = vec![1, 2, 3]),
            "input \"c\": dtype is DATA_TYPE_INT64",
        ),
    ];
    for (what, mutate, expect) in cases {
        let mut req = request();
        mutate(&mut req);
        let err = c.predict(req).await.expect_err(what);
        ensure!(
            err.code() == Code::InvalidArgument && err.message().contains(expect),
            "{what}: got {:?} {:?}, expected a message containing {expect:?}",
            err.code(),
            err.message()
        );
    }

    // Size limits: over 64 KiB is refused on both transports.
    let mut big = request();
    big.inputs[0].double_data = vec![1.0; 20_000];
    big.inputs[0].shape = vec![10_000, 2];
    let err = c.predict(big).await.expect_err("too large");
    ensure!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{err:?}");
    let body = serde_json::json!({"data": vec![1.0; 20_000]}).to_string();
    let r = reqwest::Client::new().post(format!("{}/predict", inference.http)).body(body).send().await?;
    ensure!(r.status() == 413, "HTTP over the limit: {}", r.status());
    // The service is unharmed.
    ensure!(c.predict(request()).await.is_ok(), "a valid request after the failures");

    // gRPC-Web, as browser gRPC clients speak it: HTTP/1.1, framed body, trailers in the body.
    let url = format!("{}/ferry.inference.v1.Inference/Predict", inference.grpc);
    let http = reqwest::Client::builder().http1_only().build()?;
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await?;
    ensure!(preflight.status().is_success(), "preflight: {}", preflight.status());
    ensure!(preflight.headers().get("access-control-allow-origin").is_some(), "preflight without CORS headers");
    let msg = prost::Message::encode_to_vec(&request());
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let r = http
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "https://app.example")
        .body(body)
        .send()
        .await?;
    ensure!(r.status() == 200 && r.headers().get("access-control-allow-origin").is_some(), "grpc-web: {r:?}");
    let bytes = r.bytes().await?;
    ensure!(bytes.len() > 5 && bytes[0] == 0, "grpc-web body: {bytes:?}");
    let len = u32::from_be_bytes(bytes[1..5].try_into()?) as usize;
    let reply: ferry_proto::inference::v1::PredictResponse = prost::Message::decode(&bytes[5..5 + len])?;
    ensure!(reply.outputs.iter().any(|t| t.name == "b2" && t.int32_data == vec![2, -4, 6]), "{reply:?}");
    let trailer = String::from_utf8_lossy(&bytes[5 + len..]);
    ensure!(trailer.contains("grpc-status:0"), "trailer {trailer:?}");
    Ok(())
}
