//! Property tests: whatever a client sends to the HTTP APIs — JSON of any
//! shape with the fields the decoders look for, shapes whose products
//! overflow, wrong dtypes and lengths, NaN and huge numbers as text, binary
//! OIP bodies with lying lengths, bytes that are not JSON at all — the answer
//! is a status the client can act on: never a panic, never a 5xx.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use crate::{serving::Models, testing};

const LIMIT: usize = 64 << 10;
const ENDPOINTS: &[&str] =
    &["/predict", "/v2/models/double/infer", "/invocations", "/v1/predict", "/predict?model=double"];

/// Field names the decoders read, so that generated objects reach deep into them.
const KEYS: &[&str] = &[
    "data",
    "inputs",
    "outputs",
    "name",
    "shape",
    "datatype",
    "dtype",
    "parameters",
    "binary_data_size",
    "binary_data",
    "dataframe_split",
    "dataframe_records",
    "instances",
    "columns",
    "index",
    "model",
    "version",
    "floatData",
    "int64Data",
    "rawData",
    "variant",
    "x",
    "classification",
    "params",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![
            Just("NaN".to_owned()),
            Just("Infinity".to_owned()),
            Just("FP32".to_owned()),
            Just("BYTES".to_owned()),
            Just("INT64".to_owned()),
            Just("double".to_owned()),
            Just("x".to_owned()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::from),
        Just(json!(9.99e307)),
        Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())),
        ]
    })
}

/// A well-formed OIP request for the test model with any finite values, or no rows.
fn oip_valid_ish() -> impl Strategy<Value = Value> {
    (0i64..4).prop_flat_map(|rows| {
        prop::collection::vec(
            any::<f32>().prop_filter("JSON numbers are finite", |f| f.is_finite()),
            (rows * 4) as usize,
        )
        .prop_map(move |data| json!({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data}]}))
    })
}

/// An OIP request: well-formed a third of the time, else parts each plausible and together anything.
fn oip_request() -> impl Strategy<Value = Value> {
    prop_oneof![1 => oip_valid_ish(), 2 => oip_arbitrary()]
}

fn oip_arbitrary() -> impl Strategy<Value = Value> {
    let shape = prop::collection::vec(prop_oneof![-2i64..6, any::<i64>(), Just(i64::MAX), Just(1i64 << 32)], 0..4);
    let datatype =
        prop::sample::select(vec!["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "FP16", "nope"]);
    let data = prop_oneof![
        prop::collection::vec(any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from), 0..12)
            .prop_map(Value::Array),
        prop::collection::vec(json_value(), 0..4).prop_map(Value::Array),
        json_value(),
    ];
    (prop::sample::select(vec!["x", "y", ""]), shape, datatype, data, prop::option::of(json_value())).prop_map(
        |(name, shape, datatype, data, parameters)| {
            let mut input = json!({"name": name, "shape": shape, "datatype": datatype, "data": data});
            if let Some(p) = parameters {
                input["parameters"] = p;
            }
            json!({"inputs": [input]})
        },
    )
}

fn status_of(models: &Arc<Models>, req: Request<Body>) -> StatusCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let app = super::router(Arc::clone(models), None, LIMIT);
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        // The body is read whole too: an error there would be a broken answer.
        axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        status
    })
}

fn acceptable(s: StatusCode) -> bool {
    s.is_success() || s.is_client_error()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_json_gets_an_answer_a_client_can_act_on(body in json_value(), endpoint in prop::sample::select(ENDPOINTS)) {
        let m = testing::models();
        let req = Request::post(endpoint).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap();
        let s = status_of(&m, req);
        prop_assert!(acceptable(s), "{endpoint} {body} → {s}");
    }

    #[test]
    fn oip_requests_with_any_shape_dtype_and_data_are_answered_or_refused(body in oip_request()) {
        let m = testing::models();
        let req = Request::post("/v2/models/double/infer").header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap();
        let s = status_of(&m, req);
        prop_assert!(acceptable(s), "{body} → {s}");
    }

    #[test]
    fn binary_oip_bodies_with_lying_lengths_are_refused(
        header_json in oip_request(),
        declared in prop_oneof![Just(None), (0usize..4096).prop_map(Some), Just(Some(usize::MAX))],
        size in prop_oneof![0u64..64, any::<u64>()],
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut header_json = header_json;
        header_json["inputs"][0]["parameters"] = json!({"binary_data_size": size});
        header_json["inputs"][0].as_object_mut().map(|o| o.remove("data"));
        let head = header_json.to_string();
        let mut body = head.clone().into_bytes();
        body.extend(&tail);
        let length = declared.map_or(head.len(), |d| d);
        let req = Request::post("/v2/models/double/infer")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("inference-header-content-length", length.to_string())
            .body(Body::from(body))
            .unwrap();
        let s = status_of(&testing::models(), req);
        prop_assert!(acceptable(s), "{head} + {} bytes, declared {length} → {s}", tail.len());
    }

    #[test]
    fn bytes_that_are_not_json_are_refused(body in prop::collection::vec(any::<u8>(), 0..512), endpoint in prop::sample::select(ENDPOINTS)) {
        let req = Request::post(endpoint).header(header::CONTENT_TYPE, "application/json").body(Body::from(body)).unwrap();
        let s = status_of(&testing::models(), req);
        prop_assert!(acceptable(s), "{endpoint} → {s}");
    }
}

/// Past the request limit: 413 on every API, not a 5xx and not a read of it all.
#[test]
fn oversized_bodies_are_refused() {
    let m = testing::models();
    for endpoint in ENDPOINTS {
        let big = format!("{{\"data\": [{}1]}}", "1,".repeat(LIMIT));
        let req =
            Request::post(*endpoint).header(header::CONTENT_TYPE, "application/json").body(Body::from(big)).unwrap();
        assert_eq!(status_of(&m, req), StatusCode::PAYLOAD_TOO_LARGE, "{endpoint}");
    }
}
