//! Weighted random selection from a seeded, counter-based generator.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment, the golden ratio in 64-bit fixed point.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Weighted random (HAProxy's `balance random` without its "draws", nginx's
/// `random` without `two`): each pick returns backend `i` with probability
/// `weight_i / Σ weight`, by binary search of a uniform draw in the prefix
/// sums of the weights.
///
/// Randomness: the `k`-th draw (`k` = 1, 2, …, counted by one shared
/// [`AtomicU64`]) is `splitmix64_mix(seed + k·γ)`, which is exactly the
/// `k`-th output of Steele, Lea & Flood's SplitMix64 (OOPSLA 2014) seeded
/// with `seed`. Being counter-based, it needs no lock and threads never share
/// mutable generator state beyond that counter; a fixed seed gives a
/// reproducible sequence in one thread (and the same multiset of draws across
/// threads). It is not cryptographic: a client who sees enough picks could
/// predict the next ones, which only matters if that lets it pile onto one
/// backend. The draw in `[0, Σw)` is Lemire's multiply-shift, biased by at
/// most `Σw / 2^64`.
///
/// Exclusions: if the draw lands on an excluded backend, one more draw picks
/// among the backends that are left, with probability proportional to weight,
/// by a linear walk; so a pick never loops and the result is distributed
/// exactly by weight over the backends not excluded. Weight-0 backends are
/// never picked.
#[derive(Debug)]
pub struct Random {
    backends: Vec<usize>,
    weights: Vec<u32>,
    /// `prefix[i]` = sum of `weights[..=i]`.
    prefix: Vec<u64>,
    seed: u64,
    draws: AtomicU64,
}

impl Random {
    /// Weighted random over `eligible` (pool index, weight) pairs, drawing
    /// from SplitMix64 seeded with `seed`.
    pub fn new(eligible: Vec<(usize, u32)>, seed: u64) -> Self {
        let (backends, weights): (Vec<usize>, Vec<u32>) = eligible.into_iter().unzip();
        let prefix = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        Random {
            backends,
            weights,
            prefix,
            seed,
            draws: AtomicU64::new(0),
        }
    }

    /// A backend drawn with probability proportional to its weight among
    /// those not in `exclude`, or `None` if no backend with a positive weight
    /// is left.
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let total = self.prefix.last().copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        let r = below(self.next_u64(), total);
        // The first prefix sum above `r`; zero-weight entries have a prefix
        // equal to their predecessor's and are therefore never the first.
        let first = self
            .backends
            .get(self.prefix.partition_point(|&sum| sum <= r))
            .copied()?;
        if !exclude.contains(&first) {
            return Some(first);
        }
        let is_left = |&(backend, _): &(&usize, &u32)| !exclude.contains(backend);
        let remaining: u64 = self
            .backends
            .iter()
            .zip(&self.weights)
            .filter(is_left)
            .map(|(_, &w)| u64::from(w))
            .sum();
        if remaining == 0 {
            return None;
        }
        let mut r = below(self.next_u64(), remaining);
        for (&backend, &weight) in self.backends.iter().zip(&self.weights).filter(is_left) {
            let weight = u64::from(weight);
            if r < weight {
                return Some(backend);
            }
            r -= weight;
        }
        None
    }

    fn next_u64(&self) -> u64 {
        let k = self.draws.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        splitmix64_mix(self.seed.wrapping_add(k.wrapping_mul(GOLDEN_GAMMA)))
    }
}

/// SplitMix64's output function (a variant of MurmurHash3's finalizer).
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform `x` to `[0, n)` (Lemire, 2019, without the rejection step).
fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(random: &Random, n: usize, exclude: &[usize]) -> Vec<usize> {
        (0..n)
            .map(|_| random.pick(exclude).expect("a backend is left"))
            .collect()
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // Reference outputs of SplitMix64 seeded with 0 and with 1234567.
        let zero = Random::new(vec![(0, 1)], 0);
        let outputs: Vec<u64> = (0..3).map(|_| zero.next_u64()).collect();
        assert_eq!(
            outputs,
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f
            ]
        );
        let other = Random::new(vec![(0, 1)], 1_234_567);
        let outputs: Vec<u64> = (0..2).map(|_| other.next_u64()).collect();
        assert_eq!(
            outputs,
            [6_457_827_717_110_365_317, 3_203_168_211_198_807_973]
        );
    }

    #[test]
    fn a_fixed_seed_gives_a_reproducible_sequence() {
        let eligible = vec![(0, 1), (1, 2), (2, 3), (3, 4)];
        let a = picks(&Random::new(eligible.clone(), 99), 1_000, &[]);
        let b = picks(&Random::new(eligible.clone(), 99), 1_000, &[]);
        let c = picks(&Random::new(eligible, 100), 1_000, &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_1_2_3_4_pass_a_chi_square_test_over_100_000_picks() {
        let random = Random::new(vec![(0, 1), (1, 2), (2, 3), (3, 4)], 2024);
        let mut counts = [0u64; 4];
        for b in picks(&random, 100_000, &[]) {
            counts[b] += 1;
        }
        let chi_square: f64 = counts
            .iter()
            .zip([10_000.0, 20_000.0, 30_000.0, 40_000.0])
            .map(|(&observed, expected)| (observed as f64 - expected).powi(2) / expected)
            .sum();
        // 99.9 % critical value of χ² with 3 degrees of freedom.
        assert!(chi_square < 16.27, "χ² = {chi_square}, counts {counts:?}");
    }

    #[test]
    fn an_excluded_backend_is_never_returned_and_the_rest_keep_their_proportions() {
        let random = Random::new(vec![(0, 1), (1, 2), (2, 3), (3, 4)], 5);
        let mut counts = [0u64; 4];
        for b in picks(&random, 60_000, &[3, 1]) {
            counts[b] += 1;
        }
        assert_eq!((counts[1], counts[3]), (0, 0));
        // Backends 0 and 2 share 1:3: expect 15,000 and 45,000.
        let chi_square = (counts[0] as f64 - 15_000.0).powi(2) / 15_000.0
            + (counts[2] as f64 - 45_000.0).powi(2) / 45_000.0;
        // 99.9 % critical value of χ² with 1 degree of freedom.
        assert!(chi_square < 10.83, "χ² = {chi_square}, counts {counts:?}");
    }

    #[test]
    fn all_backends_excluded_or_empty_or_weightless_picks_none() {
        let random = Random::new(vec![(4, 1), (8, 2)], 1);
        assert_eq!(random.pick(&[8, 4]), None);
        assert_eq!(Random::new(Vec::new(), 1).pick(&[]), None);
        assert_eq!(Random::new(vec![(1, 0), (2, 0)], 1).pick(&[]), None);
    }

    #[test]
    fn a_backend_with_weight_zero_is_never_picked() {
        let random = Random::new(vec![(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)], 3);
        assert!(picks(&random, 5_000, &[]).iter().all(|&b| b == 1 || b == 3));
        assert!(picks(&random, 100, &[1]).iter().all(|&b| b == 3));
    }
}
