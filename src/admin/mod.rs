//! The admin endpoint: what the proxy is doing, for operators and their
//! tools, on a listener of its own (`[admin] address`), never on the proxy
//! port.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | a self-contained HTML page: the healthy count, the last reload (red when it failed), then one table per pool (its algorithm, key, last rebuild and healthy count) with one row per backend: its health and why it is down, a bar for its share of the table, its requests in flight and its last minute; refreshed from `status` (a relative path: it works behind a path prefix) every 3 s |
//! | `GET /healthz` | `200 ok` while serving, `503 draining` once a shutdown began |
//! | `GET /status` | JSON: version, uptime, the last config reload (`null` before the first; its error if it failed), the listeners, the routes, and `pools`: each with its name, algorithm, key, table size or ring points, last rebuild, and every configured backend with its health, last probe, load, share and last minute of requests (count, 5xx share, p99). With a single pool, that pool's fields are also at the top level (as before there were pools) |
//! | `GET /lookup?pool=P&key=K` | JSON: the hash of key bytes `K` in pool `P` (`pool=` may be left out when there is one pool), the backend it goes to now and its fallback order; `ip=A` and `url=/p?q` instead of `key=` build the key bytes a request from client `A` or for target `/p?q` hashes |
//! | `GET /metrics` | the Prometheus exposition ([`crate::admin::metrics`]): OpenMetrics text when the `Accept` header asks for it, else the text format 0.0.4 |
//!
//! `HEAD` works wherever `GET` does; another method gets `405` with `Allow:
//! GET, HEAD`, an unknown path `404`. Every answer reads each pool's current
//! [`Snapshot`] once, so it describes one consistent table per pool, the one requests
//! starting at the same moment use. `/lookup` hashes exactly the bytes the
//! request path hashes ([`crate::balance::key`]) with the same hasher and asks the
//! same selector, so its answer is where such a request goes (with bounded
//! load on, where it goes while its backend is below its load bound).
//!
//! [`start`] runs the server on the current tokio runtime; dropping the
//! returned [`AdminServer`] stops it.

pub mod metrics;
pub mod process;
mod reply;
pub mod write;

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::metrics::{Format, Metrics};
use crate::admin::reply::{AdminResponse, ErrorBody, json, text, with_type};
use crate::balance::key::{self, split_pin};
use crate::balance::selector::HashTable;
use crate::config::KeySource;
use crate::pool::routing::{Pools, Routed, Routing};
use crate::pool::{Override, Pool, Selector, Snapshot};

/// The status page, served as is.
const PAGE: &str = include_str!("page.html");

/// How long an admin client may take to send a request's headers (the
/// proxy listener uses `limits.header_timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The page may load nothing but itself and `/status`.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
                           script-src 'unsafe-inline'; connect-src 'self'";

/// A running admin server; dropping it stops the server and closes its
/// connections.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// The address it listens on (the actual port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the admin endpoint for `pool` on `listener` (bound by the
/// listener part, which decides who may share its address), on the current
/// runtime. `draining` turns `/healthz` to `503` once set.
pub fn start(
    listener: TcpListener,
    pools: Arc<Pools>,
    draining: Arc<AtomicBool>,
) -> io::Result<AdminServer> {
    let local_addr = listener.local_addr()?;
    let admin = Arc::new(Admin {
        metrics: Metrics::new(pools.stats()),
        pools,
        draining,
        started: Instant::now(),
    });
    tracing::info!(address = %local_addr, "admin endpoint on {local_addr}");
    let task = tokio::spawn(accept_loop(listener, admin));
    Ok(AdminServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, admin: Arc<Admin>) {
    // Owned here: aborting this task drops them, which aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admin = admin.clone();
                    let service = service_fn(move |request: Request<Incoming>| {
                        let admin = admin.clone();
                        async move {
                            if write::is_write_path(request.uri().path()) {
                                let response = write::respond(&admin.pools, request, peer).await;
                                return Ok::<_, Infallible>(response);
                            }
                            Ok(admin.respond(request.method(), request.uri(), request.headers()))
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "admin connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What the admin endpoint answers from.
struct Admin {
    pools: Arc<Pools>,
    /// The pool's counters, registered under their Prometheus names.
    metrics: Metrics,
    draining: Arc<AtomicBool>,
    started: Instant,
}

impl Admin {
    /// The answer to one request (the body is ignored: nothing takes one).
    fn respond(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> AdminResponse {
        let path = uri.path();
        if !matches!(path, "/" | "/healthz" | "/status" | "/lookup" | "/metrics") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/" => {
                let mut response = with_type(StatusCode::OK, "text/html; charset=utf-8", PAGE);
                response.headers_mut().insert(
                    "content-security-policy",
                    HeaderValue::from_static(PAGE_POLICY),
                );
                response
            }
            "/healthz" if self.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/status" => {
                let routing = self.pools.routing_full();
                let snapshots: Vec<(&Routed, Arc<Snapshot>)> = routing
                    .pools()
                    .iter()
                    .map(|p| (p, p.pool.snapshot()))
                    .collect();
                json(StatusCode::OK, &self.status(&routing, &snapshots))
            }
            "/lookup" => {
                let routing = self.pools.routing_full();
                let query = uri.query().unwrap_or("");
                let answer = lookup_pool(&routing, query).and_then(|snapshot| {
                    lookup(&snapshot, query).map(|l| json(StatusCode::OK, &l))
                });
                answer.unwrap_or_else(|(status, error)| json(status, &ErrorBody { error }))
            }
            _ => {
                let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
                let format = Format::from_accept(accept);
                let snapshots = self
                    .pools
                    .routing()
                    .pools()
                    .iter()
                    .map(|p| p.pool.snapshot())
                    .collect();
                let certificates = self.pools.stats().certificates();
                let text = self.metrics.encode_all(snapshots, certificates, format);
                with_type(StatusCode::OK, format.content_type(), text)
            }
        }
    }

    fn status<'a>(
        &'a self,
        routing: &'a Routing,
        snapshots: &'a [(&'a Routed, Arc<Snapshot>)],
    ) -> Status<'a> {
        let config = routing.config();
        let pools: Vec<PoolStatus<'a>> = snapshots
            .iter()
            .map(|(routed, snapshot)| pool_status(&routed.pool, snapshot))
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            draining: self.draining.load(Ordering::Relaxed),
            last_reload: self.pools.stats().last_reload().map(|r| ReloadStatus {
                at: timestamp(r.at),
                ok: r.ok,
                error: r.error,
            }),
            listeners: self
                .pools
                .running()
                .iter()
                .map(|l| ListenerStatus {
                    name: &l.name,
                    address: l.address.to_string(),
                    protocol: l.protocol.as_str(),
                    tls: l.tls.is_some(),
                    pool: config.listener(&l.name).and_then(|c| c.pool.as_deref()),
                })
                .collect(),
            certificates: self
                .pools
                .stats()
                .certificates()
                .into_iter()
                .map(|c| CertificateStatus {
                    expires_in_seconds: match c.not_after.duration_since(SystemTime::now()) {
                        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
                    },
                    not_after: timestamp(c.not_after),
                    listener: c.listener,
                    names: c.names,
                    file: c.cert,
                })
                .collect(),
            routes: config
                .routes
                .iter()
                .map(|r| RouteStatus {
                    listener: r.listener.as_deref(),
                    host: r.host.as_ref().map(ToString::to_string),
                    path_prefix: &r.path_prefix,
                    strip_prefix: r.strip_prefix,
                    pool: &r.pool,
                })
                .collect(),
            single: match pools.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            },
            pools,
        }
    }
}

/// One pool's part of `/status`.
fn pool_status<'a>(pool: &Pool, snapshot: &'a Snapshot) -> PoolStatus<'a> {
    let config = snapshot.config();
    let (table_size, ring_points) = match snapshot.selector() {
        Selector::Hash { selector, .. } => match selector.table() {
            table @ HashTable::Maglev(_) => (Some(table.size()), None),
            table @ HashTable::Ring(_) => (None, Some(table.size())),
        },
        Selector::Policy(_) => (None, None),
    };
    let shares = snapshot.shares();
    let now_ns = pool.now_ns();
    let backends = snapshot
        .backends()
        .iter()
        .zip(shares)
        .map(|(b, share)| {
            let health = b.state().health();
            let minute = b.state().last_minute(now_ns);
            BackendStatus {
                name: b.name(),
                url: b.url().to_string(),
                weight: b.weight(),
                healthy: b.is_healthy(),
                draining: b.is_draining(),
                gone: b.is_gone(),
                slow_start: b.progress(),
                overrides: b.overrides(),
                since: timestamp(health.since),
                last_probe: health.last_probe.map(|p| ProbeStatus {
                    at: timestamp(p.at),
                    ok: p.ok,
                    detail: p.detail,
                }),
                in_flight: b.state().in_flight(),
                requests_total: b.state().requests(),
                last_minute: LastMinuteStatus {
                    requests: minute.requests,
                    errors_5xx_share: minute.errors_5xx_share(),
                    p99_ms: minute.p99.map(|p99| p99.as_secs_f64() * 1e3),
                    pinned_requests: minute.pinned,
                    pinned_per_second: minute.pinned as f64 / LAST_MINUTE_SECONDS,
                },
                share,
            }
        })
        .collect();
    PoolStatus {
        name: &config.name,
        algorithm: config.balancer.algorithm.as_str(),
        key: snapshot.key_source().to_string(),
        table_size,
        ring_points,
        bounded_load: config.balancer.bounded_load,
        healthy_backends: snapshot.healthy_count(),
        panic_mode: snapshot.in_panic(),
        last_rebuild: snapshot.rebuild().map(|r| RebuildStatus {
            at: timestamp(r.at),
            duration_seconds: r.duration.as_secs_f64(),
            moved: r.moved,
            cause: r.cause,
        }),
        backends,
    }
}

/// `/status`.
#[derive(Debug, Serialize)]
struct Status<'a> {
    version: &'static str,
    uptime_seconds: f64,
    draining: bool,
    /// `null` before the first reload.
    last_reload: Option<ReloadStatus>,
    listeners: Vec<ListenerStatus<'a>>,
    /// The certificates the TLS listeners serve.
    certificates: Vec<CertificateStatus>,
    /// In config order (`--check` prints them in match order).
    routes: Vec<RouteStatus<'a>>,
    /// With a single pool, its fields at the top level too, as before
    /// there were several.
    #[serde(flatten)]
    single: Option<PoolStatus<'a>>,
    pools: Vec<PoolStatus<'a>>,
}

#[derive(Debug, Serialize)]
struct ListenerStatus<'a> {
    name: &'a str,
    address: String,
    protocol: &'static str,
    tls: bool,
    /// Where requests that match no route go; `null`: `404`.
    pool: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct CertificateStatus {
    listener: String,
    names: Vec<String>,
    not_after: String,
    /// Seconds until it expires (negative once it has).
    expires_in_seconds: i64,
    file: String,
}

#[derive(Debug, Serialize)]
struct RouteStatus<'a> {
    /// `null`: every http listener.
    listener: Option<&'a str>,
    /// `null`: any host.
    host: Option<String>,
    path_prefix: &'a str,
    strip_prefix: bool,
    pool: &'a str,
}

/// One pool in `/status`.
#[derive(Debug, Clone, Serialize)]
struct PoolStatus<'a> {
    name: &'a str,
    algorithm: &'static str,
    key: String,
    /// Maglev only.
    table_size: Option<usize>,
    /// Ring hash only.
    ring_points: Option<usize>,
    bounded_load: f64,
    healthy_backends: usize,
    /// Too few healthy backends: the selector routes over all of them.
    panic_mode: bool,
    last_rebuild: Option<RebuildStatus>,
    backends: Vec<BackendStatus<'a>>,
}

#[derive(Debug, Clone, Serialize)]
struct ReloadStatus {
    at: String,
    ok: bool,
    /// Why it failed; `null` when it succeeded.
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct RebuildStatus {
    at: String,
    duration_seconds: f64,
    moved: f64,
    cause: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct BackendStatus<'a> {
    name: &'a str,
    url: String,
    weight: u32,
    healthy: bool,
    /// No new keys or sessions; pinned sessions and requests in flight still
    /// reach it.
    draining: bool,
    /// Discovery no longer finds it: kept in the table, unroutable, until a
    /// backend is added (so that its leaving moved only its own keys).
    gone: bool,
    /// Slow-start progress, 0 to 1: the part of its share it has taken back
    /// (1: all of it, or not ramping).
    slow_start: f64,
    /// What the admin write API overrides of the file's settings.
    overrides: Override,
    /// When its health last changed (or the pool first had it).
    since: String,
    last_probe: Option<ProbeStatus>,
    in_flight: u64,
    requests_total: u64,
    last_minute: LastMinuteStatus,
    share: f64,
}

/// A backend's requests of the last minute (55 to 60 s: see
/// [`crate::pool::recent`]), counted when they finished, by the backend that
/// answered or is to blame for the proxy's 502 or 504.
#[derive(Debug, Clone, Serialize)]
struct LastMinuteStatus {
    requests: u64,
    /// `null` without requests.
    errors_5xx_share: Option<f64>,
    /// The 99th percentile of the time from arrival to the end of the
    /// response, within a bucket (a third to a half of its value); `null`
    /// without requests.
    p99_ms: Option<f64>,
    /// Requests a pinned sticky cookie sent here: when a draining backend's
    /// are near 0 (and so is `in_flight`), it can be stopped without losing
    /// a session.
    pinned_requests: u64,
    /// The same, per second.
    pinned_per_second: f64,
}

/// The seconds the last minute covers, for rates.
const LAST_MINUTE_SECONDS: f64 = 60.0;

#[derive(Debug, Clone, Serialize)]
struct ProbeStatus {
    at: String,
    ok: bool,
    detail: String,
}

/// `/lookup`.
#[derive(Debug, Serialize)]
struct Lookup<'a> {
    /// The key bytes hashed (lossy UTF-8).
    key: String,
    /// What the request path keys on (`balancer.key`, or the sticky cookie).
    key_source: String,
    /// How the key bytes were given: `key`, `ip` or `url`.
    given_as: &'static str,
    /// The pool asked about.
    pool: &'a str,
    /// The key hash, 16 hex digits, as the access log writes it.
    hash: String,
    /// Where the key goes now; `null` when no backend is healthy.
    backend: Option<&'a str>,
    /// Its fallback order: healthy backends, `backend` first.
    fallback: Vec<&'a str>,
    /// The bounded-load factor (0: off).
    bounded_load: f64,
    /// A pinned sticky cookie's pin named a routable backend, which
    /// `backend` is.
    pinned: bool,
    /// The key's backend with every backend healthy, none draining or
    /// ramping.
    first_choice: Option<&'a str>,
    /// Why `backend` is not `first_choice` (without a pin): `unhealthy`,
    /// `draining`, `slow_start`.
    detour: Vec<&'static str>,
    /// When the key's pick is in slow start: it, its progress, and whether
    /// the key has gone back to it yet (else it is held back on `backend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_start: Option<RampStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct RampStatus<'a> {
    backend: &'a str,
    progress: f64,
    admitted: bool,
}

const BOUNDED_LOAD_NOTE: &str = "bounded_load is on: backend is the key's pick with no load; \
                                 while it is at its load bound, requests go on along the fallback order";

type LookupError = (StatusCode, String);

fn bad_request(error: impl Into<String>) -> LookupError {
    (StatusCode::BAD_REQUEST, error.into())
}

/// The snapshot of the pool `/lookup?<query>` asks about: `pool=P`, which
/// may be left out when there is one pool.
fn lookup_pool(routing: &Routing, query: &str) -> Result<Arc<Snapshot>, LookupError> {
    let named = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("pool="))
        .next_back()
        .map(|name| String::from_utf8_lossy(&form_decode(name)).into_owned());
    let names = || {
        let names: Vec<&str> = routing.pools().iter().map(|p| &**p.pool.name()).collect();
        names.join(", ")
    };
    match (named, routing.pools()) {
        (Some(name), _) => routing
            .pool(&name)
            .map(|p| p.pool.snapshot())
            .ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    format!("no pool {name:?}; the pools are {}", names()),
                )
            }),
        (None, [only]) => Ok(only.pool.snapshot()),
        (None, _) => Err(bad_request(format!(
            "there are several pools: add pool=NAME (one of {})",
            names()
        ))),
    }
}

/// Answers `/lookup?<query>` from `snapshot` (a `pool=` parameter is the
/// caller's).
fn lookup<'a>(snapshot: &'a Snapshot, query: &str) -> Result<Lookup<'a>, LookupError> {
    if snapshot.backends().is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the pool has no backends (yet): it discovers them and has found none".to_owned(),
        ));
    }
    let Some(hasher) = snapshot.selector().hasher() else {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "balancer.algorithm is {}, which keeps no key mapping: /lookup answers for maglev and ring_hash",
                snapshot.config().balancer.algorithm
            ),
        ));
    };
    let mut given = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match name {
            "key" => "key",
            "ip" => "ip",
            "url" => "url",
            "pool" => continue,
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {:?}: use one of key=K, ip=ADDRESS or url=/PATH",
                    String::from_utf8_lossy(&form_decode(other))
                )));
            }
        };
        if given.is_some() {
            return Err(bad_request("give exactly one of key=, ip= or url="));
        }
        given = Some((name, form_decode(value)));
    }
    let Some((given_as, value)) = given else {
        return Err(bad_request("give one of key=K, ip=ADDRESS or url=/PATH"));
    };
    let source = snapshot.key_source();
    let bytes = match given_as {
        "ip" => {
            if snapshot.config().balancer.sticky_cookie.is_some() {
                return Err(bad_request(
                    "with a sticky cookie a client without one gets a new random session, \
                     not its address: use key=SESSION",
                ));
            }
            let accepts_ip = matches!(
                source,
                KeySource::ClientIp | KeySource::Header(_) | KeySource::Cookie(_)
            );
            if !accepts_ip {
                return Err(bad_request(format!(
                    "the key is {source}, which never hashes a client address: use url= or key="
                )));
            }
            let ip: IpAddr = std::str::from_utf8(&value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad_request("ip= needs an IP address such as 192.0.2.7"))?;
            let (uri, headers) = (Uri::from_static("/"), HeaderMap::new());
            key::request_key(&KeySource::ClientIp, &uri, &headers, ip, &[])
                .as_bytes()
                .to_vec()
        }
        "url" => {
            if !matches!(source, KeySource::Url | KeySource::Path) {
                return Err(bad_request(format!(
                    "the key is {source}, not url or path: use key= (or ip= for the client address)"
                )));
            }
            let uri = Uri::try_from(value)
                .map_err(|e| bad_request(format!("url= needs a request target: {e}")))?;
            let headers = HeaderMap::new();
            key::request_key(source, &uri, &headers, IpAddr::from([0, 0, 0, 0]), &[])
                .as_bytes()
                .to_vec()
        }
        _ => value,
    };
    // A pinned sticky cookie's value: the session id is the key, and a pin
    // that names a routable backend decides.
    let pins = snapshot
        .config()
        .balancer
        .sticky_cookie
        .as_ref()
        .is_some_and(|s| s.pin);
    let (bytes, pin) = match pins {
        true => split_pin(&bytes),
        false => (&bytes[..], None),
    };
    let hash = hasher.hash(bytes);
    let mut order = snapshot.fallback_order(hash);
    let pinned = pin.and_then(|pin| snapshot.pinned(pin));
    if let Some(pinned) = pinned.and_then(|i| snapshot.backends().get(i)) {
        order.retain(|b| b.name() != pinned.name());
        order.insert(0, pinned);
    }
    let bounded_load = snapshot.config().balancer.bounded_load;
    let name = |i: usize| snapshot.backends().get(i).map(|b| &**b.name());
    let chosen = order.first().and_then(|b| {
        snapshot
            .backends()
            .iter()
            .position(|c| c.name() == b.name())
    });
    let mut detour = Vec::new();
    if let (Some(chosen), None) = (chosen, pinned) {
        let d = snapshot.detour(hash, chosen);
        for (on, reason) in [
            (d.unhealthy, "unhealthy"),
            (d.draining, "draining"),
            (d.slow_start, "slow_start"),
        ] {
            if on {
                detour.push(reason);
            }
        }
    }
    let slow_start = snapshot.ramp_of(hash).and_then(|(b, admitted)| {
        let backend = snapshot.backends().get(b)?;
        Some(RampStatus {
            backend: backend.name(),
            progress: backend.progress(),
            admitted,
        })
    });
    Ok(Lookup {
        first_choice: snapshot.first_choice(hash).and_then(name),
        detour,
        slow_start,
        pinned: pinned.is_some(),
        key: String::from_utf8_lossy(bytes).into_owned(),
        key_source: source.to_string(),
        given_as,
        pool: &snapshot.config().name,
        hash: format!("{hash:016x}"),
        backend: order.first().map(|b| &**b.name()),
        fallback: order.iter().map(|b| &**b.name()).collect(),
        bounded_load,
        note: (bounded_load > 0.0).then_some(BOUNDED_LOAD_NOTE),
    })
}

/// A query-string value as `application/x-www-form-urlencoded` means it:
/// `+` is a space, `%XX` a byte. The result is bytes, since a key need not
/// be UTF-8.
fn form_decode(value: &str) -> Vec<u8> {
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).collect()
}

/// RFC 3339 UTC with milliseconds, such as `2025-01-31T12:00:00.123Z`.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http_body_util::BodyExt;
    use hyper::header::CONTENT_TYPE;

    use super::*;
    use crate::balance::hash::KeyHasher;
    use crate::config::Config;

    fn admin(text: &str) -> Admin {
        let config = Config::from_toml(text, Path::new("t.toml")).unwrap();
        let pools = Arc::new(Pools::unchecked(Arc::new(config)).unwrap());
        Admin {
            metrics: Metrics::new(pools.stats()),
            pools,
            draining: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        }
    }

    impl Admin {
        /// The first pool.
        fn pool(&self) -> Arc<Pool> {
            self.pools.routing().pools()[0].pool.clone()
        }
    }

    fn pool_text(sections: &str, n: usize) -> String {
        let mut text = format!("{sections}\n");
        for i in 0..n {
            text.push_str(&format!(
                "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\n",
                9000 + i
            ));
        }
        text
    }

    async fn get(admin: &Admin, method: Method, target: &str) -> (StatusCode, HeaderMap, String) {
        let uri: Uri = target.parse().unwrap();
        let response = admin.respond(&method, &uri, &HeaderMap::new());
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn get_json(admin: &Admin, target: &str) -> (StatusCode, serde_json::Value) {
        let (status, headers, body) = get(admin, Method::GET, target).await;
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        (status, serde_json::from_str(&body).unwrap())
    }

    #[test]
    fn form_decoding_turns_plus_into_space_and_percent_escapes_into_bytes() {
        assert_eq!(form_decode("a+b%2Bc"), b"a b+c");
        assert_eq!(form_decode("%2Fk%2F1%3Fx%3D1"), b"/k/1?x=1");
        assert_eq!(form_decode("%ff%zz"), b"\xff%zz");
        assert_eq!(form_decode(""), b"");
    }

    #[tokio::test]
    async fn healthz_says_ok_until_draining_begins() {
        let admin = admin(&pool_text("", 2));
        assert_eq!(
            get(&admin, Method::GET, "/healthz").await.2,
            "ok\n".to_owned()
        );
        admin.draining.store(true, Ordering::Relaxed);
        let (status, _, body) = get(&admin, Method::GET, "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
        let admin = admin(&pool_text("", 2));
        assert_eq!(
            get(&admin, Method::GET, "/nope").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&admin, Method::GET, "/status/").await.0,
            StatusCode::NOT_FOUND
        );
        for path in ["/", "/healthz", "/status", "/lookup?key=a", "/metrics"] {
            let (status, headers, _) = get(&admin, Method::POST, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(headers[ALLOW], "GET, HEAD", "{path}");
            assert_eq!(
                get(&admin, Method::HEAD, path).await.0,
                StatusCode::OK,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn status_describes_the_pool_and_every_backend() {
        let admin = admin(&pool_text("[balancer]\nkey = \"header:x-user\"", 4));
        let (status, body) = get_json(&admin, "/status").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(body["algorithm"], "maglev");
        assert_eq!(body["key"], "header:x-user");
        assert_eq!(body["table_size"], 65537);
        assert!(body["ring_points"].is_null());
        assert!(body["last_rebuild"].is_null());
        let backends = body["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 4);
        assert_eq!(backends[2]["name"], "b2");
        assert_eq!(backends[2]["url"], "http://127.0.0.1:9002/");
        assert_eq!(backends[2]["healthy"], true);
        assert_eq!(backends[2]["in_flight"], 0);
        let total: f64 = backends.iter().map(|b| b["share"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[tokio::test]
    async fn status_reports_the_last_reload_and_each_backends_last_minute() {
        let admin = admin(&pool_text("", 2));
        let body = get_json(&admin, "/status").await.1;
        assert!(body["last_reload"].is_null(), "{body}");
        let quiet = &body["backends"][0]["last_minute"];
        assert_eq!(quiet["requests"], 0);
        assert!(quiet["errors_5xx_share"].is_null() && quiet["p99_ms"].is_null());

        admin
            .pools
            .stats()
            .reload_failed("t.toml: bad\nt.toml: worse".to_owned());
        let state = admin.pool().snapshot().backends()[1].state().clone();
        let now = admin.pool().now_ns();
        state.record_finished(200, Duration::from_millis(4), now);
        state.record_finished(502, Duration::from_millis(4), now);
        let body = get_json(&admin, "/status").await.1;
        assert_eq!(body["last_reload"]["ok"], false);
        assert_eq!(body["last_reload"]["error"], "t.toml: bad\nt.toml: worse");
        assert!(body["last_reload"]["at"].as_str().unwrap().ends_with('Z'));
        let busy = &body["backends"][1]["last_minute"];
        assert_eq!(busy["requests"], 2);
        assert_eq!(busy["errors_5xx_share"], 0.5);
        let p99 = busy["p99_ms"].as_f64().unwrap();
        assert!((3.0..=6.0).contains(&p99), "{p99}");

        admin.pool().stats().reload_succeeded();
        let body = get_json(&admin, "/status").await.1;
        assert_eq!(body["last_reload"]["ok"], true);
        assert!(body["last_reload"]["error"].is_null());
    }

    #[tokio::test]
    async fn status_of_a_ring_gives_its_points_and_of_a_policy_the_weight_shares() {
        let ring = admin(&pool_text("[balancer]\nalgorithm = \"ring_hash\"", 3));
        let body = get_json(&ring, "/status").await.1;
        assert!(body["table_size"].is_null());
        assert_eq!(body["ring_points"], 3 * 1024);
        let policy = admin(&pool_text("[balancer]\nalgorithm = \"round_robin\"", 4));
        let body = get_json(&policy, "/status").await.1;
        assert!(body["table_size"].is_null() && body["ring_points"].is_null());
        assert_eq!(body["backends"][0]["share"], 0.25);
    }

    #[tokio::test]
    async fn lookup_hashes_the_given_key_bytes_and_answers_the_selectors_pick() {
        let admin = admin(&pool_text("[balancer]\nkey = \"url\"", 5));
        let snapshot = admin.pool().snapshot();
        for (query, bytes) in [
            ("key=%2Fa%2Fb%3Fx%3D1", "/a/b?x=1"),
            ("url=/a/b%3Fx%3D1", "/a/b?x=1"),
            ("url=http://example.com/p", "/p"),
        ] {
            let (status, body) = get_json(&admin, &format!("/lookup?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            let hash = KeyHasher::default().hash(bytes.as_bytes());
            assert_eq!(body["hash"], format!("{hash:016x}"), "{query}");
            assert_eq!(body["key"], bytes);
            let pick = snapshot.next_backend(hash, &[], 0).unwrap();
            assert_eq!(
                body["backend"],
                **snapshot.backends()[pick].name(),
                "{query}"
            );
            let fallback: Vec<&str> = body["fallback"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(fallback.len(), 5);
            assert_eq!(fallback[0], body["backend"]);
            assert!(body.get("note").is_none());
        }
    }

    #[tokio::test]
    async fn lookup_by_ip_hashes_the_canonical_address_text() {
        let admin = admin(&pool_text("", 3));
        let body = get_json(&admin, "/lookup?ip=::ffff:192.0.2.7").await.1;
        assert_eq!(body["key"], "192.0.2.7");
        let hash = KeyHasher::default().hash(b"192.0.2.7");
        assert_eq!(body["hash"], format!("{hash:016x}"));
    }

    #[tokio::test]
    async fn lookup_refuses_what_it_cannot_answer() {
        let url_keys = admin(&pool_text("[balancer]\nkey = \"url\"", 2));
        for query in ["", "x=1", "key=a&url=/b", "ip=10.0.0.1", "key=a&key=b"] {
            let (status, body) = get_json(&url_keys, &format!("/lookup?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(body["error"].as_str().unwrap().len() > 10);
        }
        let ip_keys = admin(&pool_text("", 2));
        for query in ["ip=nonsense", "url=/a"] {
            assert_eq!(
                get_json(&ip_keys, &format!("/lookup?{query}")).await.0,
                StatusCode::BAD_REQUEST,
                "{query}"
            );
        }
        let sticky = admin(&pool_text(
            "[balancer.sticky_cookie]\nname = \"sid\"\nmax_age = \"1h\"",
            2,
        ));
        assert_eq!(
            get_json(&sticky, "/lookup?ip=10.0.0.1").await.0,
            StatusCode::BAD_REQUEST
        );
        let (status, body) = get_json(&sticky, "/lookup?key=abc").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["key_source"], "cookie:sid");
        let policy = admin(&pool_text(
            "[balancer]\nalgorithm = \"least_connections\"",
            2,
        ));
        let (status, body) = get_json(&policy, "/lookup?key=a").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("least_connections"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn with_bounded_load_lookup_says_it_answers_the_unloaded_pick() {
        let admin = admin(&pool_text("[balancer]\nbounded_load = 1.25", 3));
        let body = get_json(&admin, "/lookup?key=abc").await.1;
        assert_eq!(body["bounded_load"], 1.25);
        assert!(body["note"].as_str().unwrap().contains("no load"));
    }

    #[tokio::test]
    async fn metrics_follow_the_accept_header() {
        let admin = admin(&pool_text("", 2));
        let uri: Uri = "/metrics".parse().unwrap();
        let plain = admin.respond(&Method::GET, &uri, &HeaderMap::new());
        assert_eq!(
            plain.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let mut accept = HeaderMap::new();
        accept.insert(
            ACCEPT,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0"),
        );
        let open = admin.respond(&Method::GET, &uri, &accept);
        assert_eq!(
            open.headers()[CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = open.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"# EOF\n"));
    }

    #[tokio::test]
    async fn the_page_is_html_that_loads_nothing_from_elsewhere() {
        let admin = admin(&pool_text("", 2));
        let (status, headers, body) = get(&admin, Method::GET, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(headers.contains_key("content-security-policy"));
        assert!(body.starts_with("<!doctype html>"));
        assert!(!body.contains("http://") && !body.contains("https://"));
        assert!(!body.contains("innerHTML"));
    }
}
