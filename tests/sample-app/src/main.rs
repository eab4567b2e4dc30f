//! `openhqm-sample-app`: a deliberately slow "legacy" backend for the demo and
//! the end-to-end tests. It counts how many requests it holds at once, so a
//! test (or a person running the demo) can see that OpenHQM protected it.
//!
//! - `POST /orders`   ~200 ms; echoes the order (JSON) with an id, or for a
//!   non-JSON body reports its size and base64 so byte-exactness is visible
//! - `GET /orders/{id}` the order, or a plain-text 404 with `x-sample-note`
//! - `GET /healthz`   at once
//! - `GET /stats`     `{"max_in_flight", "in_flight", "served"}`;
//!   `POST /stats/reset` zeroes them
//! - `PUT /control`   `{"delay_ms", "fail_status", "fail_rate"}` changes
//!   behaviour for every request (the demo's "make it slow / make it fail")
//! - `ANY /echo/...`  answers with the request it got (method, path, query,
//!   headers, body), so a test can see what a transform produced
//! - `GET /requests`  the log of requests to `/orders` and `/echo` (arrival
//!   time, correlation ID, attempt, JSON body, status answered), for tests of
//!   rate limits, ordering and sticky routing; cleared by `POST /stats/reset`
//! - per request: `x-sample-delay-ms: N`; `x-sample-fail-times: N` with
//!   `x-sample-fail-status: S` fails the first N attempts of each
//!   `x-correlation-id` with status S (default 500), then succeeds;
//!   `x-sample-retry-after: N` adds `Retry-After: N` to those failures

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Control {
    delay_ms: u64,
    fail_status: Option<u16>,
    /// 0.0 ..= 1.0: share of requests answered with `fail_status` (or 500).
    fail_rate: f64,
}

struct App {
    control: Mutex<Control>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    served: AtomicU64,
    next_id: AtomicU64,
    /// Attempts seen per correlation ID, for `x-sample-fail-times`.
    attempts: Mutex<HashMap<String, u64>>,
    /// Orders created, by id, for `GET /orders/{id}`.
    orders: Mutex<HashMap<String, Value>>,
    /// `--name`: which instance answered, in the request log.
    name: String,
    log: Mutex<std::collections::VecDeque<Value>>,
    /// `--no-log` turns the request log off (benchmarks).
    log_requests: bool,
    started: std::time::Instant,
}

/// Requests kept in the log; older ones are dropped.
const LOG_LIMIT: usize = 50_000;

impl App {
    fn record(&self, method: &str, path: &str, headers: &HeaderMap, body: &[u8], status: u16) {
        if !self.log_requests {
            return;
        }
        let entry = json!({
            "at_ms": self.started.elapsed().as_secs_f64() * 1000.0,
            "instance": self.name,
            "method": method,
            "path": path,
            "correlation_id": header(headers, "x-correlation-id"),
            "attempt": header(headers, "x-openhqm-attempt"),
            "body": serde_json::from_slice::<Value>(body).ok(),
            "body_text": std::str::from_utf8(body).ok(),
            "headers": headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "status": status,
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(entry);
    }
}

/// Counts a request as held from creation to drop, whatever path it takes.
struct InFlight<'a>(&'a App);

impl<'a> InFlight<'a> {
    fn enter(app: &'a App) -> Self {
        let now = app.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        app.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(app)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn orders(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = create_order(&app, &headers, &body).await;
    app.record("POST", "/orders", &headers, &body, resp.status().as_u16());
    resp
}

async fn create_order(app: &App, headers: &HeaderMap, body: &Bytes) -> Response {
    let _held = InFlight::enter(app);
    let (delay_ms, fail_status, fail_rate) = {
        let c = app.control.lock().unwrap_or_else(|p| p.into_inner());
        (c.delay_ms, c.fail_status, c.fail_rate)
    };
    let delay = header(headers, "x-sample-delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(delay_ms);
    tokio::time::sleep(Duration::from_millis(delay)).await;

    let fail_times: u64 = header(headers, "x-sample-fail-times")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if fail_times > 0 {
        let key = header(headers, "x-correlation-id")
            .unwrap_or("-")
            .to_string();
        let seen = {
            let mut map = app.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        if seen <= fail_times {
            let status = header(headers, "x-sample-fail-status")
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
            let mut resp = fail(
                status,
                &format!("failing attempt {seen} of {fail_times} on request"),
            );
            if let Some(ra) = headers.get("x-sample-retry-after") {
                resp.headers_mut().insert("retry-after", ra.clone());
            }
            return resp;
        }
    }
    if fail_rate > 0.0 && fastrand_f64() < fail_rate {
        return fail(
            fail_status.unwrap_or(500),
            "failing on demand (PUT /control)",
        );
    }

    let id = app.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    app.served.fetch_add(1, Ordering::SeqCst);
    let id = format!("ord-{id}");
    let is_json = header(headers, "content-type").is_some_and(|c| c.contains("json"));
    let order = if is_json {
        serde_json::from_slice::<Value>(body).ok()
    } else {
        None
    };
    let reply = match order {
        Some(order) => json!({"id": id, "status": "created", "order": order}),
        None => json!({
            "id": id,
            "status": "created",
            "received_bytes": body.len(),
            "body_base64": base64(body),
        }),
    };
    app.orders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), reply.clone());
    let mut resp = (StatusCode::CREATED, Json(reply)).into_response();
    resp.headers_mut()
        .insert("x-served-by", "openhqm-sample-app".parse().expect("static"));
    if let Ok(location) = format!("/orders/{id}").parse() {
        resp.headers_mut().insert("location", location);
    }
    // Shows a test which trace context reached the backend call.
    if let Some(tp) = headers.get("traceparent") {
        resp.headers_mut()
            .insert("x-received-traceparent", tp.clone());
    }
    resp
}

/// `GET /orders/{id}`: the order, or the app's own 404 (with a body and a
/// header of its own, so a test can see they reach the client unchanged).
async fn order(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _held = InFlight::enter(&app);
    let delay = header(&headers, "x-sample-delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let found = app
        .orders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let mut resp = match found {
        Some(order) => Json(order).into_response(),
        None => {
            let mut r = (StatusCode::NOT_FOUND, format!("no order {id}\n")).into_response();
            r.headers_mut()
                .insert("x-sample-note", "unknown-order".parse().expect("static"));
            r
        }
    };
    resp.headers_mut()
        .insert("x-served-by", "openhqm-sample-app".parse().expect("static"));
    resp
}

fn fail(status: u16, detail: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(json!({"error": "sample_failure", "detail": detail})),
    )
        .into_response()
}

/// Cheap randomness without a dependency: the sub-second clock is plenty for
/// a demo's failure rate.
fn fastrand_f64() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn healthz() -> Response {
    let mut resp = Json(json!({"status": "ok"})).into_response();
    resp.headers_mut()
        .insert("x-served-by", "openhqm-sample-app".parse().expect("static"));
    resp
}

/// `ANY /echo/...`: the request as the app received it.
async fn echo(
    State(app): State<Arc<App>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _held = InFlight::enter(&app);
    app.served.fetch_add(1, Ordering::SeqCst);
    let header_map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let reply = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": header_map,
        "body": serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
    });
    app.record(method.as_str(), uri.path(), &headers, &body, 200);
    Json(reply).into_response()
}

async fn requests(State(app): State<Arc<App>>) -> Json<Value> {
    let log = app.log.lock().unwrap_or_else(|p| p.into_inner());
    Json(Value::Array(log.iter().cloned().collect()))
}

async fn stats(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "max_in_flight": app.max_in_flight.load(Ordering::SeqCst),
        "in_flight": app.in_flight.load(Ordering::SeqCst),
        "served": app.served.load(Ordering::SeqCst),
    }))
}

async fn reset(State(app): State<Arc<App>>) -> StatusCode {
    app.max_in_flight
        .store(app.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    app.served.store(0, Ordering::SeqCst);
    app.attempts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    app.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlUpdate {
    delay_ms: Option<u64>,
    fail_status: Option<u16>,
    fail_rate: Option<f64>,
}

async fn control(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let update: ControlUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_json", "detail": e.to_string()})),
            )
                .into_response()
        }
    };
    let mut c = app.control.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = update.delay_ms {
        c.delay_ms = d;
    }
    if let Some(s) = update.fail_status {
        c.fail_status = Some(s);
    }
    if let Some(r) = update.fail_rate {
        c.fail_rate = r.clamp(0.0, 1.0);
    }
    Json(json!({"delay_ms": c.delay_ms, "fail_status": c.fail_status, "fail_rate": c.fail_rate}))
        .into_response()
}

#[tokio::main]
async fn main() {
    let mut host = "127.0.0.1".to_string();
    let mut port: u16 = 8080;
    let mut delay_ms: u64 = 200;
    let mut name = "app".to_string();
    let mut log_requests = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--host" => host = value("--host"),
            "--port" => {
                port = value("--port")
                    .parse()
                    .unwrap_or_else(|_| usage("--port takes a number"))
            }
            "--delay-ms" => {
                delay_ms = value("--delay-ms")
                    .parse()
                    .unwrap_or_else(|_| usage("--delay-ms takes a number"))
            }
            "--name" => name = value("--name"),
            // A fast backend for benchmarks: no request log to maintain.
            "--no-log" => log_requests = false,
            // Same shape as the bridge's and worker's (no queue backends here).
            "--version" | "-V" => {
                println!(
                    "openhqm-sample-app {} (revision {})",
                    env!("CARGO_PKG_VERSION"),
                    env!("OPENHQM_REVISION")
                );
                std::process::exit(0);
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let app = Arc::new(App {
        control: Mutex::new(Control {
            delay_ms,
            ..Default::default()
        }),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        served: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
        attempts: Mutex::new(HashMap::new()),
        orders: Mutex::new(HashMap::new()),
        name,
        log: Mutex::new(std::collections::VecDeque::new()),
        log_requests,
        started: std::time::Instant::now(),
    });
    let router = Router::new()
        .route("/orders", post(orders))
        .route("/orders/{id}", get(order))
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset))
        .route("/control", put(control))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/requests", get(requests))
        .with_state(app);
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| usage(&format!("cannot listen on {addr}: {e}")));
    eprintln!("openhqm-sample-app listening on http://{addr} (POST /orders takes {delay_ms} ms)");
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "openhqm-sample-app: {msg}\nusage: openhqm-sample-app [--host H] [--port P] [--delay-ms N] [--name NAME] [--no-log] [--version]"
    );
    std::process::exit(2);
}
