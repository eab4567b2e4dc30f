//! The bridge's HTTP API: the public endpoints from DESIGN.md and the
//! filter's capture endpoint.

use crate::error::ApiError;
use crate::idempotency::{self, Idempotency};
use crate::prefer::Prefer;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openhqm_core::config::CallbacksConfig;
use openhqm_core::envelope::{
    parse_capture_frame, CaptureMeta, Envelope, HttpRequest, Metadata, Priority, Source,
    CAPTURE_CONTENT_TYPE, ENVELOPE_VERSION, FINAL_RESULT_HEADER,
};
use openhqm_core::model::{is_valid_correlation_id, result_json, RequestRecord, Status};
use openhqm_core::queue::{Message, QueueError};
use openhqm_core::store::IdempotencyClaim;
use openhqm_core::telemetry::TraceSpan;
use openhqm_core::time::now_rfc3339;
use openhqm_trace::SpanKind;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Room for the capture frame's metadata line on top of the body limit.
const CAPTURE_META_ALLOWANCE: usize = 256 * 1024;

#[derive(Deserialize)]
struct SubmitRequest {
    payload: Option<Value>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// Read the whole body, refusing more than `limit` bytes with a 413 (a
/// malformed or stalled body is a 400 or 408, see `ApiError::body_failed`).
async fn read_body(req: Request, limit: usize) -> Result<(HeaderMap, axum::body::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| ApiError::body_failed(&e, limit))?;
    Ok((parts.headers, bytes))
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// The key `partitioning.partition_key_field` (else `session_key_field`)
/// names, read from the message in the original's shape, so a client keyed
/// on `metadata.session_id` keeps its affinity unchanged.
fn configured_partition_key(
    config: &openhqm_core::config::Config,
    payload: &Value,
    metadata: &Metadata,
    headers: &BTreeMap<String, String>,
) -> Result<Option<String>, ApiError> {
    let view = serde_json::json!({
        "payload": payload,
        "metadata": metadata,
        "headers": headers,
    });
    config
        .partitioning
        .key_for(&view)
        .map_err(|detail| invalid("invalid_request", detail))
}

/// `POST /api/v1/submit`
pub async fn submit(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let (headers, body) = read_body(req, limit).await?;
    if let Some(ct) = content_type(&headers) {
        if ct != "application/json" && !ct.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the submission as application/json",
            ));
        }
    }
    let (payload, metadata, client_headers) = validate_submission(&state, &body)?;
    check_callback(&state.config.callbacks, &metadata)?;
    let mut partition_key = match metadata.extra.get("partition_key") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => {
            return Err(invalid(
                "invalid_request",
                "`metadata.partition_key` must be a string of 1 to 256 bytes",
            ))
        }
    };
    if state.config.partitioning.enabled {
        partition_key =
            configured_partition_key(&state.config, &payload, &metadata, &client_headers)?;
    }
    let mut trace = TraceSpan::start(
        "POST /api/v1/submit",
        SpanKind::Server,
        header_str(&headers, "traceparent").as_deref(),
    );
    // HTTP semantic conventions of a server span.
    trace.attr("http.request.method", "POST");
    trace.attr("http.route", "/api/v1/submit");
    trace.attr("url.path", "/api/v1/submit");
    trace.attr("url.scheme", "http");
    if let Some(host) = header_str(&headers, "host") {
        trace.server_authority(&host, 80);
    }
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        correlation_id: uuid::Uuid::new_v4().to_string(),
        submitted_at: now_rfc3339(),
        source: Source::Api,
        metadata,
        // Set to the publish span's context in `accept`.
        traceparent: None,
        payload: Some(payload),
        headers: client_headers,
        request: None,
        // Same-key messages are delivered in order (see docs/architecture.md).
        partition_key,
    };
    let idempotency = header_str(&headers, idempotency::HEADER)
        .map(|v| Idempotency::new(&v, "POST", "/api/v1/submit", None, &body))
        .transpose()?;
    let answer = accept(
        &state,
        envelope,
        Prefer::from_headers(&headers),
        idempotency,
        &mut trace,
    )
    .await;
    record_status(&mut trace, &answer);
    answer
}

/// A submission that parsed (or not) but breaks the model: 422, as the
/// original (FastAPI) answers validation errors; our body and codes.
fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

/// The submission's parts, checked against the original's model limits
/// (`payload` an object, `priority` 0-9 or a class name, `timeout` > 0) and
/// our own (a configured endpoint, an HTTP method token).
fn validate_submission(
    state: &AppState,
    body: &[u8],
) -> Result<(Value, Metadata, BTreeMap<String, String>), ApiError> {
    let parsed: SubmitRequest = serde_json::from_slice(body).map_err(|e| {
        invalid(
            "invalid_json",
            format!("request body is not valid JSON for a submission: {e}"),
        )
    })?;
    if let Some(h) = &parsed.headers {
        // Refused here, not dead-lettered by the worker later.
        openhqm_core::headers::check_headers(h)
            .map_err(|detail| invalid("invalid_header", detail))?;
    }
    let payload = match parsed.payload {
        None | Some(Value::Null) => {
            return Err(invalid("invalid_request", "`payload` is required"))
        }
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(invalid(
                "invalid_request",
                "`payload` must be a JSON object",
            ))
        }
    };
    let metadata = parsed.metadata.unwrap_or_default();
    if metadata.priority.as_ref().is_some_and(|p| !p.is_valid()) {
        return Err(invalid(
            "invalid_request",
            "`metadata.priority` must be an integer 0-9 or a class name such as \"high\"",
        ));
    }
    if metadata.timeout == Some(0) {
        return Err(invalid(
            "invalid_request",
            "`metadata.timeout` must be a number of seconds greater than 0",
        ));
    }
    if let Some(name) = &metadata.endpoint {
        if state.config.proxy.enabled && !state.config.proxy.endpoints.contains_key(name) {
            return Err(invalid(
                "unknown_endpoint",
                format!("`metadata.endpoint` names `{name}`, which is not configured"),
            ));
        }
    }
    if let Some(m) = &metadata.method {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid(
                "invalid_request",
                "`metadata.method` is not an HTTP method",
            ));
        }
    }
    Ok((payload, metadata, parsed.headers.unwrap_or_default()))
}

/// The answer's status on the request's span.
fn record_status(trace: &mut TraceSpan, answer: &Result<Response, ApiError>) {
    let status = match answer {
        Ok(r) => r.status(),
        Err(e) => e.status,
    };
    trace.attr("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        trace.set_error(format!("answered {status}"));
    }
}

/// `metadata.callback_url`, when given, must be a URL on the callback
/// allow-list: refused before anything is published.
fn check_callback(cfg: &CallbacksConfig, metadata: &Metadata) -> Result<(), ApiError> {
    let Some(url) = metadata.extra.get("callback_url") else {
        return Ok(());
    };
    let refuse = |detail: String| invalid("callback_not_allowed", detail);
    let url = url
        .as_str()
        .ok_or_else(|| refuse("`metadata.callback_url` must be a string (a URL)".into()))?;
    cfg.check_url(url)
        .map_err(|e| refuse(format!("`metadata.callback_url`: {e}")))
}

/// `POST /internal/v1/capture`: a request captured by the filter.
pub async fn capture(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let limit = state
        .config
        .server
        .max_body_bytes
        .saturating_add(CAPTURE_META_ALLOWANCE);
    let started = Instant::now();
    let (headers, frame) = read_body(req, limit).await?;
    if content_type(&headers).as_deref() != Some(CAPTURE_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the capture endpoint takes {CAPTURE_CONTENT_TYPE} frames from the OpenHQM filter"
            ),
        ));
    }
    let (meta, body) =
        parse_capture_frame(&frame).map_err(|e| ApiError::bad_request("invalid_capture", e))?;
    if body.len() > state.config.server.max_body_bytes {
        return Err(ApiError::too_large(state.config.server.max_body_bytes));
    }
    if !is_valid_correlation_id(&meta.correlation_id) {
        return Err(ApiError::invalid_id());
    }
    let traceparent = meta.traceparent.clone().or_else(|| {
        meta.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.clone())
    });
    let route = meta.route.as_deref().unwrap_or("unnamed");
    let mut trace = TraceSpan::start(
        format!("capture {route}"),
        SpanKind::Server,
        traceparent.as_deref(),
    );
    trace.attr("http.request.method", meta.method.clone());
    // The client's request as the filter captured it (no route template:
    // the filter's route is a name, in openhqm.route).
    trace.attr("url.path", meta.path.clone());
    trace.attr("url.scheme", "http");
    if let Some(authority) = &meta.authority {
        trace.server_authority(authority, 80);
    }
    trace.attr("openhqm.route", route);
    let answer = capture_parsed(&state, &meta, body, &mut trace).await;
    record_status(&mut trace, &answer);
    state
        .metrics
        .observe_capture(meta.route.as_deref(), started);
    answer
}

async fn capture_parsed(
    state: &Arc<AppState>,
    meta: &CaptureMeta,
    body: &[u8],
    trace: &mut TraceSpan,
) -> Result<Response, ApiError> {
    if let Some(name) = &meta.endpoint {
        if state.config.proxy.enabled && !state.config.proxy.endpoints.contains_key(name) {
            return Err(ApiError::bad_request(
                "unknown_endpoint",
                format!("the filter route names endpoint `{name}`, which is not configured"),
            ));
        }
    }
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        correlation_id: meta.correlation_id.clone(),
        submitted_at: now_rfc3339(),
        source: Source::Filter,
        metadata: Metadata {
            endpoint: meta.endpoint.clone(),
            priority: meta.priority.as_deref().map(Priority::from),
            ..Metadata::default()
        },
        // Set to the publish span's context in `accept`.
        traceparent: None,
        payload: None,
        headers: BTreeMap::new(),
        request: Some(HttpRequest::from_capture(meta, body)),
        partition_key: meta.partition_key.clone(),
    };
    let idempotency = meta
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(idempotency::HEADER))
        .map(|(_, v)| Idempotency::new(v, &meta.method, &meta.path, meta.query.as_deref(), body))
        .transpose()?;
    let accepted = accept(state, envelope, Prefer::default(), idempotency, trace).await?;
    if meta.wait_ms == 0 || accepted.status() != StatusCode::ACCEPTED {
        return Ok(accepted);
    }
    // The request's ID: the first request's when this one is a repeat.
    let id = accepted
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&meta.correlation_id)
        .to_string();
    // Wait mode: hold the answer until the backend's own response is stored
    // (by any worker) or the route's wait runs out. The filter's callout
    // timeout is the bridge timeout plus this wait, so the answer always
    // reaches the client.
    let cap_ms = state.config.server.max_wait_seconds.saturating_mul(1000);
    let wait = Duration::from_millis(meta.wait_ms.min(cap_ms));
    match state.store.wait_final(&id, wait).await {
        Ok(Some(record)) if record.status.is_final() => Ok(final_backend_answer(&record)),
        Ok(_) => Ok(accepted),
        Err(e) => {
            tracing::warn!(correlation_id = %id, error = %e, "waiting for the result failed");
            Ok(accepted)
        }
    }
}

/// The backend's own answer for a waiting capture, marked for the filter to
/// relay as it is. Without one (connection errors, deadline), a JSON error
/// in the backend's place: 502, or 504 for TIMEOUT.
fn final_backend_answer(record: &RequestRecord) -> Response {
    let marker = (FINAL_RESULT_HEADER, "final".to_string());
    let correlation = ("x-correlation-id", record.correlation_id.clone());
    if let Some(resp) = &record.response {
        if let Ok(body) = resp.body_bytes() {
            let status = StatusCode::from_u16(resp.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            for (name, value) in &resp.headers {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    out.headers_mut().append(n, v);
                }
            }
            return with_headers(out, &[marker, correlation]);
        }
    }
    let (status, code) = match record.status {
        Status::Timeout => (StatusCode::GATEWAY_TIMEOUT, "backend_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "backend_unavailable"),
    };
    let detail = record
        .error
        .clone()
        .unwrap_or_else(|| "the backend did not answer".into());
    let body = json!({"error": code, "detail": detail, "correlation_id": record.correlation_id});
    with_headers((status, Json(body)).into_response(), &[marker, correlation])
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Record PENDING, publish durably, and only then answer 202 (or, with
/// `Prefer: wait=N`, the final result if it comes within N seconds). With an
/// `Idempotency-Key`, a repeat of a request already accepted is answered
/// for the first one, without enqueueing again.
async fn accept(
    state: &Arc<AppState>,
    envelope: Envelope,
    prefer: Prefer,
    idempotency: Option<Idempotency>,
    trace: &mut TraceSpan,
) -> Result<Response, ApiError> {
    // Every log line about this request names it (and its trace).
    let log_span = tracing::info_span!(
        "request",
        correlation_id = %envelope.correlation_id,
        trace_id = tracing::field::Empty,
    );
    if let Some(t) = trace.trace_id() {
        log_span.record("trace_id", t);
    }
    trace.attr("openhqm.correlation_id", envelope.correlation_id.clone());
    // Its own task: a client that hangs up must not cut acceptance short
    // (a PENDING record without its message, or a message not counted).
    let durable = tokio::spawn(
        make_durable(
            state.clone(),
            envelope,
            idempotency,
            trace.traceparent().map(str::to_string),
        )
        .instrument(log_span.clone()),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "accepting the request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the request could not be accepted",
        )
    })??;
    Ok(respond_accepted(
        state,
        &durable.id,
        &durable.submitted_at,
        prefer,
        durable.headers,
    )
    .instrument(log_span)
    .await)
}

/// An accepted request: its ID (the first request's, for an idempotent
/// repeat), when it was accepted, and headers for the answer.
struct Durable {
    id: String,
    submitted_at: String,
    headers: Vec<(&'static str, String)>,
}

async fn make_durable(
    state: Arc<AppState>,
    mut envelope: Envelope,
    idempotency: Option<Idempotency>,
    traceparent: Option<String>,
) -> Result<Durable, ApiError> {
    let retry_after = state.config.server.retry_after_seconds;
    let id = envelope.correlation_id.clone();
    let store_down = |e: &dyn std::fmt::Display| {
        tracing::error!(correlation_id = %id, error = %e, "result store unavailable");
        ApiError::unavailable(
            "store_unavailable",
            "the result store is unavailable; retry later",
            retry_after,
        )
    };
    if let Some(idem) = &idempotency {
        match state
            .store
            .claim_idempotency_key(&idem.key, &idem.fingerprint, &id, state.ttl)
            .await
        {
            Ok(IdempotencyClaim::Claimed) => {}
            Ok(IdempotencyClaim::Existing {
                fingerprint,
                correlation_id,
            }) if fingerprint == idem.fingerprint => {
                tracing::info!(correlation_id = %correlation_id, "idempotent repeat; not enqueued again");
                let submitted_at = match state.store.get(&correlation_id).await {
                    Ok(Some(r)) => r.submitted_at,
                    _ => envelope.submitted_at.clone(),
                };
                return Ok(Durable {
                    id: correlation_id,
                    submitted_at,
                    headers: vec![("idempotent-replayed", "true".to_string())],
                });
            }
            Ok(IdempotencyClaim::Existing { .. }) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_mismatch",
                    "this Idempotency-Key was already used for a different request",
                ))
            }
            Err(e) => return Err(store_down(&e)),
        }
    }
    // Whatever fails from here on, the request was not accepted: its key
    // must not keep pointing at it.
    let release = || async {
        if let Some(idem) = &idempotency {
            let _ = state.store.release_idempotency_key(&idem.key, &id).await;
        }
    };
    // PENDING first: once published, a worker may mark the request
    // PROCESSING at any moment, and that must not be overwritten. Written
    // only if the ID is new, which also refuses an ID a client reused
    // (through the filter's trusted inbound correlation header).
    let record = RequestRecord::pending(&id, &envelope.submitted_at);
    match state.store.create(&record, state.ttl).await {
        Ok(true) => {}
        Ok(false) => {
            release().await;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_correlation_id",
                "a request with this correlation ID was already accepted",
            ));
        }
        Err(e) => {
            release().await;
            return Err(store_down(&e));
        }
    }
    let queue_name = state.requests.name().to_string();
    // The message carries the publish span's context: the worker's span is
    // its child.
    // Messaging semantic conventions: `send <destination>`, PRODUCER.
    let mut publish = TraceSpan::start(
        format!("send {queue_name}"),
        SpanKind::Producer,
        traceparent.as_deref(),
    );
    publish.messaging(
        &openhqm_core::telemetry::messaging_system(&state.config.queue),
        "send",
        &queue_name,
        &id,
    );
    envelope.traceparent = publish.traceparent().map(str::to_string);
    let message = Message {
        id: id.clone(),
        body: envelope.encode(),
        attributes: BTreeMap::new(),
        key: envelope.partition_key.clone(),
    };
    let published = state.requests.publish(message).await;
    if let Err(e) = &published {
        publish.set_error(e.to_string());
    }
    publish.end();
    if let Err(e) = published {
        // Not accepted: forget the PENDING record so the ID does not linger.
        let _ = state.store.delete(&id).await;
        release().await;
        return Err(match e {
            QueueError::TooLarge { max, .. } => {
                state
                    .metrics
                    .publish
                    .with_label_values(&[&queue_name, "too_large"])
                    .inc();
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the queued message would exceed the queue's limit of {max} bytes"),
                )
            }
            other => {
                state
                    .metrics
                    .publish
                    .with_label_values(&[&queue_name, "error"])
                    .inc();
                tracing::error!(correlation_id = %id, error = %other, "publish failed");
                ApiError::unavailable(
                    "queue_unavailable",
                    "the queue is unavailable; the request was not accepted, retry later",
                    retry_after,
                )
            }
        });
    }
    state
        .metrics
        .publish
        .with_label_values(&[&queue_name, "ok"])
        .inc();
    let source = match envelope.source {
        Source::Filter => "filter",
        Source::Api => "api",
    };
    state.metrics.accepted.with_label_values(&[source]).inc();
    tracing::debug!(correlation_id = %id, source, "accepted");
    Ok(Durable {
        id,
        submitted_at: envelope.submitted_at,
        headers: Vec::new(),
    })
}

/// The answer for an accepted request: 202 + Location, or with `Prefer:
/// wait=N` the final result if it comes in time.
async fn respond_accepted(
    state: &AppState,
    id: &str,
    submitted_at: &str,
    prefer: Prefer,
    mut headers: Vec<(&'static str, String)>,
) -> Response {
    let retry_after = state.config.server.retry_after_seconds;
    headers.push(("location", format!("/api/v1/response/{id}")));
    headers.push(("x-correlation-id", id.to_string()));
    if let Some(wait) = prefer.wait(state.config.server.max_wait_seconds) {
        headers.push(("preference-applied", format!("wait={wait}")));
        match state.store.wait_final(id, Duration::from_secs(wait)).await {
            Ok(Some(record)) if record.status.is_final() => {
                return with_headers(Json(result_json(&record)).into_response(), &headers);
            }
            Ok(_) => {}
            // Accepted all the same: the client fetches the result later.
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "waiting for the result failed")
            }
        }
    } else if prefer.respond_async {
        headers.push(("preference-applied", "respond-async".to_string()));
    }
    accepted_response(id, submitted_at, retry_after, &headers)
}

fn accepted_response(
    id: &str,
    submitted_at: &str,
    retry_after: u64,
    headers: &[(&'static str, String)],
) -> Response {
    let body = json!({
        "correlation_id": id,
        "status": Status::Pending,
        "submitted_at": submitted_at,
    });
    let resp = with_headers((StatusCode::ACCEPTED, Json(body)).into_response(), headers);
    with_headers(resp, &[("retry-after", retry_after.to_string())])
}

fn with_headers(mut resp: Response, headers: &[(&'static str, String)]) -> Response {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(*name, v);
        }
    }
    resp
}

/// The original's 404 detail, so its clients' checks keep matching.
const NOT_FOUND_DETAIL: &str = "Request not found or expired";

async fn lookup(state: &AppState, id: &str) -> Result<RequestRecord, ApiError> {
    // Our IDs are UUIDs: anything else cannot name a request. 404 like the
    // original (which looked any string up), without asking the store.
    if !is_valid_correlation_id(id) {
        return Err(ApiError::not_found(NOT_FOUND_DETAIL));
    }
    match state.store.get(id).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(ApiError::not_found(NOT_FOUND_DETAIL)),
        Err(e) => {
            tracing::error!(correlation_id = %id, error = %e, "result store read failed");
            Err(ApiError::unavailable(
                "store_unavailable",
                "the result store is unavailable; retry later",
                state.config.server.retry_after_seconds,
            ))
        }
    }
}

fn status_body(r: &RequestRecord) -> Value {
    json!({
        "correlation_id": r.correlation_id,
        "status": r.status,
        "submitted_at": r.submitted_at,
        "updated_at": r.updated_at,
    })
}

/// `GET /api/v1/status/{id}`
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = lookup(&state, &id).await?;
    Ok(Json(status_body(&record)).into_response())
}

/// `GET /api/v1/response/{id}`: 200 with the result once final, else 202.
/// With `Prefer: wait=N` it long-polls: the answer comes as soon as any
/// worker finishes the request, or after N seconds.
pub async fn response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut record = lookup(&state, &id).await?;
    let mut extra = Vec::new();
    let cap = state.config.server.max_wait_seconds;
    if let Some(wait) = Prefer::from_headers(&headers).wait(cap) {
        extra.push(("preference-applied", format!("wait={wait}")));
        if !record.status.is_final() {
            match state.store.wait_final(&id, Duration::from_secs(wait)).await {
                Ok(Some(r)) => record = r,
                Ok(None) => return Err(ApiError::not_found(NOT_FOUND_DETAIL)),
                Err(e) => {
                    tracing::warn!(correlation_id = %id, error = %e, "waiting for the result failed")
                }
            }
        }
    }
    if !record.status.is_final() {
        extra.push((
            "retry-after",
            state.config.server.retry_after_seconds.to_string(),
        ));
        extra.push(("location", format!("/api/v1/response/{id}")));
        // The original's pending shape: the ResultResponse keys, result null.
        let resp = (StatusCode::ACCEPTED, Json(result_json(&record))).into_response();
        return Ok(with_headers(resp, &extra));
    }
    Ok(with_headers(
        Json(result_json(&record)).into_response(),
        &extra,
    ))
}

/// `GET /health` and `/health/ready`: healthy only when queue and store
/// answer, else 503 (so probes and balancers act on it). The components
/// carry the original's names and words (`api`, `queue`, `cache`:
/// `healthy`/`unhealthy`) and ours (`result_store`, the same as `cache`).
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let queue_ok = state.requests.ping().await.is_ok();
    let store_ok = state
        .store
        .get("00000000-0000-0000-0000-000000000000")
        .await
        .is_ok();
    let healthy = queue_ok && store_ok;
    let word = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let body = json!({
        "status": word(healthy),
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": now_rfc3339(),
        "components": {
            "api": "healthy",
            "queue": word(queue_ok),
            "cache": word(store_ok),
            "result_store": word(store_ok),
        },
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /openapi.json`: the API's description, kept by hand beside the
/// handlers (the test below checks it names every public route;
/// tests/e2e/compat_api.rs runs openapi-spec-validator on what is served).
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

const OPENAPI: &str = include_str!("openapi.json");

/// `GET /health/live`: the process answers.
pub async fn live() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// `GET /metrics`: depths are asked of the broker at scrape time.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let dlq = state.dlq().await.ok();
    state
        .metrics
        .queues
        .refresh(state.requests.as_ref(), dlq.as_deref())
        .await;
    let mut resp = Response::new(Body::from(state.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(callback: Option<Value>) -> Metadata {
        Metadata {
            extra: callback
                .map(|c| ("callback_url".to_string(), c))
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_openapi_description_names_every_public_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for (path, method) in [
            ("/api/v1/submit", "post"),
            ("/api/v1/status/{correlation_id}", "get"),
            ("/api/v1/response/{correlation_id}", "get"),
            ("/health", "get"),
            ("/health/ready", "get"),
            ("/health/live", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        let priority = &doc["components"]["schemas"]["RequestMetadata"]["properties"]["priority"];
        assert_eq!(priority["oneOf"][0]["maximum"], 9);
        assert!(doc["paths"]["/api/v1/submit"]["post"]["responses"]["422"].is_object());
    }

    #[test]
    fn callback_urls_are_checked_on_submit() {
        let on = CallbacksConfig {
            allowed_hosts: vec!["hooks.example.com".into()],
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ..Default::default()
        };
        let off = CallbacksConfig::default();
        assert!(check_callback(&on, &metadata(None)).is_ok());
        assert!(check_callback(&off, &metadata(None)).is_ok());
        assert!(
            check_callback(&on, &metadata(Some(json!("https://hooks.example.com/cb")))).is_ok()
        );
        for (cfg, url, detail) in [
            (
                &on,
                json!("https://evil.example.net/cb"),
                "not in callbacks.allowed_hosts",
            ),
            (&on, json!("https://a@hooks.example.com/cb"), "user info"),
            (&on, json!(42), "must be a string"),
            (&off, json!("https://hooks.example.com/cb"), "disabled"),
        ] {
            let err = check_callback(cfg, &metadata(Some(url.clone()))).unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
            assert_eq!(err.code, "callback_not_allowed", "{url}");
            assert!(err.detail.contains(detail), "{url}: {}", err.detail);
        }
    }
}
