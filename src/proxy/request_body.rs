//! The request body on its way to a backend: streamed, never buffered
//! whole, and given back if the backend never read from it, so a request
//! whose connect failed can be retried on the next backend with its body
//! intact. An HTTP/2 request body the proxy stops reading before its end is
//! read to its end all the same ([`ClientBody`]), so that its stream is not
//! reset under a client still sending.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::Version;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::config::LimitsConfig;

/// The error type of bodies sent to backends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as the proxy received it.
///
/// hyper's HTTP/2 server resets a request's stream (`RST_STREAM`, RFC 9113
/// §8.1) when the response has ended and nothing holds the request body any
/// more, although the client may still be sending it: hyper's HTTP/1 client
/// drops a request body as soon as it has written `Content-Length` bytes,
/// before the `END_STREAM` that clients such as httpx send in an empty DATA
/// frame of their own, and the proxy drops a body it answers without
/// (errors). Such clients then lose the request. So an HTTP/2 body dropped
/// before its end is read to its end in a task of its own, while the
/// response goes out: bounded by time and by `limits.max_body_bytes`, past
/// which the stream is reset as before. HTTP/1 bodies are simply dropped:
/// hyper's HTTP/1 server reads or closes what is left itself.
#[derive(Debug)]
pub struct ClientBody {
    /// `None` only once dropped.
    inner: Option<Incoming>,
    /// Data bytes read so far.
    read: u64,
    /// How the rest is read when dropped early (HTTP/2), if at all.
    drain: Option<DrainBound>,
}

/// How much of a dropped HTTP/2 request body the proxy reads to reach its
/// end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrainBound {
    /// The most data bytes of the whole body (`limits.max_body_bytes`; 0: no
    /// limit): a body over it is not worth reading, and its stream is reset.
    max_body_bytes: u64,
    /// How long the rest may take to arrive (`limits.header_timeout`, the
    /// slowloris guard: nobody waits on these bytes).
    timeout: Duration,
}

impl DrainBound {
    /// The data bytes still allowed after `read`, or `None` when the body,
    /// whose declared rest is `hint`, is already or will be over the limit.
    fn budget(&self, read: u64, hint: &SizeHint) -> Option<u64> {
        if self.max_body_bytes == 0 {
            return Some(u64::MAX);
        }
        let left = self.max_body_bytes.checked_sub(read)?;
        if hint.exact().is_some_and(|rest| rest > left) {
            return None;
        }
        Some(left)
    }
}

impl ClientBody {
    /// The body of a request of `version`, with the running config's
    /// `limits`.
    pub fn new(body: Incoming, version: Version, limits: &LimitsConfig) -> ClientBody {
        let drain = (version == Version::HTTP_2).then_some(DrainBound {
            max_body_bytes: limits.max_body_bytes,
            timeout: limits.header_timeout,
        });
        ClientBody {
            inner: Some(body),
            read: 0,
            drain,
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let (Some(bound), Some(body)) = (self.drain, self.inner.take()) else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Some(budget) = bound.budget(self.read, &body.size_hint()) else {
            return;
        };
        // Outside a runtime (never on the request path) the body is dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(read_to_end(body, budget, bound.timeout));
        }
    }
}

/// Reads `body` to its end, dropping what it reads, unless more than
/// `budget` data bytes or `timeout` come first. Dropped at its end, a body
/// leaves its stream closed; dropped before, its stream is reset.
async fn read_to_end(mut body: Incoming, mut budget: u64, timeout: Duration) {
    let read = async move {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            match budget.checked_sub(len) {
                Some(left) => budget = left,
                None => return,
            }
        }
    };
    // The timeout drops the body, and with it the stream.
    let _ = tokio::time::timeout(timeout, read).await;
}

impl Body for ClientBody {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(body).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.read += data.len() as u64;
        }
        Poll::Ready(polled)
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

/// A request body that goes back to its [`Recovery`] if it is dropped before
/// it was ever polled.
///
/// hyper's client consumes the request it sends. When connecting fails, the
/// request (and so this body) is dropped without the body having been read,
/// and the body returns through a oneshot channel (lock-free) to be sent to
/// the next backend. As soon as the body is polled it belongs to that
/// attempt: part of it may be on the wire, and it is never given back.
#[derive(Debug)]
pub struct RecoverableBody<B = ClientBody> {
    inner: Option<B>,
    give_back: Option<oneshot::Sender<B>>,
    /// Where the bytes read are added up, for the access log.
    read: Option<Arc<AtomicU64>>,
    /// The most data bytes it may carry (0: no limit), and how many it has.
    limit: u64,
    seen: u64,
}

/// A request body went over `limits.max_body_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit.
    pub limit: u64,
}

/// The other end of a [`RecoverableBody`]: holds the body once it comes back.
#[derive(Debug)]
pub struct Recovery<B = ClientBody>(Kept<B>);

/// Where a [`Recovery`]'s body is.
#[derive(Debug)]
enum Kept<B> {
    /// Comes back through the channel if dropped unpolled.
    Channel(oneshot::Receiver<B>),
    /// A body that had ended before it was sent (nothing to read, nothing to
    /// lose): kept here from the start, no channel needed.
    Here(B),
}

impl<B> RecoverableBody<B> {
    /// Wraps `body`; the [`Recovery`] gets it back if it is dropped unpolled.
    /// A body that has already ended stays with the [`Recovery`], and the
    /// one sent is empty.
    pub fn new(body: B) -> (RecoverableBody<B>, Recovery<B>)
    where
        B: Body,
    {
        if body.is_end_stream() {
            let empty = RecoverableBody {
                inner: None,
                give_back: None,
                read: None,
                limit: 0,
                seen: 0,
            };
            return (empty, Recovery(Kept::Here(body)));
        }
        let (tx, rx) = oneshot::channel();
        let wrapped = RecoverableBody {
            inner: Some(body),
            give_back: Some(tx),
            read: None,
            limit: 0,
            seen: 0,
        };
        (wrapped, Recovery(Kept::Channel(rx)))
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
    pub fn take(self) -> Option<B> {
        match self.0 {
            Kept::Channel(mut rx) => rx.try_recv().ok(),
            Kept::Here(body) => Some(body),
        }
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use bytes::Bytes;
    use http_body_util::Full;

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
    fn a_drained_body_may_read_up_to_the_body_limit_and_no_further() {
        let bound = DrainBound {
            max_body_bytes: 1000,
            timeout: Duration::from_secs(1),
        };
        let unknown = SizeHint::new();
        assert_eq!(bound.budget(400, &unknown), Some(600));
        assert_eq!(bound.budget(400, &SizeHint::with_exact(600)), Some(600));
        // Declared, or already read, past the limit: not worth reading.
        assert_eq!(bound.budget(400, &SizeHint::with_exact(601)), None);
        assert_eq!(bound.budget(1001, &unknown), None);
        let unlimited = DrainBound {
            max_body_bytes: 0,
            ..bound
        };
        assert_eq!(
            unlimited.budget(1 << 40, &SizeHint::with_exact(1 << 40)),
            Some(u64::MAX)
        );
    }

    #[tokio::test]
    async fn an_ended_body_stays_with_its_recovery_and_an_empty_one_is_sent() {
        let (body, recovery) = RecoverableBody::new(full(""));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let collected = body.collect().await.unwrap().to_bytes();
        assert!(collected.is_empty());
        // Polled or not, an empty body can always be sent again.
        let back = recovery.take().expect("the body is kept");
        assert!(back.is_end_stream());
    }

    #[test]
    fn a_body_dropped_after_its_recovery_is_simply_dropped() {
        let (body, recovery) = RecoverableBody::new(full("payload"));
        drop(recovery);
        drop(body);
    }
}
