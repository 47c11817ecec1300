//! Property tests: whatever a client sends to `Predict` and OIP's
//! `ModelInfer` — tensors with any dtype, shape (negative, overflowing),
//! data of any length in any field, raw bytes that do not fit, unknown names
//! and versions — the answer is a code the client can act on: never a panic,
//! never INTERNAL, UNKNOWN or DATA_LOSS. Mirrors `http/hostile_tests.rs`.

use std::sync::Arc;

use ferry_proto::{
    inference::v1::{self as pb, inference_client::InferenceClient},
    oip::{
        InferTensorContents, ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor,
    },
};
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::{Code, transport::Channel};

use crate::testing;

const LIMIT: usize = 64 << 10;

fn shape() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![4 => -2i64..6, 1 => any::<i64>(), 1 => Just(i64::MAX), 1 => Just(1i64 << 31)],
        0..4,
    )
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("x".to_owned()), Just("y".to_owned()), Just(String::new()), "\\PC{0,8}"]
}

fn tensor() -> impl Strategy<Value = pb::Tensor> {
    (
        name(),
        -1i32..12,
        shape(),
        prop::collection::vec(any::<f32>(), 0..12),
        prop::collection::vec(any::<f64>(), 0..3),
        prop::collection::vec(any::<i64>(), 0..6),
        prop::collection::vec(any::<bool>(), 0..3),
        prop::collection::vec("\\PC{0,4}", 0..3),
    )
        .prop_map(|(name, dtype, shape, float_data, double_data, int64_data, bool_data, string_data)| pb::Tensor {
            name,
            dtype,
            shape,
            float_data,
            double_data,
            int64_data,
            bool_data,
            string_data,
            ..Default::default()
        })
}

/// A well-formed request for the test model with any values (NaN, infinities, no rows at all).
fn valid_ish() -> impl Strategy<Value = pb::PredictRequest> {
    (0i64..4).prop_flat_map(|rows| {
        prop::collection::vec(any::<f32>(), (rows * testing::WIDTH) as usize).prop_map(move |float_data| {
            pb::PredictRequest {
                model: "double".into(),
                inputs: vec![pb::Tensor {
                    name: "x".into(),
                    dtype: pb::DataType::Float32.into(),
                    shape: vec![rows, testing::WIDTH],
                    float_data,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
    })
}

fn predict_request() -> impl Strategy<Value = pb::PredictRequest> {
    prop_oneof![1 => valid_ish(), 2 => arbitrary_predict()]
}

fn arbitrary_predict() -> impl Strategy<Value = pb::PredictRequest> {
    (
        prop_oneof![Just("double".to_owned()), Just(String::new()), Just("../etc".to_owned())],
        prop_oneof![Just(String::new()), Just("3".to_owned()), Just("x".to_owned())],
        prop::collection::vec(tensor(), 0..3),
        prop::collection::vec(name(), 0..2),
    )
        .prop_map(|(model, version, inputs, outputs)| pb::PredictRequest { model, version, inputs, outputs })
}

fn infer_request() -> impl Strategy<Value = ModelInferRequest> {
    let datatype =
        prop::sample::select(vec!["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "FP16", "", "nope"]);
    let input = (
        name(),
        datatype,
        shape(),
        prop::collection::vec(any::<f32>(), 0..12),
        prop::collection::vec(any::<i64>(), 0..6),
    )
        .prop_map(|(name, datatype, shape, fp32_contents, int64_contents)| InferInputTensor {
            name,
            datatype: datatype.into(),
            shape,
            contents: Some(InferTensorContents { fp32_contents, int64_contents, ..Default::default() }),
            ..Default::default()
        });
    (
        prop_oneof![Just("double".to_owned()), Just(String::new()), Just("nope".to_owned())],
        prop::collection::vec(input, 0..3),
        prop::option::of(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3)),
    )
        .prop_map(|(model_name, mut inputs, raw)| {
            let raw_input_contents = raw.unwrap_or_default();
            if !raw_input_contents.is_empty() {
                // Raw contents replace typed ones (the protocol allows one or the other).
                inputs.iter_mut().for_each(|i| i.contents = None);
            }
            ModelInferRequest { model_name, inputs, raw_input_contents, ..Default::default() }
        })
}

/// Codes that would mean the server failed, not the client.
fn server_fault(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented)
}

#[test]
fn any_request_gets_a_code_a_client_can_act_on() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let channel = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let models = testing::models();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(super::inference_server(Arc::clone(&models), LIMIT))
                .add_service(super::oip_server(models, LIMIT))
                .serve_with_incoming(ferry_telemetry::net::nodelay_incoming(listener)),
        );
        Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
    });
    let mut runner = TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
    runner
        .run(&predict_request(), |req| {
            let got = rt.block_on(InferenceClient::new(channel.clone()).predict(req.clone()));
            if let Err(s) = got {
                prop_assert!(!server_fault(s.code()), "{req:?} → {:?}: {}", s.code(), s.message());
            }
            Ok(())
        })
        .unwrap();
    runner
        .run(&infer_request(), |req| {
            let got = rt.block_on(GrpcInferenceServiceClient::new(channel.clone()).model_infer(req.clone()));
            if let Err(s) = got {
                prop_assert!(!server_fault(s.code()), "{req:?} → {:?}: {}", s.code(), s.message());
            }
            Ok(())
        })
        .unwrap();
}
