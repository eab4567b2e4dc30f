//! Logs and traces for the bridge and the worker.
//!
//! Logs: JSON (or text) lines on stderr at `monitoring.log_level`
//! (overridable with RUST_LOG). Work on one request runs inside a `tracing`
//! span that carries its `correlation_id` (and `trace_id` when tracing), so
//! every line about the request names it; bodies and header values are never
//! logged.
//!
//! Traces: with `monitoring.otlp_endpoint` set, [`TraceSpan`]s are batched
//! and posted as OTLP/HTTP JSON to `<endpoint>/v1/traces` by one background
//! task. The W3C `traceparent` links the spans of one request across the
//! filter, the bridge, the queue (it travels in the envelope), the worker and
//! the backend call. Without an endpoint, spans cost nothing and the inbound
//! `traceparent` is passed along unchanged.

use crate::config::{LogFormat, MonitoringConfig};
use openhqm_trace::{encode_export_request, AttrValue, Span, SpanId, SpanKind, SpanStatus};
use openhqm_trace::{TraceContext, TraceId};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::EnvFilter;

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
    let directives = [
        "hyper",
        "hyper_util",
        "h2",
        "reqwest",
        "tower",
        "axum",
        "redis",
        "rumqttc",
        "rusqlite",
    ]
    .iter()
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

/// Where spans are posted: plain HTTP to a collector (an OpenTelemetry
/// Collector agent or sidecar, which can forward over TLS).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl OtlpTarget {
    /// `http://host[:port][/base]`; the path `/v1/traces` is appended unless
    /// the URL already ends with it.
    pub fn parse(url: &str) -> Result<OtlpTarget, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("`{url}`: give an http:// URL of an OTLP/HTTP collector (https is not built in; run a collector agent next to OpenHQM)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{url}`: `{p}` is not a port"))?;
                (h, port)
            }
            _ => (authority, 4318),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        let path = if path.ends_with("/v1/traces") {
            path.to_string()
        } else {
            format!("{path}/v1/traces")
        };
        Ok(OtlpTarget {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The configured endpoint, else the standard OpenTelemetry variables.
    fn from_config(m: &MonitoringConfig) -> Option<OtlpTarget> {
        if let Some(url) = &m.otlp_endpoint {
            return OtlpTarget::parse(url).ok();
        }
        if let Ok(url) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return OtlpTarget::parse(&url).ok().map(|mut t| {
                // This variable names the full URL: use its path as given.
                if let Some(i) = url.strip_prefix("http://").and_then(|r| r.find('/')) {
                    t.path = url["http://".len() + i..].to_string();
                }
                t
            });
        }
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .and_then(|url| OtlpTarget::parse(&url).ok())
    }
}

/// Spans waiting for the exporter task beyond this are dropped:
/// a slow collector must never hold up requests or grow memory.
const QUEUE_CAPACITY: usize = 8192;
const MAX_BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

enum Command {
    Span(Box<Span>),
    Flush(oneshot::Sender<()>),
}

struct Exporter {
    tx: mpsc::Sender<Command>,
    sample_ratio: f64,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Start the OTLP exporter when an endpoint is configured. Call once, inside
/// the tokio runtime.
pub fn start_tracing(m: &MonitoringConfig, program: &str) {
    let Some(target) = OtlpTarget::from_config(m) else {
        return;
    };
    let service = m
        .service_name
        .clone()
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .unwrap_or_else(|| program.to_string());
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    if EXPORTER
        .set(Exporter {
            tx,
            sample_ratio: m.trace_sample_ratio,
        })
        .is_ok()
    {
        tracing::info!(
            collector = %format!("http://{}:{}{}", target.host, target.port, target.path),
            service = %service,
            "exporting traces over OTLP/HTTP"
        );
        tokio::spawn(export_loop(target, service, rx));
    }
}

/// Send what is buffered before the program exits (bounded wait).
pub async fn flush_tracing() {
    let Some(exp) = EXPORTER.get() else { return };
    let (done, wait) = oneshot::channel();
    if exp.tx.send(Command::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(POST_TIMEOUT, wait).await;
    }
}

async fn export_loop(target: OtlpTarget, service: String, mut rx: mpsc::Receiver<Command>) {
    let resource = vec![(
        "process.pid".to_string(),
        AttrValue::Int(i64::from(std::process::id())),
    )];
    let mut batch: Vec<Span> = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        let mut flushed: Option<oneshot::Sender<()>> = None;
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Span(s)) => {
                    batch.push(*s);
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                }
                Some(Command::Flush(done)) => flushed = Some(done),
                None => return,
            },
            _ = tick.tick() => {}
        }
        if !batch.is_empty() {
            let body = encode_export_request(&service, &resource, &batch);
            let n = batch.len();
            batch.clear();
            match tokio::time::timeout(POST_TIMEOUT, post(&target, &body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {}
                outcome => {
                    let why = match outcome {
                        Ok(Ok(status)) => format!("collector answered {status}"),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".into(),
                    };
                    tracing::warn!(spans = n, error = %why, "trace export failed; spans dropped");
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// One HTTP/1.1 POST on a fresh connection (one per batch, at most one a
/// second): the status code.
async fn post(target: &OtlpTarget, body: &[u8]) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    let host = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    // The status line is all we need.
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "collector sent no HTTP status line".to_string())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn new_span_id() -> SpanId {
    loop {
        let id = SpanId(fastrand::u64(..).to_be_bytes());
        if id.is_valid() {
            return id;
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = TraceId(fastrand::u128(..).to_be_bytes());
        if id.is_valid() {
            return id;
        }
    }
}

/// One operation of a request's trace. Recorded (and exported when dropped)
/// only when an exporter runs and the trace is sampled; otherwise it only
/// carries the `traceparent` to pass on.
pub struct TraceSpan {
    recording: Option<Box<Span>>,
    /// The `traceparent` for the next hop: this span as the parent, or the
    /// inbound value unchanged when tracing is off.
    propagate: Option<String>,
}

impl TraceSpan {
    /// Start a span under `parent` (a `traceparent` value); an absent or
    /// invalid parent starts a new trace, sampled at `trace_sample_ratio`.
    pub fn start(name: impl Into<String>, kind: SpanKind, parent: Option<&str>) -> TraceSpan {
        let Some(exp) = EXPORTER.get() else {
            return TraceSpan {
                recording: None,
                propagate: parent.map(str::to_string),
            };
        };
        let inbound = parent.and_then(TraceContext::parse);
        let ctx = TraceContext {
            trace_id: inbound.map_or_else(new_trace_id, |c| c.trace_id),
            span_id: new_span_id(),
            sampled: inbound.map_or_else(|| fastrand::f64() < exp.sample_ratio, |c| c.sampled),
        };
        let recording = ctx.sampled.then(|| {
            Box::new(Span {
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                parent_span_id: inbound.map(|c| c.span_id),
                name: name.into(),
                kind,
                start_unix_nanos: now_nanos(),
                end_unix_nanos: 0,
                attributes: Vec::new(),
                status: SpanStatus::Unset,
            })
        });
        TraceSpan {
            recording,
            propagate: Some(ctx.header()),
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
        self.recording.as_ref().map(|s| s.trace_id.to_string())
    }

    pub fn attr(&mut self, key: &str, value: impl Into<AttrValue>) {
        if let Some(s) = &mut self.recording {
            s.attr(key, value);
        }
    }

    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some(s) = &mut self.recording {
            s.status = SpanStatus::Error(message.into());
        }
    }

    /// End the span now (dropping it does the same).
    pub fn end(self) {}
}

impl Drop for TraceSpan {
    fn drop(&mut self) {
        let (Some(mut span), Some(exp)) = (self.recording.take(), EXPORTER.get()) else {
            return;
        };
        span.end_unix_nanos = now_nanos().max(span.start_unix_nanos);
        // A full queue drops the span: export must never hold up a request.
        let _ = exp.tx.try_send(Command::Span(span));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_target_urls() {
        let t = OtlpTarget::parse("http://collector:4318").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let t = OtlpTarget::parse("http://127.0.0.1:9999/otlp/").unwrap();
        assert_eq!((t.port, t.path.as_str()), (9999, "/otlp/v1/traces"));
        let t = OtlpTarget::parse("http://c/v1/traces").unwrap();
        assert_eq!((t.port, t.path.as_str()), (4318, "/v1/traces"));
        let t = OtlpTarget::parse("http://[::1]:4318").unwrap();
        assert_eq!(t.host, "::1");
        assert!(OtlpTarget::parse("https://c:4318")
            .unwrap_err()
            .contains("http://"));
        assert!(OtlpTarget::parse("http://c:port").is_err());
        assert!(OtlpTarget::parse("http://:4318").is_err());
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
}
