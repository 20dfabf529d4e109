//! One worker: its accept loop, each client connection it serves, and its
//! drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, LimitsConfig, ListenerConfig, Protocol};
use crate::listener::drain::{Drain, DrainSignal, drained};
use crate::listener::http::{H2_PREFACE, connection_builder, http1_builder};
use crate::listener::proxy_protocol::{self, Header, ReadError};
use crate::listener::tls::TlsListener;
use crate::listener::workers::{Accepted, Admitted, Handed, OpenConnection, Workers, rehome};
use crate::pool::routing::Pools;
use crate::pool::stats::ListenerLabels;
use crate::proxy::Proxy;
use crate::proxy::framing::{AmbiguousRequest, Watched};
use crate::proxy::response_body::ProxyBody;
use crate::proxy::tcp;
use crate::proxy::tunnel::Tunnels;

/// The pause after a failed `accept` (such as running out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long the connections cut off at the drain deadline may take to log
/// and close before they are aborted.
const CUT_OFF_GRACE: Duration = Duration::from_millis(100);

/// What one worker serves with.
pub(super) struct Worker {
    /// The request handler of each listener, in the order of the listeners.
    pub(super) proxies: Arc<[Arc<Proxy>]>,
    /// The pools every handler routes to.
    pub(super) pools: Arc<Pools>,
    /// Each listener's TLS, in the order of the listeners; `None`: plain.
    pub(super) tls: Arc<[Option<Arc<TlsListener>>]>,
    /// Client connections open over every worker, for
    /// `limits.max_connections` (the pool's stats gauge, which the admin
    /// endpoint shows).
    pub(super) open: Gauge,
    /// Every worker's load, and the way to hand one a connection.
    pub(super) workers: Arc<Workers<Accepted>>,
    /// This worker's place in `workers`.
    pub(super) me: usize,
    /// The connections other workers hand to this one.
    pub(super) handed: Handed<Accepted>,
}

/// What every connection of a worker shares: the handler, the tunnels and
/// the drain, and hyper's settings for the running config's `[limits]`.
#[derive(Clone)]
struct Shared {
    proxies: Arc<[Arc<Proxy>]>,
    /// Each listener's TLS, in the order of the listeners; `None`: plain.
    tls: Arc<[Option<Arc<TlsListener>>]>,
    pools: Arc<Pools>,
    config: Arc<Config>,
    /// What every HTTP connection is served with, for the running config's
    /// `[limits]` (each connection holds a reference), and the worker's
    /// tunnels and drain signal, which every `Http` of the worker shares.
    http: Arc<Http>,
    /// Each running listener's name, for its metrics' labels.
    names: Arc<[Arc<str>]>,
}

/// What serving one HTTP connection needs of [`Shared`], and no more: each
/// connection's task holds one reference to it (one word) for as long as the
/// connection is open, idle or not.
struct Http {
    tunnels: Tunnels,
    /// Raised when the drain starts: every connection then finishes its
    /// current request and closes.
    draining: Arc<DrainSignal>,
    builder: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    /// For the TLS handshake's counters.
    pools: Arc<Pools>,
    max_header_bytes: usize,
    header_timeout: Duration,
}

impl Http {
    /// A worker's first: hyper's settings for `limits`, new tunnels and a
    /// new drain signal.
    fn new(limits: &LimitsConfig, pools: Arc<Pools>) -> Http {
        Http {
            tunnels: Tunnels::new(),
            draining: Arc::new(DrainSignal::default()),
            builder: connection_builder(limits),
            http1: http1_builder(limits),
            pools,
            max_header_bytes: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
            header_timeout: limits.header_timeout,
        }
    }

    /// The same worker's, with hyper's settings for `limits`.
    fn with_limits(&self, limits: &LimitsConfig) -> Http {
        Http {
            tunnels: self.tunnels.clone(),
            draining: self.draining.clone(),
            ..Http::new(limits, self.pools.clone())
        }
    }
}

impl Shared {
    /// A reload that changed the limits builds the connection settings
    /// again, for the connections that follow.
    fn refresh(&mut self) {
        let current = self.pools.routing().config().clone();
        if !Arc::ptr_eq(&current, &self.config) {
            if current.limits != self.config.limits {
                self.http = Arc::new(self.http.with_limits(&current.limits));
            }
            self.config = current;
        }
    }

    /// Running listener `listener` as it started, and its settings in the
    /// running config (a reload may have changed them; those it started
    /// with if the config no longer names it).
    fn settings(&self, listener: usize) -> Option<(&ListenerConfig, &ListenerConfig)> {
        let running = self.pools.running().get(listener)?;
        let settings = self.config.listener(&running.name).unwrap_or(running);
        Some((running, settings))
    }
}

/// The accept loop, then the drain. A connection the kernel gave this worker
/// while another serves clearly fewer goes to that one (see
/// [`Workers::hand_over`]), so that long keep-alive connections spread
/// evenly whatever `SO_REUSEPORT`'s hash did.
pub(super) async fn serve(
    listeners: Vec<TcpListener>,
    worker: Worker,
    mut stopped: oneshot::Receiver<()>,
) -> Drain {
    let Worker {
        proxies,
        pools,
        tls,
        open,
        workers,
        me,
        mut handed,
    } = worker;
    let config = pools.routing().config().clone();
    let names: Vec<Arc<str>> = pools
        .running()
        .iter()
        .map(|l| Arc::from(l.name.as_str()))
        .collect();
    let mut shared = Shared {
        http: Arc::new(Http::new(&config.limits, pools.clone())),
        config,
        proxies,
        tls,
        pools,
        names: names.into(),
    };
    // Each listener's open connections, over every worker.
    let listening: Vec<Gauge> = shared
        .names
        .iter()
        .map(|name| {
            let labels = ListenerLabels {
                listener: name.clone(),
            };
            let gauges = shared.pools.stats().listener_connections();
            gauges.get_or_create(&labels).clone()
        })
        .collect();
    let mut connections = JoinSet::new();
    loop {
        let connection = tokio::select! {
            // A send or a dropped handle: either way, stop.
            _ = &mut stopped => break,
            (listener, accepted) = accept_any(&listeners) => match accepted {
                Ok((stream, peer)) => {
                    shared.pools.stats().client_connections_accepted().inc();
                    shared.refresh();
                    let Some(counted) = admit(&shared, &open, &listening[listener], listener, peer) else {
                        // Over a limit: closed at once, without a word,
                        // so the accept loop never waits on it.
                        drop(stream);
                        continue;
                    };
                    match workers.hand_over(me, (stream, peer, counted, listener)) {
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
            Some(handed) = handed.recv() => match take_over(handed) {
                Some(connection) => {
                    shared.refresh();
                    connection
                }
                None => continue,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        spawn_connection(&mut connections, connection, &shared);
    }
    drop(listeners);
    // Connections other workers handed to this one: accepted already, so
    // served rather than dropped (which would reset them). A worker that
    // hands one over from now on keeps it.
    handed.close();
    while let Ok(handed) = handed.try_recv() {
        if let Some(connection) = take_over(handed) {
            spawn_connection(&mut connections, connection, &shared);
        }
    }
    drain(connections, &shared).await
}

/// A connection as this worker serves it: what it accepted (or was handed),
/// and its place in the worker's count.
type Counted = (Accepted, OpenConnection);

/// A connection another worker accepted, moved onto this thread's runtime
/// (see [`rehome`]); `None`, logged, when it cannot be.
fn take_over(((stream, peer, admitted, listener), load): Counted) -> Option<Counted> {
    match rehome(stream) {
        Ok(stream) => Some(((stream, peer, admitted, listener), load)),
        Err(error) => {
            tracing::debug!(%peer, %error, "cannot take over a handed connection");
            None
        }
    }
}

/// Counts a connection `listener` accepted from `peer` against
/// `limits.max_connections` (on `open`) and the listener's own limit (on
/// `listening`), if both have room; a refusal is counted and logged.
fn admit(
    shared: &Shared,
    open: &Gauge,
    listening: &Gauge,
    listener: usize,
    peer: SocketAddr,
) -> Option<Admitted> {
    let (_, settings) = shared.settings(listener)?;
    let own = settings.max_connections;
    let max = shared.config.limits.max_connections;
    match Admitted::try_admit(open, max, listening, own) {
        Ok(admitted) => Some(admitted),
        Err(refused) => {
            let name = &shared.names[listener];
            tracing::debug!(%peer, listener = %name, max, ?own, ?refused, "too many client connections; closing a new one");
            shared.pools.stats().listener_event(name, refused.event());
            None
        }
    }
}

/// Serves `connection` as a task of `connections`, counted until it ends:
/// its PROXY protocol header first when the listener requires one (from a
/// trusted peer only), then as its listener's protocol says.
fn spawn_connection(connections: &mut JoinSet<()>, connection: Counted, shared: &Shared) {
    let ((stream, peer, admitted, listener), load) = connection;
    let Some((running, settings)) = shared.settings(listener) else {
        return;
    };
    if running.protocol == Protocol::Http && !settings.proxy_protocol {
        // The common case, on its own: the task is the HTTP connection's
        // future holding its count, nothing more (most idle connections).
        let Some(proxy) = shared.proxies.get(listener).cloned() else {
            return;
        };
        let tls = shared.tls.get(listener).cloned().flatten();
        let counted = (admitted, load);
        connections.spawn(serve_connection(
            stream,
            peer,
            proxy,
            tls,
            shared.http.clone(),
            counted,
        ));
        return;
    }
    let arrival = Arrival::new(settings, &shared.names[listener], peer, shared);
    if settings.proxy_protocol && !arrival.trusted(settings) {
        tracing::debug!(%peer, listener = %running.name, "a PROXY header from an untrusted peer; closing");
        arrival.counted("proxy_untrusted");
        return;
    }
    let shared = shared.clone();
    connections.spawn(async move {
        let _counted = (admitted, load);
        let mut stream = stream;
        let Some(client) = arrival.client(&mut stream).await else {
            return;
        };
        let Some(running) = shared.pools.running().get(listener) else {
            return;
        };
        // Either boxed: the task holds no room for one while it reads the
        // header, nor for a relay while it serves HTTP.
        if running.protocol == Protocol::Tcp {
            Box::pin(serve_tcp(stream, client, running, &shared, listener)).await;
            return;
        }
        let Some(proxy) = shared.proxies.get(listener).cloned() else {
            return;
        };
        let tls = shared.tls.get(listener).cloned().flatten();
        Box::pin(serve_connection(
            stream,
            client.source,
            proxy,
            tls,
            shared.http.clone(),
            (),
        ))
        .await;
    });
}

/// Where a client connection comes from, as the listener learns it: the
/// peer, or the client a PROXY protocol header names.
struct Arrival {
    peer: SocketAddr,
    /// `Some`: a header is required within this long.
    header_within: Option<Duration>,
    /// The listener's name.
    listener: Arc<str>,
    pools: Arc<Pools>,
}

/// A connection's two ends: the client and the address it connected to.
#[derive(Clone, Copy)]
struct Ends {
    source: SocketAddr,
    /// `None`: the socket's own address (looked up when needed).
    destination: Option<SocketAddr>,
}

impl Arrival {
    fn new(
        settings: &ListenerConfig,
        listener: &Arc<str>,
        peer: SocketAddr,
        shared: &Shared,
    ) -> Arrival {
        Arrival {
            peer,
            header_within: settings
                .proxy_protocol
                .then_some(shared.config.limits.header_timeout),
            listener: listener.clone(),
            pools: shared.pools.clone(),
        }
    }

    /// Whether the peer may send a PROXY header.
    fn trusted(&self, settings: &ListenerConfig) -> bool {
        let ip = self.peer.ip().to_canonical();
        settings.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Counts `event` for the listener.
    fn counted(&self, event: &'static str) {
        self.pools.stats().listener_event(&self.listener, event);
    }

    /// The connection's ends: the peer's, or those its PROXY header names;
    /// `None` (counted, logged) when a required header is not there.
    async fn client(&self, stream: &mut TcpStream) -> Option<Ends> {
        let peer = Ends {
            source: self.peer,
            destination: None,
        };
        let Some(within) = self.header_within else {
            return Some(peer);
        };
        match proxy_protocol::take_header(stream, within).await {
            Ok(Header::Proxy {
                source,
                destination,
            }) => {
                self.counted("proxy_header");
                Some(Ends {
                    source,
                    destination: Some(destination),
                })
            }
            Ok(Header::Local) => {
                self.counted("proxy_local");
                Some(peer)
            }
            Ok(Header::Unknown) => {
                self.counted("proxy_unknown");
                Some(peer)
            }
            Err(error) => {
                let event = match &error {
                    ReadError::Timeout => "proxy_timeout",
                    ReadError::Closed => "proxy_closed",
                    ReadError::Invalid(_) | ReadError::Io(_) => "proxy_invalid",
                };
                tracing::debug!(peer = %self.peer, listener = %self.listener, %error, "no valid PROXY header; closing");
                self.counted(event);
                None
            }
        }
    }
}

/// Serves a connection of tcp listener `running` (its place `listener`):
/// over TLS when the listener terminates it, then relayed to its pool.
async fn serve_tcp(
    stream: TcpStream,
    client: Ends,
    running: &ListenerConfig,
    shared: &Shared,
    listener: usize,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(peer = %client.source, %error, "cannot set TCP_NODELAY");
    }
    // The client's destination: the one its PROXY header named, else the
    // socket's own address (looked up only when a header is sent).
    let header = |version, local: Option<SocketAddr>| {
        let destination = client.destination.or(local).unwrap_or(running.address);
        proxy_protocol::encode(version, client.source, destination)
    };
    let cut_off = shared.http.tunnels.on_cut_off();
    let pools = &shared.pools;
    match shared.tls.get(listener).cloned().flatten() {
        None => tcp::serve(stream, client.source, running, pools, header, cut_off).await,
        Some(tls) => {
            let handshake = Box::pin(tls.handshake(stream, pools.stats()));
            if let Some(stream) = handshake.await {
                tcp::serve(stream, client.source, running, pools, header, cut_off).await;
            }
        }
    }
}

/// Serves one client connection to its end: HTTP/1.1, or HTTP/2 (with
/// prior knowledge, seen in its first bytes; over TLS, as ALPN agreed).
/// `keep` (the connection's place in the counts) is held to the end: the
/// future can be spawned as it is, so that the task holds it once (an
/// `async` block around it would hold it twice: as captured, and as
/// awaited).
///
/// A plain HTTP/1 connection (most of the idle ones) is served in this
/// task's own future, every other kind boxed: the task holds room for
/// hyper's HTTP/1 connection and nothing bigger.
fn serve_connection<K: Send + 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    tls: Option<Arc<TlsListener>>,
    http: Arc<Http>,
    keep: K,
) -> impl Future<Output = ()> + Send + 'static {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    async move {
        // Held (by reference: the task holds it once) until the end.
        let _keep = &keep;
        let Some(tls) = tls else {
            // Until the first request, the connection is on `header_timeout`
            // as a whole (hyper times the HTTP/1 head, but not the wait for
            // a first byte, the HTTP/2 preface nor its handshake).
            let deadline = Instant::now() + http.header_timeout;
            let Some(maybe_h2) = first_bytes(&stream, peer, deadline).await else {
                return;
            };
            if maybe_h2 {
                return Box::pin(serve_http2(stream, peer, deadline, proxy, &http)).await;
            }
            return ended(peer, serve_http1(stream, peer, proxy, &http).await);
        };
        Box::pin(serve_tls(stream, peer, tls, proxy, &http)).await;
    }
}

/// Serves a connection of a TLS listener: the handshake, then HTTP as ALPN
/// agreed.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<TlsListener>,
    proxy: Arc<Proxy>,
    http: &Http,
) {
    let Some(stream) = tls.handshake(stream, http.pools.stats()).await else {
        return;
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let stream = Box::new(stream);
    if h2 {
        let deadline = Instant::now() + http.header_timeout;
        serve_http2(stream, peer, deadline, proxy, http).await;
    } else {
        ended(peer, serve_http1(stream, peer, proxy, http).await);
    }
}

/// Logs how the client connection from `peer` ended, if with an error.
fn ended<E: std::fmt::Display>(peer: SocketAddr, served: Result<(), E>) {
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

/// Looks at a plain connection's first bytes without consuming them:
/// whether they could be the HTTP/2 preface; `None` when the client closed
/// or sent nothing by `deadline`.
///
/// HTTP/1 goes straight to hyper's HTTP/1 server, so hyper's first read gets
/// the whole head (hyper-util's auto builder reads 24 bytes to sniff the
/// version and hands them back first, which makes hyper grow its 8 KiB read
/// buffer to 16 KiB on every connection), and the task holds only HTTP/1
/// state. What could be the HTTP/2 preface goes to the auto builder, boxed.
async fn first_bytes(stream: &TcpStream, peer: SocketAddr, deadline: Instant) -> Option<bool> {
    let mut head = [0u8; H2_PREFACE.len()];
    tokio::select! {
        peeked = stream.peek(&mut head) => match peeked {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(head[..n] == H2_PREFACE[..n]),
        },
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!(%peer, "no request within the header timeout; closing");
            None
        }
        // Not cut short by the drain: a client that connected before it
        // has its first request served (and the connection closed after
        // it), as it would with the listener still open.
    }
}

/// The bytes of `io` as hyper reads them (watched for what hyper hides: a
/// request with both Content-Length and Transfer-Encoding), the service
/// that hands each request to `proxy`, and the count of requests it has
/// been given.
#[allow(clippy::type_complexity)]
fn service<I>(
    io: I,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    http: &Http,
) -> (
    TokioIo<Watched<I>>,
    impl Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
    > + Send
    + 'static,
    Arc<AtomicU64>,
)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The requests served so far: each one's index on the connection.
    let requests = Arc::new(AtomicU64::new(0));
    let served = requests.clone();
    let (stream, ambiguity) = Watched::new(io, http.max_header_bytes);
    let tunnels = http.tunnels.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let index = requests.fetch_add(1, Ordering::Relaxed);
        if ambiguity.is(index) {
            request.extensions_mut().insert(AmbiguousRequest);
        }
        // Boxed: hyper keeps room for one request's future in every
        // connection, idle or not; a box keeps that to a pointer, and the
        // few kilobytes of state live only while a request does.
        Box::pin(proxy.clone().handle(request, peer, tunnels.clone()))
    });
    (TokioIo::new(stream), service, served)
}

/// Serves HTTP/1.1 on `io` to its end (hyper times each request head,
/// the first one included, with `header_timeout`).
///
/// Not an `async fn`: the future is hyper's connection itself, watched for
/// the drain, held once; for a plain connection that is most of the task of
/// an idle connection.
fn serve_http1<'a, I>(
    io: I,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    http: &'a Http,
) -> impl Future<Output = Result<(), hyper::Error>> + Send + 'a
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, service, served) = service(io, peer, proxy, http);
    // With upgrades: after a `101`, hyper hands the client's connection
    // over to the tunnel and this future ends.
    let connection = http.http1.serve_connection(io, service).with_upgrades();
    let started = move || served.load(Ordering::Relaxed) > 0;
    drained(connection, &http.draining, started, |c| {
        c.graceful_shutdown()
    })
}

/// Serves HTTP/2 on `io` (its first bytes could be the preface, or ALPN
/// chose it) to its end; no first request by `deadline` closes it.
async fn serve_http2<I>(io: I, peer: SocketAddr, deadline: Instant, proxy: Arc<Proxy>, http: &Http)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, service, served) = service(io, peer, proxy, http);
    let draining = &http.draining;
    let connection = http.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let first = tokio::time::sleep_until(deadline);
    tokio::pin!(first);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = &mut first, if served.load(Ordering::Relaxed) == 0 => {
            if served.load(Ordering::Relaxed) == 0 {
                tracing::debug!(%peer, "no request within the header timeout; closing");
                return;
            }
            drained(connection.as_mut(), draining, || true, |c| {
                c.get_mut().as_mut().graceful_shutdown()
            })
            .await
        }
        () = draining.started() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    ended(peer, outcome);
}

/// The next connection any of `listeners` accepts, with the listener's
/// place.
fn accept_any(
    listeners: &[TcpListener],
) -> impl Future<Output = (usize, std::io::Result<(TcpStream, SocketAddr)>)> + '_ {
    std::future::poll_fn(move |cx| {
        for (i, listener) in listeners.iter().enumerate() {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready((i, accepted));
            }
        }
        Poll::Pending
    })
}

/// The drain, once the worker stopped accepting: every connection finishes
/// its current request and closes, and the tunnels close, within the running
/// config's drain timeout; what is left then is cut off.
async fn drain(mut connections: JoinSet<()>, shared: &Shared) -> Drain {
    let tunnels = &shared.http.tunnels;
    // The drain timeout of the running config (a reload may have changed it).
    let drain_timeout = shared.pools.routing().config().drain_timeout;
    tracing::info!(
        connections = connections.len(),
        tunnels = tunnels.open(),
        drain_timeout = %humantime::format_duration(drain_timeout),
        "stopped accepting; draining"
    );
    // Connections first: a request still in flight may yet open a tunnel.
    shared.http.draining.raise();
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
            // Each tunnel (and tcp relay) drops its connections as soon as
            // it sees the cut, and a relay writes its access-log line.
            tunnels.cut_off();
            let ended = async { while connections.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(CUT_OFF_GRACE, ended).await;
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            tunnels.closed().await;
            Drain::TimedOut
        }
    }
}
