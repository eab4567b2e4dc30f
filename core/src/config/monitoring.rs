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
