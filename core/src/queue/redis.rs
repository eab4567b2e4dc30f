//! Redis Streams queue backend. (Being written.)

use super::{Queue, QueueBackend, QueueError};
use crate::config::QueueConfig;
use async_trait::async_trait;
use std::sync::Arc;

pub struct RedisBackend;

impl RedisBackend {
    pub fn from_config(_config: &QueueConfig) -> Result<RedisBackend, QueueError> {
        Err(QueueError::Unsupported("the Redis backend is not finished yet"))
    }
}

#[async_trait]
impl QueueBackend for RedisBackend {
    fn kind(&self) -> &str {
        "redis"
    }
    async fn open(&self, _name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Err(QueueError::Unsupported("the Redis backend is not finished yet"))
    }
}
