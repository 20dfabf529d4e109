//! Least response time: the backend with the lowest latency EWMA.

use std::sync::atomic::AtomicUsize;

use super::load::{Load, rotating_best};

/// Least response time: picks the backend with the lowest latency EWMA (see
/// [`LatencyEwma`](super::LatencyEwma)), in the family of Finagle's and
/// linkerd's peak-EWMA balancers (Finagle's `PeakEwma`; linkerd2-proxy via
/// `tower::balance::p2c` with `PeakEwma`).
///
/// Ranking, best first: a backend with no latency sample yet (it has to be
/// tried to be measured); then the lower EWMA; then, for equal EWMAs, fewer
/// requests in flight; then whichever the pick's rotating start offset (one
/// [`AtomicUsize`] ticket per pick) meets first, so full ties are shared in
/// turn.
///
/// What we do differently from peak EWMA: we scan every eligible backend
/// instead of taking the better of two random ones (power of two choices),
/// we do not multiply the latency by the requests in flight (in flight only
/// breaks ties), and our EWMA has no "peak" rule (a slow sample is blended,
/// not adopted outright). A consequence to know: while one backend's EWMA is
/// lowest it receives every new request until its EWMA rises; the estimate's
/// decay toward zero while a backend gets no samples (see
/// [`LatencyEwma::value_ns`](super::LatencyEwma::value_ns)) is what brings
/// an avoided backend back into rotation.
///
/// Guarantee: the returned backend is minimal under that ranking among the
/// eligible, non-excluded backends, as read from [`Load`] during the pick.
/// Each pick is O(n).
#[derive(Debug)]
pub struct LeastResponseTime {
    /// Pool index and weight: a backend's EWMA counts as `1/weight` times
    /// its value, so equal weights rank by the EWMA itself.
    eligible: Vec<(usize, u32)>,
    next: AtomicUsize,
}

impl LeastResponseTime {
    /// Least response time over `eligible` (pool indices).
    pub fn new(eligible: Vec<usize>) -> Self {
        LeastResponseTime::weighted(eligible.into_iter().map(|b| (b, 1)).collect())
    }

    /// Least response time over `eligible` (pool index, weight): a backend's
    /// latency counts as `1/weight` times its EWMA, so one of weight 20
    /// beside others of weight 100 must be five times faster to be picked
    /// (slow start ramps a returning backend this way). A weight of 0 counts
    /// as 1.
    pub fn weighted(eligible: Vec<(usize, u32)>) -> Self {
        LeastResponseTime {
            eligible,
            next: AtomicUsize::new(0),
        }
    }

    /// The best-ranked backend not in `exclude`, or `None` if there is none.
    pub fn pick(&self, load: &dyn Load, exclude: &[usize]) -> Option<usize> {
        rotating_best(
            &self.eligible,
            &self.next,
            |&(backend, weight)| {
                (!exclude.contains(&backend)).then(|| {
                    // Unmeasured (`None`) sorts first.
                    let ewma = load.latency_ewma_ns(backend);
                    let scaled =
                        u128::from(ewma.unwrap_or(0)) * (1 << 20) / u128::from(weight.max(1));
                    let rank = (ewma.is_some(), scaled, load.in_flight(backend));
                    (backend, rank)
                })
            },
            |rank, best| rank < best,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestLoad;
    use super::*;

    #[test]
    fn a_backend_with_a_higher_ewma_is_avoided() {
        let load = TestLoad::new(3);
        load.set_ewma(0, Some(30_000_000));
        load.set_ewma(1, Some(5_000_000));
        load.set_ewma(2, Some(12_000_000));
        let lrt = LeastResponseTime::new(vec![0, 1, 2]);
        for _ in 0..10 {
            assert_eq!(lrt.pick(&load, &[]), Some(1));
        }
        assert_eq!(lrt.pick(&load, &[1]), Some(2));
        // More requests in flight do not outweigh a lower EWMA.
        load.set_in_flight(1, 50);
        assert_eq!(lrt.pick(&load, &[]), Some(1));
    }

    #[test]
    fn unmeasured_backends_are_tried_first() {
        let load = TestLoad::new(3);
        load.set_ewma(0, Some(1));
        load.set_ewma(2, Some(0));
        load.set_in_flight(1, 9);
        let lrt = LeastResponseTime::new(vec![0, 1, 2]);
        for _ in 0..6 {
            assert_eq!(lrt.pick(&load, &[]), Some(1));
        }
        load.set_ewma(1, Some(10));
        assert_eq!(lrt.pick(&load, &[]), Some(2));
    }

    #[test]
    fn equal_ewmas_are_broken_by_fewer_requests_in_flight() {
        let load = TestLoad::new(3);
        for b in 0..3 {
            load.set_ewma(b, Some(7_000));
        }
        load.set_in_flight(0, 3);
        load.set_in_flight(1, 1);
        load.set_in_flight(2, 2);
        let lrt = LeastResponseTime::new(vec![0, 1, 2]);
        for _ in 0..6 {
            assert_eq!(lrt.pick(&load, &[]), Some(1));
        }
    }

    #[test]
    fn full_ties_are_shared_in_turn() {
        let load = TestLoad::new(3);
        let lrt = LeastResponseTime::new(vec![0, 1, 2]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[lrt.pick(&load, &[]).expect("non-empty")] += 1;
        }
        assert_eq!(counts, [100; 3], "unmeasured and idle");
        for b in 0..3 {
            load.set_ewma(b, Some(4_000));
            load.set_in_flight(b, 2);
        }
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[lrt.pick(&load, &[]).expect("non-empty")] += 1;
        }
        assert_eq!(counts, [100; 3], "measured and equally loaded");
    }

    #[test]
    fn excluded_backends_are_never_returned() {
        let load = TestLoad::new(2);
        load.set_ewma(1, Some(100));
        let lrt = LeastResponseTime::new(vec![0, 1]);
        assert_eq!(lrt.pick(&load, &[0]), Some(1));
        assert_eq!(lrt.pick(&load, &[0, 1]), None);
        assert_eq!(LeastResponseTime::new(Vec::new()).pick(&load, &[]), None);
    }
}
