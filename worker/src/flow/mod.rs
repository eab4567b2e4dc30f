//! Per-endpoint flow control: how many requests may be in flight to one
//! backend endpoint, how fast they may start, a circuit breaker that stops
//! calling a failing backend, consistent instance choice, and in-order
//! processing per partition key.

pub mod breaker;
pub mod ordering;
pub mod rate;
pub mod sticky;

pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker, OnChange, Pass};
pub use ordering::{KeyOrder, Ticket, Turn};
pub use rate::RateLimiter;
