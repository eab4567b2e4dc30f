//! `worker`: how a worker consumes, retries and settles messages.

use super::*;

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
