//! The spine, end to end: a request captured by the real filter inside a
//! real Envoy reaches the sample app through the embedded queue, and its
//! answer comes back. Each test runs its own processes on its own ports.

use openhqm_core::backends::embedded::EmbeddedBackend;
use openhqm_core::queue::{dlq_attr, QueueBackend};
use openhqm_e2e::{await_result, bin, client, header, Stack};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const RESULT_WAIT: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// POST /orders through Envoy; the 202's Location and correlation ID.
async fn post_order(stack: &Stack, body: Value, extra: &[(&str, &str)]) -> (String, String) {
    let mut req = client()
        .post(format!("{}/orders", stack.envoy_url()))
        .json(&body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("POST /orders");
    assert_eq!(
        r.status().as_u16(),
        202,
        "captured POST must be accepted: {:?}",
        r.text().await
    );
    let location = header(&r, "location").expect("Location header");
    let id = header(&r, "x-correlation-id").expect("x-correlation-id header");
    assert_eq!(location, format!("/api/v1/response/{id}"));
    (location, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_post_completes_through_the_queue_and_other_routes_pass_through() {
    let mut stack = Stack::new("spine");
    stack.start_all(200).await;
    let c = client();

    let r = c
        .post(format!("{}/orders?source=test", stack.envoy_url()))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"item": "book", "qty": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(
        header(&r, "retry-after").is_some(),
        "202 carries Retry-After"
    );
    let location = header(&r, "location").unwrap();
    let id = header(&r, "x-correlation-id").unwrap();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "correlation ID is a UUID: {id}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["correlation_id"], json!(id));
    assert_eq!(body["status"], "PENDING");
    assert!(body["submitted_at"].as_str().unwrap().ends_with('Z'));

    // The client needs only the sidecar's address: Envoy relays to the bridge.
    let result = await_result(&stack.envoy_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["status_code"], 201);
    assert_eq!(result["result"]["status"], "created");
    assert_eq!(result["result"]["order"], json!({"item": "book", "qty": 2}));
    assert!(result["result"]["id"].as_str().unwrap().starts_with("ord-"));
    assert_eq!(result["headers"]["X-Served-By"], "openhqm-sample-app");
    assert_eq!(
        result["headers"]["X-Received-Traceparent"], TRACEPARENT,
        "trace context crosses the queue"
    );
    assert!(
        result["processing_time_ms"].as_u64().unwrap() >= 150,
        "the app takes ~200 ms: {result}"
    );

    let status: Value = c
        .get(format!("{}/api/v1/status/{id}", stack.envoy_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "COMPLETED");
    assert!(status["updated_at"].is_string());

    // Not captured: answered by the app itself, synchronously.
    let r = c
        .get(format!("{}/healthz", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "x-served-by").as_deref(),
        Some("openhqm-sample-app")
    );
    assert!(header(&r, "x-correlation-id").is_none());
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    // The app served exactly one order: the queued one.
    let stats = stack.app_stats().await;
    assert_eq!(stats["served"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_body_round_trips_byte_exact() {
    let mut stack = Stack::new("binary");
    stack.start_all(10).await;
    let all: Vec<u8> = (0..=255u8).collect();
    let r = client()
        .post(format!("{}/orders", stack.envoy_url()))
        .header("content-type", "application/octet-stream")
        .body(all.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.envoy_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    // The sample app reports what it received, base64-encoded.
    assert_eq!(result["result"]["received_bytes"], 256);
    let got = openhqm_core::model::decode_base64(result["result"]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, all, "the backend must receive the exact bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_api_runs_the_example_processor() {
    let mut stack = Stack::new("submit");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.start_bridge().await;
    stack.start_worker();
    let c = client();
    let cases = [
        (
            json!({"operation": "echo", "data": {"nested": [1, 2, 3], "text": "héllo"}}),
            json!({"nested": [1, 2, 3], "text": "héllo"}),
        ),
        (
            json!({"operation": "uppercase", "data": "hello"}),
            json!("HELLO"),
        ),
        (json!({"operation": "reverse", "data": "abc"}), json!("cba")),
    ];
    for (payload, expected) in cases {
        let r = c
            .post(format!("{}/api/v1/submit", stack.bridge_url()))
            .json(&json!({"payload": payload, "metadata": {"priority": "normal", "timeout": 300}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let location = header(&r, "location").unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "PENDING");
        assert_eq!(
            location,
            format!(
                "/api/v1/response/{}",
                body["correlation_id"].as_str().unwrap()
            )
        );
        let result = await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
        assert_eq!(result["status"], "COMPLETED", "{result}");
        assert_eq!(result["result"]["output"], expected);
        assert!(result["completed_at"].is_string());
    }

    // The `error` operation fails for good: FAILED with the error, dead-lettered.
    let r = c
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {"operation": "error"}}))
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "FAILED");
    assert_eq!(result["error"], "Test error");
}

/// Read every message in the stack's dead-letter queue.
async fn dlq_messages(stack: &Stack) -> Vec<openhqm_core::queue::Delivery> {
    let backend = EmbeddedBackend::open(&stack.data_dir(), 64 << 20).unwrap();
    let dlq = backend.open("openhqm-dlq").await.unwrap();
    dlq.receive(1000, Duration::from_millis(100), Duration::from_secs(60))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_success_and_dead_letters_when_it_never_comes() {
    let mut stack = Stack::new("retries");
    stack.start_all(10).await;

    // 500 three times, then 200 (max_retries = 3 -> 4 attempts).
    let (location, _) = post_order(
        &stack,
        json!({"flaky": true}),
        &[("x-sample-fail-times", "3")],
    )
    .await;
    let result = await_result(&stack.envoy_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["status_code"], 201);
    assert_eq!(result["attempts"], 4);

    // Always 500: FAILED after 4 attempts, in the DLQ with the last error.
    let (location, id) = post_order(
        &stack,
        json!({"doomed": true}),
        &[("x-sample-fail-times", "1000")],
    )
    .await;
    let result = await_result(&stack.envoy_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "FAILED", "{result}");
    assert_eq!(result["attempts"], 4);
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500") && error.contains("4 attempts"),
        "{error}"
    );
    assert_eq!(
        result["status_code"], 500,
        "the last answer is kept: {result}"
    );

    let dead = dlq_messages(&stack).await;
    assert_eq!(dead.len(), 1, "exactly the failed request is dead-lettered");
    let msg = &dead[0].message;
    assert_eq!(msg.id, id);
    assert_eq!(msg.attributes[dlq_attr::ERROR], error);
    assert_eq!(msg.attributes[dlq_attr::ATTEMPTS], "4");
    let env =
        openhqm_core::envelope::Envelope::decode(&msg.body).expect("the original envelope is kept");
    assert_eq!(env.correlation_id, id);
    assert_eq!(
        env.request.unwrap().body_bytes().unwrap(),
        br#"{"doomed":true}"#
    );

    // The request queue is empty: nothing left behind or stuck.
    let backend = EmbeddedBackend::open(&stack.data_dir(), 64 << 20).unwrap();
    let q = backend.open("openhqm-requests").await.unwrap();
    assert_eq!(q.depth().await.unwrap().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_messages_are_redelivered_to_another_worker() {
    const N: usize = 24;
    let mut stack = Stack::new("sigkill");
    stack.set("OPENHQM_WORKER__LEASE_SECONDS", "2");
    stack.set("OPENHQM_WORKER__CONCURRENCY", "4");
    stack.set("OPENHQM_WORKER__BATCH_SIZE", "4");
    stack.start_app(600).await;
    stack.start_bridge().await;
    let victim = stack.start_worker();
    let _other = stack.start_worker();
    stack.start_envoy().await;

    let mut accepted = Vec::new();
    for i in 0..N {
        accepted.push(post_order(&stack, json!({"n": i}), &[]).await);
    }
    // Let the victim take work, then kill it mid-request.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let started = stack
            .proc(victim)
            .log_events()
            .iter()
            .filter(|e| e["message"] == "processing")
            .count();
        if started > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the victim never took work"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stack.proc(victim).kill();

    // What the victim was holding when it died: started, never finished.
    let events = stack.proc(victim).log_events();
    let ids = |msg: &str| -> BTreeSet<String> {
        events
            .iter()
            .filter(|e| e["message"] == msg)
            .filter_map(|e| e["correlation_id"].as_str().map(str::to_string))
            .collect()
    };
    let held: BTreeSet<String> = ids("processing")
        .difference(&ids("completed"))
        .cloned()
        .collect();
    assert!(
        !held.is_empty(),
        "the victim must have died holding messages"
    );

    stack.start_worker(); // the replacement

    let mut completed = 0;
    for (location, id) in &accepted {
        let result = await_result(&stack.envoy_url(), location, RESULT_WAIT).await;
        assert_eq!(result["status"], "COMPLETED", "{id}: {result}");
        completed += 1;
        if held.contains(id) {
            assert!(
                result["attempts"].as_u64().unwrap() >= 2,
                "{id} was redelivered: {result}"
            );
        }
    }
    assert_eq!(completed, N, "every accepted request completes");
    println!(
        "accepted {N}, completed {completed}, redelivered after SIGKILL: {}",
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_outage_answers_503_and_loses_nothing() {
    let mut stack = Stack::new("outage");
    stack.start_app(10).await;
    let bridge = stack.start_bridge().await;
    stack.start_worker();
    stack.start_envoy().await;
    let c = client();

    let before = post_order(&stack, json!({"when": "before"}), &[]).await;
    stack.proc(bridge).kill();

    for _ in 0..3 {
        let r = c
            .post(format!("{}/orders", stack.envoy_url()))
            .json(&json!({"when": "during"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let retry_after = header(&r, "retry-after").expect("503 carries Retry-After");
        assert!(retry_after.parse::<u64>().unwrap() >= 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bridge_unavailable");
    }
    // Status lookups are relayed to the bridge too: same answer while it is away.
    let r = c
        .get(format!("{}{}", stack.envoy_url(), before.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);

    stack.start_bridge().await;
    let after = post_order(&stack, json!({"when": "after"}), &[]).await;
    for (location, _) in [&before, &after] {
        let result = await_result(&stack.envoy_url(), location, RESULT_WAIT).await;
        assert_eq!(result["status"], "COMPLETED", "{result}");
    }
    // Only the two accepted orders reached the app; the refused ones never existed.
    let stats = stack.app_stats().await;
    assert_eq!(stats["served"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_json_errors() {
    let mut stack = Stack::new("badinput");
    stack.set("OPENHQM_SERVER__MAX_BODY_BYTES", "2048");
    stack.start_all(10).await;
    let c = client();
    let bridge = stack.bridge_url();

    let expect = |code: u16, error: &'static str| {
        move |(status, body): (u16, Value)| {
            assert_eq!(status, code, "{body}");
            assert_eq!(body["error"], error, "{body}");
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}"
            );
        }
    };
    async fn call(r: reqwest::RequestBuilder) -> (u16, Value) {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = header(&r, "content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "errors are JSON, got {ct}"
        );
        (status, r.json().await.unwrap())
    }

    let json_post = |url: String, body: &'static str| {
        c.post(url)
            .header("content-type", "application/json")
            .body(body)
    };
    // Validation errors are 422, as the original answers them.
    expect(422, "invalid_json")(
        call(json_post(format!("{bridge}/api/v1/submit"), "{not json")).await,
    );
    expect(422, "invalid_request")(
        call(json_post(
            format!("{bridge}/api/v1/submit"),
            r#"{"headers": {}}"#,
        ))
        .await,
    );
    expect(415, "unsupported_media_type")(
        call(
            c.post(format!("{bridge}/api/v1/submit"))
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await,
    );
    expect(413, "payload_too_large")(
        call(
            c.post(format!("{bridge}/api/v1/submit"))
                .json(&json!({"payload": {"x": "y".repeat(4096)}})),
        )
        .await,
    );
    expect(422, "unknown_endpoint")(
        call(
            c.post(format!("{bridge}/api/v1/submit"))
                .json(&json!({"payload": {}, "metadata": {"endpoint": "elsewhere"}})),
        )
        .await,
    );

    let unknown = uuid::Uuid::new_v4();
    for base in [bridge.clone(), stack.envoy_url()] {
        expect(404, "not_found")(call(c.get(format!("{base}/api/v1/status/{unknown}"))).await);
        expect(404, "not_found")(call(c.get(format!("{base}/api/v1/response/{unknown}"))).await);
        // Not a UUID: no such request, 404 as the original.
        expect(404, "not_found")(call(c.get(format!("{base}/api/v1/status/not-a-uuid"))).await);
        expect(404, "not_found")(call(c.get(format!("{base}/api/v1/response/1234"))).await);
    }
    expect(404, "not_found")(call(c.get(format!("{bridge}/no/such/route"))).await);
    expect(405, "method_not_allowed")(call(c.delete(format!("{bridge}/api/v1/submit"))).await);

    // The capture endpoint only takes the filter's frames.
    expect(415, "unsupported_media_type")(
        call(json_post(format!("{bridge}/internal/v1/capture"), "{}")).await,
    );
    expect(400, "invalid_capture")(
        call(
            c.post(format!("{bridge}/internal/v1/capture"))
                .header("content-type", "application/vnd.openhqm.capture")
                .body("no newline"),
        )
        .await,
    );

    // Over the filter's limit (1 MiB in envoy.yaml): 413 from the filter itself.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let r = c
        .post(format!("{}/orders", stack.envoy_url()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    // Over the bridge's limit (2 KiB here) but under the filter's: the bridge's 413 is relayed.
    let r = c
        .post(format!("{}/orders", stack.envoy_url()))
        .body(vec![b'y'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );

    // Nothing of the above reached the app, and nothing was queued.
    let stats = stack.app_stats().await;
    assert_eq!(stats["served"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_or_hands_it_back() {
    let mut stack = Stack::new("sigterm");
    stack.set("OPENHQM_WORKER__SHUTDOWN_GRACE_SECONDS", "3");
    stack.start_app(10).await;
    stack.start_bridge().await;
    let first = stack.start_worker();
    stack.start_envoy().await;

    // A 1 s request, in flight when SIGTERM arrives: finished, then exit 0.
    let (location, _) =
        post_order(&stack, json!({"slow": 1}), &[("x-sample-delay-ms", "1000")]).await;
    wait_for_log(&mut stack, first, "processing").await;
    stack.proc(first).terminate();
    let status = stack
        .proc(first)
        .wait_exit(Duration::from_secs(10))
        .expect("worker exits after SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    let result = await_result(&stack.envoy_url(), &location, Duration::from_secs(5)).await;
    assert_eq!(result["status"], "COMPLETED");
    assert_eq!(
        result["attempts"], 1,
        "finished by the worker that was stopping"
    );

    // A 6 s request outlives the 3 s grace: handed back, not acked, and
    // completed by the next worker.
    let second = stack.start_worker();
    let (location, _) =
        post_order(&stack, json!({"slow": 2}), &[("x-sample-delay-ms", "6000")]).await;
    wait_for_log(&mut stack, second, "processing").await;
    stack.proc(second).terminate();
    let status = stack
        .proc(second)
        .wait_exit(Duration::from_secs(15))
        .expect("worker exits after its grace period");
    assert!(status.success());
    assert!(
        stack.proc(second).log_text().contains("\"handed_back\":1"),
        "the unfinished message is handed back"
    );
    let r = client()
        .get(format!("{}{}", stack.envoy_url(), location))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "not done, so not final");
    stack.start_worker();
    let result = await_result(&stack.envoy_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["attempts"], 2);
}

async fn wait_for_log(stack: &mut Stack, proc: usize, message: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !stack
        .proc(proc)
        .log_events()
        .iter()
        .any(|e| e["message"] == message)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no `{message}` in the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_their_ttl() {
    let mut stack = Stack::new("ttl");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.set("OPENHQM_CACHE__TTL_SECONDS", "2");
    stack.start_bridge().await;
    stack.start_worker();
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {"operation": "echo", "data": 1}}))
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "COMPLETED");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = client()
        .get(format!("{}{}", stack.bridge_url(), location))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "expired results are gone, never a fake PENDING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_before_binding_and_names_the_key() {
    let mut stack = Stack::new("config");
    let port = stack.bridge_port;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("OPENHQM_QUEUE__TYPE", "rabbitmq")], "queue.type"),
        (vec![("OPENHQM_SERVER__PORT", "eighty")], "server.port"),
        (
            vec![("OPENHQM_WORKER__BATCH_SIZE", "0")],
            "worker.batch_size",
        ),
        (
            vec![("OPENHQM_PROXY__DEFAULT_ENDPOINT", "missing")],
            "proxy.default_endpoint",
        ),
        (
            vec![("OPENHQM_QUEUE__NO_SUCH_KEY", "1")],
            "queue.no_such_key",
        ),
    ];
    for (program, name) in [("openhqm-bridge", "bridge"), ("openhqm-worker", "worker")] {
        for (env, key) in &cases {
            let mut p = stack.spawn(name, &bin(program), &[], env);
            let status = p.wait_exit(Duration::from_secs(10)).expect("exits at once");
            assert_eq!(status.code(), Some(2), "{program} {env:?}");
            let log = p.log_text();
            assert!(
                log.contains(&format!("`{key}`")),
                "{program} must name `{key}`: {log}"
            );
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "nothing was bound"
            );
        }
    }
    // A config file with an unknown key, and one that does not exist.
    let file = stack.dir.join("bad.yaml");
    std::fs::write(&file, "queue:\n  type: embedded\n  dlq_nam: typo\n").unwrap();
    let mut p = stack.spawn(
        "bridge",
        &bin("openhqm-bridge"),
        &["--config", &file.to_string_lossy()],
        &[],
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(2)
    );
    assert!(p.log_text().contains("`queue.dlq_nam`"), "{}", p.log_text());
    let mut p = stack.spawn(
        "bridge",
        &bin("openhqm-bridge"),
        &["--config", "/nonexistent.yaml"],
        &[],
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(2)
    );
    assert!(p.log_text().contains("/nonexistent.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_returns_the_result_or_falls_back_to_202() {
    let mut stack = Stack::new("prefer");
    stack.start_all(10).await;
    let c = client();

    // Fast enough: the submission's own answer is the final result.
    let r = c
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .header("prefer", "wait=10")
        .header("traceparent", TRACEPARENT)
        .json(&json!({"payload": {"item": "pen"}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "preference-applied").as_deref(), Some("wait=10"));
    assert!(header(&r, "location").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "COMPLETED", "{body}");
    assert_eq!(body["result"]["order"], json!({"item": "pen"}));
    assert_eq!(
        body["headers"]["X-Received-Traceparent"], TRACEPARENT,
        "submit API carries trace context too"
    );

    // Too slow for the wait: 202 after about the wait, the request still accepted.
    let started = std::time::Instant::now();
    let r = c
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .header("prefer", "wait=1")
        .json(&json!({
            "payload": {"item": "slow"},
            "headers": {"x-sample-delay-ms": "3000"},
            "metadata": {"endpoint": "orders"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(header(&r, "preference-applied").as_deref(), Some("wait=1"));
    let location = header(&r, "location").unwrap();

    // Long-poll through the sidecar: answered when the worker finishes, not
    // after the full wait.
    let started = std::time::Instant::now();
    let r = c
        .get(format!("{}{location}", stack.envoy_url()))
        .header("prefer", "wait=20")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "preference-applied").as_deref(), Some("wait=20"));
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "COMPLETED");
    assert!(
        waited < Duration::from_secs(10),
        "the long-poll should end at completion, took {waited:?}"
    );

    // respond-async: always the 202 at once.
    let r = c
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .header("prefer", "respond-async, wait=10")
        .json(&json!({"payload": {}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        header(&r, "preference-applied").as_deref(),
        Some("respond-async")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_outcomes_are_published_to_the_response_queue() {
    let mut stack = Stack::new("responses");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.set("OPENHQM_WORKER__PUBLISH_RESPONSES", "true");
    stack.start_bridge().await;
    stack.start_worker();
    let c = client();
    let mut ids = Vec::new();
    for payload in [
        json!({"operation": "echo", "data": "hi"}),
        json!({"operation": "error"}),
    ] {
        let r = c
            .post(format!("{}/api/v1/submit", stack.bridge_url()))
            .json(&json!({"payload": payload}))
            .send()
            .await
            .unwrap();
        let location = header(&r, "location").unwrap();
        await_result(&stack.bridge_url(), &location, RESULT_WAIT).await;
        ids.push(header(&r, "x-correlation-id").unwrap());
    }
    let backend = EmbeddedBackend::open(&stack.data_dir(), 64 << 20).unwrap();
    let responses = backend.open("openhqm-responses").await.unwrap();
    let got = responses
        .receive(10, Duration::from_millis(500), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "one response per final outcome");
    for d in &got {
        let body: Value = serde_json::from_slice(&d.message.body).unwrap();
        assert_eq!(body["correlation_id"].as_str(), Some(d.message.id.as_str()));
        assert_eq!(
            d.message.attributes["status"],
            body["status"].as_str().unwrap()
        );
    }
    let by_id = |id: &str| {
        got.iter()
            .find(|d| d.message.id == id)
            .expect("response for every request")
    };
    assert_eq!(by_id(&ids[0]).message.attributes["status"], "COMPLETED");
    assert_eq!(by_id(&ids[1]).message.attributes["status"], "FAILED");
}
