//! The Redis backend: a Redis Streams queue and a Redis result store, for
//! fleets across machines. Invariants in each module's docs.

mod queue;
mod store;

pub use queue::{RedisBackend, RedisQueue};
pub use store::RedisStore;
