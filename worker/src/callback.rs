//! Completion callbacks: the final outcome of a request POSTed to the
//! client's `metadata.callback_url`, signed as Standard Webhooks
//! (<https://www.standardwebhooks.com>): headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` = `v1,` + base64 of
//! HMAC-SHA256(key, "{id}.{timestamp}.{body}").
//!
//! Only hosts on `callbacks.allowed_hosts` are ever called; the URL is
//! checked again before every attempt. Neither the secret nor the body is
//! logged.

use hmac::{Hmac, Mac};
use openhqm_core::config::CallbacksConfig;
use openhqm_core::model::{encode_base64, result_json, RequestRecord, Status};
use openhqm_core::retry::full_jitter;
use openhqm_core::time::now_rfc3339;
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delivers completion callbacks with retries.
pub struct CallbackSender {
    http: reqwest::Client,
    cfg: CallbacksConfig,
    key: Vec<u8>,
}

/// An HTTP client fit for callbacks: it does not follow redirects (a
/// receiver could otherwise send the worker to a host off the allow-list).
pub fn http_client(cfg: &CallbacksConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(cfg.timeout_seconds.min(5)))
        .build()
        .map_err(|e| format!("cannot build the callback HTTP client: {e}"))
}

/// The Standard Webhooks signature of one delivery: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, ts: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", encode_base64(&mac.finalize().into_bytes()))
}

/// The event type of a final status.
fn event_type(status: Status) -> Option<&'static str> {
    match status {
        Status::Completed => Some("request.completed"),
        Status::Failed => Some("request.failed"),
        Status::Timeout => Some("request.timeout"),
        Status::Pending | Status::Processing => None,
    }
}

impl CallbackSender {
    /// A sender, or None when callbacks are disabled (no allowed hosts).
    /// `http` must not follow redirects: use [`http_client`].
    pub fn new(http: reqwest::Client, cfg: &CallbacksConfig) -> Result<Option<Self>, String> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let key = cfg
            .secret_key()
            .map_err(|m| format!("callbacks.secret: {m}"))?;
        Ok(Some(Self {
            http,
            cfg: cfg.clone(),
            key,
        }))
    }

    /// POST the final outcome of `record` to `url`, retrying (exponential
    /// backoff, full jitter) until a 2xx answer or `max_attempts`. Every
    /// attempt of one outcome carries the same `webhook-id`, so a receiver
    /// can drop repeats.
    pub async fn deliver(&self, url: &str, record: &RequestRecord) -> Result<(), String> {
        let kind = event_type(record.status).ok_or_else(|| {
            format!(
                "request {} is {}, not final: nothing to report",
                record.correlation_id, record.status
            )
        })?;
        let id = format!(
            "msg_{}_{}",
            record.correlation_id,
            record.status.as_str().to_ascii_lowercase()
        );
        let body = serde_json::json!({
            "type": kind,
            "timestamp": record.completed_at.clone().unwrap_or_else(now_rfc3339),
            "data": result_json(record),
        })
        .to_string()
        .into_bytes();
        let mut rng = fastrand::Rng::new();
        let mut last = String::new();
        for attempt in 1..=self.cfg.max_attempts {
            if attempt > 1 {
                tokio::time::sleep(self.delay(attempt - 1, &mut rng)).await;
            }
            let host = self.allowed(url)?;
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let request = self
                .http
                .post(url)
                .timeout(Duration::from_secs(self.cfg.timeout_seconds))
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sign(&self.key, &id, ts, &body))
                .body(body.clone());
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(correlation_id = %record.correlation_id, %host, attempt, status = resp.status().as_u16(), "callback delivered");
                    return Ok(());
                }
                Ok(resp) => last = format!("the receiver answered HTTP {}", resp.status().as_u16()),
                Err(e) if e.is_timeout() => last = "the receiver did not answer in time".into(),
                Err(e) if e.is_connect() => last = "could not connect to the receiver".into(),
                Err(_) => last = "the callback request failed".into(),
            }
            tracing::warn!(correlation_id = %record.correlation_id, %host, attempt, max_attempts = self.cfg.max_attempts, error = %last, "callback attempt failed");
        }
        Err(format!(
            "callback not delivered after {} attempts: {last}",
            self.cfg.max_attempts
        ))
    }

    /// Check `url` against the allow-list, as text and as the HTTP client
    /// will read it; the host on success.
    fn allowed(&self, url: &str) -> Result<String, String> {
        self.cfg.check_url(url)?;
        let parsed = reqwest::Url::parse(url).map_err(|_| "the callback URL is not valid")?;
        match parsed.host_str() {
            Some(host) if self.cfg.host_allowed(host) && parsed.username().is_empty() => {
                Ok(host.to_string())
            }
            _ => Err("the callback URL's host is not in callbacks.allowed_hosts".into()),
        }
    }

    /// Full-jitter backoff before retry `n` (1 = the first retry).
    fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let secs = |v: f64| Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX);
        full_jitter(
            secs(self.cfg.retry_delay_base),
            secs(self.cfg.retry_delay_max),
            n,
            rng,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use openhqm_core::model::StoredResponse;
    use std::sync::{Arc, Mutex};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        // The test vector of the Standard Webhooks reference libraries,
        // checked independently:
        //   python3 -c 'import hmac,hashlib,base64
        //   key=base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        //   msg=b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}"
        //   print(base64.b64encode(hmac.new(key,msg,hashlib.sha256).digest()).decode())'
        let key = openhqm_core::model::decode_base64("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_ne!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265331,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    fn config(hosts: &[&str]) -> CallbacksConfig {
        CallbacksConfig {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            secret: Some(SECRET.into()),
            retry_delay_base: 0.01,
            retry_delay_max: 0.05,
            timeout_seconds: 5,
            ..Default::default()
        }
    }

    #[test]
    fn urls_are_checked_against_the_allow_list() {
        let c = config(&["hooks.example.com", "*.example.org"]);
        let s = CallbackSender::new(http_client(&c).unwrap(), &c)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.allowed("https://hooks.example.com/x").unwrap(),
            "hooks.example.com"
        );
        assert_eq!(
            s.allowed("http://a.b.example.org:8080/x").unwrap(),
            "a.b.example.org"
        );
        assert!(s.allowed("https://example.org/").is_err());
        assert!(s.allowed("https://u:p@hooks.example.com/").is_err());
        assert!(s.allowed("ftp://hooks.example.com/").is_err());
        assert!(s.allowed("https://other.net/").is_err());
        let off = CallbacksConfig::default();
        assert!(CallbackSender::new(http_client(&off).unwrap(), &off)
            .unwrap()
            .is_none());
        let err = off.check_url("https://hooks.example.com/").unwrap_err();
        assert!(err.contains("disabled"), "{err}");
        let mut bad = config(&["x"]);
        bad.secret = Some("whsec_nope!".into());
        assert!(CallbackSender::new(http_client(&bad).unwrap(), &bad).is_err());
    }

    #[derive(Default)]
    struct Receiver {
        calls: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    }

    /// A receiver that fails `failures` times, then answers 200.
    async fn receiver(failures: usize) -> (Arc<Receiver>, String) {
        let state = Arc::new(Receiver::default());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |axum::extract::State(s): axum::extract::State<Arc<Receiver>>,
                      headers: HeaderMap,
                      body: axum::body::Bytes| async move {
                    let mut calls = s.calls.lock().unwrap();
                    calls.push((headers, body.to_vec()));
                    if calls.len() <= failures {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        let app = app.with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (state, format!("http://{addr}/hook"))
    }

    fn completed() -> RequestRecord {
        let mut r = RequestRecord::pending(
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "2026-01-02T03:04:05.000Z",
        );
        r.status = Status::Completed;
        r.attempts = 1;
        r.completed_at = Some("2026-01-02T03:04:06.000Z".into());
        r.response = Some(StoredResponse::new(
            200,
            vec![("content-type".into(), "application/json".into())],
            br#"{"output":"HI"}"#,
        ));
        r
    }

    #[tokio::test]
    async fn delivery_is_retried_signed_and_keeps_its_id() {
        let (rx, url) = receiver(2).await;
        let c = config(&["127.0.0.1"]);
        let s = CallbackSender::new(http_client(&c).unwrap(), &c)
            .unwrap()
            .unwrap();
        s.deliver(&url, &completed()).await.unwrap();
        let calls = rx.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "two failures, then delivered");
        let key = c.secret_key().unwrap();
        for (headers, body) in &calls {
            let h = |n: &str| headers[n].to_str().unwrap().to_string();
            assert_eq!(
                h("webhook-id"),
                "msg_67e55044-10b1-426f-9247-bb680e5fe0c8_completed"
            );
            assert_eq!(h("content-type"), "application/json");
            // The receiver's check: recompute over id, timestamp and the raw body.
            let ts: u64 = h("webhook-timestamp").parse().unwrap();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(now.abs_diff(ts) <= 5, "timestamp {ts} is now");
            assert_eq!(
                h("webhook-signature"),
                sign(&key, &h("webhook-id"), ts, body)
            );
            let event: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(event["type"], "request.completed");
            assert_eq!(event["timestamp"], "2026-01-02T03:04:06.000Z");
            assert_eq!(
                event["data"]["correlation_id"],
                "67e55044-10b1-426f-9247-bb680e5fe0c8"
            );
            assert_eq!(event["data"]["status"], "COMPLETED");
            assert_eq!(event["data"]["result"], serde_json::json!({"output": "HI"}));
        }
        // A tampered body does not verify.
        let (headers, body) = &calls[0];
        let ts: u64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert_ne!(
            headers["webhook-signature"].to_str().unwrap(),
            sign(
                &key,
                "msg_67e55044-10b1-426f-9247-bb680e5fe0c8_completed",
                ts,
                &tampered
            )
        );
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_never_calls_other_hosts() {
        let (rx, url) = receiver(usize::MAX).await;
        let mut c = config(&["127.0.0.1"]);
        c.max_attempts = 3;
        let s = CallbackSender::new(http_client(&c).unwrap(), &c)
            .unwrap()
            .unwrap();
        let mut failed = completed();
        failed.status = Status::Failed;
        failed.error = Some("boom".into());
        let err = s.deliver(&url, &failed).await.unwrap_err();
        assert!(err.contains("after 3 attempts"), "{err}");
        assert!(err.contains("HTTP 503"), "{err}");
        {
            let calls = rx.calls.lock().unwrap();
            assert_eq!(calls.len(), 3);
            assert_eq!(
                calls[0].0["webhook-id"],
                "msg_67e55044-10b1-426f-9247-bb680e5fe0c8_failed"
            );
            let event: serde_json::Value = serde_json::from_slice(&calls[0].1).unwrap();
            assert_eq!(event["type"], "request.failed");
            assert_eq!(event["data"]["error"], "boom");
        }

        // Same receiver, but "localhost" is not on the list: not called.
        let other = url.replace("127.0.0.1", "localhost");
        let err = s.deliver(&other, &completed()).await.unwrap_err();
        assert!(err.contains("not in callbacks.allowed_hosts"), "{err}");
        assert_eq!(rx.calls.lock().unwrap().len(), 3);

        let mut pending = completed();
        pending.status = Status::Processing;
        assert!(s.deliver(&url, &pending).await.is_err());
        assert_eq!(rx.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let hit = Arc::new(Mutex::new(0u32));
        let counter = hit.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(|| async {
                    (StatusCode::TEMPORARY_REDIRECT, [("location", "/elsewhere")])
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::post(move || async move {
                    *counter.lock().unwrap() += 1;
                    StatusCode::OK
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut c = config(&["127.0.0.1"]);
        c.max_attempts = 2;
        let s = CallbackSender::new(http_client(&c).unwrap(), &c)
            .unwrap()
            .unwrap();
        let err = s
            .deliver(&format!("http://{addr}/hook"), &completed())
            .await
            .unwrap_err();
        assert!(err.contains("HTTP 307"), "{err}");
        assert_eq!(*hit.lock().unwrap(), 0);
    }
}
