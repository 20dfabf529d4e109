//! Configuration: the TOML file an operator writes, checked once, and the
//! typed [`Config`] the rest of the proxy reads.
//!
//! Config flows in one direction:
//!
//! 1. **File structs** (private, named `File*`) mirror the TOML layout and
//!    are filled by serde. Every table denies unknown keys, so a typo is an
//!    error instead of a silently ignored setting. Values that need checking
//!    are kept as [`toml::Spanned`] so an error can point at their line.
//! 2. **One validation pass** ([`Config::from_toml`]) fills absent keys from
//!    the `DEFAULT_*` constants, parses durations, addresses, URLs and CIDRs,
//!    and checks every rule. Each problem becomes a [`ConfigError`] that
//!    names the file, the line and column, the field path (such as
//!    `backends[1].weight`) and what is wrong; every rule is checked, so
//!    one run reports every broken one ([`ConfigErrors`], in file order).
//!    A rule that weighs one value against another runs only when both are
//!    valid, so no mistake is reported twice. What is valid but likely a
//!    mistake becomes a [`ConfigWarning`].
//! 3. **Runtime structs** ([`Config`] and its parts) hold only checked, typed
//!    values: no string left to parse and no `Option` where a default exists.
//!
//! Everything here is pure except [`Config::load`], which reads the file.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the runtime structs and their `DEFAULT_*` constants |
//! | `file.rs` | the file structs, as serde reads them |
//! | `validate.rs` | the validation pass: file structs → runtime structs |
//! | `error.rs` | [`ConfigError`], [`ConfigErrors`], [`ConfigWarning`], and turning byte spans into lines, columns and field paths |
//! | `url.rs` | backend URLs: parsing, display, the address to connect to |
//! | `summary.rs` | the summary `affinity --check` prints |
//!
//! ```
//! use affinity::config::{Algorithm, Config};
//! use std::path::Path;
//!
//! let text = r#"
//! [[backends]]
//! name = "server-1"
//! url = "http://127.0.0.1:9001"
//! "#;
//! let config = Config::from_toml(text, Path::new("example.toml")).unwrap();
//! let pool = &config.pools[0];
//! assert_eq!(pool.name, "default");
//! assert_eq!(pool.balancer.algorithm, Algorithm::Maglev);
//! assert_eq!(pool.members()[0].name, "server-1");
//! ```

mod discover;
mod error;
mod file;
mod summary;
mod url;
mod validate;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

pub use crate::balance::algorithm::Algorithm;
pub use crate::balance::key::KeySource;
use crate::balance::member::Member;
pub use crate::balance::route::HostPattern;
use crate::balance::route::RouteSpec;
use crate::balance::selector::HashAlgorithm;
use error::Source;
pub use error::{
    ConfigError, ConfigErrorKind, ConfigErrors, ConfigErrorsIter, ConfigWarning, Location,
};
use file::FileConfig;
pub use url::connect_address;

// ---------------------------------------------------------------------------
// Runtime configuration
// ---------------------------------------------------------------------------

/// A checked configuration: every value parsed, every default filled in.
///
/// The file comes in two forms. The single-pool form of the first version
/// (`[listener]`, `[balancer]`, `[health_check]`, `[upstream]`,
/// `[[backends]]`) stays valid and means one listener named `default`, one
/// pool named `default` and one route that sends everything there. The full
/// form has `[[listeners]]`, `[[pools]]` and `[[routes]]` (DESIGN.md, "Wave
/// 2"). Both become this one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the proxy accepts client connections; never empty, names unique.
    pub listeners: Vec<ListenerConfig>,
    /// On SIGTERM, how long in-flight requests may take to finish
    /// (`listener.drain_timeout`, for every listener).
    pub drain_timeout: Duration,
    /// The admin endpoint (`/status`, `/metrics`, `/healthz`); `None` turns it off.
    pub admin: Option<AdminConfig>,
    /// What one client, connection or backend may cost the proxy.
    pub limits: LimitsConfig,
    /// The pools, in config order; never empty, names unique.
    pub pools: Vec<Arc<PoolConfig>>,
    /// The routes, in config order; each names a pool of `pools` (and a
    /// listener of `listeners`, when it names one).
    pub routes: Vec<RouteConfig>,
    /// What validation found likely but not certainly wrong.
    warnings: Vec<ConfigWarning>,
}

/// The name of the listener, the pool and the route of the single-pool form.
pub const DEFAULT_NAME: &str = "default";
/// Default `listener.address`.
pub const DEFAULT_LISTEN_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default `listener.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge), routed by `[[routes]]`.
    Http,
    /// Raw TCP to one pool, keyed by client address.
    Tcp,
}

impl Protocol {
    /// The name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One `[[listeners]]` entry (or the `[listener]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name, for routes, logs and metrics.
    pub name: String,
    /// Address to accept client connections on; port 0 picks a free port.
    pub address: SocketAddr,
    /// What the listener speaks.
    pub protocol: Protocol,
    /// Where a request that matches no route goes; `None`: it gets `404`.
    /// For a `tcp` listener, the pool of every connection.
    pub pool: Option<String>,
    /// TLS termination; `None`: plain TCP.
    pub tls: Option<TlsConfig>,
    /// A `tcp` listener's connections close after this long with no byte
    /// either way.
    pub idle_timeout: Duration,
    /// `true`: every connection must start with a PROXY protocol v1 or v2
    /// header (before TLS), sent by a peer in `trusted`; its source address
    /// is the client's (for keys, `X-Forwarded-For`, logs).
    pub proxy_protocol: bool,
    /// The peers allowed to send a PROXY header; with `proxy_protocol`,
    /// never empty, and a connection from any other peer is closed.
    pub trusted: Vec<IpNet>,
    /// The most connections this listener serves at once (beside
    /// `limits.max_connections` over all listeners); `None`: no limit of
    /// its own.
    pub max_connections: Option<u32>,
}

/// Default `listeners[].idle_timeout` (tcp listeners).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: DEFAULT_NAME.to_owned(),
            address: DEFAULT_LISTEN_ADDRESS,
            protocol: Protocol::Http,
            pool: None,
            tls: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            proxy_protocol: false,
            trusted: Vec::new(),
            max_connections: None,
        }
    }
}

/// Default `tls.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's `tls` table: TLS 1.2 and 1.3 termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificates, in config order: picked by the client's SNI
    /// (exact name, then `*.suffix` wildcard), the first when none matches.
    pub certificates: Vec<CertificateFiles>,
    /// The protocols offered by ALPN, in order of preference; never empty
    /// on an http listener, always empty on a tcp one (raw bytes follow the
    /// handshake).
    pub alpn: Vec<Alpn>,
    /// A client that has not finished its handshake by then is cut off.
    pub handshake_timeout: Duration,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The chain, leaf first (paths relative to the config file's folder
    /// are resolved against it).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where it is in the file (`listeners[0].tls.certificates[1]`), for
    /// errors found when the files are read.
    pub field: String,
}

/// A protocol offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`: HTTP/2 over TLS.
    H2,
    /// `http/1.1`.
    Http11,
}

impl Alpn {
    /// Its ALPN identifier, as the file names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

/// One `[[routes]]` entry: which requests go to which pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The listener it applies to; `None`: every http listener.
    pub listener: Option<String>,
    /// The hosts it is for; `None`: any host.
    pub host: Option<HostPattern>,
    /// The path prefix, matched on a segment boundary; `/` for every path.
    pub path_prefix: String,
    /// Whether the prefix is removed from the path before the request goes
    /// to the backend (`/api/x` becomes `/x`, `/api` becomes `/`).
    pub strip_prefix: bool,
    /// The pool its requests go to.
    pub pool: String,
}

impl RouteConfig {
    /// What it matches, as logs and `--check` name it:
    /// `shop.example.com/api`, or `*/api` for any host.
    pub fn pattern(&self) -> String {
        let host = self
            .host
            .as_ref()
            .map_or_else(|| "*".to_owned(), ToString::to_string);
        format!("{host}{}", self.path_prefix)
    }
}

/// One pool: its backends and how requests are spread over them, checked
/// and probed. In the single-pool form, the `[balancer]`, `[health_check]`,
/// `[upstream]` tables and `[[backends]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique name; with the backend's name, a backend's identity.
    pub name: String,
    /// How requests are mapped to backends.
    pub balancer: BalancerConfig,
    /// Active health probes.
    pub health_check: HealthCheckConfig,
    /// Connections to backends.
    pub upstream: UpstreamConfig,
    /// Most requests in flight to one backend (0: no limit), from
    /// `limits.max_in_flight_per_backend`.
    pub max_in_flight_per_backend: u32,
    /// The backends written in the file, in config order; never empty
    /// unless the pool discovers its backends.
    pub backends: Vec<BackendConfig>,
    /// Where the pool discovers more backends (DNS).
    pub discover: Vec<DiscoverConfig>,
}

/// Default `discover[].min_interval`.
pub const DEFAULT_DISCOVER_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default `discover[].max_interval`.
pub const DEFAULT_DISCOVER_MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Default `discover[].empty_grace`.
pub const DEFAULT_EMPTY_GRACE: Duration = Duration::from_secs(30);

/// One `discover` entry: backends from DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// What is looked up.
    pub target: DiscoverTarget,
    /// The shortest time between two lookups (the answer's TTL is raised
    /// to it); also the first wait after a failure.
    pub min_interval: Duration,
    /// The longest time between two lookups (the TTL is lowered to it).
    pub max_interval: Duration,
    /// Nameservers to ask; empty: those of `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// How long an empty answer must persist before the pool applies it.
    pub empty_grace: Duration,
    /// A new backend waits for `health_check.healthy_threshold` successful
    /// probes before it takes traffic (else it starts healthy).
    pub probe_first: bool,
    /// `https` makes discovered backends `https://` ones.
    pub https: bool,
    /// The weight of each address of an A/AAAA answer (SRV answers carry
    /// their own).
    pub weight: u32,
}

/// What a `discover` entry looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverTarget {
    /// SRV records of this name (`_http._tcp.api.internal`): one backend
    /// per record, named `target:port`.
    Srv(String),
    /// A and AAAA records of `host`: one backend per address, named
    /// `address:port`.
    Host {
        /// The name looked up.
        host: String,
        /// The port of every address.
        port: u16,
    },
}

impl std::fmt::Display for DiscoverTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverTarget::Srv(name) => write!(f, "SRV {name}"),
            DiscoverTarget::Host { host, port } => write!(f, "A/AAAA {host}:{port}"),
        }
    }
}

impl PoolConfig {
    /// The backends as the hashing core sees them: name and weight, in config order.
    pub fn members(&self) -> Vec<Member> {
        self.backends
            .iter()
            .map(|b| Member::new(b.name.clone(), b.weight))
            .collect()
    }
}

/// Default `admin.address`, used when `[admin]` is present without one.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9900);

/// The optional `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint.
    pub address: SocketAddr,
    /// The file holding the bearer token of the write API (`POST
    /// /pools/P/backends/B/drain` and the like); `None` turns the write API
    /// off. Read when a write arrives, so a new token takes effect at once.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: DEFAULT_ADMIN_ADDRESS,
            token_file: None,
        }
    }
}

/// Default `balancer.algorithm`.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::Maglev;
/// Default `balancer.key`.
pub const DEFAULT_KEY: KeySource = KeySource::ClientIp;
/// Default `balancer.table_size` (Maglev only).
pub const DEFAULT_TABLE_SIZE: usize = crate::balance::maglev::DEFAULT_TABLE_SIZE;
/// Default `balancer.bounded_load`: off.
pub const DEFAULT_BOUNDED_LOAD: f64 = 0.0;
/// Default `balancer.panic_threshold`: off.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.0;

/// The `[balancer]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// How a backend is chosen.
    pub algorithm: Algorithm,
    /// What is hashed (hash algorithms only; ignored by the others).
    pub key: KeySource,
    /// Maglev lookup table size; a prime at least the total weight.
    pub table_size: usize,
    /// Peers whose `X-Forwarded-For` is believed for `client_ip`.
    pub trusted_proxies: Vec<IpNet>,
    /// SipHash key for request keys; `None` uses the fixed public default.
    pub hash_key: Option<[u8; 16]>,
    /// Bounded-load factor c (> 1), or 0 for off (Mirrokni et al. 2018).
    pub bounded_load: f64,
    /// Panic mode, in percent (0 = off): while fewer than this share of
    /// the backends is healthy, route over every configured backend as if
    /// all were healthy (Envoy's healthy panic threshold).
    pub panic_threshold: f64,
    /// Issue a session cookie to clients that have none.
    pub sticky_cookie: Option<StickyCookieConfig>,
    /// How long a backend that joins or returns takes to take back its
    /// full share (zero: at once).
    pub slow_start: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            algorithm: DEFAULT_ALGORITHM,
            key: DEFAULT_KEY,
            table_size: DEFAULT_TABLE_SIZE,
            trusted_proxies: Vec::new(),
            hash_key: None,
            bounded_load: DEFAULT_BOUNDED_LOAD,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            sticky_cookie: None,
            slow_start: Duration::ZERO,
        }
    }
}

impl BalancerConfig {
    /// The hash algorithm this table asks for, with its parameters; `None`
    /// for the classic (non-hash) policies.
    pub fn hash_algorithm(&self) -> Option<HashAlgorithm> {
        HashAlgorithm::of(self.algorithm, self.table_size)
    }
}

/// Default `balancer.sticky_cookie.name`.
pub const DEFAULT_STICKY_COOKIE_NAME: &str = "affinity";
/// Default `balancer.sticky_cookie.max_age`.
pub const DEFAULT_STICKY_COOKIE_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The optional `[balancer.sticky_cookie]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookieConfig {
    /// Cookie name; a valid cookie token.
    pub name: String,
    /// `Max-Age` of the issued cookie; never zero.
    pub max_age: Duration,
    /// The cookie also carries an opaque pin of the backend that served it,
    /// which later requests go to while it is routable.
    pub pin: bool,
}

impl Default for StickyCookieConfig {
    fn default() -> Self {
        StickyCookieConfig {
            name: DEFAULT_STICKY_COOKIE_NAME.to_owned(),
            max_age: DEFAULT_STICKY_COOKIE_MAX_AGE,
            pin: false,
        }
    }
}

/// Default `health_check.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default `health_check.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default `health_check.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `health_check.healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default `health_check.unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// How backends are probed: `health_check.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeKind {
    /// `GET path`, a `2xx` or `3xx` is healthy.
    #[default]
    Http,
    /// A TCP connection that opens within the timeout is healthy.
    Tcp,
}

/// The `[health_check]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// How a backend is probed.
    pub kind: ProbeKind,
    /// Path probed with `GET`; starts with `/`.
    pub path: String,
    /// Time between probes of one backend; never zero.
    pub interval: Duration,
    /// How long a probe may take; never zero, always below `interval`.
    pub timeout: Duration,
    /// Consecutive successes that restore a backend; at least 1.
    pub healthy_threshold: u32,
    /// Consecutive failures that remove a backend; at least 1.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: ProbeKind::Http,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }
}

/// Default `upstream.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `upstream.request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `upstream.retries`.
pub const DEFAULT_RETRIES: u32 = 1;

/// The `[upstream]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// How long connecting to a backend may take; never zero.
    pub connect_timeout: Duration,
    /// How long a backend may take to answer; never zero.
    pub request_timeout: Duration,
    /// Further backends (along the key's fallback order) tried on connect failure.
    pub retries: u32,
    /// The CA certificates (PEM) `https://` backends are verified against;
    /// `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for `https://` backends that ask
    /// for one (mTLS); always with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
    /// What requests are sent to backends with.
    pub protocol: UpstreamProtocol,
    /// The PROXY protocol header written to a backend before the client's
    /// bytes (tcp listeners' pools only).
    pub send_proxy_protocol: SendProxyProtocol,
}

/// `upstream.send_proxy_protocol`: whether a tcp connection to a backend
/// starts with a PROXY protocol header naming the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxyProtocol {
    /// No header: the backend sees affinity's address.
    #[default]
    Off,
    /// Version 1, one line of text.
    V1,
    /// Version 2, binary.
    V2,
}

impl SendProxyProtocol {
    /// Its name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SendProxyProtocol::Off => "off",
            SendProxyProtocol::V1 => "v1",
            SendProxyProtocol::V2 => "v2",
        }
    }
}

/// `upstream.protocol`: how requests go to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a connection per request in flight, kept alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (`http://` backends),
    /// requests multiplexed over one connection per backend and worker.
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN (`https://` backends), multiplexed.
    H2,
}

impl UpstreamProtocol {
    /// Its name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }

    /// Whether requests go as HTTP/2.
    pub fn is_h2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            ca_file: None,
            client_cert: None,
            client_key: None,
            protocol: UpstreamProtocol::Http1,
            send_proxy_protocol: SendProxyProtocol::Off,
        }
    }
}

/// Default `limits.header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.max_header_bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// The smallest `limits.max_header_bytes`: hyper's smallest read buffer.
pub const MIN_MAX_HEADER_BYTES: u32 = 8192;
/// The largest `limits.max_header_bytes`.
pub const MAX_MAX_HEADER_BYTES: u32 = 16 * 1024 * 1024;
/// Default `limits.max_headers`.
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// Default `limits.max_body_bytes`: no limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 0;
/// Default `limits.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default `limits.max_in_flight_per_backend`: no limit.
pub const DEFAULT_MAX_IN_FLIGHT_PER_BACKEND: u32 = 0;

/// The `[limits]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// How long a client may take to send a request head, counted from the
    /// connection's start or the end of its previous response: the
    /// slowloris guard, and so also how long an idle keep-alive connection
    /// is kept (HTTP/1.1).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger
    /// gets `431`.
    pub max_header_bytes: u32,
    /// Most header fields in a request; more gets `431`.
    pub max_headers: u32,
    /// Largest request body in bytes (0: no limit); larger gets `413`.
    pub max_body_bytes: u64,
    /// Most client connections open at once, over all workers; a connection
    /// beyond it is closed as soon as it is accepted.
    pub max_connections: u32,
    /// Most requests in flight to one backend (0: no limit); a full backend
    /// is skipped like an unhealthy one, and `503` when all are full.
    pub max_in_flight_per_backend: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_backend: DEFAULT_MAX_IN_FLIGHT_PER_BACKEND,
        }
    }
}

/// Default `backends[].weight`.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One `[[backends]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique, non-empty name: the identity that is hashed.
    pub name: String,
    /// `http://host[:port]`, without a path.
    pub url: Uri,
    /// Relative share of keys, `1..=MAX_WEIGHT`.
    pub weight: u32,
    /// `state = "drain"`: no new keys or sessions; pinned sessions and
    /// requests in flight still reach it.
    pub drain: bool,
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            location: None,
            field: None,
            kind: ConfigErrorKind::Io,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks config `text`; `path` only names the file in errors.
    ///
    /// A syntax or type error is reported alone (nothing after it can be
    /// trusted); otherwise every rule the file breaks is.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let source = Source {
            text,
            file: path,
            pool: None,
        };
        let file: FileConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        source.validate(&file)
    }

    /// What looks wrong in this valid config (such as two backends on one
    /// URL), in file order: for `--check` to print and the proxy to log.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<PoolConfig>> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The routes of listener `name`, as the route table compiles them:
    /// each route's place in [`routes`](Self::routes) as its target.
    pub fn route_specs(&self, listener: &str) -> Vec<RouteSpec<usize>> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listener.as_deref().is_none_or(|l| l == listener))
            .map(|(i, r)| RouteSpec {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                target: i,
            })
            .collect()
    }
}
