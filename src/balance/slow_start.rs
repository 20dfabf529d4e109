//! Slow start for the hash algorithms: a backend that joins or returns takes
//! its keys back gradually instead of all at once.
//!
//! While backend `r` ramps with progress `p` in `[0, 1)`, a key whose pick
//! in the full table (every routable backend in it, `r` included) is `r`
//! goes to `r` only when a second hash of the key, [`admission`], falls
//! below `p · 2^64`; otherwise it goes where it would go with every ramping
//! backend out of the table, the *settled* view. So:
//! * `r`'s share is `p` times its full share (the second hash is
//!   independent of the table's slot or ring point: see [`admission`]);
//! * as `p` grows, the set of keys `r` owns only grows: a key never flips
//!   back and forth;
//! * at `p = 1` the ramp ends and the table is exactly the full one;
//! * keys whose full pick is not ramping never move.
//!
//! Everything here is pure: progress is given, never read from a clock.

use crate::balance::hash::mix64;
use crate::balance::selector::{HashSelector, HashTable, View};

/// The second, independent hash of a key that decides when it returns to a
/// ramping backend: the key's hash through SplitMix64's finaliser (a
/// bijective mixer with full avalanche), after a fixed offset so that it is
/// not the mixer the ring uses for points. The table reads the key hash
/// modulo a prime (Maglev) or its top 32 bits (ring); the mixed value's
/// bits are uncorrelated with either.
#[inline]
pub fn admission(key_hash: u64) -> u64 {
    mix64(key_hash ^ 0x5157_4152_545f_5353)
}

/// The admission threshold of progress `p`: keys whose [`admission`] is below
/// it are let through. `p` is clamped to `[0, 1]`; 1 lets every key through.
pub fn threshold(progress: f64) -> u64 {
    if progress >= 1.0 {
        u64::MAX
    } else if progress > 0.0 {
        // Exact enough: 2^64 · p rounded down, below u64::MAX.
        (progress * 18_446_744_073_709_551_616.0) as u64
    } else {
        0
    }
}

/// The ramps of one snapshot: the settled view (every ramping backend out)
/// and each backend's threshold.
#[derive(Debug, Clone)]
pub struct Ramp {
    settled: HashSelector,
    /// Per backend (caller order): `None` for a backend that is not
    /// ramping, else its admission threshold.
    thresholds: Vec<Option<u64>>,
}

impl Ramp {
    /// The ramp over `table` for `routable` backends (caller order) whose
    /// `progress` is below 1; `None` when no routable backend ramps, or when
    /// every routable backend does (a held-back key would have nowhere else
    /// to go: a whole pool that returns at once takes its keys at once).
    pub fn new(table: &HashTable, routable: &[bool], progress: &[f64]) -> Option<Ramp> {
        let ramping = |i: usize| {
            routable.get(i).copied().unwrap_or(false) && progress.get(i).is_some_and(|&p| p < 1.0)
        };
        let thresholds: Vec<Option<u64>> = (0..routable.len())
            .map(|i| ramping(i).then(|| threshold(progress[i])))
            .collect();
        if thresholds.iter().all(Option::is_none) {
            return None;
        }
        let settled: Vec<bool> = (0..routable.len())
            .map(|i| routable[i] && !ramping(i))
            .collect();
        if !settled.contains(&true) {
            return None;
        }
        Some(Ramp {
            settled: HashSelector::new(table, &settled),
            thresholds,
        })
    }

    /// Whether `backend`, a key's pick in the full view, is ramping and
    /// the key (by its hash) is not let through yet.
    #[inline]
    pub fn holds_back(&self, backend: usize, key_hash: u64) -> bool {
        match self.thresholds.get(backend) {
            Some(Some(threshold)) => admission(key_hash) >= *threshold,
            _ => false,
        }
    }

    /// Whether `backend` is ramping.
    pub fn is_ramping(&self, backend: usize) -> bool {
        matches!(self.thresholds.get(backend), Some(Some(_)))
    }

    /// The view that keys held back use: the ramping backends out.
    pub fn settled(&self) -> &HashSelector {
        &self.settled
    }

    /// The share of keys of `backend` that are let through, in `[0, 1]`.
    fn admitted(&self, backend: usize) -> f64 {
        match self.thresholds.get(backend) {
            Some(Some(t)) => *t as f64 / 18_446_744_073_709_551_616.0,
            _ => 1.0,
        }
    }
}

/// The view a key hash routes with: the full one, or the settled one when
/// its full pick is ramping and holds it back.
#[inline]
pub fn view<'a>(full: &'a HashSelector, ramp: Option<&'a Ramp>, key_hash: u64) -> &'a HashSelector {
    if let Some(ramp) = ramp
        && let Some(pick) = full.pick(key_hash)
        && ramp.holds_back(pick, key_hash)
    {
        return &ramp.settled;
    }
    full
}

/// Where one piece of the key space goes: to `first` for the keys whose
/// [`admission`] is below `cut · 2^64`, else to `rest`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    first: Option<usize>,
    cut: f64,
    rest: Option<usize>,
}

fn split(full: Option<usize>, settled: Option<usize>, ramp: Option<&Ramp>) -> Split {
    match (ramp, full) {
        (Some(ramp), Some(b)) if ramp.is_ramping(b) => Split {
            first: full,
            cut: ramp.admitted(b),
            rest: settled,
        },
        _ => Split {
            first: full,
            cut: 1.0,
            rest: full,
        },
    }
}

/// Each backend's exact share of the key space (caller order, `backends`
/// entries) under `full` with `ramp`.
pub fn shares(full: &HashSelector, ramp: Option<&Ramp>, backends: usize) -> Vec<f64> {
    let Some(ramp) = ramp else {
        return full.shares();
    };
    let mut shares = vec![0.0; backends];
    for (weight, owners) in pieces(&[full, &ramp.settled]) {
        let s = split(owners[0], owners[1], Some(ramp));
        if let Some(b) = s.first.filter(|&b| b < backends) {
            shares[b] += weight * s.cut;
        }
        if let Some(b) = s.rest.filter(|&b| b < backends) {
            shares[b] += weight * (1.0 - s.cut);
        }
    }
    shares
}

/// The exact share of the key space whose backend differs between `now`
/// and `before` (each a full view and its ramp); `map_before` maps a
/// backend of `before`'s pool to its index in `now`'s, `None` if gone.
/// Views of different algorithms or table sizes count as everything moved.
pub fn moved(
    now: (&HashSelector, Option<&Ramp>),
    before: (&HashSelector, Option<&Ramp>),
    map_before: impl Fn(usize) -> Option<usize>,
) -> f64 {
    if now.1.is_none() && before.1.is_none() {
        return now.0.moved_fraction(before.0, map_before);
    }
    let settled = |(full, ramp): (&'_ HashSelector, Option<&'_ Ramp>)| {
        ramp.map_or(full.clone(), |r| r.settled.clone())
    };
    let (now_settled, before_settled) = (settled(now), settled(before));
    let views = [now.0, &now_settled, before.0, &before_settled];
    if !comparable(&views) {
        return 1.0;
    }
    let mut moved = 0.0;
    for (weight, owners) in pieces(&views) {
        let a = split(owners[0], owners[1], now.1);
        let map = |b: Option<usize>| b.and_then(&map_before);
        let b = split(owners[2], owners[3], before.1);
        let b = Split {
            first: map(b.first),
            rest: map(b.rest),
            ..b
        };
        // Keys of the piece are spread uniformly over admission values:
        // compare the two splits on [0, low), [low, high), [high, 1).
        let (low, high) = (a.cut.min(b.cut), a.cut.max(b.cut));
        let at = |s: &Split, u: f64| if u < s.cut { s.first } else { s.rest };
        let mut differ = 0.0;
        for (from, to) in [(0.0, low), (low, high), (high, 1.0)] {
            if to > from && at(&a, from) != at(&b, from) {
                differ += to - from;
            }
        }
        moved += weight * differ;
    }
    moved
}

fn comparable(views: &[&HashSelector]) -> bool {
    match views.first().map(|v| &v.view) {
        Some(View::Maglev(first)) => views
            .iter()
            .all(|v| matches!(&v.view, View::Maglev(m) if m.base().size() == first.base().size())),
        Some(View::Ring(_)) => views.iter().all(|v| matches!(&v.view, View::Ring(_))),
        None => true,
    }
}

/// The key space cut into pieces on which every view has one owner: each
/// piece's share of the key space and its owner in each view (`None`: no
/// backend). The views must be [`comparable`].
fn pieces(views: &[&HashSelector]) -> Vec<(f64, Vec<Option<usize>>)> {
    match views.first().map(|v| &v.view) {
        Some(View::Maglev(first)) => {
            let size = first.base().size();
            let owner = |v: &HashSelector, slot: usize| match &v.view {
                View::Maglev(m) => m.entries().get(slot).map(|&b| b as usize),
                View::Ring(_) => None,
            };
            (0..size)
                .map(|slot| {
                    let owners = views.iter().map(|v| owner(v, slot)).collect();
                    (1.0 / size as f64, owners)
                })
                .collect()
        }
        Some(View::Ring(_)) => ring_pieces(views),
        None => Vec::new(),
    }
}

/// [`pieces`] of ring views: their arcs walked together around the circle.
fn ring_pieces(views: &[&HashSelector]) -> Vec<(f64, Vec<Option<usize>>)> {
    let arcs: Vec<Vec<(u64, u64, usize)>> = views
        .iter()
        .map(|v| match &v.view {
            View::Ring(r) => r.arcs(),
            View::Maglev(_) => Vec::new(),
        })
        .collect();
    let circle = (1u64 << 32) as f64;
    let mut at_arc = vec![0usize; arcs.len()];
    let mut pieces = Vec::new();
    let mut at = 0u64;
    while at < 1 << 32 {
        // Each view's arc covering `at` ends somewhere; the piece ends at
        // the nearest end.
        let mut end = 1u64 << 32;
        let mut owners = Vec::with_capacity(arcs.len());
        for (v, list) in arcs.iter().enumerate() {
            while at_arc[v] < list.len() && list[at_arc[v]].1 <= at {
                at_arc[v] += 1;
            }
            match list.get(at_arc[v]) {
                Some(&(_, arc_end, owner)) => {
                    end = end.min(arc_end);
                    owners.push(Some(owner));
                }
                None => owners.push(None),
            }
        }
        pieces.push(((end - at) as f64 / circle, owners));
        at = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::member::Member;
    use crate::balance::selector::HashAlgorithm;

    fn table(algorithm: HashAlgorithm, n: usize) -> HashTable {
        let members: Vec<Member> = (0..n).map(|i| Member::new(format!("b{i}"), 1)).collect();
        HashTable::new(algorithm, &members).unwrap()
    }

    const ALGORITHMS: [HashAlgorithm; 2] = [
        HashAlgorithm::Maglev { table_size: 4093 },
        HashAlgorithm::RingHash {
            points_per_weight: 256,
        },
    ];

    /// Where `key_hash` goes under `full` and `ramp`.
    fn owner(full: &HashSelector, ramp: Option<&Ramp>, key_hash: u64) -> Option<usize> {
        view(full, ramp, key_hash).pick(key_hash)
    }

    #[test]
    fn thresholds_cover_the_ends_and_grow_with_progress() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(-1.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.5), 1 << 63);
        let mut last = 0;
        for i in 0..=100 {
            let t = threshold(f64::from(i) / 100.0);
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn without_a_ramping_backend_there_is_no_ramp() {
        let t = table(ALGORITHMS[0], 4);
        assert!(Ramp::new(&t, &[true; 4], &[1.0; 4]).is_none());
        // A ramping backend that is not routable does not ramp.
        assert!(Ramp::new(&t, &[true, false, true, true], &[1.0, 0.3, 1.0, 1.0]).is_none());
    }

    #[test]
    fn when_every_routable_backend_ramps_nothing_is_held_back() {
        let t = table(ALGORITHMS[0], 3);
        assert!(Ramp::new(&t, &[true, true, false], &[0.5, 0.0, 1.0]).is_none());
        assert!(Ramp::new(&t, &[true], &[0.0]).is_none());
        assert!(Ramp::new(&t, &[true, true, true], &[0.5, 0.0, 1.0]).is_some());
    }

    #[test]
    fn at_zero_the_ramping_backend_has_no_key_and_the_rest_is_the_table_without_it() {
        for algorithm in ALGORITHMS {
            let t = table(algorithm, 5);
            let full = HashSelector::new(&t, &[true; 5]);
            let without = HashSelector::new(&t, &[true, true, false, true, true]);
            let ramp = Ramp::new(&t, &[true; 5], &[1.0, 1.0, 0.0, 1.0, 1.0]).unwrap();
            for k in 0..20_000u64 {
                let key = mix64(k);
                assert_eq!(owner(&full, Some(&ramp), key), without.pick(key));
            }
            let s = shares(&full, Some(&ramp), 5);
            assert_eq!(s[2], 0.0);
            let w = without.shares();
            for (a, b) in s.iter().zip(&w) {
                assert!((a - b).abs() < 1e-9, "{s:?} {w:?}");
            }
            assert!(moved((&full, Some(&ramp)), (&without, None), Some) < 1e-12);
        }
    }

    #[test]
    fn a_key_moves_only_onto_the_ramping_backend_and_never_back() {
        for algorithm in ALGORITHMS {
            let t = table(algorithm, 5);
            let full = HashSelector::new(&t, &[true; 5]);
            let keys: Vec<u64> = (0..20_000u64).map(mix64).collect();
            let mut before: Vec<Option<usize>> = keys
                .iter()
                .map(|&k| {
                    owner(
                        &full,
                        Ramp::new(&t, &[true; 5], &[1.0, 0.0, 1.0, 1.0, 1.0]).as_ref(),
                        k,
                    )
                })
                .collect();
            for step in 1..=10 {
                let p = f64::from(step) / 10.0;
                let ramp = Ramp::new(&t, &[true; 5], &[1.0, p, 1.0, 1.0, 1.0]);
                for (i, &k) in keys.iter().enumerate() {
                    let now = owner(&full, ramp.as_ref(), k);
                    if now != before[i] {
                        assert_eq!(now, Some(1), "{algorithm:?}: a key moved elsewhere");
                    }
                    if before[i] == Some(1) {
                        assert_eq!(
                            now,
                            Some(1),
                            "{algorithm:?}: a key left the ramping backend"
                        );
                    }
                    before[i] = now;
                }
            }
            // At the end: exactly the full table.
            for (i, &k) in keys.iter().enumerate() {
                assert_eq!(before[i], full.pick(k));
            }
        }
    }

    #[test]
    fn the_share_is_the_progress_times_the_full_share_and_moved_is_its_growth() {
        for algorithm in ALGORITHMS {
            let t = table(algorithm, 4);
            let full = HashSelector::new(&t, &[true; 4]);
            let full_share = full.shares()[3];
            let mut last: Option<Ramp> = Ramp::new(&t, &[true; 4], &[1.0, 1.0, 1.0, 0.0]);
            for step in 1..10 {
                let p = f64::from(step) / 10.0;
                let ramp = Ramp::new(&t, &[true; 4], &[1.0, 1.0, 1.0, p]).unwrap();
                let s = shares(&full, Some(&ramp), 4);
                assert!((s[3] - p * full_share).abs() < 1e-9, "{s:?}");
                assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                let m = moved((&full, Some(&ramp)), (&full, last.as_ref()), Some);
                assert!((m - 0.1 * full_share).abs() < 1e-9, "{m}");
                last = Some(ramp);
            }
            let end = moved((&full, None), (&full, last.as_ref()), Some);
            assert!((end - 0.1 * full_share).abs() < 1e-9, "{end}");
        }
    }

    #[test]
    fn the_counted_share_follows_the_computed_one() {
        let t = table(ALGORITHMS[0], 4);
        let full = HashSelector::new(&t, &[true; 4]);
        let ramp = Ramp::new(&t, &[true; 4], &[0.25, 1.0, 1.0, 1.0]).unwrap();
        let n = 200_000u64;
        let mut counts = [0u64; 4];
        for k in 0..n {
            counts[owner(&full, Some(&ramp), mix64(k ^ 0xabc)).unwrap()] += 1;
        }
        let s = shares(&full, Some(&ramp), 4);
        for b in 0..4 {
            let counted = counts[b] as f64 / n as f64;
            assert!((counted - s[b]).abs() < 0.005, "{b}: {counted} vs {}", s[b]);
        }
    }
}
