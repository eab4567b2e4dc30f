//! The worker as the backend's guardian, with real processes: a spike at 10x
//! the backend's capacity through Envoy, a backend outage and the circuit
//! breaker, the rate limit, Retry-After, per-key ordering under retries,
//! sticky instances, routing-table transforms, the command processor, and
//! foreign messages on Redis (queue -> HTTP).

use openhqm_core::conformance::server_available;
use openhqm_e2e::{await_result, bin, client, free_port, header, wait_ready, Stack};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Submit through the bridge's API; the Location of the result.
async fn submit(stack: &Stack, body: Value, headers: &[(&str, &str)]) -> String {
    let mut req = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("submit");
    assert_eq!(r.status().as_u16(), 202, "submit of {body}");
    header(&r, "location").expect("Location")
}

async fn status_of(stack: &Stack, location: &str) -> Value {
    let id = location.rsplit('/').next().expect("id");
    client()
        .get(format!("{}/api/v1/status/{id}", stack.bridge_url()))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status JSON")
}

/// The sample app's request log (`GET /requests`) at `base`.
async fn app_requests(base: &str) -> Vec<Value> {
    client()
        .get(format!("{base}/requests"))
        .send()
        .await
        .expect("GET /requests")
        .json::<Vec<Value>>()
        .await
        .expect("log JSON")
}

/// A value of one Prometheus sample line (`name{labels} value`), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn endpoints(stack: &mut Stack, json: Value) {
    stack.set("OPENHQM_PROXY__ENDPOINTS", &json.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spike_at_ten_times_capacity_is_absorbed_and_drained_at_the_backends_pace() {
    const REQUESTS: usize = 2000;
    const LIMIT: u64 = 4;
    const DELAY_MS: u64 = 50;
    let mut stack = Stack::new("spike");
    let app = stack.app_url();
    endpoints(
        &mut stack,
        json!({"app": {"url": app, "timeout": 10, "max_concurrency": LIMIT}}),
    );
    // The worker could take far more at once; the endpoint's limit decides.
    stack.set("OPENHQM_WORKER__CONCURRENCY", "32");
    stack.set("OPENHQM_WORKER__BATCH_SIZE", "16");
    stack.set("OPENHQM_MONITORING__LOG_LEVEL", "WARN");
    stack.start_all(DELAY_MS).await;

    // Capacity: 4 at once x 50 ms = 80 req/s. Arrivals: 10x that, paced.
    let capacity = LIMIT as f64 * 1000.0 / DELAY_MS as f64;
    let arrival_rate = 10.0 * capacity;
    let gap = Duration::from_secs_f64(1.0 / arrival_rate);
    let c = client();
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(REQUESTS);
    let started = Instant::now();
    for i in 0..REQUESTS {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let c = c.clone();
        let url = format!("{}/orders", stack.envoy_url());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(format!(r#"{{"n": {i}}}"#))
                .send()
                .await
                .expect("POST through Envoy");
            drop(permit);
            (r.status().as_u16(), header(&r, "location"))
        }));
    }
    let mut locations = Vec::with_capacity(REQUESTS);
    for t in tasks {
        let (code, location) = t.await.expect("task");
        assert_eq!(code, 202, "every request in the spike is accepted");
        locations.push(location.expect("Location"));
    }
    let ingest = started.elapsed();
    // Drained when the app has served them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = stack.app_stats().await;
        if stats["served"].as_u64() == Some(REQUESTS as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "not drained in time: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain = started.elapsed();
    let stats = stack.app_stats().await;
    let max_seen = stats["max_in_flight"].as_u64().expect("max_in_flight");
    let mut statuses = BTreeMap::<String, usize>::new();
    for loc in &locations {
        let s = status_of(&stack, loc).await;
        *statuses
            .entry(s["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!(
        "spike: {REQUESTS} requests arrived in {:.2} s ({:.0} req/s offered, 10x the backend's {capacity:.0} req/s); \
         all 202; drained in {:.2} s = {:.1} req/s; backend's observed max concurrency {max_seen} (limit {LIMIT})",
        ingest.as_secs_f64(),
        REQUESTS as f64 / ingest.as_secs_f64(),
        drain.as_secs_f64(),
        REQUESTS as f64 / drain.as_secs_f64(),
    );
    assert_eq!(statuses.get("COMPLETED"), Some(&REQUESTS), "{statuses:?}");
    assert!(max_seen <= LIMIT, "the backend saw {max_seen} at once");
    assert_eq!(max_seen, LIMIT, "the limit was reached, so it was tested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_down_for_20s_opens_and_closes_the_breaker_and_loses_nothing() {
    const MESSAGES: usize = 40;
    let mut stack = Stack::new("breaker");
    let app = stack.app_url();
    endpoints(
        &mut stack,
        json!({"orders": {"url": format!("{app}/orders"), "timeout": 5,
            "circuit_breaker": {"failure_threshold": 3, "open_seconds": 2}}}),
    );
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "orders");
    stack.set("OPENHQM_WORKER__MAX_RETRIES", "8");
    stack.set("OPENHQM_WORKER__RETRY_DELAY_BASE", "0.5");
    stack.set("OPENHQM_WORKER__RETRY_DELAY_MAX", "3");
    stack.set("OPENHQM_WORKER__CONCURRENCY", "8");
    let app_proc = stack.start_app(10).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;

    stack.proc(app_proc).kill();
    let down_at = Instant::now();
    let mut locations = Vec::new();
    for i in 0..MESSAGES {
        locations.push(submit(&stack, json!({"payload": {"n": i}}), &[]).await);
    }
    // While the backend is down the breaker opens (and re-opens after
    // failed probes); sample the metrics through the outage.
    let mut saw_open = false;
    while down_at.elapsed() < Duration::from_secs(20) {
        let m = stack.worker_metrics(0).await;
        if metric(&m, r#"openhqm_worker_breaker_state{endpoint="orders"}"#) == Some(1.0) {
            saw_open = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(saw_open, "the breaker never showed open during the outage");
    let during = stack.worker_metrics(0).await;
    let calls_during = metric(
        &during,
        r#"openhqm_worker_backend_calls_total{endpoint="orders",result="error"}"#,
    )
    .unwrap_or(0.0);
    stack.start_app(10).await;

    let mut completed = 0;
    for loc in &locations {
        let r = await_result(&stack.bridge_url(), loc, Duration::from_secs(60)).await;
        match r["status"].as_str() {
            Some("COMPLETED") => completed += 1,
            // The policy's other outcome: FAILED only after every attempt.
            Some("FAILED") => assert!(
                r["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("after 9 attempts"),
                "{r}"
            ),
            other => panic!("unexpected final status {other:?}: {r}"),
        }
    }
    let after = stack.worker_metrics(0).await;
    println!(
        "breaker: {completed}/{MESSAGES} completed; failed calls during the 20 s outage: {calls_during} \
         (without a breaker every message would fail every attempt); transitions: open {:?}, half_open {:?}, closed {:?}",
        metric(&after, r#"openhqm_worker_breaker_transitions_total{endpoint="orders",to="open"}"#),
        metric(&after, r#"openhqm_worker_breaker_transitions_total{endpoint="orders",to="half_open"}"#),
        metric(&after, r#"openhqm_worker_breaker_transitions_total{endpoint="orders",to="closed"}"#),
    );
    assert_eq!(completed, MESSAGES, "with 9 attempts all should complete");
    assert_eq!(
        metric(&after, r#"openhqm_worker_breaker_state{endpoint="orders"}"#),
        Some(0.0),
        "closed again once the backend is back"
    );
    assert!(
        metric(
            &after,
            r#"openhqm_worker_breaker_transitions_total{endpoint="orders",to="closed"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // While open, the breaker kept calls away: far fewer failed calls than
    // messages x attempts.
    assert!(
        calls_during < (MESSAGES * 3) as f64,
        "{calls_during} failed calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_is_honoured_within_ten_percent_over_ten_seconds() {
    const RATE: f64 = 20.0;
    let mut stack = Stack::new("rate");
    let app = stack.app_url();
    endpoints(
        &mut stack,
        json!({"echo": {"url": format!("{app}/echo/rate"), "timeout": 5,
            "rate_limit": {"requests_per_second": RATE, "burst": 1}}}),
    );
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "echo");
    stack.set("OPENHQM_WORKER__CONCURRENCY", "16");
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    let mut locations = Vec::new();
    for i in 0..260 {
        locations.push(submit(&stack, json!({"payload": {"n": i}}), &[]).await);
    }
    for loc in &locations {
        let r = await_result(&stack.bridge_url(), loc, Duration::from_secs(60)).await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
    }
    let mut at: Vec<f64> = app_requests(&stack.app_url())
        .await
        .iter()
        .filter_map(|r| r["at_ms"].as_f64())
        .collect();
    at.sort_by(|a, b| a.total_cmp(b));
    assert_eq!(at.len(), 260);
    // A 10 s window after the first second (past any start-up burst).
    let from = at[0] + 1000.0;
    let in_window = at
        .iter()
        .filter(|&&t| t >= from && t < from + 10_000.0)
        .count();
    println!("rate limit {RATE}/s: {in_window} calls in a 10 s window (expected 200 +/- 10%)");
    assert!(
        (180..=220).contains(&in_window),
        "{in_window} calls in 10 s at {RATE}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_from_the_backend_is_honoured() {
    let mut stack = Stack::new("retry-after");
    // The worker's own backoff is at most 0.2 s here; the backend asks for 2 s.
    stack.set(
        "OPENHQM_PROXY__FORWARD_HEADERS",
        r#"["content-type", "x-sample-fail-times", "x-sample-fail-status", "x-sample-retry-after"]"#,
    );
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    let loc = submit(
        &stack,
        json!({"payload": {"n": 1}, "metadata": {"endpoint": "orders"},
               "headers": {"x-sample-fail-times": "1", "x-sample-fail-status": "503",
                           "x-sample-retry-after": "2"}}),
        &[],
    )
    .await;
    let r = await_result(&stack.bridge_url(), &loc, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let log = app_requests(&stack.app_url()).await;
    let times: Vec<f64> = log.iter().filter_map(|e| e["at_ms"].as_f64()).collect();
    assert_eq!(times.len(), 2, "{log:?}");
    let gap = times[1] - times[0];
    println!("Retry-After: 2 -> second attempt {gap:.0} ms after the first");
    assert!(gap >= 1950.0, "retried after {gap} ms");
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[1]["status"], 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_with_the_same_key_stay_in_order_under_retries() {
    let mut stack = Stack::new("ordering");
    stack.set("OPENHQM_WORKER__CONCURRENCY", "12");
    stack.set("OPENHQM_WORKER__BATCH_SIZE", "12");
    stack.start_app(5).await;
    stack.start_bridge().await;
    stack.start_worker();
    let keys = ["alpha", "beta", "gamma"];
    let mut locations = Vec::new();
    for seq in 0..8 {
        for key in keys {
            // Every third message fails twice before it succeeds.
            let fails = if seq % 3 == 0 { "2" } else { "0" };
            locations.push(
                submit(
                    &stack,
                    json!({"payload": {"key": key, "seq": seq},
                           "metadata": {"endpoint": "orders", "partition_key": key},
                           "headers": {"x-sample-fail-times": fails, "x-sample-fail-status": "503"}}),
                    &[],
                )
                .await,
            );
        }
    }
    for loc in &locations {
        let r = await_result(&stack.bridge_url(), loc, Duration::from_secs(60)).await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
    }
    let log = app_requests(&stack.app_url()).await;
    let retried = log.iter().filter(|e| e["status"] == 503).count();
    assert_eq!(retried, keys.len() * 3 * 2, "the retries happened");
    for key in keys {
        // Every attempt, in arrival order: a later seq never arrives before
        // an earlier one has succeeded.
        let seqs: Vec<(u64, u64)> = log
            .iter()
            .filter(|e| e["body"]["key"] == key)
            .map(|e| {
                let body = &e["body"];
                let seq = body["seq"].as_u64().expect("seq");
                (seq, e["status"].as_u64().unwrap_or(0))
            })
            .collect();
        let mut done = 0;
        for (seq, status) in &seqs {
            assert_eq!(*seq, done, "key {key}: attempts out of order: {seqs:?}");
            if *status == 201 {
                done += 1;
            }
        }
        assert_eq!(done, 8, "key {key}: {seqs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_always_reaches_the_same_instance() {
    let mut stack = Stack::new("sticky");
    let second_port = free_port();
    let a = stack.app_url();
    let b = format!("http://127.0.0.1:{second_port}");
    endpoints(
        &mut stack,
        json!({"orders": {"url": format!("{a}/orders"), "timeout": 5,
            "instances": [format!("{a}/orders"), format!("{b}/orders")]}}),
    );
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "orders");
    stack.start_app(0).await;
    let port_s = second_port.to_string();
    let second = stack.spawn(
        "sample-app-b",
        &bin("openhqm-sample-app"),
        &["--port", &port_s, "--delay-ms", "0", "--name", "b"],
        &[],
    );
    stack.keep(second);
    wait_ready(&format!("{b}/healthz"), Duration::from_secs(20)).await;
    stack.start_bridge().await;
    stack.start_worker();
    let mut locations = Vec::new();
    for round in 0..4 {
        for k in 0..12 {
            let key = format!("customer-{k}");
            locations.push(
                submit(
                    &stack,
                    json!({"payload": {"key": key, "round": round},
                           "metadata": {"partition_key": key}}),
                    &[],
                )
                .await,
            );
        }
    }
    for loc in &locations {
        let r = await_result(&stack.bridge_url(), loc, Duration::from_secs(60)).await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
    }
    let mut homes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for base in [&a, &b] {
        for e in app_requests(base).await {
            let key = e["body"]["key"].as_str().expect("key").to_string();
            let instance = e["instance"].as_str().expect("instance").to_string();
            homes.entry(key).or_default().insert(instance);
        }
    }
    assert_eq!(homes.len(), 12);
    for (key, instances) in &homes {
        assert_eq!(instances.len(), 1, "{key} went to {instances:?}");
    }
    let used: BTreeSet<&String> = homes.values().flatten().collect();
    assert_eq!(used.len(), 2, "both instances get keys: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_table_transforms_shape_the_backend_request() {
    let mut stack = Stack::new("routing");
    let app = stack.app_url();
    endpoints(
        &mut stack,
        json!({"echo": {"url": format!("{app}/echo/in"), "timeout": 5},
               "orders": {"url": format!("{app}/orders"), "timeout": 5}}),
    );
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "orders");
    stack.set("OPENHQM_ROUTING__ENABLED", "true");
    let table = json!({
        "version": "1.0",
        "routes": [
            {"name": "users", "match_field": "metadata.type", "match_value": "user",
             "priority": 10, "endpoint": "echo", "method": "PUT", "transform_type": "jq",
             "transform": "{name: (.payload.first + \" \" + .payload.last), tags: [.payload.tags[] | ascii_upcase]}",
             "header_mappings": {"X-Tenant": "metadata.tenant"},
             "query_params": {"source": "metadata.source", "id": "payload.id"}},
            {"name": "ids", "match_field": "metadata.type", "match_value": "ids",
             "endpoint": "echo", "transform_type": "jsonpath", "transform": "$.payload.items[*].id"},
            {"name": "tmpl", "match_field": "metadata.type", "match_pattern": "^tmpl",
             "endpoint": "echo", "transform_type": "template",
             "transform": "{\"order\": \"{{payload.id}}\", \"qty\": {{payload.qty}}}"},
            {"name": "rest", "is_default": true, "priority": -1, "endpoint": "echo"}
        ]
    });
    stack.set("OPENHQM_ROUTING__CONFIG", &table.to_string());
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();

    let cases = [
        (
            json!({"payload": {"first": "Ada", "last": "Lovelace", "tags": ["a", "b"], "id": 7},
                   "metadata": {"type": "user", "tenant": "acme", "source": "crm x"}}),
            "PUT",
            Some("source=crm%20x&id=7"),
            json!({"name": "Ada Lovelace", "tags": ["A", "B"]}),
        ),
        (
            json!({"payload": {"items": [{"id": 1}, {"id": 2}]}, "metadata": {"type": "ids"}}),
            "POST",
            None,
            json!({"result": [1, 2]}),
        ),
        (
            json!({"payload": {"id": "A-9", "qty": 3}, "metadata": {"type": "tmpl-v2"}}),
            "POST",
            None,
            json!({"order": "A-9", "qty": 3}),
        ),
        (
            json!({"payload": {"untouched": true}, "metadata": {"type": "other"}}),
            "POST",
            None,
            json!({"untouched": true}),
        ),
    ];
    for (submission, method, query, body) in cases {
        let loc = submit(&stack, submission.clone(), &[]).await;
        let r = await_result(&stack.bridge_url(), &loc, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
        let seen = &r["result"];
        assert_eq!(seen["method"], method, "{submission} -> {seen}");
        assert_eq!(seen["path"], "/echo/in");
        // Parameter order is the table's map order; compare as sets.
        let params = |q: Option<&str>| -> BTreeSet<String> {
            q.map(|q| q.split('&').map(str::to_string).collect())
                .unwrap_or_default()
        };
        assert_eq!(params(seen["query"].as_str()), params(query), "{seen}");
        assert_eq!(seen["body"], body, "{submission} -> {seen}");
        if method == "PUT" {
            assert_eq!(seen["headers"]["x-tenant"], "acme", "{seen}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn command_processor_survives_its_child_crashing() {
    let mut stack = Stack::new("command");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.set(
        "OPENHQM_WORKER__COMMAND",
        r#"["python3", "worker/examples/command-processor/processor.py"]"#,
    );
    stack.set("OPENHQM_WORKER__MAX_RETRIES", "1");
    stack.start_bridge().await;
    stack.start_worker();
    let first = submit(
        &stack,
        json!({"payload": {"operation": "uppercase", "data": "abc"}}),
        &[],
    )
    .await;
    let r = await_result(&stack.bridge_url(), &first, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    assert_eq!(r["result"]["output"], "ABC", "{r}");
    // The child exits on this one, twice (two attempts): FAILED, dead-lettered.
    let crash = submit(&stack, json!({"payload": {"operation": "crash"}}), &[]).await;
    let r = await_result(&stack.bridge_url(), &crash, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "FAILED", "{r}");
    // ...and the worker still processes with a fresh child.
    let after = submit(
        &stack,
        json!({"payload": {"operation": "reverse", "data": "abc"}}),
        &[],
    )
    .await;
    let r = await_result(&stack.bridge_url(), &after, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    assert_eq!(r["result"]["output"], "cba", "{r}");
}

fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_messages_on_redis_are_forwarded_to_the_endpoint() {
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let stream = format!("foreign-{run}-requests");
    let mut stack = Stack::new("foreign");
    let app = stack.app_url();
    stack.set("OPENHQM_QUEUE__TYPE", "redis");
    stack.set("OPENHQM_QUEUE__REDIS_URL", "redis://127.0.0.1:6379");
    stack.set("OPENHQM_QUEUE__REQUEST_QUEUE_NAME", &stream);
    stack.set("OPENHQM_QUEUE__DLQ_NAME", &format!("foreign-{run}-dlq"));
    stack.set(
        "OPENHQM_QUEUE__RESPONSE_QUEUE_NAME",
        &format!("foreign-{run}-responses"),
    );
    stack.set("OPENHQM_WORKER__MESSAGE_FORMAT", "raw");
    endpoints(
        &mut stack,
        json!({"ingest": {"url": format!("{app}/echo/ingest"), "timeout": 5}}),
    );
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "ingest");
    stack.start_app(0).await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    // Another system's producer: plain fields, no OpenHQM envelope.
    redis_cli(&["XADD", &stream, "*", "order_id", "7", "kind", "widget"]);
    // One that uses the body/key/attributes fields.
    redis_cli(&[
        "XADD",
        &stream,
        "*",
        "body",
        "plain text payload",
        "key",
        "cust-9",
        "attributes",
        r#"{"x-source": "erp", "content-type": "text/plain"}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = app_requests(&stack.app_url()).await;
        if log.len() >= 2 {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "foreign messages not forwarded: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["path"], "/echo/ingest");
    assert_eq!(log[0]["body"], json!({"order_id": "7", "kind": "widget"}));
    assert_eq!(log[1]["body_text"], "plain text payload", "{log:?}");
    assert_eq!(
        log[1]["headers"]["x-source"], "erp",
        "attributes become headers"
    );
    assert_eq!(log[1]["headers"]["content-type"], "text/plain");
    let _ = redis_cli(&[
        "DEL",
        &stream,
        &format!("{stream}:delayed"),
        &format!("foreign-{run}-dlq"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_past_its_deadline_is_timeout_and_never_sent() {
    let mut stack = Stack::new("deadline");
    stack.start_app(0).await;
    stack.start_bridge().await;
    // No worker yet: the message waits in the queue past its deadline.
    let late = submit(
        &stack,
        json!({"payload": {"n": 1}, "metadata": {"endpoint": "orders", "timeout": 1}}),
        &[],
    )
    .await;
    let in_time = submit(
        &stack,
        json!({"payload": {"n": 2}, "metadata": {"endpoint": "orders", "timeout": 60}}),
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.start_worker();
    let r = await_result(&stack.bridge_url(), &late, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "TIMEOUT", "{r}");
    let r = await_result(&stack.bridge_url(), &in_time, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let log = app_requests(&stack.app_url()).await;
    assert_eq!(log.len(), 1, "only the message in time was sent: {log:?}");
    assert_eq!(log[0]["body"]["n"], 2);
}

/// Standard Webhooks verification, done by Python's hmac (not our code).
fn python_signature(secret: &str, id: &str, ts: &str, body: &str) -> String {
    let script = "import base64,hashlib,hmac,sys\n\
        key = base64.b64decode(sys.argv[1].removeprefix('whsec_'))\n\
        msg = f'{sys.argv[2]}.{sys.argv[3]}.{sys.argv[4]}'.encode()\n\
        print('v1,' + base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode())";
    let out = std::process::Command::new("python3")
        .args(["-c", script, secret, id, ts, body])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completion_callback_is_signed_per_standard_webhooks() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut stack = Stack::new("callback");
    stack.set("OPENHQM_CALLBACKS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#);
    stack.set("OPENHQM_CALLBACKS__SECRET", SECRET);
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    let hook = format!("{}/echo/hook", stack.app_url());
    // A host off the allow-list is refused at submit, before anything is queued.
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {}, "metadata": {"callback_url": "http://evil.example/x"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 422);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["error"], "callback_not_allowed");

    let loc = submit(
        &stack,
        json!({"payload": {"item": "book"}, "metadata": {"endpoint": "orders", "callback_url": hook}}),
        &[],
    )
    .await;
    let result = await_result(&stack.bridge_url(), &loc, Duration::from_secs(30)).await;
    assert_eq!(result["status"], "COMPLETED");
    let deadline = Instant::now() + Duration::from_secs(10);
    let hook_call = loop {
        let log = app_requests(&stack.app_url()).await;
        if let Some(e) = log.iter().find(|e| e["path"] == "/echo/hook") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no callback: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let h = |n: &str| hook_call["headers"][n].as_str().unwrap_or("").to_string();
    let body = hook_call["body_text"].as_str().expect("callback body");
    assert_eq!(hook_call["method"], "POST");
    assert_eq!(
        h("webhook-signature"),
        python_signature(SECRET, &h("webhook-id"), &h("webhook-timestamp"), body),
        "signature verifies with an independent implementation"
    );
    let payload: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(payload["type"], "request.completed");
    assert_eq!(payload["data"]["correlation_id"], result["correlation_id"]);
    assert_eq!(payload["data"]["status"], "COMPLETED");
    // Exactly one call for the one final outcome.
    let calls = app_requests(&stack.app_url())
        .await
        .iter()
        .filter(|e| e["path"] == "/echo/hook")
        .count();
    assert_eq!(calls, 1);
}
