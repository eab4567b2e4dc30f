//! The embedded result store: a SQLite file beside the embedded queue, shared
//! by the processes on one machine. Expired rows are invisible at once and
//! deleted by `purge_expired`, which bridge and worker call periodically.

use super::sqlite::SharedDb;
use crate::model::RequestRecord;
use crate::store::{IdempotencyClaim, PutOutcome, ResultStore, StoreError};
use crate::time::now_ms;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::path::Path;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    id         TEXT    PRIMARY KEY,
    status     TEXT    NOT NULL,
    is_final   INTEGER NOT NULL,
    record     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key            TEXT    PRIMARY KEY,
    fingerprint    TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    expires_at     INTEGER NOT NULL
);
";

pub struct EmbeddedStore {
    db: SharedDb,
}

impl EmbeddedStore {
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = SharedDb::open(&data_dir.join("results.db"), SCHEMA)
            .map_err(StoreError::Unavailable)?;
        Ok(EmbeddedStore { db })
    }
}

fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX / 2)
}

/// Which live row a write may replace (an expired row counts as absent).
enum Replace {
    UnlessFinal,
    Never,
}

impl EmbeddedStore {
    /// Insert the record, or replace the row as `replace` allows; true when
    /// written.
    async fn write_record(
        &self,
        record: &RequestRecord,
        ttl: Duration,
        replace: Replace,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = record.correlation_id.clone();
        let status = record.status.as_str();
        let is_final = record.status.is_final();
        let expires = now().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2));
        let replace_when = match replace {
            Replace::UnlessFinal => "results.is_final = 0 OR results.expires_at <= ?6",
            Replace::Never => "results.expires_at <= ?6",
        };
        let sql = format!(
            "INSERT INTO results (id, status, is_final, record, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET
                status = excluded.status, is_final = excluded.is_final,
                record = excluded.record, expires_at = excluded.expires_at
             WHERE {replace_when}"
        );
        let changed = self
            .db
            .write(move |conn| {
                conn.execute(&sql, params![id, status, is_final, json, expires, now()])
            })
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(changed > 0)
    }
}

#[async_trait]
impl ResultStore for EmbeddedStore {
    async fn put(&self, record: &RequestRecord, ttl: Duration) -> Result<PutOutcome, StoreError> {
        Ok(
            if self.write_record(record, ttl, Replace::UnlessFinal).await? {
                PutOutcome::Written
            } else {
                PutOutcome::KeptFinal
            },
        )
    }

    async fn create(&self, record: &RequestRecord, ttl: Duration) -> Result<bool, StoreError> {
        self.write_record(record, ttl, Replace::Never).await
    }

    async fn get(&self, correlation_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let id = correlation_id.to_string();
        let row: Option<String> = self
            .db
            .call(move |conn| {
                conn.query_row(
                    "SELECT record FROM results WHERE id = ?1 AND expires_at > ?2",
                    params![id, now()],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(StoreError::Unavailable)?;
        match row {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    async fn delete(&self, correlation_id: &str) -> Result<(), StoreError> {
        let id = correlation_id.to_string();
        self.db
            .write(move |conn| conn.execute("DELETE FROM results WHERE id = ?1", params![id]))
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let n = self
            .db
            .call(|conn| {
                let now = now();
                conn.execute(
                    "DELETE FROM idempotency WHERE expires_at <= ?1",
                    params![now],
                )?;
                conn.execute("DELETE FROM results WHERE expires_at <= ?1", params![now])
            })
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        correlation_id: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (key, fingerprint, id) = (
            key.to_string(),
            fingerprint.to_string(),
            correlation_id.to_string(),
        );
        let expires = now().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2));
        self.db
            .write(move |conn| {
                // An expired claim counts as absent.
                let inserted = conn.execute(
                    "INSERT INTO idempotency (key, fingerprint, correlation_id, expires_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(key) DO UPDATE SET
                        fingerprint = excluded.fingerprint, correlation_id = excluded.correlation_id,
                        expires_at = excluded.expires_at
                     WHERE idempotency.expires_at <= ?5",
                    params![key, fingerprint, id, expires, now()],
                )?;
                if inserted > 0 {
                    return Ok(IdempotencyClaim::Claimed);
                }
                conn.query_row(
                    "SELECT fingerprint, correlation_id FROM idempotency WHERE key = ?1",
                    params![key],
                    |r| {
                        Ok(IdempotencyClaim::Existing {
                            fingerprint: r.get(0)?,
                            correlation_id: r.get(1)?,
                        })
                    },
                )
            })
            .await
            .map_err(StoreError::Unavailable)
    }

    async fn release_idempotency_key(
        &self,
        key: &str,
        correlation_id: &str,
    ) -> Result<(), StoreError> {
        let (key, id) = (key.to_string(), correlation_id.to_string());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM idempotency WHERE key = ?1 AND correlation_id = ?2",
                    params![key, id],
                )
            })
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, StoredResponse};

    #[tokio::test]
    async fn lifecycle_and_final_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let ttl = Duration::from_secs(60);
        let mut rec = RequestRecord::pending("id-1", "2026-11-22T00:00:00.000Z");
        assert_eq!(store.put(&rec, ttl).await.unwrap(), PutOutcome::Written);
        rec.status = Status::Processing;
        store.put(&rec, ttl).await.unwrap();
        assert_eq!(
            store.get("id-1").await.unwrap().unwrap().status,
            Status::Processing
        );
        rec.status = Status::Completed;
        rec.response = Some(StoredResponse::new(200, vec![], b"first"));
        assert_eq!(store.put(&rec, ttl).await.unwrap(), PutOutcome::Written);
        let mut dup = rec.clone();
        dup.response = Some(StoredResponse::new(200, vec![], b"second"));
        assert_eq!(store.put(&dup, ttl).await.unwrap(), PutOutcome::KeptFinal);
        let got = store.get("id-1").await.unwrap().unwrap();
        assert_eq!(got.response.unwrap().body, "first");
        assert!(store.get("missing").await.unwrap().is_none());
        store.delete("id-1").await.unwrap();
        assert!(store.get("id-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn records_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rec = RequestRecord::pending("id-2", "t");
        store.put(&rec, Duration::from_millis(50)).await.unwrap();
        assert!(store.get("id-2").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(store.get("id-2").await.unwrap().is_none());
        assert_eq!(store.purge_expired().await.unwrap(), 1);
    }
}
