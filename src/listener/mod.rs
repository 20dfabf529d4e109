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
//! whatever is left is cut off. An open upgrade tunnel (a WebSocket, see
//! [`crate::proxy::tunnel`]) counts as in flight: the drain waits for it to close,
//! and cuts it off with the rest when the timeout passes.
//!
//! With `[admin]` configured, the admin endpoint ([`crate::admin`]) runs
//! beside the proxy on its own listener ([`ProxyHandle::admin_addr`]). A
//! shutdown first marks the proxy as draining (`/healthz` answers `503`), and
//! stops the admin endpoint once the drain is over; dropping the handle stops
//! it at once.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use affinity::config::Config;
//!
//! let config = Config::load(Path::new("config.toml"))?;
//! let proxy = affinity::listener::start(config).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{self, AdminServer};
use crate::config::{Config, LimitsConfig};
use crate::pool::checks::{self, HealthChecks, ReloadError};
use crate::pool::{Pool, PoolError, Snapshot};
use crate::proxy::Proxy;
use crate::proxy::framing::{AmbiguousRequest, Watched};
use crate::proxy::tunnel::Tunnels;

/// The pause after a failed `accept` (such as running out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener (or admin endpoint) address could not be bound.
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
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a worker: {0}")]
    Runtime(String),
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within the drain timeout.
    Complete,
    /// The drain timeout passed; the remaining connections were cut off.
    TimedOut,
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed settings that take effect only on restart (kept as they
    /// were): `listener.address`, `admin`.
    pub needs_restart: Vec<&'static str>,
}

/// A running proxy. Dropping it stops the proxy as [`shutdown`](Self::shutdown)
/// does, without waiting for the drain.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    pool: Arc<Pool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Drain>,
    /// The other workers, each on its own thread and runtime: how to stop
    /// it, and how its drain ended.
    workers: Vec<(oneshot::Sender<()>, oneshot::Receiver<Drain>)>,
    /// The health probes and the task that publishes health changes;
    /// dropping them (with the handle) stops them.
    health: HealthChecks,
    /// The admin endpoint, when configured; dropping it stops it.
    admin: Option<AdminServer>,
    /// Set when a shutdown begins: the admin `/healthz` then answers `503`.
    draining: Arc<AtomicBool>,
}

impl ProxyHandle {
    /// The address the listener is bound to (the actual port when the
    /// config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the admin endpoint is bound to, when `[admin]` is
    /// configured (the actual port when the config said 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The pool the proxy routes with; publish a new snapshot to change it.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Replaces the running config with `config` (a SIGHUP reload): the
    /// pool, its selector, keys, health settings and upstream settings take
    /// effect for requests that start afterwards, with no connection
    /// dropped; backends keep their health by name, and a new one starts
    /// healthy. The listener and admin addresses cannot change while
    /// running: a change of either is reported as needing a restart, and
    /// everything else is applied. On error the running config stays.
    pub async fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let current = self.pool.snapshot().config().clone();
        let mut needs_restart = Vec::new();
        if config.listener.address != current.listener.address {
            needs_restart.push("listener.address");
        }
        if config.admin != current.admin {
            needs_restart.push("admin");
        }
        let mut config = config;
        config.listener.address = current.listener.address;
        config.admin = current.admin.clone();
        for field in &needs_restart {
            tracing::warn!(field, "{field} changed: it takes effect on restart");
        }
        self.health.reload(Arc::new(config)).await?;
        Ok(Reloaded { needs_restart })
    }

    /// Stops accepting, lets requests in flight finish within the drain
    /// timeout, and returns how that went (on every worker).
    pub async fn shutdown(mut self) -> Drain {
        // Before anything stops, so that a load balancer in front sees the
        // draining at once and the admin endpoint reports it to the end.
        self.draining.store(true, Ordering::Relaxed);
        self.health.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let workers = std::mem::take(&mut self.workers);
        let mut done = Vec::with_capacity(workers.len());
        for (stop, drained) in workers {
            let _ = stop.send(());
            done.push(drained);
        }
        let mut drain = (&mut self.task).await.unwrap_or(Drain::TimedOut);
        for drained in done {
            if drained.await.unwrap_or(Drain::TimedOut) == Drain::TimedOut {
                drain = Drain::TimedOut;
            }
        }
        self.admin = None;
        drain
    }
}

/// Starts the proxy for `config` on the current tokio runtime: binds the
/// listener and serves it until the handle is shut down or dropped. Every
/// backend starts healthy; the health checks ([`crate::pool::health`]) run on this
/// runtime until then.
pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
    start_workers(config, 1).await
}

/// Starts the proxy with `workers` accept loops sharing one listening port
/// (`SO_REUSEPORT`, so the kernel spreads connections between them): one on
/// the current runtime, each other on a thread of its own with a
/// single-threaded runtime. A connection, its requests and their backend
/// connections then stay on one thread from accept to response, with no
/// cross-thread wake-ups; every worker routes with the same pool.
pub async fn start_workers(config: Config, workers: usize) -> Result<ProxyHandle, StartError> {
    let workers = workers.max(1);
    let config = Arc::new(config);
    let pool = Arc::new(Pool::new(Snapshot::all_healthy(config.clone())?));
    let address = config.listener.address;
    let bind_error = |source| StartError::Bind { address, source };
    let shared = workers > 1;
    let listener = bind(address, shared)
        .and_then(|socket| socket.listen(LISTEN_BACKLOG))
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    // Bound here, so that a bind error is reported before anything runs;
    // each becomes a listener on its own thread's runtime.
    let mut sockets = Vec::with_capacity(workers - 1);
    for _ in 1..workers {
        sockets.push(bind(local_addr, true).map_err(bind_error)?);
    }
    let draining = Arc::new(AtomicBool::new(false));
    let admin = match &config.admin {
        Some(settings) => {
            let address = settings.address;
            let server = admin::start(address, pool.clone(), draining.clone())
                .await
                .map_err(|source| StartError::Bind { address, source })?;
            Some(server)
        }
        None => None,
    };
    // Client connections open over every worker, for `limits.max_connections`.
    let open = Arc::new(AtomicUsize::new(0));
    let health = checks::spawn(pool.clone());
    let (spread, mut handed) = Workers::new(workers);
    let mut handed_to_others = handed.split_off(1).into_iter();
    let mut others = Vec::with_capacity(sockets.len());
    for (n, socket) in sockets.into_iter().enumerate() {
        let spread = spread.clone();
        let Some(handed) = handed_to_others.next() else {
            break;
        };
        let (stop, stopped) = oneshot::channel();
        let (drained, drain) = oneshot::channel();
        let proxy = Arc::new(Proxy::with_health(pool.clone(), health.reporter()));
        let worker_open = open.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        std::thread::Builder::new()
            .name(format!("affinity-worker-{}", n + 1))
            .spawn(move || {
                runtime.block_on(async move {
                    let outcome = match socket.listen(LISTEN_BACKLOG) {
                        Ok(listener) => {
                            serve(listener, proxy, worker_open, spread, n + 1, handed, stopped)
                                .await
                        }
                        Err(error) => {
                            tracing::error!(%error, "worker cannot listen");
                            Drain::Complete
                        }
                    };
                    let _ = drained.send(outcome);
                });
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        others.push((stop, drain));
    }
    tracing::info!(address = %local_addr, workers, "listening on {local_addr}");

    let (stop, stopped) = oneshot::channel();
    let proxy = Arc::new(Proxy::with_health(pool.clone(), health.reporter()));
    let handed = handed
        .pop()
        .ok_or_else(|| StartError::Runtime("no worker".into()))?;
    let task = tokio::spawn(serve(listener, proxy, open, spread, 0, handed, stopped));
    Ok(ProxyHandle {
        local_addr,
        pool,
        stop: Some(stop),
        task,
        workers: others,
        health,
        admin,
        draining,
    })
}

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// A TCP socket bound to `address`, with `SO_REUSEADDR` (restarts do not
/// wait for TIME_WAIT) and, when `shared`, `SO_REUSEPORT`.
fn bind(address: SocketAddr, shared: bool) -> io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    Ok(socket)
}

/// Applies `limits` to an HTTP/1 server builder: hyper's own
/// (`http1::Builder`) and hyper-util's (`auto::Http1Builder`) have the same
/// setters but no common trait.
macro_rules! http1_limits {
    ($builder:expr, $limits:expr) => {{
        let limits: &LimitsConfig = $limits;
        // `mut`: hyper-util's builder is a guard taken by value.
        #[allow(unused_mut)]
        let mut builder = $builder;
        builder
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head,
            // so it is also the keep-alive idle timeout.
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX));
        // Only when it differs from hyper's own limit: with the limit set
        // explicitly hyper builds its header arrays on the heap and fills
        // them for every request, instead of using uninitialised ones on
        // the stack.
        if limits.max_headers != HYPER_MAX_HEADERS {
            builder.max_headers(usize::try_from(limits.max_headers).unwrap_or(usize::MAX));
        }
    }};
}

/// hyper's connection settings: HTTP/1.1 or HTTP/2 (prior knowledge), with
/// timers for the header read timeout and HTTP/2 keep-alive.
fn connection_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_limits!(builder.http1(), limits);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes);
    builder
}

/// The HTTP/1 settings of [`connection_builder`], for connections served by
/// hyper's HTTP/1 server directly.
fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    http1_limits!(&mut builder, limits);
    builder
}

/// The number of headers hyper's HTTP/1 server accepts when not told
/// otherwise (its `DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: u32 = 100;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One client connection counted until it is dropped: against
/// `limits.max_connections` (over all workers), or as one a worker serves.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    /// Counts a new connection if fewer than `max` are open.
    fn try_open(open: &Arc<AtomicUsize>, max: usize) -> Option<OpenConnection> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| OpenConnection(open.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection as a worker accepted it: the stream, the client's
/// address and its place in `limits.max_connections`.
type Accepted = (TcpStream, SocketAddr, OpenConnection);

/// The receiving end of a worker's handoff channel: connections, each
/// counted for that worker.
type Handed<C> = mpsc::UnboundedReceiver<(C, OpenConnection)>;

/// Every worker's count of the client connections it serves, and the way to
/// hand it one (`C`: an [`Accepted`] connection; anything in tests).
struct Workers<C> {
    serving: Vec<Arc<AtomicUsize>>,
    handoff: Vec<mpsc::UnboundedSender<(C, OpenConnection)>>,
}

impl<C> Workers<C> {
    /// Workers for `n` accept loops, and the receiving end of each one's
    /// handoff channel.
    fn new(n: usize) -> (Arc<Workers<C>>, Vec<Handed<C>>) {
        let (handoff, receivers) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let serving = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        (Arc::new(Workers { serving, handoff }), receivers)
    }

    /// Sends a connection accepted by worker `me` to the worker serving the
    /// fewest connections if that is another one (`None`), or gives it back
    /// for `me` to serve, counted as `me`'s. A connection counts for the
    /// worker it goes to from this moment, so a burst of accepts spreads.
    fn hand_over(&self, me: usize, connection: C) -> Option<(C, OpenConnection)> {
        let load = |i: usize| self.serving[i].load(Ordering::Relaxed);
        let least = (0..self.serving.len())
            .min_by_key(|&i| (load(i), i != me))
            .unwrap_or(me);
        if least != me && load(least) < load(me) {
            match self.handoff[least].send((connection, self.serving(least))) {
                Ok(()) => return None,
                // That worker has stopped: served here after all.
                Err(mpsc::error::SendError((connection, _))) => {
                    return Some((connection, self.serving(me)));
                }
            }
        }
        Some((connection, self.serving(me)))
    }

    /// Counts a connection for worker `i` until the guard is dropped.
    fn serving(&self, i: usize) -> OpenConnection {
        let counter = self.serving[i].clone();
        counter.fetch_add(1, Ordering::Relaxed);
        OpenConnection(counter)
    }
}

/// Moves a connection that another worker accepted onto this thread's
/// runtime. A socket stays registered with the I/O driver of the runtime that
/// accepted it: left there, every readiness event of the connection would be
/// seen by that worker's thread and passed over to this one (an `eventfd`
/// write and a wake-up of this thread each time), and the connection would
/// stall whenever that thread is busy.
fn rehome(stream: TcpStream) -> io::Result<TcpStream> {
    TcpStream::from_std(stream.into_std()?)
}

/// The accept loop, then the drain. `me` is this worker's place in
/// `workers`: a connection the kernel gave this worker while another serves
/// fewer goes to that one, so that long keep-alive connections spread evenly
/// whatever `SO_REUSEPORT`'s hash did.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    open: Arc<AtomicUsize>,
    workers: Arc<Workers<Accepted>>,
    me: usize,
    mut handed: Handed<Accepted>,
    mut stopped: oneshot::Receiver<()>,
) -> Drain {
    // The limits of the running config; a reload that changes them builds
    // the connection settings again for the connections that follow.
    let mut config = proxy.pool().snapshot().config().clone();
    let mut builder = Arc::new(connection_builder(&config.limits));
    let mut http1 = Arc::new(http1_builder(&config.limits));
    // Raised when the drain starts: every connection then finishes its
    // current request and closes.
    let draining = Arc::new(DrainSignal::default());
    let mut connections = JoinSet::new();
    let tunnels = Tunnels::new();
    loop {
        let ((stream, peer, counted), load) = tokio::select! {
            // A send or a dropped handle: either way, stop.
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let max = proxy.pool().snapshot().config().limits.max_connections;
                    let max = usize::try_from(max).unwrap_or(usize::MAX);
                    let Some(counted) = OpenConnection::try_open(&open, max) else {
                        // Over the limit: closed at once, without a word,
                        // so the accept loop never waits on it.
                        tracing::debug!(%peer, max, "too many client connections; closing a new one");
                        drop(stream);
                        continue;
                    };
                    match workers.hand_over(me, (stream, peer, counted)) {
                        None => continue,
                        Some(kept) => kept,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            Some(((stream, peer, counted), load)) = handed.recv() => match rehome(stream) {
                Ok(stream) => ((stream, peer, counted), load),
                Err(error) => {
                    tracing::debug!(%peer, %error, "cannot take over a handed connection");
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let current = proxy.pool().snapshot().config().clone();
        if !Arc::ptr_eq(&current, &config) {
            if current.limits != config.limits {
                builder = Arc::new(connection_builder(&current.limits));
                http1 = Arc::new(http1_builder(&current.limits));
            }
            config = current;
        }
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let proxy = proxy.clone();
        let tunnels = tunnels.clone();
        // The requests served so far: each one's index on the
        // connection. Until the first, the connection is on
        // `header_timeout` as a whole (hyper times the HTTP/1
        // head, but not the wait for a first byte, the HTTP/2
        // preface nor its handshake).
        let requests = Arc::new(AtomicU64::new(0));
        let served = requests.clone();
        let header_timeout = config.limits.header_timeout;
        // The raw bytes are watched for what hyper hides: a
        // request with both Content-Length and Transfer-Encoding.
        let head_bytes = usize::try_from(config.limits.max_header_bytes).unwrap_or(usize::MAX);
        let (stream, ambiguity) = Watched::new(stream, head_bytes);
        let service = service_fn(move |mut request: Request<Incoming>| {
            let index = requests.fetch_add(1, Ordering::Relaxed);
            if ambiguity.is(index) {
                request.extensions_mut().insert(AmbiguousRequest);
            }
            let proxy = proxy.clone();
            let tunnels = tunnels.clone();
            // Boxed: hyper keeps room for one request's future in
            // every connection, idle or not; a box keeps that to a
            // pointer, and the ~3 KB state lives only while a
            // request does.
            Box::pin(async move {
                let response = proxy.handle(request, peer, &tunnels).await;
                Ok::<_, std::convert::Infallible>(response)
            })
        });
        let builder = builder.clone();
        let http1 = http1.clone();
        let draining = draining.clone();
        connections.spawn(async move {
            let _counted = (counted, load);
            let first = tokio::time::sleep(header_timeout);
            tokio::pin!(first);
            // Look at the first bytes without consuming them: HTTP/1
            // goes straight to hyper's HTTP/1 server, so hyper's first
            // read gets the whole head (hyper-util's auto builder
            // reads 24 bytes to sniff the version and hands them back
            // first, which makes hyper grow its 8 KiB read buffer to
            // 16 KiB on every connection), and the task holds only
            // HTTP/1 state. What could be the HTTP/2 preface goes to
            // the auto builder, boxed.
            let mut head = [0u8; H2_PREFACE.len()];
            let maybe_h2 = tokio::select! {
                peeked = stream.get_ref().peek(&mut head) => match peeked {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head[..n] == H2_PREFACE[..n],
                },
                () = &mut first => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
                // Nothing sent yet: nothing to finish.
                () = draining.started() => return,
            };
            let ended = if maybe_h2 {
                // With upgrades: after a `101`, hyper hands the client's
                // connection over to the tunnel and this future ends.
                let mut connection = Box::pin(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned(),
                );
                tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = &mut first, if served.load(Ordering::Relaxed) == 0 => {
                        if served.load(Ordering::Relaxed) == 0 {
                            tracing::debug!(%peer, "no request within the header timeout; closing");
                            return;
                        }
                        drained(connection.as_mut(), &draining, |c| c.graceful_shutdown()).await
                    }
                    () = draining.started() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            } else {
                // hyper times the head from here (header_timeout).
                let connection = http1
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                drained(connection.as_mut(), &draining, |c| c.graceful_shutdown())
                    .await
                    .map_err(Into::into)
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    // The drain timeout of the running config (a reload may have changed it).
    let drain_timeout = proxy.pool().snapshot().config().listener.drain_timeout;
    tracing::info!(
        connections = connections.len(),
        tunnels = tunnels.open(),
        drain_timeout = %humantime::format_duration(drain_timeout),
        "stopped accepting; draining"
    );
    // Connections first: a request still in flight may yet open a tunnel.
    draining.raise();
    let drained = async {
        while connections.join_next().await.is_some() {}
        tunnels.closed().await;
    };
    match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => {
            tracing::info!("drained");
            Drain::Complete
        }
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                tunnels = tunnels.open(),
                "drain timeout passed; closing the remaining connections"
            );
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            // Each tunnel drops its connections as soon as it sees the cut.
            tunnels.cut_off();
            tunnels.closed().await;
            Drain::TimedOut
        }
    }
}

/// The start of the drain, as every connection of a worker watches it.
#[derive(Default)]
struct DrainSignal {
    raised: AtomicBool,
    notify: Notify,
}

impl DrainSignal {
    /// Starts the drain: wakes every connection.
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once the drain has started.
    async fn started(&self) {
        // Created before the check: a raise in between still wakes it.
        let notified = self.notify.notified();
        if !self.raised.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// Runs `connection` to its end; when the drain starts, asks it (`shutdown`)
/// to finish its current request and close.
///
/// Polled on every wake-up of the connection, so this costs one atomic load
/// then: the drain's wake-up is registered on the first poll only (the
/// connection's task, and so its waker, stays the same).
async fn drained<C, T>(
    mut connection: std::pin::Pin<&mut C>,
    draining: &DrainSignal,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> T
where
    C: std::future::Future<Output = T>,
{
    let notified = draining.notify.notified();
    tokio::pin!(notified);
    let mut registered = false;
    let mut shutdown = Some(shutdown);
    std::future::poll_fn(move |cx| {
        if shutdown.is_some() {
            if !registered {
                registered = true;
                let _ = notified.as_mut().poll(cx);
            }
            if draining.raised.load(Ordering::Acquire)
                && let Some(shutdown) = shutdown.take()
            {
                shutdown(connection.as_mut());
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `accepts` (the worker the kernel gave each new connection) to
    /// `Workers::hand_over` and returns, per worker, the connections it
    /// ended up serving, and the guards that keep them counted.
    fn spread(workers: usize, accepts: &[usize]) -> (Vec<Vec<u32>>, Vec<OpenConnection>) {
        let (shared, mut handed) = Workers::<u32>::new(workers);
        let mut served = vec![Vec::new(); workers];
        let mut guards = Vec::new();
        for (id, &me) in accepts.iter().enumerate() {
            let id = u32::try_from(id).unwrap();
            if let Some((kept, guard)) = shared.hand_over(me, id) {
                served[me].push(kept);
                guards.push(guard);
            }
        }
        for (worker, receiver) in handed.iter_mut().enumerate() {
            while let Ok((id, guard)) = receiver.try_recv() {
                served[worker].push(id);
                guards.push(guard);
            }
        }
        (served, guards)
    }

    /// Worker A accepts a connection and hands it to worker B, then A's
    /// thread stays busy (its runtime's I/O driver does not turn). B reads
    /// and answers on the connection all the same: it was moved onto B's
    /// runtime, and nothing of it waits on A.
    #[test]
    fn a_handed_connection_does_not_wait_on_the_worker_that_accepted_it() {
        use std::io::{Read, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let current_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (hand, handed) = std::sync::mpsc::channel::<TcpStream>();
        let (release, busy) = std::sync::mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                hand.send(stream).unwrap();
                // Busy until the test ends: this runtime polls nothing.
                let _ = busy.recv_timeout(Duration::from_secs(20));
            });
        });
        let b = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let stream = handed.recv_timeout(Duration::from_secs(5)).unwrap();
                let mut stream = rehome(stream).unwrap();
                let mut requests = Vec::new();
                // Twice: tokio takes a new connection as ready at first, so
                // the second read is the one that waits on a driver's event.
                for _ in 0..2 {
                    let mut request = [0u8; 4];
                    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut request))
                        .await
                        .expect("the handed connection is read within 2 s")
                        .unwrap();
                    stream.write_all(b"pong").await.unwrap();
                    requests.push(request);
                }
                requests
            })
        });
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut answer = [0u8; 4];
            if client.write_all(b"ping").is_err() || client.read_exact(&mut answer).is_err() {
                break;
            }
            answers.push(answer);
        }
        let requests = b.join();
        release.send(()).unwrap();
        a.join().unwrap();
        assert_eq!(requests.expect("worker B answers"), [*b"ping"; 2]);
        assert_eq!(answers, [*b"pong"; 2]);
    }

    #[test]
    fn a_burst_accepted_by_one_worker_spreads_evenly_over_all() {
        let (served, _guards) = spread(2, &[0; 10]);
        assert_eq!(served[0].len(), 5);
        assert_eq!(served[1].len(), 5);
        let (served, _guards) = spread(4, &[2; 13]);
        let counts: Vec<usize> = served.iter().map(Vec::len).collect();
        assert_eq!(counts.iter().sum::<usize>(), 13);
        assert!(counts.iter().all(|&n| n == 3 || n == 4), "{counts:?}");
    }

    #[test]
    fn a_balanced_accept_pattern_keeps_every_connection_where_it_landed() {
        let (served, _guards) = spread(2, &[0, 1, 0, 1, 1, 0]);
        assert_eq!(served[0], [0, 2, 5]);
        assert_eq!(served[1], [1, 3, 4]);
    }

    #[test]
    fn a_closed_connection_no_longer_counts_and_a_stopped_worker_gets_none() {
        let (shared, mut handed) = Workers::<u32>::new(2);
        let (_, first) = shared.hand_over(0, 1).unwrap();
        drop(first);
        // Both idle again: kept where accepted.
        let held = shared.hand_over(0, 2);
        assert_eq!(held.as_ref().map(|(id, _)| *id), Some(2));
        // Worker 1 stopped (its receiver gone): worker 0 keeps what it
        // would have handed over, and counts it.
        drop(handed.pop());
        let kept = shared.hand_over(0, 3);
        assert_eq!(kept.as_ref().map(|(id, _)| *id), Some(3));
        assert_eq!(shared.serving[0].load(Ordering::Relaxed), 2);
        assert_eq!(shared.serving[1].load(Ordering::Relaxed), 0);
    }
}
