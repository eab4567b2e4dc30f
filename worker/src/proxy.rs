//! Proxy mode: which endpoint a message goes to (routing table, the
//! message's named endpoint, or the default), and the call itself under
//! that endpoint's flow control (breaker, concurrency, rate, sticky instance).

use crate::admin::Metrics;
use crate::backend_call::{self, Attempt, Target};
use crate::flow::breaker::{BreakerSettings, BreakerState, OnChange};
use crate::flow::{EndpointFlow, FlowSettings};
use crate::routing::{RouteError, Routed, RoutingTable};
use crate::work::{Work, WorkBody};
use openhqm_core::config::{Config, EndpointConfig};
use openhqm_core::retry::RetryPolicy;
use openhqm_core::telemetry::TraceSpan;
use openhqm_trace::SpanKind;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name metrics and logs use for a default endpoint given as a bare URL.
const DEFAULT_NAME: &str = "default";

struct Endpoint {
    config: EndpointConfig,
    flow: Arc<EndpointFlow>,
    policy: RetryPolicy,
}

pub struct Proxy {
    endpoints: HashMap<String, Endpoint>,
    default: Option<String>,
    routing: Option<RoutingTable>,
    /// Endpoint names the routing table uses that are not configured: their
    /// messages go to the default endpoint (warned at start-up).
    unknown_routed: std::collections::HashSet<String>,
    metrics: Arc<Metrics>,
}

/// Where one message goes and under which rules.
pub struct Plan<'a> {
    pub name: &'a str,
    endpoint: &'a Endpoint,
    pub routed: Option<Routed>,
    /// The endpoint's policy, or a copy with the route's `max_retries`.
    pub policy: Cow<'a, RetryPolicy>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        routing: Option<RoutingTable>,
    ) -> Result<Proxy, String> {
        let mut endpoints = HashMap::new();
        let mut add = |name: &str, ep: EndpointConfig| -> Result<(), String> {
            let policy = RetryPolicy::for_endpoint(&config.worker, &ep.retry)
                .map_err(|e| format!("proxy.endpoints.{name}.retry: {e}"))?;
            let flow = Arc::new(EndpointFlow::new(
                name.to_string(),
                flow_settings(&ep),
                breaker_observer(metrics.clone()),
            ));
            metrics
                .breaker_state
                .with_label_values(&[name])
                .set(BreakerState::Closed.as_gauge());
            endpoints.insert(
                name.to_string(),
                Endpoint {
                    config: ep,
                    flow,
                    policy,
                },
            );
            Ok(())
        };
        for (name, ep) in &config.proxy.endpoints {
            add(name, ep.clone())?;
        }
        let mut default = config.proxy.default_endpoint.clone();
        if let Some(d) = &default {
            if !config.proxy.endpoints.contains_key(d) {
                // A bare URL (validated by the config): its own endpoint.
                let ep = config
                    .resolve_endpoint(Some(d))
                    .ok_or_else(|| format!("proxy.default_endpoint: `{d}` is not usable"))?;
                add(DEFAULT_NAME, ep)?;
                default = Some(DEFAULT_NAME.to_string());
            }
        }
        // A route naming an endpoint that is not configured: with a default
        // endpoint (a URL-only setup, as the original's examples), its
        // messages go there; without one, nothing could take them.
        let mut unknown_routed = std::collections::HashSet::new();
        for (route, name) in routing.iter().flat_map(|t| t.route_endpoints()) {
            if endpoints.contains_key(&name) {
                continue;
            }
            match &default {
                Some(d) => {
                    tracing::warn!(
                        "routing: {route} names endpoint `{name}`, which is not in proxy.endpoints: its messages go to proxy.default_endpoint `{}`",
                        config.proxy.default_endpoint.as_deref().unwrap_or(d)
                    );
                    unknown_routed.insert(name);
                }
                None => {
                    return Err(format!(
                        "routing: {route} names endpoint `{name}`, which is not in proxy.endpoints (and proxy.default_endpoint is unset)"
                    ))
                }
            }
        }
        Ok(Proxy {
            endpoints,
            default,
            routing,
            unknown_routed,
            metrics,
        })
    }

    /// Decide where a message goes. Captured requests are replayed as they
    /// came (the routing table reshapes payloads, not captured requests).
    pub fn plan(&self, work: &Work) -> Result<Plan<'_>, String> {
        let mut routed = None;
        let mut name = work.metadata.endpoint.clone();
        if let (Some(table), false) = (&self.routing, matches!(work.body, WorkBody::Captured(_))) {
            match table.route(&work.routing_view()) {
                Ok(r) => {
                    name = Some(r.endpoint.clone());
                    routed = Some(r);
                }
                Err(RouteError::NoRoute) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let name = name
            .filter(|n| routed.is_none() || !self.unknown_routed.contains(n))
            .or_else(|| self.default.clone())
            .ok_or("no endpoint: the message names none and proxy.default_endpoint is unset")?;
        let (name, endpoint) = self
            .endpoints
            .get_key_value(&name)
            // Never an arbitrary URL from a message: names only.
            .ok_or_else(|| {
                format!("the message names endpoint `{name}`, which is not configured")
            })?;
        let policy = match routed.as_ref().and_then(|r: &Routed| r.max_retries) {
            Some(n) => Cow::Owned(endpoint.policy.with_max_retries(n)),
            None => Cow::Borrowed(&endpoint.policy),
        };
        Ok(Plan {
            name,
            endpoint,
            routed,
            policy,
        })
    }

    /// One attempt under the endpoint's flow control. Waits while the
    /// breaker is open, for a concurrency slot and a rate token; gives up
    /// with `Expired` when the message's deadline passes first.
    pub async fn call(
        &self,
        http: &reqwest::Client,
        config: &Config,
        plan: &Plan<'_>,
        work: &Work,
        this: &ThisAttempt<'_>,
    ) -> Attempt {
        let ThisAttempt {
            attempt,
            deadline,
            trace,
        } = *this;
        let flow = &plan.endpoint.flow;
        let Ok(admission) = flow.admit(deadline).await else {
            return Attempt::Expired;
        };
        let base_url = flow
            .instance(work.partition_key.as_deref())
            .unwrap_or(&plan.endpoint.config.url);
        let target = Target {
            endpoint: &plan.endpoint.config,
            base_url,
            routed: plan.routed.as_ref(),
        };
        let mut out = match backend_call::build(config, work, &target, attempt) {
            Ok(o) => o,
            Err(error) => {
                // Nothing was sent: the backend is not to blame.
                admission.finish(true);
                return Attempt::Fail {
                    error,
                    response: None,
                };
            }
        };
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            out.timeout = out.timeout.min(left.max(Duration::from_millis(1)));
        }
        // The backend sees this call's span as its parent.
        let mut span = trace.child(format!("{} {}", out.method, plan.name), SpanKind::Client);
        span.attr("http.request.method", out.method.to_string());
        client_url_attributes(&mut span, &out.url);
        span.attr("openhqm.endpoint", plan.name);
        span.attr("openhqm.attempt", i64::from(attempt));
        if let Some(tp) = span.traceparent() {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(tp) {
                out.headers.insert("traceparent", v);
            }
        }
        let in_flight = self
            .metrics
            .backend_in_flight
            .with_label_values(&[plan.name]);
        in_flight.inc();
        let sent = Instant::now();
        let result =
            backend_call::send(http, out, &plan.policy, config.proxy.max_response_size).await;
        self.metrics
            .backend_duration
            .with_label_values(&[plan.name])
            .observe(sent.elapsed().as_secs_f64());
        in_flight.dec();
        let (class, healthy) = classify(&result);
        admission.finish(healthy);
        match &result {
            Attempt::Answered(r) => {
                span.attr("http.response.status_code", i64::from(r.status_code))
            }
            Attempt::Retry {
                error, response, ..
            }
            | Attempt::Fail { error, response } => {
                // error.type: the status code when the backend answered,
                // else the conventions' catch-all.
                match response {
                    Some(r) => {
                        span.attr("http.response.status_code", i64::from(r.status_code));
                        span.attr("error.type", r.status_code.to_string());
                    }
                    None => span.attr("error.type", "_OTHER"),
                }
                span.set_error(error.clone());
            }
            Attempt::Expired => {
                span.attr("error.type", "timeout");
                span.set_error("deadline passed");
            }
        }
        self.metrics
            .backend_calls
            .with_label_values(&[plan.name, class])
            .inc();
        result
    }
}

/// Which attempt this is, the message's deadline, and the span it belongs to.
#[derive(Clone, Copy)]
pub struct ThisAttempt<'a> {
    pub attempt: u32,
    pub deadline: Option<tokio::time::Instant>,
    pub trace: &'a TraceSpan,
}

/// The metric label of an outcome, and whether it says the backend is
/// healthy. 4xx (429 included) are answers from a working backend; only
/// 5xx, timeouts and connection failures count against the breaker.
fn classify(a: &Attempt) -> (&'static str, bool) {
    let status = match a {
        Attempt::Answered(r) => Some(r.status_code),
        Attempt::Retry { response, .. } | Attempt::Fail { response, .. } => {
            response.as_ref().map(|r| r.status_code)
        }
        Attempt::Expired => return ("expired", true),
    };
    match status {
        Some(s) if s >= 500 => ("5xx", false),
        Some(s) if s >= 400 => ("4xx", true),
        Some(s) if s >= 300 => ("3xx", true),
        Some(_) => ("2xx", true),
        None if matches!(a, Attempt::Fail { .. }) => ("error", true),
        None => ("error", false),
    }
}

fn flow_settings(ep: &EndpointConfig) -> FlowSettings {
    FlowSettings {
        max_concurrency: ep.max_concurrency,
        rate: ep
            .rate_limit
            .as_ref()
            .map(|r| (r.requests_per_second, r.burst)),
        breaker: ep.circuit_breaker.as_ref().map(|b| BreakerSettings {
            failure_threshold: b.failure_threshold,
            error_ratio: b.error_ratio,
            min_requests: b.min_requests,
            window: Duration::from_secs_f64(b.window_seconds),
            open_for: Duration::from_secs_f64(b.open_seconds),
            half_open_probes: b.half_open_probes,
        }),
        instances: ep.instances.clone(),
    }
}

/// Every breaker state change is logged and counted.
fn breaker_observer(metrics: Arc<Metrics>) -> OnChange {
    Box::new(move |name, from, to| {
        metrics
            .breaker_state
            .with_label_values(&[name])
            .set(to.as_gauge());
        metrics
            .breaker_transitions
            .with_label_values(&[name, to.as_str()])
            .inc();
        match to {
            BreakerState::Open => tracing::warn!(
                endpoint = name,
                from = from.as_str(),
                "circuit breaker open: calls to this endpoint are paused"
            ),
            _ => tracing::info!(
                endpoint = name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker state changed"
            ),
        }
    })
}

/// HTTP client conventions from the call's URL: `server.address`,
/// `server.port`, `url.scheme` and `url.full` without the query (which may
/// carry credentials) and without user info.
fn client_url_attributes(span: &mut TraceSpan, url: &str) {
    let Ok(u) = reqwest::Url::parse(url) else {
        return;
    };
    // host_str() keeps an IPv6 address's brackets, as a URL has them.
    let Some(host) = u.host_str() else { return };
    span.attr(
        "server.address",
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    );
    if let Some(port) = u.port_or_known_default() {
        span.attr("server.port", i64::from(port));
    }
    span.attr("url.scheme", u.scheme().to_string());
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    span.attr(
        "url.full",
        format!("{}://{host}{port}{}", u.scheme(), u.path()),
    );
}
