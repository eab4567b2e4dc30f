//! Finished spans and their OTLP/HTTP JSON encoding (an
//! `ExportTraceServiceRequest` for `POST <collector>/v1/traces` with
//! `Content-Type: application/json`). OTLP's JSON differs from the generic
//! protobuf mapping in two ways that matter here: trace and span ids are
//! lower-case hex (not base64), and enums are numbers.
//! <https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>

use crate::context::{SpanId, TraceId};
use std::fmt::Write;

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// OTLP `Status`: unset unless the operation failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    Error(String),
}

/// A finished span, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(String, AttrValue)>,
    pub status: SpanStatus,
}

impl Span {
    pub fn attr(&mut self, key: &str, value: impl Into<AttrValue>) {
        self.attributes.push((key.to_string(), value.into()));
    }
}

/// A JSON string literal (quoted and escaped).
fn push_str_lit(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// The JSON is written directly rather than built as a serde_json tree: the
// filter carries this code in its .wasm, and the tree version cost ~15 KB.
fn push_key_values(out: &mut String, attrs: &[(String, AttrValue)]) {
    out.push('[');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        push_str_lit(out, k);
        out.push_str(",\"value\":{");
        match v {
            AttrValue::Str(s) => {
                out.push_str("\"stringValue\":");
                push_str_lit(out, s);
            }
            // int64 is a JSON string in the protobuf mapping.
            AttrValue::Int(n) => {
                let _ = write!(out, "\"intValue\":\"{n}\"");
            }
            AttrValue::Bool(b) => {
                let _ = write!(out, "\"boolValue\":{b}");
            }
        }
        out.push_str("}}");
    }
    out.push(']');
}

fn push_span(out: &mut String, s: &Span) {
    let _ = write!(
        out,
        "{{\"traceId\":\"{}\",\"spanId\":\"{}\"",
        s.trace_id, s.span_id
    );
    if let Some(p) = s.parent_span_id {
        let _ = write!(out, ",\"parentSpanId\":\"{p}\"");
    }
    out.push_str(",\"name\":");
    push_str_lit(out, &s.name);
    // fixed64 is a JSON string in the protobuf mapping.
    let _ = write!(
        out,
        ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\"",
        s.kind as i64, s.start_unix_nanos, s.end_unix_nanos
    );
    if !s.attributes.is_empty() {
        out.push_str(",\"attributes\":");
        push_key_values(out, &s.attributes);
    }
    match &s.status {
        SpanStatus::Unset => {}
        SpanStatus::Ok => out.push_str(",\"status\":{\"code\":1}"),
        SpanStatus::Error(msg) => {
            out.push_str(",\"status\":{\"code\":2,\"message\":");
            push_str_lit(out, msg);
            out.push('}');
        }
    }
    out.push('}');
}

/// One export request body for `spans` of one service.
pub fn encode_export_request(
    service_name: &str,
    resource: &[(String, AttrValue)],
    spans: &[Span],
) -> Vec<u8> {
    let mut attrs = vec![("service.name".to_string(), AttrValue::from(service_name))];
    attrs.extend(resource.iter().cloned());
    let mut out = String::with_capacity(256 + spans.len() * 320);
    out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    push_key_values(&mut out, &attrs);
    let _ = write!(
        out,
        "}},\"scopeSpans\":[{{\"scope\":{{\"name\":\"openhqm\",\"version\":\"{}\"}},\"spans\":[",
        env!("CARGO_PKG_VERSION")
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_span(&mut out, s);
    }
    out.push_str("]}]}]}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn encodes_the_otlp_json_shape() {
        let mut span = Span {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId([2; 8])),
            name: "send openhqm-requests".into(),
            kind: SpanKind::Producer,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_500_000,
            attributes: vec![],
            status: SpanStatus::Error("broker down".into()),
        };
        span.attr("messaging.system", "redis");
        span.attr("http.response.status_code", 202i64);
        let body = encode_export_request("openhqm-bridge", &[], &[span]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "openhqm-bridge"}})
        );
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "abababababababababababababababab");
        assert_eq!(s["spanId"], "0101010101010101");
        assert_eq!(s["parentSpanId"], "0202020202020202");
        assert_eq!(s["kind"], 4);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["status"], json!({"code": 2, "message": "broker down"}));
        assert_eq!(
            s["attributes"][1],
            json!({"key": "http.response.status_code", "value": {"intValue": "202"}})
        );
    }

    #[test]
    fn strings_are_escaped_into_valid_json() {
        let mut span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: None,
            name: "a \"quoted\" \\ name\n\u{1}é".into(),
            kind: SpanKind::Internal,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![],
            status: SpanStatus::Ok,
        };
        span.attr("k\"", true);
        let v: Value = serde_json::from_slice(&encode_export_request("s\\", &[], &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["name"], "a \"quoted\" \\ name\n\u{1}é");
        assert_eq!(
            s["attributes"][0],
            json!({"key": "k\"", "value": {"boolValue": true}})
        );
        assert_eq!(s["status"], json!({"code": 1}));
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "s\\"
        );
    }

    #[test]
    fn a_root_span_has_no_parent_and_unset_status() {
        let span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: None,
            name: "x".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![],
            status: SpanStatus::Unset,
        };
        let v: Value = serde_json::from_slice(&encode_export_request("s", &[], &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(s.get("parentSpanId").is_none());
        assert!(s.get("status").is_none());
        assert!(s.get("attributes").is_none());
    }
}
