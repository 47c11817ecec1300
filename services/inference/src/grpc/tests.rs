//! The gRPC side in process: both services on a port chosen at run time,
//! called with the generated clients over models served by a fake runner
//! (`crate::testing`). Each documented error row of the README's table is
//! here with its code and metadata, for `Predict` and OIP's `ModelInfer`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ferry_proto::{
    inference::v1::{self as pb, inference_client::InferenceClient},
    oip::{
        InferTensorContents, ModelInferRequest, ModelReadyRequest,
        grpc_inference_service_client::GrpcInferenceServiceClient, model_infer_request::InferInputTensor,
    },
};
use tonic::{Code, Request, transport::Channel};

use crate::{serving::Models, testing};

const LIMIT: usize = 64 << 10;

struct Server {
    channel: Channel,
    _stop: ferry_server::StopTrigger,
}

async fn serve(models: &Arc<Models>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, stop) = ferry_server::stop_signal();
    let server = tonic::transport::Server::builder()
        .add_service(super::inference_server(Arc::clone(models), LIMIT))
        .add_service(super::oip_server(Arc::clone(models), LIMIT))
        .serve_with_incoming_shutdown(ferry_telemetry::net::nodelay_incoming(listener), stop.fired());
    tokio::spawn(server);
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Server { channel, _stop: trigger }
}

fn predict(model: &str, version: &str, x: Vec<f32>) -> pb::PredictRequest {
    let rows = x.len() as i64 / testing::WIDTH;
    pb::PredictRequest {
        model: model.into(),
        version: version.into(),
        inputs: vec![pb::Tensor {
            name: "x".into(),
            dtype: pb::DataType::Float32.into(),
            shape: vec![rows, testing::WIDTH],
            float_data: x,
            ..Default::default()
        }],
        outputs: Vec::new(),
    }
}

fn infer(model: &str, version: &str, shape: Vec<i64>, x: Vec<f32>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape,
            contents: Some(InferTensorContents { fp32_contents: x, ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn row() -> Vec<f32> {
    vec![1.0, 2.0, 3.0, 4.0]
}

/// Calls both APIs with the same request and returns both statuses.
async fn both(
    s: &Server,
    model: &str,
    version: &str,
    shape: Vec<i64>,
    x: Vec<f32>,
) -> [Result<String, tonic::Status>; 2] {
    let mut ferry = InferenceClient::new(s.channel.clone());
    let mut oip = GrpcInferenceServiceClient::new(s.channel.clone());
    let mut p = predict(model, version, x.clone());
    p.inputs[0].shape.clone_from(&shape);
    [
        ferry.predict(p).await.map(|r| r.into_inner().model_version),
        oip.model_infer(infer(model, version, shape, x)).await.map(|r| r.into_inner().model_version),
    ]
}

fn code_of(r: &Result<String, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => (Code::Ok, v.clone()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test]
async fn predictions_carry_the_version_that_served() {
    let m = testing::models();
    let s = serve(&m).await;
    let resp =
        InferenceClient::new(s.channel.clone()).predict(predict("double", "", row())).await.unwrap().into_inner();
    assert_eq!((resp.model.as_str(), resp.model_version.as_str()), ("double", "3"));
    assert_eq!(resp.outputs[0].float_data, [2.0, 4.0, 6.0, 8.0]);
    let resp = GrpcInferenceServiceClient::new(s.channel.clone())
        .model_infer(infer("double", "", vec![1, 4], row()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_version, "3");
    let y = resp.outputs[0].contents.as_ref().map(|c| c.fp32_contents.clone());
    assert_eq!(y.as_deref(), Some(&[2.0, 4.0, 6.0, 8.0][..]), "typed contents for a typed request");
    let mut raw = infer("double", "", vec![1, 4], Vec::new());
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![row().iter().flat_map(|v| v.to_le_bytes()).collect()];
    let resp = GrpcInferenceServiceClient::new(s.channel.clone()).model_infer(raw).await.unwrap().into_inner();
    let y: Vec<f32> =
        resp.raw_output_contents[0].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(y, [2.0, 4.0, 6.0, 8.0], "raw in, raw out, as Triton answers");
}

/// Model, pinned version, input shape and data, the code both APIs answer, and what its message names.
type Case = (&'static str, &'static str, Vec<i64>, Vec<f32>, Code, &'static str);

#[tokio::test]
async fn each_documented_error_has_its_code() {
    let m = testing::models();
    let s = serve(&m).await;
    let cases: [Case; 5] = [
        ("pending", "", vec![1, 4], row(), Code::Unavailable, "no version loaded"),
        ("double", "", vec![1, 3], vec![1.0, 2.0, 3.0], Code::InvalidArgument, "x"),
        ("double", "", vec![1, 4], vec![1.0, f32::NAN, 3.0, 4.0], Code::InvalidArgument, "NaN"),
        ("nope", "", vec![1, 4], row(), Code::NotFound, "double"),
        ("double", "2", vec![1, 4], row(), Code::FailedPrecondition, "serves version 3"),
    ];
    for (model, version, shape, x, code, named) in cases {
        for (api, r) in ["Predict", "ModelInfer"].iter().zip(both(&s, model, version, shape.clone(), x.clone()).await) {
            let (got, message) = code_of(&r);
            assert_eq!(got, code, "{api} {model}/{version:?} {shape:?}: {message}");
            assert!(message.contains(named), "{api}: {message:?} should say {named:?}");
        }
    }
    let ready = GrpcInferenceServiceClient::new(s.channel.clone())
        .model_ready(ModelReadyRequest { name: "pending".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
}

#[tokio::test]
async fn too_many_in_flight_is_resource_exhausted_with_retry_after() {
    let m = testing::models();
    let s = serve(&m).await;
    let held: Vec<_> = (0..testing::MAX_IN_FLIGHT)
        .map(|_| m.acquire("double", None, crate::serving::Method::GrpcPredict, &()).unwrap())
        .collect();
    for (api, r) in ["Predict", "ModelInfer"].iter().zip(both(&s, "double", "", vec![1, 4], row()).await) {
        let status = r.expect_err("overloaded");
        assert_eq!(status.code(), Code::ResourceExhausted, "{api}: {}", status.message());
        assert_eq!(status.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{api}");
    }
    drop(held);
    let [a, b] = both(&s, "double", "", vec![1, 4], row()).await;
    assert_eq!((a.unwrap(), b.unwrap()), ("3".to_owned(), "3".to_owned()));
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_before_decoding() {
    let m = testing::models();
    let s = serve(&m).await;
    let x = vec![1.0; LIMIT / 4 + 4];
    for (api, r) in ["Predict", "ModelInfer"].iter().zip(both(&s, "double", "", vec![-1, 4], x).await) {
        let status = r.expect_err("over the limit");
        assert_eq!(status.code(), Code::OutOfRange, "{api}: {}", status.message());
    }
}

#[tokio::test]
async fn a_request_whose_deadline_passes_in_the_queue_never_runs() {
    let (m, slow_calls) = testing::models_and_slow_calls();
    let s = serve(&m).await;
    let exec = Arc::clone(&m.slot("slow").unwrap().stats.exec);
    // The slow model's one worker is busy with the first request...
    let mut first = InferenceClient::new(s.channel.clone());
    let running = tokio::spawn(async move { first.predict(predict("slow", "", row())).await });
    while slow_calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // ...so the second waits in its queue past its deadline.
    let started = Instant::now();
    let mut req = Request::new(predict("slow", "", row()));
    req.set_timeout(Duration::from_millis(100));
    let status = InferenceClient::new(s.channel.clone()).predict(req).await.expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    assert!(started.elapsed() < testing::SLOW, "answered at the deadline, not when the worker freed up");
    assert_eq!(running.await.unwrap().unwrap().into_inner().model_version, "1");
    tokio::time::sleep(testing::SLOW).await;
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1, "the expired request was dropped, not computed");
    assert_eq!(exec.requests.load(Ordering::Relaxed), 1);
}
