//! What a pool's controller knows about its backends beyond health: the
//! admin API's overrides (drain, weight) and the slow-start ramps. Plain
//! state with the clock passed in, so every rule is tested without I/O; the
//! controller ([`crate::pool::checks`]) owns one and turns it into
//! [`Conditions`] for each snapshot it builds.
//!
//! Rules:
//! * an override is kept while its backend's name stays in the pool; a
//!   field equal to the file's value is dropped (on the write, and on every
//!   reload), so once the file says what the runtime change said, the file
//!   governs again;
//! * with `slow_start = T`, a backend ramps for `T` from the moment it
//!   becomes healthy, is added by a reload (not at startup), or stops
//!   draining; going down or starting to drain ends its ramp (it starts
//!   again from zero when it returns), and so does `slow_start` turning off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::PoolConfig;
use crate::pool::backend::Override;
use crate::pool::snapshot::Conditions;

/// A change the admin API asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Start (`true`) or stop (`false`) draining.
    Drain(bool),
    /// Use this weight.
    Weight(u32),
}

/// The overrides and ramps of one pool's backends, by name.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    overrides: HashMap<Arc<str>, Override>,
    /// When each ramping backend started its ramp.
    ramps: HashMap<Arc<str>, Instant>,
}

/// The shortest and longest step between two snapshots of a ramp.
const MIN_STEP: Duration = Duration::from_millis(50);
const MAX_STEP: Duration = Duration::from_secs(1);

impl Runtime {
    /// No overrides, no ramps.
    pub fn new() -> Runtime {
        Runtime::default()
    }

    /// The snapshot inputs for `config` at `now`, with `healthy` (config
    /// order). Ramps that have run their course are over (see
    /// [`finish_ramps`](Self::finish_ramps)).
    pub fn conditions(&self, config: &PoolConfig, healthy: Vec<bool>, now: Instant) -> Conditions {
        let slow_start = config.balancer.slow_start;
        Conditions {
            overrides: config
                .backends
                .iter()
                .map(|b| {
                    self.overrides
                        .get(b.name.as_str())
                        .copied()
                        .unwrap_or_default()
                })
                .collect(),
            progress: config
                .backends
                .iter()
                .map(|b| match self.ramps.get(b.name.as_str()) {
                    Some(&start) if !slow_start.is_zero() => {
                        now.saturating_duration_since(start).as_secs_f64()
                            / slow_start.as_secs_f64()
                    }
                    _ => 1.0,
                })
                .collect(),
            healthy,
            source: None,
            gone: Vec::new(),
        }
    }

    /// The override of `name`, if any.
    pub fn override_of(&self, name: &str) -> Override {
        self.overrides.get(name).copied().unwrap_or_default()
    }

    /// Whether `name` drains under `config` with the overrides.
    fn drains(&self, config: &PoolConfig, name: &str) -> bool {
        let file = config.backends.iter().find(|b| b.name == name);
        self.override_of(name)
            .drain
            .unwrap_or(file.is_some_and(|b| b.drain))
    }

    /// Applies `change` to backend `name` of `config` at `now`; `false`
    /// when the pool has no such backend.
    pub fn set(&mut self, config: &PoolConfig, name: &str, change: Change, now: Instant) -> bool {
        let Some(file) = config.backends.iter().find(|b| b.name == name) else {
            return false;
        };
        let was_draining = self.drains(config, name);
        let key: Arc<str> = Arc::from(name);
        let entry = self.overrides.entry(key.clone()).or_default();
        match change {
            Change::Drain(drain) => entry.drain = (drain != file.drain).then_some(drain),
            Change::Weight(weight) => entry.weight = (weight != file.weight).then_some(weight),
        }
        if entry.is_empty() {
            self.overrides.remove(name);
        }
        let draining = self.drains(config, name);
        if draining {
            self.ramps.remove(name);
        } else if was_draining {
            self.start_ramp(config, key, now);
        }
        true
    }

    /// A backend became healthy (`true`) or went down (`false`) at `now`.
    pub fn health_changed(&mut self, config: &PoolConfig, name: &Arc<str>, up: bool, now: Instant) {
        if up && !self.drains(config, name) {
            self.start_ramp(config, name.clone(), now);
        } else {
            self.ramps.remove(&**name);
        }
    }

    /// Adopts `next` after `previous` at `now`: overrides and ramps of
    /// backends that are gone are dropped, so are override fields now equal
    /// to the file's; a backend `next` adds ramps, as does one that stops
    /// draining; `is_healthy` says which backends are healthy now (a down
    /// backend starts its ramp when it comes back).
    pub fn reload(
        &mut self,
        previous: &PoolConfig,
        next: &PoolConfig,
        is_healthy: impl Fn(&str) -> bool,
        now: Instant,
    ) {
        let was_draining: HashMap<&str, bool> = previous
            .backends
            .iter()
            .map(|b| (b.name.as_str(), self.drains(previous, &b.name)))
            .collect();
        self.overrides.retain(|name, o| {
            let Some(file) = next.backends.iter().find(|b| b.name == **name) else {
                return false;
            };
            o.drain = o.drain.filter(|&d| d != file.drain);
            o.weight = o.weight.filter(|&w| w != file.weight);
            !o.is_empty()
        });
        self.ramps
            .retain(|name, _| next.backends.iter().any(|b| b.name == **name));
        for b in &next.backends {
            let draining = self.drains(next, &b.name);
            let joins = match was_draining.get(b.name.as_str()) {
                None => true,
                Some(&before) => before && !draining,
            };
            if draining {
                self.ramps.remove(b.name.as_str());
            } else if joins && is_healthy(&b.name) {
                self.start_ramp(next, Arc::from(b.name.as_str()), now);
            }
        }
        if next.balancer.slow_start.is_zero() {
            self.ramps.clear();
        }
    }

    fn start_ramp(&mut self, config: &PoolConfig, name: Arc<str>, now: Instant) {
        if !config.balancer.slow_start.is_zero() {
            self.ramps.insert(name, now);
        }
    }

    /// Ends the ramps that have run for `slow_start` by `now`; their names.
    pub fn finish_ramps(&mut self, config: &PoolConfig, now: Instant) -> Vec<Arc<str>> {
        let slow_start = config.balancer.slow_start;
        let done: Vec<Arc<str>> = self
            .ramps
            .iter()
            .filter(|(_, start)| now.saturating_duration_since(**start) >= slow_start)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &done {
            self.ramps.remove(name);
        }
        done
    }

    /// When the next snapshot of a ramp is due, if a backend ramps, given
    /// when the last one was published (`last`): a hundredth of
    /// `slow_start` (between 50 ms and 1 s) after it, or exactly at the end
    /// of the first ramp to finish if that is sooner. Counted from the last
    /// publish, not from now: a controller woken often (probe results) must
    /// not keep putting the step off.
    pub fn next_step(&self, config: &PoolConfig, last: Instant) -> Option<Instant> {
        let slow_start = config.balancer.slow_start;
        let first_end = self.ramps.values().map(|&start| start + slow_start).min()?;
        let step = (slow_start / 100).clamp(MIN_STEP, MAX_STEP);
        Some((last + step).min(first_end))
    }

    /// Ends `name`'s ramp, if it has one: it takes its full share now.
    pub fn end_ramp(&mut self, name: &str) {
        self.ramps.remove(name);
    }

    /// The backends that ramp.
    pub fn ramps(&self) -> impl Iterator<Item = &Arc<str>> {
        self.ramps.keys()
    }

    /// Whether a backend ramps.
    pub fn ramping(&self) -> bool {
        !self.ramps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn pool(slow_start: &str, states: &[&str]) -> PoolConfig {
        let mut text = format!("[balancer]\nslow_start = \"{slow_start}\"\n");
        for (i, state) in states.iter().enumerate() {
            text.push_str(&format!(
                "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\nstate = \"{state}\"\n",
                9000 + i
            ));
        }
        let config = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        PoolConfig::clone(&config.pools[0])
    }

    fn progress(runtime: &Runtime, config: &PoolConfig, now: Instant) -> Vec<f64> {
        runtime
            .conditions(config, vec![true; config.backends.len()], now)
            .progress
    }

    #[test]
    fn a_backend_that_comes_back_ramps_linearly_and_a_failure_ends_the_ramp() {
        let config = pool("10s", &["active", "active"]);
        let mut runtime = Runtime::new();
        let t0 = Instant::now();
        let b1: Arc<str> = Arc::from("b1");
        runtime.health_changed(&config, &b1, true, t0);
        assert_eq!(progress(&runtime, &config, t0), [1.0, 0.0]);
        let p = progress(&runtime, &config, t0 + Duration::from_millis(2500));
        assert!((p[1] - 0.25).abs() < 1e-9, "{p:?}");
        assert_eq!(
            runtime.next_step(&config, t0),
            Some(t0 + Duration::from_millis(100))
        );
        runtime.health_changed(&config, &b1, false, t0 + Duration::from_secs(3));
        assert!(!runtime.ramping());
        assert_eq!(runtime.next_step(&config, t0), None);
        runtime.health_changed(&config, &b1, true, t0 + Duration::from_secs(4));
        let at_end = t0 + Duration::from_secs(14);
        assert_eq!(
            runtime.next_step(&config, t0 + Duration::from_millis(13_950)),
            Some(at_end)
        );
        assert!(
            runtime
                .finish_ramps(&config, at_end - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(runtime.finish_ramps(&config, at_end), [b1]);
        assert_eq!(progress(&runtime, &config, at_end), [1.0, 1.0]);
    }

    #[test]
    fn without_slow_start_nothing_ramps() {
        let config = pool("0s", &["active", "drain"]);
        let mut runtime = Runtime::new();
        let now = Instant::now();
        runtime.health_changed(&config, &Arc::from("b0"), true, now);
        assert!(runtime.set(&config, "b1", Change::Drain(false), now));
        assert!(!runtime.ramping());
    }

    #[test]
    fn drain_and_weight_overrides_and_an_override_equal_to_the_file_is_dropped() {
        let config = pool("10s", &["active", "drain"]);
        let mut runtime = Runtime::new();
        let now = Instant::now();
        assert!(!runtime.set(&config, "nope", Change::Drain(true), now));
        assert!(runtime.set(&config, "b0", Change::Drain(true), now));
        assert!(runtime.set(&config, "b0", Change::Weight(5), now));
        assert_eq!(
            runtime.override_of("b0"),
            Override {
                drain: Some(true),
                weight: Some(5)
            }
        );
        let c = runtime.conditions(&config, vec![true, true], now);
        assert_eq!(c.overrides[0].drain, Some(true));
        // Undraining a backend the file drains: an override, and a ramp.
        assert!(runtime.set(&config, "b1", Change::Drain(false), now));
        assert_eq!(runtime.override_of("b1").drain, Some(false));
        assert_eq!(progress(&runtime, &config, now)[1], 0.0);
        // Setting the file's own values drops the override; b0 stops
        // draining, so it ramps.
        assert!(runtime.set(&config, "b0", Change::Drain(false), now));
        assert!(runtime.set(&config, "b0", Change::Weight(1), now));
        assert!(runtime.override_of("b0").is_empty());
        assert_eq!(progress(&runtime, &config, now), [0.0, 0.0]);
        // Draining again ends the ramp.
        assert!(runtime.set(&config, "b1", Change::Drain(true), now));
        assert_eq!(progress(&runtime, &config, now), [0.0, 1.0]);
        assert!(runtime.override_of("b1").is_empty());
    }

    #[test]
    fn a_reload_keeps_overrides_by_name_and_ramps_added_and_undrained_backends() {
        let before = pool("10s", &["active", "active", "drain"]);
        let mut runtime = Runtime::new();
        let t0 = Instant::now();
        runtime.set(&before, "b0", Change::Weight(7), t0);
        runtime.set(&before, "b1", Change::Drain(true), t0);
        // b1 leaves; b2 stops draining in the file; b3 is new; b4 is new but down.
        let mut next = pool("10s", &["active", "active", "active", "active", "active"]);
        next.backends.remove(1);
        let t1 = t0 + Duration::from_secs(1);
        runtime.reload(&before, &next, |name| name != "b4", t1);
        assert_eq!(runtime.override_of("b0").weight, Some(7));
        assert!(runtime.override_of("b1").is_empty());
        let names: Vec<&str> = next.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["b0", "b2", "b3", "b4"]);
        assert_eq!(progress(&runtime, &next, t1), [1.0, 0.0, 0.0, 1.0]);
        // The file catches up with the weight: the override goes.
        let mut caught_up = next.clone();
        caught_up.backends[0].weight = 7;
        runtime.reload(&next, &caught_up, |_| true, t1);
        assert!(runtime.override_of("b0").is_empty());
        // slow_start turned off ends every ramp.
        let mut off = caught_up.clone();
        off.balancer.slow_start = Duration::ZERO;
        runtime.reload(&caught_up, &off, |_| true, t1);
        assert!(!runtime.ramping());
    }
}
