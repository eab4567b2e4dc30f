//! `proxy` and `routing`: the backends a worker calls, how it authenticates
//! and paces them, and the checks of those settings.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    Bearer,
    Basic,
    ApiKey,
    Custom,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL (captured requests append their path) or full URL (submit
    /// API messages); may be left out when `instances` is given.
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Seconds; falls back to `worker.timeout_seconds`.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth_type: Option<AuthType>,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub auth_password: Option<String>,
    /// `auth_header` is the spelling of the original's queue-to-http example.
    #[serde(default, alias = "auth_header")]
    pub auth_header_name: Option<String>,
    /// Several instances of one backend (base URLs like `url`): a message's
    /// partition key always reaches the same instance (rendezvous hashing),
    /// for apps that keep session state; messages without a key rotate.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Calls in flight to this endpoint at once, per worker process.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Calls started per second, per worker process.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Stop calling a failing backend for a while; probe before resuming.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Retry settings for this endpoint; unset keys use `worker.*`.
    #[serde(default)]
    pub retry: RetryOverride,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    /// Calls that may start at once after a quiet spell.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker (0: only the ratio counts).
    pub failure_threshold: u32,
    /// Share of failed calls in the window that opens it (unset: off).
    pub error_ratio: Option<f64>,
    /// Calls in the window before the ratio is trusted.
    pub min_requests: u32,
    pub window_seconds: f64,
    /// How long it stays open before letting probes through.
    pub open_seconds: f64,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            error_ratio: None,
            min_requests: 20,
            window_seconds: 30.0,
            open_seconds: 10.0,
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryOverride {
    pub max_retries: Option<u32>,
    pub retry_delay_base: Option<f64>,
    pub retry_delay_max: Option<f64>,
    pub retry_on_status: Option<Vec<String>>,
    pub no_retry_on_status: Option<Vec<String>>,
}

/// The routing table (the original's routing.yaml): which endpoint each
/// message goes to and how its payload is reshaped on the way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    pub enabled: bool,
    /// A routing.yaml file.
    pub config_path: Option<PathBuf>,
    /// The same table inline (instead of `config_path`).
    pub config: Option<Value>,
}

pub(super) fn default_method() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub enabled: bool,
    /// A name from `endpoints`, or a URL.
    pub default_endpoint: Option<String>,
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// For `POST /api/v1/submit` messages: the client headers passed on ("*" = all).
    pub forward_headers: Vec<String>,
    /// Never passed on to the backend.
    pub strip_headers: Vec<String>,
    pub max_response_size: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            default_endpoint: None,
            endpoints: BTreeMap::new(),
            forward_headers: vec!["Content-Type".into(), "Accept".into(), "User-Agent".into()],
            strip_headers: vec!["Host".into(), "Connection".into()],
            max_response_size: 10 * 1024 * 1024,
        }
    }
}

pub(super) fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    Ok(())
}

pub(super) fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("`{method}` is not an HTTP method"));
    }
    Ok(())
}

/// Instances, limits, breaker and retry overrides of one endpoint.
pub(super) fn check_endpoint_flow(ep: &EndpointConfig, key: &str) -> Result<(), ConfigError> {
    for (i, url) in ep.instances.iter().enumerate() {
        check_url(url).map_err(|m| ConfigError::new(format!("{key}.instances.{i}"), m))?;
    }
    if ep.max_concurrency == Some(0) {
        return Err(ConfigError::new(
            format!("{key}.max_concurrency"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    if let Some(r) = &ep.rate_limit {
        if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
            return Err(ConfigError::new(
                format!("{key}.rate_limit.requests_per_second"),
                "must be a number greater than 0",
            ));
        }
        if r.burst == 0 {
            return Err(ConfigError::new(
                format!("{key}.rate_limit.burst"),
                "must be at least 1",
            ));
        }
    }
    if let Some(b) = &ep.circuit_breaker {
        let k = format!("{key}.circuit_breaker");
        if b.failure_threshold == 0 && b.error_ratio.is_none() {
            return Err(ConfigError::new(
                format!("{k}.failure_threshold"),
                "is 0 and error_ratio is unset: the breaker could never open",
            ));
        }
        if let Some(r) = b.error_ratio {
            if !(r > 0.0 && r <= 1.0) {
                return Err(ConfigError::new(
                    format!("{k}.error_ratio"),
                    "must be in (0, 1]",
                ));
            }
        }
        for (name, v) in [
            ("window_seconds", b.window_seconds),
            ("open_seconds", b.open_seconds),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::new(
                    format!("{k}.{name}"),
                    "must be a number of seconds > 0",
                ));
            }
        }
        if b.half_open_probes == 0 {
            return Err(ConfigError::new(
                format!("{k}.half_open_probes"),
                "must be at least 1",
            ));
        }
    }
    let r = &ep.retry;
    for (name, v) in [
        ("retry_delay_base", r.retry_delay_base),
        ("retry_delay_max", r.retry_delay_max),
    ] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(ConfigError::new(
                format!("{key}.retry.{name}"),
                "must be a number of seconds >= 0",
            ));
        }
    }
    for (name, v) in [
        ("retry_on_status", &r.retry_on_status),
        ("no_retry_on_status", &r.no_retry_on_status),
    ] {
        if let Some(list) = v {
            StatusSet::parse(list)
                .map_err(|m| ConfigError::new(format!("{key}.retry.{name}"), m))?;
        }
    }
    Ok(())
}

pub(super) fn check_auth(ep: &EndpointConfig) -> Result<(), String> {
    match ep.auth_type {
        None => Ok(()),
        Some(AuthType::Bearer) | Some(AuthType::ApiKey) if ep.auth_token.is_none() => {
            Err("needs auth_token".into())
        }
        Some(AuthType::Basic) if ep.auth_username.is_none() || ep.auth_password.is_none() => {
            Err("basic auth needs auth_username and auth_password".into())
        }
        Some(AuthType::Custom) if ep.auth_token.is_none() || ep.auth_header_name.is_none() => {
            Err("custom auth needs auth_token and auth_header_name".into())
        }
        Some(_) => Ok(()),
    }
}
