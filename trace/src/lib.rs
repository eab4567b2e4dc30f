//! Tracing pieces of OpenHQM: the W3C `traceparent` header, which the filter,
//! the bridge and the worker all read and write with this code, and the
//! OTLP/HTTP JSON encoding of finished spans, which only the Wasm filter uses
//! (the bridge and worker export through the OpenTelemetry SDK).
//!
//! Kept free of I/O, clocks and randomness so the Proxy-Wasm filter can use it
//! too: callers bring ids (16 + 8 random bytes) and Unix-nanosecond times.

mod context;
mod otlp;

pub use context::{SpanId, TraceContext, TraceId};
pub use otlp::{encode_export_request, AttrValue, Span, SpanKind, SpanStatus};
