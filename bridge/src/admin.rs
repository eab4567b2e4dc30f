//! The admin API under `/admin`: dead-letter tooling (list, show, replay,
//! delete, purge). Off unless `server.admin_token` is set; then every call
//! needs `Authorization: Bearer <token>`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use openhqm_core::dlq::{self, DeadLetter, DlqError};
use openhqm_core::queue::{Queue, QueueError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Page size of `GET /admin/dlq` without `limit`, and the largest allowed.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/dlq", get(list).delete(purge))
        .route("/admin/dlq/replay", post(replay_all))
        .route("/admin/dlq/{position}", get(show).delete(delete_one))
        .route("/admin/dlq/{position}/replay", post(replay_one))
        .route("/admin", any(unknown))
        .route("/admin/{*rest}", any(unknown))
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Equal tokens, in time that does not depend on where they differ (nor on
/// their lengths: the digests are compared, not the tokens).
fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.server.admin_token.as_deref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is off: set server.admin_token to turn it on",
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        Some(token) if token_matches(token, expected) => next.run(req).await,
        _ => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <server.admin_token>",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

async fn unknown() -> ApiError {
    ApiError::not_found("no such admin endpoint")
}

fn queue_error(state: &AppState, e: QueueError) -> ApiError {
    match e {
        QueueError::Unsupported(what) => ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            format!("the queue backend cannot do this ({what}); see docs/backends.md"),
        ),
        QueueError::Invalid(m) => ApiError::bad_request("invalid_position", m),
        QueueError::TooLarge { max, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the message exceeds the request queue's limit of {max} bytes"),
        ),
        QueueError::Unavailable(_) | QueueError::LeaseLost => {
            tracing::error!(error = %e, "admin: queue unavailable");
            ApiError::unavailable(
                "queue_unavailable",
                "the queue is unavailable; retry later",
                state.config.server.retry_after_seconds,
            )
        }
    }
}

fn dlq_error(state: &AppState, e: DlqError) -> ApiError {
    match e {
        DlqError::Queue(e) => queue_error(state, e),
        DlqError::Store(e) => {
            tracing::error!(error = %e, "admin: result store unavailable");
            ApiError::unavailable(
                "store_unavailable",
                "the result store is unavailable; retry later",
                state.config.server.retry_after_seconds,
            )
        }
        DlqError::NotFound => no_dead_letter(),
    }
}

fn no_dead_letter() -> ApiError {
    ApiError::not_found("no dead letter at this position (replayed, removed, or never there)")
}

async fn dlq_queue(state: &AppState) -> Result<Arc<dyn Queue>, ApiError> {
    state.dlq().await.map_err(|e| queue_error(state, e))
}

fn position(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(p)) if !p.is_empty() => Ok(p),
        _ => Err(ApiError::bad_request(
            "invalid_position",
            "the path does not name a position",
        )),
    }
}

/// `GET /admin/dlq?after=&limit=`
async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("invalid_query", "malformed query string"))?;
    let limit = match query.get("limit").map(|l| l.trim()) {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => n.min(MAX_LIMIT),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` is a number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let after = query
        .get("after")
        .map(String::as_str)
        .filter(|a| !a.is_empty());
    let dlq = dlq_queue(&state).await?;
    let items = dlq::list(dlq.as_ref(), after, limit)
        .await
        .map_err(|e| queue_error(&state, e))?;
    Ok(Json(list_json(&items, limit)).into_response())
}

/// The listing as the API and `dlq list --json` write it: `next_after` is
/// the `after` of the next page, while a full page suggests there is one.
pub fn list_json(items: &[DeadLetter], limit: usize) -> Value {
    let next_after = (items.len() == limit)
        .then(|| items.last().map(|d| d.position.clone()))
        .flatten();
    json!({"items": items, "count": items.len(), "next_after": next_after})
}

/// One dead letter with its body: always as base64, and as text too when it
/// is UTF-8.
pub fn detail_json(dead: &DeadLetter, body: &[u8]) -> Value {
    let mut v = json!(dead);
    v["body_base64"] = json!(openhqm_core::model::encode_base64(body));
    v["body_text"] = json!(std::str::from_utf8(body).ok());
    v
}

/// `GET /admin/dlq/{position}`
async fn show(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let position = position(path)?;
    let dlq = dlq_queue(&state).await?;
    match dlq::get(dlq.as_ref(), &position).await {
        Ok(Some((dead, body))) => Ok(Json(detail_json(&dead, &body)).into_response()),
        Ok(None) => Err(no_dead_letter()),
        Err(e) => Err(queue_error(&state, e)),
    }
}

/// `POST /admin/dlq/{position}/replay`
async fn replay_one(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let position = position(path)?;
    let dlq = dlq_queue(&state).await?;
    let dead = dlq::replay(
        dlq.as_ref(),
        state.requests.as_ref(),
        state.store.as_ref(),
        &position,
        state.ttl,
    )
    .await
    .map_err(|e| dlq_error(&state, e))?;
    Ok(Json(json!({
        "replayed": 1,
        "position": dead.position,
        "message_id": dead.message_id,
        "queue": state.requests.name(),
    }))
    .into_response())
}

/// `POST /admin/dlq/replay`: everything in the DLQ now.
async fn replay_all(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let dlq = dlq_queue(&state).await?;
    let counts = dlq::replay_all(
        dlq.as_ref(),
        state.requests.as_ref(),
        state.store.as_ref(),
        state.ttl,
    )
    .await
    .map_err(|e| queue_error(&state, e))?;
    Ok(Json(json!({
        "replayed": counts.replayed,
        "failed": counts.failed,
        "queue": state.requests.name(),
    }))
    .into_response())
}

/// `DELETE /admin/dlq/{position}`
async fn delete_one(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let position = position(path)?;
    let dlq = dlq_queue(&state).await?;
    match dlq::delete(dlq.as_ref(), &position).await {
        Ok(true) => Ok(Json(json!({"removed": 1, "position": position})).into_response()),
        Ok(false) => Err(no_dead_letter()),
        Err(e) => Err(queue_error(&state, e)),
    }
}

/// `DELETE /admin/dlq?confirm=true`
async fn purge(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let confirmed = query
        .ok()
        .and_then(|Query(q)| q.get("confirm").cloned())
        .is_some_and(|c| c == "true");
    if !confirmed {
        return Err(ApiError::bad_request(
            "confirmation_required",
            "purging removes every dead letter for good: add ?confirm=true",
        ));
    }
    let dlq = dlq_queue(&state).await?;
    let removed = dlq::purge(dlq.as_ref())
        .await
        .map_err(|e| queue_error(&state, e))?;
    tracing::warn!(removed, queue = dlq.name(), "dead-letter queue purged");
    Ok(Json(json!({"removed": removed})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use openhqm_core::backends::embedded::EmbeddedBackend;
    use openhqm_core::backends::embedded::EmbeddedStore;
    use openhqm_core::config::Config;
    use openhqm_core::envelope::{Envelope, Metadata, Source, ENVELOPE_VERSION};
    use openhqm_core::model::{RequestRecord, Status};
    use openhqm_core::queue::{dead_letter, Message, QueueBackend};
    use openhqm_core::store::ResultStore;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tower::ServiceExt;

    const TOKEN: &str = "s3cret-token";

    struct Fixture {
        _dir: tempfile::TempDir,
        state: Arc<AppState>,
        store: Arc<dyn ResultStore>,
    }

    async fn fixture(token: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.queue.data_dir = dir.path().to_path_buf();
        config.server.admin_token = token.map(String::from);
        let backend: Arc<dyn QueueBackend> =
            Arc::new(EmbeddedBackend::open(dir.path(), 1024 * 1024).unwrap());
        let requests = backend
            .open(&config.queue.request_queue_name)
            .await
            .unwrap();
        let store: Arc<dyn ResultStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let state = Arc::new(AppState::new(config, backend, requests, store.clone()));
        Fixture {
            _dir: dir,
            state,
            store,
        }
    }

    /// A request that failed for good: FAILED in the store, in the DLQ.
    async fn fail_one(f: &Fixture, body: Option<Vec<u8>>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: id.clone(),
            submitted_at: "2026-11-22T10:00:00.000Z".into(),
            source: Source::Api,
            metadata: Metadata::default(),
            traceparent: None,
            payload: Some(json!({"n": 1})),
            headers: BTreeMap::new(),
            request: None,
            partition_key: None,
        };
        let q = &f.state.requests;
        q.publish(Message {
            id: id.clone(),
            body: body.unwrap_or_else(|| envelope.encode()),
            ..Default::default()
        })
        .await
        .unwrap();
        let d = q
            .receive(1, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .unwrap();
        let mut record = RequestRecord::pending(&id, "2026-11-22T10:00:00.000Z");
        record.status = Status::Failed;
        f.store.put(&record, f.state.ttl).await.unwrap();
        let dlq = f.state.dlq().await.unwrap();
        dead_letter(q.as_ref(), dlq.as_ref(), &d, "HTTP 500")
            .await
            .unwrap();
        id
    }

    async fn call(
        f: &Fixture,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = crate::router(f.state.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body, headers)
    }

    #[tokio::test]
    async fn off_without_a_token() {
        let f = fixture(None).await;
        for (method, uri) in [
            ("GET", "/admin/dlq"),
            ("DELETE", "/admin/dlq?confirm=true"),
            ("POST", "/admin/dlq/1/replay"),
            ("GET", "/admin/anything"),
        ] {
            let (status, body, _) = call(&f, method, uri, Some("whatever")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
            assert_eq!(body["error"], "admin_disabled");
        }
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_is_refused() {
        let f = fixture(Some(TOKEN)).await;
        for token in [None, Some("wrong"), Some(""), Some("s3cret-token-and-more")] {
            let (status, body, headers) = call(&f, "GET", "/admin/dlq", token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(body["error"], "unauthorized");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        let (status, body, _) = call(&f, "GET", "/admin/nope", Some(TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        assert!(token_matches(TOKEN, TOKEN));
        assert!(!token_matches("s3cret-tokeN", TOKEN));
    }

    #[tokio::test]
    async fn list_show_replay_delete_purge() {
        let f = fixture(Some(TOKEN)).await;
        let first = fail_one(&f, None).await;
        let second = fail_one(&f, Some(vec![0, 159, 255])).await;
        let third = fail_one(&f, None).await;

        let (status, body, _) = call(&f, "GET", "/admin/dlq", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["count"], 3);
        assert_eq!(body["next_after"], Value::Null);
        let items = body["items"].as_array().unwrap();
        assert_eq!(items[0]["message_id"], first.as_str());
        assert_eq!(items[0]["error"], "HTTP 500");
        assert_eq!(items[0]["attempts"], 1);
        assert_eq!(items[0]["source_queue"], "openhqm-requests");
        let positions: Vec<String> = items
            .iter()
            .map(|i| i["position"].as_str().unwrap().to_string())
            .collect();

        let (_, page, _) = call(&f, "GET", "/admin/dlq?limit=2", Some(TOKEN)).await;
        assert_eq!(page["count"], 2);
        assert_eq!(page["next_after"], positions[1].as_str());
        let uri = format!("/admin/dlq?limit=2&after={}", positions[1]);
        let (_, page, _) = call(&f, "GET", &uri, Some(TOKEN)).await;
        assert_eq!(page["items"][0]["message_id"], third.as_str());
        for bad in ["limit=0", "limit=x", "limit=-1"] {
            let (status, body, _) =
                call(&f, "GET", &format!("/admin/dlq?{bad}"), Some(TOKEN)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_limit"))
            );
        }
        let (status, body, _) = call(&f, "GET", "/admin/dlq?after=garbage", Some(TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_position"))
        );

        let (status, shown, _) = call(
            &f,
            "GET",
            &format!("/admin/dlq/{}", positions[0]),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let text = shown["body_text"].as_str().unwrap();
        assert!(text.contains(&first), "{text}");
        let (_, binary, _) = call(
            &f,
            "GET",
            &format!("/admin/dlq/{}", positions[1]),
            Some(TOKEN),
        )
        .await;
        assert_eq!(binary["message_id"], second.as_str());
        assert_eq!(binary["body_text"], Value::Null);
        assert_eq!(binary["body_base64"], "AJ//");
        let (status, body, _) = call(&f, "GET", "/admin/dlq/999999", Some(TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );

        // Replay one: back on the request queue, record PENDING again.
        let uri = format!("/admin/dlq/{}/replay", positions[0]);
        let (status, body, _) = call(&f, "POST", &uri, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["message_id"], first.as_str());
        let record = f.store.get(&first).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Pending);
        let d = f
            .state
            .requests
            .receive(1, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(d.message.id, first);
        f.state.requests.ack(&d.receipt).await.unwrap();
        let (status, body, _) = call(&f, "POST", &uri, Some(TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );

        // Delete one.
        let uri = format!("/admin/dlq/{}", positions[1]);
        let (status, body, _) = call(&f, "DELETE", &uri, Some(TOKEN)).await;
        assert_eq!(
            (status, body["removed"].as_u64()),
            (StatusCode::OK, Some(1))
        );
        let (status, _, _) = call(&f, "DELETE", &uri, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Replay all, then purge (with and without confirmation).
        fail_one(&f, None).await;
        let (status, body, _) = call(&f, "POST", "/admin/dlq/replay", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["replayed"].as_u64(), body["failed"].as_u64()),
            (Some(2), Some(0))
        );
        assert_eq!(f.state.requests.depth().await.unwrap().total(), 2);
        fail_one(&f, None).await;
        fail_one(&f, None).await;
        for uri in ["/admin/dlq", "/admin/dlq?confirm=yes"] {
            let (status, body, _) = call(&f, "DELETE", uri, Some(TOKEN)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("confirmation_required"))
            );
        }
        let (status, body, _) = call(&f, "DELETE", "/admin/dlq?confirm=true", Some(TOKEN)).await;
        assert_eq!(
            (status, body["removed"].as_u64()),
            (StatusCode::OK, Some(2))
        );
        let (_, body, _) = call(&f, "GET", "/admin/dlq", Some(TOKEN)).await;
        assert_eq!(body["count"], 0);
    }

    /// A queue that cannot browse (like MQTT's): everything else delegated.
    struct NoBrowse(Arc<dyn Queue>);

    #[async_trait::async_trait]
    impl Queue for NoBrowse {
        fn name(&self) -> &str {
            self.0.name()
        }
        async fn publish(&self, m: Message) -> Result<(), QueueError> {
            self.0.publish(m).await
        }
        async fn receive(
            &self,
            max: usize,
            wait: Duration,
            lease: Duration,
        ) -> Result<Vec<openhqm_core::queue::Delivery>, QueueError> {
            self.0.receive(max, wait, lease).await
        }
        async fn ack(&self, r: &openhqm_core::queue::Receipt) -> Result<(), QueueError> {
            self.0.ack(r).await
        }
        async fn nack(
            &self,
            r: &openhqm_core::queue::Receipt,
            delay: Duration,
        ) -> Result<(), QueueError> {
            self.0.nack(r, delay).await
        }
        async fn extend_lease(
            &self,
            r: &openhqm_core::queue::Receipt,
            lease: Duration,
        ) -> Result<(), QueueError> {
            self.0.extend_lease(r, lease).await
        }
        async fn depth(&self) -> Result<openhqm_core::queue::Depth, QueueError> {
            self.0.depth().await
        }
        async fn close(&self) -> Result<(), QueueError> {
            self.0.close().await
        }
    }

    struct NoBrowseBackend(Arc<dyn QueueBackend>);

    #[async_trait::async_trait]
    impl QueueBackend for NoBrowseBackend {
        fn kind(&self) -> &str {
            "no-browse"
        }
        async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
            Ok(Arc::new(NoBrowse(self.0.open(name).await?)))
        }
    }

    #[tokio::test]
    async fn unsupported_is_501_and_a_broker_outage_is_503() {
        let f = fixture(Some(TOKEN)).await;
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn QueueBackend> =
            Arc::new(EmbeddedBackend::open(dir.path(), 1024).unwrap());
        let backend: Arc<dyn QueueBackend> = Arc::new(NoBrowseBackend(inner));
        let requests = backend.open("requests").await.unwrap();
        let g = Fixture {
            state: Arc::new(AppState::new(
                f.state.config.clone(),
                backend,
                requests,
                f.store.clone(),
            )),
            store: f.store.clone(),
            _dir: dir,
        };
        for (method, uri) in [
            ("GET", "/admin/dlq"),
            ("GET", "/admin/dlq/1"),
            ("POST", "/admin/dlq/1/replay"),
            ("POST", "/admin/dlq/replay"),
            ("DELETE", "/admin/dlq/1"),
            ("DELETE", "/admin/dlq?confirm=true"),
        ] {
            let (status, body, _) = call(&g, method, uri, Some(TOKEN)).await;
            assert_eq!(
                status,
                StatusCode::NOT_IMPLEMENTED,
                "{method} {uri}: {body}"
            );
            assert_eq!(body["error"], "not_supported");
        }

        // Redis that is not there: the queue is unavailable, retry later.
        #[cfg(feature = "redis")]
        {
            let redis: Arc<dyn QueueBackend> = Arc::new(
                openhqm_core::backends::redis::RedisBackend::new(
                    "redis://127.0.0.1:1",
                    "g",
                    None,
                    1024,
                )
                .unwrap(),
            );
            let requests = redis.open("requests").await.unwrap();
            let h = Fixture {
                state: Arc::new(AppState::new(
                    f.state.config.clone(),
                    redis,
                    requests,
                    f.store.clone(),
                )),
                store: f.store.clone(),
                _dir: tempfile::tempdir().unwrap(),
            };
            let (status, body, headers) = call(&h, "GET", "/admin/dlq", Some(TOKEN)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["error"], "queue_unavailable");
            assert_eq!(headers["retry-after"], "1");
            assert!(
                !body["detail"].as_str().unwrap().contains("127.0.0.1"),
                "no broker address in the answer"
            );
        }
    }
}
