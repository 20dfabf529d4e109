//! The pool as requests see it: one immutable [`Snapshot`] (backends, their
//! health, the selector) published through one
//! [`arc_swap::ArcSwap`] in [`Pool`].
//!
//! A request loads the snapshot once and uses only that snapshot, so it sees
//! one consistent table even while a health change or a reload publishes a
//! new one. Building a snapshot happens off the request path; a request never
//! waits for it and takes no lock.
//!
//! What must outlive a snapshot lives in [`BackendState`], shared between
//! successive snapshots by backend name: requests in flight and the latency
//! average. A request in flight when a new snapshot is published keeps
//! counting against the same state.
//!
//! | file | holds |
//! |---|---|
//! | [`routing`] | [`routing::Pools`]: every pool and its health checks; [`routing::Routing`]: which pool a request goes to, published whole on reload |
//! | [`snapshot`] | [`Snapshot`]: backends, health, selector; how one is built from a config |
//! | [`backend`] | [`Backend`] and the live [`BackendState`] shared across snapshots |
//! | [`health`] | the pure health state machine: thresholds and transitions |
//! | [`checks`] | the health-check task: probes, passive reports, reloads, publishing |
//! | [`probe`] | one HTTP health probe |
//! | [`discovery`] | backends from DNS as plain state: answers to backend sets, failures keep the last set, empty answers wait out a grace period |
//! | [`resolve`] | the DNS lookups of discovery (hickory-resolver), one task per `discover` entry |
//! | [`runtime`] | the admin API's overrides (drain, weight) and the slow-start ramps, by backend name |
//! | [`recent`] | the last minute of a backend's requests, for the status page |
//! | [`stats`] | the counters the pool and the proxy record, which [`crate::admin`] renders |

pub mod backend;
pub mod checks;
pub mod discovery;
pub mod health;
pub mod probe;
pub mod recent;
pub mod resolve;
pub mod routing;
pub mod runtime;
pub mod snapshot;
pub mod stats;
pub mod target;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

pub use backend::{Backend, BackendState, HealthRecord, InFlight, Override, ProbeRecord};
pub use snapshot::{Conditions, Detour, PoolError, RANDOM_SEED, Rebuild, Selector, Snapshot};
use stats::Stats;

/// One pool: its current snapshot, swapped atomically, its name, the
/// counters it records into and its monotonic clock.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    current: ArcSwap<Snapshot>,
    epoch: Instant,
    stats: Arc<Stats>,
}

impl Pool {
    /// A pool that starts with `snapshot`, with counters of its own.
    pub fn new(snapshot: Snapshot) -> Pool {
        Pool::with_stats(snapshot, Arc::new(Stats::new()))
    }

    /// A pool that starts with `snapshot` and records into `stats` (shared
    /// by every pool of a proxy, each with its name as the `pool` label).
    pub fn with_stats(snapshot: Snapshot, stats: Arc<Stats>) -> Pool {
        let name: Arc<str> = Arc::from(snapshot.config().name.as_str());
        stats.pool_added(&name);
        Pool {
            name,
            current: ArcSwap::from_pointee(snapshot),
            epoch: Instant::now(),
            stats,
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The counters, which outlive snapshots.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The current snapshot. A request calls this once and keeps the result.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `snapshot`: requests that start afterwards use it, those
    /// already running keep theirs.
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Nanoseconds since the pool was created, on a monotonic clock: the
    /// time base of the latency averages.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// `at` on the clock of [`now_ns`](Self::now_ns), for a caller that has
    /// just read the clock for something else.
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_pool_publishes_a_new_snapshot_and_old_loads_keep_theirs() {
        let first = Snapshot::all_healthy(
            Config::from_toml(
                "[balancer]\nalgorithm = \"round_robin\"\n\
                 [[backends]]\nname = \"b0\"\nurl = \"http://127.0.0.1:9000\"\n\
                 [[backends]]\nname = \"b1\"\nurl = \"http://127.0.0.1:9001\"\n",
                Path::new("test.toml"),
            )
            .unwrap()
            .pools[0]
                .clone(),
        )
        .unwrap();
        let config = first.config().clone();
        let pool = Pool::new(first);
        let held = pool.snapshot();
        let second = Snapshot::build(config, &[false, true], Some(&held)).unwrap();
        pool.publish(second);
        assert_eq!(held.healthy_count(), 2);
        assert_eq!(pool.snapshot().healthy_count(), 1);
        assert!(pool.now_ns() < pool.now_ns() + 1);
    }
}
