//! The built-in backends, one folder each, and the one list that selects
//! them by `queue.type` / `cache.type`.
//!
//! A backend's folder owns everything of it: queue, result store where it
//! has one, scripts, and the module docs stating its invariants. Adding one
//! is a folder, a `pub mod` and a match arm here, a Cargo feature and a
//! conformance file (docs/backends.md).

#[cfg(feature = "embedded")]
pub mod embedded;
pub mod identity;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "redis")]
pub mod redis;

use crate::config::{CacheType, Config, ConfigError, QueueType};
use crate::queue::QueueBackend;
use crate::store::ResultStore;
use std::sync::Arc;

/// The client libraries (log targets) of the backends built in: their log
/// lines are kept to warnings, like the HTTP stack's, unless RUST_LOG says
/// more.
pub fn client_libraries() -> impl Iterator<Item = &'static &'static str> {
    const ALL: &[&[&str]] = &[
        #[cfg(feature = "embedded")]
        embedded::CLIENT_LIBRARIES,
        #[cfg(feature = "redis")]
        redis::CLIENT_LIBRARIES,
        #[cfg(feature = "mqtt")]
        mqtt::CLIENT_LIBRARIES,
    ];
    ALL.iter().copied().flatten()
}

/// Build the queue backend named by `queue.type`.
///
/// `queue.type: custom` picks a backend registered with
/// [`registry::register_queue_backend`] (docs/backends.md shows how).
pub fn open_queue_backend(config: &Config) -> Result<Arc<dyn QueueBackend>, ConfigError> {
    match config.queue.kind {
        #[cfg(feature = "embedded")]
        QueueType::Embedded => {
            embedded::EmbeddedBackend::open(&config.queue.data_dir, config.queue.max_message_bytes)
                .map(|b| Arc::new(b) as Arc<dyn QueueBackend>)
                .map_err(|e| ConfigError::new("queue.data_dir", e.to_string()))
        }
        #[cfg(feature = "redis")]
        QueueType::Redis => redis::RedisBackend::from_config(&config.queue)
            .map(|b| Arc::new(b) as Arc<dyn QueueBackend>)
            .map_err(|e| backend_config_error("queue.redis_url", e.to_string())),
        #[cfg(feature = "mqtt")]
        QueueType::Mqtt => mqtt::MqttBackend::from_config(&config.queue)
            .map(|b| Arc::new(b) as Arc<dyn QueueBackend>)
            .map_err(|e| backend_config_error("queue.mqtt_broker_host", e.to_string())),
        QueueType::Custom => crate::registry::open_custom_queue(config),
        other => Err(ConfigError::new(
            "queue.type",
            format!(
                "`{}` is not available in this build (built in: {})",
                other.as_str(),
                built_in_queue_types().join(", ")
            ),
        )),
    }
}

/// A backend's settings error, under the key its message names (backends
/// write keys as `` `queue.mqtt_qos` ``), else under `default_key`.
#[cfg(any(feature = "redis", feature = "mqtt"))]
fn backend_config_error(default_key: &str, message: String) -> ConfigError {
    let named = message
        .split('`')
        .skip(1)
        .step_by(2)
        .find(|k| k.starts_with("queue.") || k.starts_with("cache."))
        .map(str::to_string);
    match named {
        Some(key) => ConfigError::new(key, message),
        None => ConfigError::new(default_key, message),
    }
}

/// Build the result store named by `cache.type`.
pub fn open_result_store(config: &Config) -> Result<Arc<dyn ResultStore>, ConfigError> {
    match config.cache.kind {
        #[cfg(feature = "embedded")]
        CacheType::Embedded | CacheType::Memory => {
            embedded::EmbeddedStore::open(&config.queue.data_dir)
                .map(|s| Arc::new(s) as Arc<dyn ResultStore>)
                .map_err(|e| ConfigError::new("queue.data_dir", e.to_string()))
        }
        #[cfg(feature = "redis")]
        CacheType::Redis => redis::RedisStore::from_config(&config.cache)
            .map(|s| Arc::new(s) as Arc<dyn ResultStore>)
            .map_err(|e| backend_config_error("cache.redis_url", e.to_string())),
        CacheType::Custom => crate::registry::open_custom_store(config),
        #[allow(unreachable_patterns)]
        _ => Err(ConfigError::new(
            "cache.type",
            "this result store is not available in this build",
        )),
    }
}

pub fn built_in_queue_types() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "embedded") {
        v.push("embedded");
    }
    if cfg!(feature = "redis") {
        v.push("redis");
    }
    if cfg!(feature = "mqtt") {
        v.push("mqtt");
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_built_in_backend_names_its_client_library() {
        let libs: Vec<&str> = super::client_libraries().copied().collect();
        assert_eq!(libs.contains(&"rusqlite"), cfg!(feature = "embedded"));
        assert_eq!(libs.contains(&"redis"), cfg!(feature = "redis"));
        assert_eq!(libs.contains(&"rumqttc"), cfg!(feature = "mqtt"));
    }
}
