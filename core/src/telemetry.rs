//! Logs and traces for the bridge and the worker.
//!
//! Logs: JSON (or text) lines on stderr at `monitoring.log_level`
//! (overridable with RUST_LOG). Work on one request runs inside a `tracing`
//! span that carries its `correlation_id` (and `trace_id` when tracing), so
//! every line about the request names it; bodies and header values are never
//! logged.
//!
//! Traces: with an OTLP endpoint configured (`monitoring.otlp_endpoint` or
//! the standard `OTEL_EXPORTER_OTLP_*` variables, see [`settings`]),
//! [`TraceSpan`]s are recorded by the OpenTelemetry SDK and exported over
//! OTLP/HTTP (protobuf, TLS when the URL is https) by its batch processor.
//! The W3C `traceparent` links the spans of one request across the filter,
//! the bridge, the queue (it travels in the envelope), the worker and the
//! backend call; it is read and written by `openhqm_trace::TraceContext`,
//! the same code the Wasm filter runs. Without an endpoint, spans cost
//! nothing and the inbound `traceparent` is passed along unchanged.

mod export;
pub mod settings;

use crate::config::{LogFormat, MonitoringConfig};
use openhqm_trace::{AttrValue, SpanId, SpanKind, TraceContext, TraceId};
use opentelemetry::trace::{
    Span as _, SpanContext, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub use export::QUEUE_CAPACITY;

pub fn init_logging(m: &MonitoringConfig) {
    let level = match m.log_level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        other => other.to_string(),
    };
    // The level applies to OpenHQM's lines (and a custom processor's); the
    // HTTP, Redis and MQTT libraries only speak up for warnings, unless
    // RUST_LOG says more.
    let libraries = if level == "error" { "error" } else { "warn" };
    let directives = ["hyper", "hyper_util", "h2", "reqwest", "tower", "axum"]
        .iter()
        .chain(crate::backends::client_libraries())
        .fold(level.clone(), |acc, lib| format!("{acc},{lib}={libraries}"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match m.log_format {
        // One flat object per line; the innermost span's fields (the
        // correlation ID) under "span".
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// How long the final flush may take before the program exits anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Register `openhqm_spans_exported_total` and `openhqm_spans_dropped_total`
/// (present, at 0, when tracing is off).
pub fn register_span_metrics(registry: &prometheus::Registry) {
    let (exported, dropped) = export::span_counters();
    for c in [exported, dropped] {
        registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
    }
}

/// Check the tracing settings and, when an endpoint is configured, start the
/// exporter. Call once, inside the tokio runtime. An invalid value is an
/// error naming the key or variable (the caller stops start-up with it).
pub fn start_tracing(m: &MonitoringConfig, program: &str) -> Result<(), String> {
    let Some(s) = settings::resolve(m, program, &|k| std::env::var(k).ok())? else {
        return Ok(());
    };
    let provider = export::provider(&s)?;
    let scope = InstrumentationScope::builder("openhqm")
        .with_version(crate::build_info::VERSION)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer_with_scope(&provider, scope);
    if TRACING.set(Tracing { provider, tracer }).is_ok() {
        // The URL and the header names only: header values are credentials.
        let header_names: Vec<&str> = s.headers.iter().map(|(k, _)| k.as_str()).collect();
        tracing::info!(
            collector = %s.endpoint,
            headers = ?header_names,
            custom_ca = s.certificate.is_some(),
            service = %s.service_name,
            "exporting traces over OTLP/HTTP (protobuf)"
        );
    }
    Ok(())
}

/// Send what is buffered before the program exits (bounded wait). The SDK
/// blocks while it flushes: off the async threads.
pub async fn flush_tracing() {
    let Some(t) = TRACING.get() else { return };
    let flush = tokio::task::spawn_blocking(move || {
        let _ = t.provider.shutdown_with_timeout(FLUSH_TIMEOUT);
    });
    let _ = tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_secs(1), flush).await;
}

fn otel_kind(kind: SpanKind) -> opentelemetry::trace::SpanKind {
    use opentelemetry::trace::SpanKind as K;
    match kind {
        SpanKind::Internal => K::Internal,
        SpanKind::Server => K::Server,
        SpanKind::Client => K::Client,
        SpanKind::Producer => K::Producer,
        SpanKind::Consumer => K::Consumer,
    }
}

/// The inbound `traceparent` as the SDK's remote parent.
fn parent_context(inbound: Option<TraceContext>) -> Context {
    match inbound {
        None => Context::new(),
        Some(c) => Context::new().with_remote_span_context(SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(c.trace_id.0),
            opentelemetry::trace::SpanId::from_bytes(c.span_id.0),
            if c.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )),
    }
}

/// One operation of a request's trace. Recorded (and exported when it ends)
/// only when an exporter runs and the trace is sampled; otherwise it only
/// carries the `traceparent` to pass on.
pub struct TraceSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    /// The `traceparent` for the next hop: this span as the parent, or the
    /// inbound value unchanged when tracing is off.
    propagate: Option<String>,
}

impl TraceSpan {
    /// Start a span under `parent` (a `traceparent` value); an absent or
    /// invalid parent starts a new trace, sampled as the sampler says.
    pub fn start(name: impl Into<String>, kind: SpanKind, parent: Option<&str>) -> TraceSpan {
        let passthrough = || TraceSpan {
            span: None,
            propagate: parent.map(str::to_string),
        };
        let Some(t) = TRACING.get() else {
            return passthrough();
        };
        let cx = parent_context(parent.and_then(TraceContext::parse));
        let span = t
            .tracer
            .span_builder(name.into())
            .with_kind(otel_kind(kind))
            .start_with_context(&t.tracer, &cx);
        let sc = span.span_context();
        if !sc.is_valid() {
            // The provider is shutting down.
            return passthrough();
        }
        let propagate = TraceContext {
            trace_id: TraceId(sc.trace_id().to_bytes()),
            span_id: SpanId(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        }
        .header();
        TraceSpan {
            span: Some(span),
            propagate: Some(propagate),
        }
    }

    /// A span for a sub-operation of this one.
    pub fn child(&self, name: impl Into<String>, kind: SpanKind) -> TraceSpan {
        TraceSpan::start(name, kind, self.propagate.as_deref())
    }

    /// The `traceparent` to send on (in a message or to the backend).
    pub fn traceparent(&self) -> Option<&str> {
        self.propagate.as_deref()
    }

    /// The trace id, for log lines; only while recording.
    pub fn trace_id(&self) -> Option<String> {
        self.span
            .as_ref()
            .filter(|s| s.is_recording())
            .map(|s| s.span_context().trace_id().to_string())
    }

    pub fn attr(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(s) = self.span.as_mut().filter(|s| s.is_recording()) {
            let value = match value.into() {
                AttrValue::Str(v) => Value::from(v),
                AttrValue::Int(v) => Value::I64(v),
                AttrValue::Bool(v) => Value::Bool(v),
            };
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some(s) = self.span.as_mut().filter(|s| s.is_recording()) {
            s.set_status(Status::error(message.into()));
        }
    }

    /// The messaging semantic conventions of a `send` (bridge) or `process`
    /// (worker) span: the message ID is the request's correlation ID.
    pub fn messaging(
        &mut self,
        system: &str,
        operation: &'static str,
        destination: &str,
        correlation_id: &str,
    ) {
        self.attr("messaging.system", system.to_string());
        self.attr("messaging.operation.type", operation);
        self.attr("messaging.operation.name", operation);
        self.attr("messaging.destination.name", destination.to_string());
        self.attr("messaging.message.id", correlation_id.to_string());
    }

    /// `server.address` and `server.port` from a `Host` / `:authority`
    /// value (`host[:port]`, `[v6]:port`).
    pub fn server_authority(&mut self, authority: &str, default_port: u16) {
        let (host, port) = split_authority(authority, default_port);
        if !host.is_empty() {
            self.attr("server.address", host.to_string());
            self.attr("server.port", i64::from(port));
        }
    }

    /// End the span now (dropping it does the same: the SDK's span ends
    /// when dropped).
    pub fn end(self) {}
}

/// `messaging.system` of a queue backend: its `queue.type` word (`redis`,
/// `mqtt`, `embedded`, or a custom backend's registered name). The
/// conventions' list of well-known systems has none of these; they allow a
/// custom value for a system not on it.
pub fn messaging_system(q: &crate::config::QueueConfig) -> String {
    match (q.kind, q.custom_class.as_deref()) {
        (crate::config::QueueType::Custom, Some(name)) if !name.is_empty() => name.to_string(),
        (kind, _) => kind.as_str().to_string(),
    }
}

fn split_authority(authority: &str, default_port: u16) -> (&str, u16) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port.unwrap_or(default_port));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default_port)),
        _ => (authority, default_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messaging_system_is_the_queue_type_or_the_custom_backend() {
        use crate::config::{QueueConfig, QueueType};
        let mut q = QueueConfig::default();
        for (kind, word) in [
            (QueueType::Embedded, "embedded"),
            (QueueType::Redis, "redis"),
            (QueueType::Mqtt, "mqtt"),
        ] {
            q.kind = kind;
            assert_eq!(messaging_system(&q), word);
        }
        q.kind = QueueType::Custom;
        q.custom_class = Some("nats".into());
        assert_eq!(messaging_system(&q), "nats");
    }

    #[test]
    fn authorities_split_into_address_and_port() {
        assert_eq!(split_authority("bridge:8000", 80), ("bridge", 8000));
        assert_eq!(split_authority("example.com", 443), ("example.com", 443));
        assert_eq!(split_authority("[::1]:9", 80), ("::1", 9));
        assert_eq!(split_authority("[::1]", 80), ("::1", 80));
        assert_eq!(split_authority("h:notaport", 80), ("h", 80));
    }

    #[test]
    fn without_an_exporter_the_inbound_traceparent_passes_unchanged() {
        // No exporter is started in unit tests.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = TraceSpan::start("x", SpanKind::Server, Some(tp));
        assert_eq!(span.traceparent(), Some(tp));
        assert_eq!(span.child("y", SpanKind::Client).traceparent(), Some(tp));
        assert_eq!(
            TraceSpan::start("x", SpanKind::Server, None).traceparent(),
            None
        );
    }

    #[test]
    fn the_inbound_traceparent_becomes_the_sdks_remote_parent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parent_context(TraceContext::parse(tp));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let unsampled = parent_context(TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.span().span_context().is_sampled());
        assert!(!parent_context(None).has_active_span());
    }
}
