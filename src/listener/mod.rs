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
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`start`], [`start_workers`] and the [`ProxyHandle`] they return: reload (from a config or its file, recorded for the admin endpoint), shutdown |
//! | `socket.rs` | binding the listening sockets |
//! | `workers.rs` | the connection count and the handoff between workers |
//! | `serve.rs` | a worker's accept loop and each client connection it serves |
//! | `http.rs` | hyper's connection settings from `[limits]` |
//! | `drain.rs` | how a worker stops: the drain signal and its outcome |
//! | `tls.rs` | TLS termination: certificates by SNI, ALPN, handshakes |
//! | `proxy_protocol.rs` | the PROXY protocol v1/v2: parsing, writing, taking a header off a connection |
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

mod drain;
mod http;
pub mod proxy_protocol;
mod serve;
mod socket;
pub mod tls;
mod workers;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminServer};
use crate::config::{Config, ConfigErrors, ConfigWarning};
use crate::pool::checks::ReloadError;
use crate::pool::routing::Pools;
use crate::pool::{Pool, PoolError};
use crate::proxy::Proxy;
pub use drain::Drain;
use serve::{Worker, serve};
pub use socket::{Addresses, migrates_queued_connections};
use socket::{LISTEN_BACKLOG, bind};
use tls::{Certificates, TlsError, TlsListener};
use workers::Workers;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something already listens on the listener (or admin endpoint)
    /// address.
    #[error(
        "cannot listen on {address}: another process listens there already \
         (for a binary upgrade beside a running affinity, start the new one with --upgrade)"
    )]
    InUse {
        /// The configured address.
        address: SocketAddr,
    },
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
    /// A TLS listener's certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a worker: {0}")]
    Runtime(String),
    /// The admin write API's token file cannot be used.
    #[error("{0}")]
    AdminToken(String),
}

impl StartError {
    /// The error of binding `address`: [`StartError::InUse`] when something
    /// listens there.
    fn bind(address: SocketAddr, source: io::Error) -> StartError {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::InUse { address }
        } else {
            StartError::Bind { address, source }
        }
    }
}

/// Why a reload left the running config as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadFailed {
    /// The file could not be read or is not a valid config.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The config is valid but could not be applied.
    #[error(transparent)]
    Apply(#[from] ReloadError),
    /// A TLS listener's new certificates cannot be used (the old ones stay).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed settings that take effect only on restart (kept as they
    /// were): `listener.address`, `admin`.
    pub needs_restart: Vec<&'static str>,
    /// What looked wrong in the new config without being an error.
    pub warnings: Vec<ConfigWarning>,
}

/// A running proxy. Dropping it stops the proxy as [`shutdown`](Self::shutdown)
/// does, without waiting for the drain.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Each running listener's name and bound address, in config order.
    local_addrs: Vec<(String, SocketAddr)>,
    pools: Arc<Pools>,
    /// Each listener's TLS, in config order; `None`: plain.
    tls: Arc<[Option<Arc<TlsListener>>]>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Drain>,
    /// The other workers, each on its own thread and runtime: how to stop
    /// it, and how its drain ended.
    workers: Vec<(oneshot::Sender<()>, oneshot::Receiver<Drain>)>,
    /// The admin endpoint, when configured; dropping it stops it.
    admin: Option<AdminServer>,
    /// Set when a shutdown begins: the admin `/healthz` then answers `503`.
    draining: Arc<AtomicBool>,
}

impl ProxyHandle {
    /// The address the first listener is bound to (the actual port when the
    /// config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0].1
    }

    /// Every listener's name and bound address, in config order.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.local_addrs
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.local_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, address)| address)
    }

    /// The address the admin endpoint is bound to, when `[admin]` is
    /// configured (the actual port when the config said 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Every pool and the routing over them.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// The first pool of the running config (the only one of a single-pool
    /// config); publish a new snapshot to change it.
    pub fn pool(&self) -> Arc<Pool> {
        self.pools.routing().pools()[0].pool.clone()
    }

    /// The pool called `name` in the running config.
    pub fn pool_named(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.routing().pool(name).map(|p| p.pool.clone())
    }

    /// Replaces the running config with `config` (a SIGHUP reload): pools,
    /// routes, selectors, keys, health and upstream settings and limits take
    /// effect for requests that start afterwards, with no connection
    /// dropped; an unchanged pool is kept as it is, backends keep their
    /// health by name, and a new one starts healthy (see
    /// [`Pools::reload`](crate::pool::routing::Pools::reload)). The listeners and the admin address cannot
    /// change while running: a change is reported as needing a restart, and
    /// everything else is applied. On error the running config stays.
    ///
    /// The outcome is recorded in the pool's stats (the
    /// `affinity_config_reload*` metrics and `/status`'s `last_reload`).
    pub async fn reload(&self, config: Config) -> Result<Reloaded, ReloadFailed> {
        let outcome = self.apply(config).await;
        match &outcome {
            Ok(_) => self.pools.stats().reload_succeeded(),
            Err(error) => self.pools.stats().reload_failed(error.to_string()),
        }
        outcome
    }

    /// Loads the config file at `path` and replaces the running config with
    /// it as [`reload`](Self::reload) does (what SIGHUP does). A file that
    /// cannot be read or is invalid is a failed reload too, recorded with
    /// its error's text, and the running config stays.
    pub async fn reload_file(&self, path: &Path) -> Result<Reloaded, ReloadFailed> {
        match Config::load(path) {
            Ok(config) => {
                let warnings = config.warnings().to_vec();
                let reloaded = self.reload(config).await?;
                Ok(Reloaded {
                    warnings,
                    ..reloaded
                })
            }
            Err(error) => {
                self.pools.stats().reload_failed(error.to_string());
                Err(error.into())
            }
        }
    }

    /// Applies `config`, without recording the outcome.
    async fn apply(&self, config: Config) -> Result<Reloaded, ReloadFailed> {
        let current = self.pools.routing().config().clone();
        let mut needs_restart = Vec::new();
        let running = self.pools.running();
        let same_names = running.len() == config.listeners.len()
            && running
                .iter()
                .zip(&config.listeners)
                .all(|(a, b)| a.name == b.name && a.protocol == b.protocol);
        if !same_names {
            needs_restart.push("listeners");
        }
        let moved = running.iter().any(|r| {
            config
                .listener(&r.name)
                .is_some_and(|l| l.address != r.address)
        });
        if moved {
            needs_restart.push("listener.address");
        }
        if config.admin != current.admin {
            needs_restart.push("admin");
        }
        // Every new certificate read before anything changes: one that
        // cannot be used fails the whole reload.
        let certificates = self.reload_certificates(&config)?;
        let mut config = config;
        config.admin = current.admin.clone();
        for field in &needs_restart {
            tracing::warn!(field, "{field} changed: it takes effect on restart");
        }
        self.pools.reload(Arc::new(config.clone())).await?;
        for (listener, certificates) in certificates {
            let Some(settings) = config
                .listener(listener.name())
                .and_then(|l| l.tls.as_ref())
            else {
                continue;
            };
            let records = certificates.records(listener.name());
            listener.reload(settings, certificates)?;
            self.pools
                .stats()
                .set_certificates(listener.name(), records);
        }
        Ok(Reloaded {
            needs_restart,
            warnings: Vec::new(),
        })
    }

    /// The certificates of each running TLS listener that `config` still
    /// has with TLS, all read; the first that cannot be used is the error.
    fn reload_certificates(
        &self,
        config: &Config,
    ) -> Result<Vec<(Arc<TlsListener>, Certificates)>, TlsError> {
        let mut loaded = Vec::new();
        for listener in self.tls.iter().flatten() {
            let Some(settings) = config
                .listener(listener.name())
                .and_then(|l| l.tls.as_ref())
            else {
                continue;
            };
            let certificates = Certificates::load(settings).inspect_err(|error| {
                tracing::error!(listener = %listener.name(), %error, "cannot use the new certificates; keeping the old ones");
            })?;
            for warning in certificates.warnings(SystemTime::now()) {
                tracing::warn!(listener = %listener.name(), "{warning}");
            }
            loaded.push((listener.clone(), certificates));
        }
        Ok(loaded)
    }

    /// Stops accepting, lets requests in flight finish within the drain
    /// timeout, and returns how that went (on every worker).
    pub async fn shutdown(mut self) -> Drain {
        // Before anything stops, so that a load balancer in front sees the
        // draining at once and the admin endpoint reports it to the end.
        self.draining.store(true, Ordering::Relaxed);
        self.pools.stop();
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
    start_with(config, workers, Addresses::Exclusive).await
}

/// [`start_workers`], taking the listening addresses as `addresses` says:
/// [`Addresses::Shared`] listens beside a running instance (a binary
/// upgrade).
pub async fn start_with(
    config: Config,
    workers: usize,
    addresses: Addresses,
) -> Result<ProxyHandle, StartError> {
    let workers = workers.max(1);
    let config = Arc::new(config);
    // Every listener bound before anything runs, so that a bind error is
    // reported first; each worker but this one listens on sockets of its own
    // (SO_REUSEPORT), made listeners on its thread's runtime.
    let mut listeners = Vec::with_capacity(config.listeners.len());
    let mut local_addrs = Vec::with_capacity(config.listeners.len());
    let mut sockets: Vec<Vec<tokio::net::TcpSocket>> = (1..workers).map(|_| Vec::new()).collect();
    for listener_config in &config.listeners {
        let address = listener_config.address;
        let bind_error = |source| StartError::bind(address, source);
        let listener = bind(address, addresses)
            .and_then(|socket| socket.listen(LISTEN_BACKLOG))
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        for worker_sockets in &mut sockets {
            worker_sockets.push(bind(local_addr, Addresses::Shared).map_err(bind_error)?);
        }
        listeners.push(listener);
        local_addrs.push((listener_config.name.clone(), local_addr));
    }
    let tls = start_tls(&config)?;
    check_admin_token(&config).map_err(StartError::AdminToken)?;
    let pools = Arc::new(Pools::start(config.clone())?);
    for listener in tls.iter().flatten() {
        let records = listener.certificates().records(listener.name());
        pools.stats().set_certificates(listener.name(), records);
    }
    let draining = Arc::new(AtomicBool::new(false));
    let admin = match &config.admin {
        Some(settings) => {
            let address = settings.address;
            let listener = bind(address, addresses)
                .and_then(|socket| socket.listen(LISTEN_BACKLOG))
                .map_err(|source| StartError::bind(address, source))?;
            let server = admin::start(listener, pools.clone(), draining.clone())
                .map_err(|source| StartError::bind(address, source))?;
            Some(server)
        }
        None => None,
    };
    if addresses == Addresses::Shared && migrates_queued_connections() == Some(false) {
        tracing::warn!(
            "net.ipv4.tcp_migrate_req is 0: connections the old instance has queued but not \
             accepted when it stops are reset; set it to 1 for an upgrade that loses none"
        );
    }
    // Client connections open over every worker, for `limits.max_connections`
    // and the admin endpoint.
    let open = pools.stats().client_connections().clone();
    let proxies: Arc<[Arc<Proxy>]> = (0..config.listeners.len())
        .map(|listener| Arc::new(Proxy::new(pools.clone(), listener, tls[listener].is_some())))
        .collect();
    let (spread, mut handed) = Workers::new(workers);
    let mut handed_to_others = handed.split_off(1).into_iter();
    let mut others = Vec::with_capacity(sockets.len());
    for (n, worker_sockets) in sockets.into_iter().enumerate() {
        let Some(handed) = handed_to_others.next() else {
            break;
        };
        let worker = Worker {
            proxies: proxies.clone(),
            pools: pools.clone(),
            tls: tls.clone(),
            open: open.clone(),
            workers: spread.clone(),
            me: n + 1,
            handed,
        };
        others.push(spawn_worker(n + 1, worker_sockets, worker)?);
    }
    for (name, address) in &local_addrs {
        tracing::info!(listener = %name, address = %address, workers, "listening on {address}");
    }

    let (stop, stopped) = oneshot::channel();
    let handed = handed
        .pop()
        .ok_or_else(|| StartError::Runtime("no worker".into()))?;
    let worker = Worker {
        proxies,
        pools: pools.clone(),
        tls: tls.clone(),
        open,
        workers: spread,
        me: 0,
        handed,
    };
    let task = tokio::spawn(serve(listeners, worker, stopped));
    Ok(ProxyHandle {
        local_addrs,
        pools,
        tls,
        stop: Some(stop),
        task,
        workers: others,
        admin,
        draining,
    })
}

/// What `affinity --check` checks beyond the file: every TLS listener's
/// certificates (read, key matching, not expired), the admin token file,
/// and every pool as the
/// proxy would build it (its hash table, its backends' TLS settings: a
/// `ca_file` or client certificate that cannot be read). The certificates
/// read, by listener name, or what is wrong.
pub fn check(config: &Config) -> Result<Vec<(String, Certificates)>, String> {
    let mut certificates = Vec::new();
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            let loaded = Certificates::load(tls).map_err(|e| e.to_string())?;
            certificates.push((listener.name.clone(), loaded));
        }
    }
    check_admin_token(config)?;
    Pools::unchecked(Arc::new(config.clone())).map_err(|e| e.to_string())?;
    Ok(certificates)
}

/// Whether the admin write API's token file, when one is configured, can
/// be read and holds a token.
fn check_admin_token(config: &Config) -> Result<(), String> {
    match config.admin.as_ref().and_then(|a| a.token_file.as_deref()) {
        Some(path) => admin::write::check_token_file(path),
        None => Ok(()),
    }
}

/// The TLS of each listener of `config` (in its order), its certificates
/// read.
fn start_tls(config: &Config) -> Result<Arc<[Option<Arc<TlsListener>>]>, StartError> {
    let mut tls = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        tls.push(match &listener.tls {
            None => None,
            Some(settings) => {
                let certificates = Certificates::load(settings)?;
                for warning in certificates.warnings(SystemTime::now()) {
                    tracing::warn!(listener = %listener.name, "{warning}");
                }
                Some(Arc::new(TlsListener::new(
                    &listener.name,
                    settings,
                    certificates,
                )?))
            }
        });
    }
    Ok(tls.into())
}

/// Starts worker `n` on a thread of its own with a single-threaded runtime,
/// listening on `sockets`; how to stop it, and how its drain ended.
#[allow(clippy::type_complexity)]
fn spawn_worker(
    n: usize,
    sockets: Vec<tokio::net::TcpSocket>,
    worker: Worker,
) -> Result<(oneshot::Sender<()>, oneshot::Receiver<Drain>), StartError> {
    let (stop, stopped) = oneshot::channel();
    let (drained, drain) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    std::thread::Builder::new()
        .name(format!("affinity-worker-{n}"))
        .spawn(move || {
            runtime.block_on(async move {
                let listening: io::Result<Vec<_>> = sockets
                    .into_iter()
                    .map(|socket| socket.listen(LISTEN_BACKLOG))
                    .collect();
                let outcome = match listening {
                    Ok(listeners) => serve(listeners, worker, stopped).await,
                    Err(error) => {
                        tracing::error!(%error, "worker cannot listen");
                        Drain::Complete
                    }
                };
                let _ = drained.send(outcome);
            });
        })
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    Ok((stop, drain))
}
