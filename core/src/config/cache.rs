//! `cache`: the result store.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    Embedded,
    /// The original's in-process cache; here an alias of `embedded`, because
    /// bridge and worker are separate processes that must share results.
    Memory,
    Redis,
    /// A store registered with `registry::register_result_store`.
    Custom,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(rename = "type")]
    pub kind: CacheType,
    pub redis_url: String,
    /// How long a request's status and result are kept.
    pub ttl_seconds: u64,
    pub max_connections: u32,
    /// Prefix of the Redis keys and channel the result store uses.
    pub key_prefix: String,
    /// With `type: custom`: the registered name of the store.
    pub custom_class: Option<String>,
    /// Redis only: also write each request's status and result where the
    /// original OpenHQM's API reads them (`req:{id}:meta`, `resp:{id}`), for
    /// a rolling migration (docs/migration.md).
    pub original_keys: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            kind: CacheType::Embedded,
            redis_url: "redis://localhost:6379".into(),
            ttl_seconds: 3600,
            max_connections: 10,
            key_prefix: "openhqm".into(),
            custom_class: None,
            original_keys: false,
        }
    }
}
