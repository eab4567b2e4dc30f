//! Configuration: one YAML file plus `OPENHQM_<SECTION>__<KEY>` environment
//! overrides, with the original OpenHQM's key names so existing manifests keep
//! working. `${VAR}` and `${VAR:-default}` are expanded in string values.
//!
//! Every error names the offending key, so a bad manifest stops the process
//! before it binds a port with a message an operator can act on.
//!
//! This file is the whole configuration (`Config`), how it is loaded and how
//! it is checked as a whole; each section's types live in a module of the
//! section's name (`server`, `queue`, `worker`, `proxy`, `cache`,
//! `monitoring`, `callbacks`, `partitioning`), reading the sources in `load`,
//! what the original's files need in `original` and `infer`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

mod cache;
mod callbacks;
mod infer;
mod load;
mod monitoring;
mod original;
mod partitioning;
mod proxy;
mod queue;
mod server;
mod status_set;
mod worker;
pub use cache::*;
pub use callbacks::*;
pub use infer::{backend_line, redact_url};
use load::*;
pub use monitoring::*;
pub use partitioning::{PartitionStrategy, PartitioningConfig};
pub use proxy::*;
pub use queue::*;
pub use server::*;
pub use status_set::StatusSet;
pub use worker::*;

/// The environment prefix for overrides (`OPENHQM_QUEUE__TYPE=redis`).
pub const ENV_PREFIX: &str = "OPENHQM_";
/// Names the config file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "OPENHQM_CONFIG";

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub proxy: ProxyConfig,
    pub cache: CacheConfig,
    pub monitoring: MonitoringConfig,
    pub callbacks: CallbacksConfig,
    pub routing: RoutingConfig,
    /// The original's session affinity settings (config/partitioning.rs).
    pub partitioning: PartitioningConfig,
    /// What loading decided on its own (inferred backends, ignored keys),
    /// logged once logging is up (`startup::log_startup_notes`).
    #[serde(skip)]
    pub notes: StartupNotes,
    /// The dotted keys the file or the environment set (`worker.admin_port`),
    /// for settings whose default behaves differently from an explicit value.
    #[serde(skip)]
    pub explicit: BTreeSet<String>,
}

impl Config {
    /// Was `key` (dotted, e.g. `worker.admin_port`) set by the file or an
    /// `OPENHQM_*` variable, rather than left at its default?
    pub fn is_set(&self, key: &str) -> bool {
        self.explicit.contains(key)
    }
}

/// Every dotted key path present in a configuration tree.
fn key_paths(tree: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Mapping(map) = tree {
        for (k, v) in map {
            if let Value::String(k) = k {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(v, &path, out);
                out.insert(path);
            }
        }
    }
}

/// Start-up remarks gathered while loading: printed, never fatal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupNotes {
    /// Decisions taken for the operator (`queue.type = redis (from ...)`).
    pub inferred: Vec<String>,
    /// Keys accepted but without effect here, each with why.
    pub ignored: Vec<String>,
}

impl Config {
    /// Load from an optional file plus the process environment, then validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file_text = match path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new("", format!("cannot read config file {}: {e}", p.display()))
            })?),
            None => None,
        };
        Self::from_sources(file_text.as_deref(), &env)
    }

    /// Load from YAML text (if any) and `(name, value)` environment pairs.
    pub fn from_sources(
        yaml: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut tree = match yaml {
            Some(text) if !text.trim().is_empty() => yaml_serde::from_str::<Value>(text)
                .map_err(|e| ConfigError::new("", format!("config file is not valid YAML: {e}")))?,
            _ => Value::Mapping(Mapping::new()),
        };
        if !tree.is_mapping() {
            return Err(ConfigError::new(
                "",
                "config file must be a YAML mapping of sections",
            ));
        }
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        expand_vars(&mut tree, "", &lookup)?;
        let mut env_keys = BTreeSet::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue; // e.g. OPENHQM_CONFIG: not an override
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(|s| s.is_empty()) {
                return Err(ConfigError::new(
                    name.clone(),
                    "empty section or key in variable name",
                ));
            }
            let mut value = typed_env_value(raw);
            expand_vars(&mut value, &path.join("."), &lookup)?;
            set_path(&mut tree, &path, value).map_err(|m| ConfigError::new(name.clone(), m))?;
            env_keys.insert(path);
        }
        let renamed = original::normalize(&mut tree)?;
        // What the operator set, before inference adds keys of its own.
        let mut explicit = BTreeSet::new();
        key_paths(&tree, "", &mut explicit);
        let inferred = infer::infer_backends(&mut tree, &env_keys)?;
        let mut config = deserialize_lenient(tree, env, &env_keys)?;
        config.explicit = explicit;
        config.notes.inferred.extend(inferred.notes);
        config.notes.ignored.extend(renamed);
        config.notes.ignored.extend(inferred.ignored);
        config.validate()?;
        let later = original::notes(&config);
        config.notes.ignored.extend(later);
        Ok(config)
    }

    /// Checks that serde cannot express: cross-field rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::server::Limits::from_config(&self.server)?;
        let q = &self.queue;
        for (key, name) in [
            ("queue.request_queue_name", &q.request_queue_name),
            ("queue.response_queue_name", &q.response_queue_name),
            ("queue.dlq_name", &q.dlq_name),
        ] {
            if name.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if q.dlq_name == q.request_queue_name {
            return Err(ConfigError::new(
                "queue.dlq_name",
                "must differ from queue.request_queue_name",
            ));
        }
        if q.kind == QueueType::Embedded && q.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "queue.data_dir",
                "must name a directory for the embedded queue",
            ));
        }
        if q.max_message_bytes == 0 {
            return Err(ConfigError::new(
                "queue.max_message_bytes",
                "must be greater than 0",
            ));
        }
        if self
            .server
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::new(
                "server.admin_token",
                "must not be empty (leave it unset to turn the admin API off)",
            ));
        }
        self.server.cors.validate()?;
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be greater than 0",
            ));
        }
        let w = &self.worker;
        if w.batch_size == 0 {
            return Err(ConfigError::new("worker.batch_size", "must be at least 1"));
        }
        if w.concurrency == 0 {
            return Err(ConfigError::new("worker.concurrency", "must be at least 1"));
        }
        if w.timeout_seconds == 0 {
            return Err(ConfigError::new(
                "worker.timeout_seconds",
                "must be at least 1",
            ));
        }
        if w.lease_seconds == 0 {
            return Err(ConfigError::new(
                "worker.lease_seconds",
                "must be at least 1",
            ));
        }
        if !(w.retry_delay_base.is_finite() && w.retry_delay_base >= 0.0) {
            return Err(ConfigError::new(
                "worker.retry_delay_base",
                "must be a number of seconds >= 0",
            ));
        }
        if !(w.retry_delay_max.is_finite() && w.retry_delay_max >= w.retry_delay_base) {
            return Err(ConfigError::new(
                "worker.retry_delay_max",
                "must be a number of seconds >= worker.retry_delay_base",
            ));
        }
        if w.command.first().is_some_and(|p| p.trim().is_empty()) {
            return Err(ConfigError::new(
                "worker.command",
                "the first item must name the program to run",
            ));
        }
        if w.command_processes == 0 {
            return Err(ConfigError::new(
                "worker.command_processes",
                "must be at least 1",
            ));
        }
        if w.command_timeout_seconds == Some(0) {
            return Err(ConfigError::new(
                "worker.command_timeout_seconds",
                "must be at least 1",
            ));
        }
        StatusSet::parse(&w.retry_on_status)
            .map_err(|m| ConfigError::new("worker.retry_on_status", m))?;
        StatusSet::parse(&w.no_retry_on_status)
            .map_err(|m| ConfigError::new("worker.no_retry_on_status", m))?;
        if self.cache.ttl_seconds == 0 {
            return Err(ConfigError::new("cache.ttl_seconds", "must be at least 1"));
        }
        if self.cache.original_keys && self.cache.kind != CacheType::Redis {
            return Err(ConfigError::new(
                "cache.original_keys",
                format!(
                    "the original's result keys live in Redis; needs cache.type: redis (is {})",
                    format!("{:?}", self.cache.kind).to_lowercase()
                ),
            ));
        }
        for (name, ep) in &self.proxy.endpoints {
            let key = format!("proxy.endpoints.{name}");
            check_endpoint_flow(ep, &key)?;
            if ep.instances.is_empty() || !ep.url.is_empty() {
                check_url(&ep.url).map_err(|m| ConfigError::new(format!("{key}.url"), m))?;
            }
            check_method(&ep.method).map_err(|m| ConfigError::new(format!("{key}.method"), m))?;
            if ep.timeout == Some(0) {
                return Err(ConfigError::new(
                    format!("{key}.timeout"),
                    "must be at least 1 second",
                ));
            }
            check_auth(ep).map_err(|m| ConfigError::new(format!("{key}.auth_type"), m))?;
        }
        // Proxy mode without a default is allowed (as the original): each
        // message then names its endpoint or matches a route.
        if self.proxy.enabled {
            match &self.proxy.default_endpoint {
                None => {}
                Some(d) if !self.proxy.endpoints.contains_key(d) => {
                    check_url(d).map_err(|m| {
                        ConfigError::new(
                            "proxy.default_endpoint",
                            format!(
                                "`{d}` is neither a name in proxy.endpoints nor a valid URL ({m})"
                            ),
                        )
                    })?;
                }
                Some(_) => {}
            }
        }
        self.callbacks.validate()?;
        self.partitioning.validate()?;
        if self.routing.enabled
            && self.routing.config_path.is_none()
            && self.routing.config.is_none()
        {
            return Err(ConfigError::new(
                "routing.config_path",
                "routing is enabled: give a routing.yaml path (or the table inline in routing.config)",
            ));
        }
        if self.routing.config_path.is_some() && self.routing.config.is_some() {
            return Err(ConfigError::new(
                "routing.config",
                "give the table either inline or in routing.config_path, not both",
            ));
        }
        let level = self.monitoring.log_level.to_ascii_lowercase();
        if ![
            "trace", "debug", "info", "warn", "warning", "error", "critical",
        ]
        .contains(&level.as_str())
        {
            return Err(ConfigError::new(
                "monitoring.log_level",
                "must be one of TRACE, DEBUG, INFO, WARN, ERROR",
            ));
        }
        if !(0.0..=1.0).contains(&self.monitoring.trace_sample_ratio) {
            return Err(ConfigError::new(
                "monitoring.trace_sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(url) = &self.monitoring.otlp_endpoint {
            parse_otlp_endpoint(url, true)
                .map_err(|e| ConfigError::new("monitoring.otlp_endpoint", e))?;
        }
        Ok(())
    }

    /// Whether workers publish final outcomes to the response queue.
    pub fn publishes_responses(&self) -> bool {
        self.worker
            .publish_responses
            .unwrap_or(self.queue.kind != QueueType::Embedded)
    }

    /// The endpoint a message is sent to: a named one, or the default.
    pub fn resolve_endpoint(&self, name: Option<&str>) -> Option<EndpointConfig> {
        let name = name.or(self.proxy.default_endpoint.as_deref())?;
        if let Some(ep) = self.proxy.endpoints.get(name) {
            return Some(ep.clone());
        }
        // Only the configured default may be a bare URL: a message never picks
        // an arbitrary URL.
        if Some(name) == self.proxy.default_endpoint.as_deref() && check_url(name).is_ok() {
            return Some(EndpointConfig {
                url: name.to_string(),
                method: default_method(),
                timeout: None,
                headers: BTreeMap::new(),
                auth_type: None,
                auth_token: None,
                auth_username: None,
                auth_password: None,
                auth_header_name: None,
                instances: Vec::new(),
                max_concurrency: None,
                rate_limit: None,
                circuit_breaker: None,
                retry: RetryOverride::default(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_original;
