//! Plain round robin (the default of nginx's `upstream` and HAProxy's
//! `balance roundrobin` when all weights are equal).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Plain round robin: picks the eligible backends in the order given, one
/// after another, forever.
///
/// Guarantee: with no exclusions, any `k × n` consecutive picks (over all
/// threads together) return each of the `n` backends exactly `k` times, and a
/// single thread sees the exact cycle. One shared [`AtomicUsize`] ticket per
/// pick makes this hold under concurrency without a lock. When the ticket's
/// backend is excluded, the pick moves on to the next backend in the cycle
/// that is not, without taking another ticket, so retries do not disturb the
/// cycle other requests see (the backend after an excluded one serves that
/// retry in addition to its own turn).
///
/// The ticket counter wraps after 2^64 picks (2^32 on 32-bit targets), where
/// the cycle restarts once at a position that is not a multiple of `n`.
#[derive(Debug)]
pub struct RoundRobin {
    eligible: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A cycle over `eligible` (pool indices), in this order.
    pub fn new(eligible: Vec<usize>) -> Self {
        RoundRobin {
            eligible,
            next: AtomicUsize::new(0),
        }
    }

    /// The next backend of the cycle that is not in `exclude`, or `None` if
    /// every eligible backend is excluded (or there is none).
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let (tail, head) = self.eligible.split_at(start);
        head.iter()
            .chain(tail)
            .copied()
            .find(|backend| !exclude.contains(backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_backends_for_300_picks_form_an_exact_cycle() {
        let rr = RoundRobin::new(vec![7, 3, 5]);
        for i in 0..300 {
            assert_eq!(rr.pick(&[]), Some([7, 3, 5][i % 3]), "pick {i}");
        }
    }

    #[test]
    fn excluded_backends_are_skipped_and_the_cycle_resumes_after_them() {
        let rr = RoundRobin::new(vec![0, 1, 2]);
        assert_eq!(rr.pick(&[]), Some(0));
        // Backend 1's turn, but this request already tried it.
        assert_eq!(rr.pick(&[1]), Some(2));
        // The next request sees the cycle where it was.
        assert_eq!(rr.pick(&[]), Some(2));
        assert_eq!(rr.pick(&[]), Some(0));
        assert_eq!(rr.pick(&[]), Some(1));
        // Excluding the last backend of the list wraps to the first.
        assert_eq!(rr.pick(&[2, 1]), Some(0));
        for _ in 0..30 {
            assert_ne!(rr.pick(&[1]), Some(1));
        }
    }

    #[test]
    fn an_empty_list_always_picks_none() {
        let rr = RoundRobin::new(Vec::new());
        for _ in 0..5 {
            assert_eq!(rr.pick(&[]), None);
        }
    }

    #[test]
    fn all_backends_excluded_picks_none() {
        let rr = RoundRobin::new(vec![4, 2]);
        assert_eq!(rr.pick(&[2, 4]), None);
        assert_eq!(rr.pick(&[4, 9, 2]), None);
        assert_eq!(
            rr.pick(&[9]),
            Some(4),
            "an unknown excluded index is harmless"
        );
    }

    #[test]
    fn four_threads_of_10_000_picks_over_four_backends_give_exactly_10_000_each() {
        let rr = RoundRobin::new(vec![0, 1, 2, 3]);
        let counts = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut counts = [0u32; 4];
                        for _ in 0..10_000 {
                            let picked = rr.pick(&[]).expect("non-empty pool");
                            counts[picked] += 1;
                        }
                        counts
                    })
                })
                .collect();
            let mut total = [0u32; 4];
            for worker in workers {
                let counts = worker.join().expect("worker panicked");
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
            }
            total
        });
        assert_eq!(counts, [10_000; 4]);
    }
}
