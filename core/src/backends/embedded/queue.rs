//! The embedded queue: no server, messages in a SQLite file under
//! `queue.data_dir`, shared by any number of bridge and worker processes on
//! one machine (or one volume).
//!
//! Leases work like an SQS visibility timeout: receiving a message pushes its
//! `visible_at` into the future and stamps a fresh lease token. If the
//! consumer dies, the message simply becomes visible again when the lease
//! ends. Ack, nack and extension only act while the token still matches, so a
//! consumer whose lease ended cannot ack a message another consumer now holds.

use super::sqlite::SharedDb;
use crate::queue::{
    Capabilities, Delivery, Depth, Message, Queue, QueueBackend, QueueError, Receipt, Stored,
};
use crate::time::now_ms;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    attributes  TEXT    NOT NULL,
    msg_key     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  INTEGER NOT NULL,
    lease_token TEXT,
    enqueued_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at, seq);
";

/// How often an idle consumer looks for messages published by other
/// processes (same-process publishes wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub struct EmbeddedBackend {
    db: SharedDb,
    max_message_bytes: usize,
    published: Arc<Notify>,
}

impl EmbeddedBackend {
    pub fn open(data_dir: &Path, max_message_bytes: usize) -> Result<EmbeddedBackend, QueueError> {
        let db =
            SharedDb::open(&data_dir.join("queue.db"), SCHEMA).map_err(QueueError::Unavailable)?;
        Ok(EmbeddedBackend {
            db,
            max_message_bytes,
            published: Arc::new(Notify::new()),
        })
    }
}

#[async_trait]
impl QueueBackend for EmbeddedBackend {
    fn kind(&self) -> &str {
        "embedded"
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        if name.is_empty() {
            return Err(QueueError::Invalid("queue name is empty".into()));
        }
        Ok(Arc::new(EmbeddedQueue {
            name: name.to_string(),
            db: self.db.clone(),
            max_message_bytes: self.max_message_bytes,
            published: self.published.clone(),
        }))
    }
}

pub struct EmbeddedQueue {
    name: String,
    db: SharedDb,
    max_message_bytes: usize,
    published: Arc<Notify>,
}

fn unavailable(e: String) -> QueueError {
    QueueError::Unavailable(e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX / 2)
}

/// Receipts are `seq:token`.
fn parse_receipt(r: &Receipt) -> Result<(i64, String), QueueError> {
    let (seq, token) =
        r.0.split_once(':')
            .ok_or_else(|| QueueError::Invalid("malformed receipt".into()))?;
    let seq = seq
        .parse::<i64>()
        .map_err(|_| QueueError::Invalid("malformed receipt".into()))?;
    Ok((seq, token.to_string()))
}

impl EmbeddedQueue {
    async fn try_receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivery>, QueueError> {
        let queue = self.name.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let lease_ms = millis(lease);
        self.db
            .call(move |conn| {
                let now = now();
                // Look first without the write lock: idle polling must not
                // block publishers in other processes.
                let any: Option<i64> = conn
                    .query_row(
                        "SELECT seq FROM messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
                        params![queue, now],
                        |r| r.get(0),
                    )
                    .optional()?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut out = Vec::new();
                {
                    let mut select = tx.prepare_cached(
                        "SELECT seq, id, body, attributes, msg_key, attempts FROM messages
                         WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3",
                    )?;
                    let rows = select.query_map(params![queue, now, max], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })?;
                    let mut lease_update = tx.prepare_cached(
                        "UPDATE messages SET attempts = attempts + 1, visible_at = ?2, lease_token = ?3
                         WHERE seq = ?1",
                    )?;
                    for row in rows {
                        let (seq, id, body, attrs, key, attempts) = row?;
                        let token = uuid::Uuid::new_v4().simple().to_string();
                        lease_update.execute(params![seq, now.saturating_add(lease_ms), token])?;
                        out.push(Delivery {
                            message: Message {
                                id,
                                body,
                                attributes: serde_json::from_str(&attrs).unwrap_or_default(),
                                key,
                            },
                            attempt: u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX),
                            receipt: Receipt(format!("{seq}:{token}")),
                        });
                    }
                }
                tx.commit()?;
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }

    /// Run a statement that must match the current lease of one message.
    /// `sql` takes `?1` = seq, `?2` = lease token, then `extra`.
    async fn leased_update(
        &self,
        receipt: &Receipt,
        sql: &'static str,
        extra: Vec<i64>,
    ) -> Result<(), QueueError> {
        let (seq, token) = parse_receipt(receipt)?;
        let mut values: Vec<rusqlite::types::Value> = vec![seq.into(), token.into()];
        values.extend(extra.into_iter().map(rusqlite::types::Value::from));
        let changed = self
            .db
            .write(move |conn| conn.execute(sql, rusqlite::params_from_iter(values)))
            .await
            .map_err(unavailable)?;
        if changed == 0 {
            return Err(QueueError::LeaseLost);
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native()
    }

    async fn publish(&self, message: Message) -> Result<(), QueueError> {
        if message.body.len() > self.max_message_bytes {
            return Err(QueueError::TooLarge {
                size: message.body.len(),
                max: self.max_message_bytes,
            });
        }
        let queue = self.name.clone();
        let attrs = serde_json::to_string(&message.attributes).unwrap_or_else(|_| "{}".into());
        self.db
            .write(move |conn| {
                let now = now();
                conn.execute(
                    "INSERT INTO messages (queue, id, body, attributes, msg_key, attempts, visible_at, enqueued_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)",
                    params![queue, message.id, message.body, attrs, message.key, now],
                )
            })
            .await
            .map_err(unavailable)?;
        self.published.notify_waiters();
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
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.published.notified();
            let got = self.try_receive(max, lease).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.leased_update(
            receipt,
            "DELETE FROM messages WHERE seq = ?1 AND lease_token = ?2",
            vec![],
        )
        .await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        // `now()` is the current millisecond rounded down, so up to 1 ms has
        // already passed; one more keeps "no earlier than the delay" exact.
        let at = now().saturating_add(millis(delay)).saturating_add(1);
        self.leased_update(
            receipt,
            "UPDATE messages SET lease_token = NULL, visible_at = ?3 WHERE seq = ?1 AND lease_token = ?2",
            vec![at],
        )
        .await?;
        self.published.notify_waiters();
        Ok(())
    }

    async fn extend_lease(&self, receipt: &Receipt, lease: Duration) -> Result<(), QueueError> {
        let at = now().saturating_add(millis(lease));
        // The token changes on every delivery, so a matching token means no
        // other consumer has received the message since, even if the lease
        // ran out a moment ago.
        self.leased_update(
            receipt,
            "UPDATE messages SET visible_at = ?3 WHERE seq = ?1 AND lease_token = ?2",
            vec![at],
        )
        .await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let queue = self.name.clone();
        self.db
            .call(move |conn| {
                let now = now();
                conn.query_row(
                    "SELECT
                        COALESCE(SUM(CASE WHEN visible_at <= ?2 THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN visible_at > ?2 AND lease_token IS NOT NULL THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN visible_at > ?2 AND lease_token IS NULL THEN 1 ELSE 0 END), 0)
                     FROM messages WHERE queue = ?1",
                    params![queue, now],
                    |r| {
                        let ready: i64 = r.get(0)?;
                        let leased: i64 = r.get(1)?;
                        let delayed: i64 = r.get(2)?;
                        // Delayed retries are pending work: count them as ready.
                        Ok(Depth {
                            ready: u64::try_from(ready + delayed).unwrap_or(0),
                            in_flight: u64::try_from(leased).unwrap_or(0),
                        })
                    },
                )
            })
            .await
            .map_err(unavailable)
    }

    async fn browse(&self, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, QueueError> {
        // Positions are row numbers: rows keep theirs across nacks, so a page
        // boundary never skips or repeats a message.
        let after = match after {
            None => 0,
            Some(p) => parse_position(p).ok_or_else(|| {
                QueueError::Invalid(format!("`{p}` is not a position in this queue"))
            })?,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let queue = self.name.clone();
        self.db
            .call(move |conn| {
                let mut select = conn.prepare_cached(
                    "SELECT seq, id, body, attributes, msg_key FROM messages
                     WHERE queue = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = select.query_map(params![queue, after, limit], |r| {
                    Ok(Stored {
                        position: r.get::<_, i64>(0)?.to_string(),
                        message: Message {
                            id: r.get(1)?,
                            body: r.get(2)?,
                            attributes: serde_json::from_str(&r.get::<_, String>(3)?)
                                .unwrap_or_default(),
                            key: r.get(4)?,
                        },
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, position: &str) -> Result<bool, QueueError> {
        let Some(seq) = parse_position(position) else {
            return Ok(false);
        };
        let queue = self.name.clone();
        let changed = self
            .db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM messages WHERE queue = ?1 AND seq = ?2",
                    params![queue, seq],
                )
            })
            .await
            .map_err(unavailable)?;
        Ok(changed > 0)
    }

    async fn close(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Positions are the row's `seq`, written in decimal.
fn parse_position(p: &str) -> Option<i64> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn queue(dir: &Path) -> Arc<dyn Queue> {
        let backend = EmbeddedBackend::open(dir, 1024).unwrap();
        backend.open("q").await.unwrap()
    }

    fn msg(id: &str, body: &[u8]) -> Message {
        Message {
            id: id.into(),
            body: body.to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn publish_receive_ack() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path()).await;
        let all: Vec<u8> = (0..=255u8).collect();
        q.publish(msg("a", &all)).await.unwrap();
        assert_eq!(
            q.depth().await.unwrap(),
            Depth {
                ready: 1,
                in_flight: 0
            }
        );
        let got = q
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.body, all);
        assert_eq!(got[0].attempt, 1);
        assert_eq!(
            q.depth().await.unwrap(),
            Depth {
                ready: 0,
                in_flight: 1
            }
        );
        q.ack(&got[0].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap().total(), 0);
        assert_eq!(q.ack(&got[0].receipt).await, Err(QueueError::LeaseLost));
    }

    #[tokio::test]
    async fn too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path()).await;
        let err = q.publish(msg("big", &[0u8; 1025])).await.unwrap_err();
        assert_eq!(
            err,
            QueueError::TooLarge {
                size: 1025,
                max: 1024
            }
        );
    }

    #[tokio::test]
    async fn expired_lease_redelivers_and_old_receipt_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path()).await;
        q.publish(msg("a", b"x")).await.unwrap();
        let first = q
            .receive(1, Duration::ZERO, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(q
            .receive(1, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = q
            .receive(1, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].attempt, 2);
        assert_eq!(q.ack(&first[0].receipt).await, Err(QueueError::LeaseLost));
        q.ack(&second[0].receipt).await.unwrap();
    }

    #[tokio::test]
    async fn nack_delays_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path()).await;
        q.publish(msg("a", b"x")).await.unwrap();
        let d = q
            .receive(1, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        let started = Instant::now();
        q.nack(&d[0].receipt, Duration::from_millis(300))
            .await
            .unwrap();
        let again = q
            .receive(1, Duration::from_secs(2), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(again[0].attempt, 2);
    }

    #[tokio::test]
    async fn extension_keeps_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path()).await;
        q.publish(msg("a", b"x")).await.unwrap();
        let d = q
            .receive(1, Duration::ZERO, Duration::from_millis(200))
            .await
            .unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            q.extend_lease(&d[0].receipt, Duration::from_millis(200))
                .await
                .unwrap();
        }
        assert!(q
            .receive(1, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
        q.ack(&d[0].receipt).await.unwrap();
    }

    #[tokio::test]
    async fn two_handles_on_one_directory_share_the_queue() {
        // Two backends = two connections, as two processes would have.
        let dir = tempfile::tempdir().unwrap();
        let producer = queue(dir.path()).await;
        let consumer = queue(dir.path()).await;
        for i in 0..20 {
            producer.publish(msg(&i.to_string(), b"x")).await.unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 20 {
            let got = consumer
                .receive(7, Duration::from_secs(1), Duration::from_secs(30))
                .await
                .unwrap();
            assert!(!got.is_empty());
            for d in got {
                assert!(seen.insert(d.message.id.clone()), "delivered twice");
                consumer.ack(&d.receipt).await.unwrap();
            }
        }
        assert_eq!(producer.depth().await.unwrap().total(), 0);
    }
}
