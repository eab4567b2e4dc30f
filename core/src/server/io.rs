//! The socket of one connection, watched: when bytes last moved (for the
//! idle and header timeouts, which hyper alone cannot tell apart), and the
//! answers hyper writes by itself for requests it cannot parse (400, 414,
//! 431 with an empty body) rewritten as our JSON errors.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// "No header block under way."
const NONE: u64 = u64::MAX;

/// What the connection is doing, shared by its socket, its service and its
/// watchdog. Times are milliseconds since the connection was accepted.
pub struct Activity {
    start: Instant,
    last_io: AtomicU64,
    /// When the first byte of the pending header block arrived (`NONE`
    /// while a request is being handled or the connection is idle).
    head_started: AtomicU64,
    /// Requests handed to the service and not answered yet.
    pub in_flight: AtomicUsize,
    /// Answers of the service whose head hyper has not written yet: any
    /// other response head on the wire is one of hyper's own.
    answers_pending: AtomicUsize,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_io: AtomicU64::new(0),
            // A new connection owes us a header block (nginx does the same:
            // `client_header_timeout` runs from accept).
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            answers_pending: AtomicUsize::new(0),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn last_io(&self) -> u64 {
        self.last_io.load(Ordering::Relaxed)
    }

    pub fn head_started(&self) -> Option<u64> {
        match self.head_started.load(Ordering::Relaxed) {
            NONE => None,
            t => Some(t),
        }
    }

    /// The service took a request: its header block is complete.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
    }

    /// The service answered (or the request was cancelled).
    pub fn request_done(&self, answered: bool) {
        if answered {
            self.answers_pending.fetch_add(1, Ordering::Relaxed);
        }
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            // The first bytes of a next request start its header clock.
            let _ =
                self.head_started
                    .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Watched<T> {
    io: T,
    activity: std::sync::Arc<Activity>,
    /// A rewritten answer still to be written, and how much of it is out.
    replacement: Vec<u8>,
    replaced: usize,
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: std::sync::Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            replacement: Vec::new(),
            replaced: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Write out what is left of a rewritten answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.replaced < self.replacement.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.replacement[self.replaced..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.replaced += n;
        }
        Ok(()).into()
    }

    /// A buffer that starts a response head: ours (counted down) or hyper's
    /// own parse-error answer, for which our JSON answer is returned.
    fn rewrite(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let status = response_status(buf)?;
        if (100..200).contains(&status) {
            return None; // `100 Continue` is hyper's, and harmless.
        }
        let pending = &self.activity.answers_pending;
        if pending.load(Ordering::Relaxed) > 0 {
            pending.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // hyper's canned answers: a bare head, no content type, no body;
        // never a relayed backend answer (`x-openhqm-result`).
        let head_end = find(buf, b"\r\n\r\n")? + 4;
        let head = buf[..head_end].to_ascii_lowercase();
        let bare = head_end == buf.len()
            && find(&head, b"content-type:").is_none()
            && find(&head, b"x-openhqm-result:").is_none();
        if !bare {
            return None;
        }
        let (code, detail) = match status {
            400 => ("bad_request", "the request is not valid HTTP/1.1"),
            414 => (
                "uri_too_long",
                "the request target is longer than this server accepts",
            ),
            431 => (
                "headers_too_large",
                "the request's header block is larger than this server accepts",
            ),
            _ => return None,
        };
        Some(json_answer(status, code, detail))
    }
}

/// A complete `Connection: close` JSON answer, for the places where no
/// router runs (hyper's parse errors, refused connections).
pub fn json_answer(status: u16, code: &str, detail: &str) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = serde_json::json!({"error": code, "detail": detail}).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn response_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        Poll::Ready(res)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if let Some(answer) = this.rewrite(buf) {
            this.replacement = answer;
            this.replaced = 0;
            // hyper's bytes count as written; ours go out on flush.
            let _ = this.poll_drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if n > 0 {
            this.activity
                .last_io
                .store(this.activity.now_ms(), Ordering::Relaxed);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each head at the start of a buffer,
    // where `rewrite` can see it.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_bare_error_heads_are_rewritten() {
        let activity = std::sync::Arc::new(Activity::new());
        let w = Watched::new(tokio::io::sink(), activity.clone());
        let canned =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(w.rewrite(canned).expect("rewritten")).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("\"error\":\"headers_too_large\""), "{out}");
        assert!(w.rewrite(b"HTTP/1.1 100 Continue\r\n\r\n").is_none());
        // Our own answer (counted as pending) passes untouched, even bare.
        activity.answers_pending.fetch_add(1, Ordering::Relaxed);
        assert!(w.rewrite(canned).is_none());
        assert!(w.rewrite(canned).is_some(), "the count was used up");
        // Body bytes that merely look like a head: not bare.
        assert!(w
            .rewrite(b"HTTP/1.1 400 x\r\ncontent-type: text/plain\r\n\r\n")
            .is_none());
        assert!(w.rewrite(b"HTTP/1.1 400 x\r\n\r\nmore").is_none());
        assert!(w
            .rewrite(b"HTTP/1.1 400 x\r\nX-OpenHQM-Result: final\r\n\r\n")
            .is_none());
        assert!(w.rewrite(b"not a head").is_none());
    }
}
