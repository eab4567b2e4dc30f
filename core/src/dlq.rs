//! Dead-letter operations, shared by the bridge's admin API and its `dlq`
//! subcommand: list, inspect, replay (one or all) and purge the messages
//! the workers gave up on.
//!
//! They work on any backend whose queues can be browsed (see
//! [`Capabilities::browse`](crate::queue::Capabilities)); on the others every
//! operation answers `QueueError::Unsupported`.

use crate::envelope::Envelope;
use crate::model::RequestRecord;
use crate::queue::{dlq_attr, Message, Queue, QueueError, Stored};
use crate::store::{ResultStore, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

/// Messages read per page by the operations that scan the whole DLQ.
const SCAN_PAGE: usize = 200;

/// One dead-lettered message, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The backend's position token: names the message in the other
    /// operations.
    pub position: String,
    /// The message ID: the request's correlation ID.
    pub message_id: String,
    /// Why the worker gave up.
    pub error: Option<String>,
    /// Attempts made before it gave up.
    pub attempts: Option<u32>,
    /// When it gave up (RFC 3339).
    pub failed_at: Option<String>,
    /// The queue it was taken from.
    pub source_queue: Option<String>,
    pub size_bytes: usize,
    /// The message's own attributes (the dead-letter ones above left out).
    pub attributes: BTreeMap<String, String>,
}

impl DeadLetter {
    pub fn from_stored(stored: &Stored) -> DeadLetter {
        let attrs = &stored.message.attributes;
        DeadLetter {
            position: stored.position.clone(),
            message_id: stored.message.id.clone(),
            error: attrs.get(dlq_attr::ERROR).cloned(),
            attempts: attrs
                .get(dlq_attr::ATTEMPTS)
                .and_then(|a| a.trim().parse().ok()),
            failed_at: attrs.get(dlq_attr::FAILED_AT).cloned(),
            source_queue: attrs.get(dlq_attr::SOURCE_QUEUE).cloned(),
            size_bytes: stored.message.body.len(),
            attributes: attrs
                .iter()
                .filter(|(k, _)| !is_dlq_attr(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

fn is_dlq_attr(key: &str) -> bool {
    [
        dlq_attr::ERROR,
        dlq_attr::ATTEMPTS,
        dlq_attr::FAILED_AT,
        dlq_attr::SOURCE_QUEUE,
    ]
    .contains(&key)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqError {
    Queue(QueueError),
    Store(StoreError),
    /// No message at that position (already replayed or removed).
    NotFound,
}

impl fmt::Display for DlqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DlqError::Queue(e) => e.fmt(f),
            DlqError::Store(e) => e.fmt(f),
            DlqError::NotFound => f.write_str("no dead letter at this position"),
        }
    }
}

impl std::error::Error for DlqError {}

impl From<QueueError> for DlqError {
    fn from(e: QueueError) -> Self {
        DlqError::Queue(e)
    }
}

impl From<StoreError> for DlqError {
    fn from(e: StoreError) -> Self {
        DlqError::Store(e)
    }
}

/// Up to `limit` dead letters after position `after`, oldest first.
pub async fn list(
    dlq: &dyn Queue,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    Ok(dlq
        .browse(after, limit)
        .await?
        .iter()
        .map(DeadLetter::from_stored)
        .collect())
}

async fn find(dlq: &dyn Queue, position: &str) -> Result<Option<Stored>, QueueError> {
    let mut after: Option<String> = None;
    loop {
        let page = dlq.browse(after.as_deref(), SCAN_PAGE).await?;
        if let Some(hit) = page.iter().find(|s| s.position == position) {
            return Ok(Some(hit.clone()));
        }
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => after = Some(last.position.clone()),
            _ => return Ok(None),
        }
    }
}

/// The dead letter at `position` and its body.
pub async fn get(
    dlq: &dyn Queue,
    position: &str,
) -> Result<Option<(DeadLetter, Vec<u8>)>, QueueError> {
    Ok(find(dlq, position)
        .await?
        .map(|s| (DeadLetter::from_stored(&s), s.message.body)))
}

/// Send the dead letter at `position` back to `target` (the request queue)
/// as a new message, then take it off the DLQ.
///
/// The request's record is reset to PENDING first: the store keeps the
/// first final outcome, and a worker that found the old FAILED record would
/// settle the replay as a duplicate without calling the backend. Then the
/// message is published, and only then removed from the DLQ: a crash in
/// between leaves a duplicate, never a loss.
pub async fn replay(
    dlq: &dyn Queue,
    target: &dyn Queue,
    store: &dyn ResultStore,
    position: &str,
    ttl: Duration,
) -> Result<DeadLetter, DlqError> {
    let stored = find(dlq, position).await?.ok_or(DlqError::NotFound)?;
    replay_stored(dlq, target, store, &stored, ttl).await?;
    Ok(DeadLetter::from_stored(&stored))
}

async fn replay_stored(
    dlq: &dyn Queue,
    target: &dyn Queue,
    store: &dyn ResultStore,
    stored: &Stored,
    ttl: Duration,
) -> Result<(), DlqError> {
    let envelope = Envelope::decode(&stored.message.body).ok();
    let correlation_id = envelope
        .as_ref()
        .map(|e| e.correlation_id.clone())
        .unwrap_or_else(|| stored.message.id.clone());
    let old = store.get(&correlation_id).await?;
    let submitted_at = old
        .as_ref()
        .map(|r| r.submitted_at.clone())
        .or_else(|| envelope.as_ref().map(|e| e.submitted_at.clone()))
        .unwrap_or_else(crate::time::now_rfc3339);
    let mut pending = RequestRecord::pending(&correlation_id, &submitted_at);
    pending.updated_at = crate::time::now_rfc3339();
    store.delete(&correlation_id).await?;
    store.put(&pending, ttl).await?;

    let mut message: Message = stored.message.clone();
    message.attributes.retain(|k, _| !is_dlq_attr(k));
    if let Err(e) = target.publish(message).await {
        // Not replayed: put the old outcome back (best effort), so the
        // request does not read PENDING while its message sits in the DLQ.
        if let Some(old) = &old {
            if store.delete(&correlation_id).await.is_ok() {
                let _ = store.put(old, ttl).await;
            }
        }
        return Err(e.into());
    }
    if !dlq.remove(&stored.position).await? {
        tracing::warn!(position = %stored.position, "dead letter was gone before its replay removed it");
    }
    tracing::info!(correlation_id = %correlation_id, position = %stored.position, queue = target.name(), "dead letter replayed");
    Ok(())
}

/// What [`replay_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ReplayCounts {
    pub replayed: u64,
    pub failed: u64,
}

/// Replay every message that is in the DLQ when the call starts (messages
/// dead-lettered meanwhile, including replays that fail again, are left for
/// the next call). A message that cannot be replayed is counted and left
/// in the DLQ.
pub async fn replay_all(
    dlq: &dyn Queue,
    target: &dyn Queue,
    store: &dyn ResultStore,
    ttl: Duration,
) -> Result<ReplayCounts, QueueError> {
    let mut todo = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = dlq.browse(after.as_deref(), SCAN_PAGE).await?;
        todo.extend(page.iter().map(|s| s.position.clone()));
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => after = Some(last.position.clone()),
            _ => break,
        }
    }
    let mut counts = ReplayCounts::default();
    let mut after: Option<String> = None;
    while !todo.is_empty() {
        let page = dlq.browse(after.as_deref(), SCAN_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position.clone());
        for stored in &page {
            if !todo.remove(&stored.position) {
                continue;
            }
            match replay_stored(dlq, target, store, stored, ttl).await {
                Ok(()) => counts.replayed += 1,
                Err(e) => {
                    tracing::warn!(position = %stored.position, error = %e, "dead letter not replayed");
                    counts.failed += 1;
                }
            }
        }
        if page.len() < SCAN_PAGE {
            break;
        }
    }
    Ok(counts)
}

/// Remove the message at `position` from the DLQ for good.
pub async fn delete(dlq: &dyn Queue, position: &str) -> Result<bool, QueueError> {
    dlq.remove(position).await
}

/// Remove every message from the DLQ; returns how many were removed.
pub async fn purge(dlq: &dyn Queue) -> Result<u64, QueueError> {
    let mut removed = 0;
    let mut after: Option<String> = None;
    loop {
        let page = dlq.browse(after.as_deref(), SCAN_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position.clone());
        for stored in &page {
            if dlq.remove(&stored.position).await? {
                removed += 1;
            }
        }
        if page.len() < SCAN_PAGE {
            break;
        }
    }
    Ok(removed)
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedBackend;
    use crate::backends::embedded::EmbeddedStore;
    use crate::envelope::{Metadata, Source, ENVELOPE_VERSION};
    use crate::model::Status;
    use crate::queue::{dead_letter, QueueBackend};
    use std::sync::Arc;

    const TTL: Duration = Duration::from_secs(60);

    struct Fixture {
        _dir: tempfile::TempDir,
        requests: Arc<dyn Queue>,
        dlq: Arc<dyn Queue>,
        store: EmbeddedStore,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::open(dir.path(), 1024 * 1024).unwrap();
        Fixture {
            requests: backend.open("requests").await.unwrap(),
            dlq: backend.open("dlq").await.unwrap(),
            store: EmbeddedStore::open(dir.path()).unwrap(),
            _dir: dir,
        }
    }

    fn envelope(id: &str) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: id.to_string(),
            submitted_at: "2026-11-22T10:00:00.000Z".into(),
            source: Source::Api,
            metadata: Metadata::default(),
            traceparent: None,
            payload: Some(serde_json::json!({"n": 1})),
            headers: BTreeMap::new(),
            request: None,
            partition_key: None,
        }
    }

    /// Publish a request, fail it as the worker does (FAILED record, then
    /// dead-letter), and return its correlation ID.
    async fn fail_one(f: &Fixture) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut attributes = BTreeMap::new();
        attributes.insert("traceparent".to_string(), "00-abc-def-01".to_string());
        f.requests
            .publish(Message {
                id: id.clone(),
                body: envelope(&id).encode(),
                attributes,
                key: Some("k".into()),
            })
            .await
            .unwrap();
        let d = f
            .requests
            .receive(1, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .unwrap();
        let mut record = RequestRecord::pending(&id, "2026-11-22T09:00:00.000Z");
        record.status = Status::Failed;
        record.error = Some("HTTP 500".into());
        f.store.put(&record, TTL).await.unwrap();
        dead_letter(
            f.requests.as_ref(),
            f.dlq.as_ref(),
            &d,
            "backend answered HTTP 500",
        )
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn list_and_get_show_the_failure() {
        let f = fixture().await;
        let a = fail_one(&f).await;
        let b = fail_one(&f).await;
        let listed = list(f.dlq.as_ref(), None, 10).await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|d| d.message_id.as_str())
                .collect::<Vec<_>>(),
            vec![a.as_str(), b.as_str()]
        );
        let first = &listed[0];
        assert_eq!(first.error.as_deref(), Some("backend answered HTTP 500"));
        assert_eq!(first.attempts, Some(1));
        assert_eq!(first.source_queue.as_deref(), Some("requests"));
        assert!(first.failed_at.is_some());
        assert_eq!(
            first.attributes.keys().collect::<Vec<_>>(),
            vec!["traceparent"],
            "dead-letter attributes are shown as fields, not repeated"
        );
        let page = list(f.dlq.as_ref(), Some(&first.position), 10)
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].message_id, b);

        let (shown, body) = get(f.dlq.as_ref(), &first.position).await.unwrap().unwrap();
        assert_eq!(&shown, first);
        assert_eq!(body, envelope(&a).encode());
        assert_eq!(first.size_bytes, body.len());
        assert!(get(f.dlq.as_ref(), "424242").await.unwrap().is_none());
        assert!(matches!(
            list(f.dlq.as_ref(), Some("garbage"), 10).await,
            Err(QueueError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn replay_requeues_clean_and_resets_the_record() {
        let f = fixture().await;
        let id = fail_one(&f).await;
        let position = list(f.dlq.as_ref(), None, 1).await.unwrap()[0]
            .position
            .clone();
        let replayed = replay(
            f.dlq.as_ref(),
            f.requests.as_ref(),
            &f.store,
            &position,
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(replayed.message_id, id);
        assert!(list(f.dlq.as_ref(), None, 10).await.unwrap().is_empty());

        let record = f.store.get(&id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Pending, "no longer FAILED");
        assert_eq!(record.submitted_at, "2026-11-22T09:00:00.000Z", "kept");
        assert!(record.error.is_none());

        let d = f
            .requests
            .receive(1, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .expect("replayed message");
        assert_eq!(d.message.id, id);
        assert_eq!(d.attempt, 1, "a replay starts over");
        assert_eq!(d.message.key.as_deref(), Some("k"));
        assert_eq!(
            d.message.attributes.keys().collect::<Vec<_>>(),
            vec!["traceparent"],
            "dead-letter attributes removed"
        );
        // A worker can now store a final outcome again.
        let mut done = record.clone();
        done.status = Status::Completed;
        assert_eq!(
            f.store.put(&done, TTL).await.unwrap(),
            crate::store::PutOutcome::Written
        );

        assert_eq!(
            replay(
                f.dlq.as_ref(),
                f.requests.as_ref(),
                &f.store,
                &position,
                TTL
            )
            .await,
            Err(DlqError::NotFound)
        );
    }

    #[tokio::test]
    async fn replay_without_a_record_uses_the_envelope() {
        let f = fixture().await;
        let id = fail_one(&f).await;
        f.store.delete(&id).await.unwrap();
        let position = list(f.dlq.as_ref(), None, 1).await.unwrap()[0]
            .position
            .clone();
        replay(
            f.dlq.as_ref(),
            f.requests.as_ref(),
            &f.store,
            &position,
            TTL,
        )
        .await
        .unwrap();
        let record = f.store.get(&id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Pending);
        assert_eq!(record.submitted_at, "2026-11-22T10:00:00.000Z");
    }

    #[tokio::test]
    async fn replay_all_and_purge() {
        let f = fixture().await;
        for _ in 0..5 {
            fail_one(&f).await;
        }
        let counts = replay_all(f.dlq.as_ref(), f.requests.as_ref(), &f.store, TTL)
            .await
            .unwrap();
        assert_eq!(
            counts,
            ReplayCounts {
                replayed: 5,
                failed: 0
            }
        );
        assert_eq!(f.requests.depth().await.unwrap().total(), 5);
        assert!(list(f.dlq.as_ref(), None, 10).await.unwrap().is_empty());
        let counts = replay_all(f.dlq.as_ref(), f.requests.as_ref(), &f.store, TTL)
            .await
            .unwrap();
        assert_eq!(counts, ReplayCounts::default(), "nothing left");

        // Drain the requests and fail them again, then purge.
        let got = f
            .requests
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        for d in &got {
            dead_letter(f.requests.as_ref(), f.dlq.as_ref(), d, "again")
                .await
                .unwrap();
        }
        assert_eq!(list(f.dlq.as_ref(), None, 10).await.unwrap().len(), 5);
        let position = list(f.dlq.as_ref(), None, 1).await.unwrap()[0]
            .position
            .clone();
        assert!(delete(f.dlq.as_ref(), &position).await.unwrap());
        assert!(!delete(f.dlq.as_ref(), &position).await.unwrap());
        assert_eq!(purge(f.dlq.as_ref()).await.unwrap(), 4);
        assert_eq!(purge(f.dlq.as_ref()).await.unwrap(), 0);
        assert_eq!(f.dlq.depth().await.unwrap().total(), 0);
    }
}
