//! The algorithms a pool can pick backends with, as the config names them.

use std::fmt;

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

    /// The algorithm spelled `text` in the config file, if any.
    pub fn parse(text: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
