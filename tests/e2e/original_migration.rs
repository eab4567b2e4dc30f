//! A rolling migration from the original OpenHQM on a shared Redis: workers
//! are replaced first, the API after, with traffic flowing.
//!
//! Phase 1 plays the original's API exactly as its code does (a PENDING
//! `req:{id}:meta`, then `XADD openhqm-requests * payload <json>` of its
//! message shape; `O:src/openhqm/api/routes.py`, `O:src/openhqm/queue/
//! redis_queue.py`). Our worker, with `cache.original_keys`, must process
//! the entry and leave the result where the original's API reads it, in the
//! shape it reads (checked the way its `get_response` parses it, with
//! Python's own `datetime.fromisoformat`). Phase 2 replaces the API with our
//! bridge: requests the original accepted are still answered, new ones too.
//!
//! Runs its own redis-server, as the original's keys are not prefixed.

use openhqm_core::conformance::server_available;
use openhqm_e2e::{await_result, client, free_port, start_private_redis, Stack};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A string value as JSON (`--no-raw` quotes and escapes it).
fn get_json(port: u16, key: &str) -> Option<Value> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw", "GET", key])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key}: {e}: {text}")))
}

/// What the original's `submit_request` does for one request.
fn original_api_submit(port: u16, id: &str, payload: Value) {
    // Python's datetime.now(UTC).isoformat(): microseconds and +00:00.
    let now = openhqm_core::time::now_rfc3339().replace('Z', "000+00:00");
    let now = now.as_str();
    let meta = json!({"status": "PENDING", "submitted_at": now, "updated_at": now});
    redis_cli(
        port,
        &[
            "SET",
            &format!("req:{id}:meta"),
            &meta.to_string(),
            "EX",
            "3600",
        ],
    );
    let message = json!({
        "correlation_id": id,
        "payload": payload,
        "headers": {"Content-Type": "application/json"},
        "timestamp": now,
        // RequestMetadata.model_dump() with the original's defaults.
        "metadata": {"priority": 5, "timeout": 300, "retry_count": 0,
                     "endpoint": "orders", "method": null},
    });
    redis_cli(
        port,
        &[
            "XADD",
            "openhqm-requests",
            "*",
            "payload",
            &message.to_string(),
        ],
    );
}

/// The original's `get_response`, over what it reads from Redis: the same
/// lookups and parses, in Python, so a shape it cannot read fails here.
fn original_api_get_response(meta: &Value, resp: &Value) -> Value {
    let script = r#"
import json, sys
from datetime import datetime
meta, resp = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert meta["status"] in ("PENDING", "PROCESSING", "COMPLETED", "FAILED", "TIMEOUT")
datetime.fromisoformat(meta["submitted_at"])
datetime.fromisoformat(meta.get("updated_at", meta["submitted_at"]))
out = {"status": meta["status"], "result": resp.get("result"), "headers": resp.get("headers"),
       "status_code": resp.get("status_code"), "processing_time_ms": resp.get("processing_time_ms"),
       "completed_at": datetime.fromisoformat(resp["completed_at"]).isoformat()}
assert isinstance(out["status_code"], int) and isinstance(out["processing_time_ms"], int)
assert isinstance(out["headers"], dict)
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &meta.to_string(), &resp.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the original's get_response could not read what we wrote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

async fn wait_completed(port: u16, id: &str) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let meta = get_json(port, &format!("req:{id}:meta"));
        if let Some(m) = meta.as_ref().filter(|m| m["status"] == "COMPLETED") {
            let resp = get_json(port, &format!("resp:{id}")).expect("resp:{id} beside COMPLETED");
            return (m.clone(), resp);
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not COMPLETED in the original's keys: {meta:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_first_then_the_api_with_traffic_flowing() {
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let mut stack = Stack::new("original-migration");
    let port = free_port();
    start_private_redis(&mut stack, port, &[]);
    let url = format!("redis://127.0.0.1:{port}");
    // The original's compose variables, plus the one setting for the mixed fleet.
    stack.set("OPENHQM_QUEUE__TYPE", "redis");
    stack.set("OPENHQM_QUEUE__REDIS_URL", &url);
    stack.set("OPENHQM_CACHE__TYPE", "redis");
    stack.set("OPENHQM_CACHE__REDIS_URL", &url);
    stack.set("OPENHQM_CACHE__ORIGINAL_KEYS", "true");
    stack.start_app(0).await;

    // Phase 1: the original's API, our workers. A backlog is already there.
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (n, id) in ids.iter().enumerate() {
        original_api_submit(port, id, json!({"item": "book", "n": n}));
    }
    stack.start_worker();
    stack.wait_worker_ready(0).await;
    for (n, id) in ids.iter().enumerate() {
        let (meta, resp) = wait_completed(port, id).await;
        let seen = original_api_get_response(&meta, &resp);
        assert_eq!(
            seen["status_code"], 201,
            "the sample app answers 201 Created: {seen}"
        );
        // The sample app answers the created order as JSON: the result is it.
        assert_eq!(seen["result"]["order"]["item"], "book", "{seen}");
        assert_eq!(seen["result"]["order"]["n"], n, "{seen}");
        assert!(
            seen["headers"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type")),
            "{seen}"
        );
    }
    assert_eq!(
        redis_cli(port, &["XLEN", "openhqm-requests"]),
        "(integer) 0",
        "every entry of the original's was acked, none dead-lettered"
    );
    assert_eq!(redis_cli(port, &["XLEN", "openhqm-dlq"]), "(integer) 0");

    // Phase 2: our bridge replaces the API. What the original accepted is
    // answered by ours; new requests flow, and still land in both places.
    stack.start_bridge().await;
    let base = stack.bridge_url();
    let r = client()
        .get(format!("{base}/api/v1/response/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["result"]["order"]["item"], "book");

    let r = client()
        .post(format!("{base}/api/v1/submit"))
        .json(&json!({"payload": {"item": "pen"}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let done = await_result(&base, &location, Duration::from_secs(30)).await;
    assert_eq!(done["result"]["order"]["item"], "pen");
    let id = done["correlation_id"].as_str().unwrap().to_string();
    let (meta, resp) = wait_completed(port, &id).await;
    assert_eq!(
        original_api_get_response(&meta, &resp)["result"]["order"]["item"],
        "pen"
    );
}
