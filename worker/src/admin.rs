//! The worker's admin listener: Prometheus `/metrics` and Kubernetes probes.
//! Loopback by default (`worker.admin_host`): nothing here is for clients.
//! Labels carry only bounded values: endpoint names from the configuration,
//! outcome kinds, breaker states; never a URL, key or correlation ID.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openhqm_core::queue::Queue;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub struct Metrics {
    pub registry: Registry,
    /// Messages being worked on by this process.
    pub active: IntGauge,
    /// Final outcomes by kind (completed, failed, timeout, dead_lettered).
    pub processed: IntCounterVec,
    /// Failed attempts by kind (retry, fail) — the original's errors total.
    pub errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub processing_duration: HistogramVec,
    /// Backend calls by endpoint and outcome class.
    pub backend_calls: IntCounterVec,
    pub backend_in_flight: IntGaugeVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub dlq_published: IntCounterVec,
    pub callbacks: IntCounterVec,
    pub queue_depth: IntGaugeVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            active: IntGauge::new("openhqm_worker_active", "Messages being processed")
                .expect("valid metric"),
            processed: counter(
                "openhqm_worker_messages_total",
                "Messages settled by outcome",
                &["outcome"],
            ),
            errors: counter(
                "openhqm_worker_errors_total",
                "Failed processing attempts",
                &["kind"],
            ),
            retries: counter(
                "openhqm_worker_retries_total",
                "Attempts scheduled again after a failure",
                &["endpoint"],
            ),
            processing_duration: HistogramVec::new(
                HistogramOpts::new(
                    "openhqm_worker_processing_duration_seconds",
                    "Time from receive to settle, per message",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["outcome"],
            )
            .expect("valid metric"),
            backend_calls: counter(
                "openhqm_worker_backend_calls_total",
                "Backend calls by endpoint and result (2xx..5xx, error)",
                &["endpoint", "result"],
            ),
            backend_in_flight: gauge(
                "openhqm_worker_backend_in_flight",
                "Backend calls in flight per endpoint",
                &["endpoint"],
            ),
            breaker_state: gauge(
                "openhqm_worker_breaker_state",
                "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
                &["endpoint"],
            ),
            breaker_transitions: counter(
                "openhqm_worker_breaker_transitions_total",
                "Circuit breaker state changes",
                &["endpoint", "to"],
            ),
            dlq_published: counter(
                "openhqm_dlq_messages_total",
                "Messages moved to the dead-letter queue",
                &["queue"],
            ),
            callbacks: counter(
                "openhqm_worker_callbacks_total",
                "Completion callbacks by result",
                &["result"],
            ),
            queue_depth: gauge(
                "openhqm_queue_depth",
                "Messages in the queue (ready or in flight)",
                &["queue", "state"],
            ),
            registry,
        };
        for c in [
            Box::new(m.active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.processed.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.processing_duration.clone()),
            Box::new(m.backend_calls.clone()),
            Box::new(m.backend_in_flight.clone()),
            Box::new(m.breaker_state.clone()),
            Box::new(m.breaker_transitions.clone()),
            Box::new(m.dlq_published.clone()),
            Box::new(m.callbacks.clone()),
            Box::new(m.queue_depth.clone()),
        ] {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct AdminState {
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
}

/// Bind the admin listener now (a taken port is a startup error naming the
/// key) and serve it in the background.
pub async fn serve(
    host: &str,
    port: u16,
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
) -> Result<(), String> {
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("`worker.admin_port`: cannot listen on {addr}: {e}"))?;
    let state = Arc::new(AdminState { metrics, queue });
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(())
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    // Depth is read on scrape so it is fresh without a polling task.
    if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(2), state.queue.depth()).await {
        let q = state.queue.name();
        let depth = &state.metrics.queue_depth;
        depth
            .with_label_values(&[q, "ready"])
            .set(i64::try_from(d.ready).unwrap_or(i64::MAX));
        depth
            .with_label_values(&[q, "in_flight"])
            .set(i64::try_from(d.in_flight).unwrap_or(i64::MAX));
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn live() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// Ready only when the broker answers: a worker that cannot receive should
/// not count as capacity.
async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.queue.ping()).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "queue_unavailable"})),
        )
            .into_response(),
    }
}
