//! A backend as a snapshot holds it, and the live figures of each backend
//! that outlive snapshots (requests in flight, latency, health record, the
//! last minute of its requests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use http::Uri;
use http::uri::{Authority, Scheme};

use crate::balance::policy::LatencyEwma;
use crate::pool::recent::{LastMinute, RecentRequests};
use crate::pool::stats::RequestMetricsCache;
use crate::pool::target::Target;

/// Live figures of one backend that outlive snapshots.
#[derive(Debug)]
pub struct BackendState {
    in_flight: AtomicU64,
    requests: AtomicU64,
    latency: LatencyEwma,
    health: Mutex<HealthRecord>,
    recent: RecentRequests,
    metrics: RequestMetricsCache,
}

/// When a backend's health last changed and what its last probe said, for
/// operators (the health itself is the snapshot's).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRecord {
    /// When the backend last changed health, or when the pool first had it.
    pub since: SystemTime,
    /// The last probe or request result counted for its health.
    pub last_probe: Option<ProbeRecord>,
}

/// One result counted for a backend's health.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRecord {
    /// When it was counted.
    pub at: SystemTime,
    /// Whether it counted as a success.
    pub ok: bool,
    /// What happened, such as `probe answered 200`.
    pub detail: String,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState::new()
    }
}

impl BackendState {
    /// A backend's state when the pool first has it.
    pub fn new() -> BackendState {
        BackendState {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            latency: LatencyEwma::default(),
            health: Mutex::new(HealthRecord {
                since: SystemTime::now(),
                last_probe: None,
            }),
            recent: RecentRequests::new(),
            metrics: RequestMetricsCache::default(),
        }
    }

    /// When its health last changed, and its last probe.
    pub fn health(&self) -> HealthRecord {
        self.health_record().clone()
    }

    /// Records a result counted for its health, and whether it changed the
    /// health.
    pub fn record_probe(&self, ok: bool, detail: String, changed: bool) {
        let now = SystemTime::now();
        let mut record = self.health_record();
        record.last_probe = Some(ProbeRecord {
            at: now,
            ok,
            detail,
        });
        if changed {
            record.since = now;
        }
    }

    fn health_record(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        // The record is plain data, valid even if a writer panicked.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests sent to this backend whose response has not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend so far (every attempt, retries
    /// included), for as long as a backend of this name has been in the pool.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The latency EWMA at `now_ns` (on [`Pool::now_ns`](crate::pool::Pool::now_ns)'s clock); `None`
    /// before the first response.
    pub fn latency_ewma_ns(&self, now_ns: u64) -> Option<u64> {
        self.latency.value_ns(now_ns)
    }

    /// Records the time to a response head, taken at `now_ns`.
    pub fn observe_latency(&self, sample: Duration, now_ns: u64) {
        self.latency.observe(sample, now_ns);
    }

    /// Counts a request this backend answered (or is to blame for) that
    /// finished with `status` after `elapsed`, at `now_ns` (on
    /// [`Pool::now_ns`]'s clock), in its last minute: a few atomic
    /// operations, no lock.
    ///
    /// [`Pool::now_ns`]: crate::pool::Pool::now_ns
    pub fn record_finished(&self, status: u16, elapsed: Duration, now_ns: u64) {
        self.recent.record(status, elapsed, now_ns);
    }

    /// Counts a request that a pinned sticky cookie sends here at `now_ns`
    /// (on [`Pool::now_ns`](crate::pool::Pool::now_ns)'s clock).
    pub fn record_pinned(&self, now_ns: u64) {
        self.recent.record_pinned(now_ns);
    }

    /// Its requests of the last minute as of `now_ns`.
    pub fn last_minute(&self, now_ns: u64) -> LastMinute {
        self.recent.last_minute(now_ns)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight to a backend; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    /// Ends the request, which finished with `status` after `elapsed` at
    /// `now_ns`, and counts it in the backend's last minute.
    pub fn finish(self, status: u16, elapsed: Duration, now_ns: u64) {
        self.0.record_finished(status, elapsed, now_ns);
    }
}

impl InFlight {
    /// The handles on the backend's request metrics.
    pub fn metrics(&self) -> &RequestMetricsCache {
        &self.0.metrics
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's runtime overrides of its file settings (the admin write
/// API): kept while the backend's name stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Override {
    /// Draining (`true`) or not (`false`), whatever the file says.
    pub drain: Option<bool>,
    /// This weight instead of the file's.
    pub weight: Option<u32>,
}

impl Override {
    /// Whether it overrides nothing.
    pub fn is_empty(&self) -> bool {
        self.drain.is_none() && self.weight.is_none()
    }
}

/// A backend of the pool, as a snapshot holds it.
#[derive(Debug)]
pub struct Backend {
    pub(super) name: Arc<str>,
    pub(super) url: Uri,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) host_header: HeaderValue,
    pub(super) target: Target,
    pub(super) pin: u64,
    pub(super) draining: bool,
    pub(super) weight: u32,
    pub(super) healthy: bool,
    pub(super) overrides: Override,
    /// Slow-start progress in `[0, 1]`; 1: its full share.
    pub(super) progress: f64,
    /// Discovery no longer finds it; it stays in the table, unroutable.
    pub(super) gone: bool,
    pub(super) state: Arc<BackendState>,
}

impl Backend {
    /// Unique name: its identity in the hash tables.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configured URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The scheme requests are sent with (`http` or `https`).
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Whether it is draining: no new keys or sessions, while its pinned
    /// sessions and requests in flight still reach it.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Its pin in sticky cookies (a keyed hash of its name).
    pub fn pin(&self) -> u64 {
        self.pin
    }

    /// How to connect to it: the address, and TLS for `https://`.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `host:port` requests are sent to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` a request without one is sent with: the backend's host,
    /// and its port unless that is 80.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// Its weight: the file's, or the admin API's override.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether discovery no longer finds it: it stays in the table (so
    /// that its leaving moved only its keys) but gets no request.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// What the admin API overrides of its file settings.
    pub fn overrides(&self) -> Override {
        self.overrides
    }

    /// Its slow-start progress in `[0, 1]`: the share of its keys (or of
    /// its weight, for the classic policies) it has taken back; 1 when it
    /// is not ramping.
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// Whether the selector of this snapshot may pick it.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Live figures, shared with the other snapshots.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}
