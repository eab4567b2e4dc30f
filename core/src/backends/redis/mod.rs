//! The Redis backend: a Redis Streams queue and a Redis result store, for
//! fleets across machines. Invariants in each module's docs; the Lua scripts
//! they run are in `lua/` (compiled in with `include_str!`), their KEYS and
//! ARGV documented beside the constant that loads each.

mod queue;
mod store;

pub use queue::{RedisBackend, RedisQueue};
pub use store::RedisStore;

/// Log targets of the client library (see `backends::client_libraries`).
pub const CLIENT_LIBRARIES: &[&str] = &["redis"];
