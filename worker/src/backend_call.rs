//! Rebuilding the client's request against the backend (proxy mode) and
//! classifying what came back.

use crate::routing::Routed;
use crate::work::{Work, WorkBody};
use openhqm_core::config::{AuthType, Config, EndpointConfig};
use openhqm_core::model::{encode_base64, StoredResponse};
use openhqm_core::retry::{parse_retry_after, RetryPolicy};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus framing the client library recomputes.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

/// The result of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// The backend answered with a status that is not retried: final.
    Answered(StoredResponse),
    /// Worth another attempt (connect error, timeout, retryable status).
    Retry {
        error: String,
        response: Option<StoredResponse>,
        retry_after: Option<Duration>,
    },
    /// Will not get better by retrying.
    Fail {
        error: String,
        response: Option<StoredResponse>,
    },
    /// The message's deadline passed before it could be sent: TIMEOUT.
    Expired,
}

/// A request ready to send.
#[derive(Debug)]
pub struct Outgoing {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// Where one message goes.
pub struct Target<'a> {
    pub endpoint: &'a EndpointConfig,
    /// The endpoint's URL, or the instance chosen for the message's key.
    pub base_url: &'a str,
    /// What the routing table made of the message, when it is on.
    pub routed: Option<&'a Routed>,
}

/// Build the backend request for a message, or say why it cannot be built.
pub fn build(
    config: &Config,
    work: &Work,
    target: &Target<'_>,
    attempt: u32,
) -> Result<Outgoing, String> {
    let endpoint = target.endpoint;
    let routed = target.routed;
    let timeout = Duration::from_secs(
        routed
            .and_then(|r| r.timeout)
            .or(endpoint.timeout)
            .unwrap_or(config.worker.timeout_seconds),
    );
    let strip: Vec<String> = config
        .proxy
        .strip_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    let (method, url, body) = match &work.body {
        WorkBody::Captured(req) => {
            // Headers named in the client's Connection header are hop-by-hop too.
            let mut hop: Vec<String> = HOP_BY_HOP.iter().map(|s| s.to_string()).collect();
            for (k, v) in &req.headers {
                if k.eq_ignore_ascii_case("connection") {
                    hop.extend(v.split(',').map(|t| t.trim().to_ascii_lowercase()));
                }
            }
            for (name, value) in req.header_bytes()? {
                let lower = name.to_ascii_lowercase();
                if hop.contains(&lower) || strip.contains(&lower) {
                    continue;
                }
                append(&mut headers, &lower, &value)?;
            }
            let base = target.base_url.trim_end_matches('/');
            let url = match &req.query {
                Some(q) => format!("{base}{}?{q}", req.path),
                None => format!("{base}{}", req.path),
            };
            (req.method.clone(), url, req.body_bytes()?)
        }
        WorkBody::Api {
            payload,
            headers: client_headers,
        } => {
            let forward: Vec<String> = config
                .proxy
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            let all = forward.iter().any(|h| h == "*");
            for (name, value) in client_headers {
                let lower = name.to_ascii_lowercase();
                if (all || forward.contains(&lower))
                    && !strip.contains(&lower)
                    && !HOP_BY_HOP.contains(&lower.as_str())
                {
                    openhqm_core::headers::check_header(&lower, value)?;
                    append(&mut headers, &lower, value.as_bytes())?;
                }
            }
            if !headers.contains_key("content-type") {
                headers.insert("content-type", HeaderValue::from_static("application/json"));
            }
            let method = routed
                .and_then(|r| r.method.clone())
                .or_else(|| work.metadata.method.clone())
                .unwrap_or_else(|| endpoint.method.clone());
            let payload = routed.map(|r| &r.body).unwrap_or(payload);
            let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
            (method, with_query(target.base_url, routed), body)
        }
        WorkBody::Foreign {
            body,
            headers: attributes,
        } => {
            // Broker attributes become headers where they can; a producer's
            // odd attribute name must not stop the message.
            for (name, value) in attributes {
                if HOP_BY_HOP.contains(&name.as_str()) || strip.contains(name) {
                    continue;
                }
                let _ = append(&mut headers, name, value.as_bytes());
            }
            let body = match routed {
                Some(r) => {
                    headers.insert("content-type", HeaderValue::from_static("application/json"));
                    serde_json::to_vec(&r.body).map_err(|e| e.to_string())?
                }
                None => body.clone(),
            };
            if !headers.contains_key("content-type") {
                let sniffed = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                    "application/json"
                } else {
                    "application/octet-stream"
                };
                headers.insert("content-type", HeaderValue::from_static(sniffed));
            }
            let method = routed
                .and_then(|r| r.method.clone())
                .unwrap_or_else(|| endpoint.method.clone());
            (method, with_query(target.base_url, routed), body)
        }
    };
    if let Some(r) = routed {
        for (k, v) in &r.headers {
            set(&mut headers, &k.to_ascii_lowercase(), v)?;
        }
    }
    for (k, v) in &endpoint.headers {
        set(&mut headers, &k.to_ascii_lowercase(), v)?;
    }
    apply_auth(&mut headers, endpoint)?;
    set(&mut headers, "x-correlation-id", &work.correlation_id)?;
    set(&mut headers, "x-openhqm-attempt", &attempt.to_string())?;
    if let Some(tp) = &work.traceparent {
        set(&mut headers, "traceparent", tp)?;
    }
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    Ok(Outgoing {
        method,
        url,
        headers,
        body,
        timeout,
    })
}

/// The URL with the routing table's query parameters appended.
fn with_query(url: &str, routed: Option<&Routed>) -> String {
    let Some(r) = routed.filter(|r| !r.query.is_empty()) else {
        return url.to_string();
    };
    let pairs: Vec<String> = r
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", pairs.join("&"))
}

/// RFC 3986 query component encoding: unreserved characters stay as-is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn append(headers: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    let v =
        HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header `{name}`"))?;
    headers.append(n, v);
    Ok(())
}

fn set(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), String> {
    // The rule the bridge applies at submit (core::headers).
    openhqm_core::headers::check_header(name, value)?;
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    let v =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header `{name}`"))?;
    headers.insert(n, v);
    Ok(())
}

fn apply_auth(headers: &mut HeaderMap, ep: &EndpointConfig) -> Result<(), String> {
    let token = ep.auth_token.as_deref().unwrap_or_default();
    match ep.auth_type {
        None => Ok(()),
        Some(AuthType::Bearer) => set(headers, "authorization", &format!("Bearer {token}")),
        Some(AuthType::ApiKey) => set(
            headers,
            &ep.auth_header_name
                .as_deref()
                .unwrap_or("x-api-key")
                .to_ascii_lowercase(),
            token,
        ),
        Some(AuthType::Basic) => {
            let user = ep.auth_username.as_deref().unwrap_or_default();
            let pass = ep.auth_password.as_deref().unwrap_or_default();
            set(
                headers,
                "authorization",
                &format!(
                    "Basic {}",
                    encode_base64(format!("{user}:{pass}").as_bytes())
                ),
            )
        }
        Some(AuthType::Custom) => set(
            headers,
            &ep.auth_header_name
                .as_deref()
                .unwrap_or("authorization")
                .to_ascii_lowercase(),
            token,
        ),
    }
}

/// Send one attempt and classify the outcome.
pub async fn send(
    client: &reqwest::Client,
    out: Outgoing,
    policy: &RetryPolicy,
    max_response: usize,
) -> Attempt {
    let request = client
        .request(out.method, &out.url)
        .headers(out.headers)
        .body(out.body)
        .timeout(out.timeout);
    let mut resp = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            // Messages must not carry the backend's address to the client.
            let kind = if e.is_timeout() {
                "backend call timed out"
            } else if e.is_connect() {
                "could not connect to the backend"
            } else {
                "backend call failed"
            };
            tracing::warn!(error = %e, "{kind}");
            return Attempt::Retry {
                error: kind.to_string(),
                response: None,
                retry_after: None,
            };
        }
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_response {
                    return Attempt::Fail {
                        error: format!("backend response exceeds proxy.max_response_size ({max_response} bytes)"),
                        response: None,
                    };
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reading the backend response failed");
                return Attempt::Retry {
                    error: "backend response was cut off".into(),
                    response: None,
                    retry_after: None,
                };
            }
        }
    }
    let stored = StoredResponse::new(status, headers, &body);
    if policy.retries_status(status) {
        Attempt::Retry {
            error: format!("backend answered HTTP {status}"),
            response: Some(stored),
            retry_after,
        }
    } else {
        Attempt::Answered(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openhqm_core::envelope::{Envelope, HttpRequest, Metadata, Source, ENVELOPE_VERSION};
    use std::collections::BTreeMap;

    fn endpoint(url: &str) -> EndpointConfig {
        serde_json::from_value(serde_json::json!({"url": url})).unwrap()
    }

    fn target<'a>(ep: &'a EndpointConfig) -> Target<'a> {
        Target {
            endpoint: ep,
            base_url: &ep.url,
            routed: None,
        }
    }

    fn captured(headers: Vec<(&str, &str)>, body: &[u8]) -> Work {
        let (body, body_encoding) = openhqm_core::model::encode_body(body);
        Work::from_envelope(Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            submitted_at: "t".into(),
            source: Source::Filter,
            metadata: Metadata::default(),
            traceparent: None,
            payload: None,
            headers: BTreeMap::new(),
            request: Some(HttpRequest {
                method: "PUT".into(),
                path: "/orders/7".into(),
                query: Some("x=1&y=%20".into()),
                authority: Some("shop".into()),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                headers_b64: vec![("x-bin".into(), "/w==".into())],
                body,
                body_encoding,
                route: None,
            }),
            partition_key: None,
        })
    }

    #[test]
    fn captured_request_is_rebuilt_exactly() {
        let config = Config::default();
        let all: Vec<u8> = (0..=255u8).collect();
        let env = captured(
            vec![
                ("content-type", "application/octet-stream"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "drop me"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("host", "shop"),
                ("x-keep", "yes"),
            ],
            &all,
        );
        let ep = endpoint("http://127.0.0.1:8080/");
        let out = build(&config, &env, &target(&ep), 2).unwrap();
        assert_eq!(out.method, reqwest::Method::PUT);
        assert_eq!(out.url, "http://127.0.0.1:8080/orders/7?x=1&y=%20");
        assert_eq!(out.body, all);
        assert_eq!(out.headers["x-keep"], "yes");
        assert_eq!(out.headers["content-type"], "application/octet-stream");
        assert_eq!(out.headers["x-bin"].as_bytes(), &[0xff]);
        assert_eq!(
            out.headers["x-correlation-id"],
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(out.headers["x-openhqm-attempt"], "2");
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "transfer-encoding",
            "host",
        ] {
            assert!(!out.headers.contains_key(gone), "{gone} should be stripped");
        }
    }

    #[test]
    fn api_submission_uses_endpoint_and_forward_list() {
        let mut config = Config::default();
        config.proxy.forward_headers = vec!["X-Tenant".into()];
        let mut ep = endpoint("http://backend/api");
        ep.auth_type = Some(AuthType::Basic);
        ep.auth_username = Some("u".into());
        ep.auth_password = Some("p".into());
        ep.headers.insert("X-Static".into(), "1".into());
        let env = Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            submitted_at: "t".into(),
            source: Source::Api,
            metadata: Metadata {
                method: Some("patch".into()),
                ..Default::default()
            },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            payload: Some(serde_json::json!({"a": 1})),
            headers: [
                ("x-tenant".to_string(), "t1".to_string()),
                ("x-other".to_string(), "no".to_string()),
            ]
            .into_iter()
            .collect(),
            request: None,
            partition_key: None,
        };
        let out = build(&config, &Work::from_envelope(env), &target(&ep), 1).unwrap();
        assert_eq!(out.method, reqwest::Method::PATCH);
        assert_eq!(out.url, "http://backend/api");
        assert_eq!(out.body, br#"{"a":1}"#);
        assert_eq!(out.headers["x-tenant"], "t1");
        assert!(!out.headers.contains_key("x-other"));
        assert_eq!(out.headers["x-static"], "1");
        assert_eq!(out.headers["authorization"], "Basic dTpw");
        assert_eq!(out.headers["content-type"], "application/json");
        assert!(out.headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-0af7"));
    }

    #[test]
    fn a_header_value_with_a_line_break_fails_with_the_submit_rule() {
        // Published by something other than our bridge (which refuses it).
        let mut config = Config::default();
        config.proxy.forward_headers = vec!["*".into()];
        let ep = endpoint("http://backend/api");
        let env = Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            submitted_at: "t".into(),
            source: Source::Api,
            metadata: Metadata::default(),
            traceparent: None,
            payload: Some(serde_json::json!({})),
            headers: [("X-Tenant".to_string(), "a\r\nX-Injected: 1".to_string())]
                .into_iter()
                .collect(),
            request: None,
            partition_key: None,
        };
        let err = build(&config, &Work::from_envelope(env), &target(&ep), 1).unwrap_err();
        let rule =
            openhqm_core::headers::check_header("x-tenant", "a\r\nX-Injected: 1").unwrap_err();
        assert_eq!(err, rule);
    }
}
