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

/// A request's answer in the original's ResultResponse shape: all eight of
/// its keys, null when unknown, plus ours (`submitted_at`, `updated_at`,
/// `attempts`, and `result_encoding` for a base64 body). While the request
/// is not final, `result`, `headers` and `status_code` are null (an earlier
/// attempt's answer is not the result); `error` says why it is retrying.
pub fn result_json(r: &RequestRecord) -> serde_json::Value {
    let mut body = serde_json::json!({
        "correlation_id": r.correlation_id,
        "status": r.status,
        "result": null,
        "headers": null,
        "status_code": null,
        "error": r.error,
        "processing_time_ms": r.processing_time_ms,
        "completed_at": r.completed_at,
        "submitted_at": r.submitted_at,
        "updated_at": r.updated_at,
        "attempts": r.attempts,
    });
    if let Some(resp) = r.response.as_ref().filter(|_| r.status.is_final()) {
        body["status_code"] = serde_json::json!(resp.status_code);
        body["headers"] = headers_object(resp);
        let (v, enc) = result_value(resp);
        body["result"] = v;
        if let Some(enc) = enc {
            body["result_encoding"] = serde_json::json!(enc);
        }
    }
    body
}

/// Header names in their canonical case (`Content-Type`, `X-Request-Id`),
/// as the original's clients read them from aiohttp; HTTP/1 and HTTP/2
/// reach us lowercased, so the backend's exact spelling is not known.
/// Repeated headers are joined with ", ".
fn headers_object(resp: &StoredResponse) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in &resp.headers {
        let key = canonical_header_name(k);
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

/// `x-served-by` → `X-Served-By`.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// The body as the original gave it: the JSON value for a JSON content
/// type, else `{"response": text, "content_type": ct}`. A binary body
/// stays base64 text (with `result_encoding`), an empty JSON answer null.
fn result_value(resp: &StoredResponse) -> (serde_json::Value, Option<&'static str>) {
    if resp.body_encoding.is_some() {
        return (serde_json::json!(resp.body), Some("base64"));
    }
    let content_type = resp.header("content-type").unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        if resp.body.is_empty() {
            return (serde_json::Value::Null, None);
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&resp.body) {
            return (v, None);
        }
    }
    (
        serde_json::json!({"response": resp.body, "content_type": content_type}),
        None,
    )
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

    fn completed(headers: &[(&str, &str)], body: &[u8]) -> RequestRecord {
        let mut r = RequestRecord::pending("67e55044-10b1-426f-9247-bb680e5fe0c8", "t0");
        r.status = Status::Completed;
        r.response = Some(StoredResponse::new(
            200,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        ));
        r
    }

    #[test]
    fn results_take_the_originals_shapes() {
        let json = result_json(&completed(
            &[
                ("content-type", "application/json"),
                ("x-backend-header", "a"),
                ("X-Backend-Header", "b"),
            ],
            br#"{"output":"success"}"#,
        ));
        assert_eq!(json["result"], serde_json::json!({"output": "success"}));
        assert_eq!(json["headers"]["Content-Type"], "application/json");
        assert_eq!(json["headers"]["X-Backend-Header"], "a, b");
        assert!(json["error"].is_null() && json.get("error").is_some());
        // Text, and JSON-looking text under a text type, as the original wrapped them.
        for body in ["plain text answer", "{\"a\":1}"] {
            let json = result_json(&completed(
                &[("content-type", "text/plain")],
                body.as_bytes(),
            ));
            assert_eq!(
                json["result"],
                serde_json::json!({"response": body, "content_type": "text/plain"})
            );
        }
        let json = result_json(&completed(&[], b"no type"));
        assert_eq!(json["result"]["content_type"], "");
        // Binary stays base64.
        let json = result_json(&completed(&[("content-type", "image/png")], &[0xff, 0xfe]));
        assert_eq!(
            (json["result"].as_str(), json["result_encoding"].as_str()),
            (Some("//4="), Some("base64"))
        );
        assert!(
            result_json(&completed(&[("content-type", "application/json")], b""))["result"]
                .is_null()
        );
    }

    #[test]
    fn a_pending_answer_has_every_key_and_no_earlier_result() {
        let mut r = completed(&[("content-type", "application/json")], b"{}");
        r.status = Status::Pending;
        r.error = Some("backend answered HTTP 500".into());
        let json = result_json(&r);
        for key in [
            "correlation_id",
            "status",
            "result",
            "headers",
            "status_code",
            "error",
            "processing_time_ms",
            "completed_at",
        ] {
            assert!(json.get(key).is_some(), "{key}: {json}");
        }
        assert!(
            json["result"].is_null() && json["status_code"].is_null(),
            "{json}"
        );
        assert_eq!(json["status"], "PENDING");
    }

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical_header_name("x-served-by"), "X-Served-By");
        assert_eq!(canonical_header_name("CONTENT-TYPE"), "Content-Type");
        assert_eq!(canonical_header_name("etag"), "Etag");
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
