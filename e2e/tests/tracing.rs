//! Distributed tracing: one W3C trace context sent by a client with
//! register → promote → predict comes back, from a real OTLP/gRPC receiver,
//! as spans exported by both services, including the registry's MLflow calls.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, ensure};
use ferry_e2e::{Mlflow, predict_row, start_inference, start_registry, train_iris, wait_for};
use ferry_proto::registry::v1::{
    RegisterModelMetadata, RegisterModelRequest, Stage, TransitionStageRequest, register_model_request::Payload,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as Any,
};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        r: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.lock().expect("receiver lock").push(r.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// (service name, span name) of every span in `trace_id`.
    #[allow(clippy::wildcard_enum_match_arm)] // service.name is always a string
    fn spans(&self, trace_id: &[u8]) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for req in self.0.lock().expect("receiver lock").iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        Any::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in ss.spans.iter().filter(|s| s.trace_id == trace_id) {
                        out.insert((service.clone(), s.name.clone()));
                    }
                }
            }
        }
        out
    }
}

fn traced<T>(msg: T, traceparent: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("traceparent", traceparent.parse().expect("valid header"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_both_services() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = format!("http://{}", listener.local_addr()?);
    let server = receiver.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });

    let mlflow = Mlflow::start(d).await?;
    let model = d.join("iris.onnx");
    train_iris(&model, 1.0)?;
    let otel = [("FERRY_OTLP_ENDPOINT", otlp.clone())];
    let registry = start_registry(d, &mlflow.url, &otel).await?;
    let inference = start_inference(d, &mlflow.url, Some(&registry.url), "iris:Production", &otel).await?;

    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_hex}-00f067aa0ba902b7-01");
    let trace_id = hex::decode(trace_hex)?;
    let mut reg = registry.client.clone();
    let first = RegisterModelRequest {
        payload: Some(Payload::Metadata(RegisterModelMetadata { name: "iris".into(), ..Default::default() })),
    };
    let chunk = RegisterModelRequest { payload: Some(Payload::Chunk(std::fs::read(&model)?)) };
    reg.register_model(traced(tokio_stream::iter([first, chunk]), &traceparent)).await?;
    let promote = TransitionStageRequest {
        name: "iris".into(),
        version: "1".into(),
        stage: Stage::Production.into(),
        archive_existing_versions: true,
        ..Default::default()
    };
    reg.transition_stage(traced(promote, &traceparent)).await?;
    let row = [5.1f32, 3.5, 1.4, 0.2];
    wait_for("the model to serve", Duration::from_secs(60), || {
        let mut c = inference.client.clone();
        async move { Ok(c.predict(predict_row("iris", &row)).await.ok().map(|_| ())) }
    })
    .await?;
    inference.client.clone().predict(traced(predict_row("iris", &row), &traceparent)).await?;
    reqwest::Client::new()
        .post(format!("{}/predict", inference.http))
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({"data": row}))
        .send()
        .await?
        .error_for_status()?;

    // The batch exporters flush every few seconds.
    let spans = wait_for("spans of both services in the trace", Duration::from_secs(30), || {
        let spans = receiver.spans(&trace_id);
        async move {
            let services: BTreeSet<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
            let mlflow_call = spans.iter().any(|(s, n)| s == "ferry-registry" && n == "create_model_version");
            Ok((services.contains("ferry-registry") && services.contains("ferry-inference") && mlflow_call)
                .then_some(spans))
        }
    })
    .await
    .with_context(|| format!("spans seen: {:?}", receiver.spans(&trace_id)))?;
    for want in ["grpc.register_model", "transition_stage", "grpc.predict", "http.predict"] {
        ensure!(spans.iter().any(|(_, n)| n == want), "no {want} span in the trace: {spans:?}");
    }
    Ok(())
}
