//! Connections to backends: HTTP/1.1 over TCP, or TLS for `https://`
//! backends ([`Target`]), kept alive and reused.
//!
//! Each worker thread keeps its own idle connections, per backend address
//! (and TLS settings)
//! (see [`crate::listener::start_workers`]: a request, its client connection
//! and the backend connection it uses then live on one thread). A request
//! takes the most recently used idle connection to its backend, or opens a
//! new one; the connection goes back to the idle list when the response has
//! been read to its end ([`h1::ResponseBody`]). A response cut off, or
//! dropped before its end, takes its connection with it: it cannot carry
//! another request. So does a `101 Switching Protocols`, whose connection
//! becomes a tunnel.
//!
//! An idle connection is dropped once it has been idle for
//! [`idle::IDLE_TIMEOUT`], or when the backend closed it; at most
//! [`idle::MAX_IDLE_PER_BACKEND`] are kept per backend and thread.
//!
//! HTTP/1.1 is the project's own client ([`h1`], framing in [`codec`]):
//! each exchange runs in the request's task, and the response body reads
//! the backend's socket as the client's connection asks for it. An idle
//! connection is a socket and nothing more. HTTP/2 backends
//! (`upstream.protocol = "h2"`/`"h2c"`) go through hyper's client, one
//! shared connection per backend and thread.

pub mod codec;
pub mod h1;
pub mod idle;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fnv::FnvBuildHasher;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::OnceCell;

use crate::config::UpstreamProtocol;
use crate::pool::target::Target;
use crate::proxy::request_body::{BoxError, RecoverableBody};
use crate::proxy::upstream::codec::Framing;
use crate::proxy::upstream::h1::Upgraded;
use crate::proxy::upstream::idle::Conn;

/// Why a request could not be sent to its backend, or got no response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: the address did not resolve, the connection was
    /// refused or unreachable, or `connect_timeout` passed. The backend never
    /// saw the request.
    #[error("cannot connect to {authority}")]
    Connect {
        /// The backend's `host:port`.
        authority: Authority,
        /// What the OS (or the timeout) said.
        #[source]
        source: io::Error,
    },
    /// Connected, then the exchange failed before a response head: the
    /// connection closed or reset, an invalid response, or the request body
    /// failed.
    #[error("the exchange with {authority} failed")]
    Exchange {
        /// The backend's `host:port`.
        authority: Authority,
        /// What went wrong: an [`h1::Error`], or hyper's error over HTTP/2.
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    /// Whether no connection was made (the backend never saw the request).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

/// A backend's answer: the response, its body still to be read, and after
/// a `101` the connection the backend switched.
#[derive(Debug)]
pub struct Exchanged {
    /// The response.
    pub response: Response<ResponseBody>,
    /// After a `101` over HTTP/1.1: the connection, now the tunnel's.
    pub upgraded: Option<Upgraded>,
}

/// A response body from a backend, read as it is polled. Read to its end,
/// an HTTP/1.1 body gives its connection back for another request; dropped
/// before, it closes it.
#[derive(Debug)]
pub enum ResponseBody {
    /// Over HTTP/1.1 ([`h1`]).
    Http1(h1::ResponseBody),
    /// A stream of a shared HTTP/2 connection.
    Http2(Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Http1(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http1(body) => body.is_end_stream(),
            ResponseBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http1(body) => body.size_hint(),
            ResponseBody::Http2(body) => body.size_hint(),
        }
    }
}

/// Sends `request` to the backend at `authority` over an idle connection, or
/// a new one (connecting within `connect_timeout`), and waits for the
/// response head. The request's URI is sent as it is: give it in origin form
/// (`/path?query`), with a `Host` header.
///
/// An idle connection on which anything arrived while it was idle (the
/// backend's close) is not used: the request goes on another one, or a new
/// one.
pub async fn send(
    target: &Target,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    request: Request<RecoverableBody>,
) -> Result<Exchanged, UpstreamError> {
    if protocol.is_h2() {
        // Boxed, as is a new connection below: every request's future holds
        // room for the largest path it may take, and is moved whole a few
        // times on its way into its task; the common path stays small.
        Box::pin(send_h2(target, connect_timeout, request)).await
    } else {
        send_http1(target, connect_timeout, request).await
    }
}

/// [`send`] over HTTP/1.1.
async fn send_http1(
    target: &Target,
    connect_timeout: Duration,
    request: Request<RecoverableBody>,
) -> Result<Exchanged, UpstreamError> {
    // Built apart, so that the parts only this needs take no room in the
    // future.
    let request = http1_request(request);
    let mut conn = match idle::take(target.key()) {
        Some(conn) => conn,
        None => Box::pin(connect(target, connect_timeout)).await?,
    };
    let answered =
        h1::exchange(&mut conn, request)
            .await
            .map_err(|error| UpstreamError::Exchange {
                authority: target.authority().clone(),
                source: Box::new(error),
            })?;
    let h1::Answered {
        head,
        buf,
        reusable,
    } = answered;
    let (body, upgraded) = if head.framing == Framing::Switch {
        (h1::ResponseBody::empty(), Some(h1::upgraded(conn, buf)))
    } else {
        (
            h1::ResponseBody::new(conn, head.framing, buf, reusable),
            None,
        )
    };
    Ok(Exchanged {
        response: Response::from_parts(head.parts, ResponseBody::Http1(body)),
        upgraded,
    })
}

/// `request` as the HTTP/1.1 client sends it: its head written, its body
/// framed.
fn http1_request(request: Request<RecoverableBody>) -> h1::Request {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256 + parts.headers.len() * 48);
    let framing = codec::encode_request(
        &parts.method,
        path,
        &mut parts.headers,
        body.size_hint().exact(),
        body.is_end_stream(),
        &mut head,
    );
    let allowed_trailers = if framing == codec::RequestFraming::Chunked {
        codec::allowed_trailers(&parts.headers)
    } else {
        Vec::new()
    };
    h1::Request {
        head,
        method: parts.method,
        body,
        framing,
        allowed_trailers,
    }
}

/// Opens a connection to `target` (TCP, and TLS for `https://`).
async fn connect(target: &Target, timeout: Duration) -> Result<Conn, UpstreamError> {
    match target.connect(timeout).await {
        Ok(stream) => Ok(Conn::new(stream, target.key().clone())),
        Err(source) => Err(UpstreamError::Connect {
            authority: target.authority().clone(),
            source,
        }),
    }
}

/// [`send`] over HTTP/2: a stream of this thread's connection to the
/// backend, opened when there is none (or it closed). A request the
/// connection could not take (it was closing) goes on a new one: it was
/// never sent.
async fn send_h2(
    target: &Target,
    connect_timeout: Duration,
    mut request: Request<RecoverableBody>,
) -> Result<Exchanged, UpstreamError> {
    let authority = target.authority();
    let mut retried = false;
    loop {
        // Requests that find no connection wait for the one being opened,
        // so that they share it.
        let cell = H2.with(|h2| {
            let mut h2 = h2.borrow_mut();
            if h2
                .get(target.key())
                .and_then(|cell| cell.get())
                .is_some_and(|sender| sender.is_closed())
            {
                h2.remove(target.key());
            }
            h2.entry(target.key().clone()).or_default().clone()
        });
        let opened = cell.get().is_none();
        let mut sender = cell
            .get_or_try_init(|| connect_h2(target, connect_timeout))
            .await?
            .clone();
        // A connection that cannot take the request (it was closing) is
        // dropped, and the request, never sent, goes on a new one.
        let forget = |cell: &Arc<OnceCell<_>>| {
            H2.with(|h2| {
                let mut h2 = h2.borrow_mut();
                if h2.get(target.key()).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                    h2.remove(target.key());
                }
            });
        };
        if sender.ready().await.is_err() {
            forget(&cell);
            if !retried && !opened {
                retried = true;
                continue;
            }
            return Err(UpstreamError::Connect {
                authority: authority.clone(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the HTTP/2 connection closed before the request could be sent",
                ),
            });
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok(Exchanged {
                    response: response.map(ResponseBody::Http2),
                    upgraded: None,
                });
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if !retried => {
                    forget(&cell);
                    request = unsent;
                    retried = true;
                }
                _ => {
                    return Err(UpstreamError::Exchange {
                        authority: authority.clone(),
                        source: Box::new(error.into_error()),
                    });
                }
            },
        }
    }
}

/// Opens an HTTP/2 connection to `target` (prior knowledge over TCP, or
/// TLS with `h2` agreed by ALPN) and starts its task on this thread.
async fn connect_h2(
    target: &Target,
    timeout: Duration,
) -> Result<http2::SendRequest<RecoverableBody>, UpstreamError> {
    let failed = |source| UpstreamError::Connect {
        authority: target.authority().clone(),
        source,
    };
    let stream = target.connect(timeout).await.map_err(failed)?;
    if target.is_tls() && stream.alpn() != Some(b"h2".as_slice()) {
        return Err(failed(io::Error::other(
            "the backend did not agree to HTTP/2 (ALPN h2)",
        )));
    }
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|error| failed(io::Error::other(error)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP/2 backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// A thread's HTTP/2 connections, by target key: each opened once, shared
/// by every request to that backend.
type H2Connections =
    HashMap<Arc<str>, Arc<OnceCell<http2::SendRequest<RecoverableBody>>>, FnvBuildHasher>;

thread_local! {
    /// This thread's HTTP/2 connection to each backend (and TLS settings).
    static H2: RefCell<H2Connections> = RefCell::new(HashMap::default());
}
