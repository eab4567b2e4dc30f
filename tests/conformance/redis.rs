//! The conformance suite on Redis (the redis-server at
//! `OPENHQM_TEST_REDIS_ADDR`, default 127.0.0.1:6379), plus
//! Redis-specific cases: connection loss and recovery (against a private
//! redis-server this file starts and kills), a stale consumer after a
//! reclaim, and wait_final wake-up latency across store instances.
//!
//! Every factory call builds a new backend or store with its own
//! connections; the consumer group and key prefix are unique per run, so
//! parallel and earlier runs on the same server do not interfere.

use openhqm_core::backends::redis::RedisBackend;
use openhqm_core::backends::redis::RedisStore;
use openhqm_core::conformance::{
    server_addr, server_available, Options, QueueFactory, StoreFactory,
};
use openhqm_core::model::{RequestRecord, Status};
use openhqm_core::queue::{Message, QueueBackend, QueueError};
use openhqm_core::store::{ResultStore, StoreError};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The shared server, `host:port`.
fn addr() -> String {
    server_addr("OPENHQM_TEST_REDIS_ADDR", "127.0.0.1:6379")
}

fn url() -> String {
    format!("redis://{}", addr())
}
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", std::process::id(), &random[..8])
    })
}

fn group() -> String {
    format!("conformance-workers-{}", run_id())
}

fn backend(url: &str, identity: &str) -> RedisBackend {
    RedisBackend::new(url, &group(), Some(identity.to_string()), MAX_MESSAGE_BYTES)
        .expect("redis backend")
}

fn queues() -> QueueFactory {
    Arc::new(|identity| {
        let identity = identity.to_string();
        Box::pin(async move { Arc::new(backend(&url(), &identity)) as Arc<dyn QueueBackend> })
    })
}

fn store(url: &str) -> RedisStore {
    RedisStore::new(url, &format!("openhqm-test-{}", run_id())).expect("redis store")
}

fn stores() -> StoreFactory {
    Arc::new(|| Box::pin(async { Arc::new(store(&url())) as Arc<dyn ResultStore> }))
}

fn options() -> Options {
    Options {
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..Options::default()
    }
}

fn redis_up() -> bool {
    server_available("redis", &addr())
}

openhqm_core::queue_conformance_tests!(redis_up(), queues(), options());
openhqm_core::store_conformance_tests!(redis_up(), stores());

fn unique(case: &str) -> String {
    format!(
        "redis-{case}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn msg(id: &str, body: &[u8]) -> Message {
    Message {
        id: id.into(),
        body: body.to_vec(),
        ..Default::default()
    }
}

fn record(id: &str, status: Status) -> RequestRecord {
    let mut r = RequestRecord::pending(id, "2026-11-22T00:00:00.000Z");
    r.status = status;
    r
}

fn redis_cli(args: &[&str]) -> String {
    let addr = addr();
    let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, "6379"));
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deletes a test stream and its delayed set when the test ends.
struct DropKeys(String);

impl Drop for DropKeys {
    fn drop(&mut self) {
        redis_cli(&["DEL", &self.0, &format!("{}:delayed", self.0)]);
    }
}

/// A private redis-server on a fixed port, killed (SIGKILL, like a crash)
/// on drop. It keeps an append-only file fsynced on every write, so a
/// restart finds what was acknowledged before the crash, as a durable Redis
/// would.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

fn private_dir(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("openhqm-redis-{}-{port}", run_id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl PrivateRedis {
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &private_dir(port).to_string_lossy(),
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the private server's files at the end of the test.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Retry `op` until it succeeds or `limit` passes; returns how long it took.
async fn until_ok<T, E: std::fmt::Debug, F, Fut>(limit: Duration, mut op: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(v) => return (v, started.elapsed()),
            Err(e) => {
                assert!(
                    started.elapsed() < limit,
                    "still failing after {limit:?}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Redis goes away: operations fail with Unavailable within seconds (no
/// hang), and recover by themselves, on the same backend and store
/// instances, when Redis is back on the same address. What was acknowledged
/// before the crash is still there; a waiter blocked in wait_final across
/// the outage still sees the completion; a restart while the connections sat
/// idle costs no failed operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_fails_fast_and_recovers() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    }
    let port = PrivateRedis::free_port();
    let _cleanup = RemoveDir(private_dir(port));
    let mut server = PrivateRedis::start(port);
    let url = server.url();
    let b = backend(&url, "loss-consumer");
    let q = b.open("loss-queue").await.expect("open");
    let s = store(&url);
    let waiter_store = Arc::new(store(&url));
    q.publish(msg("before", b"1")).await.expect("publish");
    let id = uuid::Uuid::new_v4().to_string();
    s.put(&record(&id, Status::Pending), Duration::from_secs(60))
        .await
        .expect("put");
    let waiting = {
        let ws = waiter_store.clone();
        let id = id.clone();
        tokio::spawn(async move { ws.wait_final(&id, Duration::from_secs(30)).await })
    };
    // Let it subscribe and read the record once (a first read that fails
    // is an error, not a wait).
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.kill();
    let started = Instant::now();
    let err = q
        .publish(msg("during", b"2"))
        .await
        .expect_err("publish with Redis down");
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    let err = q
        .receive(1, Duration::from_millis(500), Duration::from_secs(1))
        .await
        .expect_err("receive with Redis down");
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    assert!(matches!(q.depth().await, Err(QueueError::Unavailable(_))));
    assert!(matches!(s.get(&id).await, Err(StoreError::Unavailable(_))));
    let outage_errors = started.elapsed();
    assert!(
        outage_errors < Duration::from_secs(6),
        "failing took {outage_errors:?}"
    );

    let mut server = PrivateRedis::start(port);
    let (_, recovered) = until_ok(Duration::from_secs(10), || q.publish(msg("after", b"3"))).await;
    let got = q
        .receive(10, Duration::from_secs(2), Duration::from_secs(5))
        .await
        .expect("receive after recovery");
    // The publish acknowledged before the crash survived it; the failed
    // one left nothing behind.
    assert_eq!(
        got.iter()
            .map(|d| (d.message.id.as_str(), d.attempt))
            .collect::<Vec<_>>(),
        vec![("before", 1), ("after", 1)]
    );
    for d in &got {
        q.ack(&d.receipt).await.expect("ack after recovery");
    }
    assert_eq!(q.depth().await.expect("depth").total(), 0);
    let done = record(&id, Status::Completed);
    until_ok(Duration::from_secs(10), || {
        s.put(&done, Duration::from_secs(60))
    })
    .await;
    let woke = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("waiter returned")
        .expect("join")
        .expect("wait_final");
    assert_eq!(woke.map(|r| r.status), Some(Status::Completed));
    eprintln!(
        "connection loss: errors within {outage_errors:?}; publish recovered {recovered:?} after restart"
    );

    // A restart while nobody used the connections: the first operations
    // afterwards succeed (no stale-connection error).
    server.kill();
    let _server = PrivateRedis::start(port);
    q.publish(msg("after-idle-restart", b"4"))
        .await
        .expect("first publish after an idle restart");
    assert_eq!(q.depth().await.expect("depth").total(), 1);
    let kept = s.get(&id).await.expect("first get after an idle restart");
    assert_eq!(kept.map(|r| r.status), Some(Status::Completed));
}

/// A Redis that hangs (stopped, not gone) turns into Unavailable after the
/// command timeout instead of a stuck caller, and the same instances work
/// again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_times_out_and_recovers() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    }
    let port = PrivateRedis::free_port();
    let _cleanup = RemoveDir(private_dir(port));
    let server = PrivateRedis::start(port);
    let b = backend(&server.url(), "hung-consumer");
    let q = b.open("hung-queue").await.expect("open");
    let s = store(&server.url());
    q.publish(msg("m1", b"1")).await.expect("publish");
    assert!(s.get("nothing").await.expect("get").is_none());

    server.signal("-STOP");
    let started = Instant::now();
    let err = q
        .publish(msg("m2", b"2"))
        .await
        .expect_err("publish to a hung Redis");
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    let publish_failed = started.elapsed();
    let started = Instant::now();
    let err = s.get("nothing").await.expect_err("get from a hung Redis");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let get_failed = started.elapsed();
    server.signal("-CONT");
    for took in [publish_failed, get_failed] {
        assert!(
            took < Duration::from_secs(5),
            "a hung Redis held a call for {took:?}"
        );
    }
    eprintln!("hung Redis: publish failed after {publish_failed:?}, get after {get_failed:?}");

    q.publish(msg("m3", b"3"))
        .await
        .expect("publish after Redis answers again");
    let got = q
        .receive(10, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive");
    let ids: Vec<&str> = got.iter().map(|d| d.message.id.as_str()).collect();
    // m2 timed out from our side but Redis ran it when it woke up: the
    // caller saw Unavailable and would publish again (at-least-once).
    assert!(ids.contains(&"m1") && ids.contains(&"m3"), "{ids:?}");
    for d in &got {
        q.ack(&d.receipt).await.expect("ack");
    }
}

/// A delayed retry keeps the message exact (binary body, attributes, key)
/// and counts the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retry_keeps_the_message_exact() {
    if !redis_up() {
        return;
    }
    let name = unique("delayed");
    let _keys = DropKeys(name.clone());
    let b = backend(&url(), "delayed-consumer");
    let q = b.open(&name).await.expect("open");
    let mut m = msg("m1", &(0..=255u8).rev().collect::<Vec<u8>>());
    m.attributes
        .insert("traceparent".into(), "00-abc-def-01".into());
    m.attributes.insert("ünï".into(), "cødé\n\"q\"".into());
    m.key = Some("partition-7".into());
    q.publish(m.clone()).await.expect("publish");
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let d = q
            .receive(1, Duration::from_secs(3), Duration::from_secs(30))
            .await
            .expect("receive")
            .pop()
            .expect("message");
        assert_eq!(d.message, m);
        attempts.push(d.attempt);
        q.nack(&d.receipt, Duration::from_millis(150))
            .await
            .expect("nack");
        assert_eq!(q.depth().await.expect("depth").ready, 1);
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let last = q
        .receive(1, Duration::from_secs(3), Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("message");
    assert_eq!(last.attempt, 4);
    q.ack(&last.receipt).await.expect("ack");
    assert_eq!(q.depth().await.expect("depth").total(), 0);
}

/// The whole cycle also works when the URL asks for RESP3 (replies come as
/// maps there), for the queue and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_urls_work() {
    if !redis_up() {
        return;
    }
    let url = format!("{}/?protocol=resp3", url());
    let url = url.as_str();
    let name = unique("resp3");
    let _keys = DropKeys(name.clone());
    let b = backend(url, "resp3-consumer");
    let q = b.open(&name).await.expect("open");
    q.publish(msg("m1", &[0, 159, 255])).await.expect("publish");
    let d = q
        .receive(1, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("message");
    assert_eq!(
        (d.message.body.as_slice(), d.attempt),
        (&[0u8, 159, 255][..], 1)
    );
    q.nack(&d.receipt, Duration::from_millis(100))
        .await
        .expect("nack");
    let d = q
        .receive(1, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("message");
    assert_eq!(d.attempt, 2);
    q.ack(&d.receipt).await.expect("ack");
    assert_eq!(q.depth().await.expect("depth").total(), 0);

    let s = store(url);
    let id = uuid::Uuid::new_v4().to_string();
    s.put(&record(&id, Status::Completed), Duration::from_secs(60))
        .await
        .expect("put");
    let got = s
        .wait_final(&id, Duration::from_secs(1))
        .await
        .expect("wait");
    assert_eq!(got.map(|r| r.status), Some(Status::Completed));
}

/// With replica acknowledgements on, a publish that no replica confirmed
/// is reported as Unavailable (the test server has no replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acks_are_enforced() {
    if !redis_up() {
        return;
    }
    if redis_cli(&["INFO", "replication"]).contains("connected_slaves:0") {
        let b =
            backend(&url(), "replica-producer").with_replica_acks(1, Duration::from_millis(100));
        let name = unique("replicas");
        let _keys = DropKeys(name.clone());
        let q = b.open(&name).await.expect("open");
        let started = Instant::now();
        let err = q
            .publish(msg("m1", b"x"))
            .await
            .expect_err("no replica acked");
        assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    } else {
        eprintln!("SKIPPED: the Redis under test has replicas");
    }
}

/// Several receives in flight on one queue handle share its blocking
/// connection without stalling each other; every message goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receives_on_one_handle() {
    if !redis_up() {
        return;
    }
    let name = unique("concurrent");
    let _keys = DropKeys(name.clone());
    let b = backend(&url(), "concurrent-consumer");
    let q = b.open(&name).await.expect("open");
    let receivers: Vec<_> = (0..4)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    let got = q
                        .receive(1, Duration::from_millis(700), Duration::from_secs(30))
                        .await
                        .expect("receive");
                    if let Some(d) = got.into_iter().next() {
                        q.ack(&d.receipt).await.expect("ack");
                        return Some(d.message.id);
                    }
                }
                None
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for i in 0..4 {
        q.publish(msg(&format!("m{i}"), b"x"))
            .await
            .expect("publish");
    }
    let mut ids = Vec::new();
    for r in receivers {
        ids.push(r.await.expect("join").expect("each receiver got one"));
    }
    ids.sort();
    assert_eq!(ids, vec!["m0", "m1", "m2", "m3"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A consumer whose lease ended cannot ack, nack or extend a message
/// another consumer reclaimed; the new owner's ack works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_consumer_cannot_touch_a_reclaimed_message() {
    if !redis_up() {
        return;
    }
    let name = unique("stale");
    let _keys = DropKeys(name.clone());
    let a = backend(&url(), "stale-a");
    let qa = a.open(&name).await.expect("open");
    let b = backend(&url(), "stale-b");
    let qb = b.open(&name).await.expect("open");
    let lease = Duration::from_millis(300);
    qa.publish(msg("m1", b"x")).await.expect("publish");
    let old = qa
        .receive(1, Duration::from_secs(2), lease)
        .await
        .expect("receive")
        .pop()
        .expect("a message");
    assert_eq!(old.attempt, 1);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let new = qb
        .receive(1, Duration::from_secs(2), lease)
        .await
        .expect("receive")
        .pop()
        .expect("reclaimed message");
    assert_eq!(new.message.id, "m1");
    assert_eq!(new.attempt, 2);
    assert_eq!(qa.ack(&old.receipt).await, Err(QueueError::LeaseLost));
    assert_eq!(
        qa.nack(&old.receipt, Duration::ZERO).await,
        Err(QueueError::LeaseLost)
    );
    assert_eq!(
        qa.extend_lease(&old.receipt, lease).await,
        Err(QueueError::LeaseLost)
    );
    qb.ack(&new.receipt).await.expect("the new owner acks");
    assert_eq!(qb.ack(&new.receipt).await, Err(QueueError::LeaseLost));
    assert_eq!(qb.depth().await.expect("depth").total(), 0);

    // The same consumer's own earlier delivery is stale too once the
    // message was redelivered (to itself) after the lease.
    qa.publish(msg("m2", b"y")).await.expect("publish");
    let first = qa
        .receive(1, Duration::from_secs(2), lease)
        .await
        .expect("receive")
        .pop()
        .expect("m2");
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let second = qa
        .receive(1, Duration::from_secs(2), lease)
        .await
        .expect("receive")
        .pop()
        .expect("m2 again");
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(qa.ack(&first.receipt).await, Err(QueueError::LeaseLost));
    qa.ack(&second.receipt).await.expect("ack");
    assert!(matches!(
        qa.ack(&openhqm_core::queue::Receipt("garbage".into()))
            .await,
        Err(QueueError::Invalid(_))
    ));
    qa.close().await.expect("close");
    qb.close().await.expect("close");
}

/// Depth counts backlog, delayed retries and in-flight work, and works on a
/// stream that has no consumer group (or no stream) at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_delayed_and_works_without_a_group() {
    if !redis_up() {
        return;
    }
    let name = unique("depth");
    let _keys = DropKeys(name.clone());
    let b = backend(&url(), "depth-consumer");
    let q = b.open(&name).await.expect("open");
    for i in 0..3 {
        q.publish(msg(&format!("m{i}"), b"x"))
            .await
            .expect("publish");
    }
    let got = q
        .receive(2, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(got.len(), 2);
    q.nack(&got[0].receipt, Duration::from_secs(60))
        .await
        .expect("nack");
    let depth = q.depth().await.expect("depth");
    // m2 waiting + the delayed retry; one leased.
    assert_eq!((depth.ready, depth.in_flight), (2, 1), "{depth:?}");
    assert_eq!(redis_cli(&["ZCARD", &format!("{name}:delayed")]), "1");
    assert_eq!(
        redis_cli(&["XLEN", &name]),
        "2",
        "acked/nacked entries are deleted"
    );
    redis_cli(&["DEL", &name, &format!("{name}:delayed")]);
    let depth = q.depth().await.expect("depth without stream or group");
    assert_eq!(depth.total(), 0);
    // The group comes back by itself when the stream was deleted.
    q.publish(msg("again", b"z")).await.expect("publish");
    let again = q
        .receive(1, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive after the stream was deleted");
    assert_eq!(again.len(), 1);
    q.ack(&again[0].receipt).await.expect("ack");
}

/// Entries written by other systems (pattern 2: no OpenHQM fields) are
/// delivered with their fields as a JSON body and the entry id as id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_are_delivered() {
    if !redis_up() {
        return;
    }
    let name = unique("foreign");
    let _keys = DropKeys(name.clone());
    let b = backend(&url(), "foreign-consumer");
    let q = b.open(&name).await.expect("open");
    let entry_id = redis_cli(&["XADD", &name, "*", "order", "42", "note", "ünïcode"]);
    let d = q
        .receive(1, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("foreign entry");
    assert_eq!(d.message.id, entry_id);
    let body: serde_json::Value = serde_json::from_slice(&d.message.body).expect("json body");
    assert_eq!(body, serde_json::json!({"order": "42", "note": "ünïcode"}));
    assert_eq!(d.attempt, 1);
    q.nack(&d.receipt, Duration::ZERO).await.expect("nack");
    let again = q
        .receive(1, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("foreign entry again");
    assert_eq!(again.attempt, 2);
    q.ack(&again.receipt).await.expect("ack");
}

/// wait_final on one store instance wakes within milliseconds of the put
/// (and its PUBLISH) on another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_final_wakes_across_instances_within_milliseconds() {
    if !redis_up() {
        return;
    }
    let waiter = Arc::new(store(&url()));
    let writer = store(&url());
    let ttl = Duration::from_secs(60);
    // Let the first wait start the subscription.
    let warm = uuid::Uuid::new_v4().to_string();
    writer
        .put(&record(&warm, Status::Pending), ttl)
        .await
        .expect("put");
    waiter
        .wait_final(&warm, Duration::from_millis(200))
        .await
        .expect("wait");

    let mut lags = Vec::new();
    for _ in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        writer
            .put(&record(&id, Status::Processing), ttl)
            .await
            .expect("put");
        let w = waiter.clone();
        let wid = id.clone();
        let task = tokio::spawn(async move {
            let r = w.wait_final(&wid, Duration::from_secs(10)).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .put(&record(&id, Status::Completed), ttl)
            .await
            .expect("put");
        let put_done = Instant::now();
        let (got, woke) = task.await.expect("join");
        assert_eq!(
            got.expect("wait").map(|r| r.status),
            Some(Status::Completed)
        );
        lags.push(woke.saturating_duration_since(put_done));
    }
    lags.sort();
    let median = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    eprintln!("wait_final wake-up after put returned: median {median:?}, max {max:?}");
    assert!(max < Duration::from_millis(100), "slow wake-up: {lags:?}");
}
