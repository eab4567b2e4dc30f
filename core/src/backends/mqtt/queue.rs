//! The MQTT queue: one topic per queue on an MQTT 3.1.1 broker (tested with
//! Mosquitto 2.0), through `rumqttc`.
//!
//! How the lease-shaped contract maps onto MQTT:
//!
//! - Publish is QoS 1, and returns only when the broker's PUBACK for that very
//!   publish has arrived (rumqttc's `publish` only queues the packet, so the
//!   event loop task pairs each PUBACK with its caller).
//! - Consumers share the load through `$share/<group>/<topic>` at QoS 1, with a
//!   persistent session (clean session off) and manual acks: the broker
//!   forgets a message only when the worker acks it, and a consumer that
//!   disconnects gets its unacked messages again when its client id returns.
//! - MQTT 3.1.1 has no message properties, so each payload is framed:
//!   `OHQM1\n`, one JSON line (id, attributes, key, attempts made before),
//!   `\n`, then the body bytes. Payloads without the prefix come from other
//!   systems and are delivered as they are.
//! - MQTT has no delay, no lease and no depth: nack republishes a copy after
//!   the delay and acks the original once the copy is at the broker; a
//!   delivered message stays with its consumer until acked or disconnected,
//!   so leases never run out; depth is unsupported.
//!
//! All queues opened from one backend share one connection (one client id,
//! one session); closing any of them closes that connection.

use crate::config::QueueConfig;
use crate::queue::{
    Capabilities, Delivery, Depth, Message, Queue, QueueBackend, QueueError, Receipt, Support,
};
use async_trait::async_trait;
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet,
    Publish, QoS, Request, SubscribeReasonCode,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Marks a payload framed by OpenHQM (see the module docs).
const MAGIC: &[u8] = b"OHQM1\n";
/// How long publish waits for its PUBACK and receive for its SUBACK.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The MQTT protocol's largest packet. rumqttc's default (10 KiB) would turn
/// a large message into a dropped connection, and a large foreign message
/// into a reconnect loop, since the broker resends it on every reconnect.
const MQTT_MAX_PACKET: usize = 268_435_455;
/// Room left in a packet for the topic and the frame header.
const HEADER_ROOM: usize = 64 * 1024;
/// Requests (publishes, acks) queued for the event loop before callers wait.
const REQUEST_CHANNEL: usize = 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(30);

const DEFAULT_HOST: &str = "localhost";
const DEFAULT_PORT: u16 = 1883;
const DEFAULT_GROUP: &str = "openhqm-workers";

/// Where and as whom to connect. `client_id` is the consumer's identity: the
/// broker keeps its session (subscriptions and unacked messages) under it.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// Shared-subscription group: the worker fleet splits each queue's load.
    pub shared_group: String,
    pub max_message_bytes: usize,
}

impl MqttSettings {
    /// Anonymous, default group, 16 MiB bodies.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        MqttSettings {
            host: host.into(),
            port,
            username: None,
            password: None,
            client_id: client_id.into(),
            shared_group: DEFAULT_GROUP.into(),
            max_message_bytes: 16 * 1024 * 1024,
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        let invalid = |m: String| Err(QueueError::Invalid(m));
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return invalid(format!(
                "`queue.mqtt_broker_host` {:?} is not a host name",
                self.host
            ));
        }
        if self.port == 0 {
            return invalid("`queue.mqtt_broker_port` must be 1-65535".into());
        }
        if self.client_id.is_empty()
            || self.client_id.contains('\0')
            || self.client_id.len() > u16::MAX as usize
        {
            return invalid(
                "`queue.mqtt_client_id` must be 1-65535 bytes without NUL characters".into(),
            );
        }
        let group = &self.shared_group;
        if group.is_empty() || group.contains(['/', '+', '#', '\0']) {
            return invalid(format!(
                "`queue.mqtt_shared_group` {group:?} must be non-empty and free of '/', '+' and '#'"
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return invalid(
                "`queue.mqtt_password` is set without `queue.mqtt_username` (MQTT 3.1.1 needs both)"
                    .into(),
            );
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MQTT_MAX_PACKET - HEADER_ROOM {
            return invalid(format!(
                "`queue.max_message_bytes` must be 1-{} for MQTT",
                MQTT_MAX_PACKET - HEADER_ROOM
            ));
        }
        Ok(())
    }
}

/// `openhqm-<hostname>-<pid>`: stable per pod when the worker runs as PID 1
/// in a StatefulSet pod. Further backends built from config in the same
/// process get `-2`, `-3`, ... so they do not take over each other's session.
fn default_client_id() -> String {
    static BUILT: AtomicU64 = AtomicU64::new(0);
    let base = format!(
        "openhqm-{}-{}",
        crate::backends::identity::host_name_token(),
        std::process::id()
    );
    match BUILT.fetch_add(1, Ordering::Relaxed) {
        0 => base,
        n => format!("{base}-{}", n + 1),
    }
}

/// The MQTT backend. Connects lazily, on the first `open`.
pub struct MqttBackend {
    settings: Arc<MqttSettings>,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl MqttBackend {
    /// From `queue.mqtt_*`; checks the settings without connecting.
    pub fn from_config(config: &QueueConfig) -> Result<MqttBackend, QueueError> {
        match config.mqtt_qos {
            None | Some(1) => {}
            Some(q) => {
                return Err(QueueError::Invalid(format!(
                    "`queue.mqtt_qos` is {q}, but OpenHQM needs QoS 1: QoS 0 loses messages, \
                     and QoS 2 cannot be combined with manual acks here; set it to 1 or remove it"
                )))
            }
        }
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let settings = MqttSettings {
            host: non_empty(&config.mqtt_broker_host).unwrap_or_else(|| DEFAULT_HOST.into()),
            port: config.mqtt_broker_port.unwrap_or(DEFAULT_PORT),
            username: non_empty(&config.mqtt_username),
            password: config.mqtt_password.clone(),
            client_id: non_empty(&config.mqtt_client_id).unwrap_or_else(default_client_id),
            shared_group: config.mqtt_shared_group.clone(),
            max_message_bytes: config.max_message_bytes,
        };
        MqttBackend::new(settings)
    }

    /// From explicit settings (tests, custom binaries); does not connect.
    pub fn new(settings: MqttSettings) -> Result<MqttBackend, QueueError> {
        settings.validate()?;
        Ok(MqttBackend {
            settings: Arc::new(settings),
            connection: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &MqttSettings {
        &self.settings
    }

    /// The client id of the persistent session that keeps a publish-only
    /// queue's messages (see [`Queue::retain_unconsumed`]); read such a queue
    /// (the DLQ) as this identity to get everything it kept.
    pub fn keeper_client_id(shared_group: &str, topic: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        format!("openhqm-keep-{}-{}", clean(shared_group), clean(topic))
    }

    /// The live connection, or a new one when there is none (or it closed).
    fn connection(&self) -> Arc<Connection> {
        let mut slot = lock(&self.connection);
        if let Some(c) = slot.as_ref() {
            if !c.shared.is_closed() {
                return c.clone();
            }
        }
        let c = Connection::start(&self.settings);
        *slot = Some(c.clone());
        c
    }
}

#[async_trait]
impl QueueBackend for MqttBackend {
    fn kind(&self) -> &str {
        "mqtt"
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        validate_topic(name)?;
        Ok(Arc::new(MqttQueue {
            name: name.to_string(),
            settings: self.settings.clone(),
            filter: format!("$share/{}/{name}", self.settings.shared_group),
            max_message_bytes: self.settings.max_message_bytes,
            conn: self.connection(),
        }))
    }
}

fn validate_topic(name: &str) -> Result<(), QueueError> {
    if name.is_empty() {
        return Err(QueueError::Invalid("queue name is empty".into()));
    }
    if name.contains(['+', '#', '\0']) || name.starts_with('$') {
        return Err(QueueError::Invalid(format!(
            "queue name {name:?} is not a valid MQTT topic (no '+', '#', NUL, or leading '$')"
        )));
    }
    if name.len() > HEADER_ROOM / 2 {
        return Err(QueueError::Invalid(format!(
            "queue name is {} bytes; MQTT topics here must be under {}",
            name.len(),
            HEADER_ROOM / 2
        )));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the queue: the state stays consistent
    // because every critical section is synchronous and short.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(m: impl Into<String>) -> QueueError {
    QueueError::Unavailable(m.into())
}

// ---------------------------------------------------------------------------
// Framing

#[derive(Serialize)]
struct HeaderOut<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    /// Deliveries made before this copy was published.
    attempts: u32,
}

#[derive(Deserialize)]
struct HeaderIn {
    id: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    attempts: u32,
}

fn encode(message: &Message, attempts_before: u32) -> Result<Vec<u8>, QueueError> {
    let header = serde_json::to_vec(&HeaderOut {
        id: &message.id,
        attributes: &message.attributes,
        key: message.key.as_deref(),
        attempts: attempts_before,
    })
    .map_err(|e| QueueError::Invalid(format!("cannot encode the message header: {e}")))?;
    let mut out = Vec::with_capacity(MAGIC.len() + header.len() + 1 + message.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header);
    out.push(b'\n');
    out.extend_from_slice(&message.body);
    Ok(out)
}

/// The message and the attempts made before this copy, or `None` when the
/// payload is not an OpenHQM frame (a foreign message).
fn decode(payload: &[u8]) -> Option<(Message, u32)> {
    let rest = payload.strip_prefix(MAGIC)?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    let header: HeaderIn = serde_json::from_slice(&rest[..newline]).ok()?;
    let body = rest.get(newline + 1..).unwrap_or_default().to_vec();
    Some((
        Message {
            id: header.id,
            body,
            attributes: header.attributes,
            key: header.key,
        },
        header.attempts,
    ))
}

/// A delivery's message and attempt number. Foreign payloads are delivered
/// as they are, under `foreign_id`; the dup flag marks a redelivery.
fn unpack(publish: &Publish, foreign_id: &str) -> (Message, u32) {
    let redelivery = u32::from(publish.dup);
    match decode(&publish.payload) {
        Some((message, before)) => (message, before.saturating_add(1).saturating_add(redelivery)),
        None => (
            Message {
                id: foreign_id.to_string(),
                body: publish.payload.to_vec(),
                ..Default::default()
            },
            1 + redelivery,
        ),
    }
}

// ---------------------------------------------------------------------------
// The connection: one rumqttc client and the task that polls its event loop.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Never connected yet: requests wait for the first connection.
    Connecting,
    Up,
    /// Lost; the task is reconnecting. Operations fail fast meanwhile.
    Down(String),
    Closed(String),
}

type Waiter = oneshot::Sender<Result<(), QueueError>>;

/// A request handed to rumqttc whose packet id is not known yet. rumqttc
/// sends requests in order and reports each with its packet id, so the
/// front of this queue is always the next request it reports.
enum Expect {
    Publish(Waiter),
    Subscribe {
        topic: String,
        waiter: Option<Waiter>,
    },
}

struct SubWait {
    topic: String,
    waiter: Option<Waiter>,
}

struct Subscription {
    filter: String,
    confirmed: bool,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Publish>,
    notify: Arc<Notify>,
}

/// A delivery not yet acked: what `ack` sends back to the broker.
struct Held {
    publish: Publish,
    /// The generated id of a foreign message, kept for nack's copy.
    foreign_id: String,
    attempt: u32,
    /// A nack is republishing it; no other settlement is allowed.
    settling: bool,
}

#[derive(Default)]
struct State {
    expected: VecDeque<Expect>,
    publishes: HashMap<u16, Waiter>,
    /// A publish rumqttc holds back until its packet id is free again.
    collided: Option<(u16, Waiter)>,
    subscribing: HashMap<u16, SubWait>,
    subscriptions: HashMap<String, Subscription>,
    inboxes: HashMap<String, Inbox>,
    held: HashMap<String, Held>,
    /// Nacks past their delay, republishing now; close waits for them.
    nacks_running: usize,
}

struct Shared {
    state: Mutex<State>,
    link: watch::Sender<Link>,
    closing: watch::Sender<bool>,
    registry_key: String,
    generation: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    fn is_closed(&self) -> bool {
        *self.closing.borrow() || matches!(self.link(), Link::Closed(_))
    }

    /// Fails fast when the broker is known to be unreachable.
    fn usable(&self) -> Result<(), QueueError> {
        match self.link() {
            Link::Up | Link::Connecting => Ok(()),
            Link::Down(why) => Err(unavailable(format!("MQTT broker unreachable: {why}"))),
            Link::Closed(why) => Err(unavailable(format!("MQTT connection closed: {why}"))),
        }
    }

    fn busy(&self) -> bool {
        let st = self.lock();
        !st.expected.is_empty()
            || !st.publishes.is_empty()
            || st.collided.is_some()
            || st.nacks_running > 0
    }

    fn inbox_notify(&self, topic: &str) -> Arc<Notify> {
        self.lock()
            .inboxes
            .entry(topic.to_string())
            .or_default()
            .notify
            .clone()
    }

    /// Publish one frame at QoS 1 and wait for the broker's PUBACK.
    async fn publish_frame(
        &self,
        client: &AsyncClient,
        topic: &str,
        frame: Vec<u8>,
    ) -> Result<(), QueueError> {
        let deadline = Instant::now() + OP_TIMEOUT;
        let (tx, rx) = oneshot::channel();
        let mut waiter = Some(tx);
        let mut payload = Some(frame);
        loop {
            {
                let mut st = self.lock();
                self.usable()?;
                if let (Some(w), Some(p)) = (waiter.take(), payload.take()) {
                    // Queued under the lock, so `expected` keeps rumqttc's order.
                    st.expected.push_back(Expect::Publish(w));
                    match client.try_publish(topic, QoS::AtLeastOnce, false, p) {
                        Ok(()) => break,
                        Err(e) => {
                            if let Some(Expect::Publish(w)) = st.expected.pop_back() {
                                waiter = Some(w);
                            }
                            if let ClientError::TryRequest(Request::Publish(p))
                            | ClientError::Request(Request::Publish(p)) = e
                            {
                                payload = Some(p.payload.to_vec());
                            }
                        }
                    }
                }
                if waiter.is_none() || payload.is_none() {
                    return Err(unavailable("the MQTT client refused the publish"));
                }
            }
            if Instant::now() >= deadline {
                return Err(unavailable("the MQTT client's request queue stayed full"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable(
                "the connection ended before the broker acknowledged the publish",
            )),
            Err(_) => Err(unavailable(format!(
                "the MQTT broker did not acknowledge the publish within {OP_TIMEOUT:?}"
            ))),
        }
    }

    /// Subscribe to `filter` unless this session already has it, and wait
    /// for the SUBACK: messages published after that reach this consumer.
    async fn ensure_subscribed(
        &self,
        client: &AsyncClient,
        topic: &str,
        filter: &str,
    ) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            self.usable()?;
            if st.subscriptions.get(topic).is_some_and(|s| s.confirmed) {
                return Ok(());
            }
            st.expected.push_back(Expect::Subscribe {
                topic: topic.to_string(),
                waiter: Some(tx),
            });
            if client.try_subscribe(filter, QoS::AtLeastOnce).is_err() {
                st.expected.pop_back();
                return Err(unavailable("the MQTT client's request queue is full"));
            }
            st.subscriptions
                .entry(topic.to_string())
                .or_insert_with(|| Subscription {
                    filter: filter.to_string(),
                    confirmed: false,
                });
        }
        match tokio::time::timeout(OP_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable(
                "the connection ended before the broker confirmed the subscription",
            )),
            Err(_) => Err(unavailable(format!(
                "the MQTT broker did not confirm the subscription to {filter} within {OP_TIMEOUT:?}"
            ))),
        }
    }

    /// Take up to `max` waiting messages of `topic` as deliveries.
    fn take(&self, topic: &str, max: usize) -> Vec<Delivery> {
        let mut st = self.lock();
        let State { inboxes, held, .. } = &mut *st;
        let Some(inbox) = inboxes.get_mut(topic) else {
            return Vec::new();
        };
        let n = max.min(inbox.queue.len());
        inbox
            .queue
            .drain(..n)
            .map(|publish| {
                let foreign_id = uuid::Uuid::new_v4().to_string();
                let (message, attempt) = unpack(&publish, &foreign_id);
                let receipt = uuid::Uuid::new_v4().simple().to_string();
                held.insert(
                    receipt.clone(),
                    Held {
                        publish,
                        foreign_id,
                        attempt,
                        settling: false,
                    },
                );
                Delivery {
                    message,
                    attempt,
                    receipt: Receipt(receipt),
                }
            })
            .collect()
    }

    /// Send the PUBACK for a held delivery and forget it.
    async fn ack_held(
        &self,
        client: &AsyncClient,
        receipt: &str,
        by_nack: bool,
    ) -> Result<(), QueueError> {
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            {
                let mut st = self.lock();
                let Some(held) = st.held.get(receipt) else {
                    return Err(QueueError::LeaseLost);
                };
                if held.settling != by_nack {
                    return Err(QueueError::LeaseLost);
                }
                // Under the lock: a connection reset cannot slip in between.
                if client.try_ack(&held.publish).is_ok() {
                    st.held.remove(receipt);
                    return Ok(());
                }
                self.usable()?;
            }
            if Instant::now() >= deadline {
                return Err(unavailable("the MQTT client's request queue stayed full"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Handle one event of the event loop.
    fn on_event(&self, client: &AsyncClient, event: Event) -> Step {
        let mut st = self.lock();
        self.on_event_locked(&mut st, client, event)
    }

    fn on_event_locked(&self, st: &mut State, client: &AsyncClient, event: Event) -> Step {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if !ack.session_present {
                    // The broker has no session for us (first connection, or
                    // it lost it): subscribe again to everything we consume.
                    resubscribe_all(st, client);
                }
                self.link.send_replace(Link::Up);
                Step::Connected
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let inbox = st.inboxes.entry(publish.topic.clone()).or_default();
                inbox.queue.push_back(publish);
                inbox.notify.notify_waiters();
                Step::Continue
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(w) = st.publishes.remove(&ack.pkid) {
                    let _ = w.send(Ok(()));
                }
                Step::Continue
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(sub) = st.subscribing.remove(&ack.pkid) {
                    let result = match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(QoS::AtLeastOnce))
                        | Some(SubscribeReasonCode::Success(QoS::ExactlyOnce)) => Ok(()),
                        Some(SubscribeReasonCode::Success(QoS::AtMostOnce)) => Err(unavailable(
                            "the MQTT broker granted only QoS 0 (check its max_qos); OpenHQM needs QoS 1",
                        )),
                        _ => Err(unavailable(
                            "the MQTT broker refused the subscription (check its ACL, and that shared subscriptions are enabled)",
                        )),
                    };
                    match (&result, st.subscriptions.get_mut(&sub.topic)) {
                        (Ok(()), Some(s)) => s.confirmed = true,
                        (Err(_), Some(s)) if !s.confirmed => {
                            st.subscriptions.remove(&sub.topic);
                        }
                        _ => {}
                    }
                    if let Err(e) = &result {
                        tracing::warn!(topic = %sub.topic, error = %e, "MQTT subscription failed");
                    }
                    if let Some(w) = sub.waiter {
                        let _ = w.send(result);
                    }
                }
                Step::Continue
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if st.collided.as_ref().is_some_and(|(p, _)| *p == pkid) {
                    if let Some((_, w)) = st.collided.take() {
                        st.publishes.insert(pkid, w);
                    }
                    return Step::Continue;
                }
                match st.expected.pop_front() {
                    Some(Expect::Publish(w)) => match st.publishes.insert(pkid, w) {
                        None => Step::Continue,
                        Some(_) => Step::Desync(format!("packet id {pkid} reused while in flight")),
                    },
                    other => Step::Desync(format!(
                        "publish {pkid} sent while {} was expected",
                        expect_name(other.as_ref())
                    )),
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => match st.expected.pop_front() {
                Some(Expect::Publish(w)) if st.collided.is_none() => {
                    st.collided = Some((pkid, w));
                    Step::Continue
                }
                other => Step::Desync(format!(
                    "publish {pkid} held back while {} was expected",
                    expect_name(other.as_ref())
                )),
            },
            Event::Outgoing(Outgoing::Subscribe(pkid)) => match st.expected.pop_front() {
                Some(Expect::Subscribe { topic, waiter }) => {
                    st.subscribing.insert(pkid, SubWait { topic, waiter });
                    Step::Continue
                }
                other => Step::Desync(format!(
                    "subscribe {pkid} sent while {} was expected",
                    expect_name(other.as_ref())
                )),
            },
            Event::Outgoing(Outgoing::Disconnect) => Step::Stop,
            _ => Step::Continue,
        }
    }

    /// After a lost connection: settle everything rumqttc had in flight.
    ///
    /// Publishes and subscriptions in flight are failed (the callers get
    /// `Unavailable`) and removed from rumqttc's retransmit queue, so every
    /// packet id rumqttc reports afterwards belongs to a request made after
    /// this point. Messages received but not acked are forgotten: the broker
    /// sends them again, as redeliveries, when the session reconnects.
    fn reset(&self, client: &AsyncClient, eventloop: &mut EventLoop, why: &str) {
        let mut st = self.lock();
        // Events rumqttc produced before the failure (PUBACKs among them).
        let leftover: Vec<Event> = eventloop.state.events.drain(..).collect();
        for event in leftover {
            let _ = self.on_event_locked(&mut st, client, event);
        }
        // Move requests still in rumqttc's channel into `pending`, then drop
        // ours: with the state lock held, no new request can slip in between.
        eventloop.clean();
        eventloop.pending.retain(|r| {
            !matches!(
                r,
                Request::Publish(_) | Request::Subscribe(_) | Request::PubAck(_)
            )
        });
        eventloop.state.collision = None;
        let failed = || Err(unavailable(format!("MQTT connection lost: {why}")));
        for e in st.expected.drain(..) {
            let w = match e {
                Expect::Publish(w) => Some(w),
                Expect::Subscribe { waiter, .. } => waiter,
            };
            if let Some(w) = w {
                let _ = w.send(failed());
            }
        }
        for (_, w) in st.publishes.drain() {
            let _ = w.send(failed());
        }
        if let Some((_, w)) = st.collided.take() {
            let _ = w.send(failed());
        }
        for (_, sub) in st.subscribing.drain() {
            if let Some(w) = sub.waiter {
                let _ = w.send(failed());
            }
        }
        st.subscriptions.retain(|_, s| s.confirmed);
        for inbox in st.inboxes.values_mut() {
            inbox.queue.clear();
        }
        st.held.clear();
        if !matches!(self.link(), Link::Closed(_)) {
            self.link.send_replace(Link::Down(why.to_string()));
        }
    }

    /// The task is gone: nothing in flight can complete any more.
    fn abandon(&self, why: &str) {
        let mut st = self.lock();
        self.link.send_replace(Link::Closed(why.to_string()));
        st.expected.clear();
        st.publishes.clear();
        st.collided = None;
        st.subscribing.clear();
        for inbox in st.inboxes.values_mut() {
            inbox.queue.clear();
            inbox.notify.notify_waiters();
        }
        st.held.clear();
    }
}

fn expect_name(e: Option<&Expect>) -> &'static str {
    match e {
        Some(Expect::Publish(_)) => "a publish",
        Some(Expect::Subscribe { .. }) => "a subscribe",
        None => "nothing",
    }
}

fn resubscribe_all(st: &mut State, client: &AsyncClient) {
    let State {
        subscriptions,
        expected,
        ..
    } = st;
    subscriptions.retain(|topic, sub| {
        sub.confirmed = false;
        expected.push_back(Expect::Subscribe {
            topic: topic.clone(),
            waiter: None,
        });
        if client.try_subscribe(&sub.filter, QoS::AtLeastOnce).is_ok() {
            true
        } else {
            // The next receive on this queue subscribes again.
            expected.pop_back();
            false
        }
    });
}

enum Step {
    Continue,
    Connected,
    Stop,
    /// A connection error.
    Lost(String),
    /// rumqttc reported a packet we cannot pair with its request.
    Desync(String),
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        other => other.to_string(),
    }
}

/// Client ids live in this process, newest generation first: a backend
/// whose client id was taken over by a newer one in this process stops
/// instead of taking the session back (the broker closes the older of two
/// connections with the same client id, and both would reconnect forever).
fn registry() -> &'static Mutex<HashMap<String, u64>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

struct Connection {
    shared: Arc<Shared>,
    client: AsyncClient,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Connection {
    fn start(settings: &MqttSettings) -> Arc<Connection> {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
        if let Some(user) = &settings.username {
            options.set_credentials(user, settings.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
        let registry_key = format!("{}:{}/{}", settings.host, settings.port, settings.client_id);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        lock(registry()).insert(registry_key.clone(), generation);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            link: watch::Sender::new(Link::Connecting),
            closing: watch::Sender::new(false),
            registry_key,
            generation,
        });
        let task = tokio::spawn(run(shared.clone(), client.clone(), eventloop));
        Arc::new(Connection {
            shared,
            client,
            task: Mutex::new(Some(task)),
        })
    }

    /// Let what is in flight finish, DISCONNECT, stop the task. Unacked
    /// messages stay in the broker's session for this client id.
    async fn close(&self) -> Result<(), QueueError> {
        let Some(mut task) = lock(&self.task).take() else {
            return Ok(());
        };
        self.shared.closing.send_replace(true);
        let deadline = Instant::now() + OP_TIMEOUT;
        while self.shared.busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.shared.usable().is_ok() {
            let _ = tokio::time::timeout_at(deadline, self.client.disconnect()).await;
        }
        if tokio::time::timeout(OP_TIMEOUT, &mut task).await.is_err() {
            task.abort();
        }
        self.shared.abandon("closed");
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropped without close: end the connection as a crash would (no
        // DISCONNECT), leaving unacked messages in the session.
        if let Some(task) = lock(&self.task).take() {
            task.abort();
            self.shared.closing.send_replace(true);
            self.shared.abandon("dropped");
        }
        let mut registry = lock(registry());
        if registry.get(&self.shared.registry_key) == Some(&self.shared.generation) {
            registry.remove(&self.shared.registry_key);
        }
    }
}

/// Poll the event loop for as long as the connection lives, reconnecting
/// with backoff after errors.
async fn run(shared: Arc<Shared>, client: AsyncClient, mut eventloop: EventLoop) {
    let mut backoff = MIN_BACKOFF;
    let mut closing = shared.closing.subscribe();
    loop {
        let step = match eventloop.poll().await {
            Ok(event) => shared.on_event(&client, event),
            Err(e) => Step::Lost(describe(&e)),
        };
        match step {
            Step::Continue => {}
            Step::Connected => {
                backoff = MIN_BACKOFF;
                tracing::debug!(key = %shared.registry_key, "MQTT connected");
            }
            Step::Stop => {
                shared.reset(&client, &mut eventloop, "closed");
                break;
            }
            Step::Desync(why) => {
                tracing::error!(%why, "MQTT client state out of step; reconnecting");
                shared.reset(&client, &mut eventloop, &why);
            }
            Step::Lost(why) => {
                shared.reset(&client, &mut eventloop, &why);
                if *closing.borrow() {
                    break;
                }
                let current = lock(registry()).get(&shared.registry_key).copied();
                if current != Some(shared.generation) {
                    tracing::warn!(
                        key = %shared.registry_key,
                        "another connection in this process took over this MQTT client id; stopping this one"
                    );
                    shared.abandon("superseded by a newer connection with the same client id");
                    return;
                }
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closing.wait_for(|c| *c) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    shared.abandon("closed");
}

// ---------------------------------------------------------------------------
// One queue: a topic on the shared connection.

pub struct MqttQueue {
    name: String,
    settings: Arc<MqttSettings>,
    filter: String,
    max_message_bytes: usize,
    conn: Arc<Connection>,
}

impl MqttQueue {
    fn closing(&self) -> Result<(), QueueError> {
        if *self.conn.shared.closing.borrow() {
            Err(unavailable("MQTT connection closed"))
        } else {
            Ok(())
        }
    }

    fn check_frame(&self, frame: &[u8]) -> Result<(), QueueError> {
        if frame.len() > MQTT_MAX_PACKET - 4 - self.name.len() {
            return Err(QueueError::Invalid(
                "message attributes too large for an MQTT packet".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for MqttQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_nack: Support::Emulated(
                "MQTT has no delayed delivery: after the delay the message is republished \
                 (attempt + 1) and the original is acked once the broker has the copy; until \
                 then the original stays unacked in this consumer's session",
            ),
            lease_extension: Support::Emulated(
                "MQTT has no leases: a delivered message stays with its consumer until acked or \
                 until the consumer disconnects, so a slow message is never redelivered while its \
                 worker lives; extend_lease only checks the receipt",
            ),
            depth: Support::Unsupported(
                "MQTT has no queue depth: the broker does not report how many messages wait for a \
                 topic; scale MQTT workers on another signal",
            ),
            redelivery_to_other_consumer: Support::Unsupported(
                "Mosquitto keeps a dead consumer's unacked messages in its persistent session and \
                 redelivers them only when the same client id reconnects; give workers stable \
                 client ids (StatefulSet pod names)",
            ),
            browse: Support::Unsupported(
                "MQTT has no way to read a queue without consuming it: a subscriber takes \
                 messages, it cannot look at them and leave them; drain the DLQ topic with a \
                 subscriber instead",
            ),
        }
    }

    async fn publish(&self, message: Message) -> Result<(), QueueError> {
        if message.body.len() > self.max_message_bytes {
            return Err(QueueError::TooLarge {
                size: message.body.len(),
                max: self.max_message_bytes,
            });
        }
        self.closing()?;
        let frame = encode(&message, 0)?;
        self.check_frame(&frame)?;
        self.conn
            .shared
            .publish_frame(&self.conn.client, &self.name, frame)
            .await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        _lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        self.closing()?;
        let shared = &self.conn.shared;
        shared
            .ensure_subscribed(&self.conn.client, &self.name, &self.filter)
            .await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let notify = shared.inbox_notify(&self.name);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a message arriving in between
            // still wakes us.
            notified.as_mut().enable();
            let batch = shared.take(&self.name, max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            if let Link::Closed(why) = shared.link() {
                return Err(unavailable(format!("MQTT connection closed: {why}")));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Say so when the broker is gone, rather than "no messages".
                shared.usable()?;
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.conn
            .shared
            .ack_held(&self.conn.client, &receipt.0, false)
            .await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.closing()?;
        let shared = self.conn.shared.clone();
        let frame = {
            let mut st = shared.lock();
            let held = match st.held.get_mut(&receipt.0) {
                Some(h) if !h.settling => h,
                _ => return Err(QueueError::LeaseLost),
            };
            let (message, _) = unpack(&held.publish, &held.foreign_id);
            let frame = encode(&message, held.attempt)?;
            self.check_frame(&frame)?;
            held.settling = true;
            if delay.is_zero() {
                // Due now: counted at once, so a close right after this
                // (a worker handing messages back at shutdown) waits for it.
                st.nacks_running += 1;
            }
            frame
        };
        // In the background, so the worker's slot is free during the delay;
        // the original stays unacked meanwhile, so a crash loses nothing.
        let client = self.conn.client.clone();
        let topic = self.name.clone();
        let receipt = receipt.0.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                let mut closing = shared.closing.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // Closing: the original stays in the session, redelivered later.
                    _ = closing.wait_for(|c| *c) => return,
                }
                let mut st = shared.lock();
                // Checked under the lock close's wait also takes: either close
                // sees this nack running, or this nack sees close.
                if *shared.closing.borrow() {
                    return;
                }
                st.nacks_running += 1;
            }
            let mut backoff = MIN_BACKOFF;
            loop {
                if !shared.lock().held.contains_key(&receipt) {
                    // The connection was reset: the broker redelivers the original.
                    break;
                }
                match shared.publish_frame(&client, &topic, frame.clone()).await {
                    Ok(()) => {
                        if let Err(e) = shared.ack_held(&client, &receipt, true).await {
                            tracing::warn!(error = %e, "MQTT nack: copy published, original not acked (it will be redelivered)");
                        }
                        break;
                    }
                    Err(e) => {
                        if shared.is_closed() {
                            break;
                        }
                        tracing::warn!(error = %e, "MQTT nack: republish failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            shared.lock().nacks_running -= 1;
        });
        Ok(())
    }

    async fn extend_lease(&self, receipt: &Receipt, _lease: Duration) -> Result<(), QueueError> {
        // Nothing to extend: the broker never takes a delivered message back
        // from a live consumer. Only a held receipt is still ours.
        match self.conn.shared.lock().held.get(&receipt.0) {
            Some(h) if !h.settling => Ok(()),
            _ => Err(QueueError::LeaseLost),
        }
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        Err(QueueError::Unsupported(
            "MQTT brokers do not report queue depth",
        ))
    }

    async fn close(&self) -> Result<(), QueueError> {
        self.conn.close().await
    }

    /// Ready when the connection to the broker is up (MQTT has no depth to
    /// ask for).
    async fn ping(&self) -> Result<(), QueueError> {
        self.closing()?;
        self.conn.shared.usable()
    }

    /// A persistent member of the queue's shared group, the "keeper", joins
    /// once and disconnects: the broker then queues messages for its session
    /// while no other member is connected, instead of dropping them. Anything
    /// the keeper's session already held stays unacked in it.
    async fn retain_unconsumed(&self) -> Result<(), QueueError> {
        let mut settings = (*self.settings).clone();
        settings.client_id = MqttBackend::keeper_client_id(&settings.shared_group, &self.name);
        let keeper = MqttBackend::new(settings)?;
        let queue = keeper.open(&self.name).await?;
        // max 0: subscribe (and wait for the SUBACK) without taking anything.
        queue.receive(0, Duration::ZERO, Duration::ZERO).await?;
        queue.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: Vec<u8>, dup: bool) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, payload);
        p.dup = dup;
        p
    }

    #[test]
    fn frames_round_trip_binary_bodies_and_attempts() {
        let mut m = Message {
            id: "id-1".into(),
            body: (0..=255u8).chain([b'\n', 0, b'\n']).collect(),
            key: Some("k".into()),
            ..Default::default()
        };
        m.attributes.insert("a\nb".into(), "✓\n".into());
        let frame = encode(&m, 2).expect("encode");
        assert!(frame.starts_with(MAGIC));
        let (back, before) = decode(&frame).expect("decode");
        assert_eq!((back, before), (m.clone(), 2));
        assert_eq!(unpack(&framed(frame.clone(), false), "x").1, 3);
        assert_eq!(unpack(&framed(frame, true), "x").1, 4);
    }

    #[test]
    fn empty_body_round_trips() {
        let m = Message {
            id: "e".into(),
            ..Default::default()
        };
        let (back, _) = decode(&encode(&m, 0).expect("encode")).expect("decode");
        assert_eq!(back, m);
    }

    #[test]
    fn foreign_and_malformed_payloads_are_delivered_as_they_are() {
        for payload in [
            b"{\"order\": 7}".to_vec(),
            vec![0xff, 0, 1],
            b"OHQM1\nnot json\nbody".to_vec(),
            b"OHQM1\n{\"id\":\"x\"}".to_vec(),
            Vec::new(),
        ] {
            let (m, attempt) = unpack(&framed(payload.clone(), false), "gen-id");
            assert_eq!(m.body, payload);
            assert_eq!(m.id, "gen-id");
            assert_eq!(attempt, 1);
            assert_eq!(unpack(&framed(payload, true), "gen-id").1, 2);
        }
    }

    #[test]
    fn config_requires_qos_1() {
        let mut c = QueueConfig::default();
        for bad in [0u8, 2, 7] {
            c.mqtt_qos = Some(bad);
            match MqttBackend::from_config(&c) {
                Err(QueueError::Invalid(m)) => assert!(m.contains("mqtt_qos"), "{m}"),
                other => panic!("qos {bad}: {:?}", other.map(|_| ())),
            }
        }
        c.mqtt_qos = Some(1);
        assert!(MqttBackend::from_config(&c).is_ok());
        c.mqtt_qos = None;
        let b = MqttBackend::from_config(&c).expect("defaults");
        assert_eq!(b.settings().host, "localhost");
        assert_eq!(b.settings().port, 1883);
        assert_eq!(b.settings().shared_group, "openhqm-workers");
        assert!(b.settings().client_id.starts_with("openhqm-"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let invalid = |c: QueueConfig| match MqttBackend::from_config(&c) {
            Err(QueueError::Invalid(m)) => m,
            other => panic!("accepted: {:?}", other.map(|_| ())),
        };
        let m = invalid(QueueConfig {
            mqtt_shared_group: "a/b".into(),
            ..Default::default()
        });
        assert!(m.contains("mqtt_shared_group"), "{m}");
        let m = invalid(QueueConfig {
            mqtt_password: Some("secret".into()),
            ..Default::default()
        });
        assert!(m.contains("mqtt_username") && !m.contains("secret"), "{m}");
        let m = invalid(QueueConfig {
            mqtt_broker_port: Some(0),
            ..Default::default()
        });
        assert!(m.contains("mqtt_broker_port"), "{m}");
    }

    #[test]
    fn queue_names_must_be_plain_topics() {
        for bad in ["", "a/+", "a/#", "$SYS/x"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic("openhqm-requests").is_ok());
        assert!(validate_topic("tenant/a/requests").is_ok());
    }
}
