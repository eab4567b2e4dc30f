//! The backend conformance suite (`openhqm_core::conformance`) against each
//! built-in backend on a real server, one module per backend, in one test
//! binary: `cargo test -p openhqm-e2e --test conformance <backend>::`.
//!
//! Servers: `OPENHQM_TEST_REDIS_ADDR` (127.0.0.1:6379) and
//! `OPENHQM_TEST_MQTT_ADDR` (127.0.0.1:1883); one that does not answer is
//! a printed skip, or a failure with `OPENHQM_REQUIRE_SERVERS=1` (CI).

mod embedded;
mod mqtt;
mod redis;
