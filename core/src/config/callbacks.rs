//! `callbacks`: completion callbacks (Standard Webhooks) and their checks.

use super::*;

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
