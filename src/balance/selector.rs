//! One interface over the consistent-hash algorithms.
//!
//! Selection happens in two stages, so that a health change never redoes the
//! expensive part:
//! * [`HashTable`] is built from the configured pool alone (names, weights,
//!   algorithm parameters): the Maglev table or the ring. Config reloads
//!   rebuild it.
//! * [`HashSelector`] applies the current healthy set to a [`HashTable`]
//!   (a cheap clone: it shares the table through an `Arc`); health
//!   transitions rebuild only this, in one pass over the table.
//!
//! Both are immutable: the proxy publishes a new one atomically and requests
//! read whichever they loaded.

use std::sync::Arc;

use crate::balance::algorithm::Algorithm;
use crate::balance::maglev::{self, HealthyMaglev, Maglev, MaglevError};
use crate::balance::member::Member;
use crate::balance::ring::{self, HealthyRing, Ring, RingError};

/// A consistent-hash algorithm and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Maglev with a lookup table of this (prime) size.
    Maglev {
        /// Table size `M`.
        table_size: usize,
    },
    /// Ketama-style ring hash with this many points per unit of weight.
    RingHash {
        /// Points per unit of weight.
        points_per_weight: u32,
    },
}

impl HashAlgorithm {
    /// The config spelling: `maglev` or `ring_hash`.
    pub fn name(&self) -> &'static str {
        match self {
            HashAlgorithm::Maglev { .. } => "maglev",
            HashAlgorithm::RingHash { .. } => "ring_hash",
        }
    }
}

/// Why a hash table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Maglev refused the pool or table size.
    #[error(transparent)]
    Maglev(#[from] MaglevError),
    /// The ring refused the pool or point count.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// The configured pool's table or ring, independent of health. Cloning
/// shares the table.
#[derive(Debug, Clone)]
pub enum HashTable {
    /// A Maglev lookup table.
    Maglev(Arc<Maglev>),
    /// A ring.
    Ring(Arc<Ring>),
}

impl HashTable {
    /// Builds the table or ring for `members` (any order; indices returned by
    /// selectors refer to this order).
    pub fn new(algorithm: HashAlgorithm, members: &[Member]) -> Result<HashTable, BuildError> {
        Ok(match algorithm {
            HashAlgorithm::Maglev { table_size } => {
                HashTable::Maglev(Arc::new(Maglev::new(members, table_size)?))
            }
            HashAlgorithm::RingHash { points_per_weight } => {
                HashTable::Ring(Arc::new(Ring::new(members, points_per_weight)?))
            }
        })
    }

    /// Maglev table size, or the number of ring points.
    pub fn size(&self) -> usize {
        match self {
            HashTable::Maglev(t) => t.size(),
            HashTable::Ring(r) => r.len(),
        }
    }
}

/// A hash table seen through the pool's current health: picks a backend for
/// a key hash, and lists the key's fallback order.
#[derive(Debug, Clone)]
pub struct HashSelector {
    pub(crate) view: View,
}

/// The algorithm-specific view inside a [`HashSelector`].
#[derive(Debug, Clone)]
pub(crate) enum View {
    Maglev(HealthyMaglev),
    Ring(HealthyRing),
}

impl HashSelector {
    /// Applies `healthy` (one flag per configured backend, in the member
    /// order the table was built from) to `table`.
    pub fn new(table: &HashTable, healthy: &[bool]) -> HashSelector {
        let view = match table {
            HashTable::Maglev(m) => View::Maglev(HealthyMaglev::new(m.clone(), healthy)),
            HashTable::Ring(r) => View::Ring(HealthyRing::new(r.clone(), healthy)),
        };
        HashSelector { view }
    }

    /// The health-independent table this selector is built on.
    pub fn table(&self) -> HashTable {
        match &self.view {
            View::Maglev(m) => HashTable::Maglev(m.base().clone()),
            View::Ring(r) => HashTable::Ring(r.base().clone()),
        }
    }

    /// The backend for a key hash; `None` when no backend is healthy.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        match &self.view {
            View::Maglev(m) => m.pick(hash),
            View::Ring(r) => r.pick(hash),
        }
    }

    /// The key's fallback order: distinct healthy backends, starting with
    /// [`pick`](Self::pick)'s answer; every healthy backend appears once.
    pub fn fallback(&self, hash: u64) -> Box<dyn Iterator<Item = usize> + '_> {
        match &self.view {
            View::Maglev(m) => Box::new(m.fallback(hash)),
            View::Ring(r) => Box::new(r.fallback(hash)),
        }
    }

    /// The backend a key hash goes to when every backend is healthy,
    /// whatever the health now: the key's first choice.
    pub fn preferred(&self, hash: u64) -> usize {
        match &self.view {
            View::Maglev(m) => {
                let base = m.base();
                usize::from(base.entries()[base.slot(hash)])
            }
            View::Ring(r) => r.base().pick(hash),
        }
    }

    /// Each configured backend's exact share of the key space now.
    pub fn shares(&self) -> Vec<f64> {
        match &self.view {
            View::Maglev(m) => m.shares(),
            View::Ring(r) => r.shares(),
        }
    }

    /// The exact share of the key space whose backend differs between `self`
    /// and `other` (same algorithm expected; different algorithms count as
    /// everything moved). `map_other` maps a backend index of `other`'s pool
    /// to the index of the same backend in `self`'s pool, `None` if absent.
    pub fn moved_fraction(
        &self,
        other: &HashSelector,
        map_other: impl Fn(usize) -> Option<usize>,
    ) -> f64 {
        match (&self.view, &other.view) {
            (View::Maglev(a), View::Maglev(b)) if a.base().size() == b.base().size() => {
                let remapped: Vec<u16> = b
                    .entries()
                    .iter()
                    .map(|&i| map_other(i as usize).map_or(u16::MAX - 1, |j| j as u16))
                    .collect();
                maglev::moved_fraction(a.entries(), &remapped)
            }
            (View::Ring(a), View::Ring(b)) => ring::moved_fraction(a, b, map_other),
            _ => 1.0,
        }
    }
}

impl HashAlgorithm {
    /// The hash algorithm `algorithm` is, with its parameters (`table_size`
    /// for Maglev; the ring takes [`ring::DEFAULT_POINTS_PER_WEIGHT`]);
    /// `None` for the classic (non-hash) policies.
    pub fn of(algorithm: Algorithm, table_size: usize) -> Option<HashAlgorithm> {
        match algorithm {
            Algorithm::Maglev => Some(HashAlgorithm::Maglev { table_size }),
            Algorithm::RingHash => Some(HashAlgorithm::RingHash {
                points_per_weight: ring::DEFAULT_POINTS_PER_WEIGHT,
            }),
            _ => None,
        }
    }
}
