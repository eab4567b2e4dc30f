//! The original's request message: `{correlation_id, payload, headers,
//! timestamp, metadata}` as JSON. Its Redis queue writes that JSON into the
//! stream entry's one field `payload`; its MQTT queue publishes it as `body`
//! of a JSON wrapper `{id, body, attributes, priority, timestamp}`. Either way it becomes a submit-API envelope, as if our
//! bridge had accepted the same request.

use crate::envelope::{Envelope, Metadata, Source, ENVELOPE_VERSION};
use crate::model::is_valid_correlation_id;
use crate::time::now_rfc3339;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `Some` when `body` is in the original's shape (decoded, or why it cannot
/// be), `None` when it is something else.
pub fn decode(body: &[u8]) -> Option<Result<Envelope, String>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    // Our Redis queue hands over an entry without a `body` field as a JSON
    // object of its fields: the original's entry is `{"payload": "<json>"}`.
    let message = match object.get("payload") {
        Some(Value::String(inner)) if object.len() == 1 => {
            match serde_json::from_str::<Value>(inner) {
                Ok(Value::Object(m)) if is_original(&m) => m,
                _ => return None,
            }
        }
        _ if is_original(object) => object.clone(),
        // Its MQTT queue wraps the message: `{"id", "body": <message>,
        // "attributes", "priority", "timestamp"}`.
        _ => match object.get("body") {
            Some(Value::Object(m)) if object.contains_key("id") && is_original(m) => m.clone(),
            _ => return None,
        },
    };
    Some(to_envelope(message))
}

/// The original's messages have a correlation ID and a payload, and no
/// envelope version (ours always have one).
fn is_original(m: &Map<String, Value>) -> bool {
    m.contains_key("correlation_id") && m.contains_key("payload") && !m.contains_key("version")
}

fn to_envelope(mut m: Map<String, Value>) -> Result<Envelope, String> {
    let correlation_id = match m.remove("correlation_id") {
        Some(Value::String(id)) if is_valid_correlation_id(&id) => id,
        other => {
            return Err(format!(
                "original message: invalid correlation_id {other:?}"
            ))
        }
    };
    let payload = m.remove("payload").unwrap_or(Value::Null);
    let headers = match m.remove("headers") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(h)) => h
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(format!(
                    "original message: header {k} is not a string: {other}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "original message: headers is not an object: {other}"
            ))
        }
    };
    let submitted_at = match m.remove("timestamp") {
        Some(Value::String(t)) => normalize_timestamp(&t)
            .ok_or_else(|| format!("original message: unreadable timestamp {t:?}"))?,
        _ => now_rfc3339(),
    };
    let metadata = metadata(m.remove("metadata"))?;
    Ok(Envelope {
        version: ENVELOPE_VERSION,
        correlation_id,
        submitted_at,
        source: Source::Api,
        metadata,
        traceparent: None,
        payload: Some(payload),
        headers,
        request: None,
        partition_key: None,
    })
}

/// The original's `RequestMetadata.model_dump()`: unset fields are `null`
/// (our metadata takes its integer `priority` as it is); `timeout` is
/// dropped; `retry_count` and anything else stay in `extra`.
fn metadata(raw: Option<Value>) -> Result<Metadata, String> {
    let mut m = match raw {
        None | Some(Value::Null) => return Ok(Metadata::default()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "original message: metadata is not an object: {other}"
            ))
        }
    };
    m.retain(|_, v| !v.is_null());
    // The original's API always sent `timeout` (300 by default) and its
    // worker never read it; as our deadline it would expire an old backlog.
    m.remove("timeout");
    serde_json::from_value(Value::Object(m)).map_err(|e| format!("original message: metadata: {e}"))
}

/// Python's `datetime.isoformat()` (`2026-02-07T10:30:00.123456+00:00`, or
/// naive, meaning UTC in the original) as our RFC 3339 UTC text.
fn normalize_timestamp(t: &str) -> Option<String> {
    let (base, offset_secs) = split_offset(t)?;
    let parsed = humantime::parse_rfc3339_weak(base).ok()?;
    let utc = if offset_secs >= 0 {
        parsed.checked_sub(std::time::Duration::from_secs(offset_secs.unsigned_abs()))?
    } else {
        parsed.checked_add(std::time::Duration::from_secs(offset_secs.unsigned_abs()))?
    };
    Some(humantime::format_rfc3339_millis(utc).to_string())
}

/// The local time and its offset from UTC in seconds (`Z` and none are 0).
fn split_offset(t: &str) -> Option<(&str, i64)> {
    if let Some(base) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return Some((base, 0));
    }
    // An offset is the last `+HH:MM` / `-HH:MM` after the time part.
    let time_start = t.find('T').or_else(|| t.find(' '))?;
    let rest = &t[time_start..];
    match rest.rfind(['+', '-']) {
        Some(i) => {
            let (base, off) = t.split_at(time_start + i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            Some((base, sign * (h * 3600 + m * 60)))
        }
        None => Some((t, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "550e8400-e29b-41d4-a716-446655440000";

    /// What the original's API publishes for its own example request
    /// (`SubmitRequest` example, `metadata.model_dump()` with defaults).
    fn original_message() -> Value {
        serde_json::json!({
            "correlation_id": ID,
            "payload": {"operation": "echo", "data": "Hello World"},
            "headers": {"Authorization": "Bearer token123"},
            "timestamp": "2026-02-07T10:30:00.123456+00:00",
            "metadata": {"priority": 5, "timeout": 300, "retry_count": 0,
                         "endpoint": "api-service", "method": null}
        })
    }

    #[test]
    fn a_redis_stream_entry_of_the_original_becomes_a_submit_envelope() {
        // Our Redis queue hands a body-less entry over as its fields.
        let entry = serde_json::json!({"payload": original_message().to_string()});
        let env = decode(entry.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!(env.correlation_id, ID);
        assert_eq!(env.source, Source::Api);
        assert_eq!(env.submitted_at, "2026-02-07T10:30:00.123Z");
        assert_eq!(env.payload.unwrap()["data"], "Hello World");
        assert_eq!(env.headers["Authorization"], "Bearer token123");
        assert_eq!(serde_json::to_value(&env.metadata).unwrap()["priority"], 5);
        // Never enforced by the original: no deadline for its backlog.
        assert_eq!(env.metadata.timeout, None);
        assert_eq!(env.metadata.endpoint.as_deref(), Some("api-service"));
        assert_eq!(env.metadata.method, None);
        assert_eq!(env.metadata.extra["retry_count"], 0);
    }

    #[test]
    fn the_bare_message_of_the_original_is_read_too() {
        let env = decode(original_message().to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(env.correlation_id, ID);
    }

    #[test]
    fn the_mqtt_wrapper_of_the_original_is_read_too() {
        let wrapped = serde_json::json!({"id": "m-1", "body": original_message(),
            "attributes": {}, "priority": 0, "timestamp": 1770460200.5});
        let env = decode(wrapped.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!(env.correlation_id, ID);
        assert_eq!(env.payload.unwrap()["operation"], "echo");
    }

    #[test]
    fn other_messages_are_not_taken_for_the_original() {
        for body in [
            r#"{"order": 7}"#.to_string(),
            r#"{"payload": "not json"}"#.to_string(),
            r#"{"payload": "{\"x\": 1}"}"#.to_string(),
            // Ours: has a version.
            format!(r#"{{"version": 1, "correlation_id": "{ID}", "payload": {{}}}}"#),
            "[1, 2]".to_string(),
            "\u{0}binary".to_string(),
        ] {
            assert!(decode(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn broken_original_messages_say_why() {
        let mut m = original_message();
        m["correlation_id"] = "not-a-uuid".into();
        let err = decode(m.to_string().as_bytes()).unwrap().unwrap_err();
        assert!(err.contains("correlation_id"), "{err}");
        let mut m = original_message();
        m["headers"] = serde_json::json!({"x": 1});
        let err = decode(m.to_string().as_bytes()).unwrap().unwrap_err();
        assert!(err.contains("header x"), "{err}");
        let mut m = original_message();
        m["timestamp"] = "yesterday".into();
        assert!(decode(m.to_string().as_bytes()).unwrap().is_err());
    }

    #[test]
    fn python_isoformat_timestamps() {
        for (text, want) in [
            ("2026-02-07T10:30:00+00:00", "2026-02-07T10:30:00.000Z"),
            ("2026-02-07T10:30:00.5", "2026-02-07T10:30:00.500Z"),
            ("2026-02-07T12:30:00+02:00", "2026-02-07T10:30:00.000Z"),
            ("2026-02-07T05:00:00-05:30", "2026-02-07T10:30:00.000Z"),
            ("2026-02-07T10:30:00Z", "2026-02-07T10:30:00.000Z"),
        ] {
            assert_eq!(normalize_timestamp(text).as_deref(), Some(want), "{text}");
        }
        assert_eq!(normalize_timestamp("2026-02-07T10:30:00+25:00"), None);
    }
}
