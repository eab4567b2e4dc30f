//! The worker's admin listener: Prometheus `/metrics` and Kubernetes probes.
//! Loopback by default (`worker.admin_host`): nothing here is for clients.
//! Labels carry only bounded values: endpoint names from the configuration,
//! outcome kinds, breaker states; never a URL, key or correlation ID.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openhqm_core::metrics::{counter, gauge, latency_histogram, BoundedLabel, QueueGauges};
use openhqm_core::queue::Queue;
use openhqm_core::server;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Distinct filter route names tracked before the rest count as "other"
/// (route names come from messages, so anyone who can publish picks them).
const MAX_REQUEST_ROUTES: usize = 100;

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
    pub backend_duration: HistogramVec,
    pub backend_in_flight: IntGaugeVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub dlq_published: IntCounterVec,
    pub callbacks: IntCounterVec,
    /// Accepted -> final outcome, by the filter route that captured the
    /// request ("api" for the submit API, "foreign" for other systems').
    pub request_latency: HistogramVec,
    pub request_routes: BoundedLabel,
    pub queues: QueueGauges,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        openhqm_core::build_info::register(&registry);
        openhqm_core::telemetry::register_span_metrics(&registry);
        let active = IntGauge::new("openhqm_worker_active", "Messages being processed")
            .expect("valid metric");
        registry
            .register(Box::new(active.clone()))
            .expect("metric registered once");
        let r = &registry;
        Metrics {
            active,
            processed: counter(
                r,
                "openhqm_worker_messages_total",
                "Messages settled by outcome",
                &["outcome"],
            ),
            errors: counter(
                r,
                "openhqm_worker_errors_total",
                "Failed processing attempts",
                &["kind"],
            ),
            retries: counter(
                r,
                "openhqm_worker_retries_total",
                "Attempts scheduled again after a failure",
                &["endpoint"],
            ),
            processing_duration: latency_histogram(
                r,
                "openhqm_worker_processing_duration_seconds",
                "Time from receive to settle, per message",
                &["outcome"],
            ),
            backend_calls: counter(
                r,
                "openhqm_worker_backend_calls_total",
                "Backend calls by endpoint and result (2xx..5xx, error)",
                &["endpoint", "result"],
            ),
            backend_duration: latency_histogram(
                r,
                "openhqm_worker_backend_duration_seconds",
                "Backend call latency per endpoint (admission waits excluded)",
                &["endpoint"],
            ),
            backend_in_flight: gauge(
                r,
                "openhqm_worker_backend_in_flight",
                "Backend calls in flight per endpoint",
                &["endpoint"],
            ),
            breaker_state: gauge(
                r,
                "openhqm_worker_breaker_state",
                "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
                &["endpoint"],
            ),
            breaker_transitions: counter(
                r,
                "openhqm_worker_breaker_transitions_total",
                "Circuit breaker state changes",
                &["endpoint", "to"],
            ),
            dlq_published: counter(
                r,
                "openhqm_dlq_messages_total",
                "Messages moved to the dead-letter queue",
                &["queue"],
            ),
            callbacks: counter(
                r,
                "openhqm_worker_callbacks_total",
                "Completion callbacks by result",
                &["result"],
            ),
            request_latency: latency_histogram(
                r,
                "openhqm_request_latency_seconds",
                "Time from acceptance to final outcome, by filter route (api, foreign)",
                &["route"],
            ),
            request_routes: BoundedLabel::new(MAX_REQUEST_ROUTES),
            queues: QueueGauges::register(r),
            registry,
        }
    }

    fn render(&self) -> String {
        openhqm_core::metrics::render(&self.registry)
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
    dlq: Arc<dyn Queue>,
}

/// Bind the admin listener now and serve it in the background; the address
/// it got. An explicitly set `worker.admin_port` that is taken is a startup
/// error naming the key; the default one, taken (another worker on this
/// host), is a warning and an ephemeral port (`core::server::bind`).
pub async fn serve(
    config: &openhqm_core::config::Config,
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
) -> Result<std::net::SocketAddr, String> {
    let limits = server::Limits::from_config(&config.server).map_err(|e| e.to_string())?;
    let listener = server::bind(
        "worker.admin_port",
        &config.worker.admin_host,
        config.worker.admin_port,
        config.is_set("worker.admin_port"),
    )
    .await?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("`worker.admin_port`: {e}"))?;
    let state = Arc::new(AdminState {
        metrics,
        queue,
        dlq,
    });
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    tokio::spawn(server::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    Ok(addr)
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    // Depths are read on scrape so they are fresh without a polling task.
    state
        .metrics
        .queues
        .refresh(state.queue.as_ref(), Some(state.dlq.as_ref()))
        .await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "detail": "no such endpoint (this is the worker's admin listener: /metrics, /health/live, /health/ready)"})),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method_not_allowed", "detail": "the admin endpoints take GET"})),
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
