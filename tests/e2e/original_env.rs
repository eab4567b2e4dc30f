//! A migrating user's deployment, started with nothing but the original's
//! variables: its docker-compose.yml gives the API and the worker only
//! `OPENHQM_QUEUE__REDIS_URL` / `OPENHQM_CACHE__REDIS_URL` (the original
//! defaulted to Redis). Bridge and worker run as separate containers would,
//! each with its own data directory, so a fallback to the embedded backend
//! would split them and the request would stay PENDING.

use openhqm_core::conformance::server_available;
use openhqm_e2e::{await_result, bin, client, redis_delete, Stack};
use serde_json::{json, Value};
use std::time::Duration;

/// The start-up line of a binary's JSON log.
fn backend_line(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["fields"]["message"].as_str().or(e["message"].as_str()))
        .find(|m| m.starts_with("queue backend:"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_redis_urls_alone_run_bridge_and_worker_on_redis() {
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut stack = Stack::new("original-env");
    // Only the compose file's variables (plus names of this run, which are
    // the original's variables too, and a free port).
    stack.env.clear();
    for (k, v) in [
        ("OPENHQM_QUEUE__REDIS_URL", "redis://127.0.0.1:6379"),
        ("OPENHQM_CACHE__REDIS_URL", "redis://127.0.0.1:6379"),
        ("OPENHQM_MONITORING__LOG_LEVEL", "INFO"),
        (
            "OPENHQM_QUEUE__REQUEST_QUEUE_NAME",
            &format!("orig-{run}-requests"),
        ),
        (
            "OPENHQM_QUEUE__RESPONSE_QUEUE_NAME",
            &format!("orig-{run}-responses"),
        ),
        ("OPENHQM_QUEUE__DLQ_NAME", &format!("orig-{run}-dlq")),
        ("OPENHQM_SERVER__HOST", "127.0.0.1"),
        ("OPENHQM_SERVER__PORT", &stack.bridge_port.to_string()),
    ] {
        stack.set(k, v);
    }
    let dir = stack.dir.clone();
    let bridge_dir = dir.join("bridge-data").to_string_lossy().into_owned();
    let worker_dir = dir.join("worker-data").to_string_lossy().into_owned();
    // The compose file's command lines, which our images get as arguments.
    let bridge = stack.spawn(
        "bridge",
        &bin("openhqm-bridge"),
        &["python", "-m", "openhqm.api.listener"],
        &[("OPENHQM_QUEUE__DATA_DIR", &bridge_dir)],
    );
    let b = stack.keep(bridge);
    openhqm_e2e::wait_ready(
        &format!("{}/health", stack.bridge_url()),
        Duration::from_secs(20),
    )
    .await;
    let admin = openhqm_e2e::free_port().to_string();
    // `python -m openhqm.worker.worker worker-${WORKER_ID:-1}`.
    let worker = stack.spawn(
        "worker",
        &bin("openhqm-worker"),
        &["python", "-m", "openhqm.worker.worker", "worker-1"],
        &[
            ("OPENHQM_QUEUE__DATA_DIR", &worker_dir),
            ("OPENHQM_WORKER__ADMIN_PORT", &admin),
        ],
    );
    let w = stack.keep(worker);

    let done = submit_and_wait(
        &stack,
        json!({"payload": {"operation": "uppercase", "data": "compose"}}),
    )
    .await;
    let id = done["correlation_id"].as_str().unwrap().to_string();
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["result"]["output"], "COMPOSE", "{done}");

    for i in [b, w] {
        let line = backend_line(&stack.proc(i).log_events());
        assert!(
            line.starts_with(
                "queue backend: redis (redis://127.0.0.1:6379); result store: redis (redis://127.0.0.1:6379)"
            ),
            "{}: {line:?}",
            stack.proc(i).name
        );
        assert!(line.contains("OPENHQM_QUEUE__REDIS_URL"), "{line}");
    }
    // Neither opened an embedded file.
    assert!(!dir.join("bridge-data").join("queue.db").exists());
    assert!(!dir.join("worker-data").join("queue.db").exists());
    let worker_log = stack.proc(w).log_text();
    assert!(worker_log.contains("worker-1"), "{worker_log}");
    redis_delete(&format!("orig-{run}-*"));
    redis_delete(&format!("openhqm:result:{id}"));
}

/// Submit one message, wait for its final result.
async fn submit_and_wait(stack: &Stack, body: Value) -> Value {
    let r = client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&body)
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["correlation_id"]
        .as_str()
        .unwrap()
        .to_string();
    await_result(
        &stack.bridge_url(),
        &format!("/api/v1/response/{id}"),
        Duration::from_secs(20),
    )
    .await
}

/// The original applied its routing table with proxy mode off too (the
/// processor got the transformed payload); `routing.config_dict` is its
/// inline table (O:docs/ROUTING_PARTITIONING.md:44).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_config_dict_reshapes_the_payload_with_proxy_off() {
    let mut stack = Stack::new("original-routing-off");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.set("OPENHQM_ROUTING__ENABLED", "true");
    stack.set(
        "OPENHQM_ROUTING__CONFIG_DICT",
        r#"{"routes": [{"name": "shout", "match_field": "metadata.type", "match_value": "shout",
            "endpoint": "unused", "transform_type": "jq",
            "transform": "{operation: \"uppercase\", data: .payload.text}"}]}"#,
    );
    stack.start_bridge().await;
    stack.start_worker();
    let done = submit_and_wait(
        &stack,
        json!({"payload": {"text": "routed"}, "metadata": {"type": "shout"}}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["result"]["output"], "ROUTED", "{done}");
    // No route matches: the payload reaches the processor unchanged.
    let done = submit_and_wait(
        &stack,
        json!({"payload": {"operation": "reverse", "data": "abc"}, "metadata": {"type": "other"}}),
    )
    .await;
    assert_eq!(done["result"]["output"], "cba", "{done}");
}

/// A missing routing file stops the worker at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_routing_file_stops_the_worker_naming_the_key() {
    let mut stack = Stack::new("original-routing-missing");
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    stack.set("OPENHQM_ROUTING__ENABLED", "true");
    stack.set("OPENHQM_ROUTING__CONFIG_PATH", "/nonexistent/routing.yaml");
    let i = stack.start_worker();
    let status = stack
        .proc(i)
        .wait_exit(Duration::from_secs(10))
        .expect("the worker exits");
    assert_eq!(status.code(), Some(2));
    let log = stack.proc(i).log_text();
    assert!(
        log.contains("routing.config_path") && log.contains("/nonexistent/routing.yaml"),
        "{log}"
    );
}

/// The original's URL-only set-up: `proxy.default_endpoint` a URL, no
/// `proxy.endpoints`, a routing table naming endpoints (our fixture in the
/// shape of its routing-config.yaml). Routed messages go to the default URL
/// with the route's body, jq header mapping and query parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_only_default_endpoint_takes_the_routed_messages() {
    let mut stack = Stack::new("original-url-default");
    stack.start_app(0).await;
    stack.env.retain(|(k, _)| k != "OPENHQM_PROXY__ENDPOINTS");
    let url = format!("{}/echo/default", stack.app_url());
    stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", &url);
    stack.set("OPENHQM_ROUTING__ENABLED", "true");
    let table = openhqm_e2e::repo_root().join("tests/fixtures/original/routing-table.yaml");
    stack.set("OPENHQM_ROUTING__CONFIG_PATH", &table.to_string_lossy());
    stack.start_bridge().await;
    let w = stack.start_worker();
    let done = submit_and_wait(
        &stack,
        json!({"payload": {"id": "cart-1", "items": [1, 2]},
               "metadata": {"type": "cart", "session_id": "s-1"}}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let echoed = &done["result"];
    assert_eq!(echoed["path"], "/echo/default", "{done}");
    assert_eq!(
        echoed["body"],
        json!({"cart_id": "cart-1", "count": 2}),
        "{done}"
    );
    assert_eq!(echoed["headers"]["x-cart-size"], "2", "{done}");
    assert_eq!(echoed["headers"]["x-session-id"], "s-1", "{done}");
    assert!(
        echoed["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("idempotency_key=")),
        "{done}"
    );
    let log = stack.proc(w).log_text();
    assert!(
        log.contains("route `cart` names endpoint `cart-service`"),
        "the start-up warning names the route: {log}"
    );
}

/// The original's StatefulSet keys on `metadata.session_id`
/// (`OPENHQM_PARTITIONING__PARTITION_KEY_FIELD`): every message of a session
/// reaches the same backend instance, without the client changing a thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_on_session_id_keeps_each_session_on_one_instance() {
    let mut stack = Stack::new("original-partitioning");
    stack.start_app(0).await;
    let app = stack.app_url();
    stack.set(
        "OPENHQM_PROXY__ENDPOINTS",
        &format!(
            r#"{{"app": {{"instances": ["{app}/echo/a", "{app}/echo/b", "{app}/echo/c"], "timeout": 10}}}}"#
        ),
    );
    stack.set("OPENHQM_PARTITIONING__ENABLED", "true");
    stack.set(
        "OPENHQM_PARTITIONING__PARTITION_KEY_FIELD",
        "metadata.session_id",
    );
    stack.set("OPENHQM_PARTITIONING__STICKY_SESSION_TTL", "1800");
    stack.start_bridge().await;
    stack.start_worker();
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    // Ten sessions (not a multiple of the three instances, so a rotation
    // would move each one from round to round; and all ten on one instance
    // by chance is 3 x 3^-10).
    let sessions: Vec<String> = (1..=10).map(|i| format!("s-{i}")).collect();
    for round in 0..3 {
        for session in &sessions {
            let done = submit_and_wait(
                &stack,
                json!({"payload": {"n": round}, "metadata": {"session_id": session}}),
            )
            .await;
            assert_eq!(done["status"], "COMPLETED", "{done}");
            let path = done["result"]["path"].as_str().unwrap().to_string();
            seen.entry(session.clone()).or_default().insert(path);
        }
    }
    for (session, paths) in &seen {
        assert_eq!(paths.len(), 1, "{session} reached {paths:?}");
    }
    let used: std::collections::BTreeSet<_> = seen.values().flatten().collect();
    assert!(used.len() > 1, "ten sessions all on one instance: {used:?}");
}
