//! The message OpenHQM puts on the queue (the envelope) and the frame in
//! which the filter hands a captured request to the bridge.
//!
//! Both are documented in docs/message-format.md; change them together.

use crate::model::{decode_base64, decode_body, encode_body, BodyEncoding};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ENVELOPE_VERSION: u32 = 1;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Captured by the Proxy-Wasm filter: a whole HTTP request.
    Filter,
    /// `POST /api/v1/submit`: a JSON payload.
    Api,
}

/// `metadata.priority`: a class name of ours (`low`, `normal`, `high`, or
/// any label a processor or filter route uses) or the original's integer
/// 0-9, kept as sent so processors and routing see what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Priority {
    Level(i64),
    Class(String),
}

/// By hand, for an error that says what is expected (an untagged enum's
/// "did not match any variant" does not).
impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Priority;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer 0-9 or a class name such as \"high\"")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Priority, E> {
                Ok(Priority::Level(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Priority, E> {
                // Out of range either way; the bridge refuses it.
                Ok(Priority::Level(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Priority, E> {
                Ok(Priority::Class(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Priority {
    /// The original's levels are 0-9; the bridge refuses others.
    pub fn is_valid(&self) -> bool {
        match self {
            Priority::Level(n) => (0..=9).contains(n),
            Priority::Class(c) => !c.is_empty(),
        }
    }

    /// The class of a priority: integers map 0-3 `low`, 4-6 `normal`, 7-9
    /// `high` (docs/migration.md); a class name is itself.
    pub fn class(&self) -> &str {
        match self {
            Priority::Level(n) if *n <= 3 => "low",
            Priority::Level(n) if *n <= 6 => "normal",
            Priority::Level(_) => "high",
            Priority::Class(c) => c,
        }
    }
}

impl From<&str> for Priority {
    fn from(s: &str) -> Self {
        Priority::Class(s.to_string())
    }
}

/// The original's submit metadata, kept open for fields added later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Seconds the client is willing to wait for a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// A name from `proxy.endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A captured HTTP request, byte-exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Header values that are UTF-8, in the client's order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Header values that are not UTF-8, base64-encoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_b64: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<BodyEncoding>,
    /// The filter route that captured the request (the worker's latency
    /// metrics are labelled with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl HttpRequest {
    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        decode_body(&self.body, self.body_encoding)
    }

    /// All headers as raw bytes, text ones first.
    pub fn header_bytes(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        for (k, v) in &self.headers_b64 {
            out.push((
                k.clone(),
                decode_base64(v).map_err(|e| format!("header {k}: {e}"))?,
            ));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub correlation_id: String,
    pub submitted_at: String,
    pub source: Source,
    #[serde(default)]
    pub metadata: Metadata,
    /// W3C trace context of the inbound request, carried to the backend call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Submit API: the JSON payload and the client's headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Filter: the captured HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequest>,
    /// Messages with the same key are ordered relative to each other (the
    /// value of the capturing route's partition-key header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| format!("not an OpenHQM envelope: {e}"))?;
        if env.version != ENVELOPE_VERSION {
            return Err(format!("unsupported envelope version {}", env.version));
        }
        match (env.source, &env.request, &env.payload) {
            (Source::Filter, None, _) => Err("filter envelope without `request`".into()),
            (Source::Api, _, None) => Err("api envelope without `payload`".into()),
            _ => Ok(env),
        }
    }
}

/// The filter's hand-off to the bridge: one line of JSON metadata, `\n`, then
/// the request body exactly as received (no re-encoding inside the Wasm VM).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureMeta {
    pub v: u32,
    pub correlation_id: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub headers_b64: Vec<(String, String)>,
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The filter route that captured the request (for logs and metrics).
    #[serde(default)]
    pub route: Option<String>,
    /// The route's named endpoint, priority and the request's partition key.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub partition_key: Option<String>,
    /// How long the client waits for the backend's own answer (wait mode or
    /// `Prefer: wait`); 0 = answer 202 at once.
    #[serde(default)]
    pub wait_ms: u64,
}

/// Marks a bridge answer to a capture that is the backend's final response,
/// to be relayed to the client as it is.
pub const FINAL_RESULT_HEADER: &str = "x-openhqm-result";

pub const CAPTURE_CONTENT_TYPE: &str = "application/vnd.openhqm.capture";

/// Split and check a capture frame.
pub fn parse_capture_frame(frame: &[u8]) -> Result<(CaptureMeta, &[u8]), String> {
    let nl = frame
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("capture frame has no metadata line")?;
    let (line, rest) = frame.split_at(nl);
    let body = rest.get(1..).unwrap_or_default();
    let meta: CaptureMeta =
        serde_json::from_slice(line).map_err(|e| format!("capture metadata: {e}"))?;
    if meta.v != 1 {
        return Err(format!("unsupported capture frame version {}", meta.v));
    }
    if meta.method.is_empty() || !meta.path.starts_with('/') {
        return Err("capture metadata: method and an absolute path are required".into());
    }
    for (k, v) in &meta.headers_b64 {
        decode_base64(v).map_err(|e| format!("capture header {k}: {e}"))?;
    }
    Ok((meta, body))
}

impl HttpRequest {
    pub fn from_capture(meta: &CaptureMeta, body: &[u8]) -> HttpRequest {
        let (body, body_encoding) = encode_body(body);
        HttpRequest {
            method: meta.method.clone(),
            path: meta.path.clone(),
            query: meta.query.clone(),
            authority: meta.authority.clone(),
            headers: meta.headers.clone(),
            headers_b64: meta.headers_b64.clone(),
            body,
            body_encoding,
            route: meta.route.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(meta: &str, body: &[u8]) -> Vec<u8> {
        let mut f = meta.as_bytes().to_vec();
        f.push(b'\n');
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn priority_takes_the_originals_integers_and_our_class_names() {
        let m: Metadata = serde_json::from_str(r#"{"priority": 5}"#).unwrap();
        let p = m.priority.clone().unwrap();
        assert_eq!(
            (p.clone(), p.class(), p.is_valid()),
            (Priority::Level(5), "normal", true)
        );
        // Kept as sent on the queue: an integer stays an integer.
        assert_eq!(serde_json::to_value(&m).unwrap()["priority"], 5);
        for (n, class) in [
            (0, "low"),
            (3, "low"),
            (4, "normal"),
            (6, "normal"),
            (7, "high"),
            (9, "high"),
        ] {
            assert_eq!(Priority::Level(n).class(), class, "{n}");
        }
        assert!(!Priority::Level(42).is_valid() && !Priority::Level(-1).is_valid());
        let m: Metadata = serde_json::from_str(r#"{"priority": "high"}"#).unwrap();
        assert_eq!(m.priority.unwrap().class(), "high");
        assert!(!Priority::Class(String::new()).is_valid());
        for bad in [r#"{"priority": 1.5}"#, r#"{"priority": true}"#] {
            let e = serde_json::from_str::<Metadata>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("an integer 0-9 or a class name"), "{e}");
        }
        let m: Metadata = serde_json::from_str(r#"{"priority": 18446744073709551615}"#).unwrap();
        assert!(!m.priority.unwrap().is_valid());
    }

    #[test]
    fn capture_frame_keeps_the_body_exact() {
        let all: Vec<u8> = (0..=255u8).collect(); // includes b'\n'
        let f = frame(
            r#"{"v":1,"correlation_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","method":"POST","path":"/orders","query":"a=1","headers":[["content-type","application/octet-stream"]],"headers_b64":[["x-bin","/w=="]]}"#,
            &all,
        );
        let (meta, body) = parse_capture_frame(&f).unwrap();
        assert_eq!(body, &all[..]);
        assert_eq!(meta.query.as_deref(), Some("a=1"));
        let req = HttpRequest::from_capture(&meta, body);
        assert_eq!(req.body_bytes().unwrap(), all);
        let hb = req.header_bytes().unwrap();
        assert_eq!(hb[1], ("x-bin".to_string(), vec![0xff]));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(parse_capture_frame(b"no newline").is_err());
        assert!(parse_capture_frame(b"{not json}\nbody").is_err());
        assert!(parse_capture_frame(&frame(
            r#"{"v":2,"correlation_id":"x","method":"GET","path":"/"}"#,
            b""
        ))
        .is_err());
        assert!(parse_capture_frame(&frame(
            r#"{"v":1,"correlation_id":"x","method":"GET","path":"rel"}"#,
            b""
        ))
        .is_err());
        assert!(parse_capture_frame(&frame(
            r#"{"v":1,"correlation_id":"x","method":"GET","path":"/","headers_b64":[["a","!!"]]}"#,
            b""
        ))
        .is_err());
        let empty = frame(
            r#"{"v":1,"correlation_id":"x","method":"GET","path":"/"}"#,
            b"",
        );
        let (_, body) = parse_capture_frame(&empty).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn envelope_round_trip_and_checks() {
        let env = Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            submitted_at: "2026-11-22T12:00:00.000Z".into(),
            source: Source::Api,
            metadata: Metadata {
                endpoint: Some("orders".into()),
                extra: [("callback".to_string(), serde_json::json!("x"))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
            traceparent: None,
            payload: Some(serde_json::json!({"operation": "echo", "data": "hi"})),
            headers: BTreeMap::new(),
            request: None,
            partition_key: None,
        };
        let back = Envelope::decode(&env.encode()).unwrap();
        assert_eq!(back, env);
        let mut bad = env.clone();
        bad.payload = None;
        assert!(Envelope::decode(&bad.encode()).is_err());
        assert!(Envelope::decode(b"\x00\x01").is_err());
        let mut v2 = env;
        v2.version = 2;
        assert!(Envelope::decode(&v2.encode()).is_err());
    }
}
