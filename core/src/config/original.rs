//! The original OpenHQM's keys that we spell or use differently. Its own
//! shipped files (compose files, `.env.example`, Kubernetes ConfigMaps,
//! example configs and docs) must load: renamed keys are mapped, keys
//! without an effect here are accepted and named in a start-up warning,
//! never silently dropped (docs/migration.md lists each one).

use super::{Config, ConfigError};
use yaml_serde::{Mapping, Value};

/// Keys that are not fields of ours: taken out of the tree before it is
/// deserialized, each with why it has no effect.
const DROPPED: &[(&str, &str, &str)] = &[
    (
        "proxy",
        "retry_max_attempts",
        "retries are worker.max_retries (or proxy.endpoints.<name>.retry.max_retries)",
    ),
    (
        "proxy",
        "retry_backoff_seconds",
        "backoff is worker.retry_delay_base / retry_delay_max",
    ),
];

/// Fields we keep only so the original's files parse.
const INERT: &[(&str, &str, &str)] = &[
    (
        "server",
        "workers",
        "one async process serves all connections; scale with replicas",
    ),
    ("server", "reload", "no auto-reload"),
    (
        "worker",
        "count",
        "one worker process per pod; use worker.concurrency and replicas",
    ),
    (
        "cache",
        "max_connections",
        "the Redis store multiplexes one connection",
    ),
    (
        "queue",
        "custom_module",
        "custom backends are Rust code registered by queue.custom_class",
    ),
];

/// Rewrite the original's spellings into ours; returns the ignored keys.
pub(super) fn normalize(tree: &mut Value) -> Result<Vec<String>, ConfigError> {
    let mut ignored = Vec::new();
    let Some(root) = tree.as_mapping_mut() else {
        return Ok(ignored);
    };
    if let Some(routing) = section(root, "routing") {
        // The original's inline table is `routing.config_dict`.
        if let Some(table) = routing.remove(s("config_dict")) {
            if routing.contains_key(s("config")) {
                return Err(ConfigError::new(
                    "routing.config_dict",
                    "give the inline table once: routing.config_dict (the original's name) or routing.config",
                ));
            }
            routing.insert(s("config"), table);
        }
    }
    if let Some(proxy) = section(root, "proxy") {
        // Its queue-to-http ConfigMap writes header lists comma-separated.
        for key in ["forward_headers", "strip_headers"] {
            if let Some(Value::String(list)) = proxy.get(s(key)) {
                let items: Vec<Value> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(s)
                    .collect();
                proxy.insert(s(key), Value::Sequence(items));
            }
        }
    }
    if let Some(queue) = section(root, "queue") {
        flatten_backend_blocks(queue)?;
    }
    for (sect, key, why) in DROPPED {
        if let Some(map) = section(root, sect) {
            if map.remove(s(key)).is_some() {
                ignored.push(format!("{sect}.{key} ({why})"));
            }
        }
    }
    for (sect, key, why) in INERT {
        if let Some(map) = section(root, sect) {
            if map.get(s(key)).is_some_and(|v| !v.is_null()) {
                ignored.push(format!("{sect}.{key} ({why})"));
            }
        }
    }
    Ok(ignored)
}

/// Remarks that need the whole configuration.
pub(super) fn notes(config: &Config) -> Vec<String> {
    let mut out = config.partitioning.ignored();
    if !config.routing.enabled
        && (config.routing.config_path.is_some() || config.routing.config.is_some())
    {
        out.push(
            "routing.config_path / routing.config (routing.enabled is false: the table is not loaded)"
                .into(),
        );
    }
    if !config.monitoring.metrics_enabled {
        out.push("monitoring.metrics_enabled (false: /metrics stays on; restrict it at the network or ingress)".into());
    }
    out
}

/// The original's README and pattern docs write `queue.redis.url` and
/// `queue.kafka.bootstrap_servers: [..]` (also `OPENHQM_QUEUE__KAFKA__...`);
/// its settings only had the flat `queue.redis_url`, `queue.kafka_*` keys.
/// Both spellings are read, as the flat ones.
fn flatten_backend_blocks(queue: &mut Mapping) -> Result<(), ConfigError> {
    for backend in ["redis", "kafka", "sqs", "mqtt", "azure_eventhubs", "gcp"] {
        let Some(Value::Mapping(block)) = queue.get(s(backend)).cloned() else {
            continue;
        };
        queue.remove(s(backend));
        for (k, v) in block {
            let Some(k) = k.as_str() else { continue };
            let flat = format!("{backend}_{k}");
            let v = match v {
                // A list of brokers is the original's comma-separated text.
                Value::Sequence(items) if flat == "kafka_bootstrap_servers" => s(&items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(",")),
                other => other,
            };
            if queue.contains_key(s(&flat)) {
                return Err(ConfigError::new(
                    format!("queue.{backend}.{k}"),
                    format!("is also set as queue.{flat}; give one"),
                ));
            }
            queue.insert(s(&flat), v);
        }
    }
    Ok(())
}

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn section<'a>(root: &'a mut Mapping, name: &str) -> Option<&'a mut Mapping> {
    root.get_mut(s(name))?.as_mapping_mut()
}
