//! Bridge and worker running on the MQTT backend (Mosquitto at
//! 127.0.0.1:1883): requests complete, and a dead-lettered message is kept by
//! the DLQ's keeper session even though nothing consumes the DLQ.

use openhqm_core::backends::mqtt::{MqttBackend, MqttSettings};
use openhqm_core::conformance::server_available;
use openhqm_core::queue::{dlq_attr, QueueBackend};
use openhqm_e2e::{await_result, client, Stack};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_worker_on_mqtt_complete_requests_and_keep_dead_letters() {
    if !server_available("mosquitto", "127.0.0.1:1883") {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let group = format!("e2e-{run}");
    let dlq = format!("e2e-{run}-dlq");
    let mut stack = Stack::new("mqtt");
    stack.set("OPENHQM_QUEUE__TYPE", "mqtt");
    stack.set("OPENHQM_QUEUE__MQTT_BROKER_HOST", "127.0.0.1");
    stack.set("OPENHQM_QUEUE__MQTT_SHARED_GROUP", &group);
    stack.set(
        "OPENHQM_QUEUE__REQUEST_QUEUE_NAME",
        &format!("e2e-{run}-requests"),
    );
    stack.set(
        "OPENHQM_QUEUE__RESPONSE_QUEUE_NAME",
        &format!("e2e-{run}-responses"),
    );
    stack.set("OPENHQM_QUEUE__DLQ_NAME", &dlq);
    stack.set("OPENHQM_PROXY__ENABLED", "false");
    // The worker subscribes first: MQTT keeps only what someone subscribed to.
    stack.set(
        "OPENHQM_QUEUE__MQTT_CLIENT_ID",
        &format!("e2e-{run}-worker"),
    );
    stack.start_worker();
    stack.set(
        "OPENHQM_QUEUE__MQTT_CLIENT_ID",
        &format!("e2e-{run}-bridge"),
    );
    stack.start_bridge().await;
    // Give the worker time to join the shared group before publishing.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let c = client();
    let submit = |payload: serde_json::Value| {
        let c = c.clone();
        let url = format!("{}/api/v1/submit", stack.bridge_url());
        async move {
            let r = c
                .post(url)
                .json(&json!({"payload": payload}))
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status().as_u16(), 202);
            let id = r.headers()["x-correlation-id"]
                .to_str()
                .unwrap()
                .to_string();
            (r.headers()["location"].to_str().unwrap().to_string(), id)
        }
    };
    let (location, _) = submit(json!({"operation": "uppercase", "data": "mqtt"})).await;
    let result = await_result(&stack.bridge_url(), &location, Duration::from_secs(30)).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["result"]["output"], "MQTT");

    let (location, failed_id) = submit(json!({"operation": "error"})).await;
    let result = await_result(&stack.bridge_url(), &location, Duration::from_secs(30)).await;
    assert_eq!(result["status"], "FAILED", "{result}");

    // Nobody consumed the DLQ, yet the dead letter is there for its keeper.
    let mut settings = MqttSettings::new(
        "127.0.0.1",
        1883,
        MqttBackend::keeper_client_id(&group, &dlq),
    );
    settings.shared_group = group.clone();
    let reader = MqttBackend::new(settings)
        .unwrap()
        .open(&dlq)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let mut got = reader
            .receive(1, Duration::from_millis(500), Duration::from_secs(5))
            .await
            .unwrap();
        if let Some(d) = got.pop() {
            break d;
        }
        assert!(Instant::now() < deadline, "the dead letter was not kept");
    };
    assert_eq!(dead.message.id, failed_id);
    assert_eq!(dead.message.attributes[dlq_attr::ERROR], "Test error");
    reader.ack(&dead.receipt).await.unwrap();
    reader.close().await.unwrap();
}
