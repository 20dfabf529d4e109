//! Health as a pure state machine: [`HealthState`] per backend (no I/O,
//! no clock). `unhealthy_threshold` consecutive failures take a healthy
//! backend down, `healthy_threshold` consecutive successes bring a down
//! backend back. Every backend starts healthy. The task that feeds it probe
//! results and passive failures is [`crate::pool::checks`].

use std::fmt;

use http::StatusCode;

use crate::config::HealthCheckConfig;

/// The consecutive counts that change a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that restore a down backend (at least 1).
    pub healthy: u32,
    /// Consecutive failures that take a healthy backend down (at least 1).
    pub unhealthy: u32,
}

impl From<&HealthCheckConfig> for Thresholds {
    fn from(config: &HealthCheckConfig) -> Thresholds {
        Thresholds {
            healthy: config.healthy_threshold,
            unhealthy: config.unhealthy_threshold,
        }
    }
}

/// A change of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Healthy to down.
    Down,
    /// Down to healthy.
    Up,
}

/// The health of one backend and its current run of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    /// Whether the selector may pick the backend.
    pub healthy: bool,
    /// Consecutive successes, while down (0 when healthy).
    pub successes: u32,
    /// Consecutive failures, while healthy (0 when down).
    pub failures: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::new()
    }
}

impl HealthState {
    /// A healthy backend with no results yet, as every backend starts.
    pub fn new() -> HealthState {
        HealthState {
            healthy: true,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the transition it caused, if any. A
    /// threshold of 0 counts as 1.
    pub fn record(&mut self, success: bool, thresholds: Thresholds) -> Option<Transition> {
        match (self.healthy, success) {
            (true, true) => {
                self.failures = 0;
                None
            }
            (true, false) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= thresholds.unhealthy.max(1) {
                    *self = HealthState {
                        healthy: false,
                        successes: 0,
                        failures: 0,
                    };
                    Some(Transition::Down)
                } else {
                    None
                }
            }
            (false, true) => {
                self.successes = self.successes.saturating_add(1);
                if self.successes >= thresholds.healthy.max(1) {
                    *self = HealthState::new();
                    Some(Transition::Up)
                } else {
                    None
                }
            }
            (false, false) => {
                self.successes = 0;
                None
            }
        }
    }
}

/// What one probe or request found out about a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The probe got a `2xx` or `3xx`.
    ProbeOk(StatusCode),
    /// A TCP probe's connection opened.
    Connected,
    /// The probe got another status.
    ProbeStatus(StatusCode),
    /// The probe got no response within `health_check.timeout`.
    ProbeTimeout,
    /// The probe could not connect or its exchange failed.
    ProbeError(String),
    /// A real request could not connect to the backend.
    ConnectFailed,
    /// A real request reached the backend, which then broke the exchange
    /// off (reset or closed the connection before or during its response).
    RequestFailed(&'static str),
}

impl Observation {
    /// Whether it counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Observation::ProbeOk(_) | Observation::Connected)
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::ProbeOk(status) => write!(f, "probe answered {}", status.as_u16()),
            Observation::Connected => f.write_str("probe connected"),
            Observation::ProbeStatus(status) => write!(f, "probe answered {}", status.as_u16()),
            Observation::ProbeTimeout => f.write_str("probe timed out"),
            Observation::ProbeError(error) => write!(f, "probe failed: {error}"),
            Observation::ConnectFailed => f.write_str("a request could not connect"),
            Observation::RequestFailed(what) => write!(f, "a request failed: {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 3,
    };

    fn down() -> HealthState {
        let mut s = HealthState::new();
        for _ in 0..T.unhealthy {
            s.record(false, T);
        }
        assert!(!s.healthy);
        s
    }

    #[test]
    fn every_backend_starts_healthy_with_no_counts() {
        let s = HealthState::new();
        assert!(s.healthy);
        assert_eq!((s.successes, s.failures), (0, 0));
        assert_eq!(HealthState::default(), s);
    }

    #[test]
    fn a_healthy_backend_goes_down_on_exactly_the_unhealthy_threshold_of_failures() {
        let mut s = HealthState::new();
        assert_eq!(s.record(false, T), None);
        assert_eq!(s.record(false, T), None);
        assert!(s.healthy);
        assert_eq!(s.record(false, T), Some(Transition::Down));
        assert!(!s.healthy);
        assert_eq!((s.successes, s.failures), (0, 0));
    }

    #[test]
    fn a_success_resets_the_failure_run_of_a_healthy_backend() {
        let mut s = HealthState::new();
        s.record(false, T);
        s.record(false, T);
        assert_eq!(s.record(true, T), None);
        assert_eq!(s.failures, 0);
        assert_eq!(s.record(false, T), None);
        assert_eq!(s.record(false, T), None);
        assert!(s.healthy);
        assert_eq!(s.record(false, T), Some(Transition::Down));
    }

    #[test]
    fn successes_of_a_healthy_backend_change_nothing() {
        let mut s = HealthState::new();
        for _ in 0..10 {
            assert_eq!(s.record(true, T), None);
            assert_eq!(s, HealthState::new());
        }
    }

    #[test]
    fn a_down_backend_comes_back_on_exactly_the_healthy_threshold_of_successes() {
        let mut s = down();
        assert_eq!(s.record(true, T), None);
        assert!(!s.healthy);
        assert_eq!(s.record(true, T), Some(Transition::Up));
        assert_eq!(s, HealthState::new());
    }

    #[test]
    fn a_failure_resets_the_success_run_of_a_down_backend() {
        let mut s = down();
        s.record(true, T);
        assert_eq!(s.record(false, T), None);
        assert_eq!(s.successes, 0);
        assert_eq!(s.record(true, T), None);
        assert_eq!(s.record(true, T), Some(Transition::Up));
    }

    #[test]
    fn failures_of_a_down_backend_change_nothing() {
        let mut s = down();
        for _ in 0..10 {
            assert_eq!(s.record(false, T), None);
            assert!(!s.healthy);
        }
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change_of_result() {
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        let mut s = HealthState::new();
        assert_eq!(s.record(false, one), Some(Transition::Down));
        assert_eq!(s.record(false, one), None);
        assert_eq!(s.record(true, one), Some(Transition::Up));
        assert_eq!(s.record(true, one), None);
    }

    #[test]
    fn a_threshold_of_zero_counts_as_one() {
        let zero = Thresholds {
            healthy: 0,
            unhealthy: 0,
        };
        let mut s = HealthState::new();
        assert_eq!(s.record(true, zero), None);
        assert_eq!(s.record(false, zero), Some(Transition::Down));
        assert_eq!(s.record(true, zero), Some(Transition::Up));
    }

    #[test]
    fn every_sequence_of_six_results_matches_a_model_of_consecutive_runs() {
        for bits in 0u32..(1 << 6) {
            let mut s = HealthState::new();
            let mut healthy = true;
            let mut run = 0u32;
            for i in 0..6 {
                let success = bits & (1 << i) != 0;
                // Model: count the run of results that oppose the current health.
                if success != healthy {
                    run += 1;
                } else {
                    run = 0;
                }
                let needed = if healthy { T.unhealthy } else { T.healthy };
                let expected = if run == needed {
                    healthy = !healthy;
                    run = 0;
                    Some(if healthy {
                        Transition::Up
                    } else {
                        Transition::Down
                    })
                } else {
                    None
                };
                assert_eq!(s.record(success, T), expected, "bits {bits:06b} step {i}");
                assert_eq!(s.healthy, healthy, "bits {bits:06b} step {i}");
            }
        }
    }

    #[test]
    fn only_a_2xx_or_3xx_probe_counts_as_a_success() {
        assert!(Observation::ProbeOk(StatusCode::OK).is_success());
        assert!(!Observation::ProbeStatus(StatusCode::SERVICE_UNAVAILABLE).is_success());
        assert!(!Observation::ProbeTimeout.is_success());
        assert!(!Observation::ProbeError("refused".into()).is_success());
        assert!(!Observation::ConnectFailed.is_success());
        assert!(!Observation::RequestFailed("reset").is_success());
    }
}
