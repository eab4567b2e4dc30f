//! Redis Streams queue backend.
//!
//! One stream per queue (the queue name is the stream key, so KEDA's
//! `redis-streams` scaler can watch it) and one consumer group shared by the
//! worker fleet. Each entry carries the message (`id`, `body`, `attributes`
//! as JSON, optional `key`) and `attempts`: how many deliveries happened
//! before this entry was written, so a nack that re-adds the message keeps
//! counting.
//!
//! - A lease is the pending entry's idle time. `receive` reclaims entries
//!   idle longer than its `lease` with XAUTOCLAIM (crashed consumers, ended
//!   leases), then reads new ones with XREADGROUP. A delivery's attempt is
//!   `attempts` + the entry's delivery count.
//! - Receipts are `<entry id>/<delivery count>`. Ack, nack and extension run
//!   as Lua scripts that first check the entry is still pending for this
//!   consumer *with that delivery count*; anything else is `LeaseLost`, so a
//!   stale consumer never acks a message another consumer (or a later
//!   delivery to itself) now holds.
//! - Ack is XACK + XDEL, so XLEN stays backlog + in-flight.
//! - `browse` is XRANGE (exclusive start `(id` for the next page), which
//!   leaves the group alone; `remove` is XACK + XDEL in one script, for the
//!   same invariant.
//! - `nack(delay)` moves the entry into the sorted set `<stream>:delayed`
//!   scored by its due time (Redis' clock); `receive` moves due members back
//!   into the stream in one script, so the move never loses or duplicates.
//!
//! Blocking reads use a dedicated connection per queue: a blocked XREADGROUP
//! on the shared multiplexed connection would hold up every other command.

use crate::config::QueueConfig;
use crate::queue::{
    Capabilities, Delivery, Depth, Message, Queue, QueueBackend, QueueError, Receipt, Stored,
};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script, Value};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Longest a single command may take before it counts as Redis being away.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest single blocking read: an idle consumer wakes at least this often
/// to promote due delayed messages and reclaim expired leases.
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// Delayed messages moved back into the stream per receive.
const PROMOTE_BATCH: usize = 100;
/// Most messages one receive returns (keeps XAUTOCLAIM's COUNT in range).
const MAX_BATCH: usize = 1000;

const F_ID: &str = "id";
const F_BODY: &str = "body";
const F_ATTRIBUTES: &str = "attributes";
const F_KEY: &str = "key";
const F_ATTEMPTS: &str = "attempts";

/// Lua: `owned(stream, group, consumer, id, deliveries)` is true while the
/// entry is pending for this consumer with the receipt's delivery count.
/// A missing group or entry is simply "not owned".
macro_rules! owned_prelude {
    () => {
        include_str!("lua/owned.lua")
    };
}

/// KEYS: stream. ARGV: group, consumer, entry id, deliveries.
const ACK_LUA: &str = concat!(owned_prelude!(), include_str!("lua/ack.lua"));

/// KEYS: stream. ARGV: group, consumer, entry id, deliveries.
/// XCLAIM to ourselves resets the idle time; JUSTID keeps the count.
const EXTEND_LUA: &str = concat!(owned_prelude!(), include_str!("lua/extend.lua"));

/// KEYS: stream, delayed zset. ARGV: group, consumer, entry id, deliveries,
/// delay ms. Re-adds the entry (now, or via the zset) with the attempts made
/// so far, then acks and deletes the original.
const NACK_LUA: &str = concat!(owned_prelude!(), include_str!("lua/nack.lua"));

/// KEYS: stream, delayed zset. ARGV: group, consumer, min idle ms, count,
/// history ("1" to re-read this consumer's own pending entries first),
/// promote batch.
///
/// Moves due delayed messages into the stream, then claims this consumer's
/// own pending entries (once per process, for a restarted consumer with a
/// stable name) and entries idle longer than the lease. Returns
/// `{ms until the next delayed message or -1, {{id, deliveries, fields}...}}`.
const PREPARE_LUA: &str = include_str!("lua/prepare.lua");

/// KEYS: stream, delayed zset. ARGV: group. Works before the group exists.
const DEPTH_LUA: &str = include_str!("lua/depth.lua");

/// KEYS: stream. ARGV: group, consumer. Removes the consumer from the group
/// only when it holds nothing (DELCONSUMER would drop its pending entries).
const FORGET_CONSUMER_LUA: &str = include_str!("lua/forget_consumer.lua");

/// KEYS: stream. ARGV: group, entry id. Deletes the entry and drops it
/// from the group's pending list, so XLEN stays backlog + in-flight and no
/// consumer keeps a lease on a message that is gone. Returns XDEL's count.
const REMOVE_LUA: &str = include_str!("lua/remove.lua");

struct Scripts {
    remove: Script,
    ack: Script,
    extend: Script,
    nack: Script,
    prepare: Script,
    depth: Script,
    forget_consumer: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            remove: Script::new(REMOVE_LUA),
            ack: Script::new(ACK_LUA),
            extend: Script::new(EXTEND_LUA),
            nack: Script::new(NACK_LUA),
            prepare: Script::new(PREPARE_LUA),
            depth: Script::new(DEPTH_LUA),
            forget_consumer: Script::new(FORGET_CONSUMER_LUA),
        }
    }
}

/// The Redis Streams queue backend: opens one stream per queue name.
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    group: String,
    consumer: String,
    max_message_bytes: usize,
    /// `WAIT numreplicas timeout` after each publish, when set.
    replica_acks: Option<(u32, Duration)>,
    /// Shared multiplexed connection for non-blocking commands; created on
    /// first use (it needs a Tokio runtime) and reconnecting by itself.
    commands: OnceCell<ConnectionManager>,
    /// Streams whose pending entries for this consumer name were already
    /// taken back once by this instance (see PREPARE_LUA).
    recovered: Mutex<HashSet<String>>,
    scripts: Scripts,
}

impl RedisBackend {
    /// Build from `queue.*` settings. Validates the URL; does not connect,
    /// so a process can start while Redis is away.
    pub fn from_config(config: &QueueConfig) -> Result<RedisBackend, QueueError> {
        RedisBackend::new(
            &config.redis_url,
            &config.redis_consumer_group,
            config.redis_consumer_name.clone(),
            config.max_message_bytes,
        )
    }

    /// `consumer_name`: this process's name in the group; `None` picks
    /// `<hostname>-<pid>-<random>`. A stable name lets a restarted consumer
    /// take back its own pending entries at once instead of after the lease;
    /// two live processes must never share one.
    pub fn new(
        url: &str,
        group: &str,
        consumer_name: Option<String>,
        max_message_bytes: usize,
    ) -> Result<RedisBackend, QueueError> {
        let client = Client::open(url)
            .map_err(|e| QueueError::Invalid(format!("invalid Redis URL: {e}")))?;
        if group.is_empty() {
            return Err(QueueError::Invalid(
                "the consumer group name is empty".into(),
            ));
        }
        let consumer = match consumer_name {
            Some(name) if name.is_empty() => {
                return Err(QueueError::Invalid("the consumer name is empty".into()))
            }
            Some(name) => name,
            None => default_consumer_name(),
        };
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                client,
                group: group.to_string(),
                consumer,
                max_message_bytes,
                replica_acks: None,
                commands: OnceCell::new(),
                recovered: Mutex::new(HashSet::new()),
                scripts: Scripts::new(),
            }),
        })
    }

    /// Make each publish wait (Redis `WAIT`) until `replicas` replicas have
    /// the message, failing with `Unavailable` after `timeout`. The message
    /// may still be in the stream then, so a retried publish can duplicate
    /// it (at-least-once).
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> RedisBackend {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.replica_acks = (replicas > 0).then_some((replicas, timeout));
        }
        self
    }

    /// This instance's consumer name in the group.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }
}

fn default_consumer_name() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let short: String = random.chars().take(8).collect();
    format!(
        "{}-{}-{short}",
        crate::backends::identity::host_name(),
        std::process::id()
    )
}

/// Connections fail fast (one quick retry) while Redis is away; the next
/// command tries to reconnect again, so operations recover by themselves.
fn connection_manager(
    client: &Client,
    response_timeout: Duration,
) -> Result<ConnectionManager, QueueError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)
}

fn unavailable(e: RedisError) -> QueueError {
    if e.code() == Some("WRONGTYPE") {
        return QueueError::Invalid(format!("the key is not a Redis stream: {e}"));
    }
    QueueError::Unavailable(format!("redis: {e}"))
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// Bound every call, so a Redis that hangs (not only one that is gone) turns
/// into `Unavailable` within a few seconds instead of a stuck worker.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from Redis within {limit:?}"),
        ))),
    }
}

/// Run `op` on a clone of `con`, bounded by `limit`. When the connection
/// turns out to be dead (Redis restarted while it sat idle), the manager
/// reconnects and `op` runs once more, so the first command after a restart
/// does not fail. The first attempt almost never reached a live server; if
/// it did, the repeat is what at-least-once already allows (a duplicate
/// publish, or `LeaseLost` from an ack that had in fact succeeded).
pub(crate) async fn call<T, F, Fut>(
    con: &ConnectionManager,
    limit: Duration,
    op: F,
) -> Result<T, RedisError>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    match bounded(limit, op(con.clone())).await {
        Err(e) if e.is_connection_dropped() => {
            tracing::debug!(error = %e, "Redis connection was dropped; retrying once");
            bounded(limit, op(con.clone())).await
        }
        other => other,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

#[async_trait]
impl QueueBackend for RedisBackend {
    fn kind(&self) -> &str {
        "redis"
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        if name.is_empty() {
            return Err(QueueError::Invalid("queue name is empty".into()));
        }
        let queue = RedisQueue {
            name: name.to_string(),
            delayed: format!("{name}:delayed"),
            shared: self.shared.clone(),
            blocking: tokio::sync::Mutex::new(None),
            group_ready: AtomicBool::new(false),
        };
        // Best effort: Redis may be away now; the group is created on the
        // first command that finds it missing.
        if let Err(e) = queue.ensure_group().await {
            tracing::debug!(queue = name, error = %e, "consumer group not created yet");
        }
        Ok(Arc::new(queue))
    }
}

/// One stream of a [`RedisBackend`].
pub struct RedisQueue {
    name: String,
    delayed: String,
    shared: Arc<Shared>,
    /// Dedicated connection for XREADGROUP BLOCK; the lock also keeps
    /// concurrent receivers from queueing blocked reads behind each other.
    blocking: tokio::sync::Mutex<Option<ConnectionManager>>,
    group_ready: AtomicBool,
}

/// A stream entry as returned by Redis: id and flat field/value pairs.
struct Entry {
    id: String,
    deliveries: u32,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RedisQueue {
    async fn commands(&self) -> Result<ConnectionManager, QueueError> {
        self.shared
            .commands
            .get_or_try_init(|| async { connection_manager(&self.shared.client, COMMAND_TIMEOUT) })
            .await
            .cloned()
    }

    async fn ensure_group(&self) -> Result<(), QueueError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let con = self.commands().await?;
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(&self.name)
            .arg(&self.shared.group)
            .arg("0")
            .arg("MKSTREAM");
        let created = call(&con, COMMAND_TIMEOUT, |mut con| {
            let create = create.clone();
            async move { create.query_async::<Value>(&mut con).await }
        })
        .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Run `op`; if the group is missing (never created, or the stream was
    /// deleted), create it and run `op` once more.
    async fn with_group<T, F, Fut>(
        &self,
        con: &ConnectionManager,
        limit: Duration,
        op: F,
    ) -> Result<T, QueueError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.ensure_group().await?;
        match call(con, limit, &op).await {
            Err(e) if is_nogroup(&e) => {
                self.group_ready.store(false, Ordering::Relaxed);
                self.ensure_group().await?;
                call(con, limit, &op).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Promote due delayed messages and claim reclaimable entries.
    /// Returns the time until the next delayed message is due.
    async fn prepare(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<(Option<Duration>, Vec<Entry>), QueueError> {
        // Only the first receive of this instance re-reads its own pending
        // entries: later ones would steal back what it is working on.
        let history = self
            .shared
            .recovered
            .lock()
            .map(|mut set| set.insert(self.name.clone()))
            .unwrap_or(false);
        let con = self.commands().await?;
        let result = self
            .with_group(&con, COMMAND_TIMEOUT, |mut con| {
                let mut invocation = self.shared.scripts.prepare.key(&self.name);
                invocation
                    .key(&self.delayed)
                    .arg(&self.shared.group)
                    .arg(&self.shared.consumer)
                    .arg(millis(lease))
                    .arg(max)
                    .arg(if history { "1" } else { "0" })
                    .arg(PROMOTE_BATCH);
                async move { invocation.invoke_async::<Value>(&mut con).await }
            })
            .await;
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                if history {
                    // Try again on the next receive.
                    if let Ok(mut set) = self.shared.recovered.lock() {
                        set.remove(&self.name);
                    }
                }
                return Err(e);
            }
        };
        let parts = items(&reply).unwrap_or_default();
        let next_due = parts
            .first()
            .and_then(int)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis);
        let mut entries = Vec::new();
        for item in parts.get(1).and_then(items).unwrap_or_default() {
            let fields = items(item).unwrap_or_default();
            let (Some(id), Some(deliveries)) = (fields.first().and_then(text), fields.get(1))
            else {
                continue;
            };
            entries.push(Entry {
                id,
                deliveries: int(deliveries)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
                fields: fields.get(2).map(field_pairs).unwrap_or_default(),
            });
        }
        Ok((next_due, entries))
    }

    /// New entries (`>`), blocking up to `block` on the dedicated
    /// connection, or not at all on the shared one.
    async fn read_new(
        &self,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, QueueError> {
        let cmd = |block_ms: Option<u64>| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg("COUNT")
                .arg(count);
            if let Some(ms) = block_ms {
                cmd.arg("BLOCK").arg(ms);
            }
            cmd.arg("STREAMS").arg(&self.name).arg(">");
            cmd
        };
        let reply = match block {
            None => {
                let con = self.commands().await?;
                self.with_group(&con, COMMAND_TIMEOUT, |mut con| {
                    let cmd = cmd(None);
                    async move { cmd.query_async::<Value>(&mut con).await }
                })
                .await?
            }
            Some(block) => {
                // BLOCK 0 would mean "forever": never less than 1 ms.
                let ms = millis(block).max(1);
                let limit = block + COMMAND_TIMEOUT;
                // Another receive of this queue is blocked on the connection:
                // wait for it at most as long as we would have blocked.
                let Ok(mut slot) = tokio::time::timeout(block, self.blocking.lock()).await else {
                    return Ok(Vec::new());
                };
                let con = match slot.as_ref() {
                    Some(con) => con.clone(),
                    None => {
                        let con =
                            connection_manager(&self.shared.client, MAX_BLOCK + COMMAND_TIMEOUT)?;
                        *slot = Some(con.clone());
                        con
                    }
                };
                self.with_group(&con, limit, |mut con| {
                    let cmd = cmd(Some(ms));
                    async move { cmd.query_async::<Value>(&mut con).await }
                })
                .await?
            }
        };
        Ok(parse_read_reply(&reply))
    }

    fn to_delivery(&self, entry: Entry) -> Delivery {
        let mut message = Message {
            id: entry.id.clone(),
            ..Default::default()
        };
        let mut before: u32 = 0;
        let mut body = None;
        for (field, value) in &entry.fields {
            match field.as_slice() {
                f if f == F_ID.as_bytes() => message.id = String::from_utf8_lossy(value).into(),
                f if f == F_BODY.as_bytes() => body = Some(value.clone()),
                f if f == F_ATTRIBUTES.as_bytes() => {
                    message.attributes = serde_json::from_slice(value).unwrap_or_default()
                }
                f if f == F_KEY.as_bytes() => {
                    message.key = Some(String::from_utf8_lossy(value).into())
                }
                f if f == F_ATTEMPTS.as_bytes() => {
                    before = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                }
                _ => {}
            }
        }
        // Entries written by other systems (pattern 2) may have no `body`:
        // hand the worker all their fields as a JSON object instead.
        message.body = body.unwrap_or_else(|| {
            let all: BTreeMap<String, String> = entry
                .fields
                .iter()
                .map(|(f, v)| {
                    (
                        String::from_utf8_lossy(f).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            serde_json::to_vec(&all).unwrap_or_default()
        });
        Delivery {
            message,
            attempt: before.saturating_add(entry.deliveries.max(1)),
            receipt: Receipt(format!("{}/{}", entry.id, entry.deliveries)),
        }
    }

    /// Run one of the lease-checking scripts; `0` from it means LeaseLost.
    async fn leased(
        &self,
        script: &Script,
        receipt: &Receipt,
        delay: Option<Duration>,
    ) -> Result<(), QueueError> {
        let (id, deliveries) = parse_receipt(receipt)?;
        let con = self.commands().await?;
        let done: i64 = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = script.key(&self.name);
            if delay.is_some() {
                invocation.key(&self.delayed);
            }
            invocation
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(id)
                .arg(deliveries);
            if let Some(delay) = delay {
                invocation.arg(millis(delay));
            }
            async move { invocation.invoke_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        if done == 1 {
            Ok(())
        } else {
            Err(QueueError::LeaseLost)
        }
    }
}

fn parse_receipt(receipt: &Receipt) -> Result<(&str, u32), QueueError> {
    let malformed = || QueueError::Invalid("malformed receipt".into());
    let (id, deliveries) = receipt.0.split_once('/').ok_or_else(malformed)?;
    let deliveries = deliveries.parse::<u32>().map_err(|_| malformed())?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok((id, deliveries))
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => bytes(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

/// Field/value pairs from a flat array (RESP2) or a map (RESP3).
fn field_pairs(v: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(f, v)| Some((bytes(f)?.to_vec(), bytes(v)?.to_vec())))
            .collect(),
        other => items(other)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|pair| match pair {
                [f, v] => Some((bytes(f)?.to_vec(), bytes(v)?.to_vec())),
                _ => None,
            })
            .collect(),
    }
}

/// Whether `id` is a stream entry id (`<ms>-<seq>`), so it can go to XRANGE
/// and XDEL without a syntax error.
fn is_entry_id(id: &str) -> bool {
    let Some((ms, seq)) = id.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    digits(ms) && digits(seq) && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()
}

/// XRANGE's reply: `[[id, fields]...]`.
fn parse_entries(reply: &Value) -> Vec<Entry> {
    items(reply)
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| {
            let parts = items(entry)?;
            Some(Entry {
                id: parts.first().and_then(text)?,
                deliveries: 1,
                fields: parts.get(1).map(field_pairs).unwrap_or_default(),
            })
        })
        .collect()
}

/// XREADGROUP's reply: nil, `[[stream, entries]]` (RESP2) or
/// `{stream: entries}` (RESP3). Entries read with `>` are first deliveries.
fn parse_read_reply(reply: &Value) -> Vec<Entry> {
    let streams: Vec<&Value> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        other => items(other)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| items(s)?.get(1))
            .collect(),
    };
    let mut out = Vec::new();
    for entries in streams {
        for entry in items(entries).unwrap_or_default() {
            let parts = items(entry).unwrap_or_default();
            let Some(id) = parts.first().and_then(text) else {
                continue;
            };
            out.push(Entry {
                id,
                deliveries: 1,
                fields: parts.get(1).map(field_pairs).unwrap_or_default(),
            });
        }
    }
    out
}

#[async_trait]
impl Queue for RedisQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native()
    }

    async fn publish(&self, message: Message) -> Result<(), QueueError> {
        let max = self.shared.max_message_bytes;
        if message.body.len() > max {
            return Err(QueueError::TooLarge {
                size: message.body.len(),
                max,
            });
        }
        let attributes = serde_json::to_string(&message.attributes)
            .map_err(|e| QueueError::Invalid(format!("attributes: {e}")))?;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.name)
            .arg("*")
            .arg(F_ID)
            .arg(&message.id)
            .arg(F_BODY)
            .arg(message.body.as_slice())
            .arg(F_ATTRIBUTES)
            .arg(attributes);
        if let Some(key) = &message.key {
            xadd.arg(F_KEY).arg(key);
        }
        xadd.arg(F_ATTEMPTS).arg(0);
        let con = self.commands().await?;
        match self.shared.replica_acks {
            None => {
                call(&con, COMMAND_TIMEOUT, |mut con| {
                    let xadd = xadd.clone();
                    async move { xadd.query_async::<Value>(&mut con).await }
                })
                .await
                .map_err(unavailable)?;
            }
            Some((replicas, timeout)) => {
                let mut pipe = redis::pipe();
                pipe.add_command(xadd)
                    .ignore()
                    .cmd("WAIT")
                    .arg(replicas)
                    .arg(millis(timeout).max(1));
                let (acked,): (u32,) = call(&con, COMMAND_TIMEOUT + timeout, |mut con| {
                    let pipe = pipe.clone();
                    async move { pipe.query_async(&mut con).await }
                })
                .await
                .map_err(unavailable)?;
                if acked < replicas {
                    return Err(QueueError::Unavailable(format!(
                        "only {acked} of {replicas} Redis replicas acknowledged the message"
                    )));
                }
            }
        }
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            let (next_due, mut entries) = self.prepare(max, lease).await?;
            if entries.len() < max {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let block = if !entries.is_empty() || remaining.is_zero() {
                    None
                } else {
                    // Wake in time for the next delayed message and for
                    // leases that end meanwhile.
                    let mut block = remaining.min(MAX_BLOCK);
                    if let Some(due) = next_due {
                        block = block.min(due);
                    }
                    Some(block)
                };
                let more = self.read_new(max - entries.len(), block).await?;
                entries.extend(more);
            }
            if !entries.is_empty() || Instant::now() >= deadline {
                return Ok(entries.into_iter().map(|e| self.to_delivery(e)).collect());
            }
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.leased(&self.shared.scripts.ack, receipt, None).await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.leased(&self.shared.scripts.nack, receipt, Some(delay))
            .await
    }

    async fn extend_lease(&self, receipt: &Receipt, _lease: Duration) -> Result<(), QueueError> {
        // Redis can only reset the idle time: the lease is again as long as
        // the reclaiming consumers' `lease` (the fleet shares one setting).
        self.leased(&self.shared.scripts.extend, receipt, None)
            .await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let con = self.commands().await?;
        let (len, pending, delayed): (u64, u64, u64) = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = self.shared.scripts.depth.key(&self.name);
            invocation.key(&self.delayed).arg(&self.shared.group);
            async move { invocation.invoke_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(Depth {
            ready: len.saturating_sub(pending).saturating_add(delayed),
            in_flight: pending,
        })
    }

    async fn browse(&self, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, QueueError> {
        let start = match after {
            None => "-".to_string(),
            Some(id) if is_entry_id(id) => format!("({id}"),
            Some(other) => {
                return Err(QueueError::Invalid(format!(
                    "`{other}` is not a position in this queue (a stream entry id)"
                )))
            }
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let count = limit.min(MAX_BATCH);
        let con = self.commands().await?;
        // XRANGE reads without touching the consumer group: nothing is
        // delivered or leased. Delayed retries (in `<stream>:delayed`) are
        // not in the stream until they are due, so they are not listed.
        let reply: Value = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut xrange = redis::cmd("XRANGE");
            xrange
                .arg(&self.name)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(count);
            async move { xrange.query_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(parse_entries(&reply)
            .into_iter()
            .map(|entry| {
                let position = entry.id.clone();
                Stored {
                    position,
                    message: self.to_delivery(entry).message,
                }
            })
            .collect())
    }

    async fn remove(&self, position: &str) -> Result<bool, QueueError> {
        if !is_entry_id(position) {
            return Ok(false);
        }
        let con = self.commands().await?;
        let deleted: i64 = call(&con, COMMAND_TIMEOUT, |mut con| {
            let mut invocation = self.shared.scripts.remove.key(&self.name);
            invocation.arg(&self.shared.group).arg(position);
            async move { invocation.invoke_async(&mut con).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(deleted > 0)
    }

    async fn close(&self) -> Result<(), QueueError> {
        // Waits for a blocked read to finish, then drops that connection.
        self.blocking.lock().await.take();
        // Leave no empty consumer behind (generated names pile up across
        // restarts); one still holding messages stays so they are not lost.
        if let Ok(con) = self.commands().await {
            let forgotten = call(&con, COMMAND_TIMEOUT, |mut con| {
                let mut invocation = self.shared.scripts.forget_consumer.key(&self.name);
                invocation
                    .arg(&self.shared.group)
                    .arg(&self.shared.consumer);
                async move { invocation.invoke_async::<i64>(&mut con).await }
            })
            .await;
            if let Err(e) = forgotten {
                tracing::debug!(queue = %self.name, error = %e, "could not remove idle consumer");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_reject_garbage() {
        let r = Receipt("1700000000000-0/3".into());
        assert_eq!(parse_receipt(&r).unwrap(), ("1700000000000-0", 3));
        for bad in ["", "abc", "1-0/", "/2", "1-0/x"] {
            assert!(matches!(
                parse_receipt(&Receipt(bad.into())),
                Err(QueueError::Invalid(_))
            ));
        }
    }

    #[test]
    fn read_replies_parse_in_both_protocols() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"body".to_vec()),
                Value::BulkString(vec![0, 255]),
            ]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![entry]),
        )]);
        for reply in [resp2, resp3] {
            let got = parse_read_reply(&reply);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].id, "1-0");
            assert_eq!(got[0].fields, vec![(b"body".to_vec(), vec![0, 255])]);
        }
        assert!(parse_read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn entry_ids_are_checked_before_they_reach_redis() {
        for good in ["0-0", "1700000000000-0", "1-18446744073709551615"] {
            assert!(is_entry_id(good), "{good}");
        }
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-x",
            "a-1",
            "1-0-0",
            "1-18446744073709551616",
            "(1-0",
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_connecting() {
        assert!(matches!(
            RedisBackend::new("not a url", "g", None, 10),
            Err(QueueError::Invalid(_))
        ));
        let b = RedisBackend::new("redis://127.0.0.1:1", "g", None, 10).unwrap();
        assert!(b.consumer_name().contains(&std::process::id().to_string()));
    }
}
