//! Prometheus metrics for the bridge. Labels carry only bounded values: API
//! route templates (never raw paths), methods, status codes, queue names,
//! and filter route names through a [`BoundedLabel`].

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use openhqm_core::metrics::{counter, latency_histogram, BoundedLabel, QueueGauges};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};
use std::sync::Arc;
use std::time::Instant;

/// Distinct filter route names tracked before the rest count as "other".
const MAX_CAPTURE_ROUTES: usize = 100;

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub accepted: IntCounterVec,
    pub capture_duration: HistogramVec,
    pub capture_routes: BoundedLabel,
    pub publish: IntCounterVec,
    pub queues: QueueGauges,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        openhqm_core::build_info::register(&registry);
        openhqm_core::telemetry::register_span_metrics(&registry);
        let http_in_flight = IntGauge::new(
            "openhqm_http_in_flight",
            "HTTP requests the bridge is serving now (waits included)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_in_flight.clone()))
            .expect("metric registered once");
        Metrics {
            http_requests: counter(
                &registry,
                "openhqm_http_requests_total",
                "HTTP requests answered by the bridge",
                &["route", "method", "status"],
            ),
            http_duration: latency_histogram(
                &registry,
                "openhqm_http_request_duration_seconds",
                "Bridge request latency by API route template",
                &["route"],
            ),
            http_in_flight,
            accepted: counter(
                &registry,
                "openhqm_requests_accepted_total",
                "Requests made durable and answered 202",
                &["source"],
            ),
            capture_duration: latency_histogram(
                &registry,
                "openhqm_capture_duration_seconds",
                "Captured request latency in the bridge by filter route (waits included)",
                &["route"],
            ),
            capture_routes: BoundedLabel::new(MAX_CAPTURE_ROUTES),
            publish: counter(
                &registry,
                "openhqm_queue_publish_total",
                "Queue publish attempts by outcome",
                &["queue", "result"],
            ),
            queues: QueueGauges::register(&registry),
            registry,
        }
    }

    pub fn render(&self) -> String {
        openhqm_core::metrics::render(&self.registry)
    }

    /// Time one captured request under its filter route's name.
    pub fn observe_capture(&self, route: Option<&str>, started: Instant) {
        let route = self.capture_routes.get(route.unwrap_or("unnamed"));
        self.capture_duration
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Decrements the in-flight gauge however the request ends (a client that
/// disconnects cancels the handler future).
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Count and time every request by its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Methods are client-chosen strings: keep the label set bounded.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_string();
    metrics.http_in_flight.inc();
    let _in_flight = InFlight(metrics.http_in_flight.clone());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    resp
}
