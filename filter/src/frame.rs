//! The capture frame the filter posts to the bridge
//! (`content-type: application/vnd.openhqm.capture`):
//!
//! ```text
//! {"v":1,"correlation_id":"…","method":"POST","path":"/orders","query":"a=1",
//!  "authority":"shop.local","headers":[["content-type","application/json"]],
//!  "headers_b64":[["x-bin","AP8="]]}\n<raw request body bytes>
//! ```
//!
//! One line of compact JSON (serde_json never writes a raw newline: control
//! characters inside strings are escaped), one `\n`, then the request body
//! byte-exact. `query` and `authority` are omitted when absent, `headers_b64`
//! when empty. Header values that are not UTF-8 travel base64-encoded
//! (standard alphabet, padded) in `headers_b64`. `traceparent` (omitted
//! unless the filter traces) is the W3C context of the filter's span; the
//! bridge prefers it to a `traceparent` among `headers`.

use serde::Serialize;

/// Frame format version.
pub const FRAME_VERSION: u32 = 1;

/// Request headers that describe one hop or the framing, not the request;
/// they are not put in the frame.
pub const HOP_BY_HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// What the frame says about the captured request.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta<'a> {
    /// Correlation ID given to the request.
    pub correlation_id: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:path` without the query.
    pub path: &'a str,
    /// The part of `:path` after the first `?`.
    pub query: Option<&'a str>,
    /// `:authority`, when present.
    pub authority: Option<&'a str>,
    /// All request headers as received (pseudo-headers and hop-by-hop ones
    /// are dropped here).
    pub headers: &'a [(String, Vec<u8>)],
    /// The capturing route's name, endpoint and priority.
    pub route: &'a str,
    pub endpoint: Option<&'a str>,
    pub priority: Option<&'a str>,
    /// The value of the route's partition-key header, when present.
    pub partition_key: Option<&'a str>,
    /// How long the client waits for the backend's answer; 0 = async.
    pub wait_ms: u64,
    /// W3C `traceparent` naming the filter's span as the parent of the
    /// bridge's (only when tracing is configured; otherwise the inbound
    /// header, if any, travels in `headers` as before).
    pub traceparent: Option<&'a str>,
}

#[derive(Serialize)]
struct FrameHeader<'a> {
    v: u32,
    correlation_id: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers_b64: Vec<(&'a str, String)>,
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_key: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    wait_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether a request header is carried in the frame.
pub fn is_forwarded_header(name: &str) -> bool {
    !name.starts_with(':')
        && !HOP_BY_HOP_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
}

/// Encodes the frame: the JSON line, `\n`, then `body` unchanged.
pub fn encode_frame(meta: &FrameMeta<'_>, body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut headers = Vec::new();
    let mut headers_b64 = Vec::new();
    for (name, value) in meta.headers {
        if !is_forwarded_header(name) {
            continue;
        }
        match std::str::from_utf8(value) {
            Ok(text) => headers.push((name.as_str(), text)),
            Err(_) => headers_b64.push((name.as_str(), base64_encode(value))),
        }
    }
    let header = FrameHeader {
        v: FRAME_VERSION,
        correlation_id: meta.correlation_id,
        method: meta.method,
        path: meta.path,
        query: meta.query,
        authority: meta.authority,
        headers,
        headers_b64,
        route: meta.route,
        endpoint: meta.endpoint,
        priority: meta.priority,
        partition_key: meta.partition_key,
        wait_ms: meta.wait_ms,
        traceparent: meta.traceparent,
    };
    let mut frame = serde_json::to_vec(&header)?;
    frame.reserve_exact(body.len().saturating_add(1));
    frame.push(b'\n');
    frame.extend_from_slice(body);
    Ok(frame)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_char(sextet: u32) -> char {
    // `sextet & 63` is always < 64, so `get` never misses.
    BASE64_ALPHABET
        .get((sextet & 63) as usize)
        .map_or('=', |b| char::from(*b))
}

/// Standard base64 (RFC 4648 §4) with `=` padding.
pub fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3).saturating_mul(4));
    let mut chunks = input.chunks_exact(3);
    for chunk in &mut chunks {
        if let [a, b, c] = *chunk {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
            out.push(base64_char(n >> 18));
            out.push(base64_char(n >> 12));
            out.push(base64_char(n >> 6));
            out.push(base64_char(n));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(base64_char(n >> 18));
            out.push(base64_char(n >> 12));
            out.push_str("==");
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(base64_char(n >> 18));
            out.push(base64_char(n >> 12));
            out.push(base64_char(n >> 6));
            out.push('=');
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Splits a frame into its JSON header and body the way the bridge does.
    fn decode(frame: &[u8]) -> (Value, &[u8]) {
        let nl = frame.iter().position(|b| *b == b'\n').unwrap();
        (
            serde_json::from_slice(&frame[..nl]).unwrap(),
            &frame[nl + 1..],
        )
    }

    fn h(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_string(), value.to_vec())
    }

    /// A tiny reference decoder to cross-check the encoder.
    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| BASE64_ALPHABET.iter().position(|x| *x == c).unwrap() as u32;
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let pad = chunk.iter().filter(|c| **c == b'=').count();
            let mut n = 0u32;
            for c in chunk {
                n = (n << 6) | if *c == b'=' { 0 } else { val(*c) };
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    }

    #[test]
    fn base64_rfc4648_vectors() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64_encode(input), expected);
        }
    }

    #[test]
    fn base64_binary_and_round_trip() {
        assert_eq!(base64_encode(&[0x00, 0xff]), "AP8=");
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64_encode(&[0xff, 0xff, 0xff, 0xff]), "/////w==");
        let all: Vec<u8> = (0..=255u8).collect();
        for len in 0..all.len() {
            let enc = base64_encode(&all[..len]);
            assert_eq!(enc.len(), len.div_ceil(3) * 4);
            assert_eq!(base64_decode(&enc), &all[..len]);
        }
    }

    #[test]
    fn frame_json_line_then_exact_body() {
        let headers = vec![
            h(":method", b"POST"),
            h(":path", b"/orders?a=1&b=2"),
            h(":authority", b"shop.local"),
            h("content-type", b"application/json"),
            h("x-foo", b"bar"),
            h("x-foo", b"second"),
        ];
        let meta = FrameMeta {
            correlation_id: "3f1c0a4e-0000-4000-8000-000000000001",
            method: "POST",
            path: "/orders",
            query: Some("a=1&b=2"),
            authority: Some("shop.local"),
            headers: &headers,
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let body = b"{\"item\":1}\n\nsecond line";
        let frame = encode_frame(&meta, body).unwrap();
        let expected_line = concat!(
            r#"{"v":1,"correlation_id":"3f1c0a4e-0000-4000-8000-000000000001","#,
            r#""method":"POST","path":"/orders","query":"a=1&b=2","authority":"shop.local","#,
            r#""headers":[["content-type","application/json"],["x-foo","bar"],["x-foo","second"]],"#,
            r#""route":"orders"}"#
        );
        let mut expected = expected_line.as_bytes().to_vec();
        expected.push(b'\n');
        expected.extend_from_slice(body);
        assert_eq!(frame, expected);
    }

    #[test]
    fn frame_body_is_byte_exact_for_all_byte_values() {
        let body: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let headers = vec![h("content-type", b"application/octet-stream")];
        let meta = FrameMeta {
            correlation_id: "id",
            method: "PUT",
            path: "/bin",
            query: None,
            authority: None,
            headers: &headers,
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let frame = encode_frame(&meta, &body).unwrap();
        let (json, rest) = decode(&frame);
        assert_eq!(rest, body.as_slice());
        assert_eq!(
            json,
            json!({"v":1,"correlation_id":"id","method":"PUT","path":"/bin","route":"orders",
                   "headers":[["content-type","application/octet-stream"]]})
        );
        // Absent query/authority and empty headers_b64 are omitted, not null.
        let line = std::str::from_utf8(&frame[..frame.len() - body.len() - 1]).unwrap();
        assert!(!line.contains("query") && !line.contains("authority"));
        assert!(!line.contains("headers_b64") && !line.contains("null"));
    }

    #[test]
    fn empty_body_frame_ends_with_newline() {
        let meta = FrameMeta {
            correlation_id: "id",
            method: "POST",
            path: "/",
            query: Some(""),
            authority: None,
            headers: &[],
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let frame = encode_frame(&meta, b"").unwrap();
        assert_eq!(frame.last(), Some(&b'\n'));
        let (json, rest) = decode(&frame);
        assert!(rest.is_empty());
        assert_eq!(json["query"], "");
        assert_eq!(json["headers"], json!([]));
    }

    #[test]
    fn non_utf8_header_goes_to_headers_b64() {
        let headers = vec![
            h("x-text", b"caf\xc3\xa9"),
            h("x-bin", &[0x00, 0xff]),
            h("x-bin2", b"\xe9t\xe9"),
        ];
        let meta = FrameMeta {
            correlation_id: "id",
            method: "POST",
            path: "/o",
            query: None,
            authority: None,
            headers: &headers,
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let frame = encode_frame(&meta, b"").unwrap();
        let (json, _) = decode(&frame);
        assert_eq!(json["headers"], json!([["x-text", "café"]]));
        assert_eq!(
            json["headers_b64"],
            json!([["x-bin", "AP8="], ["x-bin2", base64_encode(b"\xe9t\xe9")]])
        );
        assert_eq!(
            base64_decode(json["headers_b64"][1][1].as_str().unwrap()),
            b"\xe9t\xe9"
        );
    }

    #[test]
    fn control_characters_never_break_the_line() {
        let headers = vec![h("x-weird", b"a\nb\r\tc\x00d\x7f")];
        let meta = FrameMeta {
            correlation_id: "id",
            method: "POST",
            path: "/o\n",
            query: Some("q=\n"),
            authority: Some("h\n"),
            headers: &headers,
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let frame = encode_frame(&meta, b"body").unwrap();
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        let (json, rest) = decode(&frame);
        assert_eq!(rest, b"body");
        assert_eq!(json["headers"][0][1], "a\nb\r\tc\u{0}d\u{7f}");
        assert_eq!(json["path"], "/o\n");
    }

    #[test]
    fn pseudo_and_hop_by_hop_headers_are_dropped() {
        let mut headers = vec![
            h(":method", b"POST"),
            h(":path", b"/o"),
            h(":scheme", b"http"),
            h(":authority", b"a"),
        ];
        for name in HOP_BY_HOP_HEADERS {
            headers.push(h(name, b"x"));
        }
        headers.push(h("Connection", b"close"));
        headers.push(h("TE", b"trailers"));
        headers.push(h("x-keep", b"1"));
        headers.push(h("traceparent", b"00-abc-def-01"));
        let meta = FrameMeta {
            correlation_id: "id",
            method: "POST",
            path: "/o",
            query: None,
            authority: Some("a"),
            headers: &headers,
            route: "orders",
            endpoint: None,
            priority: None,
            partition_key: None,
            wait_ms: 0,
            traceparent: None,
        };
        let (json, _) = decode(&encode_frame(&meta, b"").unwrap());
        assert_eq!(
            json["headers"],
            json!([["x-keep", "1"], ["traceparent", "00-abc-def-01"]])
        );
        assert!(json.get("traceparent").is_none());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = FrameMeta {
            traceparent: Some(tp),
            ..meta
        };
        let (json, _) = decode(&encode_frame(&traced, b"").unwrap());
        assert_eq!(json["traceparent"], tp);
        assert!(is_forwarded_header("content-type"));
        assert!(!is_forwarded_header("Content-Length"));
        assert!(!is_forwarded_header(":status"));
    }
}
