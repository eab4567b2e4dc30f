//! Tracing pieces every OpenHQM component shares: the W3C `traceparent`
//! header and the OTLP/HTTP JSON encoding of finished spans.
//!
//! Kept free of I/O, clocks and randomness so the Proxy-Wasm filter can use it
//! too: callers bring ids (16 + 8 random bytes) and Unix-nanosecond times.

mod context;
mod otlp;

pub use context::{SpanId, TraceContext, TraceId};
pub use otlp::{encode_export_request, AttrValue, Span, SpanKind, SpanStatus};
