//! What the worker received, whatever produced it: an OpenHQM envelope
//! (captured request or submit-API payload) or a foreign message put on the
//! queue by another system (pattern 2, queue -> HTTP), or the original
//! OpenHQM's request message (core::original::message).

use openhqm_core::config::MessageFormat;
use openhqm_core::envelope::{Envelope, HttpRequest, Metadata, Source};
use openhqm_core::model::is_valid_correlation_id;
use openhqm_core::original;
use openhqm_core::queue::Message;
use openhqm_core::time::now_rfc3339;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct Work {
    pub correlation_id: String,
    pub submitted_at: String,
    pub metadata: Metadata,
    pub traceparent: Option<String>,
    pub partition_key: Option<String>,
    pub body: WorkBody,
}

#[derive(Debug, Clone)]
pub enum WorkBody {
    /// A request captured by the filter: replayed as it came.
    Captured(HttpRequest),
    /// `POST /api/v1/submit`: a JSON payload and the client's headers.
    Api {
        payload: Value,
        headers: BTreeMap<String, String>,
    },
    /// Another system's message: the value is the body, byte for byte, and
    /// the broker's attributes are the headers.
    Foreign {
        body: Vec<u8>,
        headers: BTreeMap<String, String>,
    },
}

/// Attributes a foreign producer may set to choose the correlation ID.
const FOREIGN_ID_ATTRIBUTES: &[&str] = &["correlation_id", "x-correlation-id"];

impl Work {
    /// Read a queue message as the configured `worker.message_format` says.
    pub fn from_message(
        message: &Message,
        format: MessageFormat,
        queue: &str,
    ) -> Result<Work, String> {
        if format == MessageFormat::Raw {
            return Ok(Work::foreign(message, queue));
        }
        if looks_like_envelope(&message.body) {
            return Envelope::decode(&message.body).map(Work::from_envelope);
        }
        // The original OpenHQM's request messages (a rolling migration on a
        // shared broker) are envelopes too, in its own shape.
        if let Some(decoded) = original::message::decode(&message.body) {
            return decoded.map(Work::from_envelope);
        }
        match format {
            MessageFormat::Auto => Ok(Work::foreign(message, queue)),
            _ => Envelope::decode(&message.body).map(Work::from_envelope),
        }
    }

    pub fn from_envelope(env: Envelope) -> Work {
        let body = match (env.source, env.request) {
            (Source::Filter, Some(request)) => WorkBody::Captured(request),
            _ => WorkBody::Api {
                payload: env.payload.unwrap_or_default(),
                headers: env.headers,
            },
        };
        Work {
            correlation_id: env.correlation_id,
            submitted_at: env.submitted_at,
            metadata: env.metadata,
            traceparent: env.traceparent,
            partition_key: env.partition_key,
            body,
        }
    }

    fn foreign(message: &Message, queue: &str) -> Work {
        let headers: BTreeMap<String, String> = message
            .attributes
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let correlation_id = FOREIGN_ID_ATTRIBUTES
            .iter()
            .filter_map(|a| headers.get(*a))
            .find(|v| is_valid_correlation_id(v))
            .cloned()
            .unwrap_or_else(|| derived_id(queue, &message.id));
        Work {
            correlation_id,
            submitted_at: now_rfc3339(),
            metadata: Metadata::default(),
            traceparent: headers.get("traceparent").cloned(),
            partition_key: message.key.clone(),
            body: WorkBody::Foreign {
                body: message.body.clone(),
                headers,
            },
        }
    }

    /// When the client stops caring (`metadata.timeout` seconds after
    /// submission); past it the request is TIMEOUT and never sent.
    pub fn deadline(&self) -> Option<SystemTime> {
        let secs = self.metadata.timeout?;
        let submitted = humantime::parse_rfc3339(&self.submitted_at).ok()?;
        submitted.checked_add(Duration::from_secs(secs))
    }

    /// The callback URL the client asked for, if any.
    pub fn callback_url(&self) -> Option<&str> {
        self.metadata.extra.get("callback_url")?.as_str()
    }

    /// The JSON the example/command/custom processors and the routing table
    /// see as the payload.
    pub fn payload(&self) -> Result<Value, String> {
        match &self.body {
            WorkBody::Api { payload, .. } => Ok(payload.clone()),
            WorkBody::Captured(req) => {
                let bytes = req.body_bytes()?;
                serde_json::from_slice(&bytes).map_err(|_| "the request body is not JSON".into())
            }
            WorkBody::Foreign { body, .. } => Ok(serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))),
        }
    }

    /// Header names lowercased; a captured request's repeated headers
    /// joined with ", " (RFC 9110 5.3).
    pub fn headers(&self) -> BTreeMap<String, String> {
        match &self.body {
            WorkBody::Api { headers, .. } | WorkBody::Foreign { headers, .. } => headers.clone(),
            WorkBody::Captured(req) => {
                let mut joined: BTreeMap<String, String> = BTreeMap::new();
                for (k, v) in &req.headers {
                    joined
                        .entry(k.to_ascii_lowercase())
                        .and_modify(|e| {
                            e.push_str(", ");
                            e.push_str(v);
                        })
                        .or_insert_with(|| v.clone());
                }
                joined
            }
        }
    }

    /// The message as the routing table sees it (the original's shape).
    pub fn routing_view(&self) -> Value {
        serde_json::json!({
            "correlation_id": self.correlation_id,
            "payload": self.payload().unwrap_or(Value::Null),
            "metadata": serde_json::to_value(&self.metadata).unwrap_or(Value::Null),
            "headers": self.headers(),
        })
    }
}

/// Cheap check before a full decode: OpenHQM envelopes are JSON objects with
/// a version and a correlation ID; a foreign JSON message rarely has both.
fn looks_like_envelope(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        version: Option<u32>,
        correlation_id: Option<String>,
        source: Option<Source>,
    }
    matches!(
        serde_json::from_slice::<Probe>(body),
        Ok(Probe {
            version: Some(_),
            correlation_id: Some(_),
            source: Some(_)
        })
    )
}

/// A stable UUID-shaped ID for a foreign message, so its redeliveries share
/// one result record.
fn derived_id(queue: &str, message_id: &str) -> String {
    let digest = Sha256::digest(format!("{queue}\n{message_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &[u8]) -> Message {
        Message {
            id: "1700000000000-0".into(),
            body: body.to_vec(),
            attributes: [("Content-Type".to_string(), "application/json".to_string())]
                .into_iter()
                .collect(),
            key: Some("customer-7".into()),
        }
    }

    #[test]
    fn foreign_messages_keep_bytes_headers_and_key() {
        let m = msg(br#"{"order": 7}"#);
        let w = Work::from_message(&m, MessageFormat::Auto, "q").unwrap();
        let WorkBody::Foreign { body, headers } = &w.body else {
            panic!("expected a foreign message")
        };
        assert_eq!(body, br#"{"order": 7}"#);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(w.partition_key.as_deref(), Some("customer-7"));
        assert!(is_valid_correlation_id(&w.correlation_id));
        // Redeliveries map to the same record.
        let again = Work::from_message(&m, MessageFormat::Raw, "q").unwrap();
        assert_eq!(again.correlation_id, w.correlation_id);
        let other_queue = Work::from_message(&m, MessageFormat::Raw, "r").unwrap();
        assert_ne!(other_queue.correlation_id, w.correlation_id);
    }

    #[test]
    fn producer_chosen_correlation_id_is_used_when_valid() {
        let mut m = msg(b"\xff\x00bytes");
        m.attributes.insert(
            "correlation_id".into(),
            "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
        );
        let w = Work::from_message(&m, MessageFormat::Raw, "q").unwrap();
        assert_eq!(w.correlation_id, "67e55044-10b1-426f-9247-bb680e5fe0c8");
        m.attributes
            .insert("correlation_id".into(), "not-a-uuid".into());
        let w = Work::from_message(&m, MessageFormat::Raw, "q").unwrap();
        assert_ne!(w.correlation_id, "not-a-uuid");
    }

    #[test]
    fn envelope_format_rejects_foreign_messages() {
        assert!(Work::from_message(&msg(b"{}"), MessageFormat::Envelope, "q").is_err());
        // A broken envelope is still an error in auto mode, not a foreign message.
        let broken = br#"{"version": 1, "correlation_id": "x", "source": "filter"}"#;
        assert!(Work::from_message(&msg(broken), MessageFormat::Auto, "q").is_err());
    }

    #[test]
    fn the_originals_stream_entries_are_envelopes_in_every_format_but_raw() {
        let message = serde_json::json!({
            "correlation_id": "550e8400-e29b-41d4-a716-446655440000",
            "payload": {"operation": "echo"},
            "headers": {},
            "timestamp": "2026-02-07T10:30:00+00:00",
            "metadata": {"priority": 0, "timeout": 300, "retry_count": 0, "endpoint": null, "method": null},
        });
        let entry = serde_json::json!({"payload": message.to_string()});
        for format in [MessageFormat::Envelope, MessageFormat::Auto] {
            let w = Work::from_message(&msg(entry.to_string().as_bytes()), format, "q").unwrap();
            assert_eq!(w.correlation_id, "550e8400-e29b-41d4-a716-446655440000");
            assert!(
                matches!(&w.body, WorkBody::Api { payload, .. } if payload["operation"] == "echo")
            );
        }
        let raw = Work::from_message(&msg(entry.to_string().as_bytes()), MessageFormat::Raw, "q")
            .unwrap();
        assert!(matches!(raw.body, WorkBody::Foreign { .. }));
    }

    #[test]
    fn deadline_from_metadata_timeout() {
        let mut w = Work::from_message(&msg(b"{}"), MessageFormat::Raw, "q").unwrap();
        assert!(w.deadline().is_none());
        w.submitted_at = "2026-01-01T00:00:00.000Z".into();
        w.metadata.timeout = Some(60);
        let d = w.deadline().unwrap();
        assert_eq!(d, humantime::parse_rfc3339("2026-01-01T00:01:00Z").unwrap());
    }
}
