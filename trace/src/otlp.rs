//! Finished spans and their OTLP/HTTP JSON encoding (an
//! `ExportTraceServiceRequest` for `POST <collector>/v1/traces` with
//! `Content-Type: application/json`). OTLP's JSON differs from the generic
//! protobuf mapping in two ways that matter here: trace and span ids are
//! lower-case hex (not base64), and enums are numbers.
//! <https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>

use crate::context::{SpanId, TraceId};
use serde_json::{json, Map, Value};

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

fn key_values(attrs: &[(String, AttrValue)]) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => json!({ "stringValue": s }),
                    // int64 is a JSON string in the protobuf mapping.
                    AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
                    AttrValue::Bool(b) => json!({ "boolValue": b }),
                };
                json!({ "key": k, "value": value })
            })
            .collect(),
    )
}

fn span_json(s: &Span) -> Value {
    let mut o = Map::new();
    o.insert("traceId".into(), s.trace_id.to_string().into());
    o.insert("spanId".into(), s.span_id.to_string().into());
    if let Some(p) = s.parent_span_id {
        o.insert("parentSpanId".into(), p.to_string().into());
    }
    o.insert("name".into(), s.name.clone().into());
    o.insert("kind".into(), (s.kind as i64).into());
    // fixed64 is a JSON string in the protobuf mapping.
    o.insert(
        "startTimeUnixNano".into(),
        s.start_unix_nanos.to_string().into(),
    );
    o.insert(
        "endTimeUnixNano".into(),
        s.end_unix_nanos.to_string().into(),
    );
    if !s.attributes.is_empty() {
        o.insert("attributes".into(), key_values(&s.attributes));
    }
    match &s.status {
        SpanStatus::Unset => {}
        SpanStatus::Ok => {
            o.insert("status".into(), json!({ "code": 1 }));
        }
        SpanStatus::Error(msg) => {
            o.insert("status".into(), json!({ "code": 2, "message": msg }));
        }
    }
    Value::Object(o)
}

/// One export request body for `spans` of one service.
pub fn encode_export_request(
    service_name: &str,
    resource: &[(String, AttrValue)],
    spans: &[Span],
) -> Vec<u8> {
    let mut attrs = vec![("service.name".to_string(), AttrValue::from(service_name))];
    attrs.extend(resource.iter().cloned());
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": key_values(&attrs) },
            "scopeSpans": [{
                "scope": { "name": "openhqm", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_otlp_json_shape() {
        let mut span = Span {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId([2; 8])),
            name: "publish openhqm-requests".into(),
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
