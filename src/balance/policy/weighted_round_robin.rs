//! nginx's smooth weighted round robin, precomputed so picks are lock-free.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest schedule [`WeightedRoundRobin`] precomputes (2^20 picks, 4 MiB).
///
/// Weights whose sum exceeds it are first divided by their greatest common
/// divisor (which does not change the sequence at all), then, if still too
/// large, scaled down to fit (which approximates it); see
/// [`WeightedRoundRobin::new`].
pub const MAX_PERIOD: usize = 1 << 20;

/// nginx's smooth weighted round robin (Maxim Dounin, 2012:
/// `ngx_http_upstream_get_peer` in `ngx_http_upstream_round_robin.c`).
///
/// Each step, every backend's `current` grows by its weight; the backend with
/// the largest `current` is picked (ties: the earlier one in the list) and its
/// `current` drops by the total weight. Weights 5:1:1 give `a a b a c a a`
/// rather than classic WRR's `a a a a a b c`: heavy backends are interleaved
/// with the light ones instead of receiving bursts.
///
/// nginx runs that O(n) step on every request (under the peers' lock when the
/// upstream lives in a shared memory zone). Here the whole period (Σ weights
/// picks, after which every `current` is back to 0 and the sequence repeats)
/// is computed once at construction and walked with one [`AtomicUsize`]
/// ticket per pick, so picks take no lock and do O(1) work.
///
/// Guarantees: with no exclusions, the picks (over all threads together) follow
/// nginx's sequence exactly, and any `k` whole periods give each backend
/// exactly `k × weight` picks. A backend with weight 0 is never picked.
/// Construction replays nginx's steps with a kinetic tournament tree in
/// O(Σw · log n) rather than nginx's O(Σw · n): about 15 ms for 100 backends
/// of weights up to 1000 and 0.3 to 0.7 s for 1,000 to 65,534 backends
/// (release build, one core), where the plain loop would take minutes. Build
/// it off the async runtime (a blocking task) when the pool is large.
///
/// Exclusions: when the ticket's backend is excluded, the pick walks forward
/// along the schedule to the first backend that is not, without taking more
/// tickets, so other requests' sequence is undisturbed. Every backend with a
/// positive weight occurs in each period, so the walk ends within one period;
/// because the schedule is smooth it usually ends within a few steps.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// Pool indices of the backends with a positive weight, in the given order.
    members: Vec<usize>,
    /// Weights actually scheduled, parallel to `members` (see `new`).
    weights: Vec<u32>,
    /// One period of the schedule, as positions into `members`.
    period: Vec<u32>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Precomputes the smooth WRR schedule of `eligible` (pool index, weight)
    /// pairs, in this order (the order decides ties, as in nginx).
    ///
    /// Weights are divided by their greatest common divisor: nginx's sequence
    /// for `k·w` is its sequence for `w` repeated `k` times, so nothing
    /// observable changes and the schedule is shorter. If the reduced sum still
    /// exceeds [`MAX_PERIOD`] (only possible with more than 1,048 backends at
    /// weight 1000), each weight `w` becomes `max(1, ⌊w·(MAX_PERIOD − n)/Σw⌋)`
    /// (then reduced by the gcd again), which keeps the period within
    /// [`MAX_PERIOD`] and each backend's picks per period within one of the
    /// exact proportion `w·(MAX_PERIOD − n)/Σw`. That is close for heavy
    /// backends and coarse for backends whose proportion is near one pick:
    /// among 65,534 backends, half at weight 1000 and half at weight 1, the
    /// light ones are scheduled at 1 against 29 rather than 1 against 1000.
    /// With more than [`MAX_PERIOD`] backends, every weight becomes 1 (plain
    /// round robin).
    pub fn new(eligible: Vec<(usize, u32)>) -> Self {
        // Positions are stored as u32; four billion backends are far beyond
        // any pool (the crate caps pools at 65,534).
        let (members, raw): (Vec<usize>, Vec<u32>) = eligible
            .into_iter()
            .filter(|&(_, weight)| weight > 0)
            .take(u32::MAX as usize)
            .unzip();
        let weights = schedulable_weights(&raw);
        let period = smooth_schedule(&weights);
        WeightedRoundRobin {
            members,
            weights,
            period,
            next: AtomicUsize::new(0),
        }
    }

    /// The number of picks after which the sequence repeats: the sum of the
    /// scheduled (gcd-reduced, possibly scaled) weights; 0 for an empty pool.
    pub fn period_len(&self) -> usize {
        self.period.len()
    }

    /// The weights actually scheduled, in the order of the backends with a
    /// positive weight (gcd-reduced, possibly scaled; see [`Self::new`]).
    pub fn scheduled_weights(&self) -> &[u32] {
        &self.weights
    }

    /// The next backend of the schedule that is not in `exclude`, or `None` if
    /// every backend with a positive weight is excluded (or there is none).
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let len = self.period.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let first = self.member_at(start)?;
        if !exclude.contains(&first) {
            return Some(first);
        }
        // Checked first so that a fully excluded pool costs O(n), not a walk
        // over the whole period.
        if self.members.iter().all(|b| exclude.contains(b)) {
            return None;
        }
        let (tail, head) = self.period.split_at(start);
        head.iter()
            .chain(tail)
            .filter_map(|&pos| self.members.get(pos as usize).copied())
            .find(|backend| !exclude.contains(backend))
    }

    fn member_at(&self, slot: usize) -> Option<usize> {
        let pos = *self.period.get(slot)?;
        self.members.get(pos as usize).copied()
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides positive `weights` by their gcd, then scales them into
/// [`MAX_PERIOD`] if needed (see [`WeightedRoundRobin::new`]).
fn schedulable_weights(weights: &[u32]) -> Vec<u32> {
    fn reduce(weights: &[u32]) -> Vec<u32> {
        let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        weights.iter().map(|&w| w / g).collect()
    }
    let reduced = reduce(weights);
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    let cap = MAX_PERIOD as u64;
    if total <= cap {
        return reduced;
    }
    let n = reduced.len() as u64;
    if n >= cap {
        return vec![1; reduced.len()];
    }
    // Σ⌊w·target/total⌋ ≤ target, and raising zeros to 1 adds at most n,
    // so the scaled sum is at most `cap`. w < 2^32 and target < 2^20, so the
    // product fits in a u64, and the quotient (≤ target) in a u32.
    let target = cap - n;
    let scaled: Vec<u32> = reduced
        .iter()
        .map(|&w| {
            let w = u64::from(w) * target / total;
            u32::try_from(w).unwrap_or(u32::MAX).max(1)
        })
        .collect();
    reduce(&scaled)
}

/// Marks an empty slot of the tournament (padding leaves).
const NONE: u32 = u32::MAX;

/// One period of nginx's smooth WRR over `weights` (all positive), as
/// positions into `weights`.
///
/// After the add of step `t`, backend `i`'s `current` is the line
/// `weights[i]·t − total·picks_i`, so picking the maximum is a query over
/// lines that move at different speeds: a kinetic tournament tree (Basch,
/// Guibas & Hershberger, 1999) keeps each internal node's winner together with
/// the first step at which its loser would overtake it, and only replays the
/// matches whose certificate has expired. Ties go to the left child, i.e. the
/// earlier backend, exactly as nginx's strict `>` scan.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if weights.is_empty() || total == 0 {
        return Vec::new();
    }
    let mut tree = Tournament::new(weights, total);
    // `total` ≤ MAX_PERIOD, or the number of backends, so it fits in memory.
    let mut period = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=total {
        tree.refresh(1, t);
        let winner = tree.winner[1];
        period.push(winner);
        tree.charge(winner, t);
    }
    period
}

/// Kinetic tournament over the lines `slope[i]·t + offset[i]`, in a
/// 1-based heap layout: node `k` has children `2k` and `2k + 1`, leaves start
/// at `leaves`.
struct Tournament<'a> {
    slope: &'a [u32],
    offset: Vec<i64>,
    total: i64,
    leaves: usize,
    /// Each node's current winner (a leaf position) or `NONE`.
    winner: Vec<u32>,
    /// The first step at which the node's match may have another winner.
    expires: Vec<u64>,
    /// The earliest `expires` in the node's subtree, itself included.
    due: Vec<u64>,
}

impl<'a> Tournament<'a> {
    fn new(slope: &'a [u32], total: u64) -> Self {
        let leaves = slope.len().next_power_of_two();
        let mut winner = vec![NONE; 2 * leaves];
        for (i, w) in winner[leaves..leaves + slope.len()].iter_mut().enumerate() {
            // slope.len() ≤ u32::MAX (see `WeightedRoundRobin::new`).
            *w = i as u32;
        }
        let mut tree = Tournament {
            slope,
            offset: vec![0; slope.len()],
            // total ≤ 2^32 · 2^32 in theory; in practice ≤ MAX_PERIOD.
            total: i64::try_from(total).unwrap_or(i64::MAX),
            leaves,
            winner,
            expires: vec![u64::MAX; 2 * leaves],
            due: vec![u64::MAX; 2 * leaves],
        };
        for node in (1..leaves).rev() {
            tree.play(node, 0);
        }
        tree
    }

    fn value(&self, leaf: u32, t: u64) -> i64 {
        let i = leaf as usize;
        i64::from(self.slope[i]) * t as i64 + self.offset[i]
    }

    /// Replays node's match at step `t`, its children being valid at `t`.
    fn play(&mut self, node: usize, t: u64) {
        let (l, r) = (self.winner[2 * node], self.winner[2 * node + 1]);
        let (winner, expires) = if r == NONE {
            (l, u64::MAX)
        } else if l == NONE {
            (r, u64::MAX)
        } else {
            let (vl, vr) = (self.value(l, t), self.value(r, t));
            let (sl, sr) = (self.slope[l as usize], self.slope[r as usize]);
            if vl >= vr {
                // The right one takes over once strictly ahead:
                // the first k with k·(sr − sl) > vl − vr.
                let expires = if sr > sl {
                    t + (vl - vr) as u64 / u64::from(sr - sl) + 1
                } else {
                    u64::MAX
                };
                (l, expires)
            } else {
                // The left one takes over once level (ties go left):
                // the first k with k·(sl − sr) ≥ vr − vl.
                let expires = if sl > sr {
                    t + ((vr - vl) as u64).div_ceil(u64::from(sl - sr))
                } else {
                    u64::MAX
                };
                (r, expires)
            }
        };
        self.winner[node] = winner;
        self.expires[node] = expires;
        self.due[node] = expires.min(self.due[2 * node]).min(self.due[2 * node + 1]);
    }

    /// Brings the subtree under `node` up to step `t`.
    fn refresh(&mut self, node: usize, t: u64) {
        if self.due[node] > t {
            return;
        }
        self.refresh(2 * node, t);
        self.refresh(2 * node + 1, t);
        self.play(node, t);
    }

    /// `leaf` was picked at step `t`: its `current` drops by the total.
    fn charge(&mut self, leaf: u32, t: u64) {
        self.offset[leaf as usize] -= self.total;
        let mut node = (self.leaves + leaf as usize) / 2;
        while node >= 1 {
            self.play(node, t);
            node /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// nginx's loop, verbatim in spirit: O(n) per step.
    fn nginx_sequence(weights: &[u32], steps: usize) -> Vec<usize> {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let best = best.expect("non-empty weights");
            current[best] -= total;
            out.push(best);
        }
        out
    }

    fn picks(wrr: &WeightedRoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| wrr.pick(&[]).expect("non-empty")).collect()
    }

    const A: usize = 10;
    const B: usize = 20;
    const C: usize = 30;

    #[test]
    fn five_one_one_over_70_picks_is_exactly_50_10_10() {
        let wrr = WeightedRoundRobin::new(vec![(A, 5), (B, 1), (C, 1)]);
        let seq = picks(&wrr, 70);
        let count = |b| seq.iter().filter(|&&x| x == b).count();
        assert_eq!((count(A), count(B), count(C)), (50, 10, 10));
    }

    #[test]
    fn one_period_of_five_one_one_is_nginx_a_a_b_a_c_a_a() {
        let wrr = WeightedRoundRobin::new(vec![(A, 5), (B, 1), (C, 1)]);
        assert_eq!(wrr.period_len(), 7);
        assert_eq!(picks(&wrr, 14), [A, A, B, A, C, A, A, A, A, B, A, C, A, A]);
    }

    #[test]
    fn five_one_one_never_gives_the_heavy_backend_its_whole_weight_in_a_row() {
        // Classic WRR sends `a` five times in a row; the smooth sequence,
        // repeated, never has more than four (two at a period's end plus two
        // at the next one's start), and the light backends never repeat.
        let wrr = WeightedRoundRobin::new(vec![(A, 5), (B, 1), (C, 1)]);
        let seq = picks(&wrr, 70);
        assert_eq!(longest_run(&seq, A), 4);
        assert_eq!(longest_run(&seq, B), 1);
        assert_eq!(longest_run(&seq, C), 1);
    }

    fn longest_run(seq: &[usize], backend: usize) -> usize {
        seq.chunk_by(|a, b| a == b)
            .filter(|run| run[0] == backend)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        let wrr = WeightedRoundRobin::new(vec![(3, 4), (1, 4), (2, 4)]);
        assert_eq!(wrr.period_len(), 3);
        assert_eq!(picks(&wrr, 6), [3, 1, 2, 3, 1, 2]);
    }

    #[test]
    fn weights_with_a_common_factor_give_the_same_sequence_with_a_shorter_period() {
        let small = WeightedRoundRobin::new(vec![(A, 5), (B, 1), (C, 1)]);
        let large = WeightedRoundRobin::new(vec![(A, 500), (B, 100), (C, 100)]);
        assert_eq!(large.period_len(), 7);
        assert_eq!(large.scheduled_weights(), [5, 1, 1]);
        assert_eq!(picks(&small, 700), picks(&large, 700));
        assert_eq!(
            picks(
                &WeightedRoundRobin::new(vec![(A, 500), (B, 100), (C, 100)]),
                700
            ),
            nginx_sequence(&[500, 100, 100], 700)
                .into_iter()
                .map(|i| [A, B, C][i])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_backend_with_weight_zero_is_never_picked() {
        let wrr = WeightedRoundRobin::new(vec![(A, 0), (B, 2), (C, 1)]);
        assert_eq!(picks(&wrr, 9), [B, C, B, B, C, B, B, C, B]);
        assert_eq!(wrr.pick(&[B, C]), None);
        assert_eq!(WeightedRoundRobin::new(vec![(A, 0)]).pick(&[]), None);
    }

    #[test]
    fn an_empty_list_always_picks_none() {
        let wrr = WeightedRoundRobin::new(Vec::new());
        assert_eq!(wrr.period_len(), 0);
        assert_eq!(wrr.pick(&[]), None);
        assert_eq!(wrr.pick(&[1]), None);
    }

    #[test]
    fn excluded_backends_are_skipped_without_disturbing_the_sequence() {
        let wrr = WeightedRoundRobin::new(vec![(A, 5), (B, 1), (C, 1)]);
        assert_eq!(wrr.pick(&[]), Some(A));
        // Slot 2 is `a`; this request already tried it: the walk reaches `b`.
        assert_eq!(wrr.pick(&[A]), Some(B));
        // The sequence continues at slot 3 as if nothing happened.
        assert_eq!(picks(&wrr, 5), [B, A, C, A, A]);
        // Only `c` left: found across the period boundary.
        assert_eq!(wrr.pick(&[A, B]), Some(C));
        assert_eq!(wrr.pick(&[A, B, C]), None);
        for _ in 0..50 {
            assert_eq!(wrr.pick(&[B, A]), Some(C));
        }
    }

    #[test]
    fn a_large_pool_whose_weights_exceed_the_cap_is_scaled_to_fit_and_stays_proportional() {
        let mut rng = fastrand::Rng::with_seed(42);
        let weights: Vec<u32> = (0..5_000).map(|_| rng.u32(1..=1000)).collect();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        assert!(total > MAX_PERIOD as u64);
        let wrr = WeightedRoundRobin::new(weights.iter().copied().enumerate().collect());
        assert!(wrr.period_len() <= MAX_PERIOD);
        assert_eq!(
            wrr.period_len() as u64,
            wrr.scheduled_weights()
                .iter()
                .map(|&w| u64::from(w))
                .sum::<u64>()
        );
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..wrr.period_len() {
            counts[wrr.pick(&[]).expect("non-empty")] += 1;
        }
        let target = (MAX_PERIOD - weights.len()) as f64;
        for (i, (&w, &got)) in weights.iter().zip(&counts).enumerate() {
            assert_eq!(got, u64::from(wrr.scheduled_weights()[i]));
            let exact = f64::from(w) * target / total as f64;
            assert!(
                (got as f64 - exact).abs() < 1.0,
                "backend {i}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn the_schedule_equals_nginx_for_a_few_hundred_backends() {
        let mut rng = fastrand::Rng::with_seed(7);
        let weights: Vec<u32> = (0..300).map(|_| rng.u32(1..=1000)).collect();
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        let wrr = WeightedRoundRobin::new(weights.iter().copied().enumerate().collect());
        assert_eq!(picks(&wrr, total), nginx_sequence(&weights, total));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_schedule_equals_nginx_step_by_step(
            weights in prop::collection::vec(1u32..=60, 1..12),
            periods in 1usize..3,
        ) {
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let wrr = WeightedRoundRobin::new(weights.iter().copied().enumerate().collect());
            prop_assert_eq!(picks(&wrr, periods * total), nginx_sequence(&weights, periods * total));
        }

        #[test]
        fn over_k_full_periods_each_backend_gets_exactly_k_times_its_weight(
            weights in prop::collection::vec(1u32..=1000, 1..20),
            k in 1usize..4,
        ) {
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let wrr = WeightedRoundRobin::new(weights.iter().copied().enumerate().collect());
            let mut counts = vec![0usize; weights.len()];
            for b in picks(&wrr, k * total) {
                counts[b] += 1;
            }
            let expected: Vec<usize> = weights.iter().map(|&w| k * w as usize).collect();
            prop_assert_eq!(counts, expected);
        }

        #[test]
        fn no_run_of_one_backend_is_longer_than_its_weight(
            weights in prop::collection::vec(1u32..=100, 2..8),
        ) {
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let wrr = WeightedRoundRobin::new(weights.iter().copied().enumerate().collect());
            let seq = picks(&wrr, 3 * total);
            for (b, &w) in weights.iter().enumerate() {
                prop_assert!(longest_run(&seq, b) <= w as usize);
            }
        }
    }
}
