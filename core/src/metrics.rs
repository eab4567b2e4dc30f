//! Metric pieces the bridge and the worker share: queue-depth gauges that are
//! refreshed when Prometheus scrapes, a label guard for values that come from
//! messages, and the text rendering.

use crate::queue::Queue;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// How long a scrape waits for the broker before leaving the depth as it was.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency buckets in seconds, from sub-millisecond hand-offs to minute-long
/// backend calls.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `openhqm_queue_depth{queue,state}` and `openhqm_dlq_depth{queue}`.
pub struct QueueGauges {
    depth: IntGaugeVec,
    dlq_depth: IntGaugeVec,
}

impl QueueGauges {
    pub fn register(registry: &Registry) -> QueueGauges {
        QueueGauges {
            depth: gauge(
                registry,
                "openhqm_queue_depth",
                "Messages in the request queue by state (ready, in_flight)",
                &["queue", "state"],
            ),
            dlq_depth: gauge(
                registry,
                "openhqm_dlq_depth",
                "Messages waiting in the dead-letter queue",
                &["queue"],
            ),
        }
    }

    /// Ask the broker for the depths; a broker that does not answer in time
    /// leaves the last values (the scrape itself must not hang).
    pub async fn refresh(&self, requests: &dyn Queue, dlq: Option<&dyn Queue>) {
        if let Ok(Ok(d)) = tokio::time::timeout(DEPTH_TIMEOUT, requests.depth()).await {
            let q = requests.name();
            self.depth
                .with_label_values(&[q, "ready"])
                .set(saturating_i64(d.ready));
            self.depth
                .with_label_values(&[q, "in_flight"])
                .set(saturating_i64(d.in_flight));
        }
        if let Some(dlq) = dlq {
            if let Ok(Ok(d)) = tokio::time::timeout(DEPTH_TIMEOUT, dlq.depth()).await {
                self.dlq_depth
                    .with_label_values(&[dlq.name()])
                    .set(saturating_i64(d.ready.saturating_add(d.in_flight)));
            }
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A labelled counter, registered.
pub fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// A labelled gauge, registered.
pub fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// A latency histogram with [`LATENCY_BUCKETS`], registered.
pub fn latency_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// The Prometheus text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The label value to use for `value` when it comes from a request or a
/// message (a filter route name, say): values are admitted until `limit`
/// distinct ones have been seen, later ones and anything that does not look
/// like a name become `"other"`. Keeps `/metrics` bounded whatever arrives.
pub struct BoundedLabel {
    limit: usize,
    seen: Mutex<HashSet<String>>,
}

pub const OTHER: &str = "other";

impl BoundedLabel {
    pub fn new(limit: usize) -> BoundedLabel {
        BoundedLabel {
            limit,
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub fn get(&self, value: &str) -> String {
        let looks_like_a_name = !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
            });
        if !looks_like_a_name {
            return OTHER.to_string();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_label_admits_up_to_the_limit_then_other() {
        let b = BoundedLabel::new(2);
        assert_eq!(b.get("orders"), "orders");
        assert_eq!(b.get("users"), "users");
        assert_eq!(b.get("third"), OTHER);
        // Already admitted values stay themselves.
        assert_eq!(b.get("orders"), "orders");
        for bad in ["", "has space", "x\"y", &"a".repeat(65)] {
            assert_eq!(BoundedLabel::new(10).get(bad), OTHER, "{bad:?}");
        }
    }

    #[test]
    fn a_million_distinct_values_leave_the_label_set_bounded() {
        let b = BoundedLabel::new(100);
        let mut distinct = HashSet::new();
        for i in 0..1_000_000u32 {
            distinct.insert(b.get(&format!("route-{i}")));
        }
        assert_eq!(distinct.len(), 101);
    }
}
