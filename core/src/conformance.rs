//! The conformance suite every queue backend and result store must pass,
//! written once and run against real servers (see `core/tests/`).
//!
//! A backend's test file calls [`queue_conformance_tests!`] (and
//! [`store_conformance_tests!`]) with a factory that builds a *new* backend
//! instance, with its own connections, for a given consumer identity. The
//! suite uses separate instances to play producer, consumer and a consumer
//! that crashes. Cases a backend cannot support (its [`Capabilities`]) are
//! skipped with the reason printed.
//!
//! Custom backends run the same suite: depend on `openhqm-core` with the
//! `conformance` feature and invoke the macros.

use crate::model::{RequestRecord, Status, StoredResponse};
use crate::queue::{
    dead_letter, dlq_attr, Capabilities, Delivery, Message, Queue, QueueBackend, QueueError,
    Stored, Support,
};
use crate::store::{IdempotencyClaim, PutOutcome, ResultStore};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Builds a fresh backend instance acting as consumer `identity` (a Redis
/// consumer name, an MQTT client id, ...). Two calls with the same identity
/// model one consumer that restarted.
pub type QueueFactory = Arc<dyn Fn(&str) -> BoxFuture<Arc<dyn QueueBackend>> + Send + Sync>;
/// Builds a fresh result store instance (its own connections).
pub type StoreFactory = Arc<dyn Fn() -> BoxFuture<Arc<dyn ResultStore>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Options {
    /// The backend's configured `queue.max_message_bytes`.
    pub max_message_bytes: usize,
    /// A short lease, so crash and expiry cases run quickly.
    pub lease: Duration,
    /// How long a case waits for a message that should arrive.
    pub patience: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_bytes: 1024 * 1024,
            lease: Duration::from_secs(1),
            patience: Duration::from_secs(10),
        }
    }
}

/// A test server's `host:port`: the variable `var` when set (a broker
/// elsewhere than on loopback), else `default`.
pub fn server_addr(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Whether a server answers at `addr` (host:port). When it does not, a case
/// is skipped, unless `OPENHQM_REQUIRE_SERVERS` is set (CI), where a missing
/// server is a failure, never a silent skip.
pub fn server_available(name: &str, addr: &str) -> bool {
    let up = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
        .unwrap_or(false);
    if !up {
        if std::env::var_os("OPENHQM_REQUIRE_SERVERS").is_some() {
            panic!("{name} is not reachable at {addr}, and OPENHQM_REQUIRE_SERVERS is set");
        }
        eprintln!("SKIPPED: {name} is not reachable at {addr} (set OPENHQM_REQUIRE_SERVERS=1 to make this a failure)");
    }
    up
}

fn skip_unless(support: Support, case: &str) -> bool {
    match support {
        Support::Unsupported(why) => {
            eprintln!("SKIPPED: {case}: {why}");
            false
        }
        _ => true,
    }
}

fn unique(case: &str) -> String {
    format!(
        "conformance-{case}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn message(id: &str, body: &[u8]) -> Message {
    let mut m = Message {
        id: id.to_string(),
        body: body.to_vec(),
        ..Default::default()
    };
    m.attributes.insert("origin".into(), "conformance ✓".into());
    m.key = Some(format!("key-{id}"));
    m
}

/// Open `name` on a new instance and make sure its consumer side exists
/// (brokers like MQTT drop messages nobody has subscribed to yet).
async fn consumer(
    factory: &QueueFactory,
    identity: &str,
    name: &str,
    opts: &Options,
) -> (Arc<dyn QueueBackend>, Arc<dyn Queue>) {
    let backend = factory(identity).await;
    let q = backend.open(name).await.expect("open queue");
    let got = q
        .receive(1, Duration::from_millis(200), opts.lease)
        .await
        .expect("empty receive");
    assert!(got.is_empty(), "a new queue is empty");
    (backend, q)
}

async fn receive_one(q: &dyn Queue, opts: &Options) -> Delivery {
    let deadline = Instant::now() + opts.patience;
    loop {
        let mut got = q
            .receive(1, Duration::from_millis(500), opts.lease)
            .await
            .expect("receive");
        if let Some(d) = got.pop() {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no message within {:?}",
            opts.patience
        );
    }
}

async fn assert_nothing_for(q: &dyn Queue, wait: Duration, opts: &Options, why: &str) {
    let got = q.receive(10, wait, opts.lease).await.expect("receive");
    assert!(
        got.is_empty(),
        "{why}: got {:?}",
        got.iter().map(|d| &d.message.id).collect::<Vec<_>>()
    );
}

fn caps(q: &dyn Queue) -> Capabilities {
    q.capabilities()
}

/// A publish that returned survives the publisher: its process and
/// connections are gone, and a consumer still receives the message intact.
pub async fn publish_is_durable(factory: &QueueFactory, opts: &Options) {
    let name = unique("durable");
    let (_c, q) = consumer(factory, "durable-consumer", &name, opts).await;
    {
        let producer = factory("durable-producer").await;
        let p = producer.open(&name).await.expect("open");
        p.publish(message("m1", b"payload")).await.expect("publish");
        // No close: the producer "crashes" here.
    }
    let d = receive_one(q.as_ref(), opts).await;
    assert_eq!(d.message.id, "m1");
    assert_eq!(d.message.body, b"payload");
    assert_eq!(
        d.message.attributes.get("origin").map(String::as_str),
        Some("conformance ✓")
    );
    assert_eq!(d.message.key.as_deref(), Some("key-m1"));
    assert_eq!(d.attempt, 1);
    q.ack(&d.receipt).await.expect("ack");
}

/// An acked message is never delivered again, even after its lease would
/// have ended.
pub async fn ack_prevents_redelivery(factory: &QueueFactory, opts: &Options) {
    let name = unique("ack");
    let (_c, q) = consumer(factory, "ack-consumer", &name, opts).await;
    q.publish(message("m1", b"x")).await.expect("publish");
    let d = receive_one(q.as_ref(), opts).await;
    q.ack(&d.receipt).await.expect("ack");
    assert_nothing_for(q.as_ref(), opts.lease * 3, opts, "acked message came back").await;
}

/// `nack(delay)` redelivers, no earlier than the delay, as the next attempt.
pub async fn nack_delay_redelivers_after_the_delay(factory: &QueueFactory, opts: &Options) {
    let name = unique("nack");
    let (_c, q) = consumer(factory, "nack-consumer", &name, opts).await;
    if !skip_unless(caps(q.as_ref()).delayed_nack, "nack with delay") {
        return;
    }
    q.publish(message("m1", b"x")).await.expect("publish");
    let d = receive_one(q.as_ref(), opts).await;
    let delay = Duration::from_millis(1200);
    let nacked_at = Instant::now();
    q.nack(&d.receipt, delay).await.expect("nack");
    let again = receive_one(q.as_ref(), opts).await;
    let waited = nacked_at.elapsed();
    // 50 ms of slack for clock granularity between processes.
    assert!(
        waited + Duration::from_millis(50) >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(again.message.id, "m1");
    assert_eq!(again.message.body, b"x");
    assert_eq!(again.attempt, 2, "the redelivery is the second attempt");
    q.ack(&again.receipt).await.expect("ack");
}

async fn crash_and_redeliver(
    factory: &QueueFactory,
    opts: &Options,
    second_identity: &str,
    case: &str,
) {
    let name = unique(case);
    let (_c2_anchor, _) = consumer(factory, second_identity, &name, opts).await;
    let producer = factory("crash-producer").await;
    let p = producer.open(&name).await.expect("open");
    {
        let (_victim, vq) = consumer(factory, "crash-victim", &name, opts).await;
        p.publish(message("m1", b"unfinished"))
            .await
            .expect("publish");
        let d = receive_one(vq.as_ref(), opts).await;
        assert_eq!(d.message.id, "m1");
        // The victim dies holding the message: no ack, no close.
    }
    let survivor = factory(second_identity).await;
    let sq = survivor.open(&name).await.expect("open");
    let d = receive_one(sq.as_ref(), opts).await;
    assert_eq!(d.message.id, "m1");
    assert_eq!(d.message.body, b"unfinished");
    assert!(
        d.attempt >= 2,
        "a redelivery counts as a new attempt (got {})",
        d.attempt
    );
    sq.ack(&d.receipt).await.expect("ack");
}

/// A message held by a consumer that died is delivered again when that
/// consumer comes back (same identity).
pub async fn crashed_consumer_message_is_redelivered_on_restart(
    factory: &QueueFactory,
    opts: &Options,
) {
    crash_and_redeliver(factory, opts, "crash-victim", "crash-same").await;
}

/// ... and to another consumer, without the dead one coming back.
pub async fn crashed_consumer_message_goes_to_another_consumer(
    factory: &QueueFactory,
    opts: &Options,
) {
    let probe = factory("probe")
        .await
        .open(&unique("probe"))
        .await
        .expect("open");
    if !skip_unless(
        caps(probe.as_ref()).redelivery_to_other_consumer,
        "redelivery to another consumer",
    ) {
        return;
    }
    crash_and_redeliver(factory, opts, "crash-survivor", "crash-other").await;
}

/// Extending the lease keeps a slow message from being redelivered.
pub async fn lease_extension_keeps_the_message(factory: &QueueFactory, opts: &Options) {
    let name = unique("lease");
    let (_a, slow) = consumer(factory, "lease-slow", &name, opts).await;
    if !skip_unless(caps(slow.as_ref()).lease_extension, "lease extension") {
        return;
    }
    let (_b, other) = consumer(factory, "lease-other", &name, opts).await;
    slow.publish(message("m1", b"x")).await.expect("publish");
    let d = receive_one(slow.as_ref(), opts).await;
    let until = Instant::now() + opts.lease * 3;
    while Instant::now() < until {
        tokio::time::sleep(opts.lease / 3).await;
        slow.extend_lease(&d.receipt, opts.lease)
            .await
            .expect("extend");
        assert_nothing_for(
            other.as_ref(),
            Duration::ZERO,
            opts,
            "a leased message went to another consumer",
        )
        .await;
        assert_nothing_for(
            slow.as_ref(),
            Duration::ZERO,
            opts,
            "a leased message was delivered twice",
        )
        .await;
    }
    slow.ack(&d.receipt).await.expect("ack after a long lease");
}

/// After N attempts the message goes to the DLQ with its body, ID and the
/// error; the source queue is left empty.
pub async fn dead_letter_after_n_attempts_keeps_message_and_error(
    factory: &QueueFactory,
    opts: &Options,
) {
    const N: u32 = 3;
    let name = unique("dlq-src");
    let dlq_name = unique("dlq");
    let (_c, q) = consumer(factory, "dlq-consumer", &name, opts).await;
    let (_d, dlq) = consumer(factory, "dlq-reader", &dlq_name, opts).await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    q.publish(message("m1", &body)).await.expect("publish");
    let mut attempts = Vec::new();
    loop {
        let d = receive_one(q.as_ref(), opts).await;
        attempts.push(d.attempt);
        if d.attempt < N {
            q.nack(&d.receipt, Duration::ZERO).await.expect("nack");
        } else {
            dead_letter(
                q.as_ref(),
                dlq.as_ref(),
                &d,
                "gave up: backend answered HTTP 500",
            )
            .await
            .expect("dead-letter");
            break;
        }
    }
    assert_eq!(attempts, vec![1, 2, 3], "each nack counts one attempt");
    let dead = receive_one(dlq.as_ref(), opts).await;
    assert_eq!(dead.message.id, "m1");
    assert_eq!(dead.message.body, body);
    assert_eq!(
        dead.message.attributes[dlq_attr::ERROR],
        "gave up: backend answered HTTP 500"
    );
    assert_eq!(dead.message.attributes[dlq_attr::ATTEMPTS], N.to_string());
    assert_eq!(dead.message.attributes[dlq_attr::SOURCE_QUEUE], name);
    assert_eq!(
        dead.message.attributes["origin"], "conformance ✓",
        "original attributes kept"
    );
    dlq.ack(&dead.receipt).await.expect("ack");
    assert_nothing_for(
        q.as_ref(),
        opts.lease * 2,
        opts,
        "the dead-lettered message stayed in its queue",
    )
    .await;
}

/// Depth counts waiting and leased work.
pub async fn depth_reports_pending_work(factory: &QueueFactory, opts: &Options) {
    let name = unique("depth");
    let (_c, q) = consumer(factory, "depth-consumer", &name, opts).await;
    if !skip_unless(caps(q.as_ref()).depth, "depth") {
        return;
    }
    for i in 0..3 {
        q.publish(message(&format!("m{i}"), b"x"))
            .await
            .expect("publish");
    }
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.in_flight), (3, 0), "{depth:?}");
    let d = receive_one(q.as_ref(), opts).await;
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.in_flight), (2, 1), "{depth:?}");
    q.ack(&d.receipt).await.expect("ack");
    assert_eq!(q.depth().await.expect("depth").total(), 2);
}

/// Bodies are opaque bytes up to the maximum; larger ones are refused with
/// `TooLarge`, not truncated.
pub async fn bodies_are_binary_safe_up_to_the_limit(factory: &QueueFactory, opts: &Options) {
    let name = unique("binary");
    let (_c, q) = consumer(factory, "binary-consumer", &name, opts).await;
    let all: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let max: Vec<u8> = (0..opts.max_message_bytes)
        .map(|i| (i % 251) as u8)
        .collect();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("all-bytes", all),
        ("empty", Vec::new()),
        ("at-the-limit", max),
    ];
    for (id, body) in &bodies {
        q.publish(message(id, body))
            .await
            .unwrap_or_else(|e| panic!("publish {id}: {e}"));
    }
    for _ in 0..bodies.len() {
        let d = receive_one(q.as_ref(), opts).await;
        let expected = &bodies
            .iter()
            .find(|(id, _)| *id == d.message.id)
            .expect("known id")
            .1;
        assert!(
            d.message.body == *expected,
            "{}: body changed in transit",
            d.message.id
        );
        q.ack(&d.receipt).await.expect("ack");
    }
    let too_big = vec![7u8; opts.max_message_bytes + 1];
    match q.publish(message("too-big", &too_big)).await {
        Err(QueueError::TooLarge { size, max }) => {
            assert_eq!(
                (size, max),
                (opts.max_message_bytes + 1, opts.max_message_bytes)
            );
        }
        other => panic!("a body over the limit must be refused with TooLarge, got {other:?}"),
    }
}

/// Close releases the backend cleanly; what was received but not acked
/// before it is delivered again, not lost.
pub async fn close_is_clean_and_loses_nothing(factory: &QueueFactory, opts: &Options) {
    let name = unique("close");
    {
        let (_backend, q) = consumer(factory, "close-consumer", &name, opts).await;
        q.publish(message("m1", b"x")).await.expect("publish");
        let _held = receive_one(q.as_ref(), opts).await;
        q.close().await.expect("close");
    }
    let backend = factory("close-consumer").await;
    let q = backend.open(&name).await.expect("reopen");
    let d = receive_one(q.as_ref(), opts).await;
    assert_eq!(d.message.id, "m1");
    q.ack(&d.receipt).await.expect("ack");
    q.close().await.expect("close");
}

/// Browse the queue, failing the case when a backend whose capabilities say
/// it browses answers `Unsupported` anyway.
async fn browse(q: &dyn Queue, after: Option<&str>, limit: usize) -> Vec<Stored> {
    q.browse(after, limit)
        .await
        .unwrap_or_else(|e| panic!("capabilities().browse is available, but browse failed: {e}"))
}

fn ids(stored: &[Stored]) -> Vec<&str> {
    stored.iter().map(|s| s.message.id.as_str()).collect()
}

/// `browse` lists what is in the queue, oldest first and intact, without
/// receiving it: every message is still delivered afterwards.
pub async fn browse_lists_without_consuming(factory: &QueueFactory, opts: &Options) {
    let name = unique("browse");
    let (_c, q) = consumer(factory, "browse-consumer", &name, opts).await;
    if !skip_unless(caps(q.as_ref()).browse, "browse") {
        return;
    }
    assert!(
        browse(q.as_ref(), None, 10).await.is_empty(),
        "a new queue is empty"
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    let sent = [
        message("m1", b"first"),
        message("m2", &binary),
        message("m3", b""),
    ];
    for m in &sent {
        q.publish(m.clone()).await.expect("publish");
    }
    let listed = browse(q.as_ref(), None, 10).await;
    assert_eq!(ids(&listed), vec!["m1", "m2", "m3"], "oldest first");
    for (got, want) in listed.iter().zip(&sent) {
        assert_eq!(
            got.message, *want,
            "browsed message differs from the published one"
        );
        assert!(!got.position.is_empty(), "every message has a position");
    }
    // A leased message is still in the queue, and is still listed.
    let first = receive_one(q.as_ref(), opts).await;
    assert_eq!(
        ids(&browse(q.as_ref(), None, 10).await),
        vec!["m1", "m2", "m3"]
    );
    q.ack(&first.receipt).await.expect("ack after browsing");
    let mut got = vec![first.message.id.clone()];
    while got.len() < sent.len() {
        let d = receive_one(q.as_ref(), opts).await;
        assert_eq!(d.attempt, 1, "browsing is not a delivery");
        got.push(d.message.id.clone());
        q.ack(&d.receipt).await.expect("ack");
    }
    got.sort();
    assert_eq!(got, vec!["m1", "m2", "m3"]);
    assert!(
        browse(q.as_ref(), None, 10).await.is_empty(),
        "acked messages are gone from the listing"
    );
}

/// `limit` bounds a page, `after` (the last position of a page) starts the
/// next; the pages together list every message once.
pub async fn browse_pages(factory: &QueueFactory, opts: &Options) {
    let name = unique("pages");
    let (_c, q) = consumer(factory, "pages-consumer", &name, opts).await;
    if !skip_unless(caps(q.as_ref()).browse, "browse") {
        return;
    }
    for i in 0..5 {
        q.publish(message(&format!("m{i}"), b"x"))
            .await
            .expect("publish");
    }
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = browse(q.as_ref(), after.as_deref(), 2).await;
        assert!(page.len() <= 2, "a page holds at most `limit` messages");
        let Some(last) = page.last() else { break };
        after = Some(last.position.clone());
        pages.push(ids(&page).into_iter().map(String::from).collect::<Vec<_>>());
        assert!(pages.len() <= 3, "paging does not end: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![vec!["m0", "m1"], vec!["m2", "m3"], vec!["m4"]],
        "pages in order, each message once"
    );
    assert!(
        browse(q.as_ref(), None, 0).await.is_empty(),
        "limit 0 lists nothing"
    );
}

/// `remove` deletes a message for good (it is never delivered), leaves the
/// others alone, and answers `false` for a position that holds nothing.
pub async fn remove_deletes(factory: &QueueFactory, opts: &Options) {
    let name = unique("remove");
    let (_c, q) = consumer(factory, "remove-consumer", &name, opts).await;
    if !skip_unless(caps(q.as_ref()).browse, "browse and remove") {
        return;
    }
    for id in ["m1", "m2", "m3"] {
        q.publish(message(id, b"x")).await.expect("publish");
    }
    let listed = browse(q.as_ref(), None, 10).await;
    assert_eq!(ids(&listed), vec!["m1", "m2", "m3"]);
    let doomed = listed[1].position.clone();
    assert!(q.remove(&doomed).await.expect("remove"), "m2 was there");
    assert!(
        !q.remove(&doomed).await.expect("remove again"),
        "a second remove finds nothing"
    );
    assert_eq!(ids(&browse(q.as_ref(), None, 10).await), vec!["m1", "m3"]);
    // A leased message can be removed too; its holder loses the lease.
    let held = receive_one(q.as_ref(), opts).await;
    let held_position = browse(q.as_ref(), None, 10)
        .await
        .into_iter()
        .find(|s| s.message.id == held.message.id)
        .expect("the leased message is listed")
        .position;
    assert!(q
        .remove(&held_position)
        .await
        .expect("remove a leased message"));
    assert!(
        q.ack(&held.receipt).await.is_err(),
        "the ack of a removed message does not succeed"
    );
    let rest = receive_one(q.as_ref(), opts).await;
    assert_ne!(rest.message.id, "m2", "a removed message was delivered");
    assert_ne!(
        rest.message.id, held.message.id,
        "a removed message was delivered"
    );
    q.ack(&rest.receipt).await.expect("ack");
    assert_nothing_for(
        q.as_ref(),
        opts.lease * 2,
        opts,
        "a removed message came back",
    )
    .await;
    for unknown in ["999999999-0", "999999999", "not a position", ""] {
        assert!(
            !q.remove(unknown)
                .await
                .expect("remove of an unknown position"),
            "`{unknown}` removed something"
        );
    }
}

fn record(id: &str, status: Status) -> RequestRecord {
    let mut r = RequestRecord::pending(id, "2026-11-22T00:00:00.000Z");
    r.status = status;
    if status.is_final() {
        r.response = Some(StoredResponse::new(
            200,
            vec![("content-type".into(), "application/json".into())],
            b"{\"ok\":true}",
        ));
    }
    r
}

/// put/get/delete, and a final record is never replaced.
pub async fn store_keeps_the_first_final_outcome(factory: &StoreFactory) {
    let store = factory().await;
    let id = uuid::Uuid::new_v4().to_string();
    let ttl = Duration::from_secs(60);
    assert!(store.get(&id).await.expect("get").is_none());
    assert_eq!(
        store
            .put(&record(&id, Status::Pending), ttl)
            .await
            .expect("put"),
        PutOutcome::Written
    );
    assert_eq!(
        store
            .put(&record(&id, Status::Processing), ttl)
            .await
            .expect("put"),
        PutOutcome::Written
    );
    let done = record(&id, Status::Completed);
    assert_eq!(
        store.put(&done, ttl).await.expect("put"),
        PutOutcome::Written
    );
    let mut late = record(&id, Status::Failed);
    late.error = Some("late duplicate".into());
    assert_eq!(
        store.put(&late, ttl).await.expect("put"),
        PutOutcome::KeptFinal
    );
    assert_eq!(
        store
            .put(&record(&id, Status::Processing), ttl)
            .await
            .expect("put"),
        PutOutcome::KeptFinal
    );
    assert_eq!(store.get(&id).await.expect("get"), Some(done));
    store.delete(&id).await.expect("delete");
    assert!(store.get(&id).await.expect("get").is_none());
}

/// `create` writes a new request's record once: a second create with the
/// same ID (pending or final) is refused and changes nothing; an expired
/// record no longer counts.
pub async fn store_create_refuses_an_existing_id(factory: &StoreFactory) {
    let store = factory().await;
    let ttl = Duration::from_secs(60);
    let id = uuid::Uuid::new_v4().to_string();
    let first = record(&id, Status::Pending);
    assert!(store.create(&first, ttl).await.expect("create"));
    let mut again = record(&id, Status::Pending);
    again.submitted_at = "2030-01-01T00:00:00.000Z".into();
    assert!(
        !store.create(&again, ttl).await.expect("create"),
        "reused ID accepted"
    );
    assert_eq!(store.get(&id).await.expect("get"), Some(first));
    let done = record(&id, Status::Completed);
    store.put(&done, ttl).await.expect("put");
    assert!(!store.create(&again, ttl).await.expect("create"));
    assert_eq!(store.get(&id).await.expect("get"), Some(done));

    let short = uuid::Uuid::new_v4().to_string();
    assert!(store
        .create(&record(&short, Status::Pending), Duration::from_millis(300))
        .await
        .expect("create"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        store
            .create(&record(&short, Status::Pending), ttl)
            .await
            .expect("create"),
        "an expired record still blocks its ID"
    );
}

/// Records disappear after their TTL.
pub async fn store_records_expire(factory: &StoreFactory) {
    let store = factory().await;
    let id = uuid::Uuid::new_v4().to_string();
    store
        .put(&record(&id, Status::Completed), Duration::from_millis(500))
        .await
        .expect("put");
    assert!(store.get(&id).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        store.get(&id).await.expect("get").is_none(),
        "expired record still visible"
    );
    store.purge_expired().await.expect("purge");
}

/// `wait_final` returns promptly when another instance (another process, in
/// production) stores the final outcome, and returns the current record when
/// the time is up.
pub async fn store_wait_final_wakes_on_completion_elsewhere(factory: &StoreFactory) {
    let waiter = factory().await;
    let writer = factory().await;
    let id = uuid::Uuid::new_v4().to_string();
    let ttl = Duration::from_secs(60);
    writer
        .put(&record(&id, Status::Pending), ttl)
        .await
        .expect("put");

    let started = Instant::now();
    let timed_out = waiter
        .wait_final(&id, Duration::from_millis(300))
        .await
        .expect("wait");
    assert_eq!(timed_out.map(|r| r.status), Some(Status::Pending));
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "returned before the timeout"
    );

    let id2 = id.clone();
    let completer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .put(&record(&id2, Status::Completed), ttl)
            .await
            .expect("put");
        Instant::now()
    });
    let got = waiter
        .wait_final(&id, Duration::from_secs(10))
        .await
        .expect("wait");
    let woke = Instant::now();
    let completed_at = completer.await.expect("completer");
    assert_eq!(got.map(|r| r.status), Some(Status::Completed));
    let lag = woke.saturating_duration_since(completed_at);
    assert!(
        lag < Duration::from_millis(250),
        "woke {lag:?} after the completion"
    );
    assert!(waiter
        .wait_final(&uuid::Uuid::new_v4().to_string(), Duration::from_secs(5))
        .await
        .expect("wait")
        .is_none());
}

/// An idempotency key is claimed once; later claims learn the first one;
/// a release frees it only for the request that holds it.
pub async fn store_idempotency_keys_are_claimed_once(factory: &StoreFactory) {
    let a = factory().await;
    let b = factory().await;
    let key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let ttl = Duration::from_secs(60);
    assert_eq!(
        a.claim_idempotency_key(&key, "fp-1", "id-1", ttl)
            .await
            .expect("claim"),
        IdempotencyClaim::Claimed
    );
    let first = IdempotencyClaim::Existing {
        fingerprint: "fp-1".into(),
        correlation_id: "id-1".into(),
    };
    assert_eq!(
        b.claim_idempotency_key(&key, "fp-1", "id-2", ttl)
            .await
            .expect("claim"),
        first
    );
    assert_eq!(
        b.claim_idempotency_key(&key, "fp-other", "id-3", ttl)
            .await
            .expect("claim"),
        first
    );
    b.release_idempotency_key(&key, "id-2")
        .await
        .expect("release");
    assert_eq!(
        a.claim_idempotency_key(&key, "fp-1", "id-4", ttl)
            .await
            .expect("claim"),
        first,
        "not released by another request"
    );
    a.release_idempotency_key(&key, "id-1")
        .await
        .expect("release");
    assert_eq!(
        b.claim_idempotency_key(&key, "fp-5", "id-5", ttl)
            .await
            .expect("claim"),
        IdempotencyClaim::Claimed
    );
    let short = format!("{key}-short");
    a.claim_idempotency_key(&short, "fp", "id", Duration::from_millis(300))
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.claim_idempotency_key(&short, "fp2", "id2", ttl)
            .await
            .expect("claim"),
        IdempotencyClaim::Claimed,
        "claims expire"
    );
}

/// One `#[tokio::test]` per queue case. `$guard` is a `bool` expression
/// (for example [`server_available`]); when false the case returns at once.
#[macro_export]
macro_rules! queue_conformance_tests {
    ($guard:expr, $factory:expr, $options:expr) => {
        $crate::queue_conformance_tests!(@cases $guard, $factory, $options;
            publish_is_durable,
            ack_prevents_redelivery,
            nack_delay_redelivers_after_the_delay,
            crashed_consumer_message_is_redelivered_on_restart,
            crashed_consumer_message_goes_to_another_consumer,
            lease_extension_keeps_the_message,
            dead_letter_after_n_attempts_keeps_message_and_error,
            depth_reports_pending_work,
            bodies_are_binary_safe_up_to_the_limit,
            close_is_clean_and_loses_nothing,
            browse_lists_without_consuming,
            browse_pages,
            remove_deletes
        );
    };
    (@cases $guard:expr, $factory:expr, $options:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$guard {
                    return;
                }
                $crate::conformance::$case(&$factory, &$options).await;
            }
        )*
    };
}

/// One `#[tokio::test]` per result-store case.
#[macro_export]
macro_rules! store_conformance_tests {
    ($guard:expr, $factory:expr) => {
        $crate::store_conformance_tests!(@cases $guard, $factory;
            store_keeps_the_first_final_outcome,
            store_create_refuses_an_existing_id,
            store_records_expire,
            store_wait_final_wakes_on_completion_elsewhere,
            store_idempotency_keys_are_claimed_once
        );
    };
    (@cases $guard:expr, $factory:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$guard {
                    return;
                }
                $crate::conformance::$case(&$factory).await;
            }
        )*
    };
}
