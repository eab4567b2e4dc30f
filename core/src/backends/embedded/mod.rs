//! The embedded backend: queue and result store in SQLite files under
//! `queue.data_dir`, shared by the processes on one machine (or one volume).
//! No server to run; the default.

mod queue;
mod sqlite;
mod store;

pub use queue::{EmbeddedBackend, EmbeddedQueue};
pub use store::EmbeddedStore;

/// Log targets of the client library (see `backends::client_libraries`).
pub const CLIENT_LIBRARIES: &[&str] = &["rusqlite"];
