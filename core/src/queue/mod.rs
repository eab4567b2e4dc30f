//! The queue contract every backend implements (the backends are in
//! `crate::backends`).
//!
//! The contract is SQS-shaped (receive with a lease, ack, nack with a delay,
//! extend the lease) because that shape maps onto every broker we target; see
//! docs/backends.md for how each one implements it.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A message as published and as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Producer-chosen ID (the correlation ID for OpenHQM envelopes).
    pub id: String,
    /// Opaque bytes; backends must keep them exact.
    pub body: Vec<u8>,
    /// Small string attributes (broker headers, DLQ error, ...).
    pub attributes: BTreeMap<String, String>,
    /// Partition / ordering key, where the backend has one.
    pub key: Option<String>,
}

/// A message as it sits in a queue, seen without receiving it (see
/// [`Queue::browse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The backend's stable token for this message (an SQLite row number, a
    /// stream entry id, ...): pass it to [`Queue::remove`], or as `after` to
    /// read the next page.
    pub position: String,
    pub message: Message,
}

/// A backend's handle for one delivery; ack, nack and lease extension use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A received message, reserved for the receiver until its lease ends.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    /// 1 on first delivery; counts redeliveries after nacks and crashes.
    pub attempt: u32,
    pub receipt: Receipt,
}

/// Work in a queue: waiting to be received, and received but not yet acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub ready: u64,
    pub in_flight: u64,
}

impl Depth {
    pub fn total(&self) -> u64 {
        self.ready + self.in_flight
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The broker cannot be reached or refused the operation; retry later.
    Unavailable(String),
    /// The body is larger than the backend accepts.
    TooLarge { size: usize, max: usize },
    /// The lease ended and the message may be with another consumer now.
    LeaseLost,
    /// The backend cannot do this (see its capabilities).
    Unsupported(&'static str),
    /// A configuration or usage error.
    Invalid(String),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Unavailable(m) => write!(f, "queue unavailable: {m}"),
            QueueError::TooLarge { size, max } => {
                write!(
                    f,
                    "message of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            QueueError::LeaseLost => write!(f, "lease lost: the message was redelivered"),
            QueueError::Unsupported(what) => write!(f, "not supported by this backend: {what}"),
            QueueError::Invalid(m) => write!(f, "invalid queue operation: {m}"),
        }
    }
}

impl std::error::Error for QueueError {}

/// How a backend provides one property of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The broker does it.
    Native,
    /// The backend builds it from other broker features; the text says how.
    Emulated(&'static str),
    /// Not available; the text says why. The conformance suite skips the
    /// matching cases and prints this reason.
    Unsupported(&'static str),
}

impl Support {
    pub fn is_available(&self) -> bool {
        !matches!(self, Support::Unsupported(_))
    }
}

/// What a queue backend can do; see the capabilities table in docs/backends.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `nack` with a delay redelivers no earlier than the delay.
    pub delayed_nack: Support,
    /// `extend_lease` keeps a slow message from being redelivered.
    pub lease_extension: Support,
    /// `depth` reports pending work.
    pub depth: Support,
    /// A message held by a consumer that died is delivered to *another*
    /// consumer (not only to the same consumer identity when it returns).
    pub redelivery_to_other_consumer: Support,
    /// `browse` lists and `remove` deletes messages without receiving them
    /// (dead-letter tooling).
    pub browse: Support,
}

/// What a queue that does not declare its capabilities gets: nothing
/// claimed. A backend says what it has by overriding
/// [`Queue::capabilities`]; the conformance suite then runs those cases.
impl Default for Capabilities {
    fn default() -> Self {
        const UNDECLARED: Support = Support::Unsupported("not declared by the backend");
        Capabilities {
            delayed_nack: UNDECLARED,
            lease_extension: UNDECLARED,
            depth: UNDECLARED,
            redelivery_to_other_consumer: UNDECLARED,
            browse: UNDECLARED,
        }
    }
}

impl Capabilities {
    /// Everything done by the broker itself.
    pub const fn all_native() -> Self {
        Capabilities {
            delayed_nack: Support::Native,
            lease_extension: Support::Native,
            depth: Support::Native,
            redelivery_to_other_consumer: Support::Native,
            browse: Support::Native,
        }
    }
}

/// One named queue of a backend.
#[async_trait]
pub trait Queue: Send + Sync {
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Durable when it returns `Ok`: the message survives a crash of this
    /// process and of the broker (as far as the broker's own durability goes).
    async fn publish(&self, message: Message) -> Result<(), QueueError>;

    /// Up to `max` messages, waiting up to `wait` for the first one. Each is
    /// leased for `lease`: unless acked, nacked or extended by then, it is
    /// delivered again (to any consumer).
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Done: never delivered again. `LeaseLost` if the lease had ended.
    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError>;

    /// Not done: deliver again, no earlier than `delay` from now.
    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError>;

    /// Still working: the lease now ends `lease` from now.
    async fn extend_lease(&self, receipt: &Receipt, lease: Duration) -> Result<(), QueueError>;

    async fn depth(&self) -> Result<Depth, QueueError>;

    /// Whether the broker answers, for readiness probes. The default asks
    /// for the depth; backends without depth override it.
    async fn ping(&self) -> Result<(), QueueError> {
        self.depth().await.map(|_| ())
    }

    /// For a process that publishes to this queue but never consumes it (the
    /// worker and the DLQ): make sure the broker keeps what is published even
    /// while no consumer is connected. Streams, logs and queues always do;
    /// MQTT drops messages nobody is subscribed to, so its backend keeps a
    /// persistent session for the queue.
    async fn retain_unconsumed(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Up to `limit` messages currently in the queue (waiting or leased),
    /// oldest first, without receiving, leasing or otherwise changing them.
    /// `after` is the position of the last message of the previous page.
    async fn browse(&self, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, QueueError> {
        let _ = (after, limit);
        Err(QueueError::Unsupported("browsing a queue"))
    }

    /// Delete the message at `position` for good, leased or not; `Ok(false)`
    /// when there is none (already removed, acked, or never there).
    async fn remove(&self, position: &str) -> Result<bool, QueueError> {
        let _ = position;
        Err(QueueError::Unsupported("removing a message by position"))
    }

    /// Release connections; pending operations finish first.
    async fn close(&self) -> Result<(), QueueError>;
}

/// A queue backend: opens named queues on one broker.
#[async_trait]
pub trait QueueBackend: Send + Sync {
    /// The `queue.type` this backend answers to.
    fn kind(&self) -> &str;
    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError>;
}

/// Attributes set on a dead-lettered message.
pub mod dlq_attr {
    pub const ERROR: &str = "openhqm-error";
    pub const ATTEMPTS: &str = "openhqm-attempts";
    pub const FAILED_AT: &str = "openhqm-failed-at";
    pub const SOURCE_QUEUE: &str = "openhqm-source-queue";
}

/// Move a delivery to the dead-letter queue with the error that ended it.
/// Published to the DLQ first, then acked: a crash in between leaves a
/// duplicate, never a loss.
pub async fn dead_letter(
    source: &dyn Queue,
    dlq: &dyn Queue,
    delivery: &Delivery,
    error: &str,
) -> Result<(), QueueError> {
    let mut msg = delivery.message.clone();
    msg.attributes
        .insert(dlq_attr::ERROR.into(), error.to_string());
    msg.attributes
        .insert(dlq_attr::ATTEMPTS.into(), delivery.attempt.to_string());
    msg.attributes
        .insert(dlq_attr::FAILED_AT.into(), crate::time::now_rfc3339());
    msg.attributes
        .insert(dlq_attr::SOURCE_QUEUE.into(), source.name().to_string());
    dlq.publish(msg).await?;
    source.ack(&delivery.receipt).await
}
