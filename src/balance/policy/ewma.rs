//! A lock-free, time-decayed latency EWMA with injected time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The half-life used when the configuration does not say otherwise: an
/// observation's weight halves every 10 s.
pub const DEFAULT_LATENCY_HALF_LIFE: Duration = Duration::from_secs(10);

/// `value_bits` before the first sample. It is a NaN bit pattern, which
/// blending finite samples never produces.
const NO_SAMPLE: u64 = u64::MAX;

/// An exponentially weighted moving average of a backend's latency whose
/// weights depend on elapsed time, not on the number of samples, in the
/// family of Finagle's and linkerd's peak EWMA (Finagle `PeakEwma`; tower's
/// `balance::peak_ewma`).
///
/// With `h` the half-life and `dt` the time since the previous update,
/// `decay = 0.5^(dt / h)`, and:
///
/// - the first sample sets the value;
/// - each later sample `s` gives `value = value·decay + s·(1 − decay)`;
/// - a read at time `now` returns `value·decay(now − last update)`.
///
/// So the estimate is an average over time in which what happened `h` ago
/// counts half as much as what happens now, whatever the request rate. A
/// sample that arrives at the same instant as the previous update (`dt = 0`)
/// has weight 0; many samples in a short interval together weigh as much as
/// that interval's share of the half-life. The decay toward zero on read
/// means a backend that gets no traffic (because it looked slow) looks faster
/// and faster until it is tried again, rather than being avoided forever on
/// the strength of old samples.
///
/// What we do differently from peak EWMA: no "peak" rule (Finagle adopts a
/// sample above the estimate outright, reacting at once to spikes and
/// recovering slowly; here spikes are blended like any sample), a half-life
/// rather than Finagle's time constant `τ` (`e^(−dt/τ)`; `h = τ·ln 2`), and
/// the time is passed in by the caller rather than read from a clock.
///
/// Concurrency: two atomics, no lock. `observe` first advances the
/// last-update time with `fetch_max`, which hands each concurrent observer a
/// disjoint slice of elapsed time, then blends its sample into the value with
/// a compare-and-swap loop, so no sample is lost. A reader racing with an
/// observer can see the new time with the old value, which briefly
/// under-decays the old estimate. A sample whose time is earlier than the last
/// update (out of order) is treated as `dt = 0`.
#[derive(Debug)]
pub struct LatencyEwma {
    half_life_ns: f64,
    /// `f64` bits of the estimate in nanoseconds, or `NO_SAMPLE`.
    value_bits: AtomicU64,
    /// Time of the last update, in the caller's nanosecond clock.
    last_ns: AtomicU64,
}

impl LatencyEwma {
    /// An empty average whose samples lose half their weight every
    /// `half_life`. A zero half-life is taken as 1 ns: each sample then
    /// practically replaces the estimate.
    pub fn new(half_life: Duration) -> Self {
        LatencyEwma {
            half_life_ns: (half_life.as_nanos() as f64).max(1.0),
            value_bits: AtomicU64::new(NO_SAMPLE),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Records a latency `sample` taken at `now_ns`, a monotonic time in
    /// nanoseconds on a clock of the caller's choice (the same for every call
    /// on this average).
    pub fn observe(&self, sample: Duration, now_ns: u64) {
        let sample_ns = sample.as_nanos() as f64;
        let previous_ns = self.last_ns.fetch_max(now_ns, Ordering::Relaxed);
        let decay = self.decay(now_ns.saturating_sub(previous_ns));
        let mut current = self.value_bits.load(Ordering::Relaxed);
        loop {
            let next = if current == NO_SAMPLE {
                sample_ns
            } else {
                f64::from_bits(current) * decay + sample_ns * (1.0 - decay)
            };
            match self.value_bits.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The estimate at `now_ns` in nanoseconds (rounded), decayed since the
    /// last sample; `None` before the first sample.
    pub fn value_ns(&self, now_ns: u64) -> Option<u64> {
        let bits = self.value_bits.load(Ordering::Relaxed);
        if bits == NO_SAMPLE {
            return None;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns.load(Ordering::Relaxed));
        // `as` saturates; the value is finite and non-negative.
        Some((f64::from_bits(bits) * self.decay(elapsed)).round() as u64)
    }

    /// `0.5^(dt / half-life)`.
    fn decay(&self, dt_ns: u64) -> f64 {
        (-(dt_ns as f64) / self.half_life_ns).exp2()
    }
}

impl Default for LatencyEwma {
    /// An empty average with [`DEFAULT_LATENCY_HALF_LIFE`].
    fn default() -> Self {
        LatencyEwma::new(DEFAULT_LATENCY_HALF_LIFE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_average_without_samples_reads_none() {
        let ewma = LatencyEwma::default();
        assert_eq!(ewma.value_ns(0), None);
        assert_eq!(ewma.value_ns(5 * SECOND), None);
    }

    #[test]
    fn the_first_sample_sets_the_value() {
        let ewma = LatencyEwma::new(Duration::from_secs(10));
        ewma.observe(ms(100), 42 * SECOND);
        assert_eq!(ewma.value_ns(42 * SECOND), Some(100 * MS));
    }

    #[test]
    fn the_estimate_halves_every_half_life_without_samples() {
        let ewma = LatencyEwma::new(Duration::from_secs(10));
        ewma.observe(ms(100), 0);
        assert_eq!(ewma.value_ns(10 * SECOND), Some(50 * MS));
        assert_eq!(ewma.value_ns(20 * SECOND), Some(25 * MS));
        // 0.5^(5/10) = 0.70710678…
        assert_eq!(ewma.value_ns(5 * SECOND), Some(70_710_678));
    }

    #[test]
    fn a_sample_one_half_life_later_weighs_one_half() {
        let ewma = LatencyEwma::new(Duration::from_secs(10));
        ewma.observe(ms(100), 0);
        ewma.observe(ms(200), 10 * SECOND);
        // 100·0.5 + 200·0.5
        assert_eq!(ewma.value_ns(10 * SECOND), Some(150 * MS));
        // Two half-lives later a third sample weighs 3/4:
        // 150·0.25 + 50·0.75 = 75.
        ewma.observe(ms(50), 30 * SECOND);
        assert_eq!(ewma.value_ns(30 * SECOND), Some(75 * MS));
    }

    #[test]
    fn a_sample_at_the_instant_of_the_previous_update_weighs_nothing() {
        let ewma = LatencyEwma::new(Duration::from_secs(10));
        ewma.observe(ms(100), SECOND);
        ewma.observe(ms(900), SECOND);
        assert_eq!(ewma.value_ns(SECOND), Some(100 * MS));
    }

    #[test]
    fn a_sample_older_than_the_last_update_counts_as_no_time_elapsed() {
        let ewma = LatencyEwma::new(Duration::from_secs(10));
        ewma.observe(ms(100), 10 * SECOND);
        ewma.observe(ms(900), 5 * SECOND);
        assert_eq!(ewma.value_ns(10 * SECOND), Some(100 * MS));
        ewma.observe(ms(300), 20 * SECOND);
        assert_eq!(ewma.value_ns(20 * SECOND), Some(200 * MS));
    }

    #[test]
    fn a_zero_half_life_makes_each_later_sample_replace_the_estimate() {
        let ewma = LatencyEwma::new(Duration::ZERO);
        ewma.observe(ms(100), 0);
        ewma.observe(ms(7), 1_000);
        assert_eq!(ewma.value_ns(1_000), Some(7 * MS));
    }

    #[test]
    fn concurrent_observers_of_one_latency_agree_on_it() {
        let ewma = LatencyEwma::new(Duration::from_millis(1));
        std::thread::scope(|s| {
            for thread in 0..4u64 {
                let ewma = &ewma;
                s.spawn(move || {
                    for i in 0..1_000u64 {
                        ewma.observe(ms(30), (i * 4 + thread) * 1_000);
                    }
                });
            }
        });
        // The last update is thread 3's last sample, at (999·4 + 3) µs.
        assert_eq!(ewma.value_ns(3_999_000), Some(30 * MS));
    }
}
