//! Both transports in process, against an MLflow that is missing things, down
//! or too slow (a few lines of axum, a closed port, a listener that never
//! answers): every registry row of the README's error table, with the gRPC
//! code and the HTTP status a client sees, and nothing sent to MLflow for a
//! request refused before it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Body, http::StatusCode};
use ferry_proto::registry::v1::{
    self as pb, model_registry_client::ModelRegistryClient, register_model_request::Payload,
};
use tonic::{Code, transport::Channel};
use tower::ServiceExt;

use crate::{auth::Auth, grpc::RegistryService, hub::Hub, service::Registry};

const TOKEN: &str = "s3cret-token";
/// A `read` token: watches and reads, nothing more.
const READ_TOKEN: &str = "dashboard-token";

fn auth() -> Auth {
    Auth::with_tokens(
        Auth::parse_named(&format!("ci:admin={TOKEN},dashboard:read={READ_TOKEN}")).unwrap().into_iter(),
        false,
    )
}

/// What the MLflow behind the registry does.
#[derive(Debug, Clone, Copy)]
enum Mlflow {
    /// Answers every call with MLflow's 404 (`RESOURCE_DOES_NOT_EXIST`).
    Empty,
    /// Nothing listens on its port.
    Down,
    /// Accepts connections and never answers.
    Hanging,
}

struct Fixture {
    registry: Registry,
    /// Calls that reached MLflow.
    calls: Arc<AtomicUsize>,
    root: tempfile::TempDir,
    _uploads: tempfile::TempDir,
}

async fn fixture(kind: Mlflow) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    match kind {
        Mlflow::Empty => {
            let counted = Arc::clone(&calls);
            let app = axum::Router::new().fallback(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    let body = r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Registered Model with name=nope not found"}"#;
                    (StatusCode::NOT_FOUND, body)
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Mlflow::Down => drop(listener),
        Mlflow::Hanging => {
            let counted = Arc::clone(&calls);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                }
            });
        }
    }
    let mut cfg = ferry_mlflow::Config::new(url.parse().unwrap());
    cfg.timeout = Duration::from_millis(300);
    cfg.retries = 1;
    let uploads = tempfile::tempdir().unwrap();
    let registry = Registry {
        mlflow: ferry_mlflow::Client::new(cfg).unwrap(),
        hub: Hub::new(16, 16),
        experiment: "ferry-registrations".into(),
        max_model_bytes: 1 << 20,
        upload_dir: uploads.path().to_owned(),
        path_root: None,
    };
    Fixture { registry, calls, root: tempfile::tempdir().unwrap(), _uploads: uploads }
}

async fn grpc(f: &Fixture) -> ModelRegistryClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = crate::files::ModelFiles::new(
        f.registry.mlflow.clone(),
        Arc::clone(&f.registry.hub),
        f.root.path().join("files"),
        1 << 20,
        1,
        std::time::Duration::from_secs(1),
    );
    let service = RegistryService {
        registry: f.registry.clone(),
        auth: auth(),
        traffic: Arc::default(),
        files: Arc::new(files),
        peers: None,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::model_registry_server::ModelRegistryServer::new(service))
            .serve_with_incoming(ferry_telemetry::net::nodelay_incoming(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    ModelRegistryClient::new(channel)
}

fn authorized<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

/// The HTTP routes over the fixture: no webhook secret, no peers, ready.
fn routes(f: &Fixture) -> crate::http::Routes {
    crate::http::Routes {
        registry: f.registry.clone(),
        auth: auth(),
        webhooks: None,
        peers: None,
        traffic: Arc::default(),
        ready: tokio::sync::watch::channel(true).1,
    }
}

async fn http(f: &Fixture, req: http::Request<Body>) -> (StatusCode, String) {
    let app = crate::http::router(routes(f));
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, v["error"].as_str().unwrap_or_default().to_owned())
}

fn put_stage(model: &str, stage: &str, token: Option<&str>) -> http::Request<Body> {
    let mut b = http::Request::put(format!("/set-model-stage?modelName={model}&version=1&stage={stage}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

fn upload(name: &str, bytes: &[u8]) -> http::Request<Body> {
    let boundary = "ferry-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"modelName\"\r\n\r\n{name}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model.onnx\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    http::Request::post("/register-model")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap()
}

fn register_path(path: &std::path::Path) -> http::Request<Body> {
    http::Request::post("/register-model")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::json!({"modelName": "m", "path": path}).to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_bad_onnx_upload_or_stage_is_invalid_argument_and_nothing_reaches_mlflow() {
    let f = fixture(Mlflow::Empty).await;
    let mut client = grpc(&f).await;
    let messages = vec![
        pb::RegisterModelRequest {
            payload: Some(Payload::Metadata(pb::RegisterModelMetadata { name: "m".into(), ..Default::default() })),
        },
        pb::RegisterModelRequest { payload: Some(Payload::Chunk(b"not an onnx graph".to_vec())) },
    ];
    let status = client.register_model(authorized(tokio_stream::iter(messages))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let (s, error) = http(&f, upload("m", b"not an onnx graph")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{error}");
    let req = pb::TransitionStageRequest { name: "m".into(), version: "1".into(), ..Default::default() };
    let status = client.transition_stage(authorized(req)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let (s, error) = http(&f, put_stage("m", "Bogus", Some(TOKEN))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error.contains("Bogus"), "{error}");
    assert_eq!(f.calls.load(Ordering::SeqCst), 0, "refused before anything was sent to MLflow");
}

#[tokio::test]
async fn an_unknown_model_is_not_found_naming_it() {
    let f = fixture(Mlflow::Empty).await;
    let status = grpc(&f).await.get_model(authorized(pb::GetModelRequest { name: "nope".into() })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(status.message().contains("nope"), "{}", status.message());
    let (s, error) = http(&f, put_stage("nope", "Staging", Some(TOKEN))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{error}");
    assert!(error.contains("nope"), "{error}");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated_and_a_read_token_on_a_write_is_denied() {
    let f = fixture(Mlflow::Empty).await;
    let mut client = grpc(&f).await;
    let alias = || pb::SetAliasRequest {
        name: "m".into(),
        alias: "champion".into(),
        version: "1".into(),
        ..Default::default()
    };
    let status = client.set_alias(alias()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let mut wrong = tonic::Request::new(alias());
    wrong.metadata_mut().insert("authorization", "Bearer guess".parse().unwrap());
    assert_eq!(client.set_alias(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    // Traffic figures drive rollouts: reporting them is a write too.
    let report = || pb::ReportTrafficRequest { replica: "r".into(), variants: vec![] };
    assert_eq!(client.report_traffic(report()).await.unwrap_err().code(), Code::Unauthenticated);
    client.report_traffic(authorized(report())).await.expect("a replica with the token reports");
    let mut oversized = authorized(report());
    oversized.get_mut().variants =
        vec![pb::VariantTraffic { latency: vec![1; ferry_traffic::latency::BUCKETS + 1], ..Default::default() }];
    assert_eq!(client.report_traffic(oversized).await.unwrap_err().code(), Code::InvalidArgument);
    // A known token whose role does not cover the call: PERMISSION_DENIED / 403, saying which role it needs.
    let mut reader = tonic::Request::new(alias());
    reader.metadata_mut().insert("authorization", format!("Bearer {READ_TOKEN}").parse().unwrap());
    let denied = client.set_alias(reader).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{}", denied.message());
    assert!(denied.message().contains("role read") && !denied.message().contains(READ_TOKEN), "{}", denied.message());
    let mut reader = tonic::Request::new(report());
    reader.metadata_mut().insert("authorization", format!("Bearer {READ_TOKEN}").parse().unwrap());
    assert_eq!(client.report_traffic(reader).await.unwrap_err().code(), Code::PermissionDenied);
    let (s, error) = http(&f, put_stage("m", "Staging", Some(READ_TOKEN))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{error}");
    for token in [None, Some("guess")] {
        let (s, error) = http(&f, put_stage("m", "Staging", token)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{token:?}: {error}");
        assert!(!error.contains(TOKEN), "the token never appears in an error");
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_side_path_outside_the_root_is_forbidden_before_it_is_opened() {
    let mut f = fixture(Mlflow::Empty).await;
    let (s, error) = http(&f, register_path(std::path::Path::new("/etc/passwd"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no root configured: {error}");
    f.registry.path_root = Some(f.root.path().to_owned());
    let outside = f.root.path().join("../../etc/passwd");
    let (s, error) = http(&f, register_path(&outside)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{error}");
    assert!(!error.contains("root:"), "nothing of the file is read back: {error}");
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn mlflow_down_is_unavailable() {
    let f = fixture(Mlflow::Down).await;
    let status = grpc(&f).await.get_model(authorized(pb::GetModelRequest { name: "m".into() })).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let (s, error) = http(&f, put_stage("m", "Staging", Some(TOKEN))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{error}");
}

#[tokio::test]
async fn mlflow_too_slow_is_deadline_exceeded_within_the_per_call_timeout() {
    let f = fixture(Mlflow::Hanging).await;
    let started = Instant::now();
    let status = grpc(&f).await.get_model(authorized(pb::GetModelRequest { name: "m".into() })).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the timeout and retries: {:?}", started.elapsed());
    let (s, error) = http(&f, put_stage("m", "Staging", Some(TOKEN))).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert!(f.calls.load(Ordering::SeqCst) >= 1);
}

/// The webhook port faces anyone who can reach it: a forged, unsigned, stale,
/// replayed or oversized delivery is refused and changes nothing.
#[tokio::test]
async fn hostile_webhook_deliveries_are_refused_without_effect() {
    let f = fixture(Mlflow::Empty).await;
    let verifier = Arc::new(crate::webhook::Verifier::new("hook-secret", Duration::from_secs(300)));
    let app = crate::http::router(crate::http::Routes { webhooks: Some(verifier), ..routes(&f) });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body = r#"{"entity":"model_version_alias","action":"created"}"#;
    let deliver = |id: &str, ts: &str, sig: Option<String>, body: Vec<u8>| {
        let mut b =
            http::Request::post("/webhooks/mlflow").header("x-mlflow-delivery-id", id).header("x-mlflow-timestamp", ts);
        if let Some(sig) = sig {
            b = b.header("x-mlflow-signature", sig);
        }
        b.body(Body::from(body)).unwrap()
    };
    let sign = |secret: &[u8], id: &str, ts: &str, body: &[u8]| crate::webhook::sign(secret, id, ts, body);
    let cases = [
        ("unsigned", deliver("d1", &now, None, body.into()), StatusCode::UNAUTHORIZED),
        (
            "forged",
            deliver("d2", &now, Some(sign(b"guess", "d2", &now, body.as_bytes())), body.into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "stale",
            deliver("d3", "1000000000", Some(sign(b"hook-secret", "d3", "1000000000", body.as_bytes())), body.into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "tampered",
            deliver("d4", &now, Some(sign(b"hook-secret", "d4", &now, body.as_bytes())), b"{}".to_vec()),
            StatusCode::UNAUTHORIZED,
        ),
        ("oversized", deliver("d5", &now, Some("v1,AAAA".into()), vec![b' '; 4 << 20]), StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (what, req, want) in cases {
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), want, "{what}");
    }
    let stats = &f.registry.hub.stats;
    assert_eq!(stats.webhooks_accepted.load(Ordering::SeqCst), 0, "nothing refused took effect");
    // A good one is taken once; its replay is a duplicate.
    let good = || deliver("d6", &now, Some(sign(b"hook-secret", "d6", &now, body.as_bytes())), body.into());
    let first = app.clone().oneshot(good()).await.unwrap();
    let replay = app.clone().oneshot(good()).await.unwrap();
    assert_eq!((first.status(), replay.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(axum::body::to_bytes(replay.into_body(), 1024).await.unwrap(), "duplicate");
    assert_eq!(
        (stats.webhooks_accepted.load(Ordering::SeqCst), stats.webhooks_duplicate.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[tokio::test]
async fn a_peers_traffic_report_counts_only_when_signed_with_the_shared_secret() {
    let f = fixture(Mlflow::Empty).await;
    let traffic = Arc::new(crate::rollout::Traffic::default());
    let app = crate::http::router(crate::http::Routes {
        webhooks: Some(Arc::new(crate::webhook::Verifier::new("hook-secret", Duration::from_secs(300)))),
        traffic: Arc::clone(&traffic),
        ..routes(&f)
    });
    let report = ferry_proto::registry::v1::ReportTrafficRequest {
        replica: "replica-1".into(),
        variants: vec![ferry_proto::registry::v1::VariantTraffic {
            model: "m".into(),
            variant: "canary".into(),
            requests: 7,
            ..Default::default()
        }],
    };
    let body = prost::Message::encode_to_vec(&report);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let post = |id: &str, secret: &[u8]| {
        http::Request::post("/v1/peers/traffic")
            .header("x-ferry-peer-id", id)
            .header("x-ferry-peer-timestamp", &now)
            .header("x-ferry-peer-signature", crate::webhook::sign(secret, id, &now, &body))
            .body(Body::from(body.clone()))
            .unwrap()
    };
    let forged = app.clone().oneshot(post("p1", b"guess")).await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(traffic.figures("m", "canary").requests, 0, "a forged report is not counted");
    let signed = app.clone().oneshot(post("p2", b"hook-secret")).await.unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    assert_eq!(traffic.figures("m", "canary").requests, 7, "a peer's report counts as the replica's own");
}

#[tokio::test]
async fn readyz_follows_whether_mlflow_answers() {
    let f = fixture(Mlflow::Empty).await;
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let app = crate::http::router(crate::http::Routes { ready, ..routes(&f) });
    let get = || http::Request::get("/readyz").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(get()).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    ready_tx.send_replace(true);
    assert_eq!(app.oneshot(get()).await.unwrap().status(), StatusCode::OK);
}
