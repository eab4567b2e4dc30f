//! Configuration: one YAML file plus `OPENHQM_<SECTION>__<KEY>` environment
//! overrides, with the original OpenHQM's key names so existing manifests keep
//! working. `${VAR}` and `${VAR:-default}` are expanded in string values.
//!
//! Every error names the offending key, so a bad manifest stops the process
//! before it binds a port with a message an operator can act on.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

mod infer;
mod original;
mod partitioning;
pub use infer::{backend_line, redact_url};
pub use partitioning::{PartitionStrategy, PartitioningConfig};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Largest request body the bridge accepts (submit and capture).
    pub max_body_bytes: usize,
    /// Seconds a client is told to wait (`Retry-After`) on 202 and 503.
    pub retry_after_seconds: u64,
    /// Longest RFC 7240 `Prefer: wait=N` the bridge honours (long-poll).
    pub max_wait_seconds: u64,
    /// Bearer token for the bridge's `/admin` API (dead-letter tooling).
    /// Unset: the admin API is off (every `/admin` route answers 404).
    pub admin_token: Option<String>,
    /// Accepted for compatibility with the original's manifests; unused.
    pub workers: Option<u32>,
    /// Accepted for compatibility with the original's manifests; unused.
    pub reload: Option<bool>,
    /// Browser origins allowed to call the API (off by default).
    pub cors: crate::cors::CorsConfig,
    // -- Connection limits of every listener (core::server, docs/operations.md).
    /// Longest wait for a complete request header block, from accept or
    /// from its first byte (nginx: `client_header_timeout`).
    pub header_read_timeout_seconds: f64,
    /// Longest quiet time on a keep-alive connection between requests
    /// (nginx: `keepalive_timeout`).
    pub idle_timeout_seconds: f64,
    /// Longest pause between two reads of a request body; then 408
    /// (nginx: `client_body_timeout`).
    pub body_read_timeout_seconds: f64,
    /// Open connections per listener; more are answered 503 and closed.
    /// Unset: half the process's open-file limit (at least 64).
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            max_body_bytes: 10 * 1024 * 1024,
            retry_after_seconds: 1,
            max_wait_seconds: 30,
            admin_token: None,
            workers: None,
            reload: None,
            cors: crate::cors::CorsConfig::default(),
            header_read_timeout_seconds: 10.0,
            idle_timeout_seconds: 75.0,
            body_read_timeout_seconds: 60.0,
            max_connections: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Embedded,
    Redis,
    Kafka,
    Sqs,
    AzureEventhubs,
    GcpPubsub,
    Mqtt,
    Custom,
}

impl QueueType {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueType::Embedded => "embedded",
            QueueType::Redis => "redis",
            QueueType::Kafka => "kafka",
            QueueType::Sqs => "sqs",
            QueueType::AzureEventhubs => "azure_eventhubs",
            QueueType::GcpPubsub => "gcp_pubsub",
            QueueType::Mqtt => "mqtt",
            QueueType::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(rename = "type")]
    pub kind: QueueType,
    /// Where the embedded queue and result store keep their files.
    pub data_dir: PathBuf,
    pub request_queue_name: String,
    pub response_queue_name: String,
    pub dlq_name: String,
    /// Largest message body a backend accepts; larger ones are refused.
    pub max_message_bytes: usize,
    pub redis_url: String,
    /// Redis Streams consumer group shared by the worker fleet.
    pub redis_consumer_group: String,
    /// This process's consumer name in the group; default host-pid-random.
    /// A stable name (a StatefulSet pod name) lets a restarted worker take
    /// back its own pending messages at once instead of after the lease.
    pub redis_consumer_name: Option<String>,
    /// MQTT shared-subscription group (`$share/<group>/<topic>`).
    pub mqtt_shared_group: String,
    // The original's keys for the other backends, accepted so manifests parse;
    // each backend reads its own when it is built in.
    pub kafka_bootstrap_servers: Option<String>,
    pub kafka_consumer_group: Option<String>,
    pub kafka_topics: Option<Vec<String>>,
    pub sqs_region: Option<String>,
    pub sqs_queue_url: Option<String>,
    pub azure_eventhubs_connection_string: Option<String>,
    pub azure_eventhubs_name: Option<String>,
    pub azure_eventhubs_consumer_group: Option<String>,
    pub azure_eventhubs_checkpoint_store: Option<String>,
    pub gcp_project_id: Option<String>,
    pub gcp_credentials_path: Option<String>,
    pub gcp_max_messages: Option<u32>,
    pub mqtt_broker_host: Option<String>,
    pub mqtt_broker_port: Option<u16>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_qos: Option<u8>,
    pub mqtt_client_id: Option<String>,
    pub custom_module: Option<String>,
    pub custom_class: Option<String>,
    pub custom_config: Option<Value>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueType::Embedded,
            data_dir: PathBuf::from("data"),
            request_queue_name: "openhqm-requests".into(),
            response_queue_name: "openhqm-responses".into(),
            dlq_name: "openhqm-dlq".into(),
            max_message_bytes: 16 * 1024 * 1024,
            redis_url: "redis://localhost:6379".into(),
            redis_consumer_group: "openhqm-workers".into(),
            redis_consumer_name: None,
            mqtt_shared_group: "openhqm-workers".into(),
            kafka_bootstrap_servers: None,
            kafka_consumer_group: None,
            kafka_topics: None,
            sqs_region: None,
            sqs_queue_url: None,
            azure_eventhubs_connection_string: None,
            azure_eventhubs_name: None,
            azure_eventhubs_consumer_group: None,
            azure_eventhubs_checkpoint_store: None,
            gcp_project_id: None,
            gcp_credentials_path: None,
            gcp_max_messages: None,
            mqtt_broker_host: None,
            mqtt_broker_port: None,
            mqtt_username: None,
            mqtt_password: None,
            mqtt_qos: None,
            mqtt_client_id: None,
            custom_module: None,
            custom_class: None,
            custom_config: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Accepted for compatibility (the original ran N workers per process);
    /// here scale with processes (KEDA) and `concurrency`.
    pub count: Option<u32>,
    /// Messages fetched from the queue per receive call.
    pub batch_size: usize,
    /// Messages processed at once by one worker process.
    pub concurrency: usize,
    /// Default timeout of one backend call, seconds.
    pub timeout_seconds: u64,
    /// Retries after the first attempt; then the message is dead-lettered.
    pub max_retries: u32,
    /// Backoff base and cap, seconds (exponential with full jitter).
    pub retry_delay_base: f64,
    pub retry_delay_max: f64,
    /// Backend statuses that are retried: numbers or classes like "5xx".
    pub retry_on_status: Vec<String>,
    /// Exceptions to `retry_on_status`.
    pub no_retry_on_status: Vec<String>,
    /// How long a received message is reserved for this worker before it is
    /// redelivered to another one; extended while the work goes on.
    pub lease_seconds: u64,
    /// On SIGTERM, how long in-flight work may take before it is handed back.
    pub shutdown_grace_seconds: u64,
    /// Publish every final outcome to `queue.response_queue_name` too (the
    /// original's response queue), for other systems to consume. Default:
    /// on for networked backends, off for `embedded`, where nothing else
    /// would read them and the file would only grow.
    pub publish_responses: Option<bool>,
    /// A program (argv) the worker runs as a pool of long-lived children
    /// speaking JSON lines (docs/processors.md); used when `proxy.enabled`
    /// is false. Empty = the built-in example processor.
    pub command: Vec<String>,
    /// How many children run `command` at once; each handles one message
    /// at a time.
    pub command_processes: usize,
    /// How long a child may take over one message before it is killed and
    /// restarted (the attempt is retried). Default: `timeout_seconds`.
    pub command_timeout_seconds: Option<u64>,
    /// Longest backend `Retry-After` honoured, seconds; longer asks are
    /// capped (a misbehaving backend must not park messages for days).
    pub retry_after_max_seconds: u64,
    /// What the request queue carries: `envelope` (OpenHQM messages only;
    /// anything else is dead-lettered), `raw` (every message is foreign: the
    /// value is the body, attributes become headers, the key the partition
    /// key) or `auto` (envelopes where they decode, foreign otherwise).
    pub message_format: MessageFormat,
    /// The worker's admin listener (`/metrics`, `/health/live`,
    /// `/health/ready`); loopback by default. Port 0 turns it off.
    pub admin_host: String,
    pub admin_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    #[default]
    Envelope,
    Auto,
    Raw,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            count: None,
            batch_size: 10,
            concurrency: 10,
            timeout_seconds: 300,
            max_retries: 3,
            retry_delay_base: 1.0,
            retry_delay_max: 60.0,
            retry_on_status: vec!["408".into(), "429".into(), "5xx".into()],
            no_retry_on_status: vec!["501".into()],
            lease_seconds: 30,
            shutdown_grace_seconds: 30,
            publish_responses: None,
            command: Vec::new(),
            command_processes: 1,
            command_timeout_seconds: None,
            retry_after_max_seconds: 300,
            message_format: MessageFormat::Envelope,
            admin_host: "127.0.0.1".into(),
            admin_port: 8001,
        }
    }
}

impl WorkerConfig {
    /// The per-message timeout of `worker.command`.
    pub fn command_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.command_timeout_seconds.unwrap_or(self.timeout_seconds))
    }
}

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

fn default_method() -> String {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    Embedded,
    /// The original's in-process cache; here an alias of `embedded`, because
    /// bridge and worker are separate processes that must share results.
    Memory,
    Redis,
    /// A store registered with `registry::register_result_store`.
    Custom,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(rename = "type")]
    pub kind: CacheType,
    pub redis_url: String,
    /// How long a request's status and result are kept.
    pub ttl_seconds: u64,
    pub max_connections: u32,
    /// Prefix of the Redis keys and channel the result store uses.
    pub key_prefix: String,
    /// With `type: custom`: the registered name of the store.
    pub custom_class: Option<String>,
    /// Redis only: also write each request's status and result where the
    /// original OpenHQM's API reads them (`req:{id}:meta`, `resp:{id}`), for
    /// a rolling migration (docs/migration.md).
    pub original_keys: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            kind: CacheType::Embedded,
            redis_url: "redis://localhost:6379".into(),
            ttl_seconds: 3600,
            max_connections: 10,
            key_prefix: "openhqm".into(),
            custom_class: None,
            original_keys: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    pub metrics_enabled: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    /// OTLP/HTTP collector for traces, e.g. `http://127.0.0.1:4318` or
    /// `https://collector:4318` (spans go to `<endpoint>/v1/traces`). Unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// none of them: no traces. The other `OTEL_*` variables are in
    /// docs/operations.md#traces.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded (0.0 to 1.0); a request that arrives
    /// with a `traceparent` follows its sampled flag instead. Ignored when
    /// `OTEL_TRACES_SAMPLER` is set.
    pub trace_sample_ratio: f64,
    /// `service.name` of the spans; default the program's name (or `OTEL_SERVICE_NAME`).
    pub service_name: Option<String>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            metrics_enabled: true,
            log_level: "INFO".into(),
            log_format: LogFormat::Json,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            service_name: None,
        }
    }
}

/// Completion callbacks (Standard Webhooks): a client names
/// `metadata.callback_url` on submit and the worker POSTs the final outcome
/// there, signed. Only hosts on the allow-list are ever called.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// Hosts a callback may go to: exact names, or `*.example.com` for any
    /// subdomain of example.com. Empty = callbacks disabled.
    pub allowed_hosts: Vec<String>,
    /// `whsec_` + base64 of the signing key (as Standard Webhooks); required
    /// when `allowed_hosts` is not empty.
    pub secret: Option<String>,
    /// Delivery attempts per outcome (the first included).
    pub max_attempts: u32,
    /// Timeout of one delivery attempt, seconds.
    pub timeout_seconds: u64,
    /// Backoff base and cap between attempts, seconds (exponential, full jitter).
    pub retry_delay_base: f64,
    pub retry_delay_max: f64,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            secret: None,
            max_attempts: 5,
            timeout_seconds: 10,
            retry_delay_base: 0.5,
            retry_delay_max: 30.0,
        }
    }
}

/// The prefix of a Standard Webhooks secret.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

impl CallbacksConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }

    /// The signing key: the secret without `whsec_`, base64-decoded.
    pub fn secret_key(&self) -> Result<Vec<u8>, String> {
        let secret = self
            .secret
            .as_deref()
            .ok_or("is required when callbacks.allowed_hosts is set")?;
        let b64 = secret
            .strip_prefix(WEBHOOK_SECRET_PREFIX)
            .ok_or("must be `whsec_` followed by the base64 of the key (Standard Webhooks)")?;
        let key = crate::model::decode_base64(b64)
            .map_err(|_| "the part after `whsec_` is not valid base64".to_string())?;
        if key.len() < 24 {
            return Err(format!(
                "the key is {} bytes; use at least 24 random bytes",
                key.len()
            ));
        }
        Ok(key)
    }

    /// Whether a (lowercase) host is on the allow-list.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        self.allowed_hosts.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == pattern,
            }
        })
    }

    /// May a callback go to `url`? http or https, no user info, and a host
    /// (without port) on the allow-list.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        if !self.enabled() {
            return Err(
                "completion callbacks are disabled on this server (callbacks.allowed_hosts is empty)"
                    .into(),
            );
        }
        if url
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
        {
            return Err(
                "the callback URL contains spaces, control characters or backslashes".into(),
            );
        }
        let lower = url.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &url[7..]
        } else if lower.starts_with("https://") {
            &url[8..]
        } else {
            return Err("the callback URL must start with http:// or https://".into());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("the callback URL must not carry user info (`user@`)".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inner, after) = v6
                .split_once(']')
                .ok_or("the callback URL has an unterminated IPv6 address")?;
            if inner.is_empty()
                || !inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err("the callback URL has an invalid IPv6 address".into());
            }
            (&authority[..inner.len() + 2], after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if let Some(p) = port {
            if !p.is_empty() && p.parse::<u16>().is_err() {
                return Err("the callback URL has an invalid port".into());
            }
        }
        if host.is_empty() {
            return Err("the callback URL has no host".into());
        }
        if !host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err("the callback URL's host has characters a host name cannot have".into());
        }
        if !self.host_allowed(host) {
            return Err(format!(
                "host `{}` is not in callbacks.allowed_hosts",
                host.to_ascii_lowercase()
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, pattern) in self.allowed_hosts.iter().enumerate() {
            let name = pattern.strip_prefix("*.").unwrap_or(pattern);
            let ok = !name.is_empty()
                && !name.contains('*')
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || b == b'-'
                        || b == b'.'
                        || b == b'_'
                        || b == b':'
                        || b == b'['
                        || b == b']'
                });
            if !ok {
                return Err(ConfigError::new(
                    format!("callbacks.allowed_hosts.{i}"),
                    format!(
                        "`{pattern}` is not a host name or `*.domain` (no scheme, port or path)"
                    ),
                ));
            }
        }
        if self.enabled() {
            self.secret_key()
                .map_err(|m| ConfigError::new("callbacks.secret", m))?;
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "callbacks.max_attempts",
                "must be at least 1",
            ));
        }
        if self.timeout_seconds == 0 {
            return Err(ConfigError::new(
                "callbacks.timeout_seconds",
                "must be at least 1",
            ));
        }
        if !(self.retry_delay_base.is_finite() && self.retry_delay_base >= 0.0) {
            return Err(ConfigError::new(
                "callbacks.retry_delay_base",
                "must be a number of seconds >= 0",
            ));
        }
        if !(self.retry_delay_max.is_finite() && self.retry_delay_max >= self.retry_delay_base) {
            return Err(ConfigError::new(
                "callbacks.retry_delay_max",
                "must be a number of seconds >= callbacks.retry_delay_base",
            ));
        }
        Ok(())
    }
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
        crate::retry::StatusSet::parse(&w.retry_on_status)
            .map_err(|m| ConfigError::new("worker.retry_on_status", m))?;
        crate::retry::StatusSet::parse(&w.no_retry_on_status)
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
            crate::telemetry::parse_endpoint(url, true)
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

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    Ok(())
}

fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("`{method}` is not an HTTP method"));
    }
    Ok(())
}

/// Instances, limits, breaker and retry overrides of one endpoint.
fn check_endpoint_flow(ep: &EndpointConfig, key: &str) -> Result<(), ConfigError> {
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
            crate::retry::StatusSet::parse(list)
                .map_err(|m| ConfigError::new(format!("{key}.retry.{name}"), m))?;
        }
    }
    Ok(())
}

fn check_auth(ep: &EndpointConfig) -> Result<(), String> {
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

/// An environment value, typed the way a person writing it means it: JSON
/// objects/arrays (`OPENHQM_PROXY__ENDPOINTS`), booleans, numbers, else text.
fn typed_env_value(raw: &str) -> Value {
    let t = raw.trim();
    if t.starts_with('{') || t.starts_with('[') {
        if let Ok(v) = yaml_serde::from_str::<Value>(t) {
            return v;
        }
    }
    match t.to_ascii_lowercase().as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return Value::Number(f.into());
        }
    }
    Value::String(raw.to_string())
}

fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("empty key".into());
    };
    let Value::Mapping(map) = tree else {
        return Err("cannot set a key inside a value that is not a mapping".into());
    };
    let key = Value::String(first.clone());
    if rest.is_empty() {
        map.insert(key, value);
        return Ok(());
    }
    let child = map
        .entry(key)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !child.is_mapping() {
        *child = Value::Mapping(Mapping::new());
    }
    set_path(child, rest, value)
}

fn get_path_mut<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = tree;
    for seg in path {
        cur = cur.as_mapping_mut()?.get_mut(Value::String(seg.clone()))?;
    }
    Some(cur)
}

/// Deserialize into [`Config`]. A value set from the environment that was
/// typed as a number or boolean but lands in a text field (a numeric password,
/// say) is retried as the text the operator wrote.
fn deserialize_lenient(
    mut tree: Value,
    env: &[(String, String)],
    env_keys: &BTreeSet<Vec<String>>,
) -> Result<Config, ConfigError> {
    // The first error seen at each key: if reading a value as text does not
    // help either, the original complaint is the clearer one.
    let mut first_errors: Vec<(String, String)> = Vec::new();
    for _ in 0..=env_keys.len() {
        let attempt: Result<Config, _> = serde_path_to_error::deserialize(tree.clone());
        match attempt {
            Ok(c) => return Ok(c),
            Err(err) => {
                let path = err.path().to_string();
                if let Some((_, msg)) = first_errors.iter().find(|(p, _)| *p == path) {
                    return Err(ConfigError::new(path.clone(), msg.clone()));
                }
                first_errors.push((path.clone(), err.inner().to_string()));
                let segs: Vec<String> = path.split('.').map(str::to_string).collect();
                let is_env_scalar = env_keys.contains(&segs)
                    && get_path_mut(&mut tree, &segs)
                        .map(|v| matches!(v, Value::Number(_) | Value::Bool(_)))
                        .unwrap_or(false);
                if is_env_scalar {
                    let var = format!("{ENV_PREFIX}{}", segs.join("__").to_ascii_uppercase());
                    let raw = env
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&var))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    if let Some(slot) = get_path_mut(&mut tree, &segs) {
                        *slot = Value::String(raw);
                        continue;
                    }
                }
                return Err(ConfigError::new(
                    if path == "." { String::new() } else { path },
                    err.inner().to_string(),
                ));
            }
        }
    }
    Err(ConfigError::new(
        "",
        "could not interpret the configuration",
    ))
}

/// Expand `${VAR}` / `${VAR:-default}` in every string below `tree`.
fn expand_vars(
    tree: &mut Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match tree {
        Value::String(s) if s.contains("${") => {
            *s = expand_str(s, lookup).map_err(|m| ConfigError::new(key, m))?;
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => yaml_serde::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if key.is_empty() {
                    name
                } else {
                    format!("{key}.{name}")
                };
                expand_vars(v, &child, lookup)?;
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_vars(v, &format!("{key}.{i}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{expr}}}` is not a valid variable reference"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "refers to ${{{name}}}, which is not set (set it, or write ${{{name}:-default}})"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_originals_names() {
        let c = Config::from_sources(None, &[]).unwrap();
        assert_eq!(c.queue.kind, QueueType::Embedded);
        assert_eq!(c.queue.request_queue_name, "openhqm-requests");
        assert_eq!(c.queue.response_queue_name, "openhqm-responses");
        assert_eq!(c.queue.dlq_name, "openhqm-dlq");
        assert_eq!(c.worker.max_retries, 3);
        assert_eq!(c.cache.ttl_seconds, 3600);
    }

    #[test]
    fn file_then_env_overrides() {
        let yaml = "server:\n  port: 9000\nqueue:\n  data_dir: /tmp/x\n";
        let c = Config::from_sources(
            Some(yaml),
            &env(&[
                ("OPENHQM_SERVER__PORT", "9100"),
                ("OPENHQM_WORKER__BATCH_SIZE", "4"),
                ("OPENHQM_MONITORING__LOG_LEVEL", "debug"),
                ("OPENHQM_CONFIG", "/ignored.yaml"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.worker.batch_size, 4);
        assert_eq!(c.queue.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.monitoring.log_level, "debug");
    }

    #[test]
    fn endpoints_as_json_in_env() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("OPENHQM_PROXY__ENABLED", "true"),
                ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "app"),
                (
                    "OPENHQM_PROXY__ENDPOINTS",
                    r#"{"app": {"url": "http://127.0.0.1:8080", "timeout": 5}}"#,
                ),
            ]),
        )
        .unwrap();
        assert!(c.proxy.enabled);
        let ep = c.resolve_endpoint(None).unwrap();
        assert_eq!(ep.url, "http://127.0.0.1:8080");
        assert_eq!(ep.timeout, Some(5));
        assert!(c.resolve_endpoint(Some("nope")).is_none());
    }

    #[test]
    fn numeric_text_from_env_stays_text() {
        let c = Config::from_sources(None, &env(&[("OPENHQM_QUEUE__REDIS_URL", "12345")])).unwrap();
        assert_eq!(c.queue.redis_url, "12345");
    }

    #[test]
    fn var_expansion() {
        let yaml = "proxy:\n  endpoints:\n    app:\n      url: http://${HOST:-localhost}:8080\n      auth_type: bearer\n      auth_token: ${TOKEN}\n";
        let c = Config::from_sources(Some(yaml), &env(&[("TOKEN", "s3cret")])).unwrap();
        let ep = &c.proxy.endpoints["app"];
        assert_eq!(ep.url, "http://localhost:8080");
        assert_eq!(ep.auth_token.as_deref(), Some("s3cret"));
        let err = Config::from_sources(Some(yaml), &[]).unwrap_err();
        assert_eq!(err.key, "proxy.endpoints.app.auth_token");
        assert!(err.message.contains("TOKEN"), "{err}");
    }

    #[test]
    fn original_keys_need_the_redis_store() {
        let err = Config::from_sources(None, &env(&[("OPENHQM_CACHE__ORIGINAL_KEYS", "true")]))
            .unwrap_err();
        assert_eq!(err.key, "cache.original_keys");
        assert!(err.message.contains("embedded"), "{err}");
        let c = Config::from_sources(
            None,
            &env(&[
                ("OPENHQM_CACHE__TYPE", "redis"),
                ("OPENHQM_CACHE__ORIGINAL_KEYS", "true"),
            ]),
        )
        .unwrap();
        assert!(c.cache.original_keys);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_sources(Some("queue:\n  typo: 1\n"), &[]).unwrap_err();
        assert_eq!(err.key, "queue.typo");
        assert!(err.message.contains("typo"), "{err}");

        let err =
            Config::from_sources(None, &env(&[("OPENHQM_SERVER__PORT", "eighty")])).unwrap_err();
        assert_eq!(err.key, "server.port");

        let err =
            Config::from_sources(None, &env(&[("OPENHQM_WORKER__MAX_RETRIES", "-1")])).unwrap_err();
        assert_eq!(err.key, "worker.max_retries");
        assert!(err.message.contains("-1"), "{err}");
        assert!(
            !err.message.contains("string"),
            "the numeric complaint is clearer: {err}"
        );

        let err =
            Config::from_sources(None, &env(&[("OPENHQM_QUEUE__TYPE", "rabbit")])).unwrap_err();
        assert_eq!(err.key, "queue.type");

        let err =
            Config::from_sources(None, &env(&[("OPENHQM_WORKER__BATCH_SIZE", "0")])).unwrap_err();
        assert_eq!(err.key, "worker.batch_size");

        let err = Config::from_sources(
            None,
            &env(&[
                ("OPENHQM_PROXY__ENABLED", "true"),
                ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "nowhere"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.key, "proxy.default_endpoint");

        let err = Config::from_sources(
            Some("proxy:\n  endpoints:\n    a:\n      url: ftp://x\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "proxy.endpoints.a.url");

        let err = Config::from_sources(
            None,
            &env(&[("OPENHQM_WORKER__RETRY_ON_STATUS", r#"["5xx", "abc"]"#)]),
        )
        .unwrap_err();
        assert_eq!(err.key, "worker.retry_on_status");

        let err = Config::from_sources(Some("- a\n- b\n"), &[]).unwrap_err();
        assert!(err.message.contains("mapping"), "{err}");
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn callbacks(hosts: &[&str]) -> CallbacksConfig {
        CallbacksConfig {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            secret: Some(SECRET.into()),
            ..Default::default()
        }
    }

    #[test]
    fn callback_urls() {
        let c = callbacks(&["hooks.example.com", "*.corp.example", "127.0.0.1"]);
        assert_eq!(c.check_url("https://hooks.example.com/done?x=1"), Ok(()));
        assert_eq!(c.check_url("HTTP://Hooks.Example.COM:8443/a"), Ok(()));
        assert_eq!(c.check_url("http://127.0.0.1:9/cb"), Ok(()));
        assert_eq!(c.check_url("https://a.corp.example/x"), Ok(()));
        assert_eq!(c.check_url("https://a.b.corp.example"), Ok(()));
        // The wildcard covers subdomains, not the domain itself.
        assert!(c
            .check_url("https://corp.example/")
            .unwrap_err()
            .contains("not in callbacks.allowed_hosts"));
        assert!(c.check_url("https://xcorp.example/").is_err());
        assert!(c.check_url("https://hooks.example.com.evil.net/").is_err());
        assert!(c.check_url("https://evil.net/hooks.example.com").is_err());
        let err = c
            .check_url("https://user:pw@hooks.example.com/")
            .unwrap_err();
        assert!(err.contains("user info"), "{err}");
        assert!(c.check_url("https://evil.net@hooks.example.com/").is_err());
        assert!(c
            .check_url("https://hooks.example.com\\@evil.net/")
            .is_err());
        assert!(c.check_url("https://evil.net\\.corp.example/").is_err());
        assert!(c.check_url("https://evil%2enet.corp.example/").is_err());
        let err = c.check_url("ftp://hooks.example.com/").unwrap_err();
        assert!(err.contains("http://"), "{err}");
        assert!(c.check_url("https://hooks.example.com:99999/").is_err());
        assert!(c.check_url("https:///path").is_err());
        let err = CallbacksConfig::default()
            .check_url("https://hooks.example.com/")
            .unwrap_err();
        assert!(err.contains("disabled"), "{err}");
    }

    #[test]
    fn callbacks_config() {
        let c = Config::from_sources(
            None,
            &env(&[
                (
                    "OPENHQM_CALLBACKS__ALLOWED_HOSTS",
                    r#"["a.example", "*.b.example"]"#,
                ),
                ("OPENHQM_CALLBACKS__SECRET", SECRET),
                ("OPENHQM_CALLBACKS__MAX_ATTEMPTS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.callbacks.allowed_hosts, vec!["a.example", "*.b.example"]);
        assert_eq!(c.callbacks.max_attempts, 7);
        assert_eq!(c.callbacks.timeout_seconds, 10);
        assert_eq!(c.callbacks.secret_key().unwrap().len(), 24);
        assert!(c.callbacks.check_url("https://x.b.example/").is_ok());

        let err = Config::from_sources(
            None,
            &env(&[("OPENHQM_CALLBACKS__ALLOWED_HOSTS", r#"["a.example"]"#)]),
        )
        .unwrap_err();
        assert_eq!(err.key, "callbacks.secret");
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let err = Config::from_sources(
                Some(&format!(
                    "callbacks:\n  allowed_hosts: [a.example]\n  secret: \"{bad}\"\n"
                )),
                &[],
            )
            .unwrap_err();
            assert_eq!(err.key, "callbacks.secret", "{bad}: {err}");
        }
        let err = Config::from_sources(
            Some("callbacks:\n  allowed_hosts: [\"https://a.example/\"]\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "callbacks.allowed_hosts.0");
        let err = Config::from_sources(None, &env(&[("OPENHQM_CALLBACKS__MAX_ATTEMPTS", "0")]))
            .unwrap_err();
        assert_eq!(err.key, "callbacks.max_attempts");
        // Disabled by default, and then no secret is needed.
        let c = Config::from_sources(None, &[]).unwrap();
        assert!(!c.callbacks.enabled());
    }

    #[test]
    fn worker_command_settings() {
        let c = Config::from_sources(
            Some("worker:\n  command: [python3, p.py]\n  command_processes: 3\n  timeout_seconds: 40\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.worker.command, vec!["python3", "p.py"]);
        assert_eq!(c.worker.command_processes, 3);
        assert_eq!(
            c.worker.command_timeout(),
            std::time::Duration::from_secs(40)
        );
        let c = Config::from_sources(
            None,
            &env(&[
                ("OPENHQM_WORKER__COMMAND", r#"["./proc", "--fast"]"#),
                ("OPENHQM_WORKER__COMMAND_TIMEOUT_SECONDS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.worker.command, vec!["./proc", "--fast"]);
        assert_eq!(c.worker.command_processes, 1);
        assert_eq!(
            c.worker.command_timeout(),
            std::time::Duration::from_secs(5)
        );
        for (var, val, key) in [
            (
                "OPENHQM_WORKER__COMMAND_PROCESSES",
                "0",
                "worker.command_processes",
            ),
            (
                "OPENHQM_WORKER__COMMAND_TIMEOUT_SECONDS",
                "0",
                "worker.command_timeout_seconds",
            ),
            ("OPENHQM_WORKER__COMMAND", r#"["", "x"]"#, "worker.command"),
        ] {
            let err = Config::from_sources(None, &env(&[(var, val)])).unwrap_err();
            assert_eq!(err.key, key);
        }
    }

    #[test]
    fn display_names_key_and_fix() {
        let e = ConfigError::new("queue.type", "unknown variant");
        assert_eq!(
            e.to_string(),
            "invalid configuration: `queue.type`: unknown variant"
        );
    }

    #[test]
    fn admin_token_is_off_by_default_and_never_empty() {
        let c = Config::from_sources(None, &[]).unwrap();
        assert_eq!(c.server.admin_token, None);
        let c = Config::from_sources(
            Some("server:\n  admin_token: ${ADMIN}\n"),
            &env(&[("ADMIN", "s3cret")]),
        )
        .unwrap();
        assert_eq!(c.server.admin_token.as_deref(), Some("s3cret"));
        // A numeric-looking token from the environment stays a string.
        let c =
            Config::from_sources(None, &env(&[("OPENHQM_SERVER__ADMIN_TOKEN", "12345")])).unwrap();
        assert_eq!(c.server.admin_token.as_deref(), Some("12345"));
        let err =
            Config::from_sources(None, &env(&[("OPENHQM_SERVER__ADMIN_TOKEN", " ")])).unwrap_err();
        assert_eq!(err.key, "server.admin_token");
    }

    #[test]
    fn explicit_keys_are_known_and_connection_limits_checked() {
        let c = Config::from_sources(
            Some("worker:\n  admin_host: 127.0.0.1\n"),
            &env(&[("OPENHQM_SERVER__IDLE_TIMEOUT_SECONDS", "5")]),
        )
        .unwrap();
        assert!(c.is_set("worker.admin_host") && c.is_set("server.idle_timeout_seconds"));
        assert!(!c.is_set("worker.admin_port"), "left at its default");
        assert_eq!(c.server.idle_timeout_seconds, 5.0);
        let c =
            Config::from_sources(None, &env(&[("OPENHQM_WORKER__ADMIN_PORT", "8001")])).unwrap();
        assert!(
            c.is_set("worker.admin_port"),
            "set to the default value is still set"
        );
        for (var, val) in [
            ("OPENHQM_SERVER__HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("OPENHQM_SERVER__BODY_READ_TIMEOUT_SECONDS", "-1"),
            ("OPENHQM_SERVER__MAX_CONNECTIONS", "0"),
        ] {
            let err = Config::from_sources(None, &env(&[(var, val)])).unwrap_err();
            let key = var
                .trim_start_matches("OPENHQM_SERVER__")
                .to_ascii_lowercase();
            assert_eq!(err.key, format!("server.{key}"), "{var}");
        }
    }
}

#[cfg(test)]
mod tests_original;
