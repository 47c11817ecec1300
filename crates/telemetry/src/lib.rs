//! Logging, tracing and shutdown, shared by every Ferry service so that spans,
//! log formats and signal handling are the same everywhere.

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

/// Installs the global subscriber: a fmt layer (text or JSON) and, when an
/// endpoint is configured, an OpenTelemetry layer exporting over OTLP/gRPC.
pub fn init(
    service: &'static str,
    args: &TelemetryArgs,
) -> Result<TelemetryGuard, Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(&args.log)?;
    let fmt = if args.log_json {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    };
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
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
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

/// The span for one incoming request (gRPC or HTTP), continuing the caller's
/// W3C trace context (`traceparent`) when there is one.
pub fn server_span(protocol: &'static str, path: &str, headers: &http::HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!("request", otel.name = %path, protocol, path = %path);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    span
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
