//! `server.cors`: which browser origins may call the bridge's API. Off by
//! default (no `Access-Control-*` headers, preflights get 405); the
//! original allowed every origin, which `allowed_origins: ["*"]` restores.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `"*"` for any. Empty:
    /// CORS is off.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for; `"*"` allows the one asked.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for; `"*"` allows those asked.
    pub allowed_headers: Vec<String>,
    /// Response headers a browser script may read.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer, seconds.
    pub max_age_seconds: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["*".into()],
            allowed_headers: vec!["*".into()],
            // What a browser client needs to follow a 202.
            expose_headers: vec![
                "location".into(),
                "retry-after".into(),
                "x-correlation-id".into(),
            ],
            max_age_seconds: 600,
        }
    }
}

impl CorsConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("server.cors.{k}");
        let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
        for (name, list) in [
            ("allowed_origins", &self.allowed_origins),
            ("allowed_methods", &self.allowed_methods),
            ("allowed_headers", &self.allowed_headers),
        ] {
            if wildcard(list) && list.len() > 1 {
                return Err(ConfigError::new(
                    key(name),
                    "\"*\" allows everything; list it alone",
                ));
            }
        }
        for o in self.allowed_origins.iter().filter(|o| *o != "*") {
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let ok = rest.is_some_and(|h| {
                !h.is_empty() && !h.contains('/') && h.bytes().all(|b| b.is_ascii_graphic())
            });
            if !ok {
                return Err(ConfigError::new(
                    key("allowed_origins"),
                    format!("`{o}` is not an origin like https://app.example.com (scheme and host, no path)"),
                ));
            }
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        for (name, list) in [
            ("allowed_methods", &self.allowed_methods),
            ("allowed_headers", &self.allowed_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            if let Some(bad) = list.iter().find(|v| !token(v)) {
                return Err(ConfigError::new(
                    key(name),
                    format!("`{bad}` is not an HTTP token"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_allow_all_is_one_variable() {
        let env = [(
            "OPENHQM_SERVER__CORS__ALLOWED_ORIGINS".to_string(),
            r#"["*"]"#.to_string(),
        )];
        let config = crate::config::Config::from_sources(None, &env).unwrap();
        assert_eq!(config.server.cors.allowed_origins, ["*"]);
        assert!(config.server.cors.enabled());
        let bad = [(
            "OPENHQM_SERVER__CORS__ALLOWED_ORIGINS".to_string(),
            r#"["example.com"]"#.to_string(),
        )];
        let err = crate::config::Config::from_sources(None, &bad).unwrap_err();
        assert_eq!(err.key, "server.cors.allowed_origins");
    }

    #[test]
    fn off_by_default_and_checked() {
        assert!(!CorsConfig::default().enabled());
        let ok = CorsConfig {
            allowed_origins: vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
            ],
            ..Default::default()
        };
        assert!(ok.enabled() && ok.validate().is_ok());
        for (origins, methods, key) in [
            (
                vec!["*", "https://a.example"],
                vec!["*"],
                "server.cors.allowed_origins",
            ),
            (
                vec!["app.example.com"],
                vec!["*"],
                "server.cors.allowed_origins",
            ),
            (
                vec!["https://a.example/path"],
                vec!["*"],
                "server.cors.allowed_origins",
            ),
            (vec!["*"], vec!["GET POST"], "server.cors.allowed_methods"),
        ] {
            let c = CorsConfig {
                allowed_origins: origins.into_iter().map(String::from).collect(),
                allowed_methods: methods.into_iter().map(String::from).collect(),
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }
}
