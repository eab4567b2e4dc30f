//! The original's `partitioning.*` section, mapped onto what we do instead
//! of fixed partitions: a message's partition key gives in-order processing
//! per key and always reaches the same instance of a backend
//! (`proxy.endpoints.<n>.instances`, rendezvous hashing). The original took
//! that key from `partition_key_field`, else `session_key_field`, of the
//! queue message; so do we, so a client keyed on `metadata.session_id`
//! keeps its affinity without changing what it sends.

use serde::{Deserialize, Serialize};

/// Longest partition key accepted (as `metadata.partition_key`).
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStrategy {
    Hash,
    Key,
    RoundRobin,
    #[default]
    Sticky,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartitioningConfig {
    /// Off: only `metadata.partition_key` keys a message (our default).
    pub enabled: bool,
    /// `sticky`, `key`, `hash`: the key is used; `round_robin`: no key
    /// (messages spread, as the original's time-based pick did).
    pub strategy: PartitionStrategy,
    /// Dotted path into the message (`{correlation_id, payload, metadata,
    /// headers}`) whose value is the key.
    pub partition_key_field: String,
    /// Used when `partition_key_field` is missing or empty.
    pub session_key_field: String,
    // The original's fixed-partition settings: accepted, without effect
    // (a start-up warning names each one set; see docs/migration.md).
    pub partition_count: Option<u32>,
    pub sticky_session_ttl: Option<u64>,
    pub rebalance_on_worker_change: Option<bool>,
    pub enable_queue_partitioning: Option<bool>,
    pub redis_consumer_group: Option<String>,
    pub kafka_partition_assignment: Option<String>,
}

impl Default for PartitioningConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            strategy: PartitionStrategy::Sticky,
            partition_key_field: "metadata.partition_key".into(),
            session_key_field: "metadata.session_id".into(),
            partition_count: None,
            sticky_session_ttl: None,
            rebalance_on_worker_change: None,
            enable_queue_partitioning: None,
            redis_consumer_group: None,
            kafka_partition_assignment: None,
        }
    }
}

impl PartitioningConfig {
    /// The partition key of a message, when partitioning is on. A value
    /// that cannot be a key (an object, or longer than 256 bytes) is an
    /// error naming the field.
    pub fn key_for(&self, message: &serde_json::Value) -> Result<Option<String>, String> {
        if !self.enabled || self.strategy == PartitionStrategy::RoundRobin {
            return Ok(None);
        }
        for field in [&self.partition_key_field, &self.session_key_field] {
            let value = field
                .split('.')
                .try_fold(message, |v, k| v.as_object()?.get(k));
            let text = match value {
                None | Some(serde_json::Value::Null) => continue,
                Some(serde_json::Value::String(s)) if s.is_empty() => continue,
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                Some(_) => {
                    return Err(format!(
                        "`{field}` (the partition key) must be a string or a number"
                    ))
                }
            };
            if text.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "`{field}` (the partition key) must be at most {MAX_KEY_BYTES} bytes"
                ));
            }
            return Ok(Some(text));
        }
        Ok(None)
    }

    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        for (key, field) in [
            (
                "partitioning.partition_key_field",
                &self.partition_key_field,
            ),
            ("partitioning.session_key_field", &self.session_key_field),
        ] {
            if field.split('.').any(|s| s.trim().is_empty()) {
                return Err(super::ConfigError::new(
                    key,
                    format!("`{field}` is not a dotted path such as metadata.session_id"),
                ));
            }
        }
        if self.partition_count == Some(0) {
            return Err(super::ConfigError::new(
                "partitioning.partition_count",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The original's keys that are set here but have no effect, with why.
    pub(super) fn ignored(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |set: bool, key: &str, why: &str| {
            if set {
                out.push(format!("partitioning.{key} ({why})"));
            }
        };
        note(
            self.partition_count.is_some(),
            "partition_count",
            "no fixed partitions: same key = same backend instance and in order, any worker",
        );
        note(
            self.sticky_session_ttl.is_some(),
            "sticky_session_ttl",
            "affinity is computed from the key, not stored, so it never expires",
        );
        note(
            self.rebalance_on_worker_change.is_some(),
            "rebalance_on_worker_change",
            "the queue spreads work over the workers that are up",
        );
        note(
            self.enable_queue_partitioning.is_some(),
            "enable_queue_partitioning",
            "the key is always the broker message key",
        );
        note(
            self.redis_consumer_group.is_some(),
            "redis_consumer_group",
            "use queue.redis_consumer_group",
        );
        note(
            self.kafka_partition_assignment.is_some(),
            "kafka_partition_assignment",
            "no Kafka backend in this build",
        );
        out
    }
}
