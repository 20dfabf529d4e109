//! The listener: accepts client connections, serves each with hyper
//! (HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge, detected per
//! connection), and stops gracefully.
//!
//! [`start`] is how both `main` and the integration tests run the proxy: it
//! binds the configured address (port 0 picks a free port), and returns a
//! [`ProxyHandle`] with the bound address and a way to stop.
//!
//! Stopping ([`ProxyHandle::shutdown`], or dropping the handle): the listener
//! closes at once, so new connections are refused; idle keep-alive
//! connections close; requests in flight finish, each connection closing
//! after its current response, for at most `listener.drain_timeout`; then
//! whatever is left is cut off.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use affinity::config::Config;
//!
//! let config = Config::load(Path::new("config.toml"))?;
//! let proxy = affinity::server::start(config).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::pool::{Pool, PoolError, Snapshot};
use crate::proxy::Proxy;

/// How long a client may take to send a request's headers (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after a failed `accept` (such as running out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within the drain timeout.
    Complete,
    /// The drain timeout passed; the remaining connections were cut off.
    TimedOut,
}

/// A running proxy. Dropping it stops the proxy as [`shutdown`](Self::shutdown)
/// does, without waiting for the drain.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    pool: Arc<Pool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Drain>,
}

impl ProxyHandle {
    /// The address the listener is bound to (the actual port when the
    /// config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The pool the proxy routes with; publish a new snapshot to change it.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Stops accepting, lets requests in flight finish within the drain
    /// timeout, and returns how that went.
    pub async fn shutdown(mut self) -> Drain {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or(Drain::TimedOut)
    }
}

/// Starts the proxy for `config`: binds the listener and serves it on the
/// current tokio runtime until the handle is shut down or dropped. Every
/// backend starts healthy.
pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
    let config = Arc::new(config);
    let pool = Arc::new(Pool::new(Snapshot::all_healthy(config.clone())?));
    let address = config.listener.address;
    let bind_error = |source| StartError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!(address = %local_addr, "listening on {local_addr}");

    let (stop, stopped) = oneshot::channel();
    let proxy = Arc::new(Proxy::new(pool.clone()));
    let task = tokio::spawn(serve(
        listener,
        proxy,
        config.listener.drain_timeout,
        stopped,
    ));
    Ok(ProxyHandle {
        local_addr,
        pool,
        stop: Some(stop),
        task,
    })
}

/// hyper's connection settings: HTTP/1.1 or HTTP/2 (prior knowledge), with
/// timers for the header read timeout and HTTP/2 keep-alive.
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// The accept loop, then the drain.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    drain_timeout: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> Drain {
    let builder = connection_builder();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A send or a dropped handle: either way, stop.
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    let proxy = proxy.clone();
                    let service = service_fn(move |request| {
                        let proxy = proxy.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(proxy.handle(request, peer).await)
                        }
                    });
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "client connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        drain_timeout = %humantime::format_duration(drain_timeout),
        "stopped accepting; draining"
    );
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained");
            Drain::Complete
        }
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                "drain timeout passed; closing the remaining connections"
            );
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            Drain::TimedOut
        }
    }
}
