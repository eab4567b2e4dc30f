//! The transparent sidecar: routes in wait mode give an unmodified client
//! the app's own answer through the queue; Prefer chooses per request; a
//! route's failure policy decides what happens when the bridge is away.
//! Uses the shipped envoy/envoy.yaml: `POST /orders` async (reject),
//! `GET /orders/{id}` in wait mode (passthrough).

use openhqm_e2e::{await_result, client, header, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Create an order through the queue; its id as the app gave it.
async fn create_order(stack: &Stack) -> String {
    let r = client()
        .post(format!("{}/orders", stack.envoy_url()))
        .json(&json!({"item": "lamp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = header(&r, "location").unwrap();
    let result = await_result(&stack.envoy_url(), &location, Duration::from_secs(30)).await;
    result["result"]["id"]
        .as_str()
        .expect("order id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_gives_the_client_the_apps_own_answer() {
    let mut stack = Stack::new("sidecar-wait");
    stack.start_all(10).await;
    let c = client();
    let id = create_order(&stack).await;

    // Found: the app's 200 and JSON, through the queue.
    let r = c
        .get(format!("{}/orders/{id}", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "x-served-by").as_deref(),
        Some("openhqm-sample-app"),
        "the app's own headers"
    );
    assert!(
        header(&r, "x-correlation-id").is_some(),
        "it went through the queue"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["order"], json!({"item": "lamp"}));

    // Not found: the app's own 404, its body and its header, unchanged.
    let r = c
        .get(format!("{}/orders/ord-missing", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        header(&r, "x-sample-note").as_deref(),
        Some("unknown-order")
    );
    assert!(header(&r, "x-correlation-id").is_some());
    assert!(
        header(&r, "x-openhqm-result").is_none(),
        "OpenHQM's marker stays internal"
    );
    assert_eq!(r.text().await.unwrap(), "no order ord-missing\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_longer_than_the_limit_falls_back_to_202_and_prefer_chooses_per_request() {
    let mut stack = Stack::new("sidecar-prefer");
    stack.start_all(10).await;
    let c = client();
    let id = create_order(&stack).await;

    // The app takes 3 s; the client asked to wait 1 s: 202 + Location.
    let started = Instant::now();
    let r = c
        .get(format!("{}/orders/{id}", stack.envoy_url()))
        .header("prefer", "wait=1")
        .header("x-sample-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(header(&r, "preference-applied").as_deref(), Some("wait=1"));
    let location = header(&r, "location").expect("Location to fetch the answer later");
    let result = await_result(&stack.envoy_url(), &location, Duration::from_secs(30)).await;
    assert_eq!(result["status"], "COMPLETED");
    assert_eq!(result["status_code"], 200);

    // respond-async on a wait route: 202 at once.
    let started = Instant::now();
    let r = c
        .get(format!("{}/orders/{id}", stack.envoy_url()))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        header(&r, "preference-applied").as_deref(),
        Some("respond-async")
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Prefer: wait on the async route: the final answer if it comes in time.
    let r = c
        .post(format!("{}/orders", stack.envoy_url()))
        .header("prefer", "wait=10")
        .json(&json!({"item": "desk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "the app's own 201 Created");
    assert_eq!(header(&r, "preference-applied").as_deref(), Some("wait=10"));
    assert!(
        header(&r, "location").unwrap().starts_with("/orders/ord-"),
        "the app's own Location"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_outage_follows_each_routes_failure_policy() {
    let mut stack = Stack::new("sidecar-policy");
    stack.start_app(10).await;
    let bridge = stack.start_bridge().await;
    stack.start_worker();
    stack.start_envoy().await;
    let c = client();
    let id = create_order(&stack).await;
    stack.proc(bridge).kill();

    // order-lookup is `passthrough`: served by the app synchronously.
    let r = c
        .get(format!("{}/orders/{id}", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "x-served-by").as_deref(),
        Some("openhqm-sample-app")
    );
    assert!(
        header(&r, "x-correlation-id").is_none(),
        "not through the queue"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["order"],
        json!({"item": "lamp"})
    );

    // create-order is `reject`: 503 + Retry-After, nothing reaches the app.
    let served = stack.app_stats().await["served"].as_u64().unwrap();
    let r = c
        .post(format!("{}/orders", stack.envoy_url()))
        .json(&json!({"item": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(stack.app_stats().await["served"].as_u64().unwrap(), served);

    // The passthrough is counted in Envoy's stats.
    let stats = c
        .get(format!(
            "http://127.0.0.1:{}/stats?filter=openhqm_filter_passthrough_total",
            stack.admin_port
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count: u64 = stats
        .lines()
        .find_map(|l| {
            l.split_once("openhqm_filter_passthrough_total: ")
                .map(|(_, n)| n.trim().parse().unwrap_or(0))
        })
        .unwrap_or_else(|| panic!("no passthrough stat in {stats:?}"));
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_repeats_return_the_first_request_and_enqueue_nothing() {
    let mut stack = Stack::new("sidecar-idem");
    stack.start_all(10).await;
    let c = client();
    let post = |key: &'static str, body: Value| {
        let c = c.clone();
        let url = format!("{}/orders", stack.envoy_url());
        async move {
            c.post(url)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let first = post("order-123", json!({"item": "chair"})).await;
    assert_eq!(first.status().as_u16(), 202);
    let id = header(&first, "x-correlation-id").unwrap();
    let location = header(&first, "location").unwrap();
    await_result(&stack.envoy_url(), &location, Duration::from_secs(30)).await;

    // The same request again: the first one's ID, nothing new enqueued.
    let again = post("order-123", json!({"item": "chair"})).await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(
        header(&again, "x-correlation-id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        header(&again, "location").as_deref(),
        Some(location.as_str())
    );
    assert_eq!(
        again.json::<Value>().await.unwrap()["correlation_id"],
        json!(id)
    );

    // The same key with a different request: 422.
    let other = post("order-123", json!({"item": "table"})).await;
    assert_eq!(other.status().as_u16(), 422);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"],
        "idempotency_key_mismatch"
    );

    // The submit API honours the header too.
    let submit = |key: &'static str, n: u32| {
        let c = c.clone();
        let url = format!("{}/api/v1/submit", stack.bridge_url());
        async move {
            c.post(url)
                .header("idempotency-key", key)
                .json(&json!({"payload": {"n": n}, "metadata": {"endpoint": "orders"}}))
                .send()
                .await
                .unwrap()
        }
    };
    let a = submit("job-1", 1).await;
    let b = submit("job-1", 1).await;
    assert_eq!(
        header(&a, "x-correlation-id"),
        header(&b, "x-correlation-id")
    );
    assert_eq!(header(&b, "idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(submit("job-1", 2).await.status().as_u16(), 422);
    let location = header(&a, "location").unwrap();
    await_result(&stack.bridge_url(), &location, Duration::from_secs(30)).await;

    // Exactly one order per key reached the app.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.app_stats().await["served"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_correlation_ids_and_header_policy() {
    use openhqm_core::queue::QueueBackend;
    let mut stack = Stack::new("sidecar-headers");
    stack.filter_config_extra =
        r#""correlation_header": "x-request-id", "trust_inbound_correlation": true,
        "headers": {"deny": ["authorization", "cookie"]},"#
            .to_string();
    // No worker yet: the queued message shows what would reach the backend.
    stack.start_app(10).await;
    stack.start_bridge().await;
    stack.start_envoy().await;
    let inbound = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
    let r = client()
        .post(format!("{}/orders", stack.envoy_url()))
        .header("x-request-id", inbound)
        .header("authorization", "Bearer do-not-forward")
        .header("cookie", "session=secret")
        .header("x-tenant", "acme")
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        header(&r, "x-request-id").as_deref(),
        Some(inbound),
        "the client's own ID, echoed"
    );
    let location = header(&r, "location").unwrap();
    assert_eq!(location, format!("/api/v1/response/{inbound}"));

    let backend =
        openhqm_core::backends::embedded::EmbeddedBackend::open(&stack.data_dir(), 1 << 20)
            .unwrap();
    let queue = backend.open("openhqm-requests").await.unwrap();
    let mut got = queue
        .receive(1, Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap();
    let delivery = got.pop().expect("the captured request is queued");
    let envelope = openhqm_core::envelope::Envelope::decode(&delivery.message.body).unwrap();
    assert_eq!(envelope.correlation_id, inbound);
    let names: Vec<String> = envelope
        .request
        .unwrap()
        .headers
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert!(names.contains(&"x-tenant".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "authorization" || n == "cookie"),
        "denied headers travelled: {names:?}"
    );
    queue.nack(&delivery.receipt, Duration::ZERO).await.unwrap();

    // Now a worker: the request completes under the client's ID.
    stack.start_worker();
    let result = await_result(&stack.envoy_url(), &location, Duration::from_secs(30)).await;
    assert_eq!(result["correlation_id"], inbound);
    assert_eq!(result["status"], "COMPLETED");

    // A repeat of the same client ID is refused, not enqueued twice.
    let again = client()
        .post(format!("{}/orders", stack.envoy_url()))
        .header("x-request-id", inbound)
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "duplicate_correlation_id"
    );
}
