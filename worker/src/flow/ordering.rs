//! In-order processing per partition key, within one process.
//!
//! The receive loop takes a [`Ticket`] for each message, in message order and
//! synchronously, before spawning the task that handles it (spawned tasks may
//! be polled in any order). The task awaits [`Ticket::turn`], which resolves
//! once every earlier ticket of the same key is gone (its [`Turn`] dropped,
//! or the ticket itself dropped unused). Different keys never wait for each
//! other, and a key's entry is removed when its last ticket is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct KeyQueue {
    next_seq: u64,
    /// Live tickets in order; the first one holds the turn. A sender is
    /// taken when its ticket is told it is its turn.
    live: BTreeMap<u64, Option<oneshot::Sender<()>>>,
}

type Keys = Arc<Mutex<HashMap<String, KeyQueue>>>;

/// Hands out tickets per key; clone-free, share it by reference or `Arc`.
#[derive(Debug, Default)]
pub struct KeyOrder {
    keys: Keys,
}

fn lock(keys: &Keys) -> std::sync::MutexGuard<'_, HashMap<String, KeyQueue>> {
    keys.lock().unwrap_or_else(|e| e.into_inner())
}

impl KeyOrder {
    /// Take the next place in `key`'s line. Synchronous: call it in message
    /// order.
    pub fn ticket(&self, key: &str) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut keys = lock(&self.keys);
        let queue = keys.entry(key.to_owned()).or_default();
        let seq = queue.next_seq;
        queue.next_seq += 1;
        if queue.live.is_empty() {
            // Nobody ahead: its turn already.
            let _ = tx.send(());
            queue.live.insert(seq, None);
        } else {
            queue.live.insert(seq, Some(tx));
        }
        Ticket {
            place: Place {
                keys: self.keys.clone(),
                key: key.to_owned(),
                seq,
            },
            rx,
        }
    }

    /// Keys with at least one live ticket.
    pub fn keys_in_use(&self) -> usize {
        lock(&self.keys).len()
    }
}

/// A place in a key's line; leaving it (on drop) passes the turn on.
#[derive(Debug)]
struct Place {
    keys: Keys,
    key: String,
    seq: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut keys = lock(&self.keys);
        let Some(queue) = keys.get_mut(&self.key) else {
            return;
        };
        let was_first = queue.live.keys().next() == Some(&self.seq);
        queue.live.remove(&self.seq);
        if queue.live.is_empty() {
            keys.remove(&self.key);
            return;
        }
        if was_first {
            if let Some(mut next) = queue.live.first_entry() {
                if let Some(tx) = next.get_mut().take() {
                    // The receiver lives as long as its ticket, which is
                    // still in the line; a closed one is harmless anyway.
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// A place in a key's line, taken in message order.
#[derive(Debug)]
#[must_use = "dropping a ticket gives up its place"]
pub struct Ticket {
    place: Place,
    rx: oneshot::Receiver<()>,
}

impl Ticket {
    pub fn key(&self) -> &str {
        &self.place.key
    }

    /// Wait until every earlier ticket of this key is gone. Hold the
    /// returned [`Turn`] while processing; dropping it lets the next go.
    pub async fn turn(self) -> Turn {
        let Ticket { place, rx } = self;
        // The sender is only dropped unsent when this ticket's place is
        // removed, which happens after this returns; either way it is ours.
        let _ = rx.await;
        Turn { _place: place }
    }
}

/// The turn of one key; the next ticket of the key waits until this is
/// dropped.
#[derive(Debug)]
pub struct Turn {
    _place: Place,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    async fn ready(ticket: Ticket) -> Result<Turn, ()> {
        timeout(Duration::from_millis(50), ticket.turn())
            .await
            .map_err(|_| ())
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_runs_in_ticket_order_even_if_spawned_in_reverse() {
        let order = Arc::new(KeyOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let tickets: Vec<Ticket> = (0..3).map(|_| order.ticket("k")).collect();
        let mut tasks = Vec::new();
        for (i, ticket) in tickets.into_iter().enumerate().rev() {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = ticket.turn().await;
                log.lock().unwrap().push(format!("start {i}"));
                // Earlier ones take longer: without ordering they would end
                // last.
                tokio::time::sleep(Duration::from_millis(30 - 10 * i as u64)).await;
                log.lock().unwrap().push(format!("end {i}"));
            }));
        }
        for t in tasks {
            timeout(Duration::from_secs(60), t)
                .await
                .expect("a task stalled")
                .unwrap();
        }
        assert_eq!(
            *log.lock().unwrap(),
            ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        );
        assert_eq!(order.keys_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_do_not_wait_for_each_other() {
        let order = KeyOrder::default();
        let a1 = ready(order.ticket("a")).await.unwrap();
        let a2 = order.ticket("a");
        let b1 = ready(order.ticket("b"))
            .await
            .expect("b does not wait for a");
        assert_eq!(order.keys_in_use(), 2);
        // a2 waits for a1, however long.
        let a2 = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => None,
            turn = a2.turn() => Some(turn),
        };
        assert!(a2.is_none(), "a2 went while a1 held the turn");
        drop(a1);
        drop(b1);
        assert_eq!(order.keys_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn turn_passes_on_when_the_holder_drops_it() {
        let order = KeyOrder::default();
        let t1 = order.ticket("k");
        let t2 = order.ticket("k");
        let turn1 = ready(t1).await.unwrap();
        let waiting = tokio::spawn(async move { t2.turn().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(turn1);
        let turn2 = timeout(Duration::from_millis(50), waiting)
            .await
            .expect("t2's turn after t1's")
            .unwrap();
        assert_eq!(order.keys_in_use(), 1);
        drop(turn2);
        assert_eq!(order.keys_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_tickets_do_not_stall_the_line() {
        let order = KeyOrder::default();
        // Dropped in the middle.
        let t1 = order.ticket("k");
        let t2 = order.ticket("k");
        let t3 = order.ticket("k");
        drop(t2);
        let turn1 = ready(t1).await.unwrap();
        drop(turn1);
        let turn3 = ready(t3).await.expect("t3 not stalled by dropped t2");
        // Dropped at the head, before its turn was awaited.
        let t4 = order.ticket("k");
        let t5 = order.ticket("k");
        drop(turn3);
        drop(t4);
        let turn5 = ready(t5).await.expect("t5 not stalled by dropped t4");
        drop(turn5);
        // Dropped while awaiting its turn (task cancelled).
        let t6 = order.ticket("k");
        let t7 = order.ticket("k");
        let t8 = order.ticket("k");
        let turn6 = ready(t6).await.unwrap();
        assert!(ready(t7).await.is_err(), "t7 went before t6 ended");
        drop(turn6);
        ready(t8).await.expect("t8 not stalled by cancelled t7");
        assert_eq!(order.keys_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn random_interleavings_keep_order_and_empty_the_map() {
        let order = Arc::new(KeyOrder::default());
        let log = Arc::new(Mutex::new(HashMap::<String, Vec<usize>>::new()));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut tasks = Vec::new();
        let mut kept: HashMap<String, Vec<usize>> = HashMap::new();
        for i in 0..300 {
            let key = format!("key-{}", rng.usize(0..5));
            let ticket = order.ticket(&key);
            if rng.u8(0..10) == 0 {
                drop(ticket);
                continue;
            }
            kept.entry(key.clone()).or_default().push(i);
            let log = log.clone();
            let delay = Duration::from_millis(rng.u64(0..20));
            let pause = Duration::from_millis(rng.u64(0..5));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _turn = ticket.turn().await;
                log.lock().unwrap().entry(key).or_default().push(i);
                tokio::time::sleep(pause).await;
            }));
        }
        fastrand::shuffle(&mut tasks);
        for t in tasks {
            timeout(Duration::from_secs(60), t)
                .await
                .expect("a task stalled")
                .unwrap();
        }
        assert_eq!(*log.lock().unwrap(), kept);
        assert_eq!(order.keys_in_use(), 0);
    }
}
