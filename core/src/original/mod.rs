//! The original OpenHQM's (Python) wire formats, for a rolling migration on
//! a shared Redis: its request messages are read as envelopes, and (with
//! `cache.original_keys`) results are also written where its API reads them.
//!
//! Both shapes are the original's, as its code writes and reads them; see
//! docs/migration.md#wire-formats-and-a-rolling-migration-on-a-shared-broker.

pub mod message;
pub mod result_keys;
