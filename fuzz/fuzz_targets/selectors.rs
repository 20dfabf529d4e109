//! Builds Maglev tables and rings from arbitrary pools and checks the
//! properties the proxy relies on: invalid pools are refused with an error
//! (never a panic), and for valid ones the pick, fallback order, shares,
//! independence from listing order, balance and disruption guarantees that
//! `src/maglev.rs` and `src/ring.rs` document.

#![no_main]

use std::collections::HashSet;
use std::sync::Arc;

use affinity::balance::maglev::{HealthyMaglev, Maglev};
use affinity::balance::member::{MAX_WEIGHT, Member};
use affinity::balance::ring::{HealthyRing, MAX_POINTS, Ring};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// Primes and non-primes, tiny and default-sized: non-primes and sizes below
/// the total weight must be refused.
const TABLE_SIZES: [usize; 10] = [2, 3, 7, 13, 101, 251, 1009, 65537, 10, 100];
const MAX_POOL: usize = 64;
const MAX_POINTS_PER_WEIGHT: u32 = 64;
const MAX_NAME_CHARS: usize = 8;
const MAX_INPUT_KEYS: usize = 8;
/// Keys derived from the input keys, so every run checks a spread of points.
const DERIVED_KEYS: usize = 8;
/// Rings above this many points are skipped: building one is a sort of its
/// points, which libFuzzer's comparison tracing slows so much that large
/// rings took most of the run. 64 backends of weight 16 at 64 points per
/// weight (or of weight 1000 at 1) still fit.
const RING_POINTS_BUDGET: u64 = 1 << 16;

#[derive(Arbitrary, Debug)]
struct Input {
    naming: Naming,
    weighting: Weighting,
    table_size: u8,
    points_per_weight: u8,
    /// Which healthy backend the disruption check takes out.
    victim: u8,
    first: Backend,
    rest: Vec<Backend>,
    keys: Vec<u64>,
}

#[derive(Arbitrary, Debug)]
struct Backend {
    number: u8,
    text: String,
    weight: u32,
    healthy: bool,
}

/// How the pool's backends are named. Chosen once per pool, so that large
/// valid pools are as easy to reach as small ones.
#[derive(Arbitrary, Debug)]
enum Naming {
    /// `backend-<position>`: always unique.
    Unique,
    /// `backend-<number>`: duplicates are likely in larger pools.
    Numbered,
    /// The backend's own text, cut to a few characters: empty, non-ASCII,
    /// duplicated.
    Text,
}

/// How the pool's backends are weighted.
#[derive(Arbitrary, Debug)]
enum Weighting {
    /// Every backend has this weight, reduced to `0..=MAX_WEIGHT` (0 is invalid).
    Equal(u16),
    /// Each backend's weight reduced to `0..=MAX_WEIGHT`.
    Bounded,
    /// Each backend's weight as given: any `u32`.
    Any,
}

struct Case {
    members: Vec<Member>,
    healthy: Vec<bool>,
    table_size: usize,
    points_per_weight: u32,
    victim: usize,
    keys: Vec<u64>,
}

impl Case {
    fn from_input(input: Input) -> Case {
        let backends: Vec<Backend> = std::iter::once(input.first)
            .chain(input.rest)
            .take(MAX_POOL)
            .collect();
        let bounded = |w: u32| w % (MAX_WEIGHT + 1);
        let members = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let name = match input.naming {
                    Naming::Unique => format!("backend-{i}"),
                    Naming::Numbered => format!("backend-{}", b.number),
                    Naming::Text => b.text.chars().take(MAX_NAME_CHARS).collect(),
                };
                let weight = match input.weighting {
                    Weighting::Equal(w) => bounded(u32::from(w)),
                    Weighting::Bounded => bounded(b.weight),
                    Weighting::Any => b.weight,
                };
                Member::new(name, weight)
            })
            .collect();
        let mut keys: Vec<u64> = input.keys.into_iter().take(MAX_INPUT_KEYS).collect();
        let mut seed = keys.iter().fold(0x243f_6a88_85a3_08d3u64, |a, &k| a ^ k);
        keys.extend([0, u64::MAX, 1 << 32, (1 << 32) - 1]);
        keys.extend((0..DERIVED_KEYS).map(|_| splitmix64(&mut seed)));
        Case {
            healthy: backends.iter().map(|b| b.healthy).collect(),
            members,
            table_size: TABLE_SIZES[usize::from(input.table_size) % TABLE_SIZES.len()],
            points_per_weight: u32::from(input.points_per_weight) % MAX_POINTS_PER_WEIGHT + 1,
            victim: usize::from(input.victim),
            keys,
        }
    }

    /// What every selector requires of a pool, restated here independently
    /// of `affinity::balance::member::validate`.
    fn members_are_valid(&self) -> bool {
        let mut names = HashSet::new();
        self.members.iter().all(|m| {
            !m.name.is_empty()
                && (1..=MAX_WEIGHT).contains(&m.weight)
                && names.insert(m.name.as_str())
        })
    }

    fn total_weight(&self) -> u64 {
        self.members.iter().map(|m| u64::from(m.weight)).sum()
    }

    fn healthy_count(&self) -> usize {
        self.healthy.iter().filter(|&&h| h).count()
    }

    fn reversed(&self) -> (Vec<Member>, Vec<bool>) {
        let mut members = self.members.clone();
        let mut healthy = self.healthy.clone();
        members.reverse();
        healthy.reverse();
        (members, healthy)
    }

    /// `healthy` with one more healthy backend marked down, if there is one.
    fn with_victim_down(&self) -> Option<(usize, Vec<bool>)> {
        let up: Vec<usize> = (0..self.healthy.len())
            .filter(|&i| self.healthy[i])
            .collect();
        if up.is_empty() {
            return None;
        }
        let victim = up[self.victim % up.len()];
        let mut healthy = self.healthy.clone();
        healthy[victim] = false;
        Some((victim, healthy))
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The part of the selector interface every check uses.
trait View {
    fn pick_of(&self, hash: u64) -> Option<usize>;
    /// The fallback order, cut after `limit` backends: a ring's iterator
    /// walks every point before it ends, so reading it to the end costs
    /// O(points) per key and is done for one key per view only.
    fn fallback_of(&self, hash: u64, limit: usize) -> Vec<usize>;
    fn shares_of(&self) -> Vec<f64>;
}

impl View for HealthyMaglev {
    fn pick_of(&self, hash: u64) -> Option<usize> {
        HealthyMaglev::pick(self, hash)
    }
    fn fallback_of(&self, hash: u64, limit: usize) -> Vec<usize> {
        HealthyMaglev::fallback(self, hash).take(limit).collect()
    }
    fn shares_of(&self) -> Vec<f64> {
        HealthyMaglev::shares(self)
    }
}

impl View for HealthyRing {
    fn pick_of(&self, hash: u64) -> Option<usize> {
        HealthyRing::pick(self, hash)
    }
    fn fallback_of(&self, hash: u64, limit: usize) -> Vec<usize> {
        HealthyRing::fallback(self, hash).take(limit).collect()
    }
    fn shares_of(&self) -> Vec<f64> {
        HealthyRing::shares(self)
    }
}

/// Pick, fallback and shares agree with each other and with `healthy`.
fn check_view(what: &str, view: &impl View, healthy: &[bool], keys: &[u64]) {
    let up: HashSet<usize> = (0..healthy.len()).filter(|&i| healthy[i]).collect();
    for (k, &h) in keys.iter().enumerate() {
        let pick = view.pick_of(h);
        // The first key's order is read to its end, so that anything after
        // the healthy backends shows up; the others stop there.
        let limit = if k == 0 { usize::MAX } else { up.len() };
        let fallback = view.fallback_of(h, limit);
        assert_eq!(
            pick,
            fallback.first().copied(),
            "{what}: pick({h:#x}) is not the first of fallback {fallback:?}"
        );
        assert_eq!(
            pick.is_none(),
            up.is_empty(),
            "{what}: pick({h:#x}) = {pick:?} with healthy {healthy:?}"
        );
        let distinct: HashSet<usize> = fallback.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            fallback.len(),
            "{what}: fallback({h:#x}) repeats a backend: {fallback:?}"
        );
        assert!(
            distinct == up,
            "{what}: fallback({h:#x}) = {fallback:?} is not exactly the healthy backends {up:?}"
        );
    }
    let shares = view.shares_of();
    assert_eq!(shares.len(), healthy.len(), "{what}: one share per backend");
    for (i, &s) in shares.iter().enumerate() {
        assert!(s.is_finite() && s >= 0.0, "{what}: share {i} is {s}");
        if !healthy[i] {
            assert_eq!(s, 0.0, "{what}: unhealthy backend {i} has share {s}");
        }
    }
    let sum: f64 = shares.iter().sum();
    let want = if up.is_empty() { 0.0 } else { 1.0 };
    assert!(
        (sum - want).abs() <= 1e-9,
        "{what}: shares sum to {sum}, want {want}: {shares:?}"
    );
}

/// The same pool listed in reverse sends every key to the same backend, by
/// name, in the same fallback order (compared over its first `limit`
/// backends: the healthy ones).
fn check_order_independence(
    what: &str,
    a: &impl View,
    members_a: &[Member],
    b: &impl View,
    members_b: &[Member],
    limit: usize,
    keys: &[u64],
) {
    let names = |members: &[Member], indices: Vec<usize>| -> Vec<String> {
        indices
            .into_iter()
            .map(|i| members[i].name.clone())
            .collect()
    };
    for &h in keys {
        let pick_a = a.pick_of(h).map(|i| members_a[i].name.as_str());
        let pick_b = b.pick_of(h).map(|i| members_b[i].name.as_str());
        assert_eq!(
            pick_a, pick_b,
            "{what}: key {h:#x} depends on the listing order"
        );
        assert_eq!(
            names(members_a, a.fallback_of(h, limit)),
            names(members_b, b.fallback_of(h, limit)),
            "{what}: fallback of key {h:#x} depends on the listing order"
        );
    }
}

/// Taking `victim` out moves only the keys it held; the others stay put.
fn check_disruption(
    what: &str,
    before: &impl View,
    after: &impl View,
    victim: usize,
    keys: &[u64],
) {
    for &h in keys {
        let (was, now) = (before.pick_of(h), after.pick_of(h));
        if was == Some(victim) {
            assert_ne!(
                now,
                Some(victim),
                "{what}: key {h:#x} stays on removed backend {victim}"
            );
        } else {
            assert_eq!(
                was, now,
                "{what}: key {h:#x} moved although backend {victim} did not hold it"
            );
        }
    }
    let (shares_before, shares_after) = (before.shares_of(), after.shares_of());
    for (i, (&b, &a)) in shares_before.iter().zip(&shares_after).enumerate() {
        if i != victim {
            assert!(
                a >= b,
                "{what}: backend {i} lost share ({b} → {a}) when {victim} left"
            );
        }
    }
}

fn check_restore(what: &str, before: &impl View, restored: &impl View, limit: usize, keys: &[u64]) {
    for &h in keys {
        assert_eq!(
            before.pick_of(h),
            restored.pick_of(h),
            "{what}: key {h:#x} not restored"
        );
        assert_eq!(
            before.fallback_of(h, limit),
            restored.fallback_of(h, limit),
            "{what}: fallback of {h:#x} not restored"
        );
    }
    assert_eq!(
        before.shares_of(),
        restored.shares_of(),
        "{what}: shares not restored"
    );
}

/// Slot-level checks of a Maglev view: every slot is held by a healthy
/// backend and `pick` reads the table.
fn check_maglev_entries(view: &HealthyMaglev, healthy: &[bool], table_size: usize, keys: &[u64]) {
    let entries = view.entries();
    if !healthy.contains(&true) {
        assert!(
            entries.is_empty(),
            "maglev: entries with no healthy backend"
        );
        return;
    }
    assert_eq!(entries.len(), table_size, "maglev: table size");
    for (s, &b) in entries.iter().enumerate() {
        assert!(
            healthy.get(b as usize) == Some(&true),
            "maglev: slot {s} held by backend {b}, which is not healthy"
        );
    }
    for &h in keys {
        let slot = (h % table_size as u64) as usize;
        assert_eq!(
            view.pick(h),
            Some(entries[slot] as usize),
            "maglev: pick({h:#x}) ≠ entries[{slot}]"
        );
    }
}

fn fuzz_maglev(case: &Case) {
    let size = case.table_size;
    let result = Maglev::new(&case.members, size);
    let valid = case.members_are_valid() && is_prime(size) && size as u64 >= case.total_weight();
    let table = match (result, valid) {
        (Ok(table), true) => Arc::new(table),
        (Err(_), false) => return,
        (Ok(_), false) => panic!(
            "maglev: accepted an invalid pool {:?} with table size {size}",
            case.members
        ),
        (Err(e), true) => panic!(
            "maglev: refused a valid pool {:?} with table size {size}: {e}",
            case.members
        ),
    };
    let n = case.members.len();

    // Balance: with every backend up, each holds floor(M·w/Σw) slots or one
    // more, so equal weights differ by at most one slot.
    let all_up = HealthyMaglev::new(table.clone(), &vec![true; n]);
    let mut counts = vec![0u64; n];
    for &b in all_up.entries() {
        counts[b as usize] += 1;
    }
    let total = case.total_weight();
    for (i, m) in case.members.iter().enumerate() {
        let exact = size as u64 * u64::from(m.weight);
        let (lo, hi) = (exact / total, exact.div_ceil(total));
        assert!(
            (lo..=hi).contains(&counts[i]),
            "maglev: backend {i} (weight {}) holds {} slots, want {lo}..={hi}",
            m.weight,
            counts[i]
        );
    }
    if case
        .members
        .iter()
        .all(|m| m.weight == case.members[0].weight)
    {
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            max - min <= 1,
            "maglev: equal weights hold {min}..={max} slots"
        );
    }

    let view = HealthyMaglev::new(table.clone(), &case.healthy);
    check_view("maglev", &view, &case.healthy, &case.keys);
    check_maglev_entries(&view, &case.healthy, size, &case.keys);

    let (rev_members, rev_healthy) = case.reversed();
    let rev_table =
        Arc::new(Maglev::new(&rev_members, size).expect("maglev: reversed pool refused"));
    let rev_view = HealthyMaglev::new(rev_table, &rev_healthy);
    check_order_independence(
        "maglev",
        &view,
        &case.members,
        &rev_view,
        &rev_members,
        case.healthy_count(),
        &case.keys,
    );
    let (a, b) = (view.entries(), rev_view.entries());
    assert_eq!(a.len(), b.len(), "maglev: reversed table size");
    for s in 0..a.len() {
        assert_eq!(
            case.members[a[s] as usize].name, rev_members[b[s] as usize].name,
            "maglev: slot {s} depends on the listing order"
        );
    }

    if let Some((victim, down_health)) = case.with_victim_down() {
        let down = HealthyMaglev::new(table.clone(), &down_health);
        check_view("maglev, one more down", &down, &down_health, &case.keys);
        check_maglev_entries(&down, &down_health, size, &case.keys);
        check_disruption("maglev", &view, &down, victim, &case.keys);
        if !down.entries().is_empty() {
            for (s, (&was, &now)) in view.entries().iter().zip(down.entries()).enumerate() {
                if was as usize != victim {
                    assert_eq!(
                        was, now,
                        "maglev: slot {s} moved from {was} to {now} when {victim} left"
                    );
                }
            }
        }
        let restored = HealthyMaglev::new(table, &case.healthy);
        assert_eq!(
            view.entries(),
            restored.entries(),
            "maglev: restoring {victim} changed the table"
        );
        check_restore("maglev", &view, &restored, case.healthy_count(), &case.keys);
    }
}

fn fuzz_ring(case: &Case) {
    let ppw = case.points_per_weight;
    if case.total_weight() * u64::from(ppw) > RING_POINTS_BUDGET {
        return;
    }
    let result = Ring::new(&case.members, ppw);
    let valid = case.members_are_valid() && case.total_weight() * u64::from(ppw) <= MAX_POINTS;
    let ring = match (result, valid) {
        (Ok(ring), true) => Arc::new(ring),
        (Err(_), false) => return,
        (Ok(_), false) => panic!(
            "ring: accepted an invalid pool {:?} at {ppw} points per weight",
            case.members
        ),
        (Err(e), true) => panic!(
            "ring: refused a valid pool {:?} at {ppw} points per weight: {e}",
            case.members
        ),
    };
    assert_eq!(
        ring.len() as u64,
        case.total_weight() * u64::from(ppw),
        "ring: point count"
    );

    let view = HealthyRing::new(ring.clone(), &case.healthy);
    check_view("ring", &view, &case.healthy, &case.keys);

    let (rev_members, rev_healthy) = case.reversed();
    let rev_ring = Arc::new(Ring::new(&rev_members, ppw).expect("ring: reversed pool refused"));
    let rev_view = HealthyRing::new(rev_ring, &rev_healthy);
    check_order_independence(
        "ring",
        &view,
        &case.members,
        &rev_view,
        &rev_members,
        case.healthy_count(),
        &case.keys,
    );

    if let Some((victim, down_health)) = case.with_victim_down() {
        let down = HealthyRing::new(ring.clone(), &down_health);
        check_view("ring, one more down", &down, &down_health, &case.keys);
        check_disruption("ring", &view, &down, victim, &case.keys);
        let restored = HealthyRing::new(ring, &case.healthy);
        check_restore("ring", &view, &restored, case.healthy_count(), &case.keys);
    }
}

fuzz_target!(|input: Input| {
    let case = Case::from_input(input);
    fuzz_maglev(&case);
    fuzz_ring(&case);
});
