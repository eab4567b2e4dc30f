//! `server`: the bridge's listener, its limits and its API settings.

use super::*;

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
