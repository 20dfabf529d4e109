//! The last minute of one backend's requests, for the status page: how many
//! finished, how many of them with a 5xx, and their 99th percentile latency.
//!
//! The counters since start (`affinity_requests_total`, the duration
//! histogram) answer "how many, ever"; an operator looking at the page asks
//! "how is it doing now", which a running total cannot tell. So each backend
//! keeps a ring of [`SLOTS`] slots of [`SLOT_SECONDS`] seconds each: a
//! request count, a 5xx count and a coarse latency histogram per slot. The
//! last minute is the current slot and the eleven before it (55 to 60
//! seconds, in 5-second steps).
//!
//! Recording is on the request path, so it takes no lock: one load of the
//! slot's step, then two or three `fetch_add`s (requests, the latency bucket,
//! and 5xx when it is one). The first request of a new step takes the slot
//! over with a compare-and-swap and zeroes it, about once per 5 s per
//! backend. A request of the same step that counts between that swap and the
//! zeroing is lost: a window of a few dozen nanoseconds every 5 s, which the
//! page's figures can afford (the Prometheus counters are exact).
//!
//! The latency histogram has two buckets per power of two of microseconds
//! (the top bit and the one below it: an HDR histogram with one bit of
//! mantissa), from 1 µs to about 67 s; the percentile is interpolated
//! linearly within its bucket, as Prometheus's `histogram_quantile` does, so
//! it is off by less than a bucket's width (a third to a half of its value).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Seconds per slot.
pub const SLOT_SECONDS: u64 = 5;

/// Slots in the ring: a minute of them.
pub const SLOTS: usize = 12;

const SLOT_NS: u64 = SLOT_SECONDS * 1_000_000_000;

/// Latency buckets: `[0, 1)` and `[1, 2)` µs, then two per power of two up
/// to `[2^25 · 1.5, 2^26)` µs (50 to 67 s), which also takes anything
/// longer.
const LATENCY_BUCKETS: usize = 52;

/// One slot: the counts of one [`SLOT_SECONDS`] step of the pool's clock.
#[derive(Debug)]
struct Slot {
    /// The step the counts are for, plus one (0: never used).
    step: AtomicU64,
    requests: AtomicU32,
    errors_5xx: AtomicU32,
    /// Requests that a pinned sticky cookie sent here (counted when sent).
    pinned: AtomicU32,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            step: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            errors_5xx: AtomicU32::new(0),
            pinned: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn zero(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors_5xx.store(0, Ordering::Relaxed);
        self.pinned.store(0, Ordering::Relaxed);
        for bucket in &self.latency {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

/// A backend's requests of the last minute, in per-5-second slots.
#[derive(Debug)]
pub struct RecentRequests {
    slots: [Slot; SLOTS],
}

/// What [`RecentRequests::last_minute`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastMinute {
    /// Requests finished.
    pub requests: u64,
    /// Of them, answered with a 5xx.
    pub errors_5xx: u64,
    /// Their 99th percentile latency; `None` without requests.
    pub p99: Option<Duration>,
    /// Requests a pinned sticky cookie sent here (counted when sent, so
    /// not necessarily among `requests`).
    pub pinned: u64,
}

impl LastMinute {
    /// The share of requests answered with a 5xx; `None` without requests.
    pub fn errors_5xx_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }
}

impl Default for RecentRequests {
    fn default() -> Self {
        RecentRequests::new()
    }
}

impl RecentRequests {
    /// No requests yet.
    pub fn new() -> RecentRequests {
        RecentRequests {
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    /// Counts a request that finished with `status` after `elapsed`, at
    /// `now_ns` on the pool's clock ([`crate::pool::Pool::now_ns`]).
    pub fn record(&self, status: u16, elapsed: Duration, now_ns: u64) {
        let Some(slot) = self.slot(now_ns) else {
            return;
        };
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if (500..600).contains(&status) {
            slot.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that a pinned sticky cookie sends here at `now_ns`.
    pub fn record_pinned(&self, now_ns: u64) {
        if let Some(slot) = self.slot(now_ns) {
            slot.pinned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The slot of `now_ns`, taken over (and zeroed) if it holds an older
    /// step; `None` when it is already a minute ahead of this clock reading
    /// (a thread stalled for that long): too old to count.
    fn slot(&self, now_ns: u64) -> Option<&Slot> {
        let step = now_ns / SLOT_NS + 1;
        let slot = &self.slots[slot_index(step)];
        let seen = slot.step.load(Ordering::Acquire);
        if seen != step {
            if seen > step {
                return None;
            }
            if slot
                .step
                .compare_exchange(seen, step, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.zero();
            }
        }
        Some(slot)
    }

    /// The requests of the last minute as of `now_ns`.
    pub fn last_minute(&self, now_ns: u64) -> LastMinute {
        let current = now_ns / SLOT_NS + 1;
        let mut requests = 0u64;
        let mut errors_5xx = 0u64;
        let mut pinned = 0u64;
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in &self.slots {
            let step = slot.step.load(Ordering::Acquire);
            if step == 0 || step > current || current - step >= SLOTS as u64 {
                continue;
            }
            requests += u64::from(slot.requests.load(Ordering::Relaxed));
            errors_5xx += u64::from(slot.errors_5xx.load(Ordering::Relaxed));
            pinned += u64::from(slot.pinned.load(Ordering::Relaxed));
            for (sum, bucket) in latency.iter_mut().zip(&slot.latency) {
                *sum += u64::from(bucket.load(Ordering::Relaxed));
            }
        }
        LastMinute {
            requests,
            errors_5xx,
            p99: quantile(&latency, 990),
            pinned,
        }
    }
}

fn slot_index(step: u64) -> usize {
    // Below SLOTS: fits.
    (step % SLOTS as u64) as usize
}

/// The bucket of a latency: two per power of two of microseconds.
fn latency_bucket(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros < 2 {
        return micros as usize;
    }
    let log2 = 63 - u64::from(micros.leading_zeros());
    let half = (micros >> (log2 - 1)) & 1;
    usize::try_from(2 * log2 + half)
        .unwrap_or(usize::MAX)
        .min(LATENCY_BUCKETS - 1)
}

/// The bounds of bucket `i` in microseconds: `[lower, upper)`.
fn bucket_bounds(i: usize) -> (f64, f64) {
    if i < 2 {
        return (i as f64, i as f64 + 1.0);
    }
    let power = (1u64 << (i / 2)) as f64;
    let half = (i % 2) as f64;
    (
        power * (1.0 + half / 2.0),
        power * (1.0 + (half + 1.0) / 2.0),
    )
}

/// The quantile `per_mille`/1000 of the histogram `counts`, interpolated
/// within its bucket; `None` when it is empty.
fn quantile(counts: &[u64; LATENCY_BUCKETS], per_mille: u64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // Its rank among `total` samples, 1-based (in integers: 0.99 · 1000 is
    // not exactly 990 in floating point).
    let rank = total.saturating_mul(per_mille).div_ceil(1000).max(1) as f64;
    let mut below = 0.0;
    for (i, &count) in counts.iter().enumerate() {
        let count = count as f64;
        if count > 0.0 && below + count >= rank {
            let (lower, upper) = bucket_bounds(i);
            let micros = lower + (upper - lower) * (rank - below) / count;
            return Some(Duration::from_secs_f64(micros / 1e6));
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_latency_falls_in_the_bucket_whose_bounds_hold_it() {
        for micros in [
            0u64, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1_000, 12_345, 999_999, 30_000_000,
        ] {
            let i = latency_bucket(Duration::from_micros(micros));
            let (lower, upper) = bucket_bounds(i);
            assert!(
                lower <= micros as f64 && (micros as f64) < upper,
                "{micros} µs in bucket {i} [{lower}, {upper})"
            );
        }
        // Beyond the last bucket: clamped into it.
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
        // The buckets tile the line: each starts where the one before ends.
        for i in 1..LATENCY_BUCKETS {
            assert_eq!(bucket_bounds(i - 1).1, bucket_bounds(i).0, "bucket {i}");
        }
    }

    #[test]
    fn nothing_recorded_reports_zero_requests_and_no_share_or_percentile() {
        let recent = RecentRequests::new();
        let minute = recent.last_minute(10 * SECOND);
        assert_eq!(minute.requests, 0);
        assert_eq!(minute.errors_5xx_share(), None);
        assert_eq!(minute.p99, None);
    }

    #[test]
    fn the_last_minute_counts_requests_and_the_share_of_5xx() {
        let recent = RecentRequests::new();
        for i in 0..40 {
            let status = if i % 4 == 0 { 503 } else { 200 };
            recent.record(status, ms(5), i * SECOND);
        }
        recent.record(404, ms(5), 40 * SECOND);
        let minute = recent.last_minute(40 * SECOND);
        assert_eq!(minute.requests, 41);
        assert_eq!(minute.errors_5xx, 10);
        assert_eq!(minute.errors_5xx_share(), Some(10.0 / 41.0));
    }

    #[test]
    fn requests_older_than_a_minute_drop_out_of_the_window() {
        let recent = RecentRequests::new();
        recent.record(200, ms(1), 0);
        recent.record(500, ms(1), 30 * SECOND);
        assert_eq!(recent.last_minute(30 * SECOND).requests, 2);
        // 0 s is 12 slots back at 60 s: gone; 30 s is still in.
        let minute = recent.last_minute(60 * SECOND);
        assert_eq!((minute.requests, minute.errors_5xx), (1, 1));
        // A minute and a half later: nothing.
        assert_eq!(recent.last_minute(95 * SECOND).requests, 0);
    }

    #[test]
    fn a_slot_reused_a_minute_later_starts_from_zero() {
        let recent = RecentRequests::new();
        for _ in 0..5 {
            recent.record(500, ms(1), 2 * SECOND);
        }
        // 60 s later the same slot holds the new step only.
        recent.record(200, ms(1), 62 * SECOND);
        let minute = recent.last_minute(62 * SECOND);
        assert_eq!((minute.requests, minute.errors_5xx), (1, 0));
    }

    #[test]
    fn a_request_stamped_a_minute_before_its_slots_step_is_not_counted() {
        let recent = RecentRequests::new();
        recent.record(200, ms(1), 62 * SECOND);
        recent.record(200, ms(1), 2 * SECOND);
        assert_eq!(recent.last_minute(62 * SECOND).requests, 1);
    }

    #[test]
    fn the_p99_is_the_slow_tail_within_a_bucket_of_its_true_value() {
        let recent = RecentRequests::new();
        // 990 requests of 2 ms and 10 of 400 ms: the 99th percentile is the
        // last fast one; 980 and 20: it is a slow one.
        for i in 0..1000 {
            let latency = if i < 990 { ms(2) } else { ms(400) };
            recent.record(200, latency, SECOND);
        }
        let p99 = recent.last_minute(SECOND).p99.unwrap();
        assert!(p99 >= ms(2) && p99 < ms(3), "{p99:?}");
        let slow = RecentRequests::new();
        for i in 0..1000 {
            let latency = if i < 980 { ms(2) } else { ms(400) };
            slow.record(200, latency, SECOND);
        }
        let p99 = slow.last_minute(SECOND).p99.unwrap();
        assert!(p99 >= ms(262) && p99 <= ms(400) * 3 / 2, "{p99:?}");
    }

    #[test]
    fn the_percentile_of_one_request_lies_in_its_bucket() {
        let recent = RecentRequests::new();
        recent.record(200, ms(70), 0);
        let p99 = recent.last_minute(0).p99.unwrap();
        let (lower, upper) = bucket_bounds(latency_bucket(ms(70)));
        let micros = p99.as_secs_f64() * 1e6;
        assert!(lower <= micros && micros <= upper, "{p99:?}");
    }

    #[test]
    fn concurrent_recording_from_many_threads_loses_nothing_within_a_slot() {
        let recent = std::sync::Arc::new(RecentRequests::new());
        // Taken over before the threads start: no zeroing races with them.
        recent.record(200, ms(1), 7 * SECOND);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let recent = recent.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        recent.record(502, ms(3), 7 * SECOND);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let minute = recent.last_minute(7 * SECOND);
        assert_eq!((minute.requests, minute.errors_5xx), (40_001, 40_000));
    }
}
