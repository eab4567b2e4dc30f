//! Logging set-up shared by the binaries: JSON or text lines on stderr at the
//! configured level (`monitoring.log_level`, overridable with RUST_LOG).

use crate::config::{LogFormat, MonitoringConfig};
use tracing_subscriber::EnvFilter;

pub fn init_logging(m: &MonitoringConfig) {
    let level = match m.log_level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match m.log_format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
