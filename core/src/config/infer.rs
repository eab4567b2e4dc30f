//! Which queue backend and result store to use when `queue.type` /
//! `cache.type` are not set. The original defaulted both to Redis and its
//! `docker-compose.yml` sets only `*_REDIS_URL`; with our embedded default
//! such a deployment would start on one SQLite per container and never see
//! its own results (a silent split). So a backend's own keys pick it, and
//! keys of two backends at once are an error naming them.
//!
//! Runs on the merged (file + environment) tree before it is deserialized,
//! because only there can an unset `type` be told from a default one.

use super::{ConfigError, ENV_PREFIX};
use std::collections::BTreeSet;
use yaml_serde::{Mapping, Value};

/// The queue keys that belong to one backend (the original's names).
const QUEUE_KEYS: &[(&str, &[&str])] = &[
    (
        "redis",
        &["redis_url", "redis_consumer_group", "redis_consumer_name"],
    ),
    (
        "mqtt",
        &[
            "mqtt_broker_host",
            "mqtt_broker_port",
            "mqtt_username",
            "mqtt_password",
            "mqtt_qos",
            "mqtt_client_id",
            "mqtt_shared_group",
        ],
    ),
    (
        "kafka",
        &[
            "kafka_bootstrap_servers",
            "kafka_consumer_group",
            "kafka_topics",
        ],
    ),
    ("sqs", &["sqs_region", "sqs_queue_url"]),
    (
        "azure_eventhubs",
        &[
            "azure_eventhubs_connection_string",
            "azure_eventhubs_name",
            "azure_eventhubs_consumer_group",
            "azure_eventhubs_checkpoint_store",
        ],
    ),
    (
        "gcp_pubsub",
        &["gcp_project_id", "gcp_credentials_path", "gcp_max_messages"],
    ),
    (
        "custom",
        &["custom_class", "custom_module", "custom_config"],
    ),
];

const CACHE_KEYS: &[(&str, &[&str])] = &[("redis", &["redis_url"]), ("custom", &["custom_class"])];

/// What was decided and why, for the start-up line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inferred {
    /// e.g. "queue.type = redis (from queue.redis_url)".
    pub notes: Vec<String>,
    /// Backend keys set beside an explicit, different `type` (ignored).
    pub ignored: Vec<String>,
}

/// Fill `queue.type` and `cache.type` in `tree` when they are unset.
/// `env_keys` are the paths set from the environment (named in messages).
pub fn infer_backends(
    tree: &mut Value,
    env_keys: &BTreeSet<Vec<String>>,
) -> Result<Inferred, ConfigError> {
    let mut out = Inferred::default();
    let queue = infer_section(tree, "queue", QUEUE_KEYS, env_keys, &mut out)?;
    let cache = infer_section(tree, "cache", CACHE_KEYS, env_keys, &mut out)?;
    // The original's result store followed its (Redis) queue; so does ours
    // when nothing about the store is said: a Redis queue with a per-process
    // SQLite store would split results across containers.
    let queue_kind = queue.or_else(|| explicit_type(tree, "queue"));
    if cache.is_none()
        && explicit_type(tree, "cache").is_none()
        && queue_kind.as_deref() == Some("redis")
    {
        // As text: an env value such as `12345` was typed as a number.
        let url = section(tree, "queue")
            .and_then(|q| set_value(q, "redis_url"))
            .map(|v| match v {
                Value::String(t) => s(t),
                other => s(yaml_serde::to_string(other).unwrap_or_default().trim()),
            });
        let cache = section_mut(tree, "cache");
        cache.insert(s("type"), s("redis"));
        let from = if let Some(url) = url {
            if set_value(cache, "redis_url").is_none() {
                cache.insert(s("redis_url"), url);
            }
            "follows the Redis queue; cache.redis_url defaults to queue.redis_url"
        } else {
            "follows the Redis queue"
        };
        out.notes.push(format!("cache.type = redis ({from})"));
    }
    Ok(out)
}

/// Infer one section's `type`; returns the inferred type, if one was.
fn infer_section(
    tree: &mut Value,
    name: &str,
    table: &[(&str, &[&str])],
    env_keys: &BTreeSet<Vec<String>>,
    out: &mut Inferred,
) -> Result<Option<String>, ConfigError> {
    let Some(map) = section(tree, name) else {
        return Ok(None);
    };
    // Each backend whose keys are set, with the keys that showed it.
    let mut found: Vec<(&str, Vec<String>)> = Vec::new();
    for (kind, keys) in table {
        let set: Vec<String> = keys
            .iter()
            .filter(|k| set_value(map, k).is_some())
            .map(|k| describe(name, k, env_keys))
            .collect();
        if !set.is_empty() {
            found.push((kind, set));
        }
    }
    if let Some(explicit) = explicit_type(tree, name) {
        for (kind, keys) in &found {
            // `memory` is our alias of embedded: no backend keys of its own.
            if *kind != explicit {
                out.ignored.push(format!(
                    "{} (set, but {name}.type is `{explicit}`)",
                    keys.join(", ")
                ));
            }
        }
        return Ok(None);
    }
    match found.len() {
        0 => Ok(None),
        1 => {
            let (kind, keys) = &found[0];
            section_mut(tree, name).insert(s("type"), s(kind));
            out.notes
                .push(format!("{name}.type = {kind} (from {})", keys.join(", ")));
            Ok(Some(kind.to_string()))
        }
        _ => {
            let list: Vec<String> = found
                .iter()
                .map(|(kind, keys)| format!("{kind}: {}", keys.join(", ")))
                .collect();
            Err(ConfigError::new(
                format!("{name}.type"),
                format!(
                    "is not set and keys of more than one backend are ({}); set {name}.type (OPENHQM_{}__TYPE) to the one you mean",
                    list.join("; "),
                    name.to_ascii_uppercase()
                ),
            ))
        }
    }
}

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn section<'a>(tree: &'a Value, name: &str) -> Option<&'a Mapping> {
    tree.as_mapping()?.get(s(name))?.as_mapping()
}

/// The section as a mapping, created (or replaced when not a mapping: the
/// deserializer would reject it anyway) when missing.
fn section_mut<'a>(tree: &'a mut Value, name: &str) -> &'a mut Mapping {
    if !tree.is_mapping() {
        *tree = Value::Mapping(Mapping::new());
    }
    let root = tree.as_mapping_mut().expect("made a mapping above");
    let entry = root
        .entry(s(name))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("made a mapping above")
}

/// A key counts as set when it has a non-null, non-empty value.
fn set_value<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    match map.get(s(key))? {
        Value::Null => None,
        Value::String(t) if t.trim().is_empty() => None,
        v => Some(v),
    }
}

fn explicit_type(tree: &Value, name: &str) -> Option<String> {
    match set_value(section(tree, name)?, "type")? {
        Value::String(t) => Some(t.to_ascii_lowercase()),
        other => Some(
            yaml_serde::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
    }
}

/// `queue.redis_url`, plus the variable when it came from the environment.
fn describe(section: &str, key: &str, env_keys: &BTreeSet<Vec<String>>) -> String {
    let path = vec![section.to_string(), key.to_string()];
    if env_keys.contains(&path) {
        format!(
            "{section}.{key} ({ENV_PREFIX}{}__{})",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    } else {
        format!("{section}.{key}")
    }
}

/// The one start-up line every binary prints: queue backend, result store
/// and, for embedded, the data directory (credentials never shown).
pub fn backend_line(config: &super::Config) -> String {
    use super::{CacheType, QueueType};
    let q = &config.queue;
    let queue = match q.kind {
        QueueType::Embedded => format!("embedded (data_dir {})", q.data_dir.display()),
        QueueType::Redis => format!("redis ({})", redact_url(&q.redis_url)),
        QueueType::Mqtt => format!(
            "mqtt ({}:{})",
            q.mqtt_broker_host.as_deref().unwrap_or("localhost"),
            q.mqtt_broker_port.unwrap_or(1883)
        ),
        QueueType::Custom => format!("custom ({})", q.custom_class.as_deref().unwrap_or("?")),
        other => other.as_str().to_string(),
    };
    let c = &config.cache;
    let store = match c.kind {
        CacheType::Embedded | CacheType::Memory => {
            format!("embedded (data_dir {})", q.data_dir.display())
        }
        CacheType::Redis => format!("redis ({})", redact_url(&c.redis_url)),
        CacheType::Custom => format!("custom ({})", c.custom_class.as_deref().unwrap_or("?")),
    };
    format!("queue backend: {queue}; result store: {store}")
}

/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}
