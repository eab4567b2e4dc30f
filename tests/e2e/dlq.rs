//! Dead-letter tooling end to end: a request that failed for good is listed
//! by `openhqm-bridge dlq list --json` (straight on the broker), replayed
//! through the bridge's admin API once the backend is fixed, and completes.

use openhqm_e2e::{await_result, bin, client, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "e2e-admin-token";
const RESULT_WAIT: Duration = Duration::from_secs(60);

/// Run `openhqm-bridge <args>` with the stack's configuration; its exit
/// code and output.
fn bridge_cli(stack: &mut Stack, args: &[&str]) -> (i32, String) {
    let mut p = stack.spawn("bridge-cli", &bin("openhqm-bridge"), args, &[]);
    let status = p
        .wait_exit(Duration::from_secs(30))
        .expect("the CLI finishes");
    (status.code().unwrap_or(-1), p.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_replayed_and_completes() {
    let mut stack = Stack::new("dlq");
    stack.set("OPENHQM_WORKER__MAX_RETRIES", "1");
    stack.set("OPENHQM_SERVER__ADMIN_TOKEN", TOKEN);
    stack.start_app(10).await;
    stack.start_bridge().await;
    stack.start_worker();
    let c = client();
    let app = stack.app_url();
    let bridge = stack.bridge_url();

    // The backend fails every request: FAILED after 2 attempts, dead-lettered.
    let r = c
        .put(format!("{app}/control"))
        .json(&json!({"fail_rate": 1.0}))
        .send()
        .await
        .expect("PUT /control");
    assert!(r.status().is_success());
    let r = c
        .post(format!("{bridge}/api/v1/submit"))
        .json(&json!({"payload": {"order": 7}, "metadata": {"endpoint": "orders"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 202);
    let id = r.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let result = await_result(&bridge, &location, RESULT_WAIT).await;
    assert_eq!(result["status"], "FAILED", "{result}");
    assert_eq!(result["attempts"], 2);

    // The CLI lists it, straight from the broker. The worker dead-letters
    // right after storing FAILED: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (code, out) = bridge_cli(&mut stack, &["dlq", "list", "--json"]);
        assert_eq!(code, 0, "{out}");
        let listed: Value = serde_json::from_str(out.trim()).expect("--json prints JSON");
        if listed["count"] == 1 || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["count"], 1, "{listed}");
    let dead = &listed["items"][0];
    assert_eq!(dead["message_id"], id.as_str());
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["source_queue"], "openhqm-requests");
    assert!(
        dead["error"].as_str().unwrap().contains("HTTP 500"),
        "{dead}"
    );
    let position = dead["position"].as_str().unwrap().to_string();

    // The human listing and usage errors.
    let (code, out) = bridge_cli(&mut stack, &["dlq", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("POSITION") && out.contains(&id), "{out}");
    let (code, out) = bridge_cli(&mut stack, &["dlq", "purge"]);
    assert_eq!(code, 2, "purge without --yes is a usage error: {out}");
    let (code, out) = bridge_cli(&mut stack, &["dlq", "replay", "999999999"]);
    assert_eq!(code, 1, "{out}");

    // The admin API needs the token.
    let replay = format!("{bridge}/admin/dlq/{position}/replay");
    let r = c.post(&replay).send().await.expect("replay");
    assert_eq!(r.status().as_u16(), 401);

    // Fix the backend, replay: the request completes.
    c.put(format!("{app}/control"))
        .json(&json!({"fail_rate": 0.0}))
        .send()
        .await
        .expect("PUT /control");
    let r = c
        .post(&replay)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["message_id"], id.as_str());

    let deadline = Instant::now() + RESULT_WAIT;
    let status = loop {
        let s: Value = c
            .get(format!("{bridge}/api/v1/status/{id}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        if s["status"] == "COMPLETED" || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let result = await_result(&bridge, &location, RESULT_WAIT).await;
    assert_eq!(result["status_code"], 201, "{result}");

    // The DLQ is empty now.
    let r = c
        .get(format!("{bridge}/admin/dlq"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list");
    let listed: Value = r.json().await.expect("JSON");
    assert_eq!(listed["count"], 0, "{listed}");
    let (code, out) = bridge_cli(&mut stack, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["count"],
        0
    );
}
