//! A worker with a custom queue backend: one type implementing the queue
//! contract, and one registration line before `openhqm_worker::main()`.
//!
//! The backend here keeps messages in this process's memory, which makes it
//! short enough to read in one sitting, and NOT durable: use it to learn the
//! contract, not in production. Run it with
//!
//! ```sh
//! OPENHQM_QUEUE__TYPE=custom OPENHQM_QUEUE__CUSTOM_CLASS=memory \
//!     cargo run -p openhqm-worker --example custom_backend
//! ```
//!
//! A backend should pass the shared conformance suite; this one does (the
//! `conformance` module at the end, run by `cargo test -p openhqm-worker`).

use async_trait::async_trait;
use openhqm_core::queue::{
    Capabilities, Delivery, Depth, Message, Queue, QueueBackend, QueueError, Receipt, Support,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message with the time it may next be delivered and its current lease.
struct Slot {
    message: Message,
    attempts: u32,
    visible_at: Instant,
    lease: Option<u64>,
}

#[derive(Default)]
struct Shelf {
    next_lease: u64,
    queues: HashMap<String, BTreeMap<u64, Slot>>,
    next_seq: u64,
}

#[derive(Clone)]
struct MemoryBackend {
    shelf: Arc<Mutex<Shelf>>,
    /// `queue.max_message_bytes`: every backend refuses larger bodies.
    max_message_bytes: usize,
}

impl MemoryBackend {
    fn new(max_message_bytes: usize) -> Self {
        MemoryBackend {
            shelf: Arc::default(),
            max_message_bytes,
        }
    }
}

struct MemoryQueue {
    name: String,
    shelf: Arc<Mutex<Shelf>>,
    max_message_bytes: usize,
}

#[async_trait]
impl QueueBackend for MemoryBackend {
    fn kind(&self) -> &str {
        "memory"
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(MemoryQueue {
            name: name.to_string(),
            shelf: self.shelf.clone(),
            max_message_bytes: self.max_message_bytes,
        }))
    }
}

impl MemoryQueue {
    fn with<T>(&self, f: impl FnOnce(&mut Shelf) -> T) -> T {
        let mut shelf = self.shelf.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut shelf)
    }

    /// `seq:lease` receipts; an action only applies while the lease matches
    /// (a consumer whose lease ended must not touch another's delivery).
    fn leased<T>(
        &self,
        receipt: &Receipt,
        f: impl FnOnce(&mut BTreeMap<u64, Slot>, u64) -> T,
    ) -> Result<T, QueueError> {
        let (seq, lease) = receipt
            .0
            .split_once(':')
            .and_then(|(s, l)| Some((s.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
            .ok_or_else(|| QueueError::Invalid("malformed receipt".into()))?;
        self.with(|shelf| {
            let queue = shelf.queues.entry(self.name.clone()).or_default();
            match queue.get(&seq) {
                Some(slot) if slot.lease == Some(lease) => Ok(f(queue, seq)),
                _ => Err(QueueError::LeaseLost),
            }
        })
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // `browse`/`remove` (dead-letter tooling) are left to their
            // defaults, which answer Unsupported: say so. Everything else
            // this backend does itself.
            browse: Support::Unsupported("the example backend does not implement browse"),
            ..Capabilities::all_native()
        }
    }

    async fn publish(&self, message: Message) -> Result<(), QueueError> {
        if message.body.len() > self.max_message_bytes {
            return Err(QueueError::TooLarge {
                size: message.body.len(),
                max: self.max_message_bytes,
            });
        }
        self.with(|shelf| {
            shelf.next_seq += 1;
            let seq = shelf.next_seq;
            let slot = Slot {
                message,
                attempts: 0,
                visible_at: Instant::now(),
                lease: None,
            };
            shelf
                .queues
                .entry(self.name.clone())
                .or_default()
                .insert(seq, slot);
        });
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            let got = self.with(|shelf| {
                shelf.next_lease += 1;
                let token = shelf.next_lease;
                let queue = shelf.queues.entry(self.name.clone()).or_default();
                let mut out = Vec::new();
                for (seq, slot) in queue
                    .iter_mut()
                    .filter(|(_, s)| s.visible_at <= now)
                    .take(max)
                {
                    slot.attempts += 1;
                    slot.visible_at = now + lease;
                    slot.lease = Some(token);
                    out.push(Delivery {
                        message: slot.message.clone(),
                        attempt: slot.attempts,
                        receipt: Receipt(format!("{seq}:{token}")),
                    });
                }
                out
            });
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.leased(receipt, |queue, seq| {
            queue.remove(&seq);
        })
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.leased(receipt, |queue, seq| {
            if let Some(slot) = queue.get_mut(&seq) {
                slot.lease = None;
                slot.visible_at = Instant::now() + delay;
            }
        })
    }

    async fn extend_lease(&self, receipt: &Receipt, lease: Duration) -> Result<(), QueueError> {
        self.leased(receipt, |queue, seq| {
            if let Some(slot) = queue.get_mut(&seq) {
                slot.visible_at = Instant::now() + lease;
            }
        })
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let now = Instant::now();
        Ok(self.with(|shelf| {
            let queue = shelf.queues.get(&self.name);
            let in_flight = queue.map_or(0, |q| {
                q.values()
                    .filter(|s| s.lease.is_some() && s.visible_at > now)
                    .count()
            });
            let total = queue.map_or(0, |q| q.len());
            Depth {
                ready: (total - in_flight) as u64,
                in_flight: in_flight as u64,
            }
        }))
    }

    async fn close(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

fn main() {
    // The one registration line: `queue.type: custom`, `queue.custom_class: memory`.
    openhqm_core::registry::register_queue_backend("memory", |config| {
        Ok(Arc::new(MemoryBackend::new(config.queue.max_message_bytes)))
    });
    openhqm_worker::main();
}

/// The shared conformance suite against this backend. Every instance the
/// factory builds shares one shelf, as separate clients share one broker.
#[cfg(test)]
mod conformance {
    use super::MemoryBackend;
    use openhqm_core::conformance::{Options, QueueFactory};
    use openhqm_core::queue::QueueBackend;
    use std::sync::{Arc, OnceLock};

    fn factory() -> QueueFactory {
        static SHARED: OnceLock<MemoryBackend> = OnceLock::new();
        Arc::new(|_identity| {
            let max = Options::default().max_message_bytes;
            let backend = SHARED.get_or_init(|| MemoryBackend::new(max)).clone();
            Box::pin(async move { Arc::new(backend) as Arc<dyn QueueBackend> })
        })
    }

    openhqm_core::queue_conformance_tests!(true, factory(), Options::default());
}
