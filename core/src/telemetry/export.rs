//! The OpenTelemetry SDK wired for OpenHQM: OTLP over HTTP as protobuf
//! (reqwest with rustls, the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE` trusted),
//! the SDK's batch span processor on its own thread, and counters of the
//! spans exported and dropped for `/metrics`.

use super::settings::{ExportSettings, SamplerSetting};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Spans ended but not yet exported beyond this are dropped (and counted):
/// a slow collector must never hold up requests or grow memory.
pub const QUEUE_CAPACITY: usize = 8192;
const MAX_BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// `openhqm_spans_exported_total` and `openhqm_spans_dropped_total`: one pair
/// per process, registered into each registry that asks.
pub fn span_counters() -> &'static (IntCounter, IntCounter) {
    static COUNTERS: OnceLock<(IntCounter, IntCounter)> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        (
            IntCounter::new(
                "openhqm_spans_exported_total",
                "Spans the collector accepted",
            )
            .expect("valid metric"),
            IntCounter::new(
                "openhqm_spans_dropped_total",
                "Spans lost: export queue full, or the collector failed or refused them",
            )
            .expect("valid metric"),
        )
    })
}

/// Spans handed to the batch processor and not yet through the exporter.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Counts what the exporter did with each batch.
#[derive(Debug)]
struct Counting<E>(E);

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.0.export(batch).await;
        PENDING.fetch_sub(n.min(PENDING.load(Ordering::Relaxed)), Ordering::Relaxed);
        let (exported, dropped) = span_counters();
        match &result {
            Ok(()) => exported.inc_by(n as u64),
            Err(e) => {
                dropped.inc_by(n as u64);
                // The SDK's error names the collector's answer or the
                // connection problem; header values are not in it.
                tracing::warn!(spans = n, error = %e, "trace export failed; spans dropped");
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Drops (and counts) a span when [`QUEUE_CAPACITY`] spans are already
/// waiting, before the batch processor would drop it uncounted.
#[derive(Debug)]
struct Bounded<P>(P);

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if PENDING.fetch_add(1, Ordering::Relaxed) >= QUEUE_CAPACITY {
            PENDING.fetch_sub(1, Ordering::Relaxed);
            span_counters().1.inc();
            return;
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn sampler(s: &SamplerSetting) -> Sampler {
    match s {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(*r),
        SamplerSetting::ParentBased(inner) => Sampler::ParentBased(Box::new(sampler(inner))),
    }
}

/// The blocking reqwest client the batch thread posts with. Built on a
/// thread of its own: reqwest's blocking client must not be made (or
/// dropped) inside the async runtime.
fn http_client(s: &ExportSettings) -> Result<reqwest::blocking::Client, String> {
    let (certificate, identity, timeout) =
        (s.certificate.clone(), s.client_identity.clone(), s.timeout);
    std::thread::spawn(move || {
        let mut b = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(pem) = certificate {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?;
            if certs.is_empty() {
                return Err("OTEL_EXPORTER_OTLP_CERTIFICATE: no certificate in the file".into());
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(pem) = identity {
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / _CLIENT_KEY: {e}"))?;
            b = b.identity(id);
        }
        b.build()
            .map_err(|e| format!("cannot set up the OTLP HTTP client: {e}"))
    })
    .join()
    .map_err(|_| "cannot set up the OTLP HTTP client".to_string())?
}

/// A tracer provider exporting as `s` says.
pub fn provider(s: &ExportSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http_client(s)?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(s.endpoint.clone())
        .with_timeout(s.timeout)
        .with_headers(s.headers.iter().cloned().collect())
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
    let batch = BatchSpanProcessor::builder(Counting(exporter))
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_CAPACITY)
                .with_max_export_batch_size(MAX_BATCH)
                .with_scheduled_delay(FLUSH_EVERY)
                .build(),
        )
        .build();
    let resource = Resource::builder()
        .with_service_name(s.service_name.clone())
        .with_attributes(
            s.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .chain([KeyValue::new("process.pid", i64::from(std::process::id()))]),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Bounded(batch))
        .with_sampler(sampler(&s.sampler))
        .with_resource(resource)
        .build())
}
