//! Least connections, as HAProxy's `balance leastconn` and nginx's
//! `least_conn`.

use std::sync::atomic::AtomicUsize;

use super::load::{Load, rotating_best};

/// Least connections: picks the backend with the fewest requests in flight
/// per unit of weight (HAProxy's `balance leastconn`; nginx's `least_conn`,
/// `ngx_http_upstream_get_least_conn_peer`, 2012).
///
/// Backends are compared by `in_flight / weight` with cross-multiplied
/// integers (`a.in_flight × b.weight < b.in_flight × a.weight`, in `u128`, so
/// no float rounding and no overflow), as nginx does; HAProxy ranks a busy
/// server by `(in_flight + 1) / weight` instead (`fwlc_queue_srv`). In all
/// three, idle backends tie whatever their weights, so weights only steer
/// traffic once there is load.
///
/// Ties are shared: each pick starts its scan at a rotating offset (one
/// [`AtomicUsize`] ticket per pick) and keeps the first best backend it meets,
/// so backends with equal load take turns instead of the first one in the
/// list taking everything. nginx instead breaks ties by weighted round robin;
/// here tied backends take equal turns regardless of weight.
///
/// Guarantees: the returned backend has the minimal ratio among the eligible,
/// non-excluded backends with a positive weight, as read from [`Load`] during
/// the pick (the figures are live, so concurrent picks may see the same
/// minimum and pick the same backend); with all loads equal and no
/// exclusions, any `k × n` consecutive picks give each backend exactly `k`.
/// Each pick is O(n): one `in_flight` read per backend.
#[derive(Debug)]
pub struct LeastConnections {
    eligible: Vec<(usize, u32)>,
    next: AtomicUsize,
}

impl LeastConnections {
    /// Least connections over `eligible` (pool index, weight) pairs. A
    /// backend with weight 0 is drained: it is never picked.
    pub fn new(eligible: Vec<(usize, u32)>) -> Self {
        LeastConnections {
            eligible,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend with the fewest requests in flight per unit of weight that
    /// is not in `exclude`, or `None` if there is none.
    pub fn pick(&self, load: &dyn Load, exclude: &[usize]) -> Option<usize> {
        rotating_best(
            &self.eligible,
            &self.next,
            |&(backend, weight)| {
                (weight != 0 && !exclude.contains(&backend)).then(|| {
                    let in_flight = u128::from(load.in_flight(backend));
                    (backend, (in_flight, u128::from(weight)))
                })
            },
            // in_flight/weight compared by cross-multiplication: exact, no floats.
            |&(in_flight, weight), &(best_in_flight, best_weight)| {
                in_flight * best_weight < best_in_flight * weight
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestLoad;
    use super::*;

    #[test]
    fn the_backend_with_fewer_requests_in_flight_is_preferred() {
        let load = TestLoad::new(3);
        load.set_in_flight(0, 4);
        load.set_in_flight(1, 1);
        load.set_in_flight(2, 3);
        let lc = LeastConnections::new(vec![(0, 1), (1, 1), (2, 1)]);
        for _ in 0..10 {
            assert_eq!(lc.pick(&load, &[]), Some(1));
        }
        assert_eq!(lc.pick(&load, &[1]), Some(2));
    }

    #[test]
    fn weighted_backends_are_compared_by_in_flight_per_weight() {
        let load = TestLoad::new(2);
        let lc = LeastConnections::new(vec![(0, 3), (1, 1)]);
        // 5/3 < 2/1: the heavier backend carries more and is still preferred.
        load.set_in_flight(0, 5);
        load.set_in_flight(1, 2);
        for _ in 0..4 {
            assert_eq!(lc.pick(&load, &[]), Some(0));
        }
        // 7/3 > 2/1.
        load.set_in_flight(0, 7);
        for _ in 0..4 {
            assert_eq!(lc.pick(&load, &[]), Some(1));
        }
        // 6/3 == 2/1: an exact tie, so the two take turns.
        load.set_in_flight(0, 6);
        let mut counts = [0; 2];
        for _ in 0..10 {
            counts[lc.pick(&load, &[]).expect("non-empty")] += 1;
        }
        assert_eq!(counts, [5, 5]);
    }

    #[test]
    fn huge_in_flight_counts_and_weights_do_not_overflow_the_comparison() {
        let load = TestLoad::new(2);
        load.set_in_flight(0, u64::MAX);
        load.set_in_flight(1, u64::MAX - 1);
        let lc = LeastConnections::new(vec![(0, u32::MAX), (1, u32::MAX)]);
        assert_eq!(lc.pick(&load, &[]), Some(1));
    }

    #[test]
    fn equal_zero_load_over_1000_picks_gives_each_of_four_backends_exactly_250() {
        let load = TestLoad::new(4);
        let lc = LeastConnections::new(vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
        let mut counts = [0; 4];
        for _ in 0..1000 {
            counts[lc.pick(&load, &[]).expect("non-empty")] += 1;
        }
        assert_eq!(counts, [250; 4]);
    }

    #[test]
    fn excluded_and_zero_weight_backends_are_never_returned() {
        let load = TestLoad::new(4);
        load.set_in_flight(2, 100);
        let lc = LeastConnections::new(vec![(0, 1), (1, 0), (2, 1), (3, 1)]);
        for _ in 0..20 {
            assert_eq!(
                lc.pick(&load, &[0, 3]),
                Some(2),
                "busier, but the only one left"
            );
        }
        assert_eq!(lc.pick(&load, &[0, 2, 3]), None);
    }

    #[test]
    fn an_empty_list_always_picks_none() {
        let load = TestLoad::new(1);
        assert_eq!(LeastConnections::new(Vec::new()).pick(&load, &[]), None);
    }
}
