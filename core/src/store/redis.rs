//! Redis result store. (Being written.)

use super::StoreError;
use crate::config::CacheConfig;

pub struct RedisStore;

impl RedisStore {
    pub fn from_config(_config: &CacheConfig) -> Result<RedisStore, StoreError> {
        Err(StoreError::Unavailable("the Redis result store is not finished yet".into()))
    }
}

#[async_trait::async_trait]
impl super::ResultStore for RedisStore {
    async fn put(
        &self,
        _record: &crate::model::RequestRecord,
        _ttl: std::time::Duration,
    ) -> Result<super::PutOutcome, StoreError> {
        Err(StoreError::Unavailable("not finished".into()))
    }
    async fn get(&self, _id: &str) -> Result<Option<crate::model::RequestRecord>, StoreError> {
        Err(StoreError::Unavailable("not finished".into()))
    }
    async fn delete(&self, _id: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("not finished".into()))
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
