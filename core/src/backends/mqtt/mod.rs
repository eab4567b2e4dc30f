//! The MQTT backend: a queue on an MQTT 3.1.1 broker (QoS 1, shared
//! subscriptions, manual acks). No result store: pair it with Redis or
//! embedded for results.

mod queue;

pub use queue::{MqttBackend, MqttQueue, MqttSettings};

/// Log targets of the client library (see `backends::client_libraries`).
pub const CLIENT_LIBRARIES: &[&str] = &["rumqttc"];
