//! MQTT queue backend. (Being written.)

use super::{Queue, QueueBackend, QueueError};
use crate::config::QueueConfig;
use async_trait::async_trait;
use std::sync::Arc;

pub struct MqttBackend;

impl MqttBackend {
    pub fn from_config(_config: &QueueConfig) -> Result<MqttBackend, QueueError> {
        Err(QueueError::Unsupported("the MQTT backend is not finished yet"))
    }
}

#[async_trait]
impl QueueBackend for MqttBackend {
    fn kind(&self) -> &str {
        "mqtt"
    }
    async fn open(&self, _name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Err(QueueError::Unsupported("the MQTT backend is not finished yet"))
    }
}
