//! Streaming bodies: nothing is ever buffered whole.
//!
//! * [`RecoverableBody`] carries a request body to a backend and gives it back
//!   if the backend never read from it, so a request whose connect failed can
//!   be retried on the next backend with its body intact.
//! * [`ProxyBody`] is what the client receives: the backend's response body
//!   streamed through (counting bytes, and ending the request's in-flight
//!   count and access-log line when it ends or is dropped), a short local
//!   body for errors, or no body (a `101`, whose tunnel takes those over).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::access::Finish;
use crate::upstream::Connection;

/// The error type of bodies sent to backends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that goes back to its [`Recovery`] if it is dropped before
/// it was ever polled.
///
/// hyper's client consumes the request it sends. When connecting fails, the
/// request (and so this body) is dropped without the body having been read,
/// and the body returns through a oneshot channel (lock-free) to be sent to
/// the next backend. As soon as the body is polled it belongs to that
/// attempt: part of it may be on the wire, and it is never given back.
#[derive(Debug)]
pub struct RecoverableBody<B = Incoming> {
    inner: Option<B>,
    give_back: Option<oneshot::Sender<B>>,
    /// Where the bytes read are added up, for the access log.
    read: Option<Arc<AtomicU64>>,
    /// The most data bytes it may carry (0: no limit), and how many it has.
    limit: u64,
    seen: u64,
}

/// A request body went over `limits.max_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit.
    pub limit: u64,
}

/// The other end of a [`RecoverableBody`]: holds the body once it comes back.
#[derive(Debug)]
pub struct Recovery<B = Incoming>(oneshot::Receiver<B>);

impl<B> RecoverableBody<B> {
    /// Wraps `body`; the [`Recovery`] gets it back if it is dropped unpolled.
    pub fn new(body: B) -> (RecoverableBody<B>, Recovery<B>) {
        let (tx, rx) = oneshot::channel();
        let wrapped = RecoverableBody {
            inner: Some(body),
            give_back: Some(tx),
            read: None,
            limit: 0,
            seen: 0,
        };
        (wrapped, Recovery(rx))
    }

    /// The same body, adding the data bytes read from it to `read` (when
    /// given), so a request's body bytes add up across its attempts.
    pub fn counting(mut self, read: Option<Arc<AtomicU64>>) -> RecoverableBody<B> {
        self.read = read;
        self
    }

    /// The same body, failing with [`BodyTooLarge`] as soon as more than
    /// `limit` data bytes have been read from it (0: no limit).
    pub fn limited(mut self, limit: u64) -> RecoverableBody<B> {
        self.limit = limit;
        self
    }
}

impl<B> Recovery<B> {
    /// The body, if its [`RecoverableBody`] was dropped without being polled;
    /// `None` if it was polled or is still alive.
    pub fn take(mut self) -> Option<B> {
        self.0.try_recv().ok()
    }
}

impl<B> Drop for RecoverableBody<B> {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
            // The receiver may be gone (the request was abandoned): the body
            // is then dropped with the failed send.
            let _ = tx.send(body);
        }
    }
}

impl<B> Body for RecoverableBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.give_back = None;
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(body).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.remaining() as u64;
            if let Some(read) = &this.read {
                read.fetch_add(len, Ordering::Relaxed);
            }
            this.seen += len;
            if this.limit > 0 && this.seen > this.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
            }
        }
        Poll::Ready(polled.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The body of every response the proxy sends.
#[derive(Debug)]
pub enum ProxyBody {
    /// A backend's body, streamed through.
    Upstream(UpstreamBody),
    /// A short body written by the proxy itself (errors).
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A local body with `text`.
    pub fn text(text: &'static str) -> ProxyBody {
        ProxyBody::Local(Full::new(Bytes::from_static(text.as_bytes())))
    }

    /// No body at all: a `101 Switching Protocols` answer, after which the
    /// connection carries a tunnel instead (see [`crate::tunnel`]).
    pub fn empty() -> ProxyBody {
        ProxyBody::Local(Full::new(Bytes::new()))
    }
}

/// A backend's response body on its way to the client.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    bytes: u64,
    finish: Option<Finish>,
    /// The backend connection the body comes on: given back for another
    /// request once the body has been read to its end.
    connection: Option<Connection>,
}

impl UpstreamBody {
    /// Streams `inner`, which arrives on `connection`; `finish` runs when it
    /// ends, fails or is dropped.
    pub fn new(inner: Incoming, connection: Connection, finish: Finish) -> UpstreamBody {
        UpstreamBody {
            inner,
            bytes: 0,
            finish: Some(finish),
            connection: Some(connection),
        }
    }

    /// The body was read to its end: the connection goes back for reuse.
    /// (Dropped any other way, it closes with the body.)
    fn release(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.release();
        }
    }

    fn complete(&mut self, outcome: &'static str) {
        if let Some(finish) = self.finish.take() {
            finish.done(self.bytes, outcome);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing in it is whole without being read.
        if self.inner.is_end_stream() {
            self.release();
        }
        self.complete("aborted");
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => {
                let frame = ready!(Pin::new(&mut body.inner).poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            body.bytes += data.len() as u64;
                        }
                        if body.inner.is_end_stream() {
                            body.release();
                            body.complete("complete");
                        }
                    }
                    Some(Err(_)) => {
                        // Cut off: the connection cannot carry another request.
                        body.connection = None;
                        body.complete(crate::access::UPSTREAM_ERROR);
                    }
                    None => {
                        body.release();
                        body.complete("complete");
                    }
                }
                Poll::Ready(frame)
            }
            ProxyBody::Local(full) => match ready!(Pin::new(full).poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.inner.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.inner.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn full(text: &'static str) -> Full<Bytes> {
        Full::new(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn a_body_dropped_unpolled_comes_back_intact() {
        let (body, recovery) = RecoverableBody::new(full("payload"));
        assert_eq!(body.size_hint().exact(), Some(7));
        drop(body);
        let back = recovery.take().expect("the body comes back");
        assert_eq!(back.size_hint().exact(), Some(7));
    }

    #[tokio::test]
    async fn a_polled_body_is_never_given_back() {
        let (body, recovery) = RecoverableBody::new(full("payload"));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"payload");
        assert!(recovery.take().is_none());
    }

    #[test]
    fn a_live_body_is_not_given_back() {
        let (body, recovery) = RecoverableBody::new(full("payload"));
        assert!(recovery.take().is_none());
        drop(body);
    }

    #[tokio::test]
    async fn a_counting_body_adds_the_bytes_read_to_its_counter() {
        let read = Arc::new(AtomicU64::new(5));
        let (body, _recovery) = RecoverableBody::new(full("payload"));
        let body = body.counting(Some(read.clone()));
        body.collect().await.unwrap();
        assert_eq!(read.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_body_dropped_after_its_recovery_is_simply_dropped() {
        let (body, recovery) = RecoverableBody::new(full("payload"));
        drop(recovery);
        drop(body);
    }

    #[test]
    fn an_empty_body_has_ended_before_it_starts() {
        let body = ProxyBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_local_body_carries_its_text() {
        let body = ProxyBody::text("no healthy backend\n");
        assert_eq!(body.size_hint().exact(), Some(19));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"no healthy backend\n");
    }
}
