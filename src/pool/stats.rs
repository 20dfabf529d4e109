//! The counters the pool, the request path and the listener record as
//! things happen: requests by backend and status, their durations, retries,
//! health transitions, table rebuilds, config reloads and client
//! connections.
//!
//! One [`Stats`] belongs to the [`crate::pool::routing::Pools`] and lives as long as
//! the proxy: every pool records into it with its name as the `pool` label,
//! and counters keep counting across snapshots and reloads (a removed pool's
//! counters stay, as Prometheus expects of counters). Recording is a few
//! atomic operations (plus a read-locked label lookup in a family) and never
//! blocks a request. The families are `prometheus-client`'s metric types,
//! plain atomic numbers; this module does not name, describe or render them:
//! [`crate::admin::metrics`] registers them under their Prometheus names and
//! renders them with the gauges it reads from the current snapshot.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::pool::health::Transition;

/// The `backend` label of requests no backend is to blame for.
pub const NO_BACKEND: &str = "";
/// The `pool` label of requests no route took to a pool (`404`, or
/// refused before routing).
pub const NO_POOL: &str = "";

/// Upper bounds of the request duration buckets, in seconds: 1 ms to 30 s.
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of `affinity_health_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The backend's pool.
    pub pool: Arc<str>,
    /// The backend's name.
    pub backend: String,
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
}

/// Labels of `affinity_discovery_lookups_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// The pool that discovers.
    pub pool: Arc<str>,
    /// What it looks up (`_http._tcp.api.internal`, `api.internal:8080`).
    pub name: Arc<str>,
    /// `ok`, `empty`, `servfail`, `nxdomain`, `timeout` or `error`.
    pub result: &'static str,
}

/// Labels of `affinity_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The pool the request was routed to, or [`NO_POOL`].
    pub pool: Arc<str>,
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
    /// The status the client got.
    pub code: u16,
}

/// Labels of the per-backend families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend's pool, or [`NO_POOL`].
    pub pool: Arc<str>,
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
}

/// Labels of `affinity_upstream_retries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// The backend's pool.
    pub pool: Arc<str>,
    /// The backend that failed.
    pub backend: Arc<str>,
    /// `connect_error` or `upstream_error`.
    pub reason: &'static str,
}

/// Labels of `affinity_tcp_connections_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    /// The backend's pool.
    pub pool: Arc<str>,
    /// The backend (`""` when none could be connected).
    pub backend: Arc<str>,
    /// How it ended: `closed`, `idle_timeout`, `client_error`,
    /// `backend_error`, `shutdown`, `no_backend`.
    pub outcome: &'static str,
}

/// Labels of `affinity_tcp_bytes_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpBytesLabels {
    /// The backend's pool.
    pub pool: Arc<str>,
    /// The backend.
    pub backend: Arc<str>,
    /// `to_backend` or `to_client`.
    pub direction: &'static str,
}

/// Labels of the per-pool families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name.
    pub pool: Arc<str>,
}

/// Labels of `affinity_tls_handshakes_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// The listener's name.
    pub listener: Arc<str>,
    /// `success`, `failure` or `timeout`.
    pub result: &'static str,
    /// `TLSv1.3` or `TLSv1.2` for a success, `""` otherwise.
    pub version: &'static str,
}

/// Labels of `affinity_tcp_connections_opened_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpOpenedLabels {
    /// The backend's pool.
    pub pool: Arc<str>,
    /// The backend connected.
    pub backend: Arc<str>,
}

/// Labels of `affinity_listener_events_total`: what happened to a
/// listener's connections before they were served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerEventLabels {
    /// The listener's name.
    pub listener: Arc<str>,
    /// `refused_max_connections` (`limits.max_connections`),
    /// `refused_listener_max_connections` (the listener's own), or a PROXY
    /// protocol header's fate: `proxy_header` (a client address read),
    /// `proxy_local` / `proxy_unknown` (the peer's address kept),
    /// `proxy_untrusted`, `proxy_invalid`, `proxy_timeout`, `proxy_closed`
    /// (the connection closed unserved).
    pub event: &'static str,
}

/// Labels of the per-listener families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's name.
    pub listener: Arc<str>,
}

/// A certificate a TLS listener serves, for `/status` and the expiry
/// gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The listener's name.
    pub listener: String,
    /// Its DNS names.
    pub names: Vec<String>,
    /// When it expires.
    pub not_after: SystemTime,
    /// Its file.
    pub cert: String,
}

/// The family of handshake durations: one histogram per listener.
pub type HandshakeDurationFamily = Family<ListenerLabels, Histogram, fn() -> Histogram>;

fn handshake_duration_histogram() -> Histogram {
    // 100 µs .. ~6.5 s.
    Histogram::new(exponential_buckets(100e-6, 4.0, 9))
}

/// Labels of `affinity_config_reloads_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// How the last config reload went, for `/status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadRecord {
    /// When it ended.
    pub at: SystemTime,
    /// Whether the new config runs now.
    pub ok: bool,
    /// Why it failed (the error's text, possibly several lines); `None` when
    /// it succeeded.
    pub error: Option<String>,
}

/// The family of request durations: one histogram per backend.
pub type DurationFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// The family of snapshot build durations: one histogram per pool.
pub type RebuildDurationFamily = Family<PoolLabels, Histogram, fn() -> Histogram>;

fn rebuild_duration_histogram() -> Histogram {
    // 50 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(50e-6, 4.0, 9))
}

/// The statuses whose request counters a backend keeps a handle on
/// ([`RequestMetricsCache`]); others are looked up by label each time.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 429, 500, 502, 503,
];

/// `status`'s place in [`COMMON_STATUSES`].
fn common_status_slot(status: u16) -> Option<usize> {
    COMMON_STATUSES.iter().position(|&common| common == status)
}

/// Handles on one backend's request metrics (its duration histogram and its
/// request counters by common status), made at its first request: see
/// [`Stats::backend_request_finished`]. Each handle shares its metric with
/// the family it came from, which never drops a label set.
#[derive(Debug, Default)]
pub struct RequestMetricsCache(OnceLock<CachedRequestMetrics>);

#[derive(Debug)]
struct CachedRequestMetrics {
    /// The [`Stats`] they belong to (its address).
    owner: usize,
    pool: Arc<str>,
    backend: Arc<str>,
    duration: Histogram,
    by_status: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

/// What the pool and the proxy count, as things happen.
#[derive(Debug)]
pub struct Stats {
    requests: Family<RequestLabels, Counter>,
    request_duration: DurationFamily,
    upstream_retries: Family<RetryLabels, Counter>,
    health_transitions: Family<TransitionLabels, Counter>,
    discovery_lookups: Family<DiscoveryLabels, Counter>,
    tcp_connections: Family<TcpLabels, Counter>,
    tcp_bytes: Family<TcpBytesLabels, Counter>,
    tcp_opened: Family<TcpOpenedLabels, Counter>,
    listener_connections: Family<ListenerLabels, Gauge>,
    listener_events: Family<ListenerEventLabels, Counter>,
    table_rebuilds: Family<PoolLabels, Counter>,
    table_rebuild_duration: RebuildDurationFamily,
    table_moved_ratio: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    config_reloads: Family<ReloadLabels, Counter>,
    last_reload_successful: Gauge,
    last_reload_success_time: Gauge<f64, AtomicU64>,
    /// Written only by a reload, never on the request path.
    last_reload: Mutex<Option<ReloadRecord>>,
    client_connections: Gauge,
    client_connections_accepted: Counter,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    tls_handshake_duration: HandshakeDurationFamily,
    /// Written at start and by a reload, never on the request path.
    certificates: Mutex<Vec<CertificateRecord>>,
    /// The [`NO_BACKEND`] label, allocated once (also [`NO_POOL`]).
    no_backend: Arc<str>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Every counter at zero; the config loaded now counts as the last
    /// successful one (as Prometheus's own `_last_reload_successful` does at
    /// start, so an alert on it stays quiet until a reload fails).
    pub fn new() -> Stats {
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        // Both series from the start, so `increase()` sees the first failure.
        for result in [RELOAD_SUCCESS, RELOAD_FAILURE] {
            drop(config_reloads.get_or_create(&ReloadLabels { result }));
        }
        let last_reload_successful = Gauge::default();
        last_reload_successful.set(1);
        let last_reload_success_time = Gauge::default();
        last_reload_success_time.set(unix_seconds(SystemTime::now()));
        Stats {
            requests: Family::default(),
            request_duration: DurationFamily::new_with_constructor(
                request_duration_histogram as fn() -> Histogram,
            ),
            upstream_retries: Family::default(),
            health_transitions: Family::default(),
            discovery_lookups: Family::default(),
            tcp_connections: Family::default(),
            tcp_bytes: Family::default(),
            tcp_opened: Family::default(),
            listener_connections: Family::default(),
            listener_events: Family::default(),
            table_rebuilds: Family::default(),
            table_rebuild_duration: RebuildDurationFamily::new_with_constructor(
                rebuild_duration_histogram as fn() -> Histogram,
            ),
            table_moved_ratio: Family::default(),
            config_reloads,
            last_reload_successful,
            last_reload_success_time,
            last_reload: Mutex::new(None),
            client_connections: Gauge::default(),
            client_connections_accepted: Counter::default(),
            tls_handshakes: Family::default(),
            tls_handshake_duration: HandshakeDurationFamily::new_with_constructor(
                handshake_duration_histogram as fn() -> Histogram,
            ),
            certificates: Mutex::new(Vec::new()),
            no_backend: Arc::from(NO_BACKEND),
        }
    }

    /// Starts the per-pool families of `pool` at zero, so that a scrape
    /// shows its rebuild count before the first rebuild.
    pub fn pool_added(&self, pool: &Arc<str>) {
        let labels = PoolLabels { pool: pool.clone() };
        drop(self.table_rebuilds.get_or_create(&labels));
        drop(self.table_rebuild_duration.get_or_create(&labels));
        drop(self.table_moved_ratio.get_or_create(&labels));
    }

    /// Counts a finished request: routed to `pool` and answered by
    /// `backend` (`None`: no pool or no backend is to blame) with `status`,
    /// `elapsed` after it arrived.
    pub fn request_finished(
        &self,
        pool: Option<&Arc<str>>,
        backend: Option<&Arc<str>>,
        status: u16,
        elapsed: Duration,
    ) {
        let pool = pool.unwrap_or(&self.no_backend);
        let backend = backend.unwrap_or(&self.no_backend);
        self.requests
            .get_or_create(&RequestLabels {
                pool: pool.clone(),
                backend: backend.clone(),
                code: status,
            })
            .inc();
        self.request_duration
            .get_or_create(&BackendLabels {
                pool: pool.clone(),
                backend: backend.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// [`Stats::request_finished`] for a request `backend` of `pool`
    /// answered, through the handles `cache` keeps (the backend's own): after
    /// the first request of a status, counting one looks no labels up (two
    /// label hashes and read locks fewer per request). Labels the cache was
    /// not made for (a renamed pool, another `Stats`) go the long way.
    pub fn backend_request_finished(
        &self,
        cache: &RequestMetricsCache,
        pool: &Arc<str>,
        backend: &Arc<str>,
        status: u16,
        elapsed: Duration,
    ) {
        let owner = self as *const Stats as usize;
        let cached = cache.0.get_or_init(|| CachedRequestMetrics {
            owner,
            pool: pool.clone(),
            backend: backend.clone(),
            duration: self
                .request_duration
                .get_or_create(&BackendLabels {
                    pool: pool.clone(),
                    backend: backend.clone(),
                })
                .clone(),
            by_status: Default::default(),
        });
        if cached.owner != owner || cached.pool != *pool || cached.backend != *backend {
            return self.request_finished(Some(pool), Some(backend), status, elapsed);
        }
        let labels = || RequestLabels {
            pool: pool.clone(),
            backend: backend.clone(),
            code: status,
        };
        match common_status_slot(status) {
            Some(slot) => cached.by_status[slot]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        cached.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a request sent on to its next backend after `backend` of
    /// `pool` failed for `reason` (`connect_error` or `upstream_error`).
    pub fn upstream_retry(&self, pool: &Arc<str>, backend: &Arc<str>, reason: &'static str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                pool: pool.clone(),
                backend: backend.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a health change of `backend` of `pool`.
    pub fn health_transition(&self, pool: &Arc<str>, backend: &str, transition: Transition) {
        let to = transition_label(transition);
        self.health_transitions
            .get_or_create(&TransitionLabels {
                pool: pool.clone(),
                backend: backend.to_owned(),
                to,
            })
            .inc();
    }

    /// Counts a DNS lookup of pool `pool`'s discovery of `name` that came
    /// to `result`.
    pub fn discovery_lookup(&self, pool: &Arc<str>, name: &Arc<str>, result: &'static str) {
        self.discovery_lookups
            .get_or_create(&DiscoveryLabels {
                pool: pool.clone(),
                name: name.clone(),
                result,
            })
            .inc();
    }

    /// Counts a tcp connection that ended with `outcome` (`backend`:
    /// `None` when none could be connected).
    pub fn tcp_connection(
        &self,
        pool: &Arc<str>,
        backend: Option<&Arc<str>>,
        outcome: &'static str,
    ) {
        let backend: Arc<str> = backend.cloned().unwrap_or_else(|| Arc::from(""));
        self.tcp_connections
            .get_or_create(&TcpLabels {
                pool: pool.clone(),
                backend,
                outcome,
            })
            .inc();
    }

    /// Counts a tcp connection opened to `backend` of `pool`, and gives
    /// the counters its bytes are added to as they are relayed (to the
    /// backend, to the client).
    pub fn tcp_opened(&self, pool: &Arc<str>, backend: &Arc<str>) -> (Counter, Counter) {
        self.tcp_opened
            .get_or_create(&TcpOpenedLabels {
                pool: pool.clone(),
                backend: backend.clone(),
            })
            .inc();
        let bytes = |direction| {
            self.tcp_bytes
                .get_or_create(&TcpBytesLabels {
                    pool: pool.clone(),
                    backend: backend.clone(),
                    direction,
                })
                .clone()
        };
        (bytes("to_backend"), bytes("to_client"))
    }

    /// The tcp connections opened, by pool and backend.
    pub fn tcp_connections_opened(&self) -> &Family<TcpOpenedLabels, Counter> {
        &self.tcp_opened
    }

    /// The connections open now on each listener (the count a listener's
    /// `max_connections` caps).
    pub fn listener_connections(&self) -> &Family<ListenerLabels, Gauge> {
        &self.listener_connections
    }

    /// Counts `event` on `listener` (see [`ListenerEventLabels`]).
    pub fn listener_event(&self, listener: &Arc<str>, event: &'static str) {
        self.listener_events
            .get_or_create(&ListenerEventLabels {
                listener: listener.clone(),
                event,
            })
            .inc();
    }

    /// What happened to listeners' connections before they were served.
    pub fn listener_events(&self) -> &Family<ListenerEventLabels, Counter> {
        &self.listener_events
    }

    /// The tcp connections, by pool, backend and outcome.
    pub fn tcp_connections(&self) -> &Family<TcpLabels, Counter> {
        &self.tcp_connections
    }

    /// The bytes tcp connections relayed, by pool, backend and direction.
    pub fn tcp_bytes(&self) -> &Family<TcpBytesLabels, Counter> {
        &self.tcp_bytes
    }

    /// The DNS lookups of discovery, by pool, name and result.
    pub fn discovery_lookups(&self) -> &Family<DiscoveryLabels, Counter> {
        &self.discovery_lookups
    }

    /// Counts a published rebuild of `pool` that took `duration` and moved
    /// `moved` (0..=1) of the key space.
    pub fn table_rebuilt(&self, pool: &Arc<str>, duration: Duration, moved: f64) {
        let labels = PoolLabels { pool: pool.clone() };
        self.table_rebuilds.get_or_create(&labels).inc();
        self.table_rebuild_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.table_moved_ratio.get_or_create(&labels).set(moved);
    }

    /// Counts a TLS handshake on `listener` that ended with `result` after
    /// `elapsed` (`version`: the TLS version agreed, `""` when none was).
    pub fn tls_handshake(
        &self,
        listener: &Arc<str>,
        result: &'static str,
        version: &'static str,
        elapsed: Duration,
    ) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.clone(),
                result,
                version,
            })
            .inc();
        self.tls_handshake_duration
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// TLS handshakes, by listener, result and version.
    pub fn tls_handshakes(&self) -> &Family<HandshakeLabels, Counter> {
        &self.tls_handshakes
    }

    /// How long TLS handshakes took, by listener.
    pub fn tls_handshake_duration(&self) -> &HandshakeDurationFamily {
        &self.tls_handshake_duration
    }

    /// Replaces the certificates of `listener` with `records`.
    pub fn set_certificates(&self, listener: &str, records: Vec<CertificateRecord>) {
        let mut certificates = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
        certificates.retain(|c| c.listener != listener);
        certificates.extend(records);
    }

    /// The certificates the TLS listeners serve.
    pub fn certificates(&self) -> Vec<CertificateRecord> {
        self.certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a reload that replaced the running config.
    pub fn reload_succeeded(&self) {
        let at = SystemTime::now();
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: RELOAD_SUCCESS,
            })
            .inc();
        self.last_reload_successful.set(1);
        self.last_reload_success_time.set(unix_seconds(at));
        *self.last_reload_record() = Some(ReloadRecord {
            at,
            ok: true,
            error: None,
        });
    }

    /// Counts a reload that failed for `error` and left the running config
    /// as it was.
    pub fn reload_failed(&self, error: String) {
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: RELOAD_FAILURE,
            })
            .inc();
        self.last_reload_successful.set(0);
        *self.last_reload_record() = Some(ReloadRecord {
            at: SystemTime::now(),
            ok: false,
            error: Some(error),
        });
    }

    /// How the last reload went; `None` before the first.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload_record().clone()
    }

    fn last_reload_record(&self) -> MutexGuard<'_, Option<ReloadRecord>> {
        // Plain data, valid even if a writer panicked.
        self.last_reload.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Health changes of `backend` of `pool` counted so far that were
    /// `transition`.
    pub fn health_transitions(&self, pool: &str, backend: &str, transition: Transition) -> u64 {
        let labels = TransitionLabels {
            pool: Arc::from(pool),
            backend: backend.to_owned(),
            to: transition_label(transition),
        };
        self.health_transitions.get(&labels).map_or(0, |c| c.get())
    }

    /// Snapshots of `pool` published after a health change or a reload so far.
    pub fn table_rebuilds(&self, pool: &str) -> u64 {
        let labels = PoolLabels {
            pool: Arc::from(pool),
        };
        self.table_rebuilds.get(&labels).map_or(0, |c| c.get())
    }

    /// Requests finished, by the backend that answered and the status the
    /// client got (the family is shared: register it to expose it).
    pub fn requests(&self) -> &Family<RequestLabels, Counter> {
        &self.requests
    }

    /// Time from a request's arrival to the end of its response body, by
    /// backend.
    pub fn request_duration(&self) -> &DurationFamily {
        &self.request_duration
    }

    /// Requests sent on to the next backend after a backend failed.
    pub fn upstream_retries(&self) -> &Family<RetryLabels, Counter> {
        &self.upstream_retries
    }

    /// Health changes, by backend and the state changed to.
    pub fn health_transition_family(&self) -> &Family<TransitionLabels, Counter> {
        &self.health_transitions
    }

    /// Snapshots published after a health change or a reload, by pool.
    pub fn table_rebuild_counter(&self) -> &Family<PoolLabels, Counter> {
        &self.table_rebuilds
    }

    /// How long building each published snapshot took, by pool.
    pub fn table_rebuild_duration(&self) -> &RebuildDurationFamily {
        &self.table_rebuild_duration
    }

    /// The share of the key space the last rebuild of each pool moved.
    pub fn table_moved_ratio(&self) -> &Family<PoolLabels, Gauge<f64, AtomicU64>> {
        &self.table_moved_ratio
    }

    /// Reloads so far, by result (`success`, `failure`).
    pub fn config_reloads(&self) -> &Family<ReloadLabels, Counter> {
        &self.config_reloads
    }

    /// 1 when the last reload (or the start) succeeded, 0 when it failed.
    pub fn last_reload_successful(&self) -> &Gauge {
        &self.last_reload_successful
    }

    /// When the running config was loaded (start or last successful
    /// reload), in Unix seconds.
    pub fn last_reload_success_time(&self) -> &Gauge<f64, AtomicU64> {
        &self.last_reload_success_time
    }

    /// Client connections open now, over every worker. The listener counts
    /// each from accept to close (and enforces `limits.max_connections`
    /// on this very count).
    pub fn client_connections(&self) -> &Gauge {
        &self.client_connections
    }

    /// Client connections accepted so far, those closed at once for
    /// `limits.max_connections` included.
    pub fn client_connections_accepted(&self) -> &Counter {
        &self.client_connections_accepted
    }
}

/// The `result` label of a reload that succeeded.
pub const RELOAD_SUCCESS: &str = "success";

/// The `result` label of a reload that failed.
pub const RELOAD_FAILURE: &str = "failure";

/// `at` in seconds since the Unix epoch (0 for a clock set before it).
fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The `to` label of a transition.
fn transition_label(transition: Transition) -> &'static str {
    match transition {
        Transition::Up => "healthy",
        Transition::Down => "unhealthy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloads(stats: &Stats, result: &'static str) -> u64 {
        stats
            .config_reloads()
            .get(&ReloadLabels { result })
            .map_or(u64::MAX, |c| c.get())
    }

    #[test]
    fn a_fresh_pool_counts_its_start_as_the_last_successful_load() {
        let before = unix_seconds(SystemTime::now());
        let stats = Stats::new();
        assert_eq!(stats.last_reload_successful().get(), 1);
        let at = stats.last_reload_success_time().get();
        assert!(
            at >= before && at <= unix_seconds(SystemTime::now()),
            "{at}"
        );
        assert_eq!(reloads(&stats, RELOAD_SUCCESS), 0);
        assert_eq!(reloads(&stats, RELOAD_FAILURE), 0);
        assert_eq!(stats.last_reload(), None);
    }

    #[test]
    fn a_failed_reload_keeps_the_success_time_and_a_good_one_moves_it() {
        let stats = Stats::new();
        let started = stats.last_reload_success_time().get();
        stats.reload_failed("t.toml: line 1: bad\nt.toml: line 2: worse".to_owned());
        assert_eq!(stats.last_reload_successful().get(), 0);
        assert_eq!(stats.last_reload_success_time().get(), started);
        assert_eq!(reloads(&stats, RELOAD_FAILURE), 1);
        let last = stats.last_reload().unwrap();
        assert!(!last.ok);
        assert_eq!(
            last.error.as_deref(),
            Some("t.toml: line 1: bad\nt.toml: line 2: worse")
        );
        stats.reload_succeeded();
        assert_eq!(stats.last_reload_successful().get(), 1);
        assert!(stats.last_reload_success_time().get() >= started);
        assert_eq!(reloads(&stats, RELOAD_SUCCESS), 1);
        assert_eq!(
            stats.last_reload().map(|r| (r.ok, r.error)),
            Some((true, None))
        );
    }
}
