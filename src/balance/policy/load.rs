//! What the load-aware policies read: the pool's live load, and the scan
//! they share.

/// The shared scan of the load-aware policies: walks `eligible` once from a
/// start that rotates with `next` (so candidates that tie share the load in
/// turn), ranks each with `rank` (`None` skips it: excluded or drained), and
/// returns the backend of the first candidate no later one beats.
pub(super) fn rotating_best<T, R>(
    eligible: &[T],
    next: &std::sync::atomic::AtomicUsize,
    rank: impl Fn(&T) -> Option<(usize, R)>,
    beats: impl Fn(&R, &R) -> bool,
) -> Option<usize> {
    if eligible.is_empty() {
        return None;
    }
    let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % eligible.len();
    let (tail, head) = eligible.split_at(start);
    let mut best: Option<(usize, R)> = None;
    for candidate in head.iter().chain(tail) {
        let Some((backend, r)) = rank(candidate) else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, best_r)| beats(&r, best_r)) {
            best = Some((backend, r));
        }
    }
    best.map(|(backend, _)| backend)
}

/// Live load figures of the pool, read at pick time.
///
/// `backend` is an index into the pool, the same index the policy was built
/// with. Implementations are expected to be cheap (an atomic load) because a
/// policy may call them once per eligible backend per pick.
pub trait Load {
    /// Requests currently in flight to `backend`.
    fn in_flight(&self, backend: usize) -> u64;
    /// The backend's latency EWMA in nanoseconds, or `None` when it has no
    /// sample yet (see [`LatencyEwma::value_ns`](super::LatencyEwma::value_ns)).
    fn latency_ewma_ns(&self, backend: usize) -> Option<u64>;
}
