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
//!    and checks every rule. The first problem becomes a [`ConfigError`] that
//!    names the file, the line and column, the field path (such as
//!    `backends[1].weight`) and what is wrong.
//! 3. **Runtime structs** ([`Config`] and its parts) hold only checked, typed
//!    values: no string left to parse and no `Option` where a default exists.
//!
//! Everything here is pure except [`Config::load`], which reads the file.
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
//! assert_eq!(config.balancer.algorithm, Algorithm::Maglev);
//! assert_eq!(config.members()[0].name, "server-1");
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hyper::Uri;
use hyper::header::HeaderName;
use hyper::http::uri::PathAndQuery;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::member::{MAX_WEIGHT, Member, MemberError};

// ---------------------------------------------------------------------------
// Runtime configuration
// ---------------------------------------------------------------------------

/// A checked configuration: every value parsed, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the proxy accepts client connections.
    pub listener: ListenerConfig,
    /// The admin endpoint (`/status`, `/metrics`, `/healthz`); `None` turns it off.
    pub admin: Option<AdminConfig>,
    /// How requests are mapped to backends.
    pub balancer: BalancerConfig,
    /// Active health probes.
    pub health_check: HealthCheckConfig,
    /// Connections to backends.
    pub upstream: UpstreamConfig,
    /// What one client, connection or backend may cost the proxy.
    pub limits: LimitsConfig,
    /// The pool, in config order; never empty.
    pub backends: Vec<BackendConfig>,
}

/// Default `listener.address`.
pub const DEFAULT_LISTEN_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default `listener.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `[listener]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to accept client connections on; port 0 picks a free port.
    pub address: SocketAddr,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            address: DEFAULT_LISTEN_ADDRESS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: DEFAULT_ADMIN_ADDRESS,
        }
    }
}

/// How a backend is chosen for a request (`balancer.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Maglev consistent hashing of the request key.
    Maglev,
    /// Consistent hashing on a ring of virtual nodes.
    RingHash,
    /// Each backend in turn, ignoring weights.
    RoundRobin,
    /// Each backend in turn, in proportion to its weight.
    WeightedRoundRobin,
    /// The backend with the fewest in-flight requests.
    LeastConnections,
    /// The backend with the lowest recent response time.
    LeastResponseTime,
    /// A uniformly random backend.
    Random,
}

impl Algorithm {
    /// Every algorithm, in the order the config documentation lists them.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Maglev,
        Algorithm::RingHash,
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastResponseTime,
        Algorithm::Random,
    ];

    /// The spelling used in the config file, e.g. `"ring_hash"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Maglev => "maglev",
            Algorithm::RingHash => "ring_hash",
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::LeastResponseTime => "least_response_time",
            Algorithm::Random => "random",
        }
    }

    /// Whether the algorithm hashes a request key (and so gives affinity):
    /// only these use `key`, `bounded_load` and the fallback order.
    pub fn is_hash(&self) -> bool {
        matches!(self, Algorithm::Maglev | Algorithm::RingHash)
    }

    fn from_config(text: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What part of a request is hashed to pick its backend (`balancer.key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The client address (from `X-Forwarded-For` only behind a trusted proxy).
    ClientIp,
    /// The request target: path and query.
    Url,
    /// The request path without the query.
    Path,
    /// The value of this header; the name is stored lowercased.
    Header(HeaderName),
    /// The value of the cookie with this name.
    Cookie(String),
}

impl KeySource {
    fn from_config(text: &str) -> Result<KeySource, String> {
        match text {
            "client_ip" => return Ok(KeySource::ClientIp),
            "url" => return Ok(KeySource::Url),
            "path" => return Ok(KeySource::Path),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a valid HTTP header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            return if is_cookie_token(name) {
                Ok(KeySource::Cookie(name.to_owned()))
            } else {
                Err(format!(
                    "{name:?} is not a valid cookie name (a non-empty token without spaces or ()<>@,;:\\\"/[]?={{}})"
                ))
            };
        }
        Err(format!(
            "unknown key {text:?}; expected client_ip, url, path, \"header:NAME\" or \"cookie:NAME\""
        ))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::ClientIp => f.write_str("client_ip"),
            KeySource::Url => f.write_str("url"),
            KeySource::Path => f.write_str("path"),
            KeySource::Header(name) => write!(f, "header:{}", name.as_str()),
            KeySource::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// Default `balancer.algorithm`.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::Maglev;
/// Default `balancer.key`.
pub const DEFAULT_KEY: KeySource = KeySource::ClientIp;
/// Default `balancer.table_size` (Maglev only).
pub const DEFAULT_TABLE_SIZE: usize = crate::maglev::DEFAULT_TABLE_SIZE;
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
        }
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
}

impl Default for StickyCookieConfig {
    fn default() -> Self {
        StickyCookieConfig {
            name: DEFAULT_STICKY_COOKIE_NAME.to_owned(),
            max_age: DEFAULT_STICKY_COOKIE_MAX_AGE,
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

/// The `[health_check]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
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
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
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
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let source = Source { text, file: path };
        let file: FileConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        source.validate(file)
    }

    /// The backends as the hashing core sees them: name and weight, in config order.
    pub fn members(&self) -> Vec<Member> {
        self.backends
            .iter()
            .map(|b| Member::new(b.name.clone(), b.weight))
            .collect()
    }

    /// A human summary of the pool for `affinity --check`: one line per
    /// section, then one line per backend with its share of the total weight.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;

        let mut out = String::new();
        let l = &self.listener;
        let _ = writeln!(
            out,
            "listener      {} (drain timeout {})",
            l.address,
            humantime::format_duration(l.drain_timeout)
        );
        match &self.admin {
            Some(admin) => {
                let _ = writeln!(out, "admin         {}", admin.address);
            }
            None => out.push_str("admin         off\n"),
        }

        let b = &self.balancer;
        let _ = write!(out, "balancer      {}", b.algorithm);
        if b.algorithm.is_hash() {
            let _ = write!(out, " on {}", b.key);
            if b.algorithm == Algorithm::Maglev {
                let _ = write!(out, ", table size {}", b.table_size);
            }
            if b.bounded_load > 0.0 {
                let _ = write!(out, ", bounded load {}", b.bounded_load);
            }
        } else if b.key != DEFAULT_KEY {
            let _ = write!(out, " (key {} is ignored by {})", b.key, b.algorithm);
        }
        if b.panic_threshold > 0.0 {
            let _ = write!(out, ", panic below {}% healthy", b.panic_threshold);
        }
        out.push('\n');
        if let Some(sticky) = &b.sticky_cookie {
            let _ = writeln!(
                out,
                "sticky cookie {} (max age {})",
                sticky.name,
                humantime::format_duration(sticky.max_age)
            );
        }
        if !b.trusted_proxies.is_empty() {
            let proxies: Vec<String> = b.trusted_proxies.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "trusted       {}", proxies.join(", "));
        }
        if b.hash_key.is_some() {
            out.push_str("hash key      custom\n");
        }

        let h = &self.health_check;
        let _ = writeln!(
            out,
            "health check  GET {} every {}, timeout {}, restore after {}, remove after {}",
            h.path,
            humantime::format_duration(h.interval),
            humantime::format_duration(h.timeout),
            plural(h.healthy_threshold, "success", "successes"),
            plural(h.unhealthy_threshold, "failure", "failures"),
        );
        let u = &self.upstream;
        let _ = writeln!(
            out,
            "upstream      connect timeout {}, request timeout {}, {}",
            humantime::format_duration(u.connect_timeout),
            humantime::format_duration(u.request_timeout),
            plural(u.retries, "retry", "retries"),
        );
        let l = &self.limits;
        let _ = writeln!(
            out,
            "limits        header timeout {}, head {} bytes / {} headers, body {}, {} connections, {} per backend",
            humantime::format_duration(l.header_timeout),
            l.max_header_bytes,
            l.max_headers,
            match l.max_body_bytes {
                0 => "unlimited".to_owned(),
                n => format!("{n} bytes"),
            },
            l.max_connections,
            match l.max_in_flight_per_backend {
                0 => "unlimited in flight".to_owned(),
                n => format!("{n} in flight"),
            },
        );

        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        let _ = writeln!(
            out,
            "backends      {}, total weight {total}",
            self.backends.len()
        );
        let urls: Vec<String> = self
            .backends
            .iter()
            .map(|b| backend_url_text(&b.url))
            .collect();
        let name_width = self
            .backends
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0);
        let url_width = urls.iter().map(String::len).max().unwrap_or(0);
        for (backend, url) in self.backends.iter().zip(&urls) {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(backend.weight) / total as f64
            };
            let _ = writeln!(
                out,
                "  {:<name_width$}  {:<url_width$}  weight {:>4}  {share:5.1}%",
                backend.name, url, backend.weight
            );
        }
        out
    }
}

/// A backend URL as an operator writes it: `http://host:port`, without the
/// `/` path that `Uri` adds.
fn backend_url_text(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => url.to_string(),
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a config file was rejected.
///
/// Its `Display` is one line an operator can act on:
/// `FILE:LINE:COLUMN: FIELD: what is wrong`, leaving out what is unknown, e.g.
/// `config.toml:14:10: backends[1].weight: weight 0 is out of range; weights must be between 1 and 1000`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    file: PathBuf,
    location: Option<Location>,
    field: Option<String>,
    kind: ConfigErrorKind,
    message: String,
}

/// A position in the config file, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: usize,
    /// Column number in characters, from 1.
    pub column: usize,
}

/// Which stage rejected the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// Valid TOML, but a key is unknown, a value has the wrong type, or a
    /// value breaks a rule.
    Invalid,
}

impl ConfigError {
    /// The config file, as given to [`Config::load`] or [`Config::from_toml`].
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where in the file the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// The field path, such as `backends[1].weight`, when known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Which stage rejected the file.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// What is wrong, without file, location or field.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some(at) = self.location {
            out.push_str(&format!(":{}:{}", at.line, at.column));
        }
        if let Some(field) = &self.field {
            out.push_str(": ");
            out.push_str(field);
        }
        out.push_str(": ");
        out.push_str(&self.message);
        out
    }
}

// ---------------------------------------------------------------------------
// File structs: the TOML layout, as serde reads it
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a config table")]
struct FileConfig {
    #[serde(default)]
    listener: FileListener,
    admin: Option<FileAdmin>,
    #[serde(default)]
    balancer: FileBalancer,
    #[serde(default)]
    health_check: FileHealthCheck,
    #[serde(default)]
    upstream: FileUpstream,
    #[serde(default)]
    limits: FileLimits,
    backends: Option<Spanned<Vec<FileBackend>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [listener] table")]
struct FileListener {
    address: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
struct FileAdmin {
    address: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [balancer] table")]
struct FileBalancer {
    algorithm: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    table_size: Option<Spanned<i64>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    hash_key: Option<Spanned<String>>,
    bounded_load: Option<Spanned<f64>>,
    panic_threshold: Option<Spanned<f64>>,
    sticky_cookie: Option<FileStickyCookie>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [balancer.sticky_cookie] table")]
struct FileStickyCookie {
    name: Option<Spanned<String>>,
    max_age: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [health_check] table")]
struct FileHealthCheck {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<DurationText>>,
    timeout: Option<Spanned<DurationText>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [upstream] table")]
struct FileUpstream {
    connect_timeout: Option<Spanned<DurationText>>,
    request_timeout: Option<Spanned<DurationText>>,
    retries: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
struct FileLimits {
    header_timeout: Option<Spanned<DurationText>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_headers: Option<Spanned<i64>>,
    max_body_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_in_flight_per_backend: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[backends]] table")]
struct FileBackend {
    name: Spanned<String>,
    url: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

/// A duration as written (`"500ms"`), parsed in the validation pass. Its own
/// type only so that `timeout = 5` is reported as "expected a duration string
/// such as ..." instead of "expected a string".
#[derive(Debug)]
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DurationText, E> {
                Ok(DurationText(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

// ---------------------------------------------------------------------------
// Validation: file structs -> runtime Config
// ---------------------------------------------------------------------------

/// The text being validated and the file it came from, for error messages.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Source<'_> {
    fn error(
        &self,
        field: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            location: span.map(|s| location(self.text, s.start)),
            field: Some(field.into()),
            kind: ConfigErrorKind::Invalid,
            message: message.into(),
        }
    }

    fn error_at<T>(
        &self,
        field: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(field, Some(value.span()), message)
    }

    fn line_of(&self, span: Range<usize>) -> usize {
        location(self.text, span.start).line
    }

    /// Turns a serde or syntax error from the toml crate into a
    /// `ConfigError`, recovering the field path from the error's span.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let (kind, field, message) = match DeTable::parse(self.text) {
            // The document parsed, so serde rejected a key or a value.
            Ok(root) => {
                let mut field = span
                    .clone()
                    .and_then(|s| field_containing(root.get_ref(), s.start));
                let mut message = e.message().to_owned();
                if let Some(missing) = backquoted(&message, "missing field ") {
                    field = Some(join_path(field.as_deref().unwrap_or(""), missing));
                    message = format!("required key `{missing}` is missing");
                } else if let Some(rest) = message.strip_prefix("unknown field ") {
                    message = format!("unknown key {rest}");
                }
                let message = message
                    .replace("expected i64", "expected an integer")
                    .replace("expected f64", "expected a number")
                    .replace("expected a sequence", "expected an array");
                (ConfigErrorKind::Invalid, field, message)
            }
            Err(_) => {
                let (partial, _) = DeTable::parse_recoverable(self.text);
                let field = span
                    .clone()
                    .and_then(|s| key_on_line_before(partial.get_ref(), self.text, s.start));
                (
                    ConfigErrorKind::Syntax,
                    field,
                    format!("invalid TOML: {}", e.message()),
                )
            }
        };
        ConfigError {
            file: self.file.to_path_buf(),
            location: span.map(|s| location(self.text, s.start)),
            field,
            kind,
            message,
        }
    }

    fn validate(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let listener = self.listener(&file.listener)?;
        let admin = match &file.admin {
            Some(admin) => Some(self.admin(admin, &listener)?),
            None => None,
        };
        let balancer = self.balancer(&file.balancer)?;
        let health_check = self.health_check(&file.health_check)?;
        let upstream = self.upstream(&file.upstream)?;
        let limits = self.limits(&file.limits)?;
        let backends = self.backends(file.backends.as_ref())?;

        let members: Vec<Member> = backends
            .iter()
            .map(|b| Member::new(b.name.clone(), b.weight))
            .collect();
        if balancer.algorithm == Algorithm::Maglev
            && let Err(e) = crate::maglev::check_table_size(balancer.table_size, &members)
        {
            let span = file.balancer.table_size.as_ref().map(Spanned::span);
            return Err(self.error("balancer.table_size", span, e.to_string()));
        }
        if balancer.algorithm == Algorithm::RingHash
            && let Err(e) =
                crate::ring::check_points(&members, crate::ring::DEFAULT_POINTS_PER_WEIGHT)
        {
            let span = file.balancer.algorithm.as_ref().map(Spanned::span);
            return Err(self.error("balancer.algorithm", span, e.to_string()));
        }

        Ok(Config {
            listener,
            admin,
            balancer,
            health_check,
            upstream,
            limits,
            backends,
        })
    }

    fn listener(&self, file: &FileListener) -> Result<ListenerConfig, ConfigError> {
        Ok(ListenerConfig {
            address: self.socket_addr(&file.address, "listener.address", DEFAULT_LISTEN_ADDRESS)?,
            drain_timeout: self.duration(
                &file.drain_timeout,
                "listener.drain_timeout",
                DEFAULT_DRAIN_TIMEOUT,
                true,
            )?,
        })
    }

    fn admin(
        &self,
        file: &FileAdmin,
        listener: &ListenerConfig,
    ) -> Result<AdminConfig, ConfigError> {
        let address = self.socket_addr(&file.address, "admin.address", DEFAULT_ADMIN_ADDRESS)?;
        if address == listener.address && address.port() != 0 {
            let span = file.address.as_ref().map(Spanned::span);
            return Err(self.error(
                "admin.address",
                span,
                format!(
                    "{address} is also the listener address; the admin endpoint needs its own port"
                ),
            ));
        }
        Ok(AdminConfig { address })
    }

    fn balancer(&self, file: &FileBalancer) -> Result<BalancerConfig, ConfigError> {
        let algorithm = match &file.algorithm {
            None => DEFAULT_ALGORITHM,
            Some(text) => Algorithm::from_config(text.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = Algorithm::ALL.iter().map(Algorithm::as_str).collect();
                self.error_at(
                    "balancer.algorithm",
                    text,
                    format!(
                        "unknown algorithm {:?}; expected one of {}",
                        text.get_ref(),
                        names.join(", ")
                    ),
                )
            })?,
        };
        let key = match &file.key {
            None => DEFAULT_KEY,
            Some(text) => KeySource::from_config(text.get_ref())
                .map_err(|m| self.error_at("balancer.key", text, m))?,
        };
        let table_size = match &file.table_size {
            None => DEFAULT_TABLE_SIZE,
            Some(size) => usize::try_from(*size.get_ref()).map_err(|_| {
                self.error_at(
                    "balancer.table_size",
                    size,
                    format!(
                        "table_size {} must be a positive prime such as 65537",
                        size.get_ref()
                    ),
                )
            })?,
        };
        let mut trusted_proxies = Vec::new();
        for (i, text) in file.trusted_proxies.iter().flatten().enumerate() {
            trusted_proxies.push(parse_cidr(text.get_ref()).ok_or_else(|| {
                self.error_at(
                    format!("balancer.trusted_proxies[{i}]"),
                    text,
                    format!(
                        "{:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address such as \"192.0.2.7\"",
                        text.get_ref()
                    ),
                )
            })?);
        }
        let hash_key = match &file.hash_key {
            None => None,
            Some(text) => parse_hash_key(text.get_ref())
                .map_err(|m| self.error_at("balancer.hash_key", text, m))?,
        };
        let bounded_load = match &file.bounded_load {
            None => DEFAULT_BOUNDED_LOAD,
            Some(value) => {
                let c = *value.get_ref();
                if !c.is_finite() || c < 0.0 || (c > 0.0 && c <= 1.0) {
                    return Err(self.error_at(
                        "balancer.bounded_load",
                        value,
                        format!(
                            "bounded_load {c} is out of range; use 0 (off) or a factor above 1.0 such as 1.25 (each backend takes at most c times the mean load)"
                        ),
                    ));
                }
                if c > 0.0 && !algorithm.is_hash() {
                    return Err(self.error_at(
                        "balancer.bounded_load",
                        value,
                        format!(
                            "bounded_load only applies to the hash algorithms maglev and ring_hash, not {algorithm}; remove it or set it to 0"
                        ),
                    ));
                }
                c
            }
        };
        let panic_threshold = match &file.panic_threshold {
            None => DEFAULT_PANIC_THRESHOLD,
            Some(value) => {
                let percent = *value.get_ref();
                if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
                    return Err(self.error_at(
                        "balancer.panic_threshold",
                        value,
                        format!(
                            "panic_threshold {percent} is out of range; use a percentage from 0 (off) to 100, such as 50 (below half the backends healthy, route over all of them)"
                        ),
                    ));
                }
                percent
            }
        };
        let sticky_cookie = match &file.sticky_cookie {
            None => None,
            Some(_) if !algorithm.is_hash() => {
                return Err(self.error(
                    "balancer.sticky_cookie",
                    file.algorithm.as_ref().map(Spanned::span),
                    format!(
                        "a sticky cookie is hashed to pick the backend, so it needs maglev or ring_hash, not {algorithm}"
                    ),
                ));
            }
            Some(sticky) => Some(self.sticky_cookie(sticky)?),
        };
        Ok(BalancerConfig {
            algorithm,
            key,
            table_size,
            trusted_proxies,
            hash_key,
            bounded_load,
            panic_threshold,
            sticky_cookie,
        })
    }

    fn sticky_cookie(&self, file: &FileStickyCookie) -> Result<StickyCookieConfig, ConfigError> {
        let name = match &file.name {
            None => DEFAULT_STICKY_COOKIE_NAME.to_owned(),
            Some(name) if is_cookie_token(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                return Err(self.error_at(
                    "balancer.sticky_cookie.name",
                    name,
                    format!(
                        "{:?} is not a valid cookie name (a non-empty token without spaces or ()<>@,;:\\\"/[]?={{}})",
                        name.get_ref()
                    ),
                ));
            }
        };
        let max_age = self.duration(
            &file.max_age,
            "balancer.sticky_cookie.max_age",
            DEFAULT_STICKY_COOKIE_MAX_AGE,
            false,
        )?;
        Ok(StickyCookieConfig { name, max_age })
    }

    fn health_check(&self, file: &FileHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
        let path = match &file.path {
            None => DEFAULT_HEALTH_PATH.to_owned(),
            Some(path) => {
                let text = path.get_ref();
                if !text.starts_with('/') {
                    return Err(self.error_at(
                        "health_check.path",
                        path,
                        format!("{text:?} must start with \"/\", such as \"/health\""),
                    ));
                }
                if PathAndQuery::from_str(text).is_err() {
                    return Err(self.error_at(
                        "health_check.path",
                        path,
                        format!("{text:?} is not a valid URL path (spaces and control characters must be percent-encoded)"),
                    ));
                }
                text.clone()
            }
        };
        let interval = self.duration(
            &file.interval,
            "health_check.interval",
            DEFAULT_HEALTH_INTERVAL,
            false,
        )?;
        let timeout = self.duration(
            &file.timeout,
            "health_check.timeout",
            DEFAULT_HEALTH_TIMEOUT,
            false,
        )?;
        if timeout >= interval {
            let shown = |d| humantime::format_duration(d);
            return Err(match (&file.timeout, &file.interval) {
                (Some(t), _) => self.error_at(
                    "health_check.timeout",
                    t,
                    format!(
                        "timeout {} must be below interval {}: a probe has to finish before the next one starts",
                        shown(timeout),
                        shown(interval)
                    ),
                ),
                (None, i) => self.error(
                    "health_check.interval",
                    i.as_ref().map(Spanned::span),
                    format!(
                        "interval {} must be above timeout {} (the default); raise the interval or set a shorter timeout",
                        shown(interval),
                        shown(timeout)
                    ),
                ),
            });
        }
        Ok(HealthCheckConfig {
            path,
            interval,
            timeout,
            healthy_threshold: self.count(
                &file.healthy_threshold,
                "health_check.healthy_threshold",
                DEFAULT_HEALTHY_THRESHOLD,
                1,
            )?,
            unhealthy_threshold: self.count(
                &file.unhealthy_threshold,
                "health_check.unhealthy_threshold",
                DEFAULT_UNHEALTHY_THRESHOLD,
                1,
            )?,
        })
    }

    fn upstream(&self, file: &FileUpstream) -> Result<UpstreamConfig, ConfigError> {
        Ok(UpstreamConfig {
            connect_timeout: self.duration(
                &file.connect_timeout,
                "upstream.connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
                false,
            )?,
            request_timeout: self.duration(
                &file.request_timeout,
                "upstream.request_timeout",
                DEFAULT_REQUEST_TIMEOUT,
                false,
            )?,
            retries: self.count(&file.retries, "upstream.retries", DEFAULT_RETRIES, 0)?,
        })
    }

    fn limits(&self, file: &FileLimits) -> Result<LimitsConfig, ConfigError> {
        let max_header_bytes = self.count_in(
            &file.max_header_bytes,
            "limits.max_header_bytes",
            DEFAULT_MAX_HEADER_BYTES,
            MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES,
        )?;
        let max_body_bytes = match &file.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(value) => u64::try_from(*value.get_ref()).map_err(|_| {
                self.error_at(
                    "limits.max_body_bytes",
                    value,
                    format!(
                        "{} is out of range; use 0 (no limit) or a size in bytes",
                        value.get_ref()
                    ),
                )
            })?,
        };
        Ok(LimitsConfig {
            header_timeout: self.duration(
                &file.header_timeout,
                "limits.header_timeout",
                DEFAULT_HEADER_TIMEOUT,
                false,
            )?,
            max_header_bytes,
            max_headers: self.count(
                &file.max_headers,
                "limits.max_headers",
                DEFAULT_MAX_HEADERS,
                1,
            )?,
            max_body_bytes,
            max_connections: self.count(
                &file.max_connections,
                "limits.max_connections",
                DEFAULT_MAX_CONNECTIONS,
                1,
            )?,
            max_in_flight_per_backend: self.count(
                &file.max_in_flight_per_backend,
                "limits.max_in_flight_per_backend",
                DEFAULT_MAX_IN_FLIGHT_PER_BACKEND,
                0,
            )?,
        })
    }

    fn backends(
        &self,
        file: Option<&Spanned<Vec<FileBackend>>>,
    ) -> Result<Vec<BackendConfig>, ConfigError> {
        let list_span = file.map(Spanned::span);
        let entries: &[FileBackend] = file.map(|f| f.get_ref().as_slice()).unwrap_or(&[]);

        let mut members = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let weight = match &entry.weight {
                None => DEFAULT_WEIGHT,
                Some(w) => u32::try_from(*w.get_ref()).map_err(|_| {
                    self.error_at(
                        format!("backends[{i}].weight"),
                        w,
                        weight_out_of_range(*w.get_ref()),
                    )
                })?,
            };
            members.push(Member::new(entry.name.get_ref().clone(), weight));
        }
        if let Err(e) = crate::member::validate(&members) {
            return Err(self.member_error(e, entries, &members, list_span));
        }

        let mut backends = Vec::with_capacity(entries.len());
        for (i, (entry, member)) in entries.iter().zip(members).enumerate() {
            let url = parse_backend_url(entry.url.get_ref())
                .map_err(|m| self.error_at(format!("backends[{i}].url"), &entry.url, m))?;
            backends.push(BackendConfig {
                name: member.name,
                url,
                weight: member.weight,
            });
        }
        Ok(backends)
    }

    /// Points a pool-level error from `member::validate` at the backend and
    /// key it is about.
    fn member_error(
        &self,
        error: MemberError,
        entries: &[FileBackend],
        members: &[Member],
        list_span: Option<Range<usize>>,
    ) -> ConfigError {
        match error {
            MemberError::Empty => self.error(
                "backends",
                list_span,
                "no backends: add at least one [[backends]] table with a name and a url",
            ),
            MemberError::TooMany(_) => self.error("backends", list_span, error.to_string()),
            MemberError::EmptyName(i) => self.error(
                format!("backends[{i}].name"),
                entries.get(i).map(|e| e.name.span()),
                "the name is empty; every backend needs a unique, non-empty name",
            ),
            MemberError::DuplicateName(ref name) => {
                let mut uses = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.name.get_ref() == name);
                match (uses.next(), uses.next()) {
                    (Some((first, first_entry)), Some((second, second_entry))) => self.error_at(
                        format!("backends[{second}].name"),
                        &second_entry.name,
                        format!(
                            "name {name:?} is already used by backends[{first}] (line {}); names must be unique",
                            self.line_of(first_entry.name.span())
                        ),
                    ),
                    _ => self.error("backends", list_span, error.to_string()),
                }
            }
            MemberError::BadWeight { ref name, weight } => {
                let at = members
                    .iter()
                    .position(|m| &m.name == name && m.weight == weight)
                    .and_then(|i| Some((i, entries.get(i)?.weight.as_ref()?.span())));
                match at {
                    Some((i, span)) => self.error(
                        format!("backends[{i}].weight"),
                        Some(span),
                        weight_out_of_range(i64::from(weight)),
                    ),
                    None => self.error("backends", list_span, error.to_string()),
                }
            }
        }
    }

    fn duration(
        &self,
        value: &Option<Spanned<DurationText>>,
        field: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let text = &value.get_ref().0;
        let duration = humantime::parse_duration(text).map_err(|e| {
            self.error_at(
                field,
                value,
                format!("{text:?} is not a duration ({e}); write durations like \"500ms\", \"5s\" or \"1h\""),
            )
        })?;
        if duration.is_zero() && !allow_zero {
            return Err(self.error_at(
                field,
                value,
                format!("{text:?} is zero; it must be greater than zero"),
            ));
        }
        Ok(duration)
    }

    fn count(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        min: u32,
    ) -> Result<u32, ConfigError> {
        self.count_in(value, field, default, min..=u32::MAX)
    }

    fn count_in(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        u32::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.error_at(
                    field,
                    value,
                    format!(
                        "{n} is out of range; it must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }

    fn socket_addr(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let text = value.get_ref();
        text.parse().map_err(|_| {
            self.error_at(
                field,
                value,
                format!("{text:?} is not an IP:PORT address such as \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"),
            )
        })
    }
}

fn weight_out_of_range(weight: i64) -> String {
    format!("weight {weight} is out of range; weights must be between 1 and {MAX_WEIGHT}")
}

/// A backend URL: `http://host[:port]` with at most a `/` path.
fn parse_backend_url(text: &str) -> Result<Uri, String> {
    const FORM: &str = "write it as http://HOST:PORT";
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a valid URL ({e}); {FORM}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} is not an absolute URL; {FORM}"));
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text:?} uses https, which is not supported yet; backends must be plain http:// for now"
            ));
        }
        Some(other) => return Err(format!("unsupported scheme {other:?} in {text:?}; {FORM}")),
        None => {
            return Err(format!(
                "{text:?} has no scheme; write it as \"http://{text}\""
            ));
        }
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?} contains user credentials, which are not supported"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host; {FORM}"));
    }
    // The http crate accepts any text after the host's colon; require a real port.
    let after_host = match authority.as_str().strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => authority
            .as_str()
            .split_once(':')
            .map_or("", |(_, port)| port),
    };
    let port = after_host.strip_prefix(':').unwrap_or(after_host);
    if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!(
            "{port:?} in {text:?} is not a port number between 1 and 65535"
        ));
    }
    if let Some(path) = uri.path_and_query().map(PathAndQuery::as_str)
        && path != "/"
    {
        return Err(format!(
            "{text:?} has a path or query ({path:?}); backend URLs cannot have one because each request's own path is forwarded unchanged; {FORM}"
        ));
    }
    Ok(uri)
}

/// A CIDR, or a bare address taken as a single host (/32 or /128).
fn parse_cidr(text: &str) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => text.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// `""` is no key; otherwise exactly 32 hex characters.
fn parse_hash_key(text: &str) -> Result<Option<[u8; 16]>, String> {
    const HOW: &str = "generate one with `openssl rand -hex 16`";
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "hash_key must be empty or exactly 32 hex characters (16 bytes), but contains {bad:?}; {HOW}"
        ));
    }
    if text.len() != 32 {
        return Err(format!(
            "hash_key must be empty or exactly 32 hex characters (16 bytes), got {}; {HOW}",
            text.len()
        ));
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        // Both checks above make every pair two ASCII hex digits.
        let digit = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
        *byte = (digit(pair[0]) << 4) | digit(pair[1]);
    }
    Ok(Some(key))
}

/// A cookie name: an RFC 6265 / RFC 2616 token (visible ASCII, no separators).
fn is_cookie_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

// ---------------------------------------------------------------------------
// Locating errors: byte offsets -> line:column and field paths
// ---------------------------------------------------------------------------

/// The 1-based line and character column of byte `offset` in `text`.
fn location(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// A key or array element of the document, with its path.
struct Entry {
    path: String,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

fn entries(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table {
        let path = join_path(prefix, key.get_ref());
        out.push(Entry {
            path: path.clone(),
            key: Some(key.span()),
            value: value.span(),
        });
        value_entries(value, &path, out);
    }
}

fn value_entries(value: &Spanned<DeValue<'_>>, path: &str, out: &mut Vec<Entry>) {
    match value.get_ref() {
        DeValue::Table(table) => entries(table, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                out.push(Entry {
                    path: path.clone(),
                    key: None,
                    value: item.span(),
                });
                value_entries(item, &path, out);
            }
        }
        _ => {}
    }
}

/// The path of the innermost key or value whose span contains `offset`.
fn field_containing(root: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut all = Vec::new();
    entries(root, "", &mut all);
    let mut best: Option<(usize, String)> = None;
    for entry in all {
        for span in entry.key.into_iter().chain([entry.value]) {
            // `<=`: a child comes after its parent, so ties go to the deeper path.
            if span.contains(&offset) && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
                best = Some((span.len(), entry.path.clone()));
            }
        }
    }
    best.map(|(_, path)| path)
}

/// For a syntax error at `offset`: the last key that starts on the same line
/// before it, from the partly parsed document, since the error is in its value.
fn key_on_line_before(root: &DeTable<'_>, text: &str, offset: usize) -> Option<String> {
    let line = location(text, offset).line;
    let mut all = Vec::new();
    entries(root, "", &mut all);
    all.into_iter()
        .filter_map(|e| Some((e.key?.start, e.path)))
        .filter(|(start, _)| *start <= offset && location(text, *start).line == line)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path)
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `name` from "missing field `name`" style serde messages.
fn backquoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_BACKEND: &str =
        "[[backends]]\nname = \"server-1\"\nurl = \"http://127.0.0.1:9001\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("config.toml"))
    }

    /// `section` followed by one valid backend.
    fn with_backend(section: &str) -> String {
        format!("{section}\n{ONE_BACKEND}")
    }

    fn error(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:#?}"),
            Err(e) => e,
        }
    }

    fn line(e: &ConfigError) -> usize {
        e.location()
            .map(|l| l.line)
            .unwrap_or_else(|| panic!("no line in: {e}"))
    }

    fn assert_rejected(text: &str, field: &str, line_no: usize, needle: &str) {
        let e = error(text);
        let shown = e.to_string();
        assert_eq!(e.field(), Some(field), "{shown}");
        assert_eq!(line(&e), line_no, "{shown}");
        assert!(
            shown.contains(needle),
            "{shown:?} should mention {needle:?}"
        );
        assert!(
            shown.starts_with(&format!("config.toml:{line_no}:")),
            "{shown}"
        );
    }

    fn backends(list: &[(&str, &str, &str)]) -> String {
        list.iter()
            .map(|(name, url, weight)| {
                format!("[[backends]]\nname = {name}\nurl = {url}\n{weight}\n")
            })
            .collect()
    }

    // --- defaults --------------------------------------------------------

    #[test]
    fn a_file_with_one_backend_gets_every_default() {
        let config = parse(ONE_BACKEND).unwrap();
        assert_eq!(config.listener, ListenerConfig::default());
        assert_eq!(config.listener.address.to_string(), "127.0.0.1:8080");
        assert_eq!(config.listener.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.admin, None);
        assert_eq!(config.balancer, BalancerConfig::default());
        assert_eq!(config.balancer.algorithm, Algorithm::Maglev);
        assert_eq!(config.balancer.key, KeySource::ClientIp);
        assert_eq!(
            config.balancer.table_size,
            crate::maglev::DEFAULT_TABLE_SIZE
        );
        assert!(config.balancer.trusted_proxies.is_empty());
        assert_eq!(config.balancer.hash_key, None);
        assert_eq!(config.balancer.bounded_load, 0.0);
        assert_eq!(config.balancer.sticky_cookie, None);
        assert_eq!(config.health_check, HealthCheckConfig::default());
        assert_eq!(config.health_check.path, "/health");
        assert_eq!(config.health_check.interval, Duration::from_secs(5));
        assert_eq!(config.health_check.timeout, Duration::from_secs(2));
        assert_eq!(config.health_check.healthy_threshold, 2);
        assert_eq!(config.health_check.unhealthy_threshold, 2);
        assert_eq!(config.upstream, UpstreamConfig::default());
        assert_eq!(config.upstream.connect_timeout, Duration::from_secs(1));
        assert_eq!(config.upstream.request_timeout, Duration::from_secs(30));
        assert_eq!(config.upstream.retries, 1);
        assert_eq!(
            config.backends,
            vec![BackendConfig {
                name: "server-1".into(),
                url: Uri::from_static("http://127.0.0.1:9001"),
                weight: 1,
            }]
        );
    }

    #[test]
    fn a_file_that_sets_every_key_gets_every_value() {
        let text = r#"
            [listener]
            address = "0.0.0.0:80"
            drain_timeout = "10s"

            [admin]
            address = "[::1]:9901"

            [balancer]
            algorithm = "ring_hash"
            key = "header:X-Session"
            table_size = 131
            trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
            hash_key = "000102030405060708090a0b0c0d0E0F"
            bounded_load = 1.25
            panic_threshold = 40

            [balancer.sticky_cookie]
            name = "sid"
            max_age = "30m"

            [health_check]
            path = "/ready?full=1"
            interval = "10s"
            timeout = "500ms"
            healthy_threshold = 3
            unhealthy_threshold = 4

            [upstream]
            connect_timeout = "250ms"
            request_timeout = "1m"
            retries = 0

            [limits]
            header_timeout = "3s"
            max_header_bytes = 16384
            max_headers = 50
            max_body_bytes = 1048576
            max_connections = 500
            max_in_flight_per_backend = 64

            [[backends]]
            name = "a"
            url = "http://10.0.0.1:8080/"
            weight = 3

            [[backends]]
            name = "b"
            url = "http://backend.internal"
        "#;
        let config = parse(text).unwrap();
        assert_eq!(
            config.listener,
            ListenerConfig {
                address: "0.0.0.0:80".parse().unwrap(),
                drain_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(
            config.admin,
            Some(AdminConfig {
                address: "[::1]:9901".parse().unwrap()
            })
        );
        assert_eq!(
            config.balancer,
            BalancerConfig {
                algorithm: Algorithm::RingHash,
                key: KeySource::Header(HeaderName::from_static("x-session")),
                table_size: 131,
                trusted_proxies: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "192.0.2.7/32".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                hash_key: Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                bounded_load: 1.25,
                panic_threshold: 40.0,
                sticky_cookie: Some(StickyCookieConfig {
                    name: "sid".into(),
                    max_age: Duration::from_secs(30 * 60),
                }),
            }
        );
        assert_eq!(
            config.health_check,
            HealthCheckConfig {
                path: "/ready?full=1".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_millis(500),
                healthy_threshold: 3,
                unhealthy_threshold: 4,
            }
        );
        assert_eq!(
            config.upstream,
            UpstreamConfig {
                connect_timeout: Duration::from_millis(250),
                request_timeout: Duration::from_secs(60),
                retries: 0,
            }
        );
        assert_eq!(
            config.limits,
            LimitsConfig {
                header_timeout: Duration::from_secs(3),
                max_header_bytes: 16384,
                max_headers: 50,
                max_body_bytes: 1 << 20,
                max_connections: 500,
                max_in_flight_per_backend: 64,
            }
        );
        assert_eq!(
            config.members(),
            vec![Member::new("a", 3), Member::new("b", 1)]
        );
        assert_eq!(config.backends[1].url.host(), Some("backend.internal"));
    }

    #[test]
    fn an_empty_admin_section_uses_the_default_admin_address() {
        let config = parse(&with_backend("[admin]")).unwrap();
        assert_eq!(config.admin, Some(AdminConfig::default()));
        assert_eq!(DEFAULT_ADMIN_ADDRESS.to_string(), "127.0.0.1:9900");
    }

    #[test]
    fn an_empty_sticky_cookie_section_uses_the_default_name_and_max_age() {
        let config = parse(&with_backend("[balancer.sticky_cookie]")).unwrap();
        let sticky = config.balancer.sticky_cookie.unwrap();
        assert_eq!(sticky, StickyCookieConfig::default());
        assert_eq!(sticky.name, "affinity");
        assert_eq!(sticky.max_age, Duration::from_secs(3600));
    }

    #[test]
    fn a_missing_weight_defaults_to_one() {
        assert_eq!(
            parse(ONE_BACKEND).unwrap().backends[0].weight,
            DEFAULT_WEIGHT
        );
    }

    // --- errors from the toml crate: syntax, unknown keys, types ----------

    #[test]
    fn an_unknown_key_is_rejected_with_its_name_and_line() {
        let text = with_backend("[listener]\naddress = \"127.0.0.1:8080\"\ndrain_timout = \"5s\"");
        let e = error(&text);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid);
        assert_eq!(
            e.to_string(),
            "config.toml:3:1: listener.drain_timout: unknown key `drain_timout`, expected `address` or `drain_timeout`"
        );
    }

    #[test]
    fn an_unknown_key_in_a_backend_names_the_backend() {
        let text = format!(
            "{ONE_BACKEND}[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\nwieght = 2\n"
        );
        assert_rejected(&text, "backends[1].wieght", 7, "unknown key `wieght`");
    }

    #[test]
    fn an_unknown_table_is_rejected() {
        assert_rejected(
            &with_backend("[healthcheck]\npath = \"/\""),
            "healthcheck",
            1,
            "unknown key `healthcheck`",
        );
    }

    #[test]
    fn an_unknown_key_in_the_sticky_cookie_table_is_rejected() {
        assert_rejected(
            &with_backend("[balancer.sticky_cookie]\nmaxage = \"1h\""),
            "balancer.sticky_cookie.maxage",
            2,
            "unknown key `maxage`",
        );
    }

    #[test]
    fn a_toml_syntax_error_reports_line_column_and_the_key_it_is_in() {
        let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\n";
        let e = error(text);
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
        assert_eq!(e.field(), Some("backends[0].url"));
        assert_eq!(
            e.location(),
            Some(Location {
                line: 3,
                column: 29
            })
        );
        assert!(
            e.to_string()
                .starts_with("config.toml:3:29: backends[0].url: invalid TOML: "),
            "{e}"
        );
    }

    #[test]
    fn a_syntax_error_outside_any_key_has_a_line_but_no_field() {
        let e = error("[listener\naddress = \"127.0.0.1:1\"\n");
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
        assert_eq!(e.field(), None);
        assert_eq!(line(&e), 1);
        assert!(
            e.to_string()
                .starts_with("config.toml:1:10: invalid TOML: "),
            "{e}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_field_and_line() {
        let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\nweight = \"2\"\n";
        assert_rejected(text, "backends[0].weight", 4, "expected an integer");
    }

    #[test]
    fn a_fractional_weight_is_a_type_error() {
        let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\nweight = 1.5\n";
        assert_rejected(text, "backends[0].weight", 4, "expected an integer");
    }

    #[test]
    fn a_duration_given_as_a_number_asks_for_a_duration_string() {
        assert_rejected(
            &with_backend("[health_check]\ninterval = 5"),
            "health_check.interval",
            2,
            "expected a duration string such as \"5s\"",
        );
    }

    #[test]
    fn a_section_that_is_not_a_table_is_rejected() {
        assert_rejected(
            &with_backend("listener = \"127.0.0.1:80\""),
            "listener",
            1,
            "expected a [listener] table",
        );
    }

    #[test]
    fn a_trusted_proxy_that_is_not_a_string_names_its_index() {
        assert_rejected(
            &with_backend("[balancer]\ntrusted_proxies = [\"10.0.0.0/8\", 5]"),
            "balancer.trusted_proxies[1]",
            2,
            "invalid type",
        );
    }

    #[test]
    fn a_backend_without_a_url_names_the_backend_and_the_missing_key() {
        let text = format!("{ONE_BACKEND}\n[[backends]]\nname = \"b\"\n");
        assert_rejected(&text, "backends[1].url", 5, "required key `url` is missing");
    }

    // --- backends ----------------------------------------------------------

    #[test]
    fn a_file_without_backends_is_rejected() {
        let e = error("[listener]\naddress = \"127.0.0.1:8080\"\n");
        assert_eq!(e.field(), Some("backends"));
        assert_eq!(e.location(), None);
        assert_eq!(
            e.to_string(),
            "config.toml: backends: no backends: add at least one [[backends]] table with a name and a url"
        );
    }

    #[test]
    fn an_empty_backends_array_is_rejected_with_its_line() {
        assert_rejected(
            "backends = []\n\n[upstream]\nretries = 1\n",
            "backends",
            1,
            "no backends",
        );
    }

    #[test]
    fn an_empty_backend_name_is_rejected() {
        let text = format!(
            "{ONE_BACKEND}{}",
            backends(&[("\"\"", "\"http://127.0.0.1:2\"", "")])
        );
        assert_rejected(&text, "backends[1].name", 5, "the name is empty");
    }

    #[test]
    fn a_duplicate_backend_name_points_at_the_second_use_and_names_the_first() {
        let text = backends(&[
            ("\"a\"", "\"http://127.0.0.1:1\"", ""),
            ("\"b\"", "\"http://127.0.0.1:2\"", ""),
            ("\"a\"", "\"http://127.0.0.1:3\"", ""),
        ]);
        let e = error(&text);
        assert_eq!(
            e.to_string(),
            "config.toml:10:8: backends[2].name: name \"a\" is already used by backends[0] (line 2); names must be unique"
        );
    }

    #[test]
    fn a_weight_of_zero_is_rejected_with_its_line() {
        let text = backends(&[
            ("\"a\"", "\"http://127.0.0.1:1\"", "weight = 2"),
            ("\"b\"", "\"http://127.0.0.1:2\"", "weight = 0"),
        ]);
        assert_eq!(
            error(&text).to_string(),
            "config.toml:8:10: backends[1].weight: weight 0 is out of range; weights must be between 1 and 1000"
        );
    }

    #[test]
    fn a_weight_above_the_maximum_is_rejected() {
        let text = backends(&[("\"a\"", "\"http://127.0.0.1:1\"", "weight = 1001")]);
        assert_rejected(
            &text,
            "backends[0].weight",
            4,
            "weight 1001 is out of range",
        );
        let text = backends(&[(
            "\"a\"",
            "\"http://127.0.0.1:1\"",
            &format!("weight = {MAX_WEIGHT}"),
        )]);
        assert_eq!(parse(&text).unwrap().backends[0].weight, MAX_WEIGHT);
    }

    #[test]
    fn a_negative_or_huge_weight_is_rejected_as_out_of_range() {
        for weight in ["-1", "4294967296"] {
            let text = backends(&[(
                "\"a\"",
                "\"http://127.0.0.1:1\"",
                &format!("weight = {weight}"),
            )]);
            assert_rejected(
                &text,
                "backends[0].weight",
                4,
                &format!("weight {weight} is out of range"),
            );
        }
    }

    fn url_error(url: &str) -> ConfigError {
        let text = backends(&[("\"a\"", &format!("{url:?}"), "")]);
        let e = error(&text);
        assert_eq!(e.field(), Some("backends[0].url"), "{e}");
        assert_eq!(line(&e), 3, "{e}");
        e
    }

    #[test]
    fn a_url_that_does_not_parse_is_rejected() {
        assert!(
            url_error("http://a b")
                .message()
                .contains("is not a valid URL")
        );
        assert!(
            url_error("http://127.0.0.1:notaport")
                .message()
                .contains("not a port number")
        );
        assert!(
            url_error("http://127.0.0.1:70000")
                .message()
                .contains("not a port number")
        );
        assert!(
            url_error("/just/a/path")
                .message()
                .contains("not an absolute URL")
        );
    }

    #[test]
    fn a_url_without_a_scheme_is_rejected_with_a_suggestion() {
        let e = url_error("127.0.0.1:9001");
        assert!(
            e.message()
                .contains("has no scheme; write it as \"http://127.0.0.1:9001\""),
            "{e}"
        );
    }

    #[test]
    fn an_https_url_is_rejected_as_not_supported_yet() {
        let e = url_error("https://127.0.0.1:9001");
        assert!(
            e.message().contains("https, which is not supported yet"),
            "{e}"
        );
    }

    #[test]
    fn a_url_with_another_scheme_is_rejected() {
        assert!(
            url_error("ftp://127.0.0.1")
                .message()
                .contains("unsupported scheme \"ftp\"")
        );
    }

    #[test]
    fn a_url_with_a_path_or_query_is_rejected() {
        for url in [
            "http://127.0.0.1:9001/api",
            "http://127.0.0.1:9001/?x=1",
            "http://127.0.0.1:9001?x=1",
        ] {
            let e = url_error(url);
            assert!(e.message().contains("cannot have one"), "{e}");
        }
    }

    #[test]
    fn a_url_with_credentials_is_rejected() {
        assert!(
            url_error("http://user:pw@127.0.0.1:1")
                .message()
                .contains("credentials")
        );
    }

    #[test]
    fn urls_with_a_trailing_slash_ipv6_or_no_port_are_accepted() {
        for url in [
            "http://127.0.0.1:9001/",
            "http://[::1]:9001",
            "http://example.com",
        ] {
            let text = backends(&[("\"a\"", &format!("{url:?}"), "")]);
            assert!(parse(&text).is_ok(), "{url}");
        }
    }

    #[test]
    fn members_are_the_backends_names_and_weights_in_config_order() {
        let text = backends(&[
            ("\"z\"", "\"http://127.0.0.1:1\"", "weight = 5"),
            ("\"a\"", "\"http://127.0.0.1:2\"", ""),
        ]);
        assert_eq!(
            parse(&text).unwrap().members(),
            vec![Member::new("z", 5), Member::new("a", 1)]
        );
    }

    // --- balancer ------------------------------------------------------------

    #[test]
    fn every_algorithm_spelling_round_trips() {
        for algorithm in Algorithm::ALL {
            let config = parse(&with_backend(&format!(
                "[balancer]\nalgorithm = \"{algorithm}\""
            )))
            .unwrap();
            assert_eq!(config.balancer.algorithm, algorithm);
            assert_eq!(algorithm.to_string(), algorithm.as_str());
        }
        let spellings: Vec<&str> = Algorithm::ALL.iter().map(Algorithm::as_str).collect();
        assert_eq!(
            spellings,
            [
                "maglev",
                "ring_hash",
                "round_robin",
                "weighted_round_robin",
                "least_connections",
                "least_response_time",
                "random"
            ]
        );
    }

    #[test]
    fn only_maglev_and_ring_hash_are_hash_algorithms() {
        let hashing: Vec<Algorithm> = Algorithm::ALL
            .into_iter()
            .filter(Algorithm::is_hash)
            .collect();
        assert_eq!(hashing, [Algorithm::Maglev, Algorithm::RingHash]);
    }

    #[test]
    fn an_unknown_algorithm_is_rejected_with_the_valid_ones() {
        assert_rejected(
            &with_backend("[balancer]\nalgorithm = \"consistent\""),
            "balancer.algorithm",
            2,
            "unknown algorithm \"consistent\"; expected one of maglev, ring_hash, round_robin",
        );
    }

    #[test]
    fn every_key_spelling_round_trips_through_display() {
        for key in [
            "client_ip",
            "url",
            "path",
            "header:x-user",
            "cookie:session",
        ] {
            let config = parse(&with_backend(&format!("[balancer]\nkey = \"{key}\""))).unwrap();
            assert_eq!(config.balancer.key.to_string(), key);
        }
    }

    #[test]
    fn a_header_key_is_stored_lowercased() {
        let config = parse(&with_backend("[balancer]\nkey = \"header:X-Tenant-ID\"")).unwrap();
        assert_eq!(
            config.balancer.key,
            KeySource::Header(HeaderName::from_static("x-tenant-id"))
        );
        assert_eq!(config.balancer.key.to_string(), "header:x-tenant-id");
    }

    #[test]
    fn a_header_key_with_an_invalid_name_is_rejected() {
        for key in ["header:", "header:X Tenant", "header:é"] {
            let text = with_backend(&format!("[balancer]\nkey = \"{key}\""));
            assert_rejected(&text, "balancer.key", 2, "is not a valid HTTP header name");
        }
    }

    #[test]
    fn a_cookie_key_needs_a_non_empty_token() {
        for key in ["cookie:", "cookie:a b", "cookie:a;b", "cookie:a=b"] {
            let text = with_backend(&format!("[balancer]\nkey = \"{key}\""));
            assert_rejected(&text, "balancer.key", 2, "is not a valid cookie name");
        }
    }

    #[test]
    fn an_unknown_key_source_is_rejected() {
        assert_rejected(
            &with_backend("[balancer]\nkey = \"ip\""),
            "balancer.key",
            2,
            "unknown key \"ip\"; expected client_ip",
        );
    }

    #[test]
    fn a_non_default_key_with_a_non_hash_algorithm_is_accepted_and_ignored() {
        let config = parse(&with_backend(
            "[balancer]\nalgorithm = \"round_robin\"\nkey = \"url\"",
        ))
        .unwrap();
        assert_eq!(config.balancer.key, KeySource::Url);
        assert!(
            config
                .summary()
                .contains("key url is ignored by round_robin")
        );
    }

    #[test]
    fn a_non_prime_table_size_is_rejected_for_maglev() {
        assert_rejected(
            &with_backend("[balancer]\ntable_size = 65536"),
            "balancer.table_size",
            2,
            "table_size 65536 is not a prime number",
        );
    }

    #[test]
    fn a_table_size_smaller_than_the_total_weight_is_rejected() {
        let text = format!(
            "[balancer]\ntable_size = 7\n{}",
            backends(&[("\"a\"", "\"http://127.0.0.1:1\"", "weight = 10")])
        );
        assert_rejected(
            &text,
            "balancer.table_size",
            2,
            "smaller than the total backend weight 10",
        );
    }

    #[test]
    fn a_negative_table_size_is_rejected() {
        assert_rejected(
            &with_backend("[balancer]\ntable_size = -7"),
            "balancer.table_size",
            2,
            "must be a positive prime",
        );
    }

    #[test]
    fn table_size_is_only_checked_for_maglev() {
        let text = with_backend("[balancer]\nalgorithm = \"ring_hash\"\ntable_size = 100");
        assert_eq!(parse(&text).unwrap().balancer.table_size, 100);
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_bare_addresses() {
        let text = with_backend(
            "[balancer]\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.7\", \"::1\", \"fd00::/8\"]",
        );
        let nets: Vec<String> = parse(&text)
            .unwrap()
            .balancer
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "fd00::/8"]);
    }

    #[test]
    fn a_bad_cidr_is_rejected_with_its_index_and_line() {
        for bad in ["10.0.0.0/33", "10.0.0", "proxy.internal"] {
            let text = with_backend(&format!(
                "[balancer]\ntrusted_proxies = [\n  \"10.0.0.0/8\",\n  \"{bad}\",\n]"
            ));
            assert_rejected(&text, "balancer.trusted_proxies[1]", 4, "is not a CIDR");
        }
    }

    #[test]
    fn an_empty_hash_key_means_none() {
        let config = parse(&with_backend("[balancer]\nhash_key = \"\"")).unwrap();
        assert_eq!(config.balancer.hash_key, None);
    }

    #[test]
    fn a_hash_key_of_32_hex_characters_becomes_16_bytes() {
        let config = parse(&with_backend(
            "[balancer]\nhash_key = \"ffeeddccbbaa99887766554433221100\"",
        ))
        .unwrap();
        assert_eq!(
            config.balancer.hash_key,
            Some([
                0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
                0x11, 0x00
            ])
        );
    }

    #[test]
    fn a_hash_key_of_the_wrong_length_or_with_non_hex_characters_is_rejected() {
        for key in [
            "abc",
            "ffeeddccbbaa9988776655443322110",
            "ffeeddccbbaa998877665544332211000",
            "ffeeddccbbaa998877665544332211zz",
            "+feeddccbbaa99887766554433221100",
            "ffeeddccbbaa998877665544332211éé",
        ] {
            let text = with_backend(&format!("[balancer]\nhash_key = \"{key}\""));
            assert_rejected(&text, "balancer.hash_key", 2, "exactly 32 hex characters");
        }
    }

    #[test]
    fn bounded_load_accepts_zero_and_factors_above_one() {
        for (text, c) in [("0", 0.0), ("0.0", 0.0), ("1.01", 1.01), ("2", 2.0)] {
            let config =
                parse(&with_backend(&format!("[balancer]\nbounded_load = {text}"))).unwrap();
            assert_eq!(config.balancer.bounded_load, c);
        }
    }

    #[test]
    fn limits_have_defaults_and_reject_out_of_range_values() {
        assert_eq!(
            parse(&with_backend("")).unwrap().limits,
            LimitsConfig::default()
        );
        for (field, bad, message) in [
            ("max_header_bytes", "8191", "between 8192 and 16777216"),
            ("max_header_bytes", "16777217", "between 8192 and 16777216"),
            ("max_headers", "0", "between 1 and"),
            ("max_connections", "0", "between 1 and"),
            ("max_connections", "-5", "between 1 and"),
            ("max_in_flight_per_backend", "-1", "between 0 and"),
            (
                "max_body_bytes",
                "-1",
                "use 0 (no limit) or a size in bytes",
            ),
            ("header_timeout", "\"0s\"", "must be greater than zero"),
            ("header_timeout", "\"soon\"", "is not a duration"),
        ] {
            let text = with_backend(&format!("[limits]\n{field} = {bad}"));
            assert_rejected(&text, &format!("limits.{field}"), 2, message);
        }
    }

    #[test]
    fn panic_threshold_is_a_percentage_off_by_default() {
        let config = parse(&with_backend("")).unwrap();
        assert_eq!(config.balancer.panic_threshold, 0.0);
        for (text, percent) in [("0", 0.0), ("50", 50.0), ("33.3", 33.3), ("100", 100.0)] {
            let config = parse(&with_backend(&format!(
                "[balancer]\npanic_threshold = {text}"
            )))
            .unwrap();
            assert_eq!(config.balancer.panic_threshold, percent);
            assert_eq!(
                config
                    .summary()
                    .contains(&format!("panic below {percent}% healthy")),
                percent > 0.0
            );
        }
        for bad in ["-1", "100.5", "nan", "inf"] {
            let text = with_backend(&format!("[balancer]\npanic_threshold = {bad}"));
            assert_rejected(
                &text,
                "balancer.panic_threshold",
                2,
                "a percentage from 0 (off) to 100",
            );
        }
    }

    #[test]
    fn bounded_load_up_to_one_negative_or_not_finite_is_rejected() {
        for c in ["0.5", "1.0", "1", "-2", "nan", "inf"] {
            let text = with_backend(&format!("[balancer]\nbounded_load = {c}"));
            assert_rejected(
                &text,
                "balancer.bounded_load",
                2,
                "out of range; use 0 (off) or a factor above 1.0",
            );
        }
    }

    #[test]
    fn bounded_load_with_a_non_hash_algorithm_is_rejected() {
        let text =
            with_backend("[balancer]\nalgorithm = \"least_connections\"\nbounded_load = 1.25");
        assert_rejected(
            &text,
            "balancer.bounded_load",
            3,
            "only applies to the hash algorithms",
        );
        let off = with_backend("[balancer]\nalgorithm = \"least_connections\"\nbounded_load = 0");
        assert!(parse(&off).is_ok());
    }

    #[test]
    fn a_sticky_cookie_with_a_non_hash_algorithm_is_rejected() {
        let text = with_backend(
            "[balancer]\nalgorithm = \"round_robin\"\n[balancer.sticky_cookie]\nname = \"s\"",
        );
        assert_rejected(
            &text,
            "balancer.sticky_cookie",
            2,
            "needs maglev or ring_hash",
        );
    }

    #[test]
    fn a_sticky_cookie_name_must_be_a_cookie_token() {
        for name in ["", "my cookie", "a;b", "a,b", "é"] {
            let text = with_backend(&format!("[balancer.sticky_cookie]\nname = \"{name}\""));
            assert_rejected(
                &text,
                "balancer.sticky_cookie.name",
                2,
                "is not a valid cookie name",
            );
        }
    }

    #[test]
    fn a_zero_sticky_cookie_max_age_is_rejected() {
        let text = with_backend("[balancer.sticky_cookie]\nmax_age = \"0s\"");
        assert_rejected(
            &text,
            "balancer.sticky_cookie.max_age",
            2,
            "must be greater than zero",
        );
    }

    // --- health check, upstream, listener, admin -------------------------------

    #[test]
    fn a_health_path_must_start_with_a_slash() {
        assert_rejected(
            &with_backend("[health_check]\npath = \"health\""),
            "health_check.path",
            2,
            "must start with \"/\"",
        );
    }

    #[test]
    fn a_health_path_must_be_a_valid_url_path() {
        assert_rejected(
            &with_backend("[health_check]\npath = \"/health check\""),
            "health_check.path",
            2,
            "not a valid URL path",
        );
    }

    #[test]
    fn a_health_timeout_equal_to_the_interval_is_rejected() {
        let text = with_backend("[health_check]\ninterval = \"3s\"\ntimeout = \"3s\"");
        assert_rejected(
            &text,
            "health_check.timeout",
            3,
            "timeout 3s must be below interval 3s",
        );
    }

    #[test]
    fn an_interval_below_the_default_timeout_points_at_the_interval() {
        let text = with_backend("[health_check]\ninterval = \"1s\"");
        assert_rejected(
            &text,
            "health_check.interval",
            2,
            "interval 1s must be above timeout 2s (the default)",
        );
    }

    #[test]
    fn zero_intervals_and_timeouts_are_rejected() {
        for (section, key) in [
            ("health_check", "interval"),
            ("health_check", "timeout"),
            ("upstream", "connect_timeout"),
            ("upstream", "request_timeout"),
        ] {
            let text = with_backend(&format!("[{section}]\n{key} = \"0ms\""));
            assert_rejected(&text, &format!("{section}.{key}"), 2, "\"0ms\" is zero");
        }
    }

    #[test]
    fn a_zero_drain_timeout_is_allowed() {
        let config = parse(&with_backend("[listener]\ndrain_timeout = \"0s\"")).unwrap();
        assert_eq!(config.listener.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn a_bad_duration_is_rejected_with_its_field_and_line() {
        for bad in ["30", "fast", ""] {
            let text = with_backend(&format!(
                "[upstream]\nretries = 2\nrequest_timeout = \"{bad}\""
            ));
            assert_rejected(&text, "upstream.request_timeout", 3, "is not a duration");
        }
    }

    #[test]
    fn thresholds_of_zero_are_rejected() {
        for key in ["healthy_threshold", "unhealthy_threshold"] {
            let text = with_backend(&format!("[health_check]\n{key} = 0"));
            assert_rejected(
                &text,
                &format!("health_check.{key}"),
                2,
                "0 is out of range; it must be between 1 and",
            );
        }
    }

    #[test]
    fn negative_retries_are_rejected_and_zero_retries_are_allowed() {
        assert_rejected(
            &with_backend("[upstream]\nretries = -1"),
            "upstream.retries",
            2,
            "-1 is out of range",
        );
        assert_eq!(
            parse(&with_backend("[upstream]\nretries = 0"))
                .unwrap()
                .upstream
                .retries,
            0
        );
    }

    #[test]
    fn a_listener_address_must_be_an_ip_and_port() {
        for bad in ["localhost:8080", "127.0.0.1", "127.0.0.1:99999"] {
            let text = with_backend(&format!("[listener]\naddress = \"{bad}\""));
            assert_rejected(&text, "listener.address", 2, "is not an IP:PORT address");
        }
    }

    #[test]
    fn an_admin_address_must_be_an_ip_and_port() {
        assert_rejected(
            &with_backend("[admin]\naddress = \":9900\""),
            "admin.address",
            2,
            "is not an IP:PORT address",
        );
    }

    #[test]
    fn admin_and_listener_on_the_same_address_are_rejected() {
        let text = with_backend(
            "[listener]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:8080\"",
        );
        assert_rejected(&text, "admin.address", 4, "also the listener address");
        let both_port_zero = with_backend(
            "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"",
        );
        assert!(parse(&both_port_zero).is_ok());
    }

    // --- error rendering and the summary -----------------------------------------

    #[test]
    fn load_names_the_file_when_it_cannot_be_read() {
        let e = Config::load(Path::new("/nonexistent/affinity.toml")).unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Io);
        assert_eq!(e.file(), Path::new("/nonexistent/affinity.toml"));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/affinity.toml: cannot read the config file: "),
            "{e}"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "# ééé\n[[backends]]\nname = \"é\" ; url = \"http://127.0.0.1:1\"\n";
        let e = error(text);
        assert_eq!(
            e.location(),
            Some(Location {
                line: 3,
                column: 12
            }),
            "{e}"
        );
        assert_eq!(location("aé\nb", 3), Location { line: 1, column: 3 });
        assert_eq!(location("aé\nb", 2), Location { line: 1, column: 2 });
        assert_eq!(location("a", 99), Location { line: 1, column: 2 });
    }

    #[test]
    fn the_summary_lists_the_pool_with_each_backends_share() {
        let text = format!(
            "[admin]\n{}",
            backends(&[
                ("\"server-1\"", "\"http://127.0.0.1:9001\"", "weight = 1"),
                ("\"server-22\"", "\"http://127.0.0.1:9002\"", "weight = 3"),
            ])
        );
        let summary = parse(&text).unwrap().summary();
        let expected = "\
listener      127.0.0.1:8080 (drain timeout 30s)
admin         127.0.0.1:9900
balancer      maglev on client_ip, table size 65537
health check  GET /health every 5s, timeout 2s, restore after 2 successes, remove after 2 failures
upstream      connect timeout 1s, request timeout 30s, 1 retry
limits        header timeout 10s, head 65536 bytes / 100 headers, body unlimited, 10000 connections, unlimited in flight per backend
backends      2, total weight 4
  server-1   http://127.0.0.1:9001  weight    1   25.0%
  server-22  http://127.0.0.1:9002  weight    3   75.0%
";
        assert_eq!(summary, expected);
    }
}
