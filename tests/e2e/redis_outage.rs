//! Redis goes away under a running bridge and worker, then comes back: the
//! bridge answers 503 + Retry-After meanwhile (never a 202 it cannot keep),
//! both recover by themselves, and every accepted request completes.
//! Runs its own redis-server (with an fsynced append-only file, so what it
//! acknowledged survives the kill) so the shared one is not disturbed.

use openhqm_core::conformance::server_available;
use openhqm_e2e::{await_result, client, free_port, start_private_redis, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A private server with an fsynced append-only file, so what it
/// acknowledged survives the kill.
fn start_redis(stack: &mut Stack, port: u16) -> usize {
    let dir = stack.dir.join("redis");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let dir_s = dir.to_string_lossy().to_string();
    start_private_redis(
        stack,
        port,
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir_s,
        ],
    )
}

async fn submit(stack: &Stack, n: u32) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/submit", stack.bridge_url()))
        .json(&json!({"payload": {"n": n}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .expect("submit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_worker_ride_out_a_redis_outage() {
    // The shared server only tells us Redis is installed and usable here.
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let mut stack = Stack::new("redis-outage");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    stack.set("OPENHQM_QUEUE__TYPE", "redis");
    stack.set("OPENHQM_QUEUE__REDIS_URL", &url);
    stack.set("OPENHQM_CACHE__TYPE", "redis");
    stack.set("OPENHQM_CACHE__REDIS_URL", &url);
    stack.set("OPENHQM_WORKER__LEASE_SECONDS", "3");
    let redis = start_redis(&mut stack, port);
    stack.start_app(10).await;
    stack.start_bridge().await;
    stack.start_worker();

    let mut accepted = Vec::new();
    for n in 0..5 {
        let r = submit(&stack, n).await;
        assert_eq!(r.status().as_u16(), 202);
        accepted.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    for location in &accepted {
        assert_eq!(
            await_result(&stack.bridge_url(), location, Duration::from_secs(30)).await["status"],
            "COMPLETED"
        );
    }

    // Redis dies.
    stack.proc(redis).kill();
    let started = Instant::now();
    let r = submit(&stack, 100).await;
    assert_eq!(r.status().as_u16(), 503, "no 202 while Redis is away");
    assert!(
        r.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let body: Value = r.json().await.unwrap();
    assert!(
        ["store_unavailable", "queue_unavailable"].contains(&body["error"].as_str().unwrap_or("")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&port.to_string()),
        "the broker's address does not leak: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast, took {:?}",
        started.elapsed()
    );
    let r = client()
        .get(format!("{}{}", stack.bridge_url(), accepted[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let health = client()
        .get(format!("{}/health/ready", stack.bridge_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        503,
        "not ready while Redis is away"
    );

    // Redis returns (with what it had acknowledged); nobody is restarted.
    start_redis(&mut stack, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = Vec::new();
    while after.len() < 5 {
        let r = submit(&stack, 200 + after.len() as u32).await;
        match r.status().as_u16() {
            202 => after.push(r.headers()["location"].to_str().unwrap().to_string()),
            503 => {
                assert!(Instant::now() < deadline, "the bridge did not recover");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    for location in accepted.iter().chain(after.iter()) {
        let result = await_result(&stack.bridge_url(), location, Duration::from_secs(60)).await;
        assert_eq!(result["status"], "COMPLETED", "{result}");
    }
    let served = stack.app_stats().await["served"].as_u64().unwrap();
    assert!(
        served >= 10,
        "every accepted request reached the app: {served}"
    );
    println!(
        "redis outage: 503 within {:?}; recovered; 10/10 accepted requests completed",
        started.elapsed()
    );
}
