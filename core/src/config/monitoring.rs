//! `monitoring`: logs, metrics and traces.

use super::*;

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

/// An OTLP/HTTP URL: http or https, a host, an optional port. `base`: a
/// base URL, `/v1/traces` is appended unless it already ends with it.
pub fn parse_otlp_endpoint(url: &str, base: bool) -> Result<String, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("`{url}`: give an http:// or https:// URL of an OTLP/HTTP collector")
        })?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: put credentials in OTEL_EXPORTER_OTLP_HEADERS, not in the URL"
        ));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            if !h.starts_with('[') || h.ends_with(']') {
                p.parse::<u16>()
                    .map_err(|_| format!("`{url}`: `{p}` is not a port"))?;
            }
            h
        }
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{url}`: no valid host"));
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{url}`: the path has spaces or control characters"
        ));
    }
    if !base {
        return Ok(url.to_string());
    }
    let trimmed = url.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    })
}
