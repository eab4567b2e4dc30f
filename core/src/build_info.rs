//! What a binary was built from: version, source revision (baked in by
//! build.rs) and the queue backends compiled in. The same facts in
//! `--version` and in the `openhqm_build_info` gauge, so a scrape tells
//! which build answered.

use prometheus::Registry;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("OPENHQM_REVISION");

/// The built-in queue backends, comma-separated (`embedded,redis,mqtt`).
pub fn backends() -> String {
    crate::built_in_queue_types().join(",")
}

/// The `--version` line: `openhqm-worker 0.1.0 (revision 1a2b3c, backends embedded,redis,mqtt)`.
pub fn version_line(program: &str) -> String {
    format!(
        "{program} {VERSION} (revision {REVISION}, backends {})",
        backends()
    )
}

/// Register `openhqm_build_info{version,revision,backends} 1`.
pub fn register(registry: &Registry) {
    let g = crate::metrics::gauge(
        registry,
        "openhqm_build_info",
        "Always 1; the labels name the build: version, source revision, queue backends compiled in",
        &["version", "revision", "backends"],
    );
    g.with_label_values(&[VERSION, REVISION, &backends()])
        .set(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_and_gauge_name_the_same_build() {
        let line = version_line("openhqm-bridge");
        assert!(line.starts_with(&format!("openhqm-bridge {VERSION} (revision ")));
        assert!(line.contains(&format!("backends {}", backends())));
        assert!(!REVISION.is_empty());
        let r = Registry::new();
        register(&r);
        let page = crate::metrics::render(&r);
        assert!(
            page.contains(&format!(
                "openhqm_build_info{{backends=\"{}\",revision=\"{REVISION}\",version=\"{VERSION}\"}} 1",
                backends()
            )),
            "{page}"
        );
    }
}
