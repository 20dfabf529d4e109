//! Connections to backends: HTTP/1.1 over TCP, or TLS for `https://`
//! backends ([`Target`]), kept alive and reused.
//!
//! Each worker thread keeps its own idle connections, per backend address
//! (and TLS settings)
//! (see [`crate::listener::start_workers`]: a request, its client connection
//! and the backend connection it uses then live on one thread). A request
//! takes the most recently used idle connection to its backend, or opens a
//! new one; the connection goes back to the idle list when the response has
//! been read to its end ([`Connection::release`]). A response cut off, or
//! dropped before its end, takes its connection with it: it cannot carry
//! another request. So does a `101 Switching Protocols`, whose connection
//! becomes a tunnel.
//!
//! An idle connection is dropped once it has been idle for
//! [`IDLE_TIMEOUT`], or when the backend closed it; at most
//! [`MAX_IDLE_PER_BACKEND`] are kept per backend and thread.
//!
//! hyper drives each connection (`hyper::client::conn::http1`) as a task of
//! its own on the thread that opened it. This module is the pool and the
//! connect step around it: the same thing hyper-util's pooled client does,
//! without its per-request work (hashing the pool key, a task spawned per
//! response to wait for the connection to become idle, shared locking).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnv::FnvBuildHasher;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::OnceCell;

use crate::config::UpstreamProtocol;
use crate::pool::target::Target;
use crate::proxy::request_body::RecoverableBody;

/// How long a backend connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most idle connections a thread keeps per backend.
pub const MAX_IDLE_PER_BACKEND: usize = 1024;

/// How often, at most, a thread looks through its idle lists for
/// connections to drop.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether no connection was made (the backend never saw the request).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

/// The backend connection a response arrived on, held until the response
/// body has been read to its end.
#[derive(Debug)]
pub enum Connection {
    /// An HTTP/1.1 connection, the response's alone until its end.
    Http1 {
        /// Sends the next request once this response is read.
        sender: SendRequest<RecoverableBody>,
        /// Its idle pool ([`Target::key`]).
        key: Arc<str>,
    },
    /// A stream of a shared HTTP/2 connection: nothing to give back.
    Http2,
}

impl Connection {
    /// Gives the connection back to this thread's idle list: call it once
    /// the response has been read to its end. (Dropping it instead closes
    /// it once the backend's response is done.)
    pub fn release(self) {
        if let Connection::Http1 { sender, key } = self {
            IDLE.with(|idle| idle.borrow_mut().put(key, sender));
        }
    }
}

/// Sends `request` to the backend at `authority` over an idle connection, or
/// a new one (connecting within `connect_timeout`), and waits for the
/// response head. The request's URI is sent as it is: give it in origin form
/// (`/path?query`), with a `Host` header.
///
/// A request that an idle connection could not take (the backend had closed
/// it) goes on another one; it was never written, so this is safe for any
/// method.
pub async fn send(
    target: &Target,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    request: Request<RecoverableBody>,
) -> Result<(Response<Incoming>, Connection), UpstreamError> {
    if protocol.is_h2() {
        send_h2(target, connect_timeout, request).await
    } else {
        send_http1(target, connect_timeout, request).await
    }
}

/// [`send`] over HTTP/1.1.
async fn send_http1(
    target: &Target,
    connect_timeout: Duration,
    mut request: Request<RecoverableBody>,
) -> Result<(Response<Incoming>, Connection), UpstreamError> {
    let authority = target.authority();
    loop {
        let (mut sender, reused) = match IDLE.with(|idle| idle.borrow_mut().take(target.key())) {
            Some(sender) => (sender, true),
            None => (connect(target, connect_timeout).await?, false),
        };
        // An idle connection may be finishing its last response still (a
        // moment on this thread), and a new one starts once its task runs.
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Err(UpstreamError::Connect {
                authority: authority.clone(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connection closed before the request could be sent",
                ),
            });
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok((
                    response,
                    Connection::Http1 {
                        sender,
                        key: target.key().clone(),
                    },
                ));
            }
            Err(mut error) => match error.take_message() {
                // Never written: the connection was closing. Another one.
                Some(unsent) if reused => request = unsent,
                _ => {
                    return Err(UpstreamError::Exchange {
                        authority: authority.clone(),
                        source: error.into_error(),
                    });
                }
            },
        }
    }
}

/// Opens a connection to `target` (TCP, and TLS for `https://`) and
/// starts its task on this thread's runtime.
async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<SendRequest<RecoverableBody>, UpstreamError> {
    let failed = |source| UpstreamError::Connect {
        authority: target.authority().clone(),
        source,
    };
    let stream = target.connect(timeout).await.map_err(failed)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| failed(io::Error::other(error)))?;
    tokio::spawn(async move {
        // With upgrades: a `101` hands the connection over to a tunnel.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// [`send`] over HTTP/2: a stream of this thread's connection to the
/// backend, opened when there is none (or it closed). A request the
/// connection could not take (it was closing) goes on a new one: it was
/// never sent.
async fn send_h2(
    target: &Target,
    connect_timeout: Duration,
    mut request: Request<RecoverableBody>,
) -> Result<(Response<Incoming>, Connection), UpstreamError> {
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
            Ok(response) => return Ok((response, Connection::Http2)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if !retried => {
                    forget(&cell);
                    request = unsent;
                    retried = true;
                }
                _ => {
                    return Err(UpstreamError::Exchange {
                        authority: authority.clone(),
                        source: error.into_error(),
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
    static IDLE: RefCell<IdleConnections> = RefCell::new(IdleConnections::default());
    /// This thread's HTTP/2 connection to each backend (and TLS settings).
    static H2: RefCell<H2Connections> = RefCell::new(HashMap::default());
}

/// One thread's idle connections, by backend address (and TLS settings).
#[derive(Default)]
struct IdleConnections {
    by_key: HashMap<Arc<str>, Vec<Idle>, FnvBuildHasher>,
    last_sweep: Option<Instant>,
}

/// An idle connection and since when.
struct Idle {
    sender: SendRequest<RecoverableBody>,
    since: Instant,
}

impl IdleConnections {
    /// The most recently used open connection of the pool `key`, if any.
    fn take(&mut self, key: &str) -> Option<SendRequest<RecoverableBody>> {
        let list = self.by_key.get_mut(key)?;
        while let Some(idle) = list.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Keeps `sender` as idle, unless it is closed or the list is full.
    fn put(&mut self, key: Arc<str>, sender: SendRequest<RecoverableBody>) {
        let now = Instant::now();
        if self
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
        if sender.is_closed() {
            return;
        }
        let list = match self.by_key.get_mut(&*key) {
            Some(list) => list,
            None => self.by_key.entry(key).or_default(),
        };
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { sender, since: now });
        }
    }

    /// Drops the connections that are closed or idle for too long, and the
    /// lists left empty (a backend removed by a reload leaves nothing behind).
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        self.by_key.retain(|_, list| {
            list.retain(|idle| {
                !idle.sender.is_closed() && now.duration_since(idle.since) < IDLE_TIMEOUT
            });
            !list.is_empty()
        });
    }
}
