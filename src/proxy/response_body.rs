//! The body of every response the proxy sends: the backend's body streamed
//! through (counting bytes, and ending the request's in-flight count and
//! access-log line when it ends or is dropped), a short local body for
//! errors, or no body (a `101`, whose tunnel takes those over).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::access::{Finish, UPSTREAM_ERROR};
use crate::proxy::request_body::BoxError;
use crate::proxy::upstream::ResponseBody;

/// The body of every response the proxy sends.
#[derive(Debug)]
pub enum ProxyBody {
    /// A backend's body, streamed through. Boxed: hyper keeps room for one
    /// response body in every HTTP/1 connection, idle or not, and this
    /// keeps that room to a few words (224 bytes unboxed).
    Upstream(Box<UpstreamBody>),
    /// A short body written by the proxy itself (errors).
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A local body with `text`.
    pub fn text(text: &'static str) -> ProxyBody {
        ProxyBody::Local(Full::new(Bytes::from_static(text.as_bytes())))
    }

    /// No body at all: a `101 Switching Protocols` answer, after which the
    /// connection carries a tunnel instead (see [`crate::proxy::tunnel`]).
    pub fn empty() -> ProxyBody {
        ProxyBody::Local(Full::new(Bytes::new()))
    }
}

/// A backend's response body on its way to the client.
#[derive(Debug)]
pub struct UpstreamBody {
    /// Gives its backend connection back for another request once read to
    /// its end, and closes it when dropped before.
    inner: ResponseBody,
    bytes: u64,
    finish: Option<Finish>,
}

impl UpstreamBody {
    /// Streams `inner`; `finish` runs when it ends, fails or is dropped.
    pub fn new(inner: ResponseBody, finish: Finish) -> UpstreamBody {
        UpstreamBody {
            inner,
            bytes: 0,
            finish: Some(finish),
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
        self.complete("aborted");
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => {
                let frame = ready!(Pin::new(&mut body.inner).poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            body.bytes += data.len() as u64;
                        }
                        if body.inner.is_end_stream() {
                            body.complete("complete");
                        }
                    }
                    Some(Err(_)) => body.complete(UPSTREAM_ERROR),
                    None => body.complete("complete"),
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
