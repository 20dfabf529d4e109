//! Ring hash: consistent hashing on a 32-bit circle (Karger et al., STOC
//! 1997), in the ketama style of libmemcached: every backend places
//! `weight × points_per_weight` points on the ring and a key belongs to the
//! first point clockwise from its hash.
//!
//! Points come from the backend's **name** (never its address or position),
//! through a SplitMix64 stream seeded by a SipHash of the name. All points
//! live in one sorted flat array (`u32` positions beside `u16` owners), and a
//! lookup is a direct-mapped bucket index on the top bits of the key's point
//! followed by a search within one bucket, so its cost barely depends on the
//! ring's size.
//!
//! Guarantees, all exact:
//! * a backend's expected share is `w/Σw`; with the default
//!   [`DEFAULT_POINTS_PER_WEIGHT`] points the standard deviation of a share
//!   is about `1/sqrt(points)` of it (about 3% at 1024 points);
//! * when a backend becomes unhealthy its points leave the ring and **only
//!   its keys move** (to the next point clockwise); when it recovers, the ring
//!   and every key's backend are exactly as before;
//! * adding a backend moves keys only onto the new backend;
//! * the ring is a pure function of (names, weights, points per weight, healthy
//!   set): listing order and history do not matter (points that collide are
//!   ordered by name).
//!
//! The key's fallback order is the sequence of distinct healthy backends met
//! walking clockwise from its point, which is exactly where it moves if its
//! first choice leaves.

use std::sync::Arc;

use crate::balance::hash::{member_hash128, mix64};
use crate::balance::member::{self, BackendSet, Member, MemberError};

/// Points per unit of weight. Ketama uses 160 per server; we use more for a
/// tighter balance (about ±3% per backend instead of ±8%), which our build
/// affords (see the benches).
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 1024;

/// The most points a ring may hold (16 Mi points, 96 MiB of memory).
pub const MAX_POINTS: u64 = 1 << 24;

/// Why a ring cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The pool itself is invalid.
    #[error(transparent)]
    Members(#[from] MemberError),
    /// Points per weight must be at least 1.
    #[error("points per weight must be at least 1")]
    NoPoints,
    /// Too many points for one ring.
    #[error(
        "the ring would hold {0} points ({DEFAULT_POINTS_PER_WEIGHT} per unit of weight); at most {MAX_POINTS} are supported: lower the weights"
    )]
    TooManyPoints(u64),
}

/// Checks that a ring of `points_per_weight` points per unit of weight can
/// be built for `members`, and returns its number of points.
pub fn check_points(members: &[Member], points_per_weight: u32) -> Result<u64, RingError> {
    if points_per_weight == 0 {
        return Err(RingError::NoPoints);
    }
    let total = member::total_weight(members) * u64::from(points_per_weight);
    if total > MAX_POINTS {
        return Err(RingError::TooManyPoints(total));
    }
    Ok(total)
}

/// Sorted ring points: positions beside their owners, plus a bucket index.
#[derive(Debug, Clone, Default)]
struct Points {
    positions: Vec<u32>,
    owners: Vec<u16>,
    /// `buckets[b]` = index of the first point whose position's top `bits`
    /// are ≥ b; `buckets.len() = 2^bits + 1`, the last entry is `len`.
    buckets: Vec<u32>,
    shift: u32,
}

impl Points {
    fn new(positions: Vec<u32>, owners: Vec<u16>) -> Points {
        // About four points per bucket, between 2^8 and 2^18 buckets: the
        // index stays small (≤ 1 MiB) and a lookup scans a few points.
        let bits = positions
            .len()
            .max(1)
            .ilog2()
            .saturating_sub(2)
            .clamp(8, 18);
        let shift = 32 - bits;
        let mut buckets = vec![0u32; (1usize << bits) + 1];
        for &p in &positions {
            buckets[(p >> shift) as usize + 1] += 1;
        }
        for b in 1..buckets.len() {
            buckets[b] += buckets[b - 1];
        }
        Points {
            positions,
            owners,
            buckets,
            shift,
        }
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    /// Index of the first point at or after `point`, wrapping to 0.
    #[inline]
    fn successor(&self, point: u32) -> usize {
        let b = (point >> self.shift) as usize;
        let lo = self.buckets[b] as usize;
        let hi = self.buckets[b + 1] as usize;
        let i = lo + self.positions[lo..hi].partition_point(|&p| p < point);
        if i == self.positions.len() { 0 } else { i }
    }
}

/// The full ring of a configured pool. Immutable and shared (`Arc`) by every
/// [`HealthyRing`] built from it.
#[derive(Debug)]
pub struct Ring {
    points: Points,
    backends: usize,
}

impl Ring {
    /// Builds the ring for `members` (any order; returned indices refer to
    /// it) with `points_per_weight` points per unit of weight.
    pub fn new(members: &[Member], points_per_weight: u32) -> Result<Ring, RingError> {
        member::validate(members)?;
        let total = check_points(members, points_per_weight)?;
        // Name order, so that equal positions are ordered by name whatever
        // the listing order.
        let mut by_name: Vec<u16> = (0..members.len() as u16).collect();
        by_name.sort_unstable_by(|&a, &b| members[a as usize].name.cmp(&members[b as usize].name));
        // One u64 per point: position in the high half, name rank in the low
        // half, so a plain integer sort orders by (position, name).
        let mut keyed: Vec<u64> = Vec::with_capacity(total as usize);
        for (rank, &i) in by_name.iter().enumerate() {
            let m = &members[i as usize];
            let (seed, _) = member_hash128(b"ring", &m.name);
            let count = u64::from(m.weight) * u64::from(points_per_weight);
            for j in 0..count {
                let position =
                    mix64(seed.wrapping_add(j.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 32;
                keyed.push((position << 32) | rank as u64);
            }
        }
        let (positions, owners) = sort_points(keyed, &by_name);
        Ok(Ring {
            points: Points::new(positions, owners),
            backends: members.len(),
        })
    }

    /// Number of backends in the configured pool.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Number of points on the full ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points (never true for a built ring).
    pub fn is_empty(&self) -> bool {
        self.points.len() == 0
    }

    /// The backend for a key hash with every backend healthy.
    #[inline]
    pub fn pick(&self, hash: u64) -> usize {
        usize::from(self.points.owners[self.points.successor(point_of(hash))])
    }
}

/// Sorts packed points (position in the high 32 bits, name rank in the low
/// 16 bits) by (position, rank) and unpacks them into positions and owners
/// (caller indices, through `by_name`). Points are generated in rank order,
/// so a stable sort on the position alone is enough: a least-significant-digit
/// radix sort in four passes of 8 bits (256 output streams stay cache- and
/// TLB-friendly), with all four histograms counted in one read and the last
/// pass writing the unpacked arrays directly. Small rings use the standard sort.
fn sort_points(mut keyed: Vec<u64>, by_name: &[u16]) -> (Vec<u32>, Vec<u16>) {
    const SMALL: usize = 256;
    let owner = |k: u64| by_name[(k & 0xffff) as usize];
    if keyed.len() <= SMALL {
        keyed.sort_unstable();
        return (
            keyed.iter().map(|&k| (k >> 32) as u32).collect(),
            keyed.iter().map(|&k| owner(k)).collect(),
        );
    }
    let digit = |k: u64, d: usize| ((k >> (32 + 8 * d)) & 0xff) as usize;
    let mut offsets = [[0usize; 256]; 4];
    for &k in &keyed {
        for (d, counts) in offsets.iter_mut().enumerate() {
            counts[digit(k, d)] += 1;
        }
    }
    for counts in offsets.iter_mut() {
        let mut sum = 0;
        for c in counts.iter_mut() {
            (*c, sum) = (sum, sum + *c);
        }
    }
    let mut scratch = vec![0u64; keyed.len()];
    for (d, next) in offsets.iter_mut().enumerate().take(3) {
        for &k in &keyed {
            let at = &mut next[digit(k, d)];
            scratch[*at] = k;
            *at += 1;
        }
        std::mem::swap(&mut keyed, &mut scratch);
    }
    let mut positions = vec![0u32; keyed.len()];
    let mut owners = vec![0u16; keyed.len()];
    for &k in &keyed {
        let at = &mut offsets[3][digit(k, 3)];
        positions[*at] = (k >> 32) as u32;
        owners[*at] = owner(k);
        *at += 1;
    }
    (positions, owners)
}

/// The point on the ring of a 64-bit key hash: its top 32 bits.
#[inline]
pub fn point_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// A [`Ring`] with the unhealthy backends' points removed.
#[derive(Debug, Clone)]
pub struct HealthyRing {
    base: Arc<Ring>,
    points: Points,
    healthy_count: usize,
}

impl HealthyRing {
    /// Applies `healthy` (caller order; missing entries count as unhealthy).
    pub fn new(base: Arc<Ring>, healthy: &[bool]) -> HealthyRing {
        let is_up = |b: u16| healthy.get(b as usize).copied().unwrap_or(false);
        let healthy_count = (0..base.backends).filter(|&b| is_up(b as u16)).count();
        let points = if healthy_count == base.backends {
            base.points.clone()
        } else {
            let (positions, owners) = base
                .points
                .positions
                .iter()
                .zip(&base.points.owners)
                .filter(|&(_, &o)| is_up(o))
                .map(|(&p, &o)| (p, o))
                .unzip();
            Points::new(positions, owners)
        };
        HealthyRing {
            base,
            points,
            healthy_count,
        }
    }

    /// The configured ring this view is built on.
    pub fn base(&self) -> &Arc<Ring> {
        &self.base
    }

    /// The backend for a key hash, or `None` when no backend is healthy.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.len() == 0 {
            return None;
        }
        Some(self.points.owners[self.points.successor(point_of(hash))] as usize)
    }

    /// The key's fallback order: distinct healthy backends clockwise from its
    /// point. Every healthy backend appears exactly once.
    pub fn fallback(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let len = self.points.len();
        let start = if len == 0 {
            0
        } else {
            self.points.successor(point_of(hash))
        };
        let mut seen = BackendSet::with_capacity(self.base.backends);
        (0..len)
            .map(move |k| self.points.owners[(start + k) % len] as usize)
            .filter(move |&b| seen.insert(b))
            .take(self.healthy_count)
    }

    /// Each backend's exact share of the 2^32 key points.
    pub fn shares(&self) -> Vec<f64> {
        let mut arcs = vec![0u64; self.base.backends];
        for (start, end, owner) in self.arcs() {
            arcs[owner] += end - start;
        }
        arcs.into_iter()
            .map(|a| a as f64 / (1u64 << 32) as f64)
            .collect()
    }

    /// The ring as half-open arcs `[start, end)` of key points (in 0..2^32,
    /// the wrap-around arc split in two) with their owners.
    pub fn arcs(&self) -> Vec<(u64, u64, usize)> {
        let p = &self.points;
        let n = p.len();
        if n == 0 {
            return Vec::new();
        }
        let mut arcs = Vec::with_capacity(n + 1);
        // Keys at or below the first point, and above the last, go to point 0.
        arcs.push((0, u64::from(p.positions[0]) + 1, p.owners[0] as usize));
        for i in 1..n {
            arcs.push((
                u64::from(p.positions[i - 1]) + 1,
                u64::from(p.positions[i]) + 1,
                p.owners[i] as usize,
            ));
        }
        arcs.push((
            u64::from(p.positions[n - 1]) + 1,
            1 << 32,
            p.owners[0] as usize,
        ));
        arcs
    }
}

/// The exact share of key points whose backend differs between two rings.
/// Both must index the same member list, or the caller maps indices first
/// with `map_b` (index in `b` → index in `a`'s list, `None` if absent).
pub fn moved_fraction(
    a: &HealthyRing,
    b: &HealthyRing,
    map_b: impl Fn(usize) -> Option<usize>,
) -> f64 {
    let (arcs_a, arcs_b) = (a.arcs(), b.arcs());
    if arcs_a.is_empty() && arcs_b.is_empty() {
        return 0.0;
    }
    if arcs_a.is_empty() || arcs_b.is_empty() {
        return 1.0;
    }
    // Walk both arc lists together over the circle, summing the length of
    // every piece where the owners differ.
    let (mut i, mut j, mut at, mut moved) = (0usize, 0usize, 0u64, 0u64);
    while at < 1 << 32 {
        let (_, end_a, owner_a) = arcs_a[i];
        let (_, end_b, owner_b) = arcs_b[j];
        let end = end_a.min(end_b);
        if map_b(owner_b) != Some(owner_a) {
            moved += end - at;
        }
        at = end;
        if end == end_a {
            i += 1;
        }
        if end == end_b {
            j += 1;
        }
        if i == arcs_a.len() || j == arcs_b.len() {
            break;
        }
    }
    moved as f64 / (1u64 << 32) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("backend-{i}"), 1))
            .collect()
    }

    fn view(members: &[Member], healthy: &[bool]) -> HealthyRing {
        HealthyRing::new(Arc::new(Ring::new(members, 64).unwrap()), healthy)
    }

    #[test]
    fn lookup_agrees_with_a_linear_scan() {
        let ring = view(&pool(7), &[true; 7]);
        let p = &ring.points;
        for k in 0..20_000u64 {
            let h = mix64(k);
            let point = point_of(h);
            let want = p.positions.iter().position(|&x| x >= point).unwrap_or(0);
            assert_eq!(ring.pick(h), Some(p.owners[want] as usize));
        }
        // Exact boundaries: a key on a point belongs to that point.
        for i in 0..p.len() {
            let h = u64::from(p.positions[i]) << 32;
            assert_eq!(ring.pick(h), Some(p.owners[i] as usize));
        }
    }

    #[test]
    fn shares_sum_to_one_and_follow_weights() {
        let members = vec![Member::new("a", 1), Member::new("b", 3)];
        let ring = HealthyRing::new(Arc::new(Ring::new(&members, 1024).unwrap()), &[true, true]);
        let s = ring.shares();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((s[0] - 0.25).abs() < 0.03, "{s:?}");
    }

    #[test]
    fn removing_a_backend_moves_exactly_its_share() {
        let members = pool(8);
        let all = view(&members, &[true; 8]);
        let mut health = [true; 8];
        health[3] = false;
        let down = view(&members, &health);
        let moved = moved_fraction(&all, &down, Some);
        assert!((moved - all.shares()[3]).abs() < 1e-12);
        assert_eq!(down.shares()[3], 0.0);
    }

    #[test]
    fn the_radix_sort_orders_by_position_then_rank() {
        for len in [10usize, 256, 257, 50_000] {
            // Generated in rank order within equal positions, as Ring::new does.
            let mut keyed: Vec<u64> = (0..len as u64)
                .map(|i| (mix64(i / 3) & 0xffff_ffff_0000_0000) | (i % 7))
                .collect();
            keyed.sort_by_key(|k| k & 0xffff);
            let mut want = keyed.clone();
            want.sort_unstable();
            let by_name: Vec<u16> = (0..7).map(|r| 100 + r).collect();
            let (positions, owners) = sort_points(keyed, &by_name);
            let got: Vec<u64> = positions
                .iter()
                .zip(&owners)
                .map(|(&p, &o)| (u64::from(p) << 32) | u64::from(o - 100))
                .collect();
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn no_healthy_backend_means_none() {
        let ring = view(&pool(3), &[false; 3]);
        assert_eq!(ring.pick(99), None);
        assert_eq!(ring.fallback(99).count(), 0);
        assert!(ring.shares().iter().all(|&s| s == 0.0));
    }
}
