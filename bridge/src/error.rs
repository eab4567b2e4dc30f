//! Every error the bridge answers is JSON with a stable `error` code and a
//! human `detail`; nothing internal (broker addresses, paths) leaks into it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 503 with `Retry-After`: the request was not accepted, nothing is lost.
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// A request body that could not be read: over the limit (413), the
    /// client stalled (408, `server.body_read_timeout_seconds`), or broken
    /// framing such as a malformed chunked encoding (400).
    pub fn body_failed(err: &axum::Error, limit: usize) -> Self {
        use openhqm_core::server::{classify_body_error, BodyFailure};
        match classify_body_error(err) {
            BodyFailure::TooLarge => Self::too_large(limit),
            BodyFailure::Timeout => Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving (server.body_read_timeout_seconds)",
            ),
            BodyFailure::Invalid => Self::bad_request(
                "invalid_body",
                "the request body could not be read (malformed framing or a broken connection)",
            ),
        }
    }

    pub fn invalid_id() -> Self {
        Self::bad_request(
            "invalid_correlation_id",
            "correlation IDs are UUIDs such as 67e55044-10b1-426f-9247-bb680e5fe0c8",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "detail": self.detail});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// The error code for a status when no handler chose one (an extractor's
/// rejection, a layer's answer).
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        431 => "headers_too_large",
        s if s >= 500 => "internal_error",
        _ => "error",
    }
}

/// Does the percent-decoded request path fail to be UTF-8?
fn path_is_not_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_err()
}

/// Router-wide: every answer is JSON with `error` and `detail`. A path that
/// does not decode to UTF-8 names nothing here (404, as an unknown ID);
/// any non-JSON error answer (axum's extractor rejections and fallbacks)
/// is rewritten with its status kept. The backend's own answers relayed to
/// the filter (`x-openhqm-result`) pass untouched.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if path_is_not_utf8(req.uri().path()) {
        return ApiError::not_found("no such resource (the path is not valid UTF-8)")
            .into_response();
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let relayed = resp
        .headers()
        .contains_key(openhqm_core::envelope::FINAL_RESULT_HEADER);
    if !(status.is_client_error() || status.is_server_error()) || is_json || relayed {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let fresh = ApiError::new(status, code_for(status), detail).into_response();
    // Keep what the layer said besides the body (Allow, Retry-After, ...).
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (fresh_parts, fresh_body) = fresh.into_parts();
    parts.headers.extend(fresh_parts.headers);
    Response::from_parts(parts, fresh_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn answer(router: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let resp = router
            .layer(axum::middleware::from_fn(json_errors))
            .oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    #[tokio::test]
    async fn rejections_and_bad_paths_answer_json() {
        async fn by_id(axum::extract::Path(id): axum::extract::Path<String>) -> String {
            id
        }
        async fn number(axum::extract::Path(n): axum::extract::Path<u32>) -> String {
            n.to_string()
        }
        let router = || {
            Router::new()
                .route("/r/{id}", get(by_id))
                .route("/n/{n}", get(number))
        };
        let (s, b) = answer(router(), "/r/%FF%FE").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(b["error"], "not_found");
        // A plain-text extractor rejection keeps its status and says why.
        let (s, b) = answer(router(), "/n/abc").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(b["error"], "bad_request");
        assert!(b["detail"].as_str().unwrap().contains("parse"), "{b}");
        // axum's own empty 404 (no fallback set).
        let (s, b) = answer(router(), "/nothing").await;
        assert_eq!(
            (s, b["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        assert!(!path_is_not_utf8("/r/%C3%A9%zz"));
        assert!(path_is_not_utf8("/r/%C3"));
    }
}
