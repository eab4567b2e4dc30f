//! The filter's plugin configuration: the JSON in Envoy's wasm filter
//! `configuration`, parsed strictly (unknown keys are errors) and validated.
//! Every error message names the offending key.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::routes::{FailurePolicy, HeaderMatch, Mode, PathMatch, Route, RouteTable};

/// Default `:authority` for calls to the bridge.
pub const DEFAULT_BRIDGE_AUTHORITY: &str = "openhqm-bridge";
/// Default bridge call timeout.
pub const DEFAULT_BRIDGE_TIMEOUT_MS: u64 = 5000;
/// Default largest captured body (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Default `Retry-After` on 503.
pub const DEFAULT_RETRY_AFTER_SECONDS: u64 = 2;
/// Default public API prefix (for the status/response relay).
pub const DEFAULT_API_PREFIX: &str = "/api/v1";
/// Default cap on a client's `Prefer: wait=N` for relayed lookups (30 s).
pub const DEFAULT_MAX_WAIT_MS: u64 = 30_000;
/// Default OTLP/HTTP traces path of the collector.
pub const DEFAULT_OTLP_PATH: &str = "/v1/traces";
/// Default `service.name` of the filter's spans.
pub const DEFAULT_SERVICE_NAME: &str = "openhqm-filter";
/// Default timeout of one export call.
pub const DEFAULT_OTLP_TIMEOUT_MS: u64 = 1000;
/// Default number of spans per export call.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Largest `tracing.max_batch`: the per-VM span buffer holds four batches.
pub const MAX_MAX_BATCH: usize = 4096;
/// Default time between exports.
pub const DEFAULT_FLUSH_MS: u64 = 1000;
/// Smallest `tracing.flush_ms` (it sets the root context's tick).
pub const MIN_FLUSH_MS: u64 = 100;

/// The validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Envoy cluster name of the bridge.
    pub bridge_cluster: String,
    /// `:authority` for calls to the bridge.
    pub bridge_authority: String,
    /// Timeout of a call to the bridge, in milliseconds (1..=u32::MAX).
    pub bridge_timeout_ms: u64,
    /// Largest request body the filter captures; larger ones get 413.
    pub max_body_bytes: u64,
    /// `Retry-After` value (seconds) on 503.
    pub retry_after_seconds: u64,
    /// Public API prefix without a trailing slash (may be empty for "/").
    pub api_prefix: String,
    /// Longest `Prefer: wait` honoured on a relayed lookup, in milliseconds.
    pub max_wait_ms: u64,
    /// Response header that carries the correlation ID to the client.
    pub correlation_header: String,
    /// Reuse a valid (UUID) correlation ID the client sent in
    /// `correlation_header` instead of making a new one.
    pub trust_inbound_correlation: bool,
    /// Which client headers travel with a captured request to the backend.
    pub header_policy: HeaderPolicy,
    /// Capture routes, first match wins.
    pub routes: RouteTable,
    /// Span export of captured requests; `None`: no spans, the inbound
    /// `traceparent` travels unchanged with the request's headers.
    pub tracing: Option<TracingConfig>,
}

/// Where and how the filter exports its spans (OTLP/HTTP JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Envoy cluster of the OpenTelemetry collector's OTLP/HTTP port.
    pub otlp_cluster: String,
    /// Path of the traces endpoint (starts with '/').
    pub otlp_path: String,
    /// `:authority` of export calls.
    pub authority: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Share of new traces recorded (0.0..=1.0) when the request brings no
    /// valid `traceparent`; an inbound one's sampled flag is obeyed.
    pub sample_ratio: f64,
    /// Timeout of one export call, in milliseconds (1..=u32::MAX).
    pub timeout_ms: u64,
    /// Spans per export call; reaching it triggers an export.
    pub max_batch: usize,
    /// Time between exports, in milliseconds.
    pub flush_ms: u64,
}

impl TracingConfig {
    /// Most spans a VM holds waiting for export; more are dropped.
    pub fn buffer_limit(&self) -> usize {
        self.max_batch.saturating_mul(4)
    }
}

/// Which request headers are carried to the backend (lower-case names):
/// only `allow`ed ones when `allow` is not empty, never `deny`ed ones.
/// Hop-by-hop headers are dropped regardless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl HeaderPolicy {
    pub fn permits(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        (self.allow.is_empty() || self.allow.contains(&name)) && !self.deny.contains(&name)
    }
}

/// A configuration problem, naming the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid openhqm filter configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

fn default_bridge_authority() -> String {
    DEFAULT_BRIDGE_AUTHORITY.to_string()
}
fn default_bridge_timeout_ms() -> u64 {
    DEFAULT_BRIDGE_TIMEOUT_MS
}
fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}
fn default_retry_after_seconds() -> u64 {
    DEFAULT_RETRY_AFTER_SECONDS
}
fn default_api_prefix() -> String {
    DEFAULT_API_PREFIX.to_string()
}
fn default_max_wait_ms() -> u64 {
    DEFAULT_MAX_WAIT_MS
}

/// The configuration exactly as written (before validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bridge_cluster: String,
    #[serde(default = "default_bridge_authority")]
    bridge_authority: String,
    #[serde(default = "default_bridge_timeout_ms")]
    bridge_timeout_ms: u64,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "default_retry_after_seconds")]
    retry_after_seconds: u64,
    #[serde(default = "default_api_prefix")]
    api_prefix: String,
    #[serde(default = "default_max_wait_ms")]
    max_wait_ms: u64,
    #[serde(default)]
    correlation_header: Option<String>,
    #[serde(default)]
    trust_inbound_correlation: bool,
    #[serde(default)]
    headers: Option<RawHeaderPolicy>,
    routes: Vec<RawRoute>,
    /// Read by hand ([`parse_tracing`]): a derived parser for it would
    /// add kilobytes to the Wasm module.
    #[serde(default)]
    tracing: Option<Value>,
}

/// The keys of the `tracing` object.
const TRACING_KEYS: [&str; 8] = [
    "otlp_cluster",
    "otlp_path",
    "authority",
    "service_name",
    "sample_ratio",
    "timeout_ms",
    "max_batch",
    "flush_ms",
];

/// Validates the `tracing` object (`null` is the same as absent, for it
/// and for each of its keys).
fn parse_tracing(value: Value) -> Result<Option<TracingConfig>, ConfigError> {
    let fields = match value {
        Value::Null => return Ok(None),
        Value::Object(fields) => fields,
        other => return err(format!("`tracing` must be a JSON object (got {other})")),
    };
    if let Some(key) = fields.keys().find(|k| !TRACING_KEYS.contains(&k.as_str())) {
        return err(format!(
            "`tracing`: unknown field `{key}`, expected one of `otlp_cluster`, `otlp_path`, \
             `authority`, `service_name`, `sample_ratio`, `timeout_ms`, `max_batch`, `flush_ms`"
        ));
    }
    let given = |key: &str| fields.get(key).filter(|v| !v.is_null());
    let string = |key: &str| -> Result<Option<String>, ConfigError> {
        match given(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => err(format!("`tracing.{key}` must not be empty")),
            Some(other) => err(format!("`tracing.{key}` must be a string (got {other})")),
        }
    };
    let integer = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
        let Some(v) = given(key) else {
            return Ok(default);
        };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => err(format!(
                "`tracing.{key}` must be an integer from {min} to {max} (got {v})"
            )),
        }
    };
    let Some(otlp_cluster) = string("otlp_cluster")? else {
        return err(
            "`tracing.otlp_cluster` is required (the Envoy cluster of the collector's \
             OTLP/HTTP port)",
        );
    };
    let otlp_path = string("otlp_path")?.unwrap_or_else(|| DEFAULT_OTLP_PATH.to_string());
    if !otlp_path.starts_with('/') {
        return err(format!(
            "`tracing.otlp_path` must start with '/' (got {otlp_path:?})"
        ));
    }
    let sample_ratio = match given("sample_ratio") {
        None => 1.0,
        Some(v) => match v.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return err(format!(
                    "`tracing.sample_ratio` must be a number from 0.0 to 1.0 (got {v})"
                ))
            }
        },
    };
    let max = u64::from(u32::MAX);
    let max_batch = integer(
        "max_batch",
        DEFAULT_MAX_BATCH as u64,
        1,
        MAX_MAX_BATCH as u64,
    )?;
    Ok(Some(TracingConfig {
        authority: string("authority")?.unwrap_or_else(|| otlp_cluster.clone()),
        service_name: string("service_name")?.unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
        timeout_ms: integer("timeout_ms", DEFAULT_OTLP_TIMEOUT_MS, 1, max)?,
        max_batch: usize::try_from(max_batch).unwrap_or(DEFAULT_MAX_BATCH),
        flush_ms: integer("flush_ms", DEFAULT_FLUSH_MS, MIN_FLUSH_MS, max)?,
        otlp_cluster,
        otlp_path,
        sample_ratio,
    }))
}

/// One route as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    headers: Vec<RawHeaderMatch>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    partition_key_header: Option<String>,
    #[serde(default)]
    on_bridge_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderPolicy {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// `{"name": "x-tenant", "exact": "acme"}`, `"prefix": ...` or `"present": true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    present: Option<bool>,
}

impl Config {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return err(
                "the configuration is empty; expected a JSON object with at least \
                 \"bridge_cluster\" and \"routes\"",
            );
        }
        let raw: RawConfig = match serde_json::from_slice(bytes) {
            Ok(raw) => raw,
            Err(e) => return Err(describe_parse_error(bytes, &e)),
        };
        raw.validate()
    }

    /// The bridge call timeout.
    pub fn bridge_timeout(&self) -> Duration {
        Duration::from_millis(self.bridge_timeout_ms)
    }

    /// The callout timeout of a relayed lookup that asked to wait
    /// `wait_seconds` (capped at `max_wait_ms`).
    pub fn relay_timeout(&self, wait_seconds: Option<u64>) -> Duration {
        let wait_ms = wait_seconds
            .map_or(0, |s| s.saturating_mul(1000))
            .min(self.max_wait_ms);
        Duration::from_millis(self.bridge_timeout_ms.saturating_add(wait_ms))
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        if self.bridge_cluster.trim().is_empty() {
            return err("`bridge_cluster` must not be empty (the Envoy cluster of the bridge)");
        }
        if self.bridge_authority.trim().is_empty() {
            return err("`bridge_authority` must not be empty");
        }
        if self.bridge_timeout_ms == 0 {
            return err("`bridge_timeout_ms` must be greater than 0");
        }
        if self.bridge_timeout_ms > u64::from(u32::MAX) {
            return err(format!(
                "`bridge_timeout_ms` must be at most {} (got {})",
                u32::MAX,
                self.bridge_timeout_ms
            ));
        }
        if self.max_body_bytes == 0 {
            return err("`max_body_bytes` must be greater than 0");
        }
        // The relay's callout timeout is bridge_timeout_ms + the wait.
        if self
            .max_wait_ms
            .checked_add(self.bridge_timeout_ms)
            .is_none_or(|total| total > u64::from(u32::MAX))
        {
            return err(format!(
                "`max_wait_ms` plus `bridge_timeout_ms` must be at most {} (got {})",
                u32::MAX,
                self.max_wait_ms
            ));
        }
        if !self.api_prefix.starts_with('/') {
            return err(format!(
                "`api_prefix` must start with '/' (got {:?})",
                self.api_prefix
            ));
        }
        if self.api_prefix.contains('?') {
            return err(format!(
                "`api_prefix` must not contain '?' (got {:?})",
                self.api_prefix
            ));
        }
        let api_prefix = self.api_prefix.trim_end_matches('/').to_string();
        let correlation_header = match self.correlation_header {
            None => "x-correlation-id".to_string(),
            Some(h) if !h.trim().is_empty() && h.trim().bytes().all(is_tchar) => {
                h.trim().to_ascii_lowercase()
            }
            Some(h) => {
                return err(format!(
                    "`correlation_header` is not a header name (got {h:?})"
                ))
            }
        };
        let mut header_policy = HeaderPolicy::default();
        if let Some(raw) = self.headers {
            for (list, names, out) in [
                ("allow", raw.allow, &mut header_policy.allow),
                ("deny", raw.deny, &mut header_policy.deny),
            ] {
                for (i, name) in names.into_iter().enumerate() {
                    let n = name.trim().to_ascii_lowercase();
                    if n.is_empty() || !n.bytes().all(is_tchar) {
                        return err(format!(
                            "`headers.{list}[{i}]` is not a header name (got {name:?})"
                        ));
                    }
                    out.push(n);
                }
            }
        }

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.into_iter().enumerate() {
            routes.push(raw.validate(i, self.max_wait_ms)?);
        }
        let tracing = match self.tracing {
            Some(value) => parse_tracing(value)?,
            None => None,
        };
        Ok(Config {
            bridge_cluster: self.bridge_cluster,
            bridge_authority: self.bridge_authority,
            bridge_timeout_ms: self.bridge_timeout_ms,
            max_body_bytes: self.max_body_bytes,
            retry_after_seconds: self.retry_after_seconds,
            api_prefix,
            max_wait_ms: self.max_wait_ms,
            correlation_header,
            trust_inbound_correlation: self.trust_inbound_correlation,
            header_policy,
            routes: RouteTable::new(routes),
            tracing,
        })
    }
}

impl RawRoute {
    fn validate(self, index: usize, max_wait_ms: u64) -> Result<Route, ConfigError> {
        let key = |field: &str| format!("routes[{index}].{field}");
        let path = match (self.prefix, self.exact, self.regex) {
            (Some(p), None, None) => PathMatch::Prefix(check_path(&key("prefix"), p)?),
            (None, Some(e), None) => PathMatch::Exact(check_path(&key("exact"), e)?),
            (None, None, Some(r)) => match regex_lite::Regex::new(&r) {
                Ok(re) => PathMatch::Regex(re),
                Err(e) => return err(format!("`{}` is not a valid regex: {e}", key("regex"))),
            },
            _ => {
                return err(format!(
                    "`routes[{index}]` needs exactly one of `prefix`, `exact` or `regex`"
                ))
            }
        };
        let mut methods: Vec<String> = Vec::new();
        for (j, method) in self.methods.unwrap_or_default().into_iter().enumerate() {
            let method = method.trim().to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(is_tchar) {
                return err(format!(
                    "`routes[{index}].methods[{j}]` is not an HTTP method name (got {method:?})"
                ));
            }
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (j, h) in self.headers.into_iter().enumerate() {
            let name = h.name.trim().to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return err(format!(
                    "`routes[{index}].headers[{j}].name` is not a header name (got {:?})",
                    h.name
                ));
            }
            headers.push(match (h.exact, h.prefix, h.present) {
                (Some(v), None, None) => HeaderMatch::Exact(name, v.into_bytes()),
                (None, Some(v), None) => HeaderMatch::Prefix(name, v.into_bytes()),
                (None, None, Some(true)) => HeaderMatch::Present(name),
                _ => {
                    return err(format!(
                        "`routes[{index}].headers[{j}]` needs exactly one of `exact`, `prefix` or `present: true`"
                    ))
                }
            });
        }
        let mode = match self.mode.as_deref() {
            None | Some("async") => Mode::Async,
            Some("wait") => Mode::Wait,
            Some(other) => {
                return err(format!(
                    "`{}` must be \"async\" or \"wait\" (got {other:?})",
                    key("mode")
                ))
            }
        };
        let wait_ms = self.wait_ms.unwrap_or(max_wait_ms);
        if wait_ms > max_wait_ms {
            return err(format!(
                "`{}` is {wait_ms}, above `max_wait_ms` ({max_wait_ms})",
                key("wait_ms")
            ));
        }
        let on_bridge_failure = match self.on_bridge_failure.as_deref() {
            None | Some("reject") => FailurePolicy::Reject,
            Some("passthrough") => FailurePolicy::Passthrough,
            Some(other) => {
                return err(format!(
                    "`{}` must be \"reject\" or \"passthrough\" (got {other:?})",
                    key("on_bridge_failure")
                ))
            }
        };
        let partition_key_header = match self.partition_key_header {
            Some(h) if h.trim().is_empty() || !h.trim().bytes().all(is_tchar) => {
                return err(format!(
                    "`{}` is not a header name (got {h:?})",
                    key("partition_key_header")
                ))
            }
            other => other.map(|h| h.trim().to_ascii_lowercase()),
        };
        // Unnamed routes are known by their path pattern in logs.
        let name = self.name.unwrap_or_else(|| match &path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p.clone(),
            PathMatch::Regex(r) => r.as_str().to_string(),
        });
        Ok(Route {
            name,
            path,
            methods,
            headers,
            mode,
            wait_limit: Duration::from_millis(wait_ms),
            endpoint: self.endpoint.filter(|e| !e.is_empty()),
            priority: self.priority.filter(|p| !p.is_empty()),
            partition_key_header,
            on_bridge_failure,
        })
    }
}

/// A prefix or exact path: absolute, and without a query (never matched).
fn check_path(key: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return err(format!("`{key}` must start with '/' (got {path:?})"));
    }
    if path.contains('?') {
        return err(format!(
            "`{key}` must not contain '?': the query is not matched (got {path:?})"
        ));
    }
    Ok(path)
}

/// RFC 9110 `tchar` (the characters of a method token).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Turns a serde error into a message that names the key. serde_json's own
/// messages already name the key for unknown and missing fields; for type
/// errors the offending key is found by checking each field on its own.
fn describe_parse_error(bytes: &[u8], error: &serde_json::Error) -> ConfigError {
    if error.is_syntax() || error.is_eof() {
        return ConfigError(format!("not valid JSON: {error}"));
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(_) => return ConfigError(error.to_string()),
    };
    let Some(object) = value.as_object() else {
        return ConfigError("the configuration must be a JSON object".to_string());
    };
    for (key, field) in object {
        let problem = match key.as_str() {
            "bridge_cluster" | "bridge_authority" | "api_prefix" => {
                check::<String>(field).map(|e| format!("`{key}`: {e}"))
            }
            "bridge_timeout_ms" | "max_body_bytes" | "retry_after_seconds" => {
                check::<u64>(field).map(|e| format!("`{key}`: {e}"))
            }
            "routes" => locate_route_error(field),
            _ => None,
        };
        if let Some(problem) = problem {
            return ConfigError(problem);
        }
    }
    // Unknown or missing top-level fields: serde's message names them.
    ConfigError(error.to_string())
}

fn locate_route_error(routes: &Value) -> Option<String> {
    let Some(items) = routes.as_array() else {
        return check::<Vec<RawRoute>>(routes).map(|e| format!("`routes`: {e}"));
    };
    for (i, item) in items.iter().enumerate() {
        let Some(fields) = item.as_object() else {
            return check::<RawRoute>(item).map(|e| format!("`routes[{i}]`: {e}"));
        };
        for (key, field) in fields {
            let problem = match key.as_str() {
                "prefix" => check::<String>(field),
                "methods" => check::<Option<Vec<String>>>(field),
                _ => None,
            };
            if let Some(e) = problem {
                return Some(format!("`routes[{i}].{key}`: {e}"));
            }
        }
        if let Some(e) = check::<RawRoute>(item) {
            return Some(format!("`routes[{i}]`: {e}"));
        }
    }
    None
}

fn check<T: DeserializeOwned>(value: &Value) -> Option<String> {
    serde_json::from_value::<T>(value.clone())
        .err()
        .map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{FailurePolicy, HeaderMatch, Mode, PathMatch};

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s.as_bytes())
    }

    fn parse_err(s: &str) -> String {
        parse(s).unwrap_err().0
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"bridge_cluster":"b","routes":[{"prefix":"/orders"}]}"#).unwrap();
        assert_eq!(c.bridge_cluster, "b");
        assert_eq!(c.bridge_authority, "openhqm-bridge");
        assert_eq!(c.bridge_timeout_ms, 5000);
        assert_eq!(c.bridge_timeout(), Duration::from_secs(5));
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.retry_after_seconds, 2);
        assert_eq!(c.api_prefix, "/api/v1");
        assert_eq!(c.routes.routes(), &[Route::prefix("/orders", vec![])]);
    }

    #[test]
    fn routes_with_every_option() {
        let c = parse(
            r#"{"bridge_cluster": "b", "max_wait_ms": 20000, "routes": [
                {"name": "lookup", "regex": "^/orders/[0-9]+$", "methods": ["GET"], "mode": "wait",
                 "wait_ms": 5000, "on_bridge_failure": "passthrough"},
                {"exact": "/orders", "methods": ["POST"], "endpoint": "orders", "priority": "high",
                 "partition_key_header": "X-Customer",
                 "headers": [{"name": "X-Tenant", "exact": "acme"}, {"name": "x-trace", "present": true},
                             {"name": "content-type", "prefix": "application/json"}]}
            ]}"#,
        )
        .unwrap();
        let r = c.routes.routes();
        assert_eq!(r[0].name, "lookup");
        assert_eq!(r[0].mode, Mode::Wait);
        assert_eq!(r[0].wait_limit, Duration::from_millis(5000));
        assert_eq!(r[0].on_bridge_failure, FailurePolicy::Passthrough);
        assert!(matches!(&r[0].path, PathMatch::Regex(re) if re.is_match("/orders/7")));
        assert_eq!(r[1].name, "/orders");
        assert_eq!(r[1].path, PathMatch::Exact("/orders".into()));
        assert_eq!(r[1].mode, Mode::Async);
        assert_eq!(
            r[1].wait_limit,
            Duration::from_millis(20000),
            "defaults to max_wait_ms"
        );
        assert_eq!(r[1].endpoint.as_deref(), Some("orders"));
        assert_eq!(r[1].priority.as_deref(), Some("high"));
        assert_eq!(r[1].partition_key_header.as_deref(), Some("x-customer"));
        assert_eq!(r[1].on_bridge_failure, FailurePolicy::Reject);
        assert_eq!(
            r[1].headers,
            vec![
                HeaderMatch::Exact("x-tenant".into(), b"acme".to_vec()),
                HeaderMatch::Present("x-trace".into()),
                HeaderMatch::Prefix("content-type".into(), b"application/json".to_vec()),
            ]
        );
    }

    #[test]
    fn route_errors_name_the_key() {
        let bad = |route: &str, key: &str| {
            let json = format!(
                r#"{{"bridge_cluster":"b","max_wait_ms":1000,"routes":[{{"prefix":"/ok"}},{route}]}}"#
            );
            let e = parse(&json).unwrap_err();
            assert!(e.0.contains(key), "{route}: {e}");
        };
        bad(r#"{"prefix": "/a", "exact": "/a"}"#, "routes[1]");
        bad(r#"{"methods": ["GET"]}"#, "routes[1]");
        bad(r#"{"regex": "(unclosed"}"#, "`routes[1].regex`");
        bad(r#"{"exact": "a"}"#, "`routes[1].exact`");
        bad(r#"{"prefix": "/a", "mode": "sync"}"#, "`routes[1].mode`");
        bad(
            r#"{"prefix": "/a", "wait_ms": 5000}"#,
            "`routes[1].wait_ms`",
        );
        bad(
            r#"{"prefix": "/a", "on_bridge_failure": "ignore"}"#,
            "`routes[1].on_bridge_failure`",
        );
        bad(
            r#"{"prefix": "/a", "headers": [{"name": "x"}]}"#,
            "`routes[1].headers[0]`",
        );
        bad(
            r#"{"prefix": "/a", "headers": [{"name": "bad name", "present": true}]}"#,
            "`routes[1].headers[0].name`",
        );
        bad(
            r#"{"prefix": "/a", "partition_key_header": "a b"}"#,
            "`routes[1].partition_key_header`",
        );
        bad(r#"{"prefix": "/a", "colour": "red"}"#, "colour");
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"{
              "bridge_cluster": "openhqm_bridge",
              "bridge_authority": "bridge.local",
              "bridge_timeout_ms": 250,
              "max_body_bytes": 10,
              "retry_after_seconds": 7,
              "api_prefix": "/queue/",
              "routes": [
                {"prefix": "/orders", "methods": ["post", " Put ", "POST"]},
                {"prefix": "/jobs", "methods": []},
                {"prefix": "/x", "methods": null}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(c.bridge_authority, "bridge.local");
        assert_eq!(c.bridge_timeout_ms, 250);
        assert_eq!(c.max_body_bytes, 10);
        assert_eq!(c.retry_after_seconds, 7);
        assert_eq!(c.api_prefix, "/queue");
        assert_eq!(
            c.routes.routes(),
            &[
                Route::prefix("/orders", vec!["POST".into(), "PUT".into()]),
                Route::prefix("/jobs", vec![]),
                Route::prefix("/x", vec![]),
            ]
        );
    }

    #[test]
    fn root_api_prefix_becomes_empty() {
        let c = parse(r#"{"bridge_cluster":"b","api_prefix":"/","routes":[]}"#).unwrap();
        assert_eq!(c.api_prefix, "");
        assert!(c.routes.is_empty());
    }

    #[test]
    fn empty_or_invalid_json() {
        assert!(parse_err("").contains("empty"));
        assert!(parse_err("  \n").contains("empty"));
        assert!(parse_err("{").contains("not valid JSON"));
        assert!(parse_err("[1]").contains("must be a JSON object"));
        assert!(parse_err("\"x\"").contains("must be a JSON object"));
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert!(parse_err(r#"{"routes":[]}"#).contains("`bridge_cluster`"));
        assert!(parse_err(r#"{"bridge_cluster":"b"}"#).contains("`routes`"));
        assert!(parse_err(r#"{"bridge_cluster":"b","routes":[{}]}"#).contains("`prefix`"));
        assert!(parse_err(r#"{"bridge_cluster":"b","routes":[{}]}"#).contains("routes[0]"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_err(r#"{"bridge_cluster":"b","routes":[],"max_body":1}"#);
        assert!(e.contains("unknown field `max_body`"), "{e}");
        let e = parse_err(
            r#"{"bridge_cluster":"b","routes":[{"prefix":"/a"},{"prefix":"/b","method":["GET"]}]}"#,
        );
        assert!(e.contains("`routes[1]`"), "{e}");
        assert!(e.contains("unknown field `method`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse_err(r#"{"bridge_cluster":"b","routes":[],"bridge_timeout_ms":"5s"}"#);
        assert!(e.contains("`bridge_timeout_ms`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":"b","routes":[],"max_body_bytes":-1}"#);
        assert!(e.contains("`max_body_bytes`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":7,"routes":[]}"#);
        assert!(e.contains("`bridge_cluster`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":"b","routes":{"prefix":"/a"}}"#);
        assert!(e.contains("`routes`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":"b","routes":["/a"]}"#);
        assert!(e.contains("`routes[0]`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":"b","routes":[{"prefix":"/a","methods":"GET"}]}"#);
        assert!(e.contains("`routes[0].methods`"), "{e}");
        let e = parse_err(r#"{"bridge_cluster":"b","routes":[{"prefix":1}]}"#);
        assert!(e.contains("`routes[0].prefix`"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (r#"{"bridge_cluster":"","routes":[]}"#, "`bridge_cluster`"),
            (r#"{"bridge_cluster":"  ","routes":[]}"#, "`bridge_cluster`"),
            (
                r#"{"bridge_cluster":"b","bridge_authority":"","routes":[]}"#,
                "`bridge_authority`",
            ),
            (
                r#"{"bridge_cluster":"b","bridge_timeout_ms":0,"routes":[]}"#,
                "`bridge_timeout_ms`",
            ),
            (
                r#"{"bridge_cluster":"b","bridge_timeout_ms":4294967296,"routes":[]}"#,
                "`bridge_timeout_ms`",
            ),
            (
                r#"{"bridge_cluster":"b","max_body_bytes":0,"routes":[]}"#,
                "`max_body_bytes`",
            ),
            (
                r#"{"bridge_cluster":"b","api_prefix":"api","routes":[]}"#,
                "`api_prefix`",
            ),
            (
                r#"{"bridge_cluster":"b","routes":[{"prefix":"/ok"},{"prefix":"orders"}]}"#,
                "`routes[1].prefix`",
            ),
            (
                r#"{"bridge_cluster":"b","routes":[{"prefix":"/o?x=1"}]}"#,
                "`routes[0].prefix`",
            ),
            (
                r#"{"bridge_cluster":"b","routes":[{"prefix":"/o","methods":["GET",""]}]}"#,
                "`routes[0].methods[1]`",
            ),
            (
                r#"{"bridge_cluster":"b","routes":[{"prefix":"/o","methods":["GE T"]}]}"#,
                "`routes[0].methods[0]`",
            ),
        ];
        for (json, key) in cases {
            let e = parse_err(json);
            assert!(e.contains(key), "{json}: {e}");
        }
    }

    #[test]
    fn display_mentions_the_filter() {
        let e = parse(r#"{"routes":[]}"#).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("invalid openhqm filter configuration: "));
    }

    fn with_tracing(tracing: &str) -> String {
        format!(r#"{{"bridge_cluster":"b","routes":[],"tracing":{tracing}}}"#)
    }

    #[test]
    fn tracing_is_off_unless_configured() {
        assert_eq!(
            parse(r#"{"bridge_cluster":"b","routes":[]}"#)
                .unwrap()
                .tracing,
            None
        );
        let c = parse(r#"{"bridge_cluster":"b","routes":[],"tracing":null}"#).unwrap();
        assert_eq!(c.tracing, None);
    }

    #[test]
    fn tracing_defaults() {
        let t = parse(&with_tracing(r#"{"otlp_cluster":"otel"}"#))
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(
            t,
            TracingConfig {
                otlp_cluster: "otel".into(),
                otlp_path: "/v1/traces".into(),
                authority: "otel".into(),
                service_name: "openhqm-filter".into(),
                sample_ratio: 1.0,
                timeout_ms: 1000,
                max_batch: 256,
                flush_ms: 1000,
            }
        );
        assert_eq!(t.buffer_limit(), 1024);
    }

    #[test]
    fn tracing_with_every_key() {
        let t = parse(&with_tracing(
            r#"{"otlp_cluster":"otel","otlp_path":"/otlp/v1/traces","authority":"collector:4318",
                "service_name":"edge","sample_ratio":0.25,"timeout_ms":300,"max_batch":10,
                "flush_ms":200}"#,
        ))
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(t.otlp_path, "/otlp/v1/traces");
        assert_eq!(t.authority, "collector:4318");
        assert_eq!(t.service_name, "edge");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!((t.timeout_ms, t.max_batch, t.flush_ms), (300, 10, 200));
        // Integers are ratios too; null is the default.
        let t = parse(&with_tracing(
            r#"{"otlp_cluster":"o","sample_ratio":0,"authority":null,"max_batch":null}"#,
        ))
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(t.sample_ratio, 0.0);
        assert_eq!((t.authority.as_str(), t.max_batch), ("o", 256));
    }

    #[test]
    fn tracing_errors_name_the_key() {
        let cases = [
            (r#"{}"#, "`tracing.otlp_cluster` is required"),
            (
                r#"{"otlp_cluster":null}"#,
                "`tracing.otlp_cluster` is required",
            ),
            (r#"{"otlp_cluster":""}"#, "`tracing.otlp_cluster`"),
            (r#"{"otlp_cluster":7}"#, "`tracing.otlp_cluster`"),
            (
                r#"{"otlp_cluster":"o","otlp_path":"v1/traces"}"#,
                "`tracing.otlp_path`",
            ),
            (
                r#"{"otlp_cluster":"o","authority":" "}"#,
                "`tracing.authority`",
            ),
            (
                r#"{"otlp_cluster":"o","authority":1}"#,
                "`tracing.authority`",
            ),
            (
                r#"{"otlp_cluster":"o","service_name":""}"#,
                "`tracing.service_name`",
            ),
            (
                r#"{"otlp_cluster":"o","sample_ratio":1.5}"#,
                "`tracing.sample_ratio`",
            ),
            (
                r#"{"otlp_cluster":"o","sample_ratio":-0.1}"#,
                "`tracing.sample_ratio`",
            ),
            (
                r#"{"otlp_cluster":"o","sample_ratio":"all"}"#,
                "`tracing.sample_ratio`",
            ),
            (
                r#"{"otlp_cluster":"o","timeout_ms":0}"#,
                "`tracing.timeout_ms`",
            ),
            (
                r#"{"otlp_cluster":"o","timeout_ms":4294967296}"#,
                "`tracing.timeout_ms`",
            ),
            (
                r#"{"otlp_cluster":"o","timeout_ms":"1s"}"#,
                "`tracing.timeout_ms`",
            ),
            (
                r#"{"otlp_cluster":"o","max_batch":0}"#,
                "`tracing.max_batch`",
            ),
            (
                r#"{"otlp_cluster":"o","max_batch":4097}"#,
                "`tracing.max_batch`",
            ),
            (
                r#"{"otlp_cluster":"o","max_batch":-1}"#,
                "`tracing.max_batch`",
            ),
            (
                r#"{"otlp_cluster":"o","flush_ms":99}"#,
                "`tracing.flush_ms`",
            ),
            (
                r#"{"otlp_cluster":"o","flush_ms":4294967296}"#,
                "`tracing.flush_ms`",
            ),
            (
                r#"{"otlp_cluster":"o","sample":0.5}"#,
                "unknown field `sample`",
            ),
            (
                r#"{"otlp_cluster":"o","flush_ms":1.5}"#,
                "`tracing.flush_ms`",
            ),
            (r#""otel""#, "`tracing` must be a JSON object"),
            (r#"[]"#, "`tracing` must be a JSON object"),
        ];
        for (tracing, expected) in cases {
            let e = parse_err(&with_tracing(tracing));
            assert!(e.contains(expected), "{tracing}: {e}");
            if expected.starts_with("unknown") {
                assert!(e.contains("`tracing`: "), "{tracing}: {e}");
            }
        }
    }

    /// Every plugin configuration the repository ships (the standalone Envoy
    /// config, the Istio manifests) parses with this parser, so the
    /// manifests cannot drift from the code.
    #[test]
    fn shipped_plugin_configs_parse() {
        fn collect(v: &yaml_serde::Value, found: &mut Vec<String>) {
            match v {
                yaml_serde::Value::Mapping(m) => {
                    for (k, child) in m {
                        if k.as_str() == Some("pluginConfig") {
                            found.push(serde_json::to_string(child).unwrap());
                        } else {
                            collect(child, found);
                        }
                    }
                }
                yaml_serde::Value::Sequence(items) => items.iter().for_each(|i| collect(i, found)),
                yaml_serde::Value::String(s) if s.contains("\"bridge_cluster\"") => {
                    found.push(s.clone())
                }
                _ => {}
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = [
            "envoy/envoy.yaml",
            "istio/wasmplugin.yaml",
            "istio/envoyfilter.yaml",
        ];
        for file in files {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let mut found = Vec::new();
            for doc in yaml_serde::Deserializer::from_str(&text) {
                collect(&yaml_serde::Value::deserialize(doc).unwrap(), &mut found);
            }
            assert!(!found.is_empty(), "{file}: no plugin configuration found");
            for config in found {
                Config::parse(config.as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}
