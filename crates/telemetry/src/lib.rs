//! Logging, tracing and shutdown, shared by every Ferry service so that spans,
//! log formats and signal handling are the same everywhere.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Telemetry options, flattened into each service's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "FERRY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    pub log: String,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "FERRY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Flushes and stops trace export when dropped; keep it alive for the process lifetime.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("otlp", &self.provider.is_some()).finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Target of every per-request span; `FERRY_LOG=info,ferry::request=debug`
/// shows the data plane's in the logs. The handlers' `#[instrument]`
/// attributes spell it out, since the attribute only takes a literal.
pub const REQUEST_TARGET: &str = "ferry::request";

/// Installs the global subscriber: a fmt layer (text or JSON) and, when an
/// endpoint is configured, an OpenTelemetry layer exporting over OTLP/gRPC.
/// Each has its own filter: the log filter for both, and every request span
/// for the exporter, whatever its level, so that traces stay whole while
/// the data plane's request spans cost nothing in the logs at `info`.
pub fn init(
    service: &'static str,
    args: &TelemetryArgs,
) -> Result<TelemetryGuard, Box<dyn std::error::Error + Send + Sync>> {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    let fmt = if args.log_json {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).boxed()
    } else {
        // Colour codes only for a terminal: log files and collectors get plain text.
        tracing_subscriber::fmt::layer().with_target(false).with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    let fmt = fmt.with_filter(EnvFilter::try_new(&args.log)?);
    let (otel, provider) = match &args.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let requests = filter_fn(|m| m.is_span() && m.target() == REQUEST_TARGET);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(EnvFilter::try_new(&args.log)?.or(requests));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

/// Which side of Ferry a request span belongs to: it sets the span's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Registry calls: few, and their log lines (at `info`) carry the request.
    Control,
    /// Predictions: `debug`, since the fields of an enabled span are formatted
    /// when it opens, which cost a tiny model's request a tenth of its CPU.
    Data,
}

/// The span for one incoming request (gRPC or HTTP), continuing the caller's
/// W3C trace context (`traceparent`) when there is one. The request id and
/// the trace context are only worked out when some layer wants the span.
pub fn server_span(plane: Plane, protocol: &'static str, path: &str, headers: &http::HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    macro_rules! span {
        ($level:expr) => {
            tracing::span!(target: REQUEST_TARGET, $level, "request", otel.name = %path, protocol, path = %path, request_id = tracing::field::Empty)
        };
    }
    let span = match plane {
        Plane::Control => span!(tracing::Level::INFO),
        Plane::Data => span!(tracing::Level::DEBUG),
    };
    if !span.is_disabled() {
        span.record("request_id", request_id(headers).as_str());
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(parent);
    }
    span
}

/// The caller's `x-request-id` when it is a sane token, else a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    // Ids are visible ASCII (checked or made so), so the conversion never fails.
    request_id_value(headers).to_str().unwrap_or_default().to_owned()
}

/// A caller's id is kept when it is 1 to 128 visible ASCII characters.
fn sane_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
}

const REQUEST_ID: &str = "x-request-id";
/// Parsed once: a name given as `&str` is parsed and checked on every
/// lookup and insert, ~0.5k instructions each (callgrind).
static REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID);

/// `prefix-counter` in hex: at most 8 + 1 + 16 bytes.
const REQUEST_ID_MAX: usize = 25;

/// Writes a new id into `buf` without formatting machinery: HTTP requests
/// each get one. Unique within the process and, by its time-and-pid prefix,
/// across restarts.
fn new_request_id_into(buf: &mut [u8; REQUEST_ID_MAX]) -> &[u8] {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        t ^ std::process::id().rotate_left(16)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[(prefix >> (28 - 4 * i) & 0xf) as usize];
    }
    buf[8] = b'-';
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        buf[9 + i] = HEX[(n >> (4 * (digits - 1 - i)) & 0xf) as usize];
    }
    &buf[..9 + digits]
}

/// The caller's `x-request-id` as a header value when it is a sane token,
/// else a new one.
fn request_id_value(headers: &http::HeaderMap) -> http::HeaderValue {
    match headers.get(&REQUEST_ID_NAME).filter(|v| sane_request_id(v.as_bytes())) {
        Some(v) => v.clone(),
        None => {
            let mut buf = [0; REQUEST_ID_MAX];
            // Hex digits and a dash: always a valid header value.
            http::HeaderValue::from_bytes(new_request_id_into(&mut buf))
                .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
        }
    }
}

/// Gives every HTTP request an `x-request-id` (the caller's when it is a
/// sane token, else a new one) before its span opens, and echoes it on the
/// response. Unlike tower-http's pair of request-id layers it keeps nothing
/// in the request's extensions, which nothing here reads: that map and its
/// insert were ~1k instructions of a tiny model's REST request (callgrind).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = request_id_value(req.headers());
        req.headers_mut().insert(&REQUEST_ID_NAME, id.clone());
        RequestIdFuture { inner: self.inner.call(req), id: Some(id) }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`RequestIdService`], with the id echoed.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<http::HeaderValue>,
    }
}

impl<F, R, E> std::future::Future for RequestIdFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(id)) = (&mut out, this.id.take()) {
            resp.headers_mut().insert(&REQUEST_ID_NAME, id);
        }
        std::task::Poll::Ready(out)
    }
}

/// Runs every HTTP request inside its [`server_span`] and, when
/// `ferry::request=debug` is on, logs its answer: status and latency, at
/// `debug`, as "request failed" for a 5xx. In place of tower-http's
/// `TraceLayer`, which reads the clock five times a request (its start, the
/// response, each body frame twice, the end of the body) and wraps every
/// response body, whether or not anything records them: ~4 % of a tiny
/// model's REST request's CPU on one core (wrk, 2026-12-04). Here the clock
/// is read only for the log line, and bodies go out as the handler made them.
#[derive(Debug, Clone, Copy)]
pub struct SpanLayer {
    plane: Plane,
}

impl SpanLayer {
    pub fn new(plane: Plane) -> Self {
        Self { plane }
    }
}

impl<S> tower::Layer<S> for SpanLayer {
    type Service = SpanService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SpanService { inner, plane: self.plane }
    }
}

/// See [`SpanLayer`].
#[derive(Debug, Clone)]
pub struct SpanService<S> {
    inner: S,
    plane: Plane,
}

impl<S, B, R> tower::Service<http::Request<B>> for SpanService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = SpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = server_span(self.plane, "http", req.uri().path(), req.headers());
        let started = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG).then(std::time::Instant::now);
        let inner = span.in_scope(|| self.inner.call(req));
        SpanFuture { inner, span, started }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`SpanService`].
    pub struct SpanFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        // Set when the answer is to be logged.
        started: Option<std::time::Instant>,
    }
}

impl<F, R, E> std::future::Future for SpanFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<R>, E>>,
    E: std::fmt::Display,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(started) = this.started.take() {
            let latency_us = started.elapsed().as_micros() as u64;
            match &out {
                Ok(r) if r.status().is_server_error() => {
                    tracing::debug!(target: REQUEST_TARGET, status = r.status().as_u16(), latency_us, "request failed")
                }
                Ok(r) => tracing::debug!(target: REQUEST_TARGET, status = r.status().as_u16(), latency_us, "answered"),
                Err(e) => tracing::debug!(target: REQUEST_TARGET, error = %e, latency_us, "request failed"),
            }
        }
        std::task::Poll::Ready(out)
    }
}

/// Adds the current span's W3C trace context to outgoing request headers.
pub fn inject_context(headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Resolves on Ctrl-C or SIGTERM: the one shutdown path of every service.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// Socket settings shared by every Ferry listener.
pub mod net {
    use tokio::net::{TcpListener, TcpStream};

    /// Small responses and stream events must not wait on Nagle's algorithm
    /// for the peer's delayed ACK (up to 40 ms on Linux).
    pub fn set_nodelay(tcp: &mut TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    }

    /// Accepted connections with TCP_NODELAY set, for tonic's `serve_with_incoming`.
    pub fn nodelay_incoming(
        listener: TcpListener,
    ) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            conn.map(|mut tcp| {
                set_nodelay(&mut tcp);
                tcp
            })
        })
    }
}

/// Prometheus text exposition for the few metric shapes Ferry uses, kept
/// lock-free on the request path: counters and histograms are atomics that the
/// `/metrics` handler reads and renders.
pub mod metrics {
    use std::{
        fmt::Write,
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    /// Request and call latency bounds, 100 µs to 10 s, in nanoseconds.
    pub const LATENCY_NS: &[u64] = &[
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
    ];

    /// Model load and delivery bounds, 50 ms to 5 min, in nanoseconds.
    pub const SLOW_NS: &[u64] = &[
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
        60_000_000_000,
        300_000_000_000,
    ];

    /// A fixed-bucket histogram of integer observations (nanoseconds, rows, ...).
    #[derive(Debug)]
    pub struct Histogram {
        bounds: &'static [u64],
        /// Per-bucket (not cumulative) counts; the last is above every bound.
        counts: Box<[AtomicU64]>,
        sum: AtomicU64,
        /// Divides observations for display: 1e9 renders nanoseconds as seconds.
        scale: f64,
    }

    impl Histogram {
        pub fn new(bounds: &'static [u64], scale: f64) -> Self {
            Self {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                scale,
            }
        }

        /// Durations, rendered in seconds.
        pub fn seconds(bounds_ns: &'static [u64]) -> Self {
            Self::new(bounds_ns, 1e9)
        }

        pub fn observe(&self, v: u64) {
            let i = self.bounds.partition_point(|&b| b < v);
            self.counts[i].fetch_add(1, Ordering::Relaxed);
            self.sum.fetch_add(v, Ordering::Relaxed);
        }

        pub fn observe_duration(&self, d: Duration) {
            self.observe(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        }

        pub fn count(&self) -> u64 {
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
        }

        /// Writes `name_bucket`, `name_sum` and `name_count` samples; `labels`
        /// is a rendered label list without braces (may be empty).
        pub fn render(&self, out: &mut String, name: &str, labels: &str) {
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (i, c) in self.counts.iter().enumerate() {
                cumulative += c.load(Ordering::Relaxed);
                let le = self.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |&b| (b as f64 / self.scale).to_string());
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
            }
            let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            let _ = writeln!(out, "{name}_sum{braces} {}", self.sum.load(Ordering::Relaxed) as f64 / self.scale);
            let _ = writeln!(out, "{name}_count{braces} {cumulative}");
        }
    }

    /// Latency and outcome counts of one labelled series (a method and version,
    /// an MLflow endpoint, ...); outcome 0 is success by convention.
    #[derive(Debug)]
    pub struct Series<const N: usize> {
        pub duration: Histogram,
        pub outcomes: [AtomicU64; N],
    }

    impl<const N: usize> Series<N> {
        pub fn observe(&self, outcome: usize, elapsed: Duration) {
            self.duration.observe_duration(elapsed);
            if let Some(n) = self.outcomes.get(outcome) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Series by key, created on first use. The request path takes a read
    /// lock for the lookup; the write lock only when a key is new. Keys are
    /// Ferry's own labels (methods, versions from MLflow), never a caller's,
    /// so a fast hash (FxHash) needs no defence against chosen collisions.
    #[derive(Debug)]
    pub struct Family<K, const N: usize> {
        series: std::sync::RwLock<rustc_hash::FxHashMap<K, std::sync::Arc<Series<N>>>>,
    }

    impl<K, const N: usize> Default for Family<K, N> {
        fn default() -> Self {
            Self { series: std::sync::RwLock::default() }
        }
    }

    impl<K: Eq + std::hash::Hash + Clone + Ord, const N: usize> Family<K, N> {
        pub fn record(&self, key: K, outcome: usize, elapsed: Duration) {
            // Counted under the read lock: no clone of the series' handle per request.
            if let Ok(m) = self.series.read()
                && let Some(series) = m.get(&key)
            {
                series.observe(outcome, elapsed);
                return;
            }
            self.series(key).observe(outcome, elapsed);
        }

        /// The series of `key`, made on first use: for a caller that keeps
        /// the handle and counts into it without a lookup.
        pub fn series(&self, key: K) -> std::sync::Arc<Series<N>> {
            let new = || {
                std::sync::Arc::new(Series {
                    duration: Histogram::seconds(LATENCY_NS),
                    outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
                })
            };
            match self.series.write() {
                Ok(mut m) => std::sync::Arc::clone(m.entry(key).or_insert_with(new)),
                // A writer panicked: count into a series nobody reads rather than fail the request.
                Err(_) => new(),
            }
        }

        /// Every series, sorted by key.
        pub fn snapshot(&self) -> Vec<(K, std::sync::Arc<Series<N>>)> {
            let mut all: Vec<_> = self
                .series
                .read()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), std::sync::Arc::clone(v))).collect())
                .unwrap_or_default();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        }
    }

    /// `# HELP` and `# TYPE` lines of a family.
    pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A label value, escaped as the exposition format requires.
    pub fn escape(v: &str) -> String {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_family_counts_each_key_from_its_first_record_on() {
            let f: Family<(&'static str, String), 2> = Family::default();
            let ms = Duration::from_millis(1);
            f.record(("a", "1".into()), 0, ms);
            f.record(("a", "1".into()), 1, ms);
            f.record(("b", "1".into()), 0, ms);
            f.record(("a", "1".into()), 7, ms); // an outcome out of range still counts its duration
            let counts: Vec<_> = f
                .snapshot()
                .iter()
                .map(|(k, s)| (k.0, s.outcomes.iter().map(|n| n.load(Ordering::Relaxed)).collect::<Vec<_>>()))
                .collect();
            assert_eq!(counts, vec![("a", vec![1, 1]), ("b", vec![1, 0])]);
            let mut out = String::new();
            f.snapshot()[0].1.duration.render(&mut out, "x_seconds", "m=\"a\"");
            assert!(out.contains("x_seconds_count{m=\"a\"} 3\n"), "{out}");
        }

        #[test]
        fn renders_cumulative_buckets_in_seconds() {
            let h = Histogram::seconds(&[1_000_000, 10_000_000]);
            h.observe_duration(Duration::from_micros(500));
            h.observe_duration(Duration::from_millis(5));
            h.observe_duration(Duration::from_secs(1));
            let mut out = String::new();
            h.render(&mut out, "x_seconds", "m=\"a\"");
            assert!(out.contains("x_seconds_bucket{m=\"a\",le=\"0.001\"} 1\n"), "{out}");
            assert!(out.contains("x_seconds_bucket{m=\"a\",le=\"0.01\"} 2\n"), "{out}");
            assert!(out.contains("x_seconds_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{out}");
            assert!(out.contains("x_seconds_count{m=\"a\"} 3\n"), "{out}");
            assert!(out.contains("x_seconds_sum{m=\"a\"} 1.0055\n"), "{out}");
        }
    }
}

/// A secret from the command line or environment: usable, but printed as
/// `"<redacted>"` by `Debug`, so that logging a whole configuration is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_callers_or_new_and_distinct() {
        let mut h = http::HeaderMap::new();
        let (a, b) = (request_id(&h), request_id(&h));
        assert_ne!(a, b);
        for id in [&a, &b] {
            let (prefix, n) = id.split_once('-').expect("prefix-counter");
            assert_eq!(prefix.len(), 8, "{id}");
            assert!(u32::from_str_radix(prefix, 16).is_ok() && u64::from_str_radix(n, 16).is_ok(), "{id}");
        }
        let counter = |id: &str| u64::from_str_radix(id.split_once('-').unwrap().1, 16).unwrap();
        assert!(counter(&b) > counter(&a), "{a} then {b}");
        h.insert(REQUEST_ID, "caller-7".parse().unwrap());
        assert_eq!(request_id(&h), "caller-7");
        h.insert(REQUEST_ID, "has space".parse().unwrap());
        assert_ne!(request_id(&h), "has space", "only sane tokens are taken");
    }

    /// What the handler saw as the request id, and what the caller got back.
    async fn ids_through_the_layer(sent: Option<&str>) -> (String, String) {
        use tower::{Layer, ServiceExt};
        let svc = RequestIdLayer.layer(tower::service_fn(|req: http::Request<()>| async move {
            let seen = req.headers().get(REQUEST_ID).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(http::Response::new(seen))
        }));
        let mut req = http::Request::new(());
        if let Some(id) = sent {
            req.headers_mut().insert(REQUEST_ID, id.parse().unwrap());
        }
        let resp = svc.oneshot(req).await.unwrap();
        let echoed = resp.headers().get(REQUEST_ID).expect("echoed").to_str().unwrap().to_owned();
        (resp.into_body(), echoed)
    }

    #[tokio::test]
    async fn the_layer_keeps_a_sane_caller_id_replaces_others_and_echoes_what_the_handler_saw() {
        assert_eq!(ids_through_the_layer(Some("caller-7")).await, ("caller-7".into(), "caller-7".into()));
        for sent in [None, Some("has space")] {
            let (seen, echoed) = ids_through_the_layer(sent).await;
            assert_eq!(seen, echoed, "{sent:?}");
            assert!(seen.split_once('-').is_some_and(|(p, _)| p.len() == 8), "a new id for {sent:?}: {seen}");
        }
        let (a, _) = ids_through_the_layer(None).await;
        let (b, _) = ids_through_the_layer(None).await;
        assert_ne!(a, b, "each request gets its own");
    }

    /// What the span layer logs under `filter` for answers with these statuses.
    async fn logged_through_the_span_layer(filter: &str, statuses: &[u16]) -> String {
        use std::sync::{Arc, Mutex};

        use tower::{Layer, ServiceExt};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Captured::default();
        let writer = out.clone();
        let fmt = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(fmt.with_filter(EnvFilter::new(filter)));
        let _default = tracing::subscriber::set_default(subscriber);
        for &status in statuses {
            let svc = SpanLayer::new(Plane::Data).layer(tower::service_fn(move |_req: http::Request<()>| async move {
                let mut resp = http::Response::new(());
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }));
            let mut req = http::Request::new(());
            req.headers_mut().insert(REQUEST_ID, "caller-9".parse().unwrap());
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "the answer passes through unchanged");
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_span_layer_logs_each_answer_in_its_request_span_only_when_asked() {
        let log = logged_through_the_span_layer("info,ferry::request=debug", &[200, 503]).await;
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains("answered") && lines[0].contains("status=200"), "{log}");
        assert!(lines[1].contains("request failed") && lines[1].contains("status=503"), "{log}");
        assert!(lines.iter().all(|l| l.contains("request_id=\"caller-9\"") && l.contains("latency_us=")), "{log}");
        assert_eq!(logged_through_the_span_layer("info", &[200, 503]).await, "", "nothing at info");
    }
}
