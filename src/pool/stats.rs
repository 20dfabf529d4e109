//! The counters the pool and the request path record as things happen:
//! requests by backend and status, their durations, retries, health
//! transitions and table rebuilds.
//!
//! One [`Stats`] belongs to a [`crate::pool::Pool`] and lives as long as it:
//! counters keep counting across snapshots and reloads. Recording is a few
//! atomic operations (plus a read-locked label lookup in a family) and never
//! blocks a request. The families are `prometheus-client`'s metric types,
//! plain atomic numbers; this module does not name, describe or render them:
//! [`crate::admin::metrics`] registers them under their Prometheus names and
//! renders them with the gauges it reads from the current snapshot.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::pool::health::Transition;

/// The `backend` label of requests no backend is to blame for.
pub const NO_BACKEND: &str = "";

/// Upper bounds of the request duration buckets, in seconds: 1 ms to 30 s.
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of `affinity_health_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The backend's name.
    pub backend: String,
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
}

/// Labels of `affinity_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
    /// The status the client got.
    pub code: u16,
}

/// Labels of the per-backend families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
}

/// Labels of `affinity_upstream_retries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// The backend that failed.
    pub backend: Arc<str>,
    /// `connect_error` or `upstream_error`.
    pub reason: &'static str,
}

/// The family of request durations: one histogram per backend.
pub type DurationFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// What the pool and the proxy count, as things happen.
#[derive(Debug)]
pub struct Stats {
    requests: Family<RequestLabels, Counter>,
    request_duration: DurationFamily,
    upstream_retries: Family<RetryLabels, Counter>,
    health_transitions: Family<TransitionLabels, Counter>,
    table_rebuilds: Counter,
    table_rebuild_duration: Histogram,
    table_moved_ratio: Gauge<f64, AtomicU64>,
    /// The [`NO_BACKEND`] label, allocated once.
    no_backend: Arc<str>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Every counter at zero.
    pub fn new() -> Stats {
        Stats {
            requests: Family::default(),
            request_duration: DurationFamily::new_with_constructor(
                request_duration_histogram as fn() -> Histogram,
            ),
            upstream_retries: Family::default(),
            health_transitions: Family::default(),
            table_rebuilds: Counter::default(),
            // 50 µs .. ~3.3 s.
            table_rebuild_duration: Histogram::new(exponential_buckets(50e-6, 4.0, 9)),
            table_moved_ratio: Gauge::default(),
            no_backend: Arc::from(NO_BACKEND),
        }
    }

    /// Counts a finished request: answered by `backend` (`None`: no backend
    /// is to blame) with `status`, `elapsed` after it arrived.
    pub fn request_finished(&self, backend: Option<&Arc<str>>, status: u16, elapsed: Duration) {
        let backend = backend.unwrap_or(&self.no_backend);
        self.requests
            .get_or_create(&RequestLabels {
                backend: backend.clone(),
                code: status,
            })
            .inc();
        self.request_duration
            .get_or_create(&BackendLabels {
                backend: backend.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request sent on to its next backend after `backend` failed
    /// for `reason` (`connect_error` or `upstream_error`).
    pub fn upstream_retry(&self, backend: &Arc<str>, reason: &'static str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                backend: backend.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a health change of `backend`.
    pub fn health_transition(&self, backend: &str, transition: Transition) {
        let to = transition_label(transition);
        self.health_transitions
            .get_or_create(&TransitionLabels {
                backend: backend.to_owned(),
                to,
            })
            .inc();
    }

    /// Counts a published rebuild that took `duration` and moved `moved`
    /// (0..=1) of the key space.
    pub fn table_rebuilt(&self, duration: Duration, moved: f64) {
        self.table_rebuilds.inc();
        self.table_rebuild_duration.observe(duration.as_secs_f64());
        self.table_moved_ratio.set(moved);
    }

    /// Health changes of `backend` counted so far that were `transition`.
    pub fn health_transitions(&self, backend: &str, transition: Transition) -> u64 {
        let labels = TransitionLabels {
            backend: backend.to_owned(),
            to: transition_label(transition),
        };
        self.health_transitions.get(&labels).map_or(0, |c| c.get())
    }

    /// Snapshots published after a health change or a reload so far.
    pub fn table_rebuilds(&self) -> u64 {
        self.table_rebuilds.get()
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

    /// Snapshots published after a health change or a reload.
    pub fn table_rebuild_counter(&self) -> &Counter {
        &self.table_rebuilds
    }

    /// How long building each published snapshot took.
    pub fn table_rebuild_duration(&self) -> &Histogram {
        &self.table_rebuild_duration
    }

    /// The share of the key space the last rebuild moved.
    pub fn table_moved_ratio(&self) -> &Gauge<f64, AtomicU64> {
        &self.table_moved_ratio
    }
}

/// The `to` label of a transition.
fn transition_label(transition: Transition) -> &'static str {
    match transition {
        Transition::Up => "healthy",
        Transition::Down => "unhealthy",
    }
}
