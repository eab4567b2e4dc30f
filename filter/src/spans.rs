//! Tracing of captured requests (only when the plugin config has `tracing`).
//!
//! [`RequestTrace`] is the trace of one captured request: the W3C context the
//! capture frame carries to the bridge and, when the trace is sampled, the
//! filter's SERVER span, from the request headers to the moment the client's
//! answer is decided. An inbound `traceparent` is continued (its trace id and
//! sampled flag); without a valid one the filter starts a trace and samples
//! it at `tracing.sample_ratio`. An unsampled inbound context is passed to
//! the bridge unchanged (a W3C participant that does not record may do so);
//! an unsampled new trace gets a fresh span id as its parent-id.
//!
//! [`Exporter`] holds one root context's finished spans (bounded: four
//! batches; more are dropped and counted) and turns them into OTLP/HTTP JSON
//! export calls on the root's tick. Neither ever blocks a request.

use std::time::Duration;

use openhqm_trace::{
    encode_export_request, Span, SpanId, SpanKind, SpanStatus, TraceContext, TraceId,
};

use crate::config::TracingConfig;
use crate::logic::Host;

/// Export calls one root context may have outstanding; further batches wait
/// in the buffer (and, when it is full, new spans are dropped).
pub const MAX_EXPORTS_IN_FLIGHT: usize = 4;
/// How long past its timeout an export call may stay unanswered before its
/// spans are counted as dropped (the host should always answer).
const IN_FLIGHT_GRACE_MS: u64 = 5000;

/// How a captured request ended (`openhqm.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The bridge queued it; the client got its `2xx` (normally `202`).
    Accepted,
    /// Wait mode: the backend's own answer was relayed.
    Relayed,
    /// The client got an error: the bridge's `4xx`, `413`, `503`, `500`.
    Rejected,
    /// The bridge failed and the route's policy sent the request on to the app.
    Passthrough,
    /// The client went away before its answer was decided.
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Relayed => "relayed",
            Outcome::Rejected => "rejected",
            Outcome::Passthrough => "passthrough",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Whether a new trace is recorded: `random` against `ratio` with 53 bits
/// of resolution (exact at 0.0 and 1.0).
pub fn sampled(random: [u8; 8], ratio: f64) -> bool {
    const SCALE: f64 = (1u64 << 53) as f64;
    (u64::from_le_bytes(random) >> 11) < (ratio * SCALE) as u64
}

fn random<const N: usize, H: Host>(host: &mut H) -> [u8; N] {
    let mut bytes = [0u8; N];
    host.random_bytes(&mut bytes);
    bytes
}

/// An all-zero id is invalid in W3C trace context.
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|b| *b == 0) {
        if let Some(last) = id.last_mut() {
            *last = 1;
        }
    }
    id
}

/// The trace of one captured request.
#[derive(Debug)]
pub struct RequestTrace {
    /// What the capture frame's `traceparent` says.
    context: TraceContext,
    /// The filter's span, while recording (sampled traces only).
    span: Option<Span>,
}

/// What a captured request's span records about it at the start.
#[derive(Debug, Clone, Copy)]
pub struct Captured<'a> {
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub route: &'a str,
    pub correlation_id: &'a str,
}

impl RequestTrace {
    /// Starts the trace of a request captured now, continuing `inbound`
    /// (the request's `traceparent`) when it is valid.
    pub fn start<H: Host>(
        host: &mut H,
        config: &TracingConfig,
        inbound: Option<&str>,
        request: &Captured<'_>,
    ) -> RequestTrace {
        let (context, parent) = match inbound.and_then(TraceContext::parse) {
            Some(inbound) if !inbound.sampled => {
                return RequestTrace {
                    context: inbound,
                    span: None,
                }
            }
            Some(inbound) => (
                inbound.child(SpanId(nonzero(random(host)))),
                Some(inbound.span_id),
            ),
            None => {
                let span_id = SpanId(nonzero(random(host)));
                let trace_id = TraceId(nonzero(random(host)));
                let sampled = match config.sample_ratio {
                    r if r >= 1.0 => true,
                    r if r <= 0.0 => false,
                    r => sampled(random(host), r),
                };
                let context = TraceContext {
                    trace_id,
                    span_id,
                    sampled,
                };
                (context, None)
            }
        };
        if !context.sampled {
            return RequestTrace {
                context,
                span: None,
            };
        }
        let start = host.now_unix_nanos();
        let mut span = Span {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent_span_id: parent,
            name: format!("capture {}", request.route),
            kind: SpanKind::Server,
            start_unix_nanos: start,
            end_unix_nanos: start,
            attributes: Vec::with_capacity(6),
            status: SpanStatus::Unset,
        };
        span.attr("http.request.method", request.method);
        span.attr("url.path", request.path);
        span.attr("openhqm.route", request.route);
        span.attr("openhqm.correlation_id", request.correlation_id);
        RequestTrace {
            context,
            span: Some(span),
        }
    }

    /// The `traceparent` for the capture frame: the filter's span as the
    /// parent of the bridge's.
    pub fn traceparent(&self) -> String {
        self.context.header()
    }

    /// The correlation ID the client got differs from the one made here (a
    /// repeated `Idempotency-Key` gets the first request's).
    pub fn set_correlation_id(&mut self, id: &str) {
        if let Some(span) = &mut self.span {
            for (key, value) in &mut span.attributes {
                if key == "openhqm.correlation_id" {
                    *value = id.into();
                }
            }
        }
    }

    /// Ends the span now and hands it to the host for export (when sampled).
    pub fn finish<H: Host>(
        self,
        host: &mut H,
        status: Option<u32>,
        outcome: Outcome,
        error: Option<String>,
    ) {
        let Some(mut span) = self.span else {
            return;
        };
        span.end_unix_nanos = host.now_unix_nanos().max(span.start_unix_nanos);
        if let Some(status) = status {
            span.attr("http.response.status_code", i64::from(status));
        }
        span.attr("openhqm.outcome", outcome.as_str());
        if let Some(message) = error {
            span.status = SpanStatus::Error(message);
        }
        host.export_span(span);
    }
}

/// What became of a finished span handed to [`Exporter::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Buffered,
    /// Buffered, and a full batch is waiting: export soon (call
    /// [`Exporter::tick`] before the next regular flush).
    FlushSoon,
    /// The buffer is full: the span is lost.
    Dropped,
}

/// What a tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Export calls started.
    pub calls: usize,
    /// Spans given up (dispatch failed, or an answer never came).
    pub dropped: usize,
    /// The dispatch error, when one failed.
    pub error: Option<String>,
}

/// An outstanding export call.
#[derive(Debug)]
struct InFlight {
    token: u32,
    spans: usize,
    give_up_ms: u64,
}

/// One root context's finished spans and export calls.
#[derive(Debug)]
pub struct Exporter {
    config: TracingConfig,
    buffer: Vec<Span>,
    in_flight: Vec<InFlight>,
    /// Milliseconds since the epoch; 0 = at the first tick.
    next_flush_ms: u64,
    flush_requested: bool,
}

/// Starts one HTTP call: cluster, headers, body, timeout; gives its token.
pub type Dispatch<'a> =
    dyn FnMut(&str, &[(&str, &str)], &[u8], Duration) -> Result<u32, String> + 'a;

impl Exporter {
    pub fn new(config: TracingConfig) -> Exporter {
        Exporter {
            config,
            buffer: Vec::new(),
            in_flight: Vec::new(),
            next_flush_ms: 0,
            flush_requested: false,
        }
    }

    pub fn config(&self) -> &TracingConfig {
        &self.config
    }

    /// Spans waiting for export.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Export calls outstanding.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Keeps a finished span for the next export.
    pub fn record(&mut self, span: Span) -> Recorded {
        if self.buffer.len() >= self.config.buffer_limit() {
            return Recorded::Dropped;
        }
        self.buffer.push(span);
        if self.buffer.len() >= self.config.max_batch
            && !self.flush_requested
            && self.in_flight.len() < MAX_EXPORTS_IN_FLIGHT
        {
            self.flush_requested = true;
            return Recorded::FlushSoon;
        }
        Recorded::Buffered
    }

    /// Whether [`Exporter::record`] asked for an early tick that has not
    /// come yet.
    pub fn flush_requested(&self) -> bool {
        self.flush_requested
    }

    /// Called on the root context's tick: when a batch is full or
    /// `flush_ms` has passed, sends the buffered spans in batches of
    /// `max_batch` (up to [`MAX_EXPORTS_IN_FLIGHT`] calls outstanding).
    pub fn tick(&mut self, now_ms: u64, dispatch: &mut Dispatch<'_>) -> Flushed {
        let mut done = Flushed::default();
        // Calls the host never answered (it should; this keeps the count
        // honest and frees the slot if it does not).
        self.in_flight.retain(|call| {
            let keep = call.give_up_ms > now_ms;
            if !keep {
                done.dropped = done.dropped.saturating_add(call.spans);
            }
            keep
        });
        if !self.flush_requested && now_ms < self.next_flush_ms {
            return done;
        }
        self.flush_requested = false;
        self.next_flush_ms = now_ms.saturating_add(self.config.flush_ms);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let headers = [
            (":method", "POST"),
            (":path", self.config.otlp_path.as_str()),
            (":authority", self.config.authority.as_str()),
            ("content-type", "application/json"),
        ];
        while !self.buffer.is_empty() && self.in_flight.len() < MAX_EXPORTS_IN_FLIGHT {
            let n = self.buffer.len().min(self.config.max_batch);
            let batch: Vec<Span> = self.buffer.drain(..n).collect();
            let body = encode_export_request(&self.config.service_name, &[], &batch);
            match dispatch(&self.config.otlp_cluster, &headers, &body, timeout) {
                Ok(token) => {
                    self.in_flight.push(InFlight {
                        token,
                        spans: n,
                        give_up_ms: now_ms
                            .saturating_add(self.config.timeout_ms)
                            .saturating_add(IN_FLIGHT_GRACE_MS),
                    });
                    done.calls = done.calls.saturating_add(1);
                }
                Err(e) => {
                    // The next batches would fail the same way: they wait
                    // for the next tick.
                    done.dropped = done.dropped.saturating_add(n);
                    done.error = Some(e);
                    break;
                }
            }
        }
        done
    }

    /// The answer to export call `token` (its `:status`, `None` when the
    /// call failed): `Some(Ok(n))` n spans exported, `Some(Err(n))` n spans
    /// lost, `None` when the token is not an export call.
    pub fn on_response(&mut self, token: u32, status: Option<u32>) -> Option<Result<usize, usize>> {
        let index = self.in_flight.iter().position(|call| call.token == token)?;
        let call = self.in_flight.swap_remove(index);
        Some(match status {
            Some(200..=299) => Ok(call.spans),
            _ => Err(call.spans),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use openhqm_trace::AttrValue;
    use serde_json::Value;

    fn tracing(extra: &str) -> TracingConfig {
        let json = format!(
            r#"{{"bridge_cluster":"b","routes":[],"tracing":{{"otlp_cluster":"otel"{extra}}}}}"#
        );
        Config::parse(json.as_bytes()).unwrap().tracing.unwrap()
    }

    fn span(n: u8) -> Span {
        Span {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent_span_id: None,
            name: format!("s{n}"),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![],
            status: SpanStatus::Unset,
        }
    }

    type Made = (String, Vec<(String, String)>, Value, Duration);

    #[derive(Default)]
    struct Calls {
        made: Vec<Made>,
        fail: Option<String>,
    }

    impl Calls {
        fn dispatch(&mut self) -> Box<Dispatch<'_>> {
            Box::new(move |cluster, headers, body, timeout| {
                if let Some(e) = &self.fail {
                    return Err(e.clone());
                }
                self.made.push((
                    cluster.to_string(),
                    headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    serde_json::from_slice(body).unwrap(),
                    timeout,
                ));
                Ok(100 + self.made.len() as u32)
            })
        }

        fn span_names(&self, i: usize) -> Vec<String> {
            self.made[i].2["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        }
    }

    #[test]
    fn sampling_is_exact_at_the_ends_and_proportional_between() {
        for r in [[0u8; 8], [0xff; 8], [0x80; 8], [1, 2, 3, 4, 5, 6, 7, 8]] {
            assert!(sampled(r, 1.0));
            assert!(!sampled(r, 0.0));
        }
        // 0x00..00 is below any ratio > 0, 0xff..ff above any ratio < 1.
        assert!(sampled([0; 8], 1e-9));
        assert!(!sampled([0xff; 8], 0.999_999));
        // A uniform sweep lands near the ratio.
        let hits = (0u32..10_000)
            .filter(|i| {
                let r = u64::from(*i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                sampled(r.to_le_bytes(), 0.25)
            })
            .count();
        assert!((2300..2700).contains(&hits), "{hits}");
    }

    #[test]
    fn exports_on_the_first_tick_then_every_flush_ms() {
        let mut e = Exporter::new(tracing(r#","flush_ms":1000,"timeout_ms":300"#));
        let mut calls = Calls::default();
        // Nothing buffered: no call.
        assert_eq!(e.tick(10_000, &mut calls.dispatch()), Flushed::default());
        assert_eq!(e.record(span(1)), Recorded::Buffered);
        assert_eq!(e.record(span(2)), Recorded::Buffered);
        assert_eq!(
            e.tick(10_500, &mut calls.dispatch()),
            Flushed::default(),
            "not due"
        );
        let done = e.tick(11_000, &mut calls.dispatch());
        assert_eq!(done.calls, 1);
        let (cluster, headers, body, timeout) = &calls.made[0];
        assert_eq!(cluster, "otel");
        assert_eq!(
            headers,
            &[
                (":method", "POST"),
                (":path", "/v1/traces"),
                (":authority", "otel"),
                ("content-type", "application/json"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(*timeout, Duration::from_millis(300));
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "openhqm-filter"
        );
        assert_eq!(calls.span_names(0), ["s1", "s2"]);
        assert_eq!(e.buffered(), 0);
        assert_eq!(e.on_response(101, Some(200)), Some(Ok(2)));
        assert_eq!(e.on_response(101, Some(200)), None, "answered once");
        assert_eq!(e.on_response(7, Some(200)), None, "not an export call");
    }

    #[test]
    fn a_full_batch_asks_for_an_early_flush_once() {
        let mut e = Exporter::new(tracing(r#","max_batch":3"#));
        let mut calls = Calls::default();
        e.tick(0, &mut calls.dispatch()); // next regular flush at 1000
        assert_eq!(e.record(span(1)), Recorded::Buffered);
        assert_eq!(e.record(span(2)), Recorded::Buffered);
        assert_eq!(e.record(span(3)), Recorded::FlushSoon);
        assert!(e.flush_requested());
        assert_eq!(e.record(span(4)), Recorded::Buffered, "asked already");
        let done = e.tick(5, &mut calls.dispatch());
        assert!(!e.flush_requested());
        assert_eq!(done.calls, 2, "batches of max_batch");
        assert_eq!(calls.span_names(0), ["s1", "s2", "s3"]);
        assert_eq!(calls.span_names(1), ["s4"]);
    }

    #[test]
    fn the_buffer_holds_four_batches_then_drops() {
        let mut e = Exporter::new(tracing(r#","max_batch":2"#));
        let recorded: Vec<Recorded> = (0..10).map(|i| e.record(span(i))).collect();
        assert_eq!(e.buffered(), 8);
        assert_eq!(
            recorded.iter().filter(|r| **r == Recorded::Dropped).count(),
            2
        );
        assert_eq!(recorded[8..], [Recorded::Dropped, Recorded::Dropped]);
    }

    #[test]
    fn in_flight_calls_are_capped_and_answers_free_slots() {
        let mut e = Exporter::new(tracing(r#","max_batch":1"#));
        let mut calls = Calls::default();
        for i in 0..4 {
            e.record(span(i));
        }
        assert_eq!(e.tick(0, &mut calls.dispatch()).calls, 4);
        assert_eq!(e.in_flight(), MAX_EXPORTS_IN_FLIGHT);
        // Slots full: a full batch waits, without asking for early ticks.
        assert_eq!(e.record(span(9)), Recorded::Buffered);
        assert_eq!(e.tick(2000, &mut calls.dispatch()).calls, 0);
        assert_eq!(e.buffered(), 1);
        assert_eq!(e.on_response(101, Some(202)), Some(Ok(1)));
        assert_eq!(e.on_response(102, Some(500)), Some(Err(1)), "non-2xx: lost");
        assert_eq!(e.on_response(103, None), Some(Err(1)), "failed call: lost");
        assert_eq!(e.tick(4000, &mut calls.dispatch()).calls, 1);
        // A call never answered is given up after its timeout and a grace.
        let done = e.tick(4000 + 1000 + IN_FLIGHT_GRACE_MS, &mut calls.dispatch());
        assert_eq!(done.dropped, 2, "104 and 105");
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn a_failed_dispatch_drops_that_batch_and_keeps_the_rest() {
        let mut e = Exporter::new(tracing(r#","max_batch":2"#));
        let mut calls = Calls {
            fail: Some("BadArgument".into()),
            ..Calls::default()
        };
        for i in 0..5 {
            e.record(span(i));
        }
        let done = e.tick(0, &mut calls.dispatch());
        assert_eq!(
            done,
            Flushed {
                calls: 0,
                dropped: 2,
                error: Some("BadArgument".into())
            }
        );
        assert_eq!(e.buffered(), 3);
        calls.fail = None;
        assert_eq!(e.tick(1000, &mut calls.dispatch()).calls, 2);
        assert_eq!(calls.span_names(0), ["s2", "s3"]);
    }

    #[test]
    fn export_uses_the_configured_path_authority_and_service() {
        let mut e = Exporter::new(tracing(
            r#","otlp_path":"/otlp/v1/traces","authority":"collector","service_name":"edge""#,
        ));
        let mut calls = Calls::default();
        let mut s = span(1);
        s.attr("k", AttrValue::Int(7));
        e.record(s);
        e.tick(0, &mut calls.dispatch());
        let (_, headers, body, _) = &calls.made[0];
        assert_eq!(headers[1].1, "/otlp/v1/traces");
        assert_eq!(headers[2].1, "collector");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
    }
}
