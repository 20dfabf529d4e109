//! The classic, non-hash load-balancing policies: round robin, nginx's smooth
//! weighted round robin, least connections, least response time and weighted
//! random, plus the latency EWMA that least response time reads.
//!
//! Each policy is built once per pool snapshot from the backends that are
//! eligible (healthy) in it, given as indices into the pool, and then picks one
//! of those indices per request. Picks are lock-free and allocation-free: the
//! only shared state is an atomic counter per policy, so any number of threads
//! can pick at once. Live load figures (requests in flight, latency EWMA) are
//! owned by the pool and passed in at pick time through [`Load`]. Nothing here
//! reads a clock, a global RNG or a socket; time and seeds are injected.
//!
//! Every pick takes `exclude`, the backends this request already tried, and
//! never returns one of them; it returns `None` when no eligible backend is
//! left. A policy built from an empty list always returns `None`. Backends
//! with weight 0 are treated as drained (as in HAProxy) and never picked.
//!
//! ```
//! use affinity::balance::policy::{Load, Policy, RoundRobin};
//!
//! struct Idle;
//! impl Load for Idle {
//!     fn in_flight(&self, _backend: usize) -> u64 {
//!         0
//!     }
//!     fn latency_ewma_ns(&self, _backend: usize) -> Option<u64> {
//!         None
//!     }
//! }
//!
//! // Backends 0, 2 and 5 of the pool are healthy.
//! let policy = Policy::RoundRobin(RoundRobin::new(vec![0, 2, 5]));
//! assert_eq!(policy.pick(&Idle, &[]), Some(0));
//! // This request already failed on backend 2: the cycle skips it.
//! assert_eq!(policy.pick(&Idle, &[2]), Some(5));
//! assert_eq!(policy.pick(&Idle, &[0, 2, 5]), None);
//! ```

mod ewma;
mod least_connections;
mod least_response_time;
mod load;
mod random;
mod round_robin;
mod weighted_round_robin;

#[cfg(test)]
mod testing;

pub use ewma::{DEFAULT_LATENCY_HALF_LIFE, LatencyEwma};
pub use least_connections::LeastConnections;
pub use least_response_time::LeastResponseTime;
pub use load::Load;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::{MAX_PERIOD, WeightedRoundRobin};

/// One of the classic policies, chosen by configuration, behind a single
/// `pick` so the proxy need not care which one it runs.
#[derive(Debug)]
pub enum Policy {
    /// Plain round robin, see [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// nginx's smooth weighted round robin, see [`WeightedRoundRobin`].
    WeightedRoundRobin(WeightedRoundRobin),
    /// Fewest requests in flight per unit of weight, see [`LeastConnections`].
    LeastConnections(LeastConnections),
    /// Lowest latency EWMA, see [`LeastResponseTime`].
    LeastResponseTime(LeastResponseTime),
    /// Weighted random from a seeded counter-based generator, see [`Random`].
    Random(Random),
}

impl Policy {
    /// Picks an eligible backend not in `exclude`, or `None` if there is none.
    ///
    /// `load` is only read by the load-aware policies (least connections and
    /// least response time); the others ignore it.
    pub fn pick(&self, load: &dyn Load, exclude: &[usize]) -> Option<usize> {
        match self {
            Policy::RoundRobin(p) => p.pick(exclude),
            Policy::WeightedRoundRobin(p) => p.pick(exclude),
            Policy::LeastConnections(p) => p.pick(load, exclude),
            Policy::LeastResponseTime(p) => p.pick(load, exclude),
            Policy::Random(p) => p.pick(exclude),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestLoad;
    use super::*;

    fn all_policies(eligible: &[(usize, u32)]) -> Vec<Policy> {
        let plain: Vec<usize> = eligible.iter().map(|&(b, _)| b).collect();
        vec![
            Policy::RoundRobin(RoundRobin::new(plain.clone())),
            Policy::WeightedRoundRobin(WeightedRoundRobin::new(eligible.to_vec())),
            Policy::LeastConnections(LeastConnections::new(eligible.to_vec())),
            Policy::LeastResponseTime(LeastResponseTime::new(plain)),
            Policy::Random(Random::new(eligible.to_vec(), 7)),
        ]
    }

    #[test]
    fn every_policy_built_from_an_empty_list_picks_none() {
        let load = TestLoad::new(4);
        for policy in all_policies(&[]) {
            assert_eq!(policy.pick(&load, &[]), None, "{policy:?}");
        }
    }

    #[test]
    fn every_policy_returns_an_eligible_backend_and_never_an_excluded_one() {
        let load = TestLoad::new(10);
        let eligible = [(1, 1), (4, 2), (6, 3), (9, 1)];
        for policy in all_policies(&eligible) {
            for _ in 0..200 {
                let picked = policy.pick(&load, &[4, 9]);
                assert!(
                    matches!(picked, Some(1) | Some(6)),
                    "{policy:?}: {picked:?}"
                );
            }
            assert_eq!(policy.pick(&load, &[1, 4, 6, 9]), None, "{policy:?}");
        }
    }

    #[test]
    fn the_policy_enum_dispatches_load_to_the_load_aware_policies() {
        let load = TestLoad::new(3);
        load.set_in_flight(0, 5);
        load.set_in_flight(2, 5);
        let least = Policy::LeastConnections(LeastConnections::new(vec![(0, 1), (1, 1), (2, 1)]));
        assert_eq!(least.pick(&load, &[]), Some(1));

        load.set_ewma(0, Some(1_000));
        load.set_ewma(1, Some(9_000));
        load.set_ewma(2, Some(5_000));
        let fastest = Policy::LeastResponseTime(LeastResponseTime::new(vec![0, 1, 2]));
        assert_eq!(fastest.pick(&load, &[]), Some(0));
    }
}
