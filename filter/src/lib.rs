//! OpenHQM Proxy-Wasm HTTP filter.
//!
//! Requests that match a configured route are given a correlation ID, their
//! body is buffered, and they are handed to the OpenHQM bridge as one capture
//! frame (see [`frame`]) with `dispatch_http_call`; the client gets the
//! bridge's answer (normally `202 Accepted` + `Location`). `GET
//! {api_prefix}/status/…` and `{api_prefix}/response/…` are relayed to the
//! bridge so clients need only the sidecar's address. Everything else passes
//! through untouched.
//!
//! The logic ([`logic::HttpFilter`]) is plain Rust behind the [`logic::Host`]
//! trait and is tested natively; the Proxy-Wasm glue (`wasm` module) only
//! exists when compiled for `wasm32`.
//!
//! A panic would kill the Wasm VM (and with it every request on that Envoy
//! worker), so the code that handles input may not unwrap, index or panic.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod config;
pub mod frame;
pub mod logic;
pub mod routes;
pub mod spans;

#[cfg(target_arch = "wasm32")]
mod wasm;
