//! What the result store keeps per request, and the body encoding shared by
//! envelopes and results.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    Timeout,
}

impl Status {
    /// Final statuses are never overwritten by a late or redelivered attempt.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Processing => "PROCESSING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Timeout => "TIMEOUT",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a byte body is written in JSON: as text when it is UTF-8, else base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    Base64,
}

pub fn encode_body(bytes: &[u8]) -> (String, Option<BodyEncoding>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            Some(BodyEncoding::Base64),
        ),
    }
}

pub fn decode_body(text: &str, encoding: Option<BodyEncoding>) -> Result<Vec<u8>, String> {
    match encoding {
        None => Ok(text.as_bytes().to_vec()),
        Some(BodyEncoding::Base64) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("body is not valid base64: {e}")),
    }
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    decode_body(text, Some(BodyEncoding::Base64))
}

/// The backend's answer (or the processor's output) as kept for the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status_code: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<BodyEncoding>,
}

impl StoredResponse {
    pub fn new(status_code: u16, headers: Vec<(String, String)>, body: &[u8]) -> Self {
        let (body, body_encoding) = encode_body(body);
        Self {
            status_code,
            headers,
            body,
            body_encoding,
        }
    }

    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        decode_body(&self.body, self.body_encoding)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request's status and, once final, its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub correlation_id: String,
    pub status: Status,
    pub submitted_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

impl RequestRecord {
    pub fn pending(correlation_id: &str, submitted_at: &str) -> Self {
        Self {
            correlation_id: correlation_id.to_string(),
            status: Status::Pending,
            submitted_at: submitted_at.to_string(),
            updated_at: submitted_at.to_string(),
            attempts: 0,
            response: None,
            error: None,
            processing_time_ms: None,
            completed_at: None,
        }
    }
}

/// The final answer as the original's ResultResponse, extended: `result` is
/// the backend's body as JSON when it is JSON, else as text (or base64, with
/// `result_encoding`).
pub fn result_json(r: &RequestRecord) -> serde_json::Value {
    let mut body = serde_json::json!({
        "correlation_id": r.correlation_id,
        "status": r.status,
        "submitted_at": r.submitted_at,
        "completed_at": r.completed_at,
        "processing_time_ms": r.processing_time_ms,
        "attempts": r.attempts,
    });
    if let Some(resp) = &r.response {
        body["status_code"] = serde_json::json!(resp.status_code);
        body["headers"] = headers_object(resp);
        match result_value(resp) {
            (v, Some(enc)) => {
                body["result"] = v;
                body["result_encoding"] = serde_json::json!(enc);
            }
            (v, None) => body["result"] = v,
        }
    } else {
        body["result"] = serde_json::Value::Null;
    }
    if let Some(err) = &r.error {
        body["error"] = serde_json::json!(err);
    }
    body
}

fn headers_object(resp: &StoredResponse) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in &resp.headers {
        let key = k.to_ascii_lowercase();
        match map.get_mut(&key) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(v);
            }
            _ => {
                map.insert(key, serde_json::json!(v));
            }
        }
    }
    serde_json::Value::Object(map)
}

fn result_value(resp: &StoredResponse) -> (serde_json::Value, Option<&'static str>) {
    if resp.body_encoding.is_some() {
        return (serde_json::json!(resp.body), Some("base64"));
    }
    if resp.body.is_empty() {
        return (serde_json::Value::Null, None);
    }
    match serde_json::from_str::<serde_json::Value>(&resp.body) {
        Ok(v) => (v, None),
        Err(_) => (serde_json::json!(resp.body), None),
    }
}

/// Correlation IDs are UUIDs; anything else is a client error, not a lookup.
pub fn is_valid_correlation_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_text_and_binary() {
        let all: Vec<u8> = (0..=255u8).collect();
        let (text, enc) = encode_body(&all);
        assert_eq!(enc, Some(BodyEncoding::Base64));
        assert_eq!(decode_body(&text, enc).unwrap(), all);
        let (text, enc) = encode_body("héllo".as_bytes());
        assert_eq!((text.as_str(), enc), ("héllo", None));
        assert!(decode_body("***", Some(BodyEncoding::Base64)).is_err());
    }

    #[test]
    fn status_serializes_as_the_api_says() {
        assert_eq!(
            serde_json::to_string(&Status::Processing).unwrap(),
            "\"PROCESSING\""
        );
        assert!(Status::Completed.is_final() && Status::Timeout.is_final());
        assert!(!Status::Pending.is_final());
    }

    #[test]
    fn correlation_ids() {
        assert!(is_valid_correlation_id(
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        ));
        assert!(!is_valid_correlation_id("67e5504410b1426f9247bb680e5fe0c8"));
        assert!(!is_valid_correlation_id("not-a-uuid"));
        assert!(!is_valid_correlation_id(""));
    }
}
