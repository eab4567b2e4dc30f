//! The per-request state machine, independent of Proxy-Wasm.
//!
//! [`HttpFilter`] is driven by the HTTP context callbacks and talks to the
//! proxy only through the [`Host`] trait, so it is unit-tested natively with
//! a fake host. States:
//!
//! ```text
//! New ──headers──> PassThrough                       (not ours: touch nothing)
//!     ──headers──> Relaying ──callout──> Done        (GET {api_prefix}/status|response/…)
//!     ──headers──> Buffering ──body…eos──> Capturing ──callout──> Done
//!                      ├──too large──> Done (413)
//!                      └──no body ever delivered (watchdog)──> Done (500)
//! ```

use std::mem;
use std::rc::Rc;
use std::time::Duration;

use openhqm_trace::Span;

use crate::config::Config;
use crate::frame::{encode_frame, FrameMeta};
use crate::routes::{split_path, FailurePolicy, Mode, RequestInfo, Route};
use crate::spans::{Captured, Outcome, RequestTrace};

/// Bridge endpoint that receives capture frames.
pub const CAPTURE_PATH: &str = "/internal/v1/capture";
/// Content type of a capture frame.
pub const CAPTURE_CONTENT_TYPE: &str = "application/vnd.openhqm.capture";
/// Header carrying the correlation ID.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Marks the bridge's answer as the backend's final response (wait mode).
pub const FINAL_RESULT_HEADER: &str = "x-openhqm-result";

/// Bridge headers passed to the client on a relayed status/response answer
/// and when the bridge accepted a capture.
const RELAY_HEADERS: [&str; 4] = [
    "content-type",
    "location",
    "retry-after",
    "preference-applied",
];
/// Bridge headers passed to the client when the bridge rejected a capture.
const REJECTED_HEADERS: [&str; 2] = ["content-type", "retry-after"];

const UNAVAILABLE_BODY: &str =
    r#"{"error":"bridge_unavailable","detail":"the request was not accepted; retry later"}"#;
const PROXY_MISCONFIGURED_BODY: &str = r#"{"error":"proxy_misconfigured","detail":"the request body did not reach the OpenHQM filter; see the proxy log"}"#;
const JSON: &str = "application/json";

/// What the proxy should do with the request after a callback
/// (maps to Proxy-Wasm's `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request go on to the next filter (the app).
    Continue,
    /// Hold the request: `StopIteration` on headers, `StopIterationAndBuffer`
    /// on body.
    Pause,
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Per-request detail.
    Debug,
    /// Notable events.
    Info,
    /// Something failed for one request.
    Warn,
    /// Something is misconfigured or broken.
    Error,
}

/// Header list: names as given by the proxy (lower-case), raw value bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

/// What the state machine needs from the proxy.
pub trait Host {
    /// All request headers, pseudo-headers included, in order.
    fn request_headers(&mut self) -> Headers;
    /// One request header (the first value), without fetching them all.
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.request_headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    /// The buffered request body, `size` bytes from offset 0.
    fn request_body(&mut self, size: usize) -> Option<Vec<u8>>;
    /// Starts an HTTP call to `cluster`; returns the call's token.
    fn dispatch_http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Headers of the callout response (only valid in the callout callback).
    fn call_response_headers(&mut self) -> Headers;
    /// Body of the callout response, `size` bytes from offset 0.
    fn call_response_body(&mut self, size: usize) -> Option<Vec<u8>>;
    /// Status of the callout response (its `:status`), if it has a valid one.
    fn call_response_status(&mut self) -> Option<u32> {
        response_status(&self.call_response_headers())
    }
    /// Answers the client directly (local reply); the request goes no further.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Writes to the proxy's log.
    fn log(&mut self, level: LogLevel, message: &str);
    /// A new random (v4) UUID, hyphenated lower-case.
    fn new_uuid(&mut self) -> String;
    /// Let the held request go on to the app, with its buffered body.
    fn resume_request(&mut self);
    /// Count a request of `route` served synchronously because the bridge
    /// failed (the `passthrough` policy).
    fn count_passthrough(&mut self, route: &str);
    /// Fills `buf` with random bytes (the source of the UUIDs too).
    fn random_bytes(&mut self, buf: &mut [u8]);
    /// The host's clock, in nanoseconds since the Unix epoch.
    fn now_unix_nanos(&mut self) -> u64;
    /// A finished, sampled span to export; must not block.
    fn export_span(&mut self, span: Span);
}

/// The `:status` of a response header list, when it is a 3-digit number.
pub fn response_status(headers: &[(String, Vec<u8>)]) -> Option<u32> {
    let value = header_str(headers, ":status")?.trim();
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|s| (100..=599).contains(s))
}

/// A hyphenated UUID (any version), as a client-supplied correlation ID must be.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// How long a captured request waits for the backend's own answer, and what
/// of the client's RFC 7240 `Prefer` was honoured: `respond-async` always
/// gets the 202 at once; `wait=N` waits up to N seconds, capped by the route;
/// otherwise the route's mode decides.
fn effective_wait(route: &Route, prefer: Option<&str>) -> (u64, Option<String>) {
    let limit_ms = u64::try_from(route.wait_limit.as_millis()).unwrap_or(u64::MAX);
    if let Some(prefer) = prefer {
        let respond_async = prefer.split(',').any(|item| {
            item.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("respond-async")
        });
        if respond_async {
            return (0, Some("respond-async".to_string()));
        }
        if let Some(seconds) = prefer_wait_seconds(prefer) {
            let ms = seconds.saturating_mul(1000).min(limit_ms);
            return (ms, Some(format!("wait={}", ms / 1000)));
        }
    }
    match route.mode {
        Mode::Wait => (limit_ms, None),
        Mode::Async => (0, None),
    }
}

/// Backend response headers that reach the client in wait mode: not
/// pseudo-headers, not hop-by-hop or framing ones, not OpenHQM's own.
fn is_relayable_backend_header(name: &str) -> bool {
    !name.starts_with(':')
        && !name.starts_with("x-openhqm-")
        && !matches!(
            name,
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "te"
                | "trailer"
                | "upgrade"
                | "content-length"
                | "date"
                | "server"
                | "x-correlation-id"
        )
}

/// The `wait=N` preference of an RFC 7240 `Prefer` header, in seconds.
pub fn prefer_wait_seconds(prefer: &str) -> Option<u64> {
    prefer.split(',').find_map(|item| {
        let (name, value) = item.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        value.trim().trim_matches('"').parse().ok()
    })
}

/// The first value of header `name` when it is valid UTF-8.
fn header_str<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// A captured request waiting for the end of its body.
#[derive(Debug)]
struct Pending {
    correlation_id: String,
    method: String,
    path: String,
    query: Option<String>,
    authority: Option<String>,
    headers: Headers,
    /// Body bytes buffered so far (as reported by the proxy).
    body_size: usize,
    /// Whether a body or trailers callback has arrived.
    body_seen: bool,
    /// Index of the capturing route in the table.
    route: usize,
    /// How long the client waits for the backend's own answer; 0 = async.
    wait_ms: u64,
    /// What of the client's `Prefer` was honoured, for `Preference-Applied`.
    preference_applied: Option<String>,
}

#[derive(Debug)]
enum State {
    New,
    PassThrough,
    Buffering(Box<Pending>),
    Capturing {
        token: u32,
        correlation_id: String,
        route: usize,
        preference_applied: Option<String>,
    },
    Relaying {
        token: u32,
    },
    Done,
}

/// The filter's state for one HTTP request.
#[derive(Debug)]
pub struct HttpFilter {
    config: Rc<Config>,
    state: State,
    /// A captured request's trace (with `tracing` configured) until the
    /// client's answer is decided.
    trace: Option<Box<RequestTrace>>,
}

impl HttpFilter {
    /// A filter for a new request.
    pub fn new(config: Rc<Config>) -> Self {
        HttpFilter {
            config,
            state: State::New,
            trace: None,
        }
    }

    /// Ends the captured request's span (if one is open): the client's
    /// answer is decided.
    fn end_trace<H: Host>(
        &mut self,
        host: &mut H,
        status: Option<u32>,
        outcome: Outcome,
        error: Option<String>,
    ) {
        if let Some(trace) = self.trace.take() {
            trace.finish(host, status, outcome, error);
        }
    }

    /// The request is over (Proxy-Wasm `on_done`). A span still open means
    /// the client went away before its answer was decided.
    pub fn on_done<H: Host>(&mut self, host: &mut H) {
        self.end_trace(
            host,
            None,
            Outcome::Cancelled,
            Some("the client went away before its answer".to_string()),
        );
    }

    /// Whether this request is left alone (not captured, not relayed).
    pub fn is_pass_through(&self) -> bool {
        matches!(self.state, State::PassThrough)
    }

    /// Whether the request was held at its headers to buffer a body and no
    /// body callback has arrived yet.
    pub fn awaits_first_body_chunk(&self) -> bool {
        matches!(&self.state, State::Buffering(p) if !p.body_seen)
    }

    /// The proxy never delivered the body of a held request: Envoy turns the
    /// filter's `StopIteration` into `StopAllIteration` unless the Wasm plugin
    /// config sets `allow_on_headers_stop_iteration: true` (Envoy >= 1.35),
    /// and then the request would hang until the stream idle timeout.
    /// Answers 500 and logs the fix. Does nothing in any other state.
    pub fn on_body_stalled<H: Host>(&mut self, host: &mut H) {
        if !self.awaits_first_body_chunk() {
            return;
        }
        let State::Buffering(pending) = mem::replace(&mut self.state, State::Done) else {
            return;
        };
        host.log(
            LogLevel::Error,
            &format!(
                "openhqm: the body of {} never reached the filter: the proxy holds request \
                 bodies when a filter pauses at the headers; set \
                 `allow_on_headers_stop_iteration: true` in the Wasm plugin config (Envoy >= 1.35)",
                pending.correlation_id
            ),
        );
        self.end_trace(
            host,
            Some(500),
            Outcome::Rejected,
            Some("the request body never reached the filter".to_string()),
        );
        let headers = [
            ("content-type", JSON),
            (
                self.config.correlation_header.as_str(),
                pending.correlation_id.as_str(),
            ),
        ];
        host.send_response(500, &headers, PROXY_MISCONFIGURED_BODY.as_bytes());
    }

    /// Request headers arrived.
    pub fn on_request_headers<H: Host>(&mut self, host: &mut H, end_of_stream: bool) -> Action {
        if !matches!(self.state, State::New) {
            return self.hold_unless_pass_through();
        }
        let config = Rc::clone(&self.config);
        // Most requests are not ours: decide from :method and :path alone,
        // fetching the whole header map (costly across the Wasm boundary)
        // only for requests that may be captured or relayed.
        let (Some(method), Some(full_path)) = (
            host.request_header(":method")
                .and_then(|v| String::from_utf8(v).ok()),
            host.request_header(":path")
                .and_then(|v| String::from_utf8(v).ok()),
        ) else {
            self.state = State::PassThrough;
            return Action::Continue;
        };
        let (path_only, _) = split_path(&full_path);
        let relayed = method == "GET" && is_relay_path(&config.api_prefix, path_only);
        if !relayed && !config.routes.may_match(&method, path_only) {
            self.state = State::PassThrough;
            return Action::Continue;
        }
        let headers = host.request_headers();
        let method = method.as_str();
        let full_path = full_path.as_str();
        let (path, query) = split_path(full_path);

        if method == "GET" && is_relay_path(&config.api_prefix, path) {
            let full_path = full_path.to_string();
            let prefer = header_str(&headers, "prefer").map(str::to_string);
            self.start_relay(host, &full_path, prefer.as_deref());
            return Action::Pause;
        }

        let request = RequestInfo {
            method,
            path,
            headers: &headers,
        };
        let Some((route_index, route)) = config.routes.find(&request) else {
            self.state = State::PassThrough;
            return Action::Continue;
        };
        let (wait_ms, preference_applied) = effective_wait(route, header_str(&headers, "prefer"));

        let correlation_id = match header_str(&headers, &config.correlation_header) {
            Some(inbound) if config.trust_inbound_correlation && is_uuid(inbound.trim()) => {
                inbound.trim().to_ascii_lowercase()
            }
            _ => host.new_uuid(),
        };
        host.log(
            LogLevel::Debug,
            &format!("openhqm: capturing {method} {path} as {correlation_id}"),
        );
        if let Some(tracing) = &config.tracing {
            let captured = Captured {
                method,
                path,
                route: &route.name,
                correlation_id: &correlation_id,
            };
            let inbound = header_str(&headers, "traceparent");
            self.trace = Some(Box::new(RequestTrace::start(
                host, tracing, inbound, &captured,
            )));
        }
        let declared = header_str(&headers, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if declared > config.max_body_bytes {
            self.reply_too_large(host, &correlation_id);
            return Action::Pause;
        }
        let pending = Box::new(Pending {
            correlation_id,
            method: method.to_string(),
            path: path.to_string(),
            query: query.map(str::to_string),
            authority: header_str(&headers, ":authority").map(str::to_string),
            body_size: 0,
            body_seen: false,
            route: route_index,
            wait_ms,
            preference_applied,
            headers,
        });
        if end_of_stream {
            self.dispatch_capture(host, &pending, &[]);
        } else {
            self.state = State::Buffering(pending);
        }
        Action::Pause
    }

    /// A request body chunk arrived; `body_size` is the size of everything
    /// buffered so far.
    pub fn on_request_body<H: Host>(
        &mut self,
        host: &mut H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let State::Buffering(pending) = &mut self.state else {
            return self.hold_unless_pass_through();
        };
        pending.body_size = body_size;
        pending.body_seen = true;
        if exceeds(body_size, self.config.max_body_bytes) {
            let correlation_id = mem::take(&mut pending.correlation_id);
            self.reply_too_large(host, &correlation_id);
            return Action::Pause;
        }
        if end_of_stream {
            self.finish_body(host);
        }
        Action::Pause
    }

    /// Request trailers arrived: the body (if any) is complete.
    pub fn on_request_trailers<H: Host>(&mut self, host: &mut H) -> Action {
        if matches!(self.state, State::Buffering(_)) {
            self.finish_body(host);
            return Action::Pause;
        }
        self.hold_unless_pass_through()
    }

    /// The answer to a callout arrived. `num_headers == 0` means the call
    /// failed without a response (reset); the headers are then not read.
    pub fn on_call_response<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        let capture = match mem::replace(&mut self.state, State::Done) {
            State::Capturing {
                token: expected,
                correlation_id,
                route,
                preference_applied,
            } if expected == token => Some((correlation_id, route, preference_applied)),
            State::Relaying { token: expected } if expected == token => None,
            other => {
                self.state = other;
                host.log(
                    LogLevel::Warn,
                    &format!("openhqm: ignoring response to unknown call {token}"),
                );
                return;
            }
        };
        let config = Rc::clone(&self.config);
        let correlation_id = capture.as_ref().map(|(id, _, _)| id.clone());
        let headers = if num_headers > 0 {
            host.call_response_headers()
        } else {
            Vec::new()
        };
        let status = response_status(&headers);
        let body = if body_size > 0 {
            host.call_response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        // A capture's ID as the bridge accepted it: for a repeated
        // Idempotency-Key that is the first request's, not the one made here.
        let bridge_id = header_str(&headers, CORRELATION_HEADER).filter(|v| is_uuid(v));
        let id = match (correlation_id.as_deref(), status) {
            (Some(own), Some(200..=299)) => Some(bridge_id.unwrap_or(own)),
            (own, _) => own,
        };
        if let (Some((_, _, applied)), Some(status), Some(id)) = (&capture, status, id) {
            // The backend's own answer (wait mode): relayed as it is.
            if header_str(&headers, FINAL_RESULT_HEADER).is_some() {
                let mut out: Vec<(&str, &str)> = Vec::with_capacity(headers.len());
                for (name, value) in &headers {
                    if is_relayable_backend_header(name) {
                        if let Ok(v) = std::str::from_utf8(value) {
                            out.push((name.as_str(), v));
                        }
                    }
                }
                out.push((config.correlation_header.as_str(), id));
                if let Some(applied) = applied {
                    out.push(("preference-applied", applied));
                }
                if let Some(trace) = &mut self.trace {
                    trace.set_correlation_id(id);
                }
                let error = (status >= 500).then(|| format!("the backend answered {status}"));
                self.end_trace(host, Some(status), Outcome::Relayed, error);
                host.send_response(status, &out, &body);
                return;
            }
        }
        let relayed: Option<&[&str]> = match (id, status) {
            (Some(_), Some(200..=299)) => Some(&RELAY_HEADERS),
            (Some(_), Some(400..=499)) => Some(&REJECTED_HEADERS),
            (None, Some(200..=499)) => Some(&RELAY_HEADERS),
            _ => None,
        };
        match (relayed, status) {
            (Some(names), Some(status)) => {
                let mut out: Vec<(&str, &str)> = names
                    .iter()
                    .filter_map(|name| header_str(&headers, name).map(|v| (*name, v)))
                    .collect();
                if let Some(id) = id {
                    out.push((config.correlation_header.as_str(), id));
                }
                if let Some((_, _, Some(applied))) = &capture {
                    out.push(("preference-applied", applied));
                }
                if let (Some(trace), Some(id)) = (&mut self.trace, id) {
                    trace.set_correlation_id(id);
                }
                let outcome = if status < 300 {
                    Outcome::Accepted
                } else {
                    Outcome::Rejected
                };
                self.end_trace(host, Some(status), outcome, None);
                host.send_response(status, &out, &body);
            }
            _ => {
                let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "openhqm: bridge call failed (status {status}) for {}",
                        id.unwrap_or("a status/response relay")
                    ),
                );
                match &capture {
                    Some((id, route, _)) => {
                        let reason = format!("bridge call failed (status {status})");
                        self.bridge_failed(host, id, *route, reason);
                    }
                    None => self.reply_unavailable(host, None),
                }
            }
        }
    }

    fn hold_unless_pass_through(&self) -> Action {
        match self.state {
            State::New | State::PassThrough => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// Forward a status/response lookup. A client's RFC 7240 `Prefer`
    /// (`wait=N`: long-poll) goes along, and the callout may then take that
    /// much longer (capped at `max_wait_ms`).
    fn start_relay<H: Host>(&mut self, host: &mut H, full_path: &str, prefer: Option<&str>) {
        let config = Rc::clone(&self.config);
        let mut headers = vec![
            (":method", "GET"),
            (":path", full_path),
            (":authority", config.bridge_authority.as_str()),
            ("accept", JSON),
        ];
        if let Some(prefer) = prefer {
            headers.push(("prefer", prefer));
        }
        let timeout = config.relay_timeout(prefer.and_then(prefer_wait_seconds));
        match host.dispatch_http_call(&config.bridge_cluster, &headers, None, timeout) {
            Ok(token) => self.state = State::Relaying { token },
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!(
                        "openhqm: cannot call bridge cluster {:?}: {e}",
                        config.bridge_cluster
                    ),
                );
                self.reply_unavailable(host, None);
            }
        }
    }

    fn finish_body<H: Host>(&mut self, host: &mut H) {
        let State::Buffering(pending) = mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let body = if pending.body_size == 0 {
            Vec::new()
        } else if let Some(body) = host.request_body(pending.body_size) {
            body
        } else {
            host.log(
                LogLevel::Error,
                &format!(
                    "openhqm: request body of {} not readable",
                    pending.correlation_id
                ),
            );
            self.reply_unavailable(host, Some(&pending.correlation_id));
            return;
        };
        if exceeds(body.len(), self.config.max_body_bytes) {
            self.reply_too_large(host, &pending.correlation_id);
            return;
        }
        self.dispatch_capture(host, &pending, &body);
    }

    fn dispatch_capture<H: Host>(&mut self, host: &mut H, pending: &Pending, body: &[u8]) {
        let config = Rc::clone(&self.config);
        let id = pending.correlation_id.as_str();
        let Some(route) = config.routes.routes().get(pending.route) else {
            self.reply_unavailable(host, Some(id));
            return;
        };
        // Only the headers the policy lets through travel to the backend.
        let forwarded: Headers = pending
            .headers
            .iter()
            .filter(|(name, _)| config.header_policy.permits(name))
            .cloned()
            .collect();
        let partition_key = route
            .partition_key_header
            .as_deref()
            .and_then(|name| header_str(&pending.headers, name));
        let traceparent = self.trace.as_ref().map(|trace| trace.traceparent());
        let meta = FrameMeta {
            correlation_id: id,
            method: &pending.method,
            path: &pending.path,
            query: pending.query.as_deref(),
            authority: pending.authority.as_deref(),
            headers: &forwarded,
            route: &route.name,
            endpoint: route.endpoint.as_deref(),
            priority: route.priority.as_deref(),
            partition_key,
            wait_ms: pending.wait_ms,
            traceparent: traceparent.as_deref(),
        };
        let frame = match encode_frame(&meta, body) {
            Ok(frame) => frame,
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!("openhqm: cannot encode capture frame for {id}: {e}"),
                );
                self.reply_unavailable(host, Some(id));
                return;
            }
        };
        let headers = [
            (":method", "POST"),
            (":path", CAPTURE_PATH),
            (":authority", config.bridge_authority.as_str()),
            ("content-type", CAPTURE_CONTENT_TYPE),
            (CORRELATION_HEADER, id),
        ];
        // The bridge holds a waiting capture up to wait_ms before answering.
        let timeout = config
            .bridge_timeout()
            .saturating_add(Duration::from_millis(pending.wait_ms));
        match host.dispatch_http_call(&config.bridge_cluster, &headers, Some(&frame), timeout) {
            Ok(token) => {
                self.state = State::Capturing {
                    token,
                    correlation_id: id.to_string(),
                    route: pending.route,
                    preference_applied: pending.preference_applied.clone(),
                }
            }
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!(
                        "openhqm: cannot call bridge cluster {:?} for {id}: {e}",
                        config.bridge_cluster
                    ),
                );
                let reason = format!("bridge call failed: {e}");
                self.bridge_failed(host, id, pending.route, reason);
            }
        }
    }

    /// The bridge could not take a captured request: the route's policy says
    /// whether the client gets 503 or the app serves it synchronously.
    /// `reason` is the span's error message.
    fn bridge_failed<H: Host>(
        &mut self,
        host: &mut H,
        correlation_id: &str,
        route: usize,
        reason: String,
    ) {
        let config = Rc::clone(&self.config);
        match config.routes.routes().get(route) {
            Some(r) if r.on_bridge_failure == FailurePolicy::Passthrough => {
                self.end_trace(host, None, Outcome::Passthrough, Some(reason));
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "openhqm: bridge unavailable; serving {correlation_id} (route {}) from the app directly",
                        r.name
                    ),
                );
                host.count_passthrough(&r.name);
                self.state = State::PassThrough;
                host.resume_request();
            }
            _ => {
                self.end_trace(host, Some(503), Outcome::Rejected, Some(reason));
                self.reply_unavailable(host, Some(correlation_id));
            }
        }
    }

    fn reply_unavailable<H: Host>(&mut self, host: &mut H, correlation_id: Option<&str>) {
        self.state = State::Done;
        self.end_trace(
            host,
            Some(503),
            Outcome::Rejected,
            Some("the request could not be handed to the bridge".to_string()),
        );
        let retry_after = self.config.retry_after_seconds.to_string();
        let mut headers = vec![
            ("content-type", JSON),
            ("retry-after", retry_after.as_str()),
        ];
        if let Some(id) = correlation_id {
            headers.push((self.config.correlation_header.as_str(), id));
        }
        host.send_response(503, &headers, UNAVAILABLE_BODY.as_bytes());
    }

    fn reply_too_large<H: Host>(&mut self, host: &mut H, correlation_id: &str) {
        self.state = State::Done;
        self.end_trace(host, Some(413), Outcome::Rejected, None);
        let body = format!(
            r#"{{"error":"payload_too_large","detail":"request body exceeds {} bytes"}}"#,
            self.config.max_body_bytes
        );
        host.log(
            LogLevel::Info,
            &format!("openhqm: {correlation_id} rejected: body larger than max_body_bytes"),
        );
        let headers = [
            ("content-type", JSON),
            (self.config.correlation_header.as_str(), correlation_id),
        ];
        host.send_response(413, &headers, body.as_bytes());
    }
}

/// Whether `path` (without query) is `{api_prefix}/status/…` or
/// `{api_prefix}/response/…`.
fn is_relay_path(api_prefix: &str, path: &str) -> bool {
    path.strip_prefix(api_prefix)
        .is_some_and(|rest| rest.starts_with("/status/") || rest.starts_with("/response/"))
}

fn exceeds(size: usize, limit: u64) -> bool {
    u64::try_from(size).map_or(true, |size| size > limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openhqm_trace::{AttrValue, SpanKind, SpanStatus};
    use serde_json::{json, Value};

    #[derive(Debug, Clone, PartialEq)]
    struct Call {
        cluster: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        timeout: Duration,
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Sent {
        status: u32,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Sent {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn names(&self) -> Vec<&str> {
            self.headers.iter().map(|(n, _)| n.as_str()).collect()
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    struct FakeHost {
        request_headers: Headers,
        request_body: Vec<u8>,
        dispatch_result: Result<u32, String>,
        calls: Vec<Call>,
        call_headers: Headers,
        call_body: Vec<u8>,
        call_header_reads: usize,
        sent: Vec<Sent>,
        logs: Vec<(LogLevel, String)>,
        uuids: u32,
        resumed: bool,
        passthrough: Vec<String>,
        /// Next byte `random_bytes` hands out (counts up, so ids are
        /// predictable and distinct).
        random: u8,
        /// The clock, in nanoseconds since the epoch.
        now: u64,
        spans: Vec<Span>,
    }

    impl FakeHost {
        fn new(headers: &[(&str, &[u8])]) -> Self {
            FakeHost {
                request_headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_vec()))
                    .collect(),
                request_body: Vec::new(),
                dispatch_result: Ok(42),
                calls: Vec::new(),
                call_headers: Vec::new(),
                call_body: Vec::new(),
                call_header_reads: 0,
                sent: Vec::new(),
                logs: Vec::new(),
                uuids: 0,
                resumed: false,
                passthrough: Vec::new(),
                random: 1,
                now: 1_700_000_000_000_000_000,
                spans: Vec::new(),
            }
        }

        fn request(method: &str, path: &str) -> Self {
            FakeHost::new(&[
                (":method", method.as_bytes()),
                (":path", path.as_bytes()),
                (":scheme", b"http"),
                (":authority", b"shop.local"),
            ])
        }

        fn with_header(mut self, name: &str, value: &[u8]) -> Self {
            self.request_headers
                .push((name.to_string(), value.to_vec()));
            self
        }

        fn bridge_answers(&mut self, headers: &[(&str, &str)], body: &[u8]) {
            self.call_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            self.call_body = body.to_vec();
        }

        fn only_call(&self) -> &Call {
            assert_eq!(self.calls.len(), 1, "calls: {:?}", self.calls);
            &self.calls[0]
        }

        fn only_sent(&self) -> &Sent {
            assert_eq!(self.sent.len(), 1, "sent: {:?}", self.sent);
            &self.sent[0]
        }
    }

    impl Host for FakeHost {
        fn request_headers(&mut self) -> Headers {
            self.request_headers.clone()
        }
        fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
            Some(self.request_body[..size.min(self.request_body.len())].to_vec())
        }
        fn dispatch_http_call(
            &mut self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: Option<&[u8]>,
            timeout: Duration,
        ) -> Result<u32, String> {
            self.calls.push(Call {
                cluster: cluster.to_string(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.map(<[u8]>::to_vec),
                timeout,
            });
            self.dispatch_result.clone()
        }
        fn call_response_headers(&mut self) -> Headers {
            self.call_header_reads += 1;
            self.call_headers.clone()
        }
        fn call_response_body(&mut self, size: usize) -> Option<Vec<u8>> {
            Some(self.call_body[..size.min(self.call_body.len())].to_vec())
        }
        fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
            self.sent.push(Sent {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
            });
        }
        fn log(&mut self, level: LogLevel, message: &str) {
            self.logs.push((level, message.to_string()));
        }
        fn new_uuid(&mut self) -> String {
            self.uuids += 1;
            format!("00000000-0000-4000-8000-{:012x}", self.uuids)
        }
        fn resume_request(&mut self) {
            self.resumed = true;
        }
        fn count_passthrough(&mut self, route: &str) {
            self.passthrough.push(route.to_string());
        }
        fn random_bytes(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.random;
                self.random = self.random.wrapping_add(1);
            }
        }
        fn now_unix_nanos(&mut self) -> u64 {
            self.now
        }
        fn export_span(&mut self, span: Span) {
            self.spans.push(span);
        }
    }

    const ID1: &str = "00000000-0000-4000-8000-000000000001";

    fn config_with(extra: &str) -> Rc<Config> {
        let json = format!(
            r#"{{"bridge_cluster":"openhqm_bridge","routes":[{{"prefix":"/orders","methods":["POST"]}},{{"prefix":"/jobs"}}]{extra}}}"#
        );
        Rc::new(Config::parse(json.as_bytes()).unwrap())
    }

    fn filter() -> HttpFilter {
        HttpFilter::new(config_with(""))
    }

    fn frame_parts(frame: &[u8]) -> (Value, Vec<u8>) {
        let nl = frame.iter().position(|b| *b == b'\n').unwrap();
        (
            serde_json::from_slice(&frame[..nl]).unwrap(),
            frame[nl + 1..].to_vec(),
        )
    }

    fn assert_unavailable(sent: &Sent, correlation_id: Option<&str>) {
        assert_eq!(sent.status, 503);
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("retry-after"), Some("2"));
        assert_eq!(sent.header("x-correlation-id"), correlation_id);
        assert_eq!(
            sent.json(),
            json!({"error":"bridge_unavailable","detail":"the request was not accepted; retry later"})
        );
    }

    #[test]
    fn unmatched_requests_pass_through_untouched() {
        for (method, path) in [
            ("GET", "/other"),
            ("GET", "/orders"),
            ("PUT", "/orders/1"),
            ("POST", "/api/v1/status/abc"),
            ("GET", "/api/v1/status"),
            ("GET", "/api/v1/statusx/1"),
            ("GET", "/api/v2/status/1"),
            ("GET", "/other?x=/orders"),
        ] {
            let mut host = FakeHost::request(method, path);
            let mut f = filter();
            assert_eq!(
                f.on_request_headers(&mut host, false),
                Action::Continue,
                "{method} {path}"
            );
            assert!(f.is_pass_through());
            assert_eq!(f.on_request_body(&mut host, 10, false), Action::Continue);
            assert_eq!(f.on_request_body(&mut host, 20, true), Action::Continue);
            assert_eq!(f.on_request_trailers(&mut host), Action::Continue);
            assert!(host.calls.is_empty() && host.sent.is_empty());
            assert_eq!(host.uuids, 0);
        }
    }

    #[test]
    fn request_without_method_or_path_passes_through() {
        let mut host = FakeHost::new(&[(":method", b"POST")]);
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Continue);
        let mut host = FakeHost::new(&[(":method", b"POST"), (":path", b"/orders\xff")]);
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Continue);
        assert!(host.calls.is_empty() && host.sent.is_empty());
    }

    #[test]
    fn capture_without_body_dispatches_at_once() {
        let mut host = FakeHost::request("POST", "/orders?a=1&b=2")
            .with_header("content-type", b"application/json")
            .with_header("content-length", b"0")
            .with_header("x-foo", b"bar");
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        let call = host.only_call().clone();
        assert_eq!(call.cluster, "openhqm_bridge");
        assert_eq!(call.timeout, Duration::from_millis(5000));
        let expect: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/internal/v1/capture"),
            (":authority", "openhqm-bridge"),
            ("content-type", "application/vnd.openhqm.capture"),
            ("x-correlation-id", ID1),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(call.headers, expect);
        let (json, body) = frame_parts(call.body.as_deref().unwrap());
        assert!(body.is_empty());
        assert_eq!(
            json,
            json!({"v":1,"correlation_id":ID1,"method":"POST","path":"/orders","route":"/orders",
                   "query":"a=1&b=2","authority":"shop.local",
                   "headers":[["content-type","application/json"],["x-foo","bar"]]})
        );
        assert!(host.sent.is_empty());
        // Later callbacks keep holding the request.
        assert_eq!(f.on_request_body(&mut host, 0, true), Action::Pause);
    }

    #[test]
    fn capture_buffers_body_until_end_of_stream() {
        let body: Vec<u8> = (0..=255u8).collect();
        let mut host = FakeHost::request("POST", "/orders")
            .with_header("content-type", b"application/octet-stream")
            .with_header("transfer-encoding", b"chunked")
            .with_header("x-bin", b"\x00\xff");
        host.request_body = body.clone();
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert!(host.calls.is_empty());
        assert_eq!(f.on_request_body(&mut host, 100, false), Action::Pause);
        assert_eq!(f.on_request_body(&mut host, 200, false), Action::Pause);
        assert!(host.calls.is_empty());
        assert_eq!(f.on_request_body(&mut host, 256, true), Action::Pause);
        let call = host.only_call();
        let (json, sent_body) = frame_parts(call.body.as_deref().unwrap());
        assert_eq!(sent_body, body);
        assert_eq!(
            json["headers"],
            json!([["content-type", "application/octet-stream"]])
        );
        assert_eq!(json["headers_b64"], json!([["x-bin", "AP8="]]));
        assert!(json.get("query").is_none());
        assert!(host.sent.is_empty());
    }

    #[test]
    fn trailers_end_the_body() {
        let mut host = FakeHost::request("PUT", "/jobs/run");
        host.request_body = b"hello".to_vec();
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert_eq!(f.on_request_body(&mut host, 5, false), Action::Pause);
        assert_eq!(f.on_request_trailers(&mut host), Action::Pause);
        let (json, body) = frame_parts(host.only_call().body.as_deref().unwrap());
        assert_eq!(body, b"hello");
        assert_eq!(json["method"], "PUT");
    }

    #[test]
    fn too_large_by_content_length_is_413_at_once() {
        let mut host =
            FakeHost::request("POST", "/orders").with_header("content-length", b"1048577");
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert!(host.calls.is_empty());
        let sent = host.only_sent().clone();
        assert_eq!(sent.status, 413);
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(
            sent.json(),
            json!({"error":"payload_too_large","detail":"request body exceeds 1048576 bytes"})
        );
        assert_eq!(f.on_request_body(&mut host, 10, true), Action::Pause);
        assert_eq!(host.sent.len(), 1);
        assert!(host.calls.is_empty());
    }

    #[test]
    fn content_length_at_the_limit_is_accepted() {
        let mut host =
            FakeHost::request("POST", "/orders").with_header("content-length", b"1048576");
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert!(host.sent.is_empty());
    }

    #[test]
    fn too_large_by_accumulated_size_is_413() {
        let mut f = HttpFilter::new(config_with(r#","max_body_bytes":10"#));
        let mut host = FakeHost::request("POST", "/orders");
        host.request_body = vec![b'x'; 11];
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert_eq!(f.on_request_body(&mut host, 10, false), Action::Pause);
        assert!(host.sent.is_empty());
        assert_eq!(f.on_request_body(&mut host, 11, false), Action::Pause);
        let sent = host.only_sent().clone();
        assert_eq!(sent.status, 413);
        assert_eq!(sent.header("x-correlation-id"), Some(ID1));
        assert_eq!(sent.json()["detail"], "request body exceeds 10 bytes");
        assert_eq!(f.on_request_body(&mut host, 12, true), Action::Pause);
        assert_eq!(f.on_request_trailers(&mut host), Action::Pause);
        assert!(host.calls.is_empty());
        assert_eq!(host.sent.len(), 1);
    }

    #[test]
    fn body_exactly_at_limit_is_captured() {
        let mut f = HttpFilter::new(config_with(r#","max_body_bytes":10"#));
        let mut host = FakeHost::request("POST", "/orders");
        host.request_body = vec![b'x'; 10];
        f.on_request_headers(&mut host, false);
        assert_eq!(f.on_request_body(&mut host, 10, true), Action::Pause);
        assert!(host.sent.is_empty());
        assert_eq!(
            frame_parts(host.only_call().body.as_deref().unwrap())
                .1
                .len(),
            10
        );
    }

    fn captured() -> (HttpFilter, FakeHost) {
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        assert_eq!(host.calls.len(), 1);
        (f, host)
    }

    #[test]
    fn accepted_capture_is_relayed_with_location_and_correlation_id() {
        let (mut f, mut host) = captured();
        let body = format!(r#"{{"correlation_id":"{ID1}","status":"PENDING"}}"#);
        host.bridge_answers(
            &[
                (":status", "202"),
                ("content-type", "application/json"),
                ("location", &format!("/api/v1/status/{ID1}")),
                ("retry-after", "1"),
                ("server", "bridge"),
                ("x-internal", "secret"),
            ],
            body.as_bytes(),
        );
        f.on_call_response(&mut host, 42, 6, body.len());
        let sent = host.only_sent();
        assert_eq!(sent.status, 202);
        assert_eq!(sent.body, body.as_bytes());
        assert_eq!(
            sent.names(),
            [
                "content-type",
                "location",
                "retry-after",
                "x-correlation-id"
            ]
        );
        assert_eq!(
            sent.header("location"),
            Some(&*format!("/api/v1/status/{ID1}"))
        );
        assert_eq!(sent.header("x-correlation-id"), Some(ID1));
    }

    #[test]
    fn rejected_capture_4xx_is_relayed() {
        let (mut f, mut host) = captured();
        let body = br#"{"error":"invalid_request","detail":"bad"}"#;
        host.bridge_answers(
            &[
                (":status", "400"),
                ("content-type", "application/json"),
                ("location", "/nope"),
            ],
            body,
        );
        f.on_call_response(&mut host, 42, 3, body.len());
        let sent = host.only_sent();
        assert_eq!(sent.status, 400);
        assert_eq!(sent.body, body);
        assert_eq!(sent.names(), ["content-type", "x-correlation-id"]);
        assert_eq!(sent.header("x-correlation-id"), Some(ID1));
    }

    #[test]
    fn bridge_5xx_or_odd_status_becomes_503() {
        for status in [
            "500", "503", "504", "302", "101", "abc", "20", "2000", "600",
        ] {
            let (mut f, mut host) = captured();
            host.bridge_answers(
                &[(":status", status), ("content-type", "text/plain")],
                b"upstream connect error",
            );
            f.on_call_response(&mut host, 42, 2, 22);
            assert_unavailable(host.only_sent(), Some(ID1));
        }
    }

    #[test]
    fn failed_call_without_headers_becomes_503_without_reading_headers() {
        let (mut f, mut host) = captured();
        f.on_call_response(&mut host, 42, 0, 0);
        assert_eq!(host.call_header_reads, 0);
        assert_unavailable(host.only_sent(), Some(ID1));
        // Missing :status among other headers is also a failure.
        let (mut f, mut host) = captured();
        host.bridge_answers(&[("content-type", "application/json")], b"{}");
        f.on_call_response(&mut host, 42, 1, 2);
        assert_unavailable(host.only_sent(), Some(ID1));
    }

    #[test]
    fn dispatch_error_is_503_at_once() {
        let mut host = FakeHost::request("POST", "/orders");
        host.dispatch_result = Err("BadArgument".into());
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        assert_unavailable(host.only_sent(), Some(ID1));
        assert!(host
            .logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Error && m.contains("openhqm_bridge")));
        // A late callout answer changes nothing.
        f.on_call_response(&mut host, 42, 1, 0);
        assert_eq!(host.sent.len(), 1);
    }

    #[test]
    fn unknown_token_is_ignored() {
        let (mut f, mut host) = captured();
        host.bridge_answers(&[(":status", "202")], b"");
        f.on_call_response(&mut host, 7, 1, 0);
        assert!(host.sent.is_empty());
        f.on_call_response(&mut host, 42, 1, 0);
        assert_eq!(host.only_sent().status, 202);
        // A duplicate answer is ignored too.
        f.on_call_response(&mut host, 42, 1, 0);
        assert_eq!(host.sent.len(), 1);
    }

    #[test]
    fn status_relay() {
        let mut host = FakeHost::request("GET", &format!("/api/v1/status/{ID1}?verbose=1"));
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        assert_eq!(host.uuids, 0);
        let call = host.only_call().clone();
        assert_eq!(call.cluster, "openhqm_bridge");
        assert_eq!(call.body, None);
        assert_eq!(
            call.headers,
            [
                (":method", "GET"),
                (":path", &*format!("/api/v1/status/{ID1}?verbose=1")),
                (":authority", "openhqm-bridge"),
                ("accept", "application/json"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
        );
        let body = br#"{"status":"PENDING"}"#;
        host.bridge_answers(
            &[
                (":status", "200"),
                ("content-type", "application/json"),
                ("preference-applied", "wait=5"),
                ("x-other", "no"),
            ],
            body,
        );
        f.on_call_response(&mut host, 42, 4, body.len());
        let sent = host.only_sent();
        assert_eq!(sent.status, 200);
        assert_eq!(sent.body, body);
        assert_eq!(sent.names(), ["content-type", "preference-applied"]);
    }

    #[test]
    fn response_relay_keeps_status_and_headers() {
        for (status, code) in [("202", 202), ("404", 404), ("400", 400), ("303", 303)] {
            let mut host = FakeHost::request("GET", "/api/v1/response/abc");
            let mut f = filter();
            assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
            assert_eq!(f.on_request_body(&mut host, 3, true), Action::Pause);
            host.bridge_answers(
                &[
                    (":status", status),
                    ("content-type", "application/json"),
                    ("location", "/api/v1/response/abc"),
                    ("retry-after", "1"),
                ],
                b"{}",
            );
            f.on_call_response(&mut host, 42, 4, 2);
            let sent = host.only_sent();
            assert_eq!(sent.status, code);
            assert_eq!(sent.body, b"{}");
            assert_eq!(sent.names(), ["content-type", "location", "retry-after"]);
        }
    }

    #[test]
    fn relay_failures_are_503_without_correlation_id() {
        let mut host = FakeHost::request("GET", "/api/v1/response/abc");
        let mut f = filter();
        f.on_request_headers(&mut host, true);
        host.bridge_answers(&[(":status", "502")], b"");
        f.on_call_response(&mut host, 42, 1, 0);
        assert_unavailable(host.only_sent(), None);

        let mut host = FakeHost::request("GET", "/api/v1/status/abc");
        let mut f = filter();
        f.on_call_response(&mut host, 42, 0, 0); // before anything: ignored
        f.on_request_headers(&mut host, true);
        f.on_call_response(&mut host, 42, 0, 0);
        assert_unavailable(host.only_sent(), None);

        let mut host = FakeHost::request("GET", "/api/v1/status/abc");
        host.dispatch_result = Err("BadArgument".into());
        let mut f = filter();
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        assert_unavailable(host.only_sent(), None);
    }

    #[test]
    fn relay_uses_configured_api_prefix_and_authority() {
        let cfg = config_with(
            r#","api_prefix":"/q/","bridge_authority":"b.internal","bridge_timeout_ms":250"#,
        );
        let mut host = FakeHost::request("GET", "/api/v1/status/abc");
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        assert_eq!(f.on_request_headers(&mut host, true), Action::Continue);
        let mut host = FakeHost::request("GET", "/q/status/abc");
        let mut f = HttpFilter::new(cfg);
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        let call = host.only_call();
        assert_eq!(call.timeout, Duration::from_millis(250));
        assert!(call
            .headers
            .contains(&(":authority".to_string(), "b.internal".to_string())));
    }

    #[test]
    fn relay_forwards_prefer_wait_and_waits_longer_up_to_the_cap() {
        let cfg = config_with(r#","bridge_timeout_ms":1000,"max_wait_ms":20000"#);
        let mut host =
            FakeHost::request("GET", "/api/v1/response/abc").with_header("prefer", b"wait=5");
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        let call = host.only_call();
        assert!(call
            .headers
            .contains(&("prefer".to_string(), "wait=5".to_string())));
        assert_eq!(call.timeout, Duration::from_millis(6000));

        let mut host = FakeHost::request("GET", "/api/v1/response/abc")
            .with_header("prefer", b"respond-async, WAIT=\"600\"");
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        f.on_request_headers(&mut host, true);
        assert_eq!(
            host.only_call().timeout,
            Duration::from_millis(21000),
            "capped"
        );

        let mut host = FakeHost::request("GET", "/api/v1/response/abc");
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        let call = host.only_call();
        assert!(!call.headers.iter().any(|(n, _)| n == "prefer"));
        assert_eq!(call.timeout, Duration::from_millis(1000));
    }

    #[test]
    fn prefer_wait_parsing() {
        assert_eq!(prefer_wait_seconds("wait=10"), Some(10));
        assert_eq!(prefer_wait_seconds("respond-async, wait=3"), Some(3));
        assert_eq!(prefer_wait_seconds("Wait = \"7\""), Some(7));
        assert_eq!(prefer_wait_seconds("respond-async"), None);
        assert_eq!(prefer_wait_seconds("wait=-1"), None);
        assert_eq!(prefer_wait_seconds("wait=abc"), None);
        assert_eq!(prefer_wait_seconds("handling=lenient"), None);
    }

    #[test]
    fn max_wait_must_fit_the_callout_timeout() {
        let e = Config::parse(br#"{"bridge_cluster":"c","routes":[],"max_wait_ms":4294967295}"#)
            .unwrap_err();
        assert!(e.0.contains("`max_wait_ms`"), "{e}");
    }

    #[test]
    fn relay_takes_precedence_over_capture_routes() {
        let json = r#"{"bridge_cluster":"c","routes":[{"prefix":"/"}]}"#;
        let cfg = Rc::new(Config::parse(json.as_bytes()).unwrap());
        let mut host = FakeHost::request("GET", "/api/v1/status/x");
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        f.on_request_headers(&mut host, true);
        assert_eq!(host.only_call().headers[1].1, "/api/v1/status/x");
        let mut host = FakeHost::request("GET", "/anything");
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        assert_eq!(host.only_call().headers[1].1, "/internal/v1/capture");
    }

    #[test]
    fn each_capture_gets_its_own_correlation_id() {
        let mut host = FakeHost::request("POST", "/orders");
        let mut a = filter();
        let mut b = filter();
        a.on_request_headers(&mut host, true);
        b.on_request_headers(&mut host, true);
        let ids: Vec<&str> = host.calls.iter().map(|c| c.headers[4].1.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn stalled_body_is_500_with_a_logged_fix() {
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = filter();
        assert!(!f.awaits_first_body_chunk());
        assert_eq!(f.on_request_headers(&mut host, false), Action::Pause);
        assert!(f.awaits_first_body_chunk());
        f.on_body_stalled(&mut host);
        let sent = host.only_sent();
        assert_eq!(sent.status, 500);
        assert_eq!(sent.header("x-correlation-id"), Some(ID1));
        assert_eq!(sent.json()["error"], "proxy_misconfigured");
        assert!(host
            .logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Error && m.contains("allow_on_headers_stop_iteration")));
        assert!(!f.awaits_first_body_chunk());
        assert!(host.calls.is_empty());
    }

    #[test]
    fn stall_check_ignores_requests_whose_body_arrived() {
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = filter();
        f.on_request_headers(&mut host, false);
        assert_eq!(f.on_request_body(&mut host, 3, false), Action::Pause);
        assert!(!f.awaits_first_body_chunk());
        f.on_body_stalled(&mut host);
        assert!(host.sent.is_empty());
        // Nor does it touch pass-through, completed or dispatched requests.
        let (mut f, mut host) = captured();
        f.on_body_stalled(&mut host);
        let mut host = FakeHost::request("GET", "/other");
        let mut g = filter();
        g.on_request_headers(&mut host, false);
        g.on_body_stalled(&mut host);
        assert!(host.sent.is_empty());
    }

    #[test]
    fn trailers_count_as_body_arrival() {
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = filter();
        f.on_request_headers(&mut host, false);
        assert_eq!(f.on_request_trailers(&mut host), Action::Pause);
        assert!(!f.awaits_first_body_chunk());
        let (_, body) = frame_parts(host.only_call().body.as_deref().unwrap());
        assert!(body.is_empty());
    }

    #[test]
    fn response_status_parsing() {
        let h = |v: &[u8]| vec![(":status".to_string(), v.to_vec())];
        assert_eq!(response_status(&h(b"202")), Some(202));
        assert_eq!(response_status(&h(b" 404 ")), Some(404));
        assert_eq!(response_status(&h(b"+20")), None);
        assert_eq!(response_status(&h(b"099")), None);
        assert_eq!(response_status(&h(b"\xff")), None);
        assert_eq!(response_status(&[]), None);
    }

    fn routes_config(routes: &str) -> Rc<Config> {
        let json = format!(
            r#"{{"bridge_cluster":"openhqm_bridge","bridge_timeout_ms":1000,"max_wait_ms":20000,"routes":{routes}}}"#
        );
        Rc::new(Config::parse(json.as_bytes()).unwrap())
    }

    fn frame_json(call: &Call) -> serde_json::Value {
        frame_parts(call.body.as_deref().unwrap()).0
    }

    #[test]
    fn wait_route_sends_its_wait_and_metadata_and_waits_that_much_longer() {
        let cfg = routes_config(
            r#"[{"name":"lookup","prefix":"/orders","mode":"wait","wait_ms":5000,"endpoint":"orders",
                 "priority":"high","partition_key_header":"x-customer"}]"#,
        );
        let mut host = FakeHost::request("GET", "/orders/7").with_header("x-customer", b"c-42");
        let mut f = HttpFilter::new(cfg);
        assert_eq!(f.on_request_headers(&mut host, true), Action::Pause);
        let call = host.only_call();
        assert_eq!(
            call.timeout,
            Duration::from_millis(6000),
            "bridge timeout + wait"
        );
        let json = frame_json(call);
        assert_eq!(json["route"], "lookup");
        assert_eq!(json["wait_ms"], 5000);
        assert_eq!(json["endpoint"], "orders");
        assert_eq!(json["priority"], "high");
        assert_eq!(json["partition_key"], "c-42");
    }

    #[test]
    fn prefer_overrides_the_mode_within_the_route_limit() {
        let cfg = routes_config(r#"[{"prefix":"/orders","mode":"wait","wait_ms":5000}]"#);
        let run = |prefer: &[u8]| {
            let mut host = FakeHost::request("POST", "/orders").with_header("prefer", prefer);
            let mut f = HttpFilter::new(Rc::clone(&cfg));
            f.on_request_headers(&mut host, true);
            let wait = frame_json(host.only_call())["wait_ms"]
                .as_u64()
                .unwrap_or(0);
            host.bridge_answers(
                &[(":status", "202"), ("location", "/api/v1/response/x")],
                b"{}",
            );
            f.on_call_response(&mut host, 42, 2, 2);
            let applied = host
                .only_sent()
                .header("preference-applied")
                .map(str::to_string);
            (wait, applied)
        };
        assert_eq!(run(b"respond-async"), (0, Some("respond-async".into())));
        assert_eq!(run(b"wait=2"), (2000, Some("wait=2".into())));
        assert_eq!(
            run(b"wait=60"),
            (5000, Some("wait=5".into())),
            "capped by the route"
        );
        assert_eq!(run(b"handling=strict"), (5000, None), "the route's mode");
        let async_cfg = routes_config(r#"[{"prefix":"/orders"}]"#);
        let mut host = FakeHost::request("POST", "/orders");
        HttpFilter::new(async_cfg).on_request_headers(&mut host, true);
        assert!(
            frame_json(host.only_call()).get("wait_ms").is_none(),
            "async: no wait"
        );
    }

    #[test]
    fn final_backend_answer_is_relayed_as_it_is() {
        let cfg = routes_config(r#"[{"prefix":"/orders","mode":"wait"}]"#);
        let mut host = FakeHost::request("GET", "/orders/404");
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        host.bridge_answers(
            &[
                (":status", "404"),
                ("x-openhqm-result", "final"),
                ("content-type", "text/plain"),
                ("x-app", "legacy"),
                ("set-cookie", "a=1"),
                ("connection", "close"),
                ("content-length", "9"),
                ("x-correlation-id", "from-bridge"),
            ],
            b"not found",
        );
        f.on_call_response(&mut host, 42, 8, 9);
        let sent = host.only_sent();
        assert_eq!(sent.status, 404);
        assert_eq!(sent.body, b"not found");
        assert_eq!(sent.header("content-type"), Some("text/plain"));
        assert_eq!(sent.header("x-app"), Some("legacy"));
        assert_eq!(sent.header("set-cookie"), Some("a=1"));
        assert_eq!(sent.header("x-correlation-id"), Some(ID1));
        for gone in ["x-openhqm-result", "connection", "content-length"] {
            assert_eq!(sent.header(gone), None, "{gone} is not relayed");
        }
        assert!(!host.resumed);
    }

    #[test]
    fn passthrough_policy_serves_from_the_app_when_the_bridge_fails() {
        let cfg = routes_config(
            r#"[{"name":"orders","prefix":"/orders","on_bridge_failure":"passthrough"}]"#,
        );
        // The bridge answers 503.
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        f.on_request_headers(&mut host, true);
        host.bridge_answers(&[(":status", "503")], b"");
        f.on_call_response(&mut host, 42, 1, 0);
        assert!(host.sent.is_empty(), "no local reply");
        assert!(host.resumed, "the request goes on to the app");
        assert_eq!(host.passthrough, vec!["orders".to_string()]);
        assert!(f.is_pass_through());
        // The callout cannot even be made.
        let mut host = FakeHost::request("POST", "/orders");
        host.dispatch_result = Err("BadArgument".into());
        let mut f = HttpFilter::new(Rc::clone(&cfg));
        f.on_request_headers(&mut host, true);
        assert!(host.sent.is_empty() && host.resumed);
        // A 4xx from the bridge is an answer, not a failure: relayed.
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        host.bridge_answers(
            &[(":status", "413"), ("content-type", "application/json")],
            b"{}",
        );
        f.on_call_response(&mut host, 42, 2, 2);
        assert_eq!(host.only_sent().status, 413);
        assert!(!host.resumed);
    }

    #[test]
    fn reject_policy_answers_503() {
        let cfg = routes_config(r#"[{"prefix":"/orders"}]"#);
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        host.bridge_answers(&[(":status", "502")], b"");
        f.on_call_response(&mut host, 42, 1, 0);
        assert_eq!(host.only_sent().status, 503);
        assert!(!host.resumed && host.passthrough.is_empty());
    }

    #[test]
    fn inbound_correlation_id_is_reused_only_when_trusted_and_valid() {
        const INBOUND: &str = "6F9619FF-8B86-4011-B42D-00C04FC964FF";
        let run = |extra: &str, value: &[u8]| {
            let cfg = routes_config(&format!(r#"[{{"prefix":"/orders"}}]{extra}"#));
            let mut host = FakeHost::request("POST", "/orders").with_header("x-request-id", value);
            let mut f = HttpFilter::new(cfg);
            f.on_request_headers(&mut host, true);
            let frame_id = frame_json(host.only_call())["correlation_id"]
                .as_str()
                .unwrap()
                .to_string();
            host.bridge_answers(&[(":status", "202")], b"{}");
            f.on_call_response(&mut host, 42, 1, 2);
            let echoed = host.only_sent().header("x-request-id").map(str::to_string);
            (frame_id, echoed)
        };
        let trusted = r#","correlation_header":"X-Request-Id","trust_inbound_correlation":true"#;
        let (id, echoed) = run(trusted, INBOUND.as_bytes());
        assert_eq!(id, INBOUND.to_ascii_lowercase());
        assert_eq!(
            echoed.as_deref(),
            Some(id.as_str()),
            "echoed in the configured header"
        );
        let (id, _) = run(trusted, b"not-a-uuid");
        assert_eq!(id, ID1, "an invalid inbound ID is replaced");
        let (id, echoed) = run(
            r#","correlation_header":"x-request-id""#,
            INBOUND.as_bytes(),
        );
        assert_eq!(id, ID1, "not trusted unless configured");
        assert_eq!(echoed.as_deref(), Some(ID1));
    }

    #[test]
    fn header_policy_decides_what_reaches_the_backend() {
        let frame_headers = |extra: &str| {
            let cfg = routes_config(&format!(r#"[{{"prefix":"/orders"}}]{extra}"#));
            let mut host = FakeHost::request("POST", "/orders")
                .with_header("authorization", b"Bearer secret")
                .with_header("x-tenant", b"acme")
                .with_header("cookie", b"s=1")
                .with_header("connection", b"close");
            HttpFilter::new(cfg).on_request_headers(&mut host, true);
            let json = frame_json(host.only_call());
            json["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h[0].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            frame_headers(""),
            vec!["authorization", "x-tenant", "cookie"],
            "default: all but hop-by-hop"
        );
        assert_eq!(
            frame_headers(r#","headers":{"deny":["Cookie","authorization"]}"#),
            vec!["x-tenant"]
        );
        assert_eq!(
            frame_headers(r#","headers":{"allow":["x-tenant","cookie"],"deny":["cookie"]}"#),
            vec!["x-tenant"]
        );
        let e = Config::parse(
            br#"{"bridge_cluster":"c","routes":[],"headers":{"allow":["bad name"]}}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("`headers.allow[0]`"), "{e}");
    }

    // --- tracing ---------------------------------------------------------

    const INBOUND_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// The first 8 bytes the fake host hands out: the filter's span id.
    const SPAN_ID: &str = "0102030405060708";
    /// The next 16: a new trace's id.
    const NEW_TRACE_ID: &str = "090a0b0c0d0e0f101112131415161718";
    const T0: u64 = 1_700_000_000_000_000_000;

    fn traced(tracing: &str, routes: &str) -> Rc<Config> {
        let json = format!(
            r#"{{"bridge_cluster":"openhqm_bridge","routes":{routes},"tracing":{{"otlp_cluster":"otel"{tracing}}}}}"#
        );
        Rc::new(Config::parse(json.as_bytes()).unwrap())
    }

    fn orders(tracing: &str) -> Rc<Config> {
        traced(tracing, r#"[{"name":"orders","prefix":"/orders"}]"#)
    }

    fn attr<'s>(span: &'s Span, key: &str) -> Option<&'s AttrValue> {
        span.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn only_span(host: &FakeHost) -> &Span {
        assert_eq!(host.spans.len(), 1, "spans: {:?}", host.spans);
        &host.spans[0]
    }

    fn frame_traceparent(host: &FakeHost) -> Option<String> {
        frame_json(host.only_call())
            .get("traceparent")
            .map(|v| v.as_str().unwrap().to_string())
    }

    /// Captures POST /orders (with `traceparent` when given) and answers
    /// with the bridge's `status`, the clock moving on 5 ms in between.
    fn capture_and_answer(cfg: Rc<Config>, traceparent: Option<&str>, status: &str) -> FakeHost {
        let mut host = FakeHost::request("POST", "/orders?x=1");
        if let Some(tp) = traceparent {
            host = host.with_header("traceparent", tp.as_bytes());
        }
        let mut f = HttpFilter::new(cfg);
        f.on_request_headers(&mut host, true);
        assert!(host.spans.is_empty(), "open until the answer");
        host.now += 5_000_000;
        host.bridge_answers(&[(":status", status)], b"{}");
        f.on_call_response(&mut host, 42, 1, 2);
        host
    }

    #[test]
    fn without_tracing_the_inbound_traceparent_travels_unchanged_and_nothing_is_recorded() {
        let host = capture_and_answer(
            routes_config(r#"[{"prefix":"/orders"}]"#),
            Some(INBOUND_TP),
            "202",
        );
        let frame = frame_json(host.only_call());
        assert!(frame.get("traceparent").is_none(), "{frame}");
        assert_eq!(frame["headers"], json!([["traceparent", INBOUND_TP]]));
        assert!(host.spans.is_empty());
        assert_eq!(host.random, 1, "no random bytes taken");
        assert_eq!(host.only_sent().status, 202);
    }

    #[test]
    fn a_sampled_inbound_trace_is_continued_with_the_filter_span_as_parent() {
        let host = capture_and_answer(orders(""), Some(INBOUND_TP), "202");
        assert_eq!(
            frame_traceparent(&host).unwrap(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{SPAN_ID}-01")
        );
        // The client's own header still travels with the request.
        assert_eq!(
            frame_json(host.only_call())["headers"],
            json!([["traceparent", INBOUND_TP]])
        );
        let span = only_span(&host);
        assert_eq!(
            span.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id.to_string(), SPAN_ID);
        assert_eq!(
            span.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.name, "capture orders");
        assert_eq!(
            (span.start_unix_nanos, span.end_unix_nanos),
            (T0, T0 + 5_000_000)
        );
        assert_eq!(span.status, SpanStatus::Unset);
        let expected: Vec<(String, AttrValue)> = [
            ("http.request.method", AttrValue::from("POST")),
            ("url.path", "/orders".into()),
            ("openhqm.route", "orders".into()),
            ("openhqm.correlation_id", ID1.into()),
            ("http.response.status_code", 202i64.into()),
            ("openhqm.outcome", "accepted".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(span.attributes, expected);
    }

    #[test]
    fn without_a_valid_inbound_context_a_new_trace_starts() {
        for inbound in [
            None,
            Some("garbage"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ] {
            let host = capture_and_answer(orders(""), inbound, "202");
            assert_eq!(
                frame_traceparent(&host).unwrap(),
                format!("00-{NEW_TRACE_ID}-{SPAN_ID}-01"),
                "{inbound:?}"
            );
            let span = only_span(&host);
            assert_eq!(span.trace_id.to_string(), NEW_TRACE_ID);
            assert_eq!(span.parent_span_id, None, "a root span");
            // sample_ratio 1.0 needs no random draw.
            assert_eq!(host.random, 25);
        }
    }

    #[test]
    fn an_unsampled_inbound_context_is_passed_on_unchanged_and_nothing_exported() {
        let tp = INBOUND_TP.replace("-01", "-00");
        let host = capture_and_answer(orders(""), Some(&tp), "202");
        assert_eq!(frame_traceparent(&host).unwrap(), tp);
        assert!(host.spans.is_empty());
        assert_eq!(host.random, 1, "no ids made");
        // The inbound flag wins over the ratio either way.
        let host = capture_and_answer(orders(r#","sample_ratio":0"#), Some(INBOUND_TP), "202");
        assert_eq!(host.spans.len(), 1);
    }

    #[test]
    fn sample_ratio_decides_new_traces() {
        // The fake's sampling draw is bytes 25..=32: about 0.125 of the range.
        let host = capture_and_answer(orders(r#","sample_ratio":0.5"#), None, "202");
        assert_eq!(host.spans.len(), 1);
        assert!(frame_traceparent(&host).unwrap().ends_with("-01"));
        let host = capture_and_answer(orders(r#","sample_ratio":0.1"#), None, "202");
        assert!(host.spans.is_empty());
        // Not recorded, still propagated: new ids, flag 00.
        assert_eq!(
            frame_traceparent(&host).unwrap(),
            format!("00-{NEW_TRACE_ID}-{SPAN_ID}-00")
        );
        let host = capture_and_answer(orders(r#","sample_ratio":0"#), None, "202");
        assert!(host.spans.is_empty());
        assert!(frame_traceparent(&host).unwrap().ends_with("-00"));
    }

    #[test]
    fn span_timing_runs_from_the_headers_to_the_answer() {
        let mut host = FakeHost::request("POST", "/orders");
        host.request_body = b"hello".to_vec();
        let mut f = HttpFilter::new(orders(""));
        f.on_request_headers(&mut host, false);
        host.now += 1_000;
        f.on_request_body(&mut host, 5, true);
        host.now += 2_000;
        host.bridge_answers(&[(":status", "202")], b"");
        f.on_call_response(&mut host, 42, 1, 0);
        let span = only_span(&host);
        assert_eq!(span.start_unix_nanos, T0);
        assert_eq!(span.end_unix_nanos, T0 + 3_000);
        // A later callback records nothing more.
        f.on_done(&mut host);
        assert_eq!(host.spans.len(), 1);
    }

    #[test]
    fn a_bridge_failure_is_an_error_span() {
        let host = capture_and_answer(orders(""), None, "502");
        assert_eq!(host.only_sent().status, 503);
        let span = only_span(&host);
        assert_eq!(
            span.status,
            SpanStatus::Error("bridge call failed (status 502)".into())
        );
        assert_eq!(
            attr(span, "http.response.status_code"),
            Some(&AttrValue::Int(503))
        );
        assert_eq!(attr(span, "openhqm.outcome"), Some(&"rejected".into()));

        // The call cannot even be made.
        let mut host = FakeHost::request("POST", "/orders");
        host.dispatch_result = Err("BadArgument".into());
        HttpFilter::new(orders("")).on_request_headers(&mut host, true);
        assert_eq!(
            only_span(&host).status,
            SpanStatus::Error("bridge call failed: BadArgument".into())
        );
        // The frame still carried the context.
        assert!(frame_traceparent(&host).is_some());
    }

    #[test]
    fn a_bridge_4xx_is_rejected_without_error() {
        let host = capture_and_answer(orders(""), None, "422");
        let span = only_span(&host);
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(attr(span, "openhqm.outcome"), Some(&"rejected".into()));
        assert_eq!(
            attr(span, "http.response.status_code"),
            Some(&AttrValue::Int(422))
        );
    }

    #[test]
    fn passthrough_on_bridge_failure_ends_the_span_at_the_resume() {
        let cfg = traced(
            "",
            r#"[{"name":"orders","prefix":"/orders","on_bridge_failure":"passthrough"}]"#,
        );
        let host = capture_and_answer(cfg, Some(INBOUND_TP), "503");
        assert!(host.resumed && host.sent.is_empty());
        let span = only_span(&host);
        assert_eq!(attr(span, "openhqm.outcome"), Some(&"passthrough".into()));
        assert_eq!(
            attr(span, "http.response.status_code"),
            None,
            "the app answers"
        );
        assert_eq!(
            span.status,
            SpanStatus::Error("bridge call failed (status 503)".into())
        );
        assert_eq!(span.end_unix_nanos, T0 + 5_000_000);
    }

    #[test]
    fn a_wait_mode_answer_is_relayed_and_a_5xx_from_the_backend_is_an_error() {
        let cfg = traced(
            "",
            r#"[{"name":"lookup","prefix":"/orders","mode":"wait"}]"#,
        );
        for (status, error) in [
            ("404", SpanStatus::Unset),
            ("500", SpanStatus::Error("the backend answered 500".into())),
        ] {
            let mut host = FakeHost::request("GET", "/orders/7");
            let mut f = HttpFilter::new(Rc::clone(&cfg));
            f.on_request_headers(&mut host, true);
            host.now += 7;
            host.bridge_answers(&[(":status", status), ("x-openhqm-result", "final")], b"x");
            f.on_call_response(&mut host, 42, 2, 1);
            let span = only_span(&host);
            assert_eq!(span.name, "capture lookup");
            assert_eq!(attr(span, "openhqm.outcome"), Some(&"relayed".into()));
            assert_eq!(
                attr(span, "http.response.status_code"),
                Some(&AttrValue::Int(status.parse().unwrap()))
            );
            assert_eq!(span.status, error);
            assert_eq!(span.end_unix_nanos, T0 + 7);
        }
    }

    #[test]
    fn the_span_names_the_correlation_id_the_client_got() {
        const FIRST: &str = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(orders(""));
        f.on_request_headers(&mut host, true);
        host.bridge_answers(&[(":status", "200"), ("x-correlation-id", FIRST)], b"");
        f.on_call_response(&mut host, 42, 2, 0);
        assert_eq!(
            attr(only_span(&host), "openhqm.correlation_id"),
            Some(&FIRST.into())
        );
    }

    #[test]
    fn local_answers_end_the_span_too() {
        // 413 by Content-Length, at once.
        let mut host =
            FakeHost::request("POST", "/orders").with_header("content-length", b"99999999");
        HttpFilter::new(orders("")).on_request_headers(&mut host, false);
        let span = only_span(&host);
        assert_eq!(
            attr(span, "http.response.status_code"),
            Some(&AttrValue::Int(413))
        );
        assert_eq!(attr(span, "openhqm.outcome"), Some(&"rejected".into()));
        assert_eq!(span.status, SpanStatus::Unset, "the client's fault");
        // The body never came (watchdog).
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(orders(""));
        f.on_request_headers(&mut host, false);
        f.on_body_stalled(&mut host);
        let span = only_span(&host);
        assert_eq!(
            attr(span, "http.response.status_code"),
            Some(&AttrValue::Int(500))
        );
        assert!(matches!(span.status, SpanStatus::Error(_)));
    }

    #[test]
    fn a_client_that_goes_away_leaves_a_cancelled_span() {
        let mut host = FakeHost::request("POST", "/orders");
        let mut f = HttpFilter::new(orders(""));
        f.on_request_headers(&mut host, true);
        host.now += 9;
        f.on_done(&mut host);
        let span = only_span(&host);
        assert_eq!(attr(span, "openhqm.outcome"), Some(&"cancelled".into()));
        assert_eq!(attr(span, "http.response.status_code"), None);
        assert!(matches!(span.status, SpanStatus::Error(_)));
        assert_eq!(span.end_unix_nanos, T0 + 9);
    }

    #[test]
    fn requests_that_are_not_captured_are_not_traced() {
        let cfg = orders("");
        for (method, path) in [("GET", "/other"), ("GET", "/api/v1/status/abc")] {
            let mut host =
                FakeHost::request(method, path).with_header("traceparent", INBOUND_TP.as_bytes());
            let mut f = HttpFilter::new(Rc::clone(&cfg));
            f.on_request_headers(&mut host, true);
            host.bridge_answers(&[(":status", "200")], b"{}");
            f.on_call_response(&mut host, 42, 1, 2);
            f.on_done(&mut host);
            assert!(host.spans.is_empty(), "{path}");
            assert_eq!(host.random, 1, "{path}");
            // The relay call carries no trace context of the filter's.
            for call in &host.calls {
                assert!(call.body.is_none());
                assert!(!call.headers.iter().any(|(n, _)| n == "traceparent"));
            }
        }
    }
}
