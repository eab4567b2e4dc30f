//! `queue`: which backend carries the messages, the queue names, and the
//! backends' own keys (the original's flat `queue.<backend>_*` names).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Embedded,
    Redis,
    Kafka,
    Sqs,
    AzureEventhubs,
    GcpPubsub,
    Mqtt,
    Custom,
}

impl QueueType {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueType::Embedded => "embedded",
            QueueType::Redis => "redis",
            QueueType::Kafka => "kafka",
            QueueType::Sqs => "sqs",
            QueueType::AzureEventhubs => "azure_eventhubs",
            QueueType::GcpPubsub => "gcp_pubsub",
            QueueType::Mqtt => "mqtt",
            QueueType::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(rename = "type")]
    pub kind: QueueType,
    /// Where the embedded queue and result store keep their files.
    pub data_dir: PathBuf,
    pub request_queue_name: String,
    pub response_queue_name: String,
    pub dlq_name: String,
    /// Largest message body a backend accepts; larger ones are refused.
    pub max_message_bytes: usize,
    pub redis_url: String,
    /// Redis Streams consumer group shared by the worker fleet.
    pub redis_consumer_group: String,
    /// This process's consumer name in the group; default host-pid-random.
    /// A stable name (a StatefulSet pod name) lets a restarted worker take
    /// back its own pending messages at once instead of after the lease.
    pub redis_consumer_name: Option<String>,
    /// MQTT shared-subscription group (`$share/<group>/<topic>`).
    pub mqtt_shared_group: String,
    // The original's keys for the other backends, accepted so manifests parse;
    // each backend reads its own when it is built in.
    pub kafka_bootstrap_servers: Option<String>,
    pub kafka_consumer_group: Option<String>,
    pub kafka_topics: Option<Vec<String>>,
    pub sqs_region: Option<String>,
    pub sqs_queue_url: Option<String>,
    pub azure_eventhubs_connection_string: Option<String>,
    pub azure_eventhubs_name: Option<String>,
    pub azure_eventhubs_consumer_group: Option<String>,
    pub azure_eventhubs_checkpoint_store: Option<String>,
    pub gcp_project_id: Option<String>,
    pub gcp_credentials_path: Option<String>,
    pub gcp_max_messages: Option<u32>,
    pub mqtt_broker_host: Option<String>,
    pub mqtt_broker_port: Option<u16>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_qos: Option<u8>,
    pub mqtt_client_id: Option<String>,
    pub custom_module: Option<String>,
    pub custom_class: Option<String>,
    pub custom_config: Option<Value>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueType::Embedded,
            data_dir: PathBuf::from("data"),
            request_queue_name: "openhqm-requests".into(),
            response_queue_name: "openhqm-responses".into(),
            dlq_name: "openhqm-dlq".into(),
            max_message_bytes: 16 * 1024 * 1024,
            redis_url: "redis://localhost:6379".into(),
            redis_consumer_group: "openhqm-workers".into(),
            redis_consumer_name: None,
            mqtt_shared_group: "openhqm-workers".into(),
            kafka_bootstrap_servers: None,
            kafka_consumer_group: None,
            kafka_topics: None,
            sqs_region: None,
            sqs_queue_url: None,
            azure_eventhubs_connection_string: None,
            azure_eventhubs_name: None,
            azure_eventhubs_consumer_group: None,
            azure_eventhubs_checkpoint_store: None,
            gcp_project_id: None,
            gcp_credentials_path: None,
            gcp_max_messages: None,
            mqtt_broker_host: None,
            mqtt_broker_port: None,
            mqtt_username: None,
            mqtt_password: None,
            mqtt_qos: None,
            mqtt_client_id: None,
            custom_module: None,
            custom_class: None,
            custom_config: None,
        }
    }
}
