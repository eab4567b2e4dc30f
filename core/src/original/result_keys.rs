//! Where the original's API reads a request's status and result, and in what
//! shape (its worker writes them, `O:src/openhqm/worker/worker.py`):
//!
//! - `req:{id}:meta`: `{"status", "submitted_at", "updated_at"}`;
//! - `resp:{id}`: for COMPLETED `{"result", "status_code", "headers",
//!   "processing_time_ms", "completed_at"}`, for FAILED `{"error",
//!   "completed_at"}` (the original wrote none; its API then says
//!   "Processing failed", ours gives it the reason).
//!
//! Values are JSON strings with an expiry, as its cache wrote them. The Redis
//! result store writes these beside its own record, in the same step, when
//! `cache.original_keys` is on.

use crate::model::{encode_base64, RequestRecord, Status, StoredResponse};
use serde_json::{json, Map, Value};

pub fn meta_key(id: &str) -> String {
    format!("req:{id}:meta")
}

pub fn response_key(id: &str) -> String {
    format!("resp:{id}")
}

pub fn meta_json(r: &RequestRecord) -> String {
    json!({
        "status": r.status.as_str(),
        "submitted_at": r.submitted_at,
        "updated_at": r.updated_at,
    })
    .to_string()
}

/// `None` where the original's API reads no response (not final yet, TIMEOUT).
pub fn response_json(r: &RequestRecord) -> Option<String> {
    let completed_at = r.completed_at.as_deref().unwrap_or(&r.updated_at);
    let value = match (r.status, &r.response) {
        (Status::Completed, Some(resp)) => json!({
            "result": result(resp),
            "status_code": resp.status_code,
            "headers": headers(resp),
            "processing_time_ms": r.processing_time_ms.unwrap_or(0),
            "completed_at": completed_at,
        }),
        (Status::Failed, _) => json!({
            "error": r.error.as_deref().unwrap_or("Processing failed"),
            "completed_at": completed_at,
        }),
        _ => return None,
    };
    Some(value.to_string())
}

/// The original's worker: the parsed body when the backend said JSON, else
/// `{"response": <text>, "content_type": <type>}` (base64 text, marked,
/// where the body is not UTF-8).
fn result(resp: &StoredResponse) -> Value {
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let bytes = resp.body_bytes().unwrap_or_default();
    if content_type.contains("application/json") {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            return v;
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => json!({"response": text, "content_type": content_type}),
        Err(e) => json!({
            "response": encode_base64(e.as_bytes()),
            "content_type": content_type,
            "encoding": "base64",
        }),
    }
}

/// A dict as aiohttp gave it: the backend's names, hop-by-hop ones dropped,
/// repeated headers joined.
fn headers(resp: &StoredResponse) -> Value {
    let mut map = Map::new();
    for (k, v) in &resp.headers {
        if k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        match map.get_mut(k) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(v);
            }
            _ => {
                map.insert(k.clone(), json!(v));
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, resp: Option<StoredResponse>) -> RequestRecord {
        let mut r = RequestRecord::pending("id", "2026-02-07T10:30:00.000Z");
        r.status = status;
        r.updated_at = "2026-02-07T10:30:01.000Z".into();
        r.response = resp;
        r.processing_time_ms = Some(42);
        r.completed_at = Some("2026-02-07T10:30:01.000Z".into());
        r
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn completed_json_backend() {
        let resp = StoredResponse::new(
            200,
            vec![
                ("Content-Type".into(), "application/json".into()),
                ("Connection".into(), "keep-alive".into()),
            ],
            br#"{"ok": true}"#,
        );
        let r = record(Status::Completed, Some(resp));
        assert_eq!(
            parse(&meta_json(&r)),
            json!({"status": "COMPLETED", "submitted_at": "2026-02-07T10:30:00.000Z",
                   "updated_at": "2026-02-07T10:30:01.000Z"})
        );
        assert_eq!(
            parse(&response_json(&r).unwrap()),
            json!({"result": {"ok": true}, "status_code": 200,
                   "headers": {"Content-Type": "application/json"},
                   "processing_time_ms": 42, "completed_at": "2026-02-07T10:30:01.000Z"})
        );
    }

    #[test]
    fn completed_text_and_binary_backends() {
        let text = StoredResponse::new(
            200,
            vec![("content-type".into(), "text/plain".into())],
            b"hi",
        );
        let v = parse(&response_json(&record(Status::Completed, Some(text))).unwrap());
        assert_eq!(
            v["result"],
            json!({"response": "hi", "content_type": "text/plain"})
        );
        let bin = StoredResponse::new(200, vec![], b"\xff\x00");
        let v = parse(&response_json(&record(Status::Completed, Some(bin))).unwrap());
        assert_eq!(v["result"]["response"], "/wA=");
        assert_eq!(v["result"]["encoding"], "base64");
    }

    #[test]
    fn failed_carries_the_error_and_pending_has_no_response() {
        let mut r = record(Status::Failed, None);
        r.error = Some("backend answered 500".into());
        let v = parse(&response_json(&r).unwrap());
        assert_eq!(v["error"], "backend answered 500");
        assert!(response_json(&record(Status::Processing, None)).is_none());
        assert!(response_json(&record(Status::Timeout, None)).is_none());
    }
}
