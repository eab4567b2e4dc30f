//! The product as a fleet on one Redis: two bridges and three workers, as
//! separate processes, behind one Envoy whose bridge cluster has both
//! bridges. 2,000 requests through the filter while a worker is SIGKILLed and
//! replaced; wait-mode requests held by one bridge are answered by whichever
//! worker finishes them.

use openhqm_core::conformance::server_available;
use openhqm_e2e::{client, header, redis_delete, redis_keys, Stack};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const REQUESTS: usize = 2000;
const CLIENT_CONCURRENCY: usize = 32;
const WAIT_MODE_REQUESTS: usize = 60;

/// A stack on the shared Redis, configured by the original's variables
/// alone (no config file), with names of this run only, so runs and other
/// tests on the Redis never mix.
fn redis_stack(test: &str, run: &str) -> Stack {
    let mut stack = Stack::new(test);
    stack.set("OPENHQM_QUEUE__TYPE", "redis");
    stack.set("OPENHQM_QUEUE__REDIS_URL", "redis://127.0.0.1:6379");
    stack.set("OPENHQM_CACHE__TYPE", "redis");
    stack.set("OPENHQM_CACHE__REDIS_URL", "redis://127.0.0.1:6379");
    stack.set("OPENHQM_CACHE__KEY_PREFIX", &format!("fleet-{run}"));
    stack.set(
        "OPENHQM_QUEUE__REQUEST_QUEUE_NAME",
        &format!("fleet-{run}-requests"),
    );
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_bridges_three_workers_on_redis_lose_nothing_when_a_worker_dies() {
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut stack = redis_stack("fleet", &run);
    stack.set(
        "OPENHQM_QUEUE__RESPONSE_QUEUE_NAME",
        &format!("fleet-{run}-responses"),
    );
    stack.set("OPENHQM_QUEUE__DLQ_NAME", &format!("fleet-{run}-dlq"));
    stack.set("OPENHQM_WORKER__LEASE_SECONDS", "3");
    stack.set("OPENHQM_WORKER__CONCURRENCY", "8");
    stack.set("OPENHQM_WORKER__BATCH_SIZE", "8");
    stack.set("OPENHQM_MONITORING__LOG_LEVEL", "WARN");

    stack.start_app(20).await;
    stack.start_bridge().await;
    let (_, bridge_b) = stack.add_bridge().await;
    let workers: Vec<usize> = (0..3).map(|_| stack.start_worker()).collect();
    stack.start_envoy().await;
    let envoy = stack.envoy_url();
    let bridge_a = stack.bridge_url();

    // Wait-mode submissions to bridge A, in parallel with the burst.
    let waiters = {
        let bridge_a = bridge_a.clone();
        tokio::spawn(async move {
            let c = client();
            let mut answers = Vec::new();
            for i in 0..WAIT_MODE_REQUESTS {
                let r = c
                    .post(format!("{bridge_a}/api/v1/submit"))
                    .header("prefer", "wait=30")
                    .json(&json!({"payload": {"waiter": i}, "metadata": {"endpoint": "orders"}}))
                    .send()
                    .await
                    .expect("wait-mode submit");
                let status = r.status().as_u16();
                let applied = header(&r, "preference-applied");
                answers.push((status, applied, r.json::<Value>().await.expect("JSON")));
            }
            answers
        })
    };

    // The burst through the filter; a worker dies and is replaced midway.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CLIENT_CONCURRENCY));
    let mut sends = Vec::with_capacity(REQUESTS);
    let c = client();
    for i in 0..REQUESTS {
        if i == REQUESTS / 2 {
            stack.proc(workers[0]).kill();
            stack.start_worker();
        }
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let c = c.clone();
        let url = format!("{envoy}/orders");
        sends.push(tokio::spawn(async move {
            let r = c.post(url).json(&json!({"n": i})).send().await;
            drop(permit);
            match r {
                Ok(r) => (r.status().as_u16(), header(&r, "x-correlation-id")),
                Err(_) => (0, None),
            }
        }));
    }
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for s in sends {
        match s.await.expect("send task") {
            (202, Some(id)) => {
                accepted.insert(id);
            }
            _ => refused += 1,
        }
    }
    let ingest = started.elapsed();
    assert_eq!(
        refused, 0,
        "every request through a healthy fleet is accepted"
    );
    assert_eq!(accepted.len(), REQUESTS, "correlation IDs are unique");

    // Long-poll a sample through the sidecar: any bridge answers, whichever
    // worker finished the request.
    for id in accepted.iter().take(20) {
        let r = c
            .get(format!("{envoy}/api/v1/response/{id}"))
            .header("prefer", "wait=30")
            .send()
            .await
            .expect("long-poll");
        assert_eq!(r.status().as_u16(), 200, "{id}");
        assert_eq!(
            r.json::<Value>().await.expect("JSON")["status"],
            "COMPLETED"
        );
    }

    // Every accepted request completes; read through bridge B.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut pending: Vec<String> = accepted.iter().cloned().collect();
    let mut records = std::collections::BTreeMap::new();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} requests never completed",
            pending.len()
        );
        let mut still = Vec::new();
        for id in pending {
            let r = c
                .get(format!("http://127.0.0.1:{bridge_b}/api/v1/response/{id}"))
                .send()
                .await
                .expect("response");
            let body: Value = r.json().await.expect("JSON");
            match body["status"].as_str() {
                Some("COMPLETED") => {
                    records.insert(id, body);
                }
                Some("FAILED") | Some("TIMEOUT") => panic!("{id} ended {body}"),
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let drained = started.elapsed();

    // Wait-mode answers: the final result, produced by some worker.
    let answers = waiters.await.expect("waiters");
    let waited_ok = answers
        .iter()
        .filter(|(status, applied, body)| {
            *status == 200 && applied.as_deref() == Some("wait=30") && body["status"] == "COMPLETED"
        })
        .count();
    assert_eq!(
        waited_ok,
        WAIT_MODE_REQUESTS,
        "wait-mode answers: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );

    // None twice: exactly one record per request, and final records stay put.
    let keys = redis_keys(&format!("fleet-{run}:result:*")).len();
    assert_eq!(
        keys,
        REQUESTS + WAIT_MODE_REQUESTS,
        "one result record per accepted request"
    );
    for (id, before) in records.iter().take(50) {
        let after: Value = c
            .get(format!("{bridge_a}/api/v1/response/{id}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        assert_eq!(&after, before, "a final record never changes");
    }

    // The SIGKILLed worker died holding messages: they were redelivered.
    let redelivered = records
        .values()
        .filter(|r| r["attempts"].as_u64().unwrap_or(0) >= 2)
        .count();
    assert!(
        redelivered > 0,
        "the killed worker held no messages: the test proved nothing"
    );

    let stats = stack.app_stats().await;
    let served = stats["served"].as_u64().unwrap_or(0) as usize;
    let expected = REQUESTS + WAIT_MODE_REQUESTS;
    assert!(served >= expected, "the app served {served} of {expected}");
    println!(
        "fleet: {REQUESTS} accepted through Envoy in {:.1} s ({:.0}/s), all completed after {:.1} s; \
         {WAIT_MODE_REQUESTS}/{WAIT_MODE_REQUESTS} wait-mode answers; {redelivered} redelivered after \
         the SIGKILL; backend calls {served} ({} repeated, allowed by at-least-once); app max concurrency {}",
        ingest.as_secs_f64(),
        REQUESTS as f64 / ingest.as_secs_f64(),
        drained.as_secs_f64(),
        served - expected,
        stats["max_in_flight"],
    );
    redis_delete(&format!("fleet-{run}*"));
}

/// Clients that hang up while the bridge is accepting their request must
/// leave nothing half-done: every PENDING record has its message, and every
/// message was counted as accepted (acceptance runs in its own task).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_hanging_up_mid_submit_leave_no_half_accepted_requests() {
    if !server_available("redis", "127.0.0.1:6379") {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut stack = redis_stack("hangup", &run);
    let queue = format!("fleet-{run}-requests");
    stack.set("OPENHQM_MONITORING__LOG_LEVEL", "WARN");
    stack.start_bridge().await;
    // No worker: what was accepted stays in the stream to be counted.
    let url = format!("{}/api/v1/submit", stack.bridge_url());
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3000u64 {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let url = url.clone();
        tasks.spawn(async move {
            // Timeouts from 0.2 to 2 ms: many requests are dropped while the
            // bridge is between its store write and its publish.
            let impatient = reqwest::Client::builder()
                .timeout(Duration::from_micros(200 + (i * 617) % 1800))
                .build()
                .unwrap();
            let _ = impatient
                .post(&url)
                .json(&json!({"payload": {"n": i}}))
                .send()
                .await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    let xlen: usize = String::from_utf8_lossy(
        &std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "XLEN", &queue])
            .output()
            .expect("redis-cli")
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let records = redis_keys(&format!("fleet-{run}:result:*")).len();
    let metrics = client()
        .get(format!("{}/metrics", stack.bridge_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let accepted: usize = metrics
        .lines()
        .find(|l| l.starts_with("openhqm_requests_accepted_total{source=\"api\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap());
    println!(
        "hang-ups: {records} records, {xlen} messages, {accepted} counted as accepted of 3000 sent"
    );
    redis_delete(&format!("fleet-{run}*"));
    assert!(xlen > 0, "some requests got through");
    assert_eq!(
        records, xlen,
        "a PENDING record without its message, or the reverse"
    );
    assert_eq!(accepted, xlen, "a message published but not counted");
}
