//! The conformance suite on MQTT, against the Mosquitto at
//! `OPENHQM_TEST_MQTT_ADDR` (default 127.0.0.1:1883),
//! plus the MQTT-specific behaviour: foreign payloads, nack emulation,
//! reconnects, and Mosquitto's handling of a dead shared-subscription member.
//!
//! Every run uses its own client-id suffix and shared group, so runs (and
//! other users of the broker) do not collide; within a run the same identity
//! maps to the same client id, i.e. the same persistent session.

use openhqm_core::backends::mqtt::{MqttBackend, MqttSettings};
use openhqm_core::conformance::{server_addr, server_available, Options, QueueFactory};
use openhqm_core::queue::{Delivery, Message, Queue, QueueBackend, QueueError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The shared broker, `host:port`.
fn addr() -> String {
    server_addr("OPENHQM_TEST_MQTT_ADDR", "127.0.0.1:1883")
}

fn host_port() -> (String, u16) {
    let addr = addr();
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(1883)),
        None => (addr, 1883),
    }
}
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..10].to_string())
}

fn client_id(identity: &str) -> String {
    format!("ohqm-test-{identity}-{}", run_id())
}

fn settings(identity: &str) -> MqttSettings {
    let (host, port) = host_port();
    let mut s = MqttSettings::new(host, port, client_id(identity));
    s.shared_group = format!("ohqm-test-{}", run_id());
    s.max_message_bytes = MAX_MESSAGE_BYTES;
    s
}

fn backend(identity: &str) -> MqttBackend {
    MqttBackend::new(settings(identity)).expect("mqtt settings")
}

fn factory() -> QueueFactory {
    Arc::new(|identity| {
        let b = backend(identity);
        Box::pin(async move { Arc::new(b) as Arc<dyn QueueBackend> })
    })
}

fn options() -> Options {
    Options {
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..Options::default()
    }
}

openhqm_core::queue_conformance_tests!(
    server_available("mosquitto", &addr()),
    factory(),
    options()
);

// ---------------------------------------------------------------------------
// Helpers

fn topic(case: &str) -> String {
    format!(
        "mqtt-{case}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn message(id: &str, body: &[u8]) -> Message {
    let mut m = Message {
        id: id.into(),
        body: body.to_vec(),
        ..Default::default()
    };
    m.attributes.insert("origin".into(), "mqtt-test".into());
    m
}

/// Open `name` and subscribe (an empty receive), as a worker does.
async fn consumer(identity: &str, name: &str) -> (MqttBackend, Arc<dyn Queue>) {
    let b = backend(identity);
    let q = b.open(name).await.expect("open");
    let got = q
        .receive(1, Duration::from_millis(100), Duration::from_secs(1))
        .await
        .expect("subscribe");
    assert!(got.is_empty());
    (b, q)
}

/// One delivery within `patience`; `Unavailable` (a reconnect in progress)
/// is retried.
async fn receive_one(q: &dyn Queue, patience: Duration) -> Delivery {
    let deadline = Instant::now() + patience;
    loop {
        match q
            .receive(1, Duration::from_millis(300), Duration::from_secs(1))
            .await
        {
            Ok(mut got) => {
                if let Some(d) = got.pop() {
                    return d;
                }
            }
            Err(QueueError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("receive: {e}"),
        }
        assert!(Instant::now() < deadline, "no message within {patience:?}");
    }
}

async fn nothing_for(q: &dyn Queue, wait: Duration) -> Vec<String> {
    q.receive(10, wait, Duration::from_secs(1))
        .await
        .expect("receive")
        .into_iter()
        .map(|d| d.message.id)
        .collect()
}

/// A bare MQTT 3.1.1 client on a TCP socket: the "other system" publishing
/// plain payloads, without anything OpenHQM-specific.
struct RawClient(TcpStream);

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn mqtt_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl RawClient {
    async fn connect(client_id: &str, clean_session: bool) -> RawClient {
        let mut s = TcpStream::connect(addr()).await.expect("connect");
        let mut body = mqtt_string("MQTT");
        body.extend([4, if clean_session { 0x02 } else { 0 }, 0, 30]);
        body.extend(mqtt_string(client_id));
        s.write_all(&packet(0x10, &body)).await.expect("CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!((connack[0], connack[3]), (0x20, 0), "connection refused");
        RawClient(s)
    }

    async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) {
        let mut body = mqtt_string(topic);
        body.extend([0, 1]);
        body.extend_from_slice(payload);
        self.0
            .write_all(&packet(0x32, &body))
            .await
            .expect("PUBLISH");
        let mut puback = [0u8; 4];
        self.0.read_exact(&mut puback).await.expect("PUBACK");
        assert_eq!(puback, [0x40, 2, 0, 1]);
    }

    async fn disconnect(mut self) {
        let _ = self.0.write_all(&[0xE0, 0]).await;
    }
}

/// A TCP relay to the broker whose connections can be cut, to play a
/// network failure between a worker and the broker.
struct Relay {
    addr: SocketAddr,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let p = pipes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(self::addr()).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                p.lock().expect("pipes").push(pipe);
            }
        });
        Relay {
            addr,
            pipes,
            _accept: accept,
        }
    }

    /// Drop every relayed connection at once, both directions.
    fn cut(&self) {
        for pipe in self.pipes.lock().expect("pipes").drain(..) {
            pipe.abort();
        }
    }
}

fn broker_up() -> bool {
    server_available("mosquitto", &addr())
}

// ---------------------------------------------------------------------------
// MQTT-specific cases

/// Pattern 2: a queue fed by another system. Its payloads carry no OpenHQM
/// frame and are delivered byte for byte, with a generated id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_payloads_are_delivered_as_they_are() {
    if !broker_up() {
        return;
    }
    let name = topic("foreign");
    let (_b, q) = consumer("foreign-consumer", &name).await;
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"order": 42, "note": "from another system"}"#.to_vec(),
        vec![0, 0xff, b'\n', 0x80, 7],
        b"OHQM1\nnot a header\nstill delivered whole".to_vec(),
    ];
    let mut raw = RawClient::connect(&client_id("foreign-producer"), true).await;
    for p in &payloads {
        raw.publish_qos1(&name, p).await;
    }
    raw.disconnect().await;
    let mut ids = Vec::new();
    for expected in &payloads {
        let d = receive_one(q.as_ref(), Duration::from_secs(10)).await;
        assert_eq!(&d.message.body, expected, "payload changed");
        assert_eq!(d.attempt, 1);
        assert!(d.message.attributes.is_empty());
        assert!(!d.message.id.is_empty());
        ids.push(d.message.id.clone());
        q.ack(&d.receipt).await.expect("ack");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), payloads.len(), "generated ids are distinct");
}

/// A nacked foreign message comes back framed, with its generated id kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_foreign_message_keeps_its_id_and_body() {
    if !broker_up() {
        return;
    }
    let name = topic("foreign-nack");
    let (_b, q) = consumer("foreign-nack-consumer", &name).await;
    let mut raw = RawClient::connect(&client_id("foreign-nack-producer"), true).await;
    raw.publish_qos1(&name, b"plain bytes").await;
    raw.disconnect().await;
    let first = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    q.nack(&first.receipt, Duration::ZERO).await.expect("nack");
    let again = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    assert_eq!(again.message.id, first.message.id);
    assert_eq!(again.message.body, b"plain bytes");
    assert_eq!(again.attempt, 2);
    q.ack(&again.receipt).await.expect("ack");
}

/// MQTT has no delay: the backend holds the nacked message and republishes
/// it after the delay as attempt 2, then acks the original at the broker
/// (a restarted consumer with the same session gets nothing back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_after_the_delay_as_attempt_2() {
    if !broker_up() {
        return;
    }
    let name = topic("nack");
    let (b, q) = consumer("nack-delay-consumer", &name).await;
    q.publish(message("m1", b"retry me"))
        .await
        .expect("publish");
    let d = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    assert_eq!(d.attempt, 1);
    let delay = Duration::from_millis(1500);
    let nacked = Instant::now();
    q.nack(&d.receipt, delay).await.expect("nack");
    assert!(
        nacked.elapsed() < Duration::from_millis(500),
        "nack returns at once; the delay runs in the background"
    );
    assert!(
        matches!(q.ack(&d.receipt).await, Err(QueueError::LeaseLost)),
        "a nacked receipt cannot be acked any more"
    );
    let early = nothing_for(q.as_ref(), Duration::from_millis(1200)).await;
    assert!(early.is_empty(), "redelivered before the delay: {early:?}");
    let again = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    assert!(nacked.elapsed() >= delay, "after {:?}", nacked.elapsed());
    assert_eq!(again.message.id, "m1");
    assert_eq!(again.message.body, b"retry me");
    assert_eq!(again.message.attributes["origin"], "mqtt-test");
    assert_eq!(again.attempt, 2);
    q.ack(&again.receipt).await.expect("ack");
    q.close().await.expect("close");
    drop(b);

    let (_b2, q2) = consumer("nack-delay-consumer", &name).await;
    let left = nothing_for(q2.as_ref(), Duration::from_secs(2)).await;
    assert!(left.is_empty(), "the original was not acked: {left:?}");
}

/// Many concurrent publishes on one connection, beyond rumqttc's 100 packets
/// in flight (packet ids wrap and collide): each returns only once the
/// broker has its own message, and every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_are_each_confirmed() {
    if !broker_up() {
        return;
    }
    const N: usize = 600;
    let name = topic("concurrent");
    let (_c, q) = consumer("concurrent-consumer", &name).await;
    let producer = Arc::new(backend("concurrent-producer"));
    let p = producer.open(&name).await.expect("open");
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.publish(message(&format!("m{i}"), &[7; 2048])).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("publish");
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} arrived",
            seen.len()
        );
        for d in q
            .receive(50, Duration::from_millis(500), Duration::from_secs(1))
            .await
            .expect("receive")
        {
            assert!(seen.insert(d.message.id.clone()), "{} twice", d.message.id);
            q.ack(&d.receipt).await.expect("ack");
        }
    }
    assert!(nothing_for(q.as_ref(), Duration::from_millis(500))
        .await
        .is_empty());
}

/// A worker's shutdown hand-back: nack without delay, then close at once.
/// Close waits for the copy to reach the broker, so another worker gets it
/// now instead of it waiting in the closed worker's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_then_close_hands_the_message_to_another_worker() {
    if !broker_up() {
        return;
    }
    let name = topic("handback");
    let (_b, stopping) = consumer("handback-stopping", &name).await;
    let (_o, other) = consumer("handback-other", &name).await;
    stopping
        .publish(message("m1", b"x"))
        .await
        .expect("publish");
    // Subscribed first, so Mosquitto's round robin gives it m1 (and the
    // copy goes to the next member).
    let d = receive_one(stopping.as_ref(), Duration::from_secs(10)).await;
    stopping
        .nack(&d.receipt, Duration::ZERO)
        .await
        .expect("nack");
    stopping.close().await.expect("close");
    let again = receive_one(other.as_ref(), Duration::from_secs(10)).await;
    assert_eq!((again.message.id.as_str(), again.attempt), ("m1", 2));
    other.ack(&again.receipt).await.expect("ack");
}

/// What Mosquitto does with a dead shared-subscription member's unacked
/// message: it stays in that member's session (no other member gets it)
/// and comes back, flagged as a redelivery, when the same client id does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_members_message_waits_for_its_client_id() {
    if !broker_up() {
        return;
    }
    let name = topic("dead-member");
    let producer = backend("dead-member-producer");
    let p = producer.open(&name).await.expect("open");
    {
        // Subscribed first, so Mosquitto's round robin gives it the message.
        let (_victim, vq) = consumer("dead-member-victim", &name).await;
        let (_other, oq) = consumer("dead-member-other", &name).await;
        p.publish(message("m1", b"x")).await.expect("publish");
        let d = receive_one(vq.as_ref(), Duration::from_secs(10)).await;
        assert_eq!((d.message.id.as_str(), d.attempt), ("m1", 1));
        drop((vq, _victim)); // dies holding m1: no ack, no DISCONNECT
        let got = nothing_for(oq.as_ref(), Duration::from_secs(3)).await;
        assert!(
            got.is_empty(),
            "Mosquitto now hands a dead member's message to another member \
             ({got:?}): set redelivery_to_other_consumer to Native"
        );
    }
    let back = backend("dead-member-victim");
    let bq = back.open(&name).await.expect("open");
    let d = receive_one(bq.as_ref(), Duration::from_secs(10)).await;
    assert_eq!((d.message.id.as_str(), d.attempt), ("m1", 2));
    bq.ack(&d.receipt).await.expect("ack");
}

/// A lost connection: the backend reconnects by itself, the receipts it
/// held are void (LeaseLost) and their messages come back as the next
/// attempt, and publishing works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_network_failure_and_redelivers() {
    if !broker_up() {
        return;
    }
    let relay = Relay::start().await;
    let name = topic("reconnect");
    let mut s = settings("reconnect-consumer");
    s.host = relay.addr.ip().to_string();
    s.port = relay.addr.port();
    let b = MqttBackend::new(s).expect("settings");
    let q = b.open(&name).await.expect("open");
    assert!(q
        .receive(1, Duration::from_millis(100), Duration::from_secs(1))
        .await
        .expect("subscribe")
        .is_empty());
    q.publish(message("m1", b"held")).await.expect("publish");
    let held = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    assert_eq!(held.attempt, 1);

    relay.cut();
    let again = receive_one(q.as_ref(), Duration::from_secs(15)).await;
    assert_eq!(again.message.id, "m1");
    assert_eq!(again.message.body, b"held");
    assert_eq!(again.attempt, 2, "a redelivery after a reconnect");
    assert!(matches!(
        q.ack(&held.receipt).await,
        Err(QueueError::LeaseLost)
    ));
    assert!(matches!(
        q.extend_lease(&held.receipt, Duration::from_secs(1)).await,
        Err(QueueError::LeaseLost)
    ));
    q.ack(&again.receipt).await.expect("ack");

    q.publish(message("m2", b"after")).await.expect("publish");
    let d = receive_one(q.as_ref(), Duration::from_secs(10)).await;
    assert_eq!((d.message.id.as_str(), d.attempt), ("m2", 1));
    q.ack(&d.receipt).await.expect("ack");
    q.close().await.expect("close");
}

/// The broker lost the session (here: another client took the client id
/// with a clean session): the backend subscribes again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_when_the_broker_lost_the_session() {
    if !broker_up() {
        return;
    }
    let name = topic("session-lost");
    let identity = "session-lost-consumer";
    let (_b, q) = consumer(identity, &name).await;
    RawClient::connect(&client_id(identity), true)
        .await
        .disconnect()
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    let got = loop {
        assert!(
            Instant::now() < deadline,
            "no message after the session loss"
        );
        n += 1;
        if q.publish(message(&format!("probe-{n}"), b"p"))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match q
            .receive(1, Duration::from_millis(300), Duration::from_secs(1))
            .await
        {
            Ok(mut got) if !got.is_empty() => break got.remove(0),
            _ => {}
        }
    };
    assert!(got.message.id.starts_with("probe-"));
    q.ack(&got.receipt).await.expect("ack");
}

/// No broker: operations fail with `Unavailable` in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_unavailable_not_a_hang() {
    // Port 9 (discard) on loopback: nothing listens there.
    let b = MqttBackend::new(MqttSettings::new("127.0.0.1", 9, client_id("nobody"))).expect("ok");
    let q = b.open("unreachable").await.expect("open is lazy");
    let started = Instant::now();
    assert!(matches!(
        q.publish(message("m1", b"x")).await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(matches!(
        q.receive(1, Duration::from_millis(100), Duration::from_secs(1))
            .await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(7));
    q.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_is_unsupported() {
    let b = backend("depth-probe");
    let q = b.open("depth-probe").await.expect("open");
    assert!(matches!(q.depth().await, Err(QueueError::Unsupported(_))));
}

/// MQTT drops what nobody subscribed to; `retain_unconsumed` (what the worker
/// does for its DLQ) keeps it in the keeper session, read as the keeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_queue_keeps_messages_published_while_nobody_consumes() {
    if !server_available("mosquitto", &addr()) {
        return;
    }
    let producer = backend("retain-producer");

    // Without a keeper: published, acknowledged by the broker, and gone.
    let dropped = topic("unretained");
    let q = producer.open(&dropped).await.expect("open");
    q.publish(message("lost", b"x")).await.expect("publish");
    let late = backend("retain-late-reader")
        .open(&dropped)
        .await
        .expect("open");
    let got = late
        .receive(10, Duration::from_millis(500), Duration::from_secs(1))
        .await
        .expect("receive");
    assert!(
        got.is_empty(),
        "MQTT brokers drop messages no session subscribed to"
    );

    // With a keeper: everything published while no consumer runs is kept.
    let kept = topic("retained");
    let q = producer.open(&kept).await.expect("open");
    q.retain_unconsumed().await.expect("retain");
    q.retain_unconsumed()
        .await
        .expect("retain again is harmless");
    for i in 0..3 {
        q.publish(message(&format!("m{i}"), format!("body {i}").as_bytes()))
            .await
            .expect("publish");
    }
    let mut keeper_settings = settings("unused");
    keeper_settings.client_id = MqttBackend::keeper_client_id(&keeper_settings.shared_group, &kept);
    let reader = MqttBackend::new(keeper_settings)
        .expect("settings")
        .open(&kept)
        .await
        .expect("open");
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.len() < 3 && Instant::now() < deadline {
        for d in reader
            .receive(10, Duration::from_millis(500), Duration::from_secs(1))
            .await
            .expect("receive")
        {
            ids.push(d.message.id.clone());
            reader.ack(&d.receipt).await.expect("ack");
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        vec!["m0", "m1", "m2"],
        "the keeper session kept every message"
    );
    reader.close().await.expect("close");
}
