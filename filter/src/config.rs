//! The filter's plugin configuration: the JSON in Envoy's wasm filter
//! `configuration`, parsed strictly (unknown keys are errors) and validated.
//! Every error message names the offending key.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::routes::{Route, RouteTable};

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

/// The validated plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Capture routes, first match wins.
    pub routes: RouteTable,
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
    routes: Vec<RawRoute>,
}

/// One route as written. New match kinds and per-route modes become new
/// optional fields here and new variants in `routes::PathMatch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
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

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.into_iter().enumerate() {
            routes.push(raw.validate(i)?);
        }
        Ok(Config {
            bridge_cluster: self.bridge_cluster,
            bridge_authority: self.bridge_authority,
            bridge_timeout_ms: self.bridge_timeout_ms,
            max_body_bytes: self.max_body_bytes,
            retry_after_seconds: self.retry_after_seconds,
            api_prefix,
            max_wait_ms: self.max_wait_ms,
            routes: RouteTable::new(routes),
        })
    }
}

impl RawRoute {
    fn validate(self, index: usize) -> Result<Route, ConfigError> {
        if !self.prefix.starts_with('/') {
            return err(format!(
                "`routes[{index}].prefix` must start with '/' (got {:?})",
                self.prefix
            ));
        }
        if self.prefix.contains('?') {
            return err(format!(
                "`routes[{index}].prefix` must not contain '?': the query is not matched (got {:?})",
                self.prefix
            ));
        }
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
        Ok(Route::prefix(self.prefix, methods))
    }
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
}
