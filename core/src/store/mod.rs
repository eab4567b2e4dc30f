//! The result store contract: status and result per correlation ID, with a
//! TTL, shared by every bridge and worker.

#[cfg(feature = "embedded")]
pub mod embedded;

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

    /// The record, if it exists and has not expired.
    async fn get(&self, correlation_id: &str) -> Result<Option<RequestRecord>, StoreError>;

    async fn delete(&self, correlation_id: &str) -> Result<(), StoreError>;

    /// Drop expired records where the store does not expire them itself.
    async fn purge_expired(&self) -> Result<u64, StoreError>;
}
