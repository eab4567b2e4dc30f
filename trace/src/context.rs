//! W3C Trace Context (`traceparent`, version 00).
//! <https://www.w3.org/TR/trace-context/#traceparent-header>

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // upper case is invalid in version 00
        };
        out[i] = digit(chunk[0])? << 4 | digit(chunk[1])?;
    }
    Some(out)
}

impl TraceId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
}

/// One hop of a trace: which trace, which span is the parent of the next
/// one, and whether the trace is being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceContext {
    /// Parse a `traceparent` header. Invalid values (wrong length, upper-case
    /// hex, all-zero ids, version ff) give `None`: the caller then starts a
    /// new trace, as the W3C spec asks. Future versions are read by their
    /// version-00 prefix.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let h = header.trim();
        let mut parts = h.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let v = parse_hex::<1>(version)?[0];
        if v == 0xff || (v == 0 && rest.is_some()) {
            return None;
        }
        let trace_id = TraceId(parse_hex::<16>(trace)?);
        let span_id = SpanId(parse_hex::<8>(span)?);
        let flags = parse_hex::<1>(flags)?[0];
        if !trace_id.is_valid() || !span_id.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// The context of a new span in the same trace.
    pub fn child(&self, span_id: SpanId) -> TraceContext {
        TraceContext { span_id, ..*self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_the_spec_example() {
        let c = TraceContext::parse(EXAMPLE).unwrap();
        assert!(c.sampled);
        assert_eq!(c.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(c.header(), EXAMPLE);
        let unsampled = TraceContext::parse(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.header().ends_with("-00"));
    }

    #[test]
    fn refuses_invalid_headers() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        let future = format!("01{}-what", &EXAMPLE[2..]);
        assert!(TraceContext::parse(&future).is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags() {
        let c = TraceContext::parse(EXAMPLE).unwrap();
        let child = c.child(SpanId([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(child.trace_id, c.trace_id);
        assert_eq!(
            child.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }
}
