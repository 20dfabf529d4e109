//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4), weighted, with
//! health changes that move only the unhealthy backends' keys.
//!
//! # Construction
//! [`Maglev::new`] builds the lookup table of a prime size `M` from the
//! *configured* pool. Each backend derives `offset` and `skip` from a hash of
//! its **name** (never its position or address), giving it a permutation of
//! the table's slots; backends take turns claiming their next preferred empty
//! slot, as in the paper. Weights are honoured with exact quotas: a backend of
//! weight `w` claims exactly `floor(M·w/Σw)` or one more slots (Hamilton's
//! apportionment), interleaved in proportion to weight, so equal-weight
//! backends differ by at most one slot. Backends are processed in name order,
//! so the table does not depend on the order the config lists them in.
//!
//! # Health without chaos
//! A naive Maglev rebuild from the healthy subset moves about 1.5–2× the
//! optimal share of keys (the paper's Fig. 12; Envoy documents the same).
//! Instead every slot `s` has a fixed *preference sequence* of backends that
//! depends only on the configured pool:
//!
//! 1. its owner in the full table;
//! 2. a **second choice** dealt so that each backend's slots are spread over
//!    the other backends in proportion to their weights: a smooth weighted
//!    sequence `G` of all backends (stride scheduling) is walked from a
//!    per-backend phase, skipping the owner itself, one step per slot;
//! 3. up to [`RANDOM_PROBES`] weighted pseudo-random picks derived from `s`;
//! 4. every backend, in name order, from a position derived from `s`.
//!
//! [`HealthyMaglev`] maps each slot to the first healthy backend of its
//! sequence. Consequences, all exact:
//! * when a backend becomes unhealthy, only the slots it holds change owner
//!   (the optimal share, nothing more), and those spread over the survivors
//!   in proportion to weight, within one slot per backend per unhealthy
//!   backend when `M/N ≥ N` (e.g. `N ≤ 256` at `M = 65537`);
//! * when it recovers, the previous table comes back slot for slot;
//! * the table is a pure function of (configured names and weights, healthy
//!   set, `M`): any two instances agree, whatever the listing order or the
//!   history of health changes;
//! * the key's fallback order is the same sequence, filtered to healthy
//!   backends: a retry goes exactly where the key will land if its first
//!   choice is taken out of the pool.
//!
//! Changing the configured membership (adding or removing a `[[backends]]`
//! entry) rebuilds the table, which moves a little more than the optimal
//! share, as in the paper.

use std::sync::Arc;

use crate::balance::hash::{member_hash128, mix64};
use crate::balance::member::{self, BackendSet, Member, MemberError, apportion, total_weight};

/// Marks "no backend" in a table slot.
const NONE: u16 = u16::MAX;

/// How many weighted pseudo-random alternatives a slot's preference sequence
/// holds after its second choice, before the exhaustive name-order scan.
pub const RANDOM_PROBES: u32 = 16;

/// When this few slots remain empty, [`populate`] stops walking permutations
/// and picks among the empty slots arithmetically (same result, faster).
const TAIL_SLOTS: usize = 128;

/// Positions of a permutation tested per step of [`populate`]'s walk.
const PROBE_BATCH: usize = 8;

/// A larger prime table size, for pools of several hundred backends.
pub const LARGE_TABLE_SIZE: usize = 655_373;

/// The default table size: a prime well above 100 × the pool sizes we expect.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// Why a table size cannot be used for a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableSizeError {
    /// Maglev's permutations need a prime table size.
    #[error("table_size {0} is not a prime number (try 65537 or 655373)")]
    NotPrime(usize),
    /// Each unit of weight needs at least one table entry.
    #[error(
        "table_size {size} is smaller than the total backend weight {total_weight}; use a larger prime such as 655373"
    )]
    TooSmall {
        /// The configured size.
        size: usize,
        /// The pool's total weight.
        total_weight: u64,
    },
}

/// Whether `n` is prime (trial division; table sizes are at most a few million).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks that a Maglev table of `size` entries can serve `members`: the size
/// is prime and at least the total weight, so every backend owns entries in
/// proportion to its weight.
pub fn check_table_size(size: usize, members: &[Member]) -> Result<(), TableSizeError> {
    if !is_prime(size) {
        return Err(TableSizeError::NotPrime(size));
    }
    let total = total_weight(members);
    if (size as u64) < total {
        return Err(TableSizeError::TooSmall {
            size,
            total_weight: total,
        });
    }
    Ok(())
}

/// Why a Maglev table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The pool itself is invalid.
    #[error(transparent)]
    Members(#[from] MemberError),
    /// The table size does not suit the pool.
    #[error(transparent)]
    TableSize(#[from] TableSizeError),
}

/// A Maglev lookup table for the full configured pool, with every slot's
/// preference sequence. Immutable; shared (`Arc`) by every [`HealthyMaglev`]
/// built from it, so a health change costs one pass over the table.
#[derive(Debug)]
pub struct Maglev {
    /// Slot → owning backend (index into the caller's member list).
    owner: Vec<u16>,
    /// Slot → second choice (caller index), or `NONE` for a one-backend pool.
    second: Vec<u16>,
    /// Name order → caller index.
    by_name: Vec<u16>,
    /// Cumulative weights in name order, for weighted pseudo-random picks.
    cumulative: Vec<u64>,
}

impl Maglev {
    /// Builds the table of `size` slots (a prime ≥ the total weight) for
    /// `members`, listed in any order; returned indices refer to that order.
    pub fn new(members: &[Member], size: usize) -> Result<Maglev, MaglevError> {
        member::validate(members)?;
        check_table_size(size, members)?;
        let n = members.len();
        let mut by_name: Vec<u16> = (0..n as u16).collect();
        by_name.sort_unstable_by(|&a, &b| members[a as usize].name.cmp(&members[b as usize].name));
        let sorted: Vec<&Member> = by_name.iter().map(|&i| &members[i as usize]).collect();

        let owner_sorted = populate(&sorted, size);
        let second_sorted = deal_second_choices(&sorted, &owner_sorted);

        let to_caller = |rank: u16| {
            if rank == NONE {
                NONE
            } else {
                by_name[rank as usize]
            }
        };
        let cumulative = sorted
            .iter()
            .scan(0u64, |acc, m| {
                *acc += u64::from(m.weight);
                Some(*acc)
            })
            .collect();
        Ok(Maglev {
            owner: owner_sorted.into_iter().map(to_caller).collect(),
            second: second_sorted.into_iter().map(to_caller).collect(),
            by_name,
            cumulative,
        })
    }

    /// The table size `M`.
    pub fn size(&self) -> usize {
        self.owner.len()
    }

    /// Number of backends in the configured pool.
    pub fn backends(&self) -> usize {
        self.by_name.len()
    }

    /// The slot a key hash falls into: `hash % M`.
    #[inline]
    pub fn slot(&self, hash: u64) -> usize {
        (hash % self.owner.len() as u64) as usize
    }

    /// The owner of every slot when every backend is healthy.
    pub fn entries(&self) -> &[u16] {
        &self.owner
    }

    /// The preference sequence of slot `s` (caller indices, possibly with
    /// repeats; it ends with every backend, so it always reaches a healthy
    /// one if there is any).
    pub fn preferences(&self, slot: usize) -> Preferences<'_> {
        Preferences {
            table: self,
            slot,
            step: 0,
        }
    }

    /// A weighted pseudo-random backend (caller index) for probe `probe` of `slot`.
    fn random_pick(&self, slot: usize, probe: u32) -> u16 {
        let total = *self.cumulative.last().unwrap_or(&1);
        let x = mix64(((slot as u64) << 32) ^ u64::from(probe) ^ 0x6d61_676c_6576_0000);
        // Multiply-shift maps x uniformly onto 0..total without division.
        let point = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        let rank = self.cumulative.partition_point(|&c| c <= point);
        self.by_name[rank.min(self.by_name.len() - 1)]
    }

    /// Where slot `s`'s exhaustive name-order scan starts.
    fn scan_start(&self, slot: usize) -> usize {
        (mix64(slot as u64 ^ 0x7363_616e_0000_0000) % self.by_name.len() as u64) as usize
    }
}

/// The preference sequence of one slot; see the module documentation.
#[derive(Debug, Clone)]
pub struct Preferences<'a> {
    table: &'a Maglev,
    slot: usize,
    step: u32,
}

impl Iterator for Preferences<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let t = self.table;
        let n = t.by_name.len() as u32;
        loop {
            let step = self.step;
            if step >= 2 + RANDOM_PROBES + n {
                return None;
            }
            self.step += 1;
            let pick = match step {
                0 => t.owner[self.slot],
                1 => t.second[self.slot],
                s if s < 2 + RANDOM_PROBES => t.random_pick(self.slot, s - 2),
                s => {
                    let i =
                        (t.scan_start(self.slot) + (s - 2 - RANDOM_PROBES) as usize) % n as usize;
                    t.by_name[i]
                }
            };
            if pick != NONE {
                return Some(pick as usize);
            }
        }
    }
}

/// Fills the table (indices in name order), per the paper's Algorithm 1 with
/// exact weighted quotas. Each round `r`, backend `i` may hold up to
/// `ceil(r·w_i/w_max)` slots (capped by its quota), so heavy backends claim
/// proportionally more often rather than all at the end.
fn populate(sorted: &[&Member], size: usize) -> Vec<u16> {
    let n = sorted.len();
    let weights: Vec<u32> = sorted.iter().map(|m| m.weight).collect();
    let quota = apportion(size as u64, &weights);
    let w_max = u64::from(weights.iter().copied().max().unwrap_or(1));
    let m = size as u64;
    let (mut next, skip): (Vec<u64>, Vec<u64>) = permutations(sorted, m).into_iter().unzip();
    // multiples[i][j] = j·skip_i mod M, and strides_total[i] = PROBE_BATCH·skip_i mod M.
    let multiples: Vec<[u64; PROBE_BATCH]> = skip
        .iter()
        .map(|&k| std::array::from_fn(|j| (j as u64 * k) % m))
        .collect();
    let strides_total: Vec<u64> = skip.iter().map(|&k| (PROBE_BATCH as u64 * k) % m).collect();
    let mut claimed = vec![0u64; n];
    let mut table = vec![NONE; size];
    // Which slots are taken, one bit each: 8 KiB at M = 65537, so the probe
    // loop runs out of L1 cache instead of walking the 128 KiB table.
    let mut taken = vec![0u64; size.div_ceil(64)];
    let mut filled = 0usize;
    let mut round = 0u64;
    // Once only a few slots are empty, walking a permutation to the next one
    // takes about M/empty probes, and the last 1% of slots would cost more
    // than half of the whole build. From there on we find, among the empty
    // slots, the one that comes first in the backend's permutation directly:
    // slot e is at step ((e − c)·skip⁻¹ mod M) from position c. Same result
    // as the walk, in O(empty) per claim instead of O(M/empty).
    let tail = TAIL_SLOTS.min(size);
    let mut empty: Vec<u64> = Vec::new();
    let mut inverse: Vec<u64> = vec![0; n];
    while filled < size {
        round += 1;
        for i in 0..n {
            let allowed = quota[i].min((round * u64::from(weights[i])).div_ceil(w_max));
            let (mut c, step) = (next[i], skip[i]);
            while claimed[i] < allowed {
                if size - filled <= tail {
                    if empty.is_empty() {
                        empty = (0..m).filter(|&e| table[e as usize] == NONE).collect();
                    }
                    if inverse[i] == 0 {
                        inverse[i] = mod_pow(step, m - 2, m);
                    }
                    let (mut best, mut best_at) = (u64::MAX, 0);
                    for (k, &e) in empty.iter().enumerate() {
                        let distance = (e + m - c) % m * inverse[i] % m;
                        if distance < best {
                            (best, best_at) = (distance, k);
                        }
                    }
                    c = empty.swap_remove(best_at);
                } else {
                    // skip < M and M is prime, so the walk visits every slot
                    // and finds an empty one while the table is not full. We
                    // test the next PROBE_BATCH positions at once, without
                    // branches, and take the first free one: the loop exit is
                    // then predictable until the table is nearly full.
                    let strides = &multiples[i];
                    loop {
                        let mut free = 0u32;
                        for (j, &d) in strides.iter().enumerate() {
                            let p = c + d;
                            let p = if p >= m { p - m } else { p };
                            let bit = (taken[(p >> 6) as usize] >> (p & 63)) & 1;
                            free |= ((bit ^ 1) as u32) << j;
                        }
                        if free != 0 {
                            let d = strides[free.trailing_zeros() as usize];
                            c += d;
                            if c >= m {
                                c -= m;
                            }
                            break;
                        }
                        c += strides_total[i];
                        if c >= m {
                            c -= m;
                        }
                    }
                    taken[(c >> 6) as usize] |= 1 << (c & 63);
                }
                table[c as usize] = i as u16;
                c += step;
                if c >= m {
                    c -= m;
                }
                claimed[i] += 1;
                filled += 1;
            }
            next[i] = c;
        }
    }
    table
}

/// Each backend's permutation of the `m` slots, as `(offset, skip)`, for
/// backends in name order.
///
/// Both come from a hash of the backend's name, as in the paper, except
/// that no two backends share a skip while the table has a skip for each:
/// two permutations with the same skip are the same cycle from two starting
/// points, so their owners chase each other through it and any change to
/// the pool (a backend joining) cascades along the chase. Measured over
/// random pools, a shared skip was behind every excess above 1% of the key
/// space moved when one backend joins. A backend whose skip an earlier name
/// already holds derives the next candidate from its own hash, so the
/// result is still a pure function of the pool's names.
fn permutations(sorted: &[&Member], m: u64) -> Vec<(u64, u64)> {
    let distinct = (sorted.len() as u64) < m;
    let mut taken = std::collections::HashSet::with_capacity(sorted.len());
    sorted
        .iter()
        .map(|member| {
            let (h1, h2) = member_hash128(b"maglev", &member.name);
            let mut skip = h2 % (m - 1) + 1;
            let mut k = 0u64;
            while distinct && !taken.insert(skip) {
                k += 1;
                skip = mix64(h2 ^ k) % (m - 1) + 1;
            }
            (h1 % m, skip)
        })
        .collect()
}

/// `base^exp mod m` for `m < 2^32`.
fn mod_pow(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut result = 1 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            result = result * base % m;
        }
        base = base * base % m;
        exp >>= 1;
    }
    result
}

/// Deals every backend's slots over the other backends (all in name order):
/// backend `u` walks a smooth weighted sequence `G` of the pool from a phase
/// derived from its name, skipping its own entries, one step per slot it owns.
/// Any window of `G` holds each backend in proportion to its weight, within
/// one, so `u`'s slots are spread evenly over the others.
fn deal_second_choices(sorted: &[&Member], owner: &[u16]) -> Vec<u16> {
    let n = sorted.len();
    if n < 2 {
        return vec![NONE; owner.len()];
    }
    let g = smooth_sequence(sorted);
    let len = g.len();
    let mut cursor: Vec<usize> = sorted
        .iter()
        .map(|m| (member_hash128(b"phase", &m.name).0 % len as u64) as usize)
        .collect();
    owner
        .iter()
        .map(|&u| {
            let c = &mut cursor[u as usize];
            // At least one other backend exists, so this ends within len steps.
            while g[*c] == u {
                *c = if *c + 1 == len { 0 } else { *c + 1 };
            }
            let pick = g[*c];
            *c = if *c + 1 == len { 0 } else { *c + 1 };
            pick
        })
        .collect()
}

/// Stride scheduling: backend `i` of weight `w` appears `w` times, its `j`-th
/// appearance at virtual time `(j + φ_i)/w` with a phase `φ_i ∈ [0,1)` from its
/// name; sorting by virtual time gives a sequence in which every window holds
/// each backend in proportion to its weight, within one.
fn smooth_sequence(sorted: &[&Member]) -> Vec<u16> {
    let total: usize = sorted.iter().map(|m| m.weight as usize).sum();
    let mut stamps: Vec<(u128, u16)> = Vec::with_capacity(total);
    for (i, m) in sorted.iter().enumerate() {
        let phase = member_hash128(b"stride", &m.name).0 >> 32;
        let w = u128::from(m.weight);
        for j in 0..w {
            // (j + φ/2^32)/w in 64.64 fixed point. Two stamps closer than
            // 2^-64 compare equal after rounding and fall back to name order,
            // which keeps the sequence deterministic.
            let numerator = ((j << 32) | u128::from(phase)) << 64;
            stamps.push((numerator / w, i as u16));
        }
    }
    stamps.sort_unstable();
    stamps.into_iter().map(|(_, i)| i).collect()
}

/// A [`Maglev`] table seen through the current health of the pool: each slot
/// goes to the first healthy backend of its preference sequence.
#[derive(Debug, Clone)]
pub struct HealthyMaglev {
    base: Arc<Maglev>,
    healthy: Vec<bool>,
    table: Vec<u16>,
    healthy_count: usize,
}

impl HealthyMaglev {
    /// Applies `healthy` (caller order, one flag per backend) to `base`.
    /// Costs one pass over the table, plus a short walk for each slot whose
    /// owner is unhealthy.
    ///
    /// # Panics
    /// Never for input of the right length; a `healthy` slice of the wrong
    /// length is treated as "missing entries are unhealthy".
    pub fn new(base: Arc<Maglev>, healthy: &[bool]) -> HealthyMaglev {
        let n = base.backends();
        let healthy: Vec<bool> = (0..n)
            .map(|i| healthy.get(i).copied().unwrap_or(false))
            .collect();
        let healthy_count = healthy.iter().filter(|&&h| h).count();
        let table = if healthy_count == n {
            base.owner.clone()
        } else if healthy_count == 0 {
            Vec::new()
        } else {
            (0..base.size())
                .map(|s| {
                    let first = base.owner[s];
                    if healthy[first as usize] {
                        first
                    } else {
                        base.preferences(s)
                            .find(|&b| healthy[b])
                            .map_or(NONE, |b| b as u16)
                    }
                })
                .collect()
        };
        HealthyMaglev {
            base,
            healthy,
            table,
            healthy_count,
        }
    }

    /// The configured table this view is built on.
    pub fn base(&self) -> &Arc<Maglev> {
        &self.base
    }

    /// The backend (caller index) for a key hash, or `None` when no backend
    /// is healthy.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (hash % self.table.len() as u64) as usize;
        Some(self.table[slot] as usize)
    }

    /// The key's fallback order: its pick, then the next distinct healthy
    /// backends of its slot's preference sequence. Every healthy backend
    /// appears exactly once.
    pub fn fallback(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let slot = self.base.slot(hash);
        let mut seen = BackendSet::with_capacity(self.base.backends());
        self.base
            .preferences(slot)
            .filter(move |&b| self.healthy[b] && seen.insert(b))
            .take(self.healthy_count)
    }

    /// The slot → backend table (empty when no backend is healthy).
    pub fn entries(&self) -> &[u16] {
        &self.table
    }

    /// Each backend's share of the key space: its slots / M, exactly.
    pub fn shares(&self) -> Vec<f64> {
        let mut counts = vec![0u64; self.base.backends()];
        for &b in &self.table {
            counts[b as usize] += 1;
        }
        let m = self.base.size() as f64;
        counts.into_iter().map(|c| c as f64 / m).collect()
    }
}

/// The share of slots whose backend differs between two tables of the same
/// size (an empty table counts as "no backend" everywhere). Backends are
/// compared by caller index, so both tables must index the same member list,
/// or the caller maps indices first.
pub fn moved_fraction(a: &[u16], b: &[u16]) -> f64 {
    let len = a.len().max(b.len());
    if len == 0 {
        return 0.0;
    }
    let moved = (0..len)
        .filter(|&s| a.get(s).copied().unwrap_or(NONE) != b.get(s).copied().unwrap_or(NONE))
        .count();
    moved as f64 / len as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("backend-{i}"), 1))
            .collect()
    }

    fn counts(table: &[u16], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c
    }

    /// The paper's fill, written plainly: walk each permutation one slot at
    /// a time. `populate`'s batched probes and arithmetic tail must agree
    /// with it exactly.
    fn reference_populate(sorted: &[&Member], size: usize) -> Vec<u16> {
        let weights: Vec<u32> = sorted.iter().map(|m| m.weight).collect();
        let quota = apportion(size as u64, &weights);
        let w_max = u64::from(*weights.iter().max().unwrap());
        let m = size as u64;
        let perms = permutations(sorted, m);
        let mut next: Vec<u64> = perms.iter().map(|p| p.0).collect();
        let mut claimed = vec![0u64; sorted.len()];
        let mut table = vec![NONE; size];
        let (mut filled, mut round) = (0, 0u64);
        while filled < size {
            round += 1;
            for i in 0..sorted.len() {
                let allowed = quota[i].min((round * u64::from(weights[i])).div_ceil(w_max));
                while claimed[i] < allowed {
                    while table[next[i] as usize] != NONE {
                        next[i] = (next[i] + perms[i].1) % m;
                    }
                    table[next[i] as usize] = i as u16;
                    next[i] = (next[i] + perms[i].1) % m;
                    claimed[i] += 1;
                    filled += 1;
                }
            }
        }
        table
    }

    #[test]
    fn no_two_backends_share_a_skip_and_the_first_name_keeps_its_own() {
        // These two names hash to the same skip at M = 65537.
        let (a, b) = (Member::new("f0x8ytg3", 1), Member::new("w..uo..1.x9", 1));
        let m = DEFAULT_TABLE_SIZE as u64;
        let own = |member: &Member| member_hash128(b"maglev", &member.name).1 % (m - 1) + 1;
        assert_eq!(own(&a), own(&b));
        let perms = permutations(&[&a, &b], m);
        assert_eq!(perms[0].1, own(&a));
        assert_ne!(perms[1].1, perms[0].1);
        // The offset never changes, and a lone name keeps its skip.
        assert_eq!(perms[1].0, member_hash128(b"maglev", &b.name).0 % m);
        assert_eq!(permutations(&[&b], m)[0].1, own(&b));

        // 400 backends (about one shared skip expected by chance) all differ.
        let members: Vec<Member> = (0..400).map(|i| Member::new(format!("b{i}"), 1)).collect();
        let sorted: Vec<&Member> = members.iter().collect();
        let skips: std::collections::HashSet<u64> =
            permutations(&sorted, m).iter().map(|p| p.1).collect();
        assert_eq!(skips.len(), 400);
        // A table with fewer skips than backends still gets every backend one.
        let tiny: Vec<Member> = (0..7).map(|i| Member::new(format!("t{i}"), 1)).collect();
        let sorted: Vec<&Member> = tiny.iter().collect();
        assert!(
            permutations(&sorted, 7)
                .iter()
                .all(|&(o, k)| o < 7 && (1..7).contains(&k))
        );
    }

    #[test]
    fn a_shared_skip_no_longer_makes_a_joining_backend_move_two_thirds_more_than_its_share() {
        // proptest's shrunk counterexample: with "f0x8ytg3" and "w..uo..1.x9"
        // on one skip, a joining backend moved 16.8% of keys for a 10% share.
        let names = ["a", "a0", "a1", "a2", "aa", "ab", "f0x8ytg3", "w..uo..1.x9"];
        let members: Vec<Member> = names
            .iter()
            .map(|&n| Member::new(n, if n == "f0x8ytg3" { 2 } else { 1 }))
            .collect();
        let mut grown = members.clone();
        grown.push(Member::new("zz-newcomer-with-a-long-name", 1));
        let before = Maglev::new(&members, DEFAULT_TABLE_SIZE).unwrap();
        let after = Maglev::new(&grown, DEFAULT_TABLE_SIZE).unwrap();
        let moved = moved_fraction(&before.owner, &after.owner);
        assert!((0.1..0.1 + 0.005).contains(&moved), "moved {moved}");
    }

    #[test]
    fn the_fast_fill_equals_the_papers_slot_by_slot_walk() {
        for (n, size) in [
            (1, 2),
            (3, 7),
            (5, 101),
            (10, 1009),
            (7, 65_537),
            (200, 65_537),
        ] {
            let members: Vec<Member> = (0..n)
                .map(|i| Member::new(format!("m{i}"), 1 + (i as u32 * 5) % 4))
                .collect();
            if member::total_weight(&members) > size as u64 {
                continue;
            }
            let sorted: Vec<&Member> = members.iter().collect();
            assert_eq!(
                populate(&sorted, size),
                reference_populate(&sorted, size),
                "n={n} M={size}"
            );
        }
    }

    #[test]
    fn prime_check_agrees_with_known_values() {
        let primes = [2, 3, 5, 7, 11, 13, 65_537, 655_373];
        let composites = [0, 1, 4, 9, 15, 65_535, 655_371];
        assert!(primes.iter().all(|&p| is_prime(p)));
        assert!(composites.iter().all(|&c| !is_prime(c)));
    }

    #[test]
    fn equal_weights_get_equal_slots_within_one() {
        for n in [1, 2, 3, 10, 100, 1000] {
            let t = Maglev::new(&pool(n), DEFAULT_TABLE_SIZE).unwrap();
            let c = counts(t.entries(), n);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: {min}..{max}");
        }
    }

    #[test]
    fn one_unhealthy_backend_of_a_hundred_moves_only_its_slots_and_stays_balanced() {
        let base = Arc::new(Maglev::new(&pool(100), DEFAULT_TABLE_SIZE).unwrap());
        let all = HealthyMaglev::new(base.clone(), &[true; 100]);
        let mut health = vec![true; 100];
        health[42] = false;
        let one_down = HealthyMaglev::new(base, &health);
        let moved = moved_fraction(all.entries(), one_down.entries());
        let optimal = all.shares()[42];
        assert_eq!(moved, optimal);
        let c = counts(one_down.entries(), 100);
        let survivors: Vec<u64> = c.iter().copied().filter(|&x| x > 0).collect();
        let mean = DEFAULT_TABLE_SIZE as f64 / 99.0;
        let max = *survivors.iter().max().unwrap() as f64;
        assert!(max / mean <= 1.02, "max/mean = {}", max / mean);
    }

    #[test]
    fn a_single_backend_owns_everything_and_no_backend_means_none() {
        let base = Arc::new(Maglev::new(&pool(1), 7).unwrap());
        let up = HealthyMaglev::new(base.clone(), &[true]);
        assert!(up.entries().iter().all(|&b| b == 0));
        assert_eq!(up.fallback(12345).collect::<Vec<_>>(), vec![0]);
        let down = HealthyMaglev::new(base, &[false]);
        assert_eq!(down.pick(12345), None);
        assert_eq!(down.fallback(12345).count(), 0);
    }

    #[test]
    fn table_size_must_be_prime_and_cover_the_weights() {
        assert_eq!(
            Maglev::new(&pool(3), 10).unwrap_err(),
            MaglevError::TableSize(TableSizeError::NotPrime(10))
        );
        assert!(matches!(
            Maglev::new(&pool(20), 17).unwrap_err(),
            MaglevError::TableSize(TableSizeError::TooSmall { .. })
        ));
    }
}
