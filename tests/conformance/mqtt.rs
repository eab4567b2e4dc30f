//! The conformance suite on MQTT (being written).
