//! The result store contract: status and result per correlation ID, with a
//! TTL, shared by every bridge and worker.

use crate::model::RequestRecord;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Unavailable(String),
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "result store unavailable: {m}"),
            StoreError::Corrupt(m) => write!(f, "result store record unreadable: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new: it now belongs to this request.
    Claimed,
    /// The key was already used, by this request (same fingerprint) or
    /// another one.
    Existing {
        fingerprint: String,
        correlation_id: String,
    },
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// The stored record is final (COMPLETED/FAILED/TIMEOUT) and was kept:
    /// the first final outcome wins, so a redelivered duplicate cannot
    /// overwrite it.
    KeptFinal,
}

#[async_trait]
pub trait ResultStore: Send + Sync {
    /// Insert or replace the record, unless the stored one is final.
    async fn put(&self, record: &RequestRecord, ttl: Duration) -> Result<PutOutcome, StoreError>;

    /// Store a new request's record only if no unexpired record has this
    /// ID (the bridge's PENDING write, which also refuses a reused ID);
    /// true when written. The default reads, then writes (not atomic);
    /// built-in stores do it in one step.
    async fn create(&self, record: &RequestRecord, ttl: Duration) -> Result<bool, StoreError> {
        if self.get(&record.correlation_id).await?.is_some() {
            return Ok(false);
        }
        Ok(self.put(record, ttl).await? == PutOutcome::Written)
    }

    /// The record, if it exists and has not expired.
    async fn get(&self, correlation_id: &str) -> Result<Option<RequestRecord>, StoreError>;

    async fn delete(&self, correlation_id: &str) -> Result<(), StoreError>;

    /// Drop expired records where the store does not expire them itself.
    async fn purge_expired(&self) -> Result<u64, StoreError>;

    /// Atomically: remember `key` as used by the request with `fingerprint`,
    /// accepted as `correlation_id`, for `ttl`, unless the key is already
    /// known (then: what it was first used for).
    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        correlation_id: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Forget a claim (the request it was made for was not accepted after
    /// all), only if it still belongs to `correlation_id`.
    async fn release_idempotency_key(
        &self,
        key: &str,
        correlation_id: &str,
    ) -> Result<(), StoreError>;

    /// Wait up to `timeout` for the record to become final, then return it
    /// as it is (final or not; `None` if there is none). Stores that can be
    /// notified (Redis pub/sub) override this; the default looks every
    /// [`WAIT_POLL_INTERVAL`].
    async fn wait_final(
        &self,
        correlation_id: &str,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.get(correlation_id).await?;
            let now = tokio::time::Instant::now();
            if record.as_ref().is_none_or(|r| r.status.is_final()) || now >= deadline {
                return Ok(record);
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL.min(deadline - now)).await;
        }
    }
}

/// How often the default [`ResultStore::wait_final`] looks at the store.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(25);
