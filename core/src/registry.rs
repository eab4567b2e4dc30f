//! Registration of custom backends ("custom handlers" in the original).
//!
//! A custom queue backend is one type implementing [`QueueBackend`] and one
//! line before starting the bridge or worker from your own `main`:
//!
//! ```ignore
//! openhqm_core::registry::register_queue_backend("nats", |config| {
//!     Ok(std::sync::Arc::new(MyNatsBackend::connect(&config.queue)?))
//! });
//! openhqm_worker::main();
//! ```
//!
//! Then `queue.type: custom` with `queue.custom_class: nats` selects it. A
//! result store is registered the same way and selected with
//! `cache.type: custom`, `cache.custom_class`.

use crate::config::{Config, ConfigError};
use crate::queue::QueueBackend;
use crate::store::ResultStore;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

pub type QueueBackendFactory =
    Arc<dyn Fn(&Config) -> Result<Arc<dyn QueueBackend>, ConfigError> + Send + Sync>;
pub type ResultStoreFactory =
    Arc<dyn Fn(&Config) -> Result<Arc<dyn ResultStore>, ConfigError> + Send + Sync>;

fn queues() -> &'static RwLock<BTreeMap<String, QueueBackendFactory>> {
    static QUEUES: OnceLock<RwLock<BTreeMap<String, QueueBackendFactory>>> = OnceLock::new();
    QUEUES.get_or_init(|| RwLock::new(BTreeMap::new()))
}

fn stores() -> &'static RwLock<BTreeMap<String, ResultStoreFactory>> {
    static STORES: OnceLock<RwLock<BTreeMap<String, ResultStoreFactory>>> = OnceLock::new();
    STORES.get_or_init(|| RwLock::new(BTreeMap::new()))
}

/// Make a queue backend available as `queue.type: custom`,
/// `queue.custom_class: <name>`. A later registration of the same name wins.
pub fn register_queue_backend<F>(name: &str, factory: F)
where
    F: Fn(&Config) -> Result<Arc<dyn QueueBackend>, ConfigError> + Send + Sync + 'static,
{
    let mut map = queues().write().unwrap_or_else(|p| p.into_inner());
    map.insert(name.to_string(), Arc::new(factory));
}

/// Make a result store available as `cache.type: custom`,
/// `cache.custom_class: <name>`.
pub fn register_result_store<F>(name: &str, factory: F)
where
    F: Fn(&Config) -> Result<Arc<dyn ResultStore>, ConfigError> + Send + Sync + 'static,
{
    let mut map = stores().write().unwrap_or_else(|p| p.into_inner());
    map.insert(name.to_string(), Arc::new(factory));
}

fn lookup<T: Clone>(
    map: &RwLock<BTreeMap<String, T>>,
    key: &str,
    name: Option<&str>,
) -> Result<T, ConfigError> {
    let map = map.read().unwrap_or_else(|p| p.into_inner());
    let registered = || {
        if map.is_empty() {
            "none is registered in this binary".to_string()
        } else {
            format!(
                "registered: {}",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(ConfigError::new(
            key,
            format!("name the custom backend ({})", registered()),
        ));
    };
    map.get(name).cloned().ok_or_else(|| {
        ConfigError::new(
            key,
            format!("no custom backend `{name}` ({})", registered()),
        )
    })
}

pub(crate) fn open_custom_queue(config: &Config) -> Result<Arc<dyn QueueBackend>, ConfigError> {
    let factory = lookup(
        queues(),
        "queue.custom_class",
        config.queue.custom_class.as_deref(),
    )?;
    factory(config)
}

pub(crate) fn open_custom_store(config: &Config) -> Result<Arc<dyn ResultStore>, ConfigError> {
    let factory = lookup(
        stores(),
        "cache.custom_class",
        config.cache.custom_class.as_deref(),
    )?;
    factory(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueType;

    #[test]
    fn custom_backends_are_found_by_name_and_errors_name_the_key() {
        let mut config = Config::default();
        config.queue.kind = QueueType::Custom;
        config.queue.custom_class = Some("unit-test-backend".into());
        let err = crate::open_queue_backend(&config)
            .err()
            .expect("not registered yet");
        assert_eq!(err.key, "queue.custom_class");

        let dir = std::env::temp_dir().join(format!("openhqm-registry-{}", std::process::id()));
        register_queue_backend("unit-test-backend", move |c| {
            crate::backends::embedded::EmbeddedBackend::open(&dir, c.queue.max_message_bytes)
                .map(|b| Arc::new(b) as Arc<dyn QueueBackend>)
                .map_err(|e| ConfigError::new("queue.custom_config", e.to_string()))
        });
        let backend = crate::open_queue_backend(&config).expect("registered");
        assert_eq!(backend.kind(), "embedded");

        config.queue.custom_class = Some("other".into());
        let err = crate::open_queue_backend(&config)
            .err()
            .expect("unknown name");
        assert!(
            err.message.contains("unit-test-backend"),
            "lists what is registered: {err}"
        );
    }
}
