//! The HTTP side in process: the router as the binary serves it (CORS layer
//! included), driven with `oneshot` over models served by a fake runner
//! (`crate::testing`). Each documented error row of the README's table is
//! here, with its status, headers and body, for every HTTP API that can hit it.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

use crate::{browser::HttpBrowserLayer, serving::Models, testing};

/// The request size limit the router is built with here.
const LIMIT: usize = 64 << 10;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(models: &Arc<Models>, req: Request<Body>) -> Reply {
    let app = ServiceBuilder::new().layer(HttpBrowserLayer).service(super::router(Arc::clone(models), None, LIMIT));
    let resp = app.oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply { status: parts.status, headers: parts.headers, body }
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn row() -> Value {
    json!({"data": [1, 2, 3, 4]})
}

fn oip(shape: &[i64]) -> Value {
    let n: i64 = shape.iter().product();
    json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": (1..=n).collect::<Vec<_>>()}]})
}

fn v1(version: &str) -> Value {
    json!({"model": "double", "version": version,
           "inputs": [{"name": "x", "dtype": "FLOAT32", "shape": ["1", "4"], "floatData": [1, 2, 3, 4]}]})
}

fn error_of(r: &Reply) -> &str {
    r.body["error"].as_str().unwrap_or_else(|| panic!("no Ferry error body: {}", r.body))
}

#[tokio::test]
async fn every_api_answers_with_the_version_that_served() {
    let m = testing::models();
    let r = send(&m, post("/predict", &row())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"modelVersion": "3", "prediction": [2.0, 4.0, 6.0, 8.0]}));
    // The query is percent-decoded; keys /predict does not know are ignored.
    let r = send(&m, post("/predict?model=d%6Fuble&output=y&unknown=1", &row())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["prediction"], json!([2.0, 4.0, 6.0, 8.0]));
    let r = send(&m, post("/v2/models/double/infer", &oip(&[1, 4]))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["model_version"].as_str(), &r.body["outputs"][0]["data"]),
        (Some("3"), &json!([2.0, 4.0, 6.0, 8.0]))
    );
    let r = send(&m, post("/v1/predict", &v1("3"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["modelVersion"], "3");
    assert_eq!(r.body["outputs"][0]["floatData"], json!([2.0, 4.0, 6.0, 8.0]));
}

#[tokio::test]
async fn a_model_with_no_version_loaded_is_503_with_retry_after() {
    let m = testing::models();
    for req in [
        post("/predict?model=pending", &row()),
        post("/v2/models/pending/infer", &oip(&[1, 4])),
        post("/invocations?model=pending", &json!({"inputs": [[1, 2, 3, 4]]})),
    ] {
        let uri = req.uri().clone();
        let r = send(&m, req).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {}", r.body);
        assert_eq!(r.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]), "{uri}");
        assert!(r.body.to_string().contains("no version loaded"), "{uri}: {}", r.body);
    }
    let r = send(&m, get("/v2/models/pending/ready")).await;
    assert_ne!(r.status, StatusCode::OK, "OIP readiness of a model still loading");
    let r = send(&m, get("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "the service is not ready until every model is");
}

#[tokio::test]
async fn input_that_does_not_fit_the_signature_is_400_naming_the_problem() {
    let m = testing::models();
    let cases = [
        (post("/predict", &json!({"data": [1, 2, 3]})), "4"),
        (post("/predict", &json!({"rows": [1]})), "data"),
        (post("/predict", &json!({"data": []})), "at least one"),
        // Finite in JSON, infinite as float32: the answer says why.
        (post("/predict", &json!({"data": [1e39, 1, 2, 3]})), "float32 holds up to"),
        (
            post(
                "/v2/models/double/infer",
                &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, -1e39, 4]}]}),
            ),
            "float32 holds up to",
        ),
        (post("/predict?model=double&model=double", &row()), "more than once"),
        (post("/v2/models/double/infer", &oip(&[1, 3])), "x"),
        (
            post(
                "/v2/models/double/infer",
                &json!({"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            ),
            "z",
        ),
        (
            post(
                "/v2/models/double/infer",
                &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
            ),
            "x",
        ),
        (
            post(
                "/v2/models/double/infer",
                &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}),
            ),
            "x",
        ),
        (
            post(
                "/v1/predict",
                &json!({"model": "double", "inputs": [{"name": "x", "dtype": "FLOAT32", "shape": ["2", "4"], "floatData": [1]}]}),
            ),
            "x",
        ),
    ];
    for (req, named) in cases {
        let uri = req.uri().clone();
        let r = send(&m, req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
        assert!(error_of(&r).contains(named), "{uri}: {:?} should name {named:?}", error_of(&r));
    }
    let r = send(&m, post("/invocations?model=double", &json!({"inputs": [[1, 2, 3]]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error_code"], "INVALID_PARAMETER_VALUE", "MLflow's error body on /invocations");
}

#[tokio::test]
async fn a_model_not_served_here_is_404_listing_what_is() {
    let m = testing::models();
    for req in [
        post("/predict?model=nope", &row()),
        post("/v2/models/nope/infer", &oip(&[1, 4])),
        get("/v2/models/nope"),
        post("/v1/predict", &json!({"model": "nope", "inputs": []})),
    ] {
        let uri = req.uri().clone();
        let r = send(&m, req).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.body);
        assert!(error_of(&r).contains("double"), "{uri}: the served models are named: {}", r.body);
    }
    let r = send(&m, post("/invocations?model=nope", &json!({"inputs": [[1, 2, 3, 4]]}))).await;
    assert_eq!((r.status, r.body["error_code"].as_str()), (StatusCode::NOT_FOUND, Some("RESOURCE_DOES_NOT_EXIST")));
}

#[tokio::test]
async fn a_pinned_version_that_is_not_serving_is_409() {
    let m = testing::models();
    for req in [post("/v2/models/double/versions/2/infer", &oip(&[1, 4])), post("/v1/predict", &v1("2"))] {
        let uri = req.uri().clone();
        let r = send(&m, req).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{uri}: {}", r.body);
        assert!(error_of(&r).contains("serves version 3"), "{uri}: {}", r.body);
    }
    let r = send(&m, post("/v2/models/double/versions/3/infer", &oip(&[1, 4]))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn too_many_in_flight_is_429_with_retry_after_and_clears() {
    let m = testing::models();
    let held: Vec<_> = (0..testing::MAX_IN_FLIGHT)
        .map(|_| m.acquire("double", None, crate::serving::Method::GrpcPredict, &()).unwrap())
        .collect();
    for req in [
        post("/predict", &row()),
        post("/v2/models/double/infer", &oip(&[1, 4])),
        post("/v1/predict", &v1("")),
        post("/invocations?model=double", &json!({"inputs": [[1, 2, 3, 4]]})),
    ] {
        let uri = req.uri().clone();
        let r = send(&m, req).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{uri}: {}", r.body);
        assert_eq!(r.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]), "{uri}");
    }
    drop(held);
    assert_eq!(send(&m, post("/predict", &row())).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let m = testing::models();
    let big = json!({"data": vec![1.0; LIMIT / 4]});
    assert!(big.to_string().len() > LIMIT);
    for uri in ["/predict", "/v2/models/double/infer", "/v1/predict", "/invocations"] {
        let r = send(&m, post(uri, &big)).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
    }
}

/// `POST /predict` is routed apart from the rest (`Routes`): both ways ask for a key.
#[tokio::test]
async fn with_keys_every_route_but_the_open_ones_asks_for_one() {
    let m = testing::models();
    let keys = crate::keys::ApiKeys::parse("bff=0123456789abcdef").unwrap();
    let app = super::with_keys(super::router(Arc::clone(&m), None, LIMIT), keys);
    let call = |req: Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    let keyed = |mut req: Request<Body>, key: &str| {
        req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        req
    };
    for (uri, body) in [("/predict", row()), ("/v2/models/double/infer", oip(&[1, 4])), ("/v1/predict", v1("3"))] {
        assert_eq!(call(post(uri, &body)).await, StatusCode::UNAUTHORIZED, "{uri} without a key");
        assert_eq!(call(keyed(post(uri, &body), "not-the-key-at-all")).await, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(call(keyed(post(uri, &body), "0123456789abcdef")).await, StatusCode::OK, "{uri} with the key");
    }
    assert_eq!(call(get("/v1/models")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(call(get("/predict")).await, StatusCode::UNAUTHORIZED, "another method is the router's, keys first");
    assert_eq!(call(keyed(get("/predict"), "0123456789abcdef")).await, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(call(get("/healthz")).await, StatusCode::OK, "probes stay open");
}

#[tokio::test]
async fn browsers_get_cors_and_other_callers_do_not() {
    let m = testing::models();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/predict")
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let r = send(&m, preflight).await;
    assert!(r.status.is_success(), "{}", r.status);
    assert_eq!(r.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).map(|v| v.as_bytes()), Some(&b"*"[..]));
    let mut from_browser = post("/predict", &row());
    from_browser.headers_mut().insert(header::ORIGIN, "https://app.example".parse().unwrap());
    let r = send(&m, from_browser).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "a browser's POST is readable by the page");
    let r = send(&m, post("/predict", &row())).await;
    assert!(!r.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "no CORS headers for a BFF");
}

#[tokio::test]
async fn model_listing_shows_each_state() {
    let m = testing::models();
    let r = send(&m, get("/v1/models")).await;
    let states: Vec<_> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
                s["servingVersion"].clone(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("double".to_owned(), "SERVING".to_owned(), json!("3")),
            ("slow".to_owned(), "SERVING".to_owned(), json!("1")),
            ("pending".to_owned(), "PENDING".to_owned(), Value::Null),
        ]
    );
}

#[test]
fn a_query_with_nothing_to_decode_reads_as_form_urlencoded_reads_it() {
    use super::inference::PredictQuery;
    for q in [
        "",
        "model=iris",
        "model=iris&output=y",
        "&&model=a&",
        "model",
        "model=&output=",
        "x=1&model=a=b",
        "model=a&model=b",
        "output=y&unknown&model=m",
    ] {
        let slow = PredictQuery::from_pairs(form_urlencoded::parse(q.as_bytes()));
        assert_eq!(PredictQuery::parse(Some(q)), slow, "{q:?}");
    }
    let decoded = PredictQuery::parse(Some("model=d%6Fuble+x")).unwrap();
    assert_eq!(decoded, PredictQuery::from_pairs([("model".into(), "double x".into())].into_iter()).unwrap());
}
