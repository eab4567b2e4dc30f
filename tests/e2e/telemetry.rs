//! Telemetry end to end: OTLP traces across bridge, queue, worker and
//! backend call (received by tests/otlp-receiver, a protocol-level stand-in
//! for a collector that checks every export against the official OTLP
//! schema), JSON logs that name the correlation ID and leak nothing, and
//! `/metrics` that stays bounded however many distinct requests arrive.

use openhqm_e2e::{await_result, client, free_port, header, repo_root, wait_ready, Stack};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const RESULT_WAIT: Duration = Duration::from_secs(60);
const INBOUND_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INBOUND_SPAN: &str = "00f067aa0ba902b7";

/// Start the OTLP test receiver on `port` with `args` (TLS, a required
/// header); `control` is the plain-HTTP URL its GETs answer on.
async fn spawn_receiver(stack: &mut Stack, port: u16, control: &str, args: &[&str]) {
    let python = repo_root().join("target/tools/test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/local/ensure-tools.sh (make test does)",
        python.display()
    );
    let script = repo_root().join("tests/otlp-receiver/receiver.py");
    let port = port.to_string();
    let mut all = vec![script.to_string_lossy().to_string(), port];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let p = stack.spawn("otlp-receiver", &python, &all, &[]);
    stack.keep(p);
    wait_ready(&format!("{control}/spans"), Duration::from_secs(20)).await;
}

/// Start the OTLP test receiver and point the stack's bridge and workers at
/// it; its base URL.
async fn start_receiver(stack: &mut Stack) -> String {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    spawn_receiver(stack, port, &url, &[]).await;
    stack.set("OPENHQM_MONITORING__OTLP_ENDPOINT", &url);
    url
}

async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Spans of one trace, waiting (exports are batched each second) until
/// `names` have all arrived.
async fn spans_of(receiver: &str, trace: &str, names: &[&str]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = get_json(&format!("{receiver}/spans")).await;
        let spans: Vec<Value> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace)
            .cloned()
            .collect();
        let have: BTreeSet<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
        if names.iter().all(|n| have.contains(n)) {
            return spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trace {trace}: wanted spans {names:?}, got {have:?} (all: {all})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

fn assert_child(child: &Value, parent: &Value) {
    assert_eq!(
        child["parentSpanId"], parent["spanId"],
        "{} must be a child of {}",
        child["name"], parent["name"]
    );
    assert!(child["start"].as_u64() >= parent["start"].as_u64());
}

/// POST `body` to `base` + `path` as part of the inbound trace
/// (`INBOUND_TRACE`/`INBOUND_SPAN`), expect 202, wait for the result: the
/// correlation ID and the COMPLETED result.
async fn traced_request(base: &str, path: &str, body: Value) -> (String, Value) {
    let inbound = format!("00-{INBOUND_TRACE}-{INBOUND_SPAN}-01");
    let r = client()
        .post(format!("{base}{path}"))
        .header("traceparent", &inbound)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = header(&r, "x-correlation-id").unwrap();
    let location = header(&r, "location").unwrap();
    let result = await_result(base, &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    (id, result)
}

/// The backend got the worker's call span as its parent, and every export
/// the receiver saw matched the OTLP schema.
async fn assert_backend_parent_and_valid_exports(result: &Value, call: &Value, receiver: &str) {
    assert_eq!(
        result["headers"]["X-Received-Traceparent"],
        format!("00-{INBOUND_TRACE}-{}-01", call["spanId"].as_str().unwrap()),
        "the app's parent span is the worker's call: {result}"
    );
    let errors = get_json(&format!("{receiver}/errors")).await;
    assert_eq!(errors, json!([]), "every export matched the OTLP schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_submit_api_through_the_queue_to_the_backend_call() {
    let mut stack = Stack::new("trace-api");
    let receiver = start_receiver(&mut stack).await;
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;

    let (id, result) = traced_request(
        &stack.bridge_url(),
        "/api/v1/submit",
        json!({"payload": {"item": "pen"}, "metadata": {"endpoint": "orders"}}),
    )
    .await;

    let queue = "openhqm-requests";
    let spans = spans_of(
        &receiver,
        INBOUND_TRACE,
        &[
            "POST /api/v1/submit",
            &format!("send {queue}"),
            &format!("process {queue}"),
            "POST orders",
        ],
    )
    .await;
    let server = span(&spans, "POST /api/v1/submit");
    let publish = span(&spans, &format!("send {queue}"));
    let process = span(&spans, &format!("process {queue}"));
    let call = span(&spans, "POST orders");
    // The client's span is the root's parent; then one chain across the queue.
    assert_eq!(server["parentSpanId"], INBOUND_SPAN);
    assert_eq!(server["service"], "openhqm-bridge");
    assert_eq!(
        server["encoding"], "protobuf",
        "the SDK's OTLP/HTTP protobuf"
    );
    assert_eq!(process["encoding"], "protobuf");
    assert_eq!(server["kind"], 2, "SERVER");
    assert_eq!(server["attributes"]["openhqm.correlation_id"], id.as_str());
    assert_eq!(server["attributes"]["http.response.status_code"], 202);
    // HTTP semantic conventions on the server span.
    let sa = &server["attributes"];
    assert_eq!(sa["http.request.method"], "POST");
    assert_eq!(sa["http.route"], "/api/v1/submit");
    assert_eq!(sa["url.path"], "/api/v1/submit");
    assert_eq!(sa["url.scheme"], "http");
    assert_eq!(sa["server.address"], "127.0.0.1");
    assert_eq!(sa["server.port"], i64::from(stack.bridge_port));
    assert_child(publish, server);
    assert_eq!(publish["kind"], 4, "PRODUCER");
    // Messaging semantic conventions: send on the bridge, process on the
    // worker, the correlation ID as the message ID.
    for (s, operation) in [(publish, "send"), (process, "process")] {
        let a = &s["attributes"];
        assert_eq!(a["messaging.system"], "embedded", "{s}");
        assert_eq!(a["messaging.operation.type"], operation, "{s}");
        assert_eq!(a["messaging.operation.name"], operation, "{s}");
        assert_eq!(a["messaging.destination.name"], queue, "{s}");
        assert_eq!(a["messaging.message.id"], id.as_str(), "{s}");
    }
    assert_child(process, publish);
    assert_eq!(process["service"], "openhqm-worker");
    assert_eq!(process["kind"], 5, "CONSUMER");
    assert_child(call, process);
    assert_eq!(call["kind"], 3, "CLIENT");
    // HTTP semantic conventions on the client span.
    let ca = &call["attributes"];
    assert_eq!(ca["http.response.status_code"], 201);
    assert_eq!(ca["http.request.method"], "POST");
    assert_eq!(ca["server.address"], "127.0.0.1");
    assert_eq!(ca["server.port"], i64::from(stack.app_port));
    assert_eq!(ca["url.scheme"], "http");
    assert!(
        ca["url.full"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://127.0.0.1:{}/", stack.app_port)),
        "{call}"
    );
    assert!(ca.get("error.type").is_none(), "{call}");
    assert_backend_parent_and_valid_exports(&result, call, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_filter_in_envoy_through_bridge_queue_and_worker_to_the_app() {
    let mut stack = Stack::new("trace-filter");
    let receiver = start_receiver(&mut stack).await;
    let port: u16 = receiver.rsplit(':').next().unwrap().parse().unwrap();
    stack.otel_port = Some(port);
    stack.filter_config_extra = r#""tracing": {"otlp_cluster": "otel", "flush_ms": 200},"#.into();
    stack.start_all(0).await;
    stack.wait_worker_ready(0).await;

    let (id, result) = traced_request(&stack.envoy_url(), "/orders", json!({"item": "book"})).await;

    let spans = spans_of(
        &receiver,
        INBOUND_TRACE,
        &[
            "capture create-order",
            "send openhqm-requests",
            "process openhqm-requests",
            "POST app",
        ],
    )
    .await;
    let by_service = |service: &str, name: &str| -> Value {
        spans
            .iter()
            .find(|s| s["service"] == service && s["name"] == name)
            .unwrap_or_else(|| panic!("no {service} span {name}: {spans:?}"))
            .clone()
    };
    let filter = by_service("openhqm-filter", "capture create-order");
    let bridge = by_service("openhqm-bridge", "capture create-order");
    let publish = by_service("openhqm-bridge", "send openhqm-requests");
    let process = by_service("openhqm-worker", "process openhqm-requests");
    let call = by_service("openhqm-worker", "POST app");
    assert_eq!(filter["parentSpanId"], INBOUND_SPAN);
    assert_eq!(
        filter["encoding"], "json",
        "the filter keeps its own encoder"
    );
    assert_eq!(bridge["encoding"], "protobuf");
    assert_eq!(filter["attributes"]["openhqm.correlation_id"], id.as_str());
    assert_eq!(filter["attributes"]["http.response.status_code"], 202);
    assert_child(&bridge, &filter);
    assert_eq!(bridge["attributes"]["url.path"], "/orders");
    assert_eq!(bridge["attributes"]["http.request.method"], "POST");
    assert_eq!(publish["attributes"]["messaging.message.id"], id.as_str());
    assert_child(&publish, &bridge);
    assert_child(&process, &publish);
    assert_child(&call, &process);
    assert_eq!(spans.len(), 5, "one span per hop: {spans:?}");
    assert_backend_parent_and_valid_exports(&result, &call, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untraced_request_starts_a_trace_and_a_failing_call_is_marked_as_an_error() {
    let mut stack = Stack::new("trace-new");
    let receiver = start_receiver(&mut stack).await;
    stack.set("OPENHQM_WORKER__MAX_RETRIES", "1");
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({
            "payload": {"item": "x"},
            "headers": {"x-sample-fail-times": "9", "x-sample-fail-status": "500"},
            "metadata": {"endpoint": "orders"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "FAILED", "{result}");
    // The trace id was made by the bridge: find it by the root span.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let root = loop {
        let all = get_json(&format!("{receiver}/spans")).await;
        if let Some(s) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "POST /api/v1/submit")
        {
            break s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no submit span: {all}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(root["parentSpanId"].is_null(), "a new trace has a root");
    let trace = root["traceId"].as_str().unwrap();
    let spans = spans_of(
        &receiver,
        trace,
        &["process openhqm-requests", "POST orders"],
    )
    .await;
    let calls: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "POST orders")
        .collect();
    assert_eq!(calls.len(), 2, "one span per attempt: {spans:?}");
    for c in calls {
        assert_eq!(c["status"]["code"], 2, "ERROR: {c}");
        assert_eq!(c["attributes"]["http.response.status_code"], 500);
        assert_eq!(c["attributes"]["error.type"], "500");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_about_a_request_name_it_and_never_carry_secrets_or_bodies() {
    let mut stack = Stack::new("logs");
    stack.set("OPENHQM_MONITORING__LOG_LEVEL", "debug");
    stack.set(
        "OPENHQM_PROXY__FORWARD_HEADERS",
        r#"["content-type", "authorization", "x-sample-fail-times", "x-sample-fail-status"]"#,
    );
    stack.start_app(0).await;
    let bridge = stack.start_bridge().await;
    let worker = stack.start_worker();
    stack.wait_worker_ready(0).await;
    const SECRET: &str = "s3cr3t-token-value";
    const BODY_MARK: &str = "body-marker-7f3a";
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .header("authorization", format!("Bearer {SECRET}"))
        .json(&json!({
            "payload": {"note": BODY_MARK},
            // Fails once, so retry lines are logged too.
            "headers": {"authorization": format!("Bearer {SECRET}"),
                        "x-sample-fail-times": "1", "x-sample-fail-status": "503"},
            "metadata": {"endpoint": "orders"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = header(&r, "x-correlation-id").unwrap();
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["attempts"], 2, "{result}");
    // Give the worker a moment to write its last lines.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (i, program) in [(bridge, "bridge"), (worker, "worker")] {
        let text = stack.proc(i).log_text();
        assert!(!text.contains(SECRET), "{program} logged a secret:\n{text}");
        assert!(
            !text.contains(BODY_MARK),
            "{program} logged a body:\n{text}"
        );
        let events = stack.proc(i).log_events();
        assert!(!events.is_empty(), "{program} logs JSON lines:\n{text}");
        // Lines inside a request's span carry its correlation ID; lines that
        // mention the ID are all inside such a span.
        let about: Vec<&Value> = events
            .iter()
            .filter(|e| e.to_string().contains(&id))
            .collect();
        for e in &about {
            assert_eq!(e["span"]["correlation_id"], id.as_str(), "{program}: {e}");
        }
        for e in events.iter().filter(|e| e.get("span").is_some()) {
            assert!(
                e["span"]["correlation_id"].is_string(),
                "{program}: a request line without its ID: {e}"
            );
        }
        let messages: Vec<&str> = about.iter().filter_map(|e| e["message"].as_str()).collect();
        let expected: &[&str] = if program == "bridge" {
            &["accepted"]
        } else {
            &[
                "processing",
                "attempt failed; will retry",
                "completed",
                "settled",
            ]
        };
        for m in expected {
            assert!(
                messages.contains(m),
                "{program}: no {m:?} line naming {id}: {messages:?}"
            );
        }
    }
}

/// The series of a Prometheus text page (names and labels, not values).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_stay_bounded_after_thousands_of_distinct_requests() {
    let mut stack = Stack::new("cardinality");
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    let c = client();
    let bridge = stack.bridge_url();
    let round = |n: usize, tag: &'static str| {
        let c = c.clone();
        let bridge = bridge.clone();
        async move {
            for i in 0..n {
                let id = uuid::Uuid::new_v4();
                for (path, status) in [
                    (format!("/api/v1/status/{id}"), 404),
                    (format!("/no/such/{tag}/{i}/{id}"), 404),
                    // Not a UUID: 404, as the original answered.
                    (format!("/api/v1/response/not-an-id-{i}"), 404),
                ] {
                    let r = c.get(format!("{bridge}{path}")).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), status, "{path}");
                }
            }
        }
    };
    // Warm up: every kind of request once, so all label sets exist.
    round(10, "warm").await;
    let r = c
        .post(format!("{bridge}/api/v1/submit"))
        .json(&json!({"payload": {"n": 0}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").unwrap();
    await_result(&bridge, &location, RESULT_WAIT).await;
    // A scrape is a request too: its own series exist from the second one on.
    c.get(format!("{bridge}/metrics")).send().await.unwrap();
    let before = c
        .get(format!("{bridge}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let worker_before = stack.worker_metrics(0).await;

    // 3 x 4 x 1000 distinct paths and ids.
    futures_join(
        round(1000, "a"),
        round(1000, "b"),
        round(1000, "c"),
        round(1000, "d"),
    )
    .await;
    for n in 1..=200 {
        let r = c
            .post(format!("{bridge}/api/v1/submit"))
            .json(&json!({"payload": {"n": n}, "metadata": {"endpoint": "orders"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    let after = c
        .get(format!("{bridge}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (before_s, after_s) = (series(&before), series(&after));
    assert_eq!(
        before_s,
        after_s,
        "12,000 distinct request paths changed the bridge's series: new {:?}, gone {:?}",
        after_s.difference(&before_s).collect::<Vec<_>>(),
        before_s.difference(&after_s).collect::<Vec<_>>()
    );
    assert!(
        after.len() < before.len() + 512,
        "{} -> {} bytes",
        before.len(),
        after.len()
    );
    assert!(!after.contains("/no/such"), "a raw path became a label");
    // The worker saw 200 more distinct messages: no new series either.
    let deadline = std::time::Instant::now() + RESULT_WAIT;
    loop {
        let m = stack.worker_metrics(0).await;
        if m.contains("openhqm_worker_messages_total{outcome=\"completed\"} 201") {
            assert_eq!(series(&worker_before), series(&m), "worker series changed");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not finish: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `promtool check metrics` on a live page, plus its families against the
/// metric table in docs/operations.md (deploy/validate/check-metrics.sh).
fn check_metrics_page(url: &str, names: &[&str]) {
    let out = std::process::Command::new(repo_root().join("deploy/validate/check-metrics.sh"))
        .arg(url)
        .args(names)
        .output()
        .expect("run check-metrics.sh");
    assert!(
        out.status.success(),
        "check-metrics.sh {url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pages_pass_promtool_and_match_the_documented_table() {
    let mut stack = Stack::new("promtool");
    stack.set("OPENHQM_WORKER__MAX_RETRIES", "1");
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    // One success and one failure, so the labelled families have samples.
    let mut locations = Vec::new();
    for headers in [
        json!({}),
        json!({"x-sample-fail-times": "9", "x-sample-fail-status": "500"}),
    ] {
        let r = client()
            .post(format!("{}/api/v1/submit", stack.bridge_url()))
            .json(&json!({"payload": {"n": 1}, "headers": headers, "metadata": {"endpoint": "orders"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        locations.push(header(&r, "location").unwrap());
    }
    for l in &locations {
        await_result(&stack.bridge_url(), l, RESULT_WAIT).await;
    }
    let bridge = format!("{}/metrics", stack.bridge_url());
    check_metrics_page(
        &bridge,
        &[
            "openhqm_build_info",
            "openhqm_spans_exported_total",
            "openhqm_spans_dropped_total",
            "openhqm_http_requests_total",
            "openhqm_http_in_flight",
            "openhqm_requests_accepted_total",
            "openhqm_queue_publish_total",
            "openhqm_queue_depth",
            "openhqm_dlq_depth",
        ],
    );
    let worker = format!("http://127.0.0.1:{}/metrics", stack.worker_admin_ports[0]);
    check_metrics_page(
        &worker,
        &[
            "openhqm_build_info",
            "openhqm_spans_exported_total",
            "openhqm_spans_dropped_total",
            "openhqm_worker_active",
            "openhqm_worker_messages_total",
            "openhqm_worker_errors_total",
            "openhqm_worker_retries_total",
            "openhqm_worker_processing_duration_seconds",
            "openhqm_worker_backend_calls_total",
            "openhqm_worker_backend_duration_seconds",
            "openhqm_dlq_messages_total",
            "openhqm_dlq_depth",
            "openhqm_request_latency_seconds",
            "openhqm_queue_depth",
        ],
    );
    // The failed request is in the DLQ, and the gauge says so.
    let page = client()
        .get(&worker)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("openhqm_dlq_depth{queue=\"openhqm-dlq\"} 1"),
        "{page}"
    );
}

async fn futures_join<A, B, C, D>(a: A, b: B, c: C, d: D)
where
    A: std::future::Future<Output = ()>,
    B: std::future::Future<Output = ()>,
    C: std::future::Future<Output = ()>,
    D: std::future::Future<Output = ()>,
{
    tokio::join!(a, b, c, d);
}

/// `openhqm_build_info{version,revision,backends}` as one scrape shows it.
fn build_info_labels(page: &str) -> (String, String, String) {
    let line = page
        .lines()
        .find(|l| l.starts_with("openhqm_build_info{"))
        .unwrap_or_else(|| panic!("no openhqm_build_info in:\n{page}"));
    assert!(line.ends_with("} 1"), "{line}");
    let label = |k: &str| {
        let start = line
            .find(&format!("{k}=\""))
            .unwrap_or_else(|| panic!("{k}: {line}"))
            + k.len()
            + 2;
        line[start..start + line[start..].find('"').unwrap()].to_string()
    };
    (label("version"), label("revision"), label("backends"))
}

/// What `PROGRAM --version` prints, checked against its shape.
fn version_output(program: &str) -> String {
    let out = std::process::Command::new(openhqm_e2e::bin(program))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} --version: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{program}: {text}");
    text.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_info_on_every_metrics_page_matches_what_version_prints() {
    let mut stack = Stack::new("build-info");
    stack.start_app(0).await;
    stack.start_bridge().await;
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    let bridge_page = client()
        .get(format!("{}/metrics", stack.bridge_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (version, revision, backends) = build_info_labels(&bridge_page);
    assert_eq!(
        build_info_labels(&stack.worker_metrics(0).await),
        (version.clone(), revision.clone(), backends.clone()),
        "bridge and worker of one build say the same"
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // The test binaries are built with every backend.
    assert_eq!(backends, "embedded,redis,mqtt");
    // The revision is the checkout's, unless the build was told otherwise.
    if std::env::var_os("OPENHQM_REVISION").is_none() {
        if let Ok(out) = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo_root())
            .output()
        {
            if out.status.success() {
                assert_eq!(revision, String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    assert!(!revision.is_empty() && !revision.contains(' '));
    for program in ["openhqm-bridge", "openhqm-worker"] {
        assert_eq!(
            version_output(program),
            format!("{program} {version} (revision {revision}, backends {backends})")
        );
    }
    assert_eq!(
        version_output("openhqm-sample-app"),
        format!("openhqm-sample-app {version} (revision {revision})")
    );
}

/// A CA and a server certificate for 127.0.0.1 made with the openssl CLI
/// (rustls refuses a self-signed CA certificate as a server's own): the
/// CA's path, the server's certificate and key.
fn make_certificates(dir: &std::path::Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=openhqm test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("server.ext"),
        "-out",
        &p("server.pem"),
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// The value of an unlabelled counter on a metrics page.
fn counter_value(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_tls_with_an_auth_header_and_are_counted() {
    let mut stack = Stack::new("trace-tls");
    let (ca, cert, key) = make_certificates(&stack.dir);
    const TOKEN: &str = "tok-9d1e-secret";
    let (port, control_port) = (free_port(), free_port());
    let control = format!("http://127.0.0.1:{control_port}");
    let auth = format!("authorization=Bearer {TOKEN}");
    spawn_receiver(
        &mut stack,
        port,
        &control,
        &[
            "--tls",
            &cert,
            &key,
            "--require-header",
            &auth,
            "--control-port",
            &control_port.to_string(),
        ],
    )
    .await;
    // Only the standard variables; the header value percent-encoded as the
    // specification has it.
    stack.set(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        &format!("https://127.0.0.1:{port}"),
    );
    stack.set(
        "OTEL_EXPORTER_OTLP_HEADERS",
        &format!("authorization=Bearer%20{TOKEN}"),
    );
    stack.set("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca);
    stack.set("OTEL_EXPORTER_OTLP_TIMEOUT", "5000");
    stack.set(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment.name=e2e",
    );
    stack.start_app(0).await;
    let bridge = stack.start_bridge().await;
    let worker = stack.start_worker();
    stack.wait_worker_ready(0).await;
    traced_request(
        &stack.bridge_url(),
        "/api/v1/submit",
        json!({"payload": {"item": "tls"}, "metadata": {"endpoint": "orders"}}),
    )
    .await;
    let spans = spans_of(
        &control,
        INBOUND_TRACE,
        &["POST /api/v1/submit", "POST orders"],
    )
    .await;
    let services: BTreeSet<&str> = spans.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["openhqm-bridge", "openhqm-worker"])
    );
    assert_eq!(
        get_json(&format!("{control}/errors")).await,
        json!([]),
        "authorized, valid exports"
    );
    // Counted on both /metrics pages, nothing dropped.
    let bridge_page = client()
        .get(format!("{}/metrics", stack.bridge_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        counter_value(&bridge_page, "openhqm_spans_exported_total") >= 2,
        "{bridge_page}"
    );
    assert_eq!(
        counter_value(&bridge_page, "openhqm_spans_dropped_total"),
        0
    );
    let worker_page = stack.worker_metrics(0).await;
    assert!(
        counter_value(&worker_page, "openhqm_spans_exported_total") >= 2,
        "{worker_page}"
    );
    assert_eq!(
        counter_value(&worker_page, "openhqm_spans_dropped_total"),
        0
    );
    for i in [bridge, worker] {
        let text = stack.proc(i).log_text();
        assert!(
            !text.contains(TOKEN),
            "the auth header leaked into a log:\n{text}"
        );
        assert!(text.contains("exporting traces"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_refuses_are_counted_as_dropped() {
    let mut stack = Stack::new("trace-dropped");
    let (port, control) = (free_port(), free_port());
    spawn_receiver(
        &mut stack,
        port,
        &format!("http://127.0.0.1:{port}"),
        &[
            "--require-header",
            "authorization=Bearer right",
            "--control-port",
            &control.to_string(),
        ],
    )
    .await;
    stack.set(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        &format!("http://127.0.0.1:{port}/v1/traces"),
    );
    stack.set("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer wrong");
    stack.start_app(0).await;
    stack.start_bridge().await;
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = client()
            .get(format!("{}/metrics", stack.bridge_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if counter_value(&page, "openhqm_spans_dropped_total") >= 2 {
            assert_eq!(counter_value(&page, "openhqm_spans_exported_total"), 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no drop counted:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_otel_variable_stops_start_up_naming_it() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        for program in ["openhqm-bridge", "openhqm-worker"] {
            let mut stack = Stack::new("otel-invalid");
            stack.set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
            if var == "OTEL_TRACES_SAMPLER_ARG" {
                stack.set("OTEL_TRACES_SAMPLER", "traceidratio");
            }
            stack.set(var, value);
            let mut p = stack.spawn(program, &openhqm_e2e::bin(program), &[], &[]);
            let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
            let text = p.log_text();
            assert_eq!(status.code(), Some(2), "{program} {var}={value}: {text}");
            assert!(
                text.contains(&format!("{var}: ")),
                "{program} {var}={value}: {text}"
            );
        }
    }
}
