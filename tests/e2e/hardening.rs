//! Hostile and awkward input against the real binaries, over raw sockets
//! where a client library would tidy the bytes: listener ports on a shared
//! host, connection timeouts and the connection cap, header values at
//! submit, and JSON answers from the HTTP layer itself.

use openhqm_e2e::{await_result, bin, client, wait_ready, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `request` on a fresh connection and read until the server closes
/// it (or 15 s pass): status code and JSON body (Null when not JSON).
async fn raw(port: u16, request: &[u8]) -> (u16, Value, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The server may answer and close before reading everything.
    let _ = s.write_all(request).await;
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> (u16, Value, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body, text)
}

/// How long until the server closes `s` (reads EOF or a reset), at most 15 s.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for 15 s"),
        }
    }
}

/// The worker's `openhqm-worker started` log line, once written.
async fn started_line(stack: &mut Stack, i: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = stack
            .proc(i)
            .log_events()
            .into_iter()
            .find(|e| e["message"] == "openhqm-worker started")
        {
            return e;
        }
        assert!(Instant::now() < deadline, "worker {i} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("openhqm_worker_messages_total{outcome=\"completed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_default_admin_ports_share_one_host_and_all_consume() {
    const N: usize = 60;
    let mut stack = Stack::new("ports");
    // Small bites and a slow backend: no worker can take all the work.
    stack.set("OPENHQM_WORKER__CONCURRENCY", "2");
    stack.set("OPENHQM_WORKER__BATCH_SIZE", "1");
    // The worker's admin listener is served like the bridge's.
    stack.set("OPENHQM_SERVER__HEADER_READ_TIMEOUT_SECONDS", "1");
    stack.start_app(100).await;
    stack.start_bridge().await;
    // Like `start_worker`, but leaving `worker.admin_port` at its default.
    let mut workers = Vec::new();
    for _ in 0..3 {
        let p = stack.spawn("worker", &bin("openhqm-worker"), &[], &[]);
        workers.push(stack.keep(p));
        // One at a time, so they race for the default port in order.
        started_line(&mut stack, *workers.last().unwrap()).await;
    }
    let mut addrs = Vec::new();
    let mut fell_back = 0;
    for &w in &workers {
        let line = started_line(&mut stack, w).await;
        let addr = line["admin"].as_str().expect("admin address").to_string();
        let warned = stack.proc(w).log_events().into_iter().any(|e| {
            e["level"] == "WARN" && e["key"] == "worker.admin_port" && e["default_port"] == 8001
        });
        if warned {
            fell_back += 1;
            assert_ne!(addr, "127.0.0.1:8001", "a fallback is not the default port");
        }
        wait_ready(
            &format!("http://{addr}/health/ready"),
            Duration::from_secs(20),
        )
        .await;
        addrs.push(addr);
    }
    // At most one got the default port (another program may hold it).
    assert!(fell_back >= 2, "warnings: {fell_back}, addresses {addrs:?}");
    let distinct: std::collections::BTreeSet<_> = addrs.iter().collect();
    assert_eq!(distinct.len(), 3, "{addrs:?}");

    let c = client();
    let bridge = stack.bridge_url();
    let mut locations = Vec::new();
    for i in 0..N {
        let r = c
            .post(format!("{bridge}/api/v1/submit"))
            .json(&json!({"payload": {"n": i}, "metadata": {"endpoint": "orders"}}))
            .send()
            .await
            .expect("submit");
        assert_eq!(r.status().as_u16(), 202);
        locations.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    for l in &locations {
        let result = await_result(&bridge, l, Duration::from_secs(60)).await;
        assert_eq!(result["status"], "COMPLETED", "{result}");
    }
    // Each worker's own count, from its own admin listener.
    let mut per_worker = Vec::new();
    for addr in &addrs {
        let text = c
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        per_worker.push(completed(&text));
    }
    assert!(
        per_worker.iter().all(|&n| n >= 1),
        "per worker: {per_worker:?}"
    );
    assert_eq!(per_worker.iter().sum::<u64>(), N as u64, "{per_worker:?}");

    // The admin listener (on its fallback port) closes a silent connection
    // and answers unknown paths in JSON like the bridge.
    let mut silent = TcpStream::connect(addrs[2].as_str()).await.unwrap();
    let t = closed_after(&mut silent).await;
    assert!(t < Duration::from_millis(2500), "closed after {t:?}");
    let r = c
        .get(format!("http://{}/nope", addrs[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_admin_port_that_is_taken_stops_start_up_naming_the_key() {
    let mut stack = Stack::new("ports-explicit");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let mut p = stack.spawn(
        "worker",
        &bin("openhqm-worker"),
        &[],
        &[("OPENHQM_WORKER__ADMIN_PORT", &port)],
    );
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("the worker exits");
    assert_eq!(status.code(), Some(2));
    let log = p.log_text();
    assert!(
        log.contains("`worker.admin_port`: cannot listen on 127.0.0.1:") && log.contains(&port),
        "{log}"
    );
}

/// A bridge with short connection timeouts.
async fn hardened_bridge(test: &str, extra: &[(&str, &str)]) -> Stack {
    let mut stack = Stack::new(test);
    stack.set("OPENHQM_SERVER__HEADER_READ_TIMEOUT_SECONDS", "1");
    stack.set("OPENHQM_SERVER__IDLE_TIMEOUT_SECONDS", "3");
    stack.set("OPENHQM_SERVER__BODY_READ_TIMEOUT_SECONDS", "1");
    stack.set("OPENHQM_SERVER__MAX_BODY_BYTES", "1000");
    for (k, v) in extra {
        stack.set(k, v);
    }
    stack.start_bridge().await;
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    let stack = hardened_bridge("timeouts", &[]).await;
    let port = stack.bridge_port;
    let connect = || async { TcpStream::connect(("127.0.0.1", port)).await.unwrap() };

    // Nothing sent at all: the header timeout runs from accept.
    let mut silent = connect().await;
    let t = closed_after(&mut silent).await;
    assert!(
        t < Duration::from_millis(2500),
        "silent connection closed after {t:?}"
    );

    // Half a header block.
    let mut half = connect().await;
    half.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = closed_after(&mut half).await;
    assert!(
        t < Duration::from_millis(2500),
        "half header closed after {t:?}"
    );

    // A keep-alive connection after one answer: the idle timeout (3 s),
    // longer than the header timeout (1 s).
    let mut idle = connect().await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = closed_after(&mut idle).await;
    assert!(
        t > Duration::from_millis(2000) && t < Duration::from_millis(6000),
        "idle connection closed after {t:?}"
    );

    // Half a body: 408 with a JSON answer, then closed.
    let (status, body, text) = raw(
        port,
        b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"payload\":",
    )
    .await;
    assert_eq!(status, 408, "{text}");
    assert_eq!(body["error"], "body_timeout", "{text}");

    // The bridge still answers.
    let r = client()
        .get(format!("{}/health/live", stack.bridge_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_service_resumes() {
    let stack = hardened_bridge(
        "cap",
        &[
            ("OPENHQM_SERVER__MAX_CONNECTIONS", "4"),
            ("OPENHQM_SERVER__HEADER_READ_TIMEOUT_SECONDS", "30"),
        ],
    )
    .await;
    let port = stack.bridge_port;
    // Give the readiness probe's connection time to be noticed as closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body, text) = raw(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(body["error"], "too_many_connections", "{text}");
    drop(held);
    // Slots come back as the server sees the closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = raw(
            port,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status == 200 {
            assert_eq!(body["status"], "alive");
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_json_and_bad_bodies_and_headers_are_4xx() {
    let stack = hardened_bridge("answers", &[]).await;
    let port = stack.bridge_port;
    let get = |target: String| async move {
        raw(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
    };
    let check = |(status, body, text): (u16, Value, String), want: u16, code: &str| {
        assert_eq!(status, want, "{text}");
        assert_eq!(body["error"], code, "{text}");
        assert!(body["detail"].is_string(), "{text}");
    };
    check(
        get("/api/v1/response/%FF%FE".into()).await,
        404,
        "not_found",
    );
    check(get("/api/v1/status/%C3".into()).await, 404, "not_found");
    check(get("/no/such/thing".into()).await, 404, "not_found");
    // Longer than any URI hyper parses: its own 414, rewritten.
    check(
        get(format!("/api/v1/response/{}", "a".repeat(70_000))).await,
        414,
        "uri_too_long",
    );
    // More headers than hyper takes: its own 431, rewritten.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    check(raw(port, big.as_bytes()).await, 431, "headers_too_large");
    check(
        raw(port, b"NOT HTTP AT ALL\r\n\r\n").await,
        400,
        "bad_request",
    );
    check(
        raw(
            port,
            b"DELETE /api/v1/submit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
        405,
        "method_not_allowed",
    );

    // Chunked bodies: broken framing is 400, over the limit still 413.
    let head = "POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    check(
        raw(port, format!("{head}ZZ\r\n{{}}\r\n0\r\n\r\n").as_bytes()).await,
        400,
        "invalid_body",
    );
    let chunk = "x".repeat(800);
    check(
        raw(
            port,
            format!("{head}320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
        )
        .await,
        413,
        "payload_too_large",
    );

    // Header values with CR, LF or NUL are refused at submit, naming them.
    let c = client();
    for value in ["a\r\nX-Injected: 1", "a\nb", "a\u{0}b"] {
        let r = c
            .post(format!("{}/api/v1/submit", stack.bridge_url()))
            .json(&json!({"payload": {}, "headers": {"X-Tenant": value}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422, "{value:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_header", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("`X-Tenant`"),
            "{body}"
        );
    }
    let r = c
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {}, "headers": {"X-Tenant": "acme\tcorp"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "a tab is a legal header value");
}
