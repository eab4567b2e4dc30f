//! Request bodies under a read timeout, and what a failed body read means
//! for the answer: 413 for the size limit, 408 for a stalled client, 400
//! for anything else (a malformed chunked encoding, a reset mid-body).

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The client paused longer than `server.body_read_timeout_seconds`
/// between two reads of the body (nginx's `client_body_timeout`).
#[derive(Debug)]
pub struct BodyTimeout;

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client stopped sending the request body")
    }
}

impl StdError for BodyTimeout {}

/// A body whose every read must make progress within `timeout`.
pub struct TimeoutBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> TimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next read gets a fresh allowance.
                let next = Instant::now() + this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why reading a request body failed, as the answer should say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// Over the size limit: 413 `payload_too_large`.
    TooLarge,
    /// The client stalled: 408 `body_timeout`.
    Timeout,
    /// Malformed framing or a broken connection: 400 `invalid_body`.
    Invalid,
}

/// Classify a body error by walking its source chain (axum and
/// http-body-util wrap the original error in their own).
pub fn classify(err: &(dyn StdError + 'static)) -> BodyFailure {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return BodyFailure::TooLarge;
        }
        if e.is::<BodyTimeout>() {
            return BodyFailure::Timeout;
        }
        cur = e.source();
    }
    BodyFailure::Invalid
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body whose client never sends anything.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_as_a_timeout_and_a_big_one_as_too_large() {
        let stalled = TimeoutBody::new(Stalled, Duration::from_millis(50));
        let err = axum::body::to_bytes(axum::body::Body::new(stalled), 1024)
            .await
            .unwrap_err();
        assert_eq!(classify(&err), BodyFailure::Timeout);

        let big = TimeoutBody::new(
            http_body_util::Full::new(Bytes::from(vec![0u8; 2048])),
            Duration::from_secs(5),
        );
        let err = axum::body::to_bytes(axum::body::Body::new(big), 1024)
            .await
            .unwrap_err();
        assert_eq!(classify(&err), BodyFailure::TooLarge);

        let ok = TimeoutBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hi")),
            Duration::from_secs(5),
        );
        assert_eq!(ok.collect().await.unwrap().to_bytes(), "hi");
        assert_eq!(
            classify(&std::io::Error::other("reset")),
            BodyFailure::Invalid
        );
    }
}
