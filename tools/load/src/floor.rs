//! The loopback floors: servers that do nothing but answer every request with
//! a fixed reply shaped like Ferry's. `spawn` is HTTP/1.1, one blocking thread
//! per connection: no real server can answer the same client faster on the
//! same machine, so it calibrates what the network path alone costs there.
//! `spawn_grpc` (tonic answering `Predict`) and `spawn_axum` (axum answering
//! `POST /predict`) are the stacks Ferry serves with, on a runtime like
//! Ferry's, doing nothing else: the part of a call that is not Ferry's.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use axum::serve::ListenerExt;
use ferry_proto::inference::v1 as pb;

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 62\r\n\r\n\
{\"modelVersion\":\"1\",\"prediction\":[0.0004,0.2347,0.7647375000]}";

/// Starts the server on a free loopback port; it lives as long as the process.
pub fn spawn() -> std::io::Result<SocketAddr> {
    spawn_answering_after(Duration::ZERO)
}

/// The same server, waiting `delay` before each answer (a model that takes
/// that long, for tests of how the generator counts).
pub fn spawn_answering_after(delay: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("floor-accept".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = std::thread::Builder::new().name("floor-conn".into()).spawn(move || serve(stream, delay));
        }
    })?;
    Ok(addr)
}

/// Starts a tonic server answering `ferry.inference.v1.Inference/Predict` with
/// a fixed iris-shaped reply, on a runtime like Ferry's (a thread per core).
pub fn spawn_grpc() -> std::io::Result<SocketAddr> {
    serve_async("floor-grpc", |listener| async move {
        use tokio_stream::StreamExt;
        // tonic's own `tcp_nodelay` reaches only connections it accepts itself,
        // not these: without this, answers sat in Nagle's buffer behind the
        // caller's delayed ACK (p99 42 ms at c=64, and fewer requests per second
        // than Ferry's, whose listener sets it).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(|conn| conn.inspect(|tcp| drop(tcp.set_nodelay(true))));
        let _ = tonic::transport::Server::builder()
            .add_service(pb::inference_server::InferenceServer::new(Nothing))
            .serve_with_incoming(incoming)
            .await;
    })
}

/// Starts an axum server answering `POST /predict` with [`REPLY`]'s body: the
/// HTTP stack Ferry's REST adapter is built on, doing nothing else.
pub fn spawn_axum() -> std::io::Result<SocketAddr> {
    serve_async("floor-axum", |listener| async move {
        let body = &REPLY[REPLY.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4)..];
        let app = axum::Router::new().route(
            "/predict",
            axum::routing::post(move |_: axum::body::Bytes| async move {
                ([(http::header::CONTENT_TYPE, "application/json")], body)
            }),
        );
        let _ = axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), app).await;
    })
}

/// Runs `serve` on a loopback listener with a multi-threaded runtime of its own.
fn serve_async<F: std::future::Future<Output = ()> + Send + 'static>(
    name: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> F + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        rt.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                serve(listener).await;
            }
        });
    })?;
    Ok(addr)
}

/// Answers `Predict` with a canned reply, and nothing else.
struct Nothing;

#[tonic::async_trait]
impl pb::inference_server::Inference for Nothing {
    async fn predict(
        &self,
        _: tonic::Request<pb::PredictRequest>,
    ) -> Result<tonic::Response<pb::PredictResponse>, tonic::Status> {
        let tensor = |name: &str, shape: Vec<i64>| pb::Tensor { name: name.into(), shape, ..Default::default() };
        Ok(tonic::Response::new(pb::PredictResponse {
            model: "iris".into(),
            model_version: "1".into(),
            variant: String::new(),
            outputs: vec![
                pb::Tensor { int64_data: vec![2], dtype: pb::DataType::Int64.into(), ..tensor("label", vec![1]) },
                pb::Tensor {
                    float_data: vec![0.0004, 0.2347, 0.7647],
                    dtype: pb::DataType::Float32.into(),
                    ..tensor("probabilities", vec![1, 3])
                },
            ],
        }))
    }

    async fn get_model_metadata(
        &self,
        _: tonic::Request<pb::GetModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::GetModelMetadataResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor only answers Predict"))
    }

    async fn list_models(
        &self,
        _: tonic::Request<pb::ListModelsRequest>,
    ) -> Result<tonic::Response<pb::ListModelsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor only answers Predict"))
    }
}

fn serve(mut stream: TcpStream, delay: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer each complete request (head and the body it announces) in the buffer.
        while let Some(len) = request_len(&buf) {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            stream.write_all(REPLY)?;
            buf.drain(..len);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Length of the first complete request in `buf`, if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let body = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + body).then_some(end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_whole_body() {
        let req = b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(request_len(&req[..req.len() - 1]), None);
        assert_eq!(request_len(req), Some(req.len()));
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n\r\nPOST"), Some(18));
    }
}
