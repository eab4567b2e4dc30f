//! Redis result store, shared by every bridge and worker of a multi-node
//! deployment.
//!
//! Each record is the JSON of [`RequestRecord`] at `<key_prefix>:result:<id>`
//! with a PX expiry, so Redis drops expired records itself. `put` is one Lua
//! script: it keeps a stored final record (first final outcome wins) and,
//! when the new record is final, publishes its id on `<key_prefix>:results`
//! in the same step.
//!
//! `wait_final` is notified: each store keeps one subscription to that
//! channel (a RESP3 connection, started on the first wait, re-established
//! after connection loss) and a map id -> waiters. A waiter registers before
//! it reads the record, so a completion between the read and the wait is not
//! missed. When the subscription drops or comes back, every waiter re-reads
//! (a notification may have been missed meanwhile); while there is no
//! subscription (Redis away, or a server without RESP3) waiters poll.

use super::queue::{bounded, call};
use crate::config::CacheConfig;
use crate::model::RequestRecord;
use crate::original::result_keys;
use crate::store::{IdempotencyClaim, PutOutcome, ResultStore, StoreError, WAIT_POLL_INTERVAL};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushKind, RedisError, Script};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest a single command may take before it counts as Redis being away.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription connection is checked with a PING: a peer
/// that vanished without closing the socket is noticed this quickly.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How often a waiter retries its read while Redis is away.
const OUTAGE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Pause between resubscription attempts grows up to this.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

/// KEYS: record key[, original meta key, original response key]. ARGV:
/// record JSON, ttl ms, "1" if final, channel, id[, original meta JSON,
/// original response JSON or ""]. Returns 1 when written, 0 when a final
/// record was kept (the original's keys are then left as they are too).
const PUT_LUA: &str = include_str!("lua/put.lua");

/// `create` with `cache.original_keys`: SET NX of our record, and the
/// original's PENDING meta beside it. KEYS: record, meta. ARGV: record JSON,
/// ttl ms, meta JSON.
const CREATE_WITH_ORIGINAL_LUA: &str = include_str!("lua/create_with_original.lua");

/// Claim an idempotency key (`SET NX PX`), or read what first claimed it.
/// Returns "" when the claim is new, else the stored "<fingerprint>\n<id>".
const CLAIM_LUA: &str = include_str!("lua/claim.lua");

/// Delete a claim only while it still names this correlation ID.
const RELEASE_LUA: &str = include_str!("lua/release.lua");

pub struct RedisStore {
    client: Client,
    key_prefix: String,
    commands: OnceCell<ConnectionManager>,
    put_script: Script,
    /// `create` with `original_keys` (hashed once, like `put_script`).
    create_with_original_script: Script,
    /// Also write the original OpenHQM's `req:{id}:meta` / `resp:{id}`.
    original_keys: bool,
    notifier: Arc<Notifier>,
    /// Clients for the subscription (same server, RESP3 for push messages).
    subscriber: Client,
    listener: Mutex<Option<JoinHandle<()>>>,
}

/// Waiters by correlation ID, and whether the subscription is live.
#[derive(Default)]
struct Notifier {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    live: AtomicBool,
}

impl Notifier {
    fn register(self: &Arc<Self>, id: &str) -> Waiter {
        let mut map = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let notify = map.entry(id.to_string()).or_default().clone();
        Waiter {
            notifier: self.clone(),
            id: id.to_string(),
            notify,
        }
    }

    fn wake(&self, id: &str) {
        let map = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = map.get(id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let map = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for notify in map.values() {
            notify.notify_waiters();
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        // Either way waiters must re-read: a completion may have been
        // published while nobody was subscribed.
        self.wake_all();
    }
}

/// One registered interest in an id; unregisters when dropped.
struct Waiter {
    notifier: Arc<Notifier>,
    id: String,
    notify: Arc<Notify>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self
            .notifier
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The map holds one reference and this waiter another: the last
        // waiter for the id removes the entry.
        if map
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) <= 2)
        {
            map.remove(&self.id);
        }
    }
}

impl RedisStore {
    /// Build from `cache.*` settings. Validates the URL; does not connect.
    pub fn from_config(config: &CacheConfig) -> Result<RedisStore, StoreError> {
        let mut store = RedisStore::new(&config.redis_url, &config.key_prefix)?;
        store.original_keys = config.original_keys;
        Ok(store)
    }

    /// A store using keys `<key_prefix>:result:<id>` and the notification
    /// channel `<key_prefix>:results`.
    pub fn new(url: &str, key_prefix: &str) -> Result<RedisStore, StoreError> {
        let invalid = |e: RedisError| StoreError::Unavailable(format!("invalid Redis URL: {e}"));
        let client = Client::open(url).map_err(invalid)?;
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber = Client::open(info.set_redis_settings(resp3)).map_err(invalid)?;
        Ok(RedisStore {
            client,
            key_prefix: key_prefix.to_string(),
            commands: OnceCell::new(),
            put_script: Script::new(PUT_LUA),
            create_with_original_script: Script::new(CREATE_WITH_ORIGINAL_LUA),
            original_keys: false,
            notifier: Arc::new(Notifier::default()),
            subscriber,
            listener: Mutex::new(None),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:result:{id}", self.key_prefix)
    }

    fn channel(&self) -> String {
        format!("{}:results", self.key_prefix)
    }

    async fn commands(&self) -> Result<ConnectionManager, StoreError> {
        self.commands
            .get_or_try_init(|| async {
                // Fail fast while Redis is away; the next call reconnects.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(unavailable)
            })
            .await
            .cloned()
    }

    /// Start the subscription task once (it needs a Tokio runtime, so not in
    /// the constructor).
    fn ensure_listener(&self) {
        let mut slot = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        *slot = Some(tokio::spawn(listen(
            self.subscriber.clone(),
            self.channel(),
            self.notifier.clone(),
        )));
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        let slot = self.listener.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = slot.take() {
            task.abort();
        }
    }
}

/// Keep one subscription to `channel` alive and route its messages to the
/// waiters, until the store drops (and aborts this task).
async fn listen(client: Client, channel: String, notifier: Arc<Notifier>) {
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(tx);
        let subscribed = async {
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            con.subscribe(&channel).await?;
            Ok::<_, RedisError>(con)
        };
        match bounded(CONNECT_TIMEOUT + COMMAND_TIMEOUT, subscribed).await {
            Ok(mut con) => {
                delay = Duration::from_millis(100);
                warned = false;
                notifier.set_live(true);
                loop {
                    match tokio::time::timeout(PING_INTERVAL, rx.recv()).await {
                        Ok(Some(push)) => match push.kind {
                            PushKind::Message => {
                                if let Some(id) = push.data.get(1).and_then(payload) {
                                    notifier.wake(&id);
                                }
                            }
                            PushKind::Disconnection => break,
                            _ => {}
                        },
                        Ok(None) => break,
                        Err(_) => {
                            let pong = bounded(
                                COMMAND_TIMEOUT,
                                redis::cmd("PING").query_async::<redis::Value>(&mut con),
                            )
                            .await;
                            if pong.is_err() {
                                break;
                            }
                        }
                    }
                }
                notifier.set_live(false);
                tracing::warn!(channel = %channel, "result notifications lost; resubscribing");
            }
            Err(e) if !warned => {
                // Once: a server without RESP3 (Redis < 6) fails forever.
                warned = true;
                tracing::warn!(channel = %channel, error = %e,
                    "cannot subscribe to result notifications; waiting requests poll until it works");
            }
            Err(e) => {
                tracing::debug!(channel = %channel, error = %e, "cannot subscribe to result notifications");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
    }
}

fn payload(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// A TTL for `PX`: at least 1 ms (`PX 0` is an error in Redis).
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}

#[async_trait]
impl ResultStore for RedisStore {
    async fn put(&self, record: &RequestRecord, ttl: Duration) -> Result<PutOutcome, StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ttl_ms = ttl_millis(ttl);
        let is_final = if record.status.is_final() { "1" } else { "0" };
        let con = self.commands().await?;
        let key = self.key(&record.correlation_id);
        let channel = self.channel();
        let written: i64 = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = self.put_script.key(&key);
            invocation
                .arg(&json)
                .arg(ttl_ms)
                .arg(is_final)
                .arg(&channel)
                .arg(&record.correlation_id);
            if self.original_keys {
                let id = &record.correlation_id;
                invocation
                    .key(result_keys::meta_key(id))
                    .key(result_keys::response_key(id))
                    .arg(result_keys::meta_json(record))
                    .arg(result_keys::response_json(record).unwrap_or_default());
            }
            async move { invocation.invoke_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(if written == 1 {
            PutOutcome::Written
        } else {
            PutOutcome::KeptFinal
        })
    }

    async fn create(&self, record: &RequestRecord, ttl: Duration) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ttl_ms = ttl_millis(ttl);
        let con = self.commands().await?;
        let key = self.key(&record.correlation_id);
        if self.original_keys {
            let meta_key = result_keys::meta_key(&record.correlation_id);
            let meta = result_keys::meta_json(record);
            let script = &self.create_with_original_script;
            let written: i64 = call(&con, COMMAND_TIMEOUT, |mut con| {
                let mut invocation = script.key(&key);
                invocation.key(&meta_key).arg(&json).arg(ttl_ms).arg(&meta);
                async move { invocation.invoke_async(&mut con).await }
            })
            .await
            .map_err(unavailable)?;
            return Ok(written == 1);
        }
        // One round trip, no script: SET ... NX answers nil when the key exists.
        let set: Option<String> = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(&json).arg("PX").arg(ttl_ms).arg("NX");
            async move { set.query_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn get(&self, correlation_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let con = self.commands().await?;
        let key = self.key(correlation_id);
        let raw: Option<Vec<u8>> = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut get = redis::cmd("GET");
            get.arg(&key);
            async move { get.query_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        raw.map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        correlation_id: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let con = self.commands().await?;
        let redis_key = format!("{}:idem:{key}", self.key_prefix);
        let value = format!("{fingerprint}\n{correlation_id}");
        let ttl_ms = ttl_millis(ttl);
        let script = Script::new(CLAIM_LUA);
        let existing: String = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = script.key(&redis_key);
            invocation.arg(&value).arg(ttl_ms);
            async move { invocation.invoke_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        if existing.is_empty() {
            return Ok(IdempotencyClaim::Claimed);
        }
        match existing.split_once('\n') {
            Some((fingerprint, id)) => Ok(IdempotencyClaim::Existing {
                fingerprint: fingerprint.to_string(),
                correlation_id: id.to_string(),
            }),
            None => Err(StoreError::Corrupt(format!(
                "idempotency key {key} holds an unreadable value"
            ))),
        }
    }

    async fn release_idempotency_key(
        &self,
        key: &str,
        correlation_id: &str,
    ) -> Result<(), StoreError> {
        let con = self.commands().await?;
        let redis_key = format!("{}:idem:{key}", self.key_prefix);
        let script = Script::new(RELEASE_LUA);
        call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = script.key(&redis_key);
            invocation.arg(correlation_id);
            async move { invocation.invoke_async::<i64>(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, correlation_id: &str) -> Result<(), StoreError> {
        let con = self.commands().await?;
        let key = self.key(correlation_id);
        call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            async move { del.query_async::<i64>(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        // Redis expires the keys itself (PX on every write).
        Ok(0)
    }

    async fn wait_final(
        &self,
        correlation_id: &str,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let deadline = Instant::now() + timeout;
        self.ensure_listener();
        let waiter = self.notifier.register(correlation_id);
        let mut first = true;
        loop {
            // Enable before reading: a notification that arrives between
            // the read and the wait still completes this future.
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let live = self.notifier.live.load(Ordering::SeqCst);
            let record = match self.get(correlation_id).await {
                Ok(record) => record,
                // Redis away from the start: say so at once.
                Err(e) if first => return Err(e),
                // Away during the wait: keep waiting for it to come back
                // (the subscription task resubscribes) until the deadline.
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(OUTAGE_POLL_INTERVAL.min(deadline - now)).await;
                    continue;
                }
            };
            first = false;
            let now = Instant::now();
            if record.as_ref().is_none_or(|r| r.status.is_final()) || now >= deadline {
                return Ok(record);
            }
            // Without a live subscription nothing would wake us: poll.
            let nap = if live {
                deadline - now
            } else {
                WAIT_POLL_INTERVAL.min(deadline - now)
            };
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused_without_connecting() {
        assert!(RedisStore::new("nope://", "p").is_err());
        let s = RedisStore::new("redis://127.0.0.1:1", "p").unwrap();
        assert_eq!(s.key("abc"), "p:result:abc");
        assert_eq!(s.channel(), "p:results");
    }

    #[tokio::test]
    async fn waiters_unregister_when_the_last_one_leaves() {
        let n = Arc::new(Notifier::default());
        let a = n.register("x");
        let b = n.register("x");
        assert!(Arc::ptr_eq(&a.notify, &b.notify));
        drop(a);
        assert!(n.waiters.lock().unwrap().contains_key("x"));
        drop(b);
        assert!(n.waiters.lock().unwrap().is_empty());
    }
}
