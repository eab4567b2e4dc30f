//! Who this process is to a broker: the host name the consumer identities
//! of every backend start from (Redis consumer names, MQTT client ids, the
//! worker's positional arguments), read one way.
//!
//! In Kubernetes `HOSTNAME` is the pod name, stable for a StatefulSet pod,
//! so a restarted worker comes back under the same identity and takes back
//! its own unfinished messages at once.

/// This host's name: `$HOSTNAME`, else the kernel's, else `/etc/hostname`,
/// else `openhqm`; trimmed.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "openhqm".to_string())
}

/// [`host_name`] with every character outside `[A-Za-z0-9._-]` replaced by
/// `-`, for identities brokers restrict (MQTT client ids).
pub fn host_name_token() -> String {
    host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_keeps_only_safe_characters() {
        let token = super::host_name_token();
        assert!(!token.is_empty());
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    }
}
