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
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

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
pub struct Connection {
    sender: SendRequest<RecoverableBody>,
    /// Its idle pool ([`Target::key`]).
    key: Arc<str>,
}

impl Connection {
    /// Gives the connection back to this thread's idle list: call it once
    /// the response has been read to its end. (Dropping it instead closes
    /// it once the backend's response is done.)
    pub fn release(self) {
        IDLE.with(|idle| idle.borrow_mut().put(self.key, self.sender));
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
                    Connection {
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

thread_local! {
    static IDLE: RefCell<IdleConnections> = RefCell::new(IdleConnections::default());
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
