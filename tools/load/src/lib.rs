//! A load generator for Ferry and its peers: closed loop at a fixed
//! concurrency or open loop at a fixed rate, over gRPC `Predict`, OIP
//! `ModelInfer`, REST `/predict` (Ferry and the Node gateway share it) and OIP
//! REST; plus the in-process ONNX Runtime limit (the same model in a loop with
//! no network). Every request of a run carries the same rows, so systems are
//! compared on equal work. Latencies are exact (every sample kept), measured
//! from when a request was due: open-loop runs do not hide queueing.

pub mod floor;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use ferry_proto::{inference::v1 as pb, oip};
use tokio::sync::{Mutex, Semaphore};

/// What is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Ferry's gRPC `ferry.inference.v1.Inference/Predict`.
    Grpc,
    /// Open Inference Protocol gRPC `ModelInfer`, raw tensor contents (as perf_analyzer sends).
    Oip,
    /// `POST /predict {"data":[...]}`: Ferry's REST adapter, and the Node gateway's only API.
    Rest,
    /// Open Inference Protocol REST `POST /v2/models/{model}/infer`, JSON data.
    RestV2,
    /// MLflow's scoring server (`mlflow models serve`): `POST /invocations {"inputs": [[...]]}`.
    Invocations,
    /// No server: ONNX Runtime sessions in this process, one per concurrent caller.
    InProcess,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub target: Target,
    /// `http://host:port` of the server (unused in process).
    pub url: String,
    /// One model, or several separated by commas: each caller sends to them in
    /// turn, starting at its own offset, so that every model gets traffic.
    pub model: String,
    pub input: String,
    /// Features per row.
    pub width: usize,
    /// Rows per request.
    pub batch: usize,
    /// Requests in flight (closed loop), or connections available (open loop).
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Requests per second for an open-loop run; `None` is closed loop.
    pub rate: Option<f64>,
    /// gRPC connections the callers share (HTTP/2 multiplexes the rest).
    pub connections: usize,
    /// For `InProcess`: the model file, the ONNX Runtime library and intra-op threads per session.
    pub model_file: Option<PathBuf>,
    pub ort_library: Option<PathBuf>,
    pub intra_threads: usize,
    /// Sessions without ONNX Runtime's CPU arena and memory patterns, as
    /// Ferry's inline sessions (`ferry-inference`'s `engine::ort::for_small_tensors`).
    pub small_tensors: bool,
    /// For `InProcess`: the outputs each call asks for (empty: all), as a
    /// server asks for those its request names.
    pub outputs: Vec<String>,
    /// The server's process, for CPU per 1k requests and RSS.
    pub server_pid: Option<u32>,
}

/// The rows every request carries: iris-like for width 4, seeded noise otherwise.
pub fn rows(width: usize, batch: usize) -> Vec<f32> {
    let row: Vec<f32> = if width == 4 {
        vec![5.1, 3.5, 1.4, 0.2]
    } else {
        // xorshift, so that every system and every run sends the same numbers.
        let mut x: u32 = 42;
        (0..width)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect()
    };
    row.iter().copied().cycle().take(width * batch).collect()
}

#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub rps: f64,
    /// Rows per second (requests × batch).
    pub inferences_per_s: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Server CPU time per 1,000 successful requests, when its pid was given.
    pub cpu_ms_per_1k: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// p99 latency (µs) of the requests sent in each second of the run, in order.
    pub p99_by_second_us: Vec<f64>,
}

impl Report {
    pub fn header() -> &'static str {
        "req/s\tinfer/s\tp50_ms\tp90_ms\tp99_ms\tmax_ms\terrors\tcpu_ms_per_1k\trss_mb"
    }

    pub fn row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        format!(
            "{:.0}\t{:.0}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}",
            self.rps,
            self.inferences_per_s,
            self.p50_us / 1e3,
            self.p90_us / 1e3,
            self.p99_us / 1e3,
            self.max_us / 1e3,
            self.errors,
            opt(self.cpu_ms_per_1k),
            opt(self.server_rss_mb)
        )
    }
}

/// Samples and errors of one run.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    /// Seconds into the measured window each latency was sent at.
    second: Vec<u16>,
    /// Answers inside the window to requests sent before it opened: the
    /// rate counts them, latencies do not. Leaving them out undercounts
    /// the rate by one request per caller, which at 64 callers of 120 ms
    /// answers in 3 s was 4 % (h2load counts them).
    before_window: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, started: Instant, measure_from: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                self.second.push(started.saturating_duration_since(measure_from).as_secs().min(u16::MAX as u64) as u16);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.second.extend(other.second);
        self.before_window += other.before_window;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn report(mut self, seconds: f64, batch: usize, cpu: Option<f64>, rss: Option<f64>) -> Report {
        let mut by_second: Vec<Vec<u32>> = vec![Vec::new(); seconds.ceil() as usize];
        for (&l, &s) in self.latencies_us.iter().zip(&self.second) {
            if let Some(w) = by_second.get_mut(s as usize) {
                w.push(l);
            }
        }
        let p99_by_second_us = by_second
            .into_iter()
            .map(|mut w| {
                w.sort_unstable();
                w.get((w.len() as f64 * 0.99) as usize).or(w.last()).map_or(0.0, |&v| f64::from(v))
            })
            .collect();
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        let pct =
            |p: f64| if n == 0 { 0.0 } else { f64::from(self.latencies_us[((n as f64 * p) as usize).min(n - 1)]) };
        let answered = n as u64 + self.before_window;
        let rps = answered as f64 / seconds;
        Report {
            requests: answered,
            errors: self.errors,
            first_error: self.first_error,
            seconds,
            rps,
            inferences_per_s: rps * batch as f64,
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us: self.latencies_us.last().map_or(0.0, |&m| f64::from(m)),
            cpu_ms_per_1k: cpu.filter(|_| answered > 0).map(|c| c * 1e3 / (answered as f64 / 1e3)),
            server_rss_mb: rss,
            p99_by_second_us,
        }
    }
}

/// One caller's connection and its prepared request.
enum Client {
    /// A keep-alive HTTP/1.1 connection sending one prepared request, as wrk
    /// does: the generator's own cost per request stays small, so that it
    /// takes as little of the machine from the server as it can.
    Http { conn: RawHttp },
    /// A gRPC stream per call on a shared HTTP/2 connection, with the request
    /// message encoded once: the same economy for gRPC (tonic's client, with
    /// its buffer task and per-call encoding, cost ~60 µs more per call here).
    Grpc(GrpcCall),
}

impl Client {
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Client::Http { conn } => conn.call().await,
            Client::Grpc(c) => c.call().await,
        }
    }
}

struct Connector {
    scenario: Scenario,
    /// HTTP/2 connections the gRPC callers share.
    channels: Vec<h2::client::SendRequest<Bytes>>,
    addr: Option<SocketAddr>,
    host: String,
    body: Bytes,
    /// The request path for each model.
    paths: Vec<String>,
}

impl Connector {
    async fn new(s: &Scenario) -> anyhow::Result<Self> {
        let data = rows(s.width, s.batch);
        let uri: http::Uri = s.url.parse().with_context(|| format!("parsing {}", s.url))?;
        let host = uri.authority().map(|a| a.to_string()).context("the URL needs host:port")?;
        let models = s.models();
        if models.is_empty() && matches!(s.target, Target::Grpc | Target::Oip | Target::Rest | Target::RestV2) {
            bail!("name a model to call");
        }
        let (body, paths) = match s.target {
            Target::Rest => {
                if s.batch != 1 {
                    bail!("REST /predict takes one row per request; use rest-v2 for batches");
                }
                let paths = models.iter().map(|m| format!("/predict?model={m}")).collect();
                (serde_json::to_vec(&serde_json::json!({ "data": data }))?, paths)
            }
            Target::RestV2 => (
                serde_json::to_vec(&serde_json::json!({ "inputs": [{
                    "name": s.input, "shape": [s.batch, s.width], "datatype": "FP32", "data": data
                }]}))?,
                models.iter().map(|m| format!("/v2/models/{m}/infer")).collect(),
            ),
            Target::Invocations => {
                let rows: Vec<&[f32]> = data.chunks(s.width.max(1)).collect();
                (serde_json::to_vec(&serde_json::json!({ "inputs": rows }))?, vec!["/invocations".to_owned()])
            }
            Target::Grpc | Target::Oip | Target::InProcess => (Vec::new(), Vec::new()),
        };
        // Every target but the in-process one talks to one resolved address.
        let addr = match s.target {
            Target::InProcess => None,
            Target::Grpc | Target::Oip | Target::Rest | Target::RestV2 | Target::Invocations => {
                Some(tokio::net::lookup_host(&host).await?.next().context("resolving the host")?)
            }
        };
        let mut channels = Vec::new();
        if let (Target::Grpc | Target::Oip, Some(addr)) = (s.target, addr) {
            for _ in 0..s.connections.max(1) {
                channels.push(GrpcCall::connect(addr).await.with_context(|| format!("connecting to {}", s.url))?);
            }
        }
        Ok(Self { scenario: s.clone(), channels, addr, host, body: Bytes::from(body), paths })
    }

    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let s = &self.scenario;
        let data = rows(s.width, s.batch);
        let shape = vec![s.batch as i64, s.width as i64];
        Ok(match s.target {
            Target::Rest | Target::RestV2 | Target::Invocations => {
                let stream = tokio::net::TcpStream::connect(self.addr.context("no address")?).await?;
                stream.set_nodelay(true)?;
                let requests = self
                    .paths
                    .iter()
                    .map(|path| {
                        let mut request = format!(
                            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            self.host,
                            self.body.len()
                        )
                        .into_bytes();
                        request.extend_from_slice(&self.body);
                        request
                    })
                    .collect();
                Client::Http { conn: RawHttp { stream, requests, next: i, buf: Vec::with_capacity(4096) } }
            }
            Target::Grpc => {
                let requests =
                    s.models().into_iter().map(|model| predict_request(model, &s.input, shape.clone(), data.clone()));
                Client::Grpc(GrpcCall::new(self.channel(i), &self.host, GrpcCall::PREDICT, requests, i)?)
            }
            Target::Oip => {
                let requests =
                    s.models().into_iter().map(|model| model_infer_request(model, &s.input, shape.clone(), &data));
                Client::Grpc(GrpcCall::new(self.channel(i), &self.host, GrpcCall::MODEL_INFER, requests, i)?)
            }
            Target::InProcess => bail!("in-process runs have no client"),
        })
    }
}

impl Connector {
    fn channel(&self, caller: usize) -> h2::client::SendRequest<Bytes> {
        self.channels[caller % self.channels.len()].clone()
    }
}

/// One gRPC caller: a stream per call on a shared connection, the length-prefixed
/// message prepared once. A call succeeds on `grpc-status: 0` with a message.
struct GrpcCall {
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    /// One framed message per model, sent in turn.
    bodies: Vec<Bytes>,
    next: usize,
}

impl GrpcCall {
    const PREDICT: &'static str = "/ferry.inference.v1.Inference/Predict";
    const MODEL_INFER: &'static str = "/inference.GRPCInferenceService/ModelInfer";

    /// An HTTP/2 connection (TCP_NODELAY), driven by a task of its own.
    async fn connect(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    fn new<M: prost::Message>(
        send: h2::client::SendRequest<Bytes>,
        authority: &str,
        path: &str,
        messages: impl Iterator<Item = M>,
        first: usize,
    ) -> anyhow::Result<Self> {
        // gRPC framing: uncompressed flag, big-endian length, the message.
        let frame = |message: M| -> anyhow::Result<Bytes> {
            let len = message.encoded_len();
            let mut body = Vec::with_capacity(5 + len);
            body.push(0);
            body.extend_from_slice(&u32::try_from(len)?.to_be_bytes());
            message.encode(&mut body)?;
            Ok(Bytes::from(body))
        };
        let bodies = messages.map(frame).collect::<anyhow::Result<Vec<_>>>()?;
        let uri = format!("http://{authority}{path}").parse()?;
        Ok(Self { send, uri, bodies, next: first })
    }

    async fn call(&mut self) -> Result<(), String> {
        let h2_err = |e: h2::Error| e.to_string();
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let mut send = self.send.clone().ready().await.map_err(h2_err)?;
        let (response, mut stream) = send.send_request(request, false).map_err(h2_err)?;
        self.next = (self.next + 1) % self.bodies.len();
        stream.send_data(self.bodies[self.next].clone(), true).map_err(h2_err)?;
        let (head, mut body) = response.await.map_err(h2_err)?.into_parts();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_err)?;
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(h2_err)?;
        // A trailers-only response (an error) carries its status in the headers.
        let status_of = |h: &http::HeaderMap| {
            let code = h.get("grpc-status")?.to_str().ok()?.to_owned();
            let message = h.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_owned();
            Some((code, message))
        };
        match trailers.as_ref().and_then(status_of).or_else(|| status_of(&head.headers)) {
            Some((code, _)) if code == "0" && received > 5 => Ok(()),
            Some((code, _)) if code == "0" => Err("grpc-status 0 without a message".into()),
            Some((code, message)) => Err(format!("grpc-status {code}: {message}")),
            None if head.status != http::StatusCode::OK => Err(format!("HTTP {}", head.status)),
            None => Err("no grpc-status".into()),
        }
    }
}

struct RawHttp {
    stream: tokio::net::TcpStream,
    /// One prepared request per model, sent in turn.
    requests: Vec<Vec<u8>>,
    next: usize,
    buf: Vec<u8>,
}

impl RawHttp {
    async fn call(&mut self) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.next = (self.next + 1) % self.requests.len();
        self.stream.write_all(&self.requests[self.next]).await.map_err(|e| e.to_string())?;
        self.buf.clear();
        // Read the head, then exactly the body it announces.
        let (head_len, status, body_len) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            self.read_more().await?;
        };
        let total = match body_len {
            BodyLen::Exact(n) => head_len + n,
            BodyLen::Chunked => loop {
                if let Some(end) = chunked_end(&self.buf[head_len..]) {
                    break head_len + end;
                }
                self.read_more().await?;
            },
        };
        while self.buf.len() < total {
            self.read_more().await?;
        }
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&self.buf[head_len..total]);
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

enum BodyLen {
    Exact(usize),
    Chunked,
}

/// `(head length, status, body length)` once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, BodyLen)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut len = BodyLen::Exact(0);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("content-length") {
            len = BodyLen::Exact(v.trim().parse().map_err(|_| format!("bad content-length {v:?}"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
            len = BodyLen::Chunked;
        }
    }
    Ok(Some((end + 4, status, len)))
}

/// Where a chunked body ends (after the last chunk's CRLF), once it is complete.
fn chunked_end(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[at..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            let trailer_end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
            return Some(trailer_end + 2);
        }
        if body.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100.
    Some(ticks / 100.0)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs one scenario: warm-up (not recorded), then the measured window.
impl Scenario {
    /// The models called, in turn.
    pub fn models(&self) -> Vec<String> {
        self.model.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect()
    }
}

pub async fn run(s: &Scenario) -> anyhow::Result<Report> {
    if s.target == Target::InProcess {
        let s = s.clone();
        return tokio::task::spawn_blocking(move || in_process(&s)).await?;
    }
    let conn = Connector::new(s).await?;
    let mut clients = Vec::with_capacity(s.concurrency);
    for i in 0..s.concurrency.max(1) {
        clients.push(conn.client(i).await?);
    }
    // One request first: a wrong URL or model fails fast with its message.
    if let Err(e) = clients[0].call().await {
        bail!("the first request failed: {e}");
    }
    let measure_from = Instant::now() + s.warmup;
    let end = measure_from + s.duration;
    let cpu_before = Arc::new(Mutex::new(None));
    {
        let (cpu_before, pid) = (Arc::clone(&cpu_before), s.server_pid);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *cpu_before.lock().await = pid.and_then(cpu_seconds);
        });
    }
    let (tally, completed) = match s.rate {
        None => (closed_loop(clients, measure_from, end).await, None),
        Some(rate) => {
            let (t, n) = open_loop(clients, rate, measure_from, end).await;
            (t, Some(n))
        }
    };
    let cpu = match (*cpu_before.lock().await, s.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut report = tally.report(s.duration.as_secs_f64(), s.batch, cpu, s.server_pid.and_then(rss_mb));
    if let Some(n) = completed {
        // Open loop: throughput is what completed in the window; latencies cover every request due in it.
        report.rps = n as f64 / s.duration.as_secs_f64();
        report.inferences_per_s = report.rps * s.batch as f64;
    }
    Ok(report)
}

async fn closed_loop(clients: Vec<Client>, measure_from: Instant, end: Instant) -> Tally {
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut t = Tally::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let r = c.call().await;
                    let done = Instant::now();
                    if done > end {
                        continue; // answered after the window: not counted
                    }
                    if started >= measure_from {
                        t.add(started, measure_from, r);
                    } else if r.is_ok() && done >= measure_from {
                        t.before_window += 1;
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            all.merge(t);
        }
    }
    all
}

/// Requests are due every 1/rate seconds whether or not earlier ones finished;
/// a request waits for a free connection and its latency counts from when it was due.
/// Returns the samples and how many requests completed inside the window
/// (the achieved rate, which falls below the offered one under overload).
async fn open_loop(clients: Vec<Client>, rate: f64, measure_from: Instant, end: Instant) -> (Tally, u64) {
    let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let free = Arc::new(Semaphore::new(clients.len()));
    let pool = Arc::new(Mutex::new(clients));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = Vec::new();
    for k in 0u64.. {
        let due = start + period.mul_f64(k as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (free, pool, tally, completed) =
            (Arc::clone(&free), Arc::clone(&pool), Arc::clone(&tally), Arc::clone(&completed));
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = free.acquire().await else { return };
            let Some(mut c) = pool.lock().await.pop() else { return };
            // The timer fires up to its resolution late; a request sent within that
            // of its due time is timed from its send, a later one from when it was due.
            let sent = Instant::now();
            let from = if sent.duration_since(due) <= TIMER_SLACK { sent } else { due };
            let r = c.call().await;
            pool.lock().await.push(c);
            let done = Instant::now();
            if (measure_from..=end).contains(&done) && r.is_ok() {
                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if due >= measure_from {
                tally.lock().await.add(from, measure_from, r);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (std::mem::take(&mut *tally.lock().await), completed.load(std::sync::atomic::Ordering::Relaxed))
}

/// The `Predict` request the gRPC target sends: one float input.
pub fn predict_request(model: String, input: &str, shape: Vec<i64>, data: Vec<f32>) -> pb::PredictRequest {
    pb::PredictRequest {
        model,
        inputs: vec![pb::Tensor {
            name: input.to_owned(),
            dtype: pb::DataType::Float32.into(),
            shape,
            float_data: data,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The OIP `ModelInfer` request the `oip` target sends: one FP32 input as
/// raw little-endian bytes, as Triton's clients send it.
pub fn model_infer_request(model: String, input: &str, shape: Vec<i64>, data: &[f32]) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model,
        inputs: vec![oip::model_infer_request::InferInputTensor {
            name: input.to_owned(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![data.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// tokio's timer resolution, plus scheduling jitter.
const TIMER_SLACK: Duration = Duration::from_micros(1500);

/// One in-process model call: the input tensor built from the rows, the run,
/// the outputs dropped. Its own function so that `valgrind --tool=callgrind
/// --toggle-collect=ferry_load::in_process_call` counts exactly it.
#[inline(never)]
pub fn in_process_call(
    session: &mut ort::session::Session,
    input: &str,
    shape: [usize; 2],
    data: &[f32],
    outputs: Option<&ort::session::RunOptions<ort::session::HasSelectedOutputs>>,
) -> Result<(), String> {
    let x = ort::value::Tensor::from_array((shape, data.to_vec())).map_err(|e| e.to_string())?;
    match outputs {
        Some(options) => session.run_with_options(ort::inputs![input => x], options).map(drop),
        None => session.run(ort::inputs![input => x]).map(drop),
    }
    .map_err(|e| e.to_string())
}

/// No CPU arena, no memory patterns: how Ferry builds the sessions of a model
/// it runs inline (its `engine::ort::for_small_tensors`).
fn small_tensors(
    mut b: ort::session::builder::SessionBuilder,
) -> anyhow::Result<ort::session::builder::SessionBuilder> {
    use ort::AsPointer;
    // SAFETY: the builder's own live options; the status returned is consumed.
    unsafe { ort::Error::result_from_status((ort::api().DisableCpuMemArena)(b.ptr_mut())) }
        .map_err(|e| anyhow::anyhow!("ONNX Runtime: {e}"))?;
    b.with_memory_pattern(false).map_err(|e| anyhow::anyhow!("ONNX Runtime: {e}"))
}

/// The ceiling no server can beat: sessions called in a loop, one thread each.
fn in_process(s: &Scenario) -> anyhow::Result<Report> {
    use ort::session::Session;
    let lib = s.ort_library.as_ref().context("--ort-library is required in process")?;
    let file = s.model_file.as_ref().context("--model-file is required in process")?;
    // ONNX Runtime allows one environment per process; later runs reuse it.
    static ENV: std::sync::OnceLock<Result<ort::environment::Environment, String>> = std::sync::OnceLock::new();
    let env = ENV
        .get_or_init(|| {
            ort::init_from(lib)
                .map_err(|e| e.to_string())?
                .with_name("ferry-load")
                .with_telemetry(false)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("loading ONNX Runtime from {}: {e}", lib.display()))?;
    fn ort_err(e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("ONNX Runtime: {e}")
    }
    let sessions = (0..s.concurrency.max(1))
        .map(|_| {
            Session::builder(env)
                .map_err(ort_err)?
                .with_intra_threads(s.intra_threads)
                .map_err(ort_err)?
                .with_inter_threads(1)
                .map_err(ort_err)
                .and_then(|b| if s.small_tensors { small_tensors(b) } else { Ok(b) })?
                .commit_from_file(file)
                .map_err(ort_err)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The clock starts once every session is built.
    let measure_from = Instant::now() + s.warmup;
    let end = measure_from + s.duration;
    let data = rows(s.width, s.batch);
    // Run options asking for `outputs` alone, built once per session as a
    // server keeps them: the call is what is measured.
    let select = || -> anyhow::Result<_> {
        if s.outputs.is_empty() {
            return Ok(None);
        }
        let selector = s.outputs.iter().fold(ort::session::OutputSelector::no_default(), |sel, name| sel.with(name));
        Ok(Some(ort::session::RunOptions::new().map_err(ort_err)?.with_outputs(selector)))
    };
    let threads = sessions
        .into_iter()
        .map(|mut session| {
            let (data, input, batch, width) = (data.clone(), s.input.clone(), s.batch, s.width);
            let selected = select()?;
            Ok(std::thread::spawn(move || {
                let mut t = Tally::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let r = in_process_call(&mut session, &input, [batch, width], &data, selected.as_ref());
                    if started >= measure_from {
                        t.add(started, measure_from, r);
                    }
                }
                t
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut all = Tally::default();
    for t in threads {
        all.merge(t.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?);
    }
    Ok(all.report(s.duration.as_secs_f64(), s.batch, None, rss_mb(std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heads_and_bodies() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n").unwrap().is_none(), "head not complete yet");
        let (len, status, body) =
            parse_head(b"HTTP/1.1 429 Too Many\r\nContent-Length: 12\r\n\r\n{\"error\":1}").unwrap().unwrap();
        assert_eq!((len, status), (45, 429));
        assert!(matches!(body, BodyLen::Exact(12)));
        let (_, _, body) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(matches!(body, BodyLen::Chunked));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn finds_the_end_of_a_chunked_body() {
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\n"), Some(15));
        assert_eq!(chunked_end(b"5\r\nhello\r\n"), None, "last chunk missing");
        assert_eq!(chunked_end(b"5\r\nhel"), None, "chunk incomplete");
    }

    #[test]
    fn percentiles_and_rates_come_from_every_sample() {
        let start = Instant::now();
        let mut t = Tally::default();
        for us in 1..=100u32 {
            t.latencies_us.push(us);
            t.second.push(u16::from(us > 50));
        }
        t.add(start, start, Err("boom".into()));
        let r = t.report(2.0, 4, None, None);
        assert_eq!((r.requests, r.errors), (100, 1), "the failed call is an error, not a sample");
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert_eq!((r.p50_us, r.p99_us, r.max_us), (51.0, 100.0, 100.0));
        assert_eq!(r.rps, 50.0);
        assert_eq!(r.inferences_per_s, 200.0);
        assert_eq!(r.p99_by_second_us, vec![50.0, 100.0]);
    }

    #[test]
    fn every_system_gets_the_same_rows() {
        assert_eq!(rows(4, 2), vec![5.1, 3.5, 1.4, 0.2, 5.1, 3.5, 1.4, 0.2]);
        let a = rows(512, 1);
        assert_eq!(a, rows(512, 1));
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)) && a[0] != a[1]);
    }

    #[tokio::test]
    async fn callers_send_to_every_model_in_turn() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server that answers every request and notes its path.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new()));
        let noted = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let noted = Arc::clone(&noted);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        for path in text.split("POST ").skip(1).filter_map(|r| r.split(' ').next()) {
                            *noted.lock().unwrap().entry(path.to_owned()).or_default() += 1;
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
                        }
                    }
                });
            }
        });
        let mut s = floor_scenario(Target::Rest, addr);
        s.model = "a, b,c".into();
        let r = run(&s).await.unwrap();
        assert_eq!(r.errors, 0);
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.keys().map(String::as_str).collect();
        assert_eq!(paths, ["/predict?model=a", "/predict?model=b", "/predict?model=c"]);
        let (least, most) = (seen.values().min().unwrap(), seen.values().max().unwrap());
        assert!(most - least <= 2, "not in turn: {seen:?}");
        s.model = " , ".into();
        assert!(run(&s).await.unwrap_err().to_string().contains("name a model"));
    }

    fn floor_scenario(target: Target, addr: SocketAddr) -> Scenario {
        Scenario {
            target,
            url: format!("http://{addr}"),
            model: "m".into(),
            input: "input".into(),
            width: 4,
            batch: 1,
            concurrency: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            rate: None,
            connections: 1,
            model_file: None,
            ort_library: None,
            intra_threads: 1,
            small_tensors: false,
            outputs: Vec::new(),
            server_pid: None,
        }
    }

    #[tokio::test]
    async fn the_rest_client_keeps_a_connection_busy_against_the_floor_server() {
        let r = run(&floor_scenario(Target::Rest, crate::floor::spawn().unwrap())).await.unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.requests > 100, "only {} requests in 0.3 s", r.requests);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us);
    }

    #[tokio::test]
    async fn the_rate_counts_every_answer_inside_the_window() {
        // Each answer takes 50 ms, so each caller has one in flight when the
        // window opens; those answers fall inside it and count toward the
        // rate (as h2load counts them), not toward latencies.
        let delay = Duration::from_millis(50);
        let mut s = floor_scenario(Target::Rest, crate::floor::spawn_answering_after(delay).unwrap());
        (s.concurrency, s.connections, s.warmup, s.duration) =
            (4, 4, Duration::from_millis(120), Duration::from_millis(500));
        let r = run(&s).await.unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        // What the callers can answer in the window at the latency they saw;
        // leaving out the answers in flight at its start loses one a caller.
        let window_ms = s.duration.as_secs_f64() * 1e3;
        let expected = s.concurrency as f64 * window_ms / (r.p50_us / 1e3);
        assert!(r.p50_us >= 50e3, "the server waits 50 ms: p50 {} µs", r.p50_us);
        assert!(
            r.requests as f64 > expected - s.concurrency as f64 / 2.0,
            "{} answers counted, ~{expected:.1} in the window",
            r.requests
        );
        assert_eq!(r.rps, r.requests as f64 / s.duration.as_secs_f64());
    }

    #[tokio::test]
    async fn the_axum_floor_answers_predict() {
        let r = run(&floor_scenario(Target::Rest, crate::floor::spawn_axum().unwrap())).await.unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.requests > 100, "only {} requests in 0.3 s", r.requests);
    }

    #[tokio::test]
    async fn the_grpc_client_shares_a_connection_and_reads_the_status() {
        let addr = crate::floor::spawn_grpc().unwrap();
        let r = run(&floor_scenario(Target::Grpc, addr)).await.unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.requests > 100, "only {} requests in 0.3 s", r.requests);
        // The floor answers Predict only: ModelInfer is UNIMPLEMENTED (12), a failed call.
        let e = run(&floor_scenario(Target::Oip, addr)).await.unwrap_err().to_string();
        assert!(e.contains("grpc-status 12"), "{e}");
    }
}
