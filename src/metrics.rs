//! Prometheus metrics, kept with the `prometheus-client` crate and rendered
//! in its text exposition format by [`Metrics::encode`].
//!
//! One [`Metrics`] belongs to a [`crate::pool::Pool`] and lives as long as
//! it: counters keep counting across snapshots and reloads. Recording is a
//! few atomic operations and never blocks a request.
//!
//! Families recorded here:
//! * `affinity_health_transitions_total{backend,to}`: health changes, `to`
//!   being `healthy` or `unhealthy`;
//! * `affinity_table_rebuilds_total`: snapshots published after a health
//!   change or a reload;
//! * `affinity_table_rebuild_duration_seconds`: how long building each took;
//! * `affinity_table_moved_ratio`: the share of the key space whose backend
//!   the last rebuild changed (hash algorithms; 0 for the classic policies).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::health::Transition;

/// Labels of `affinity_health_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The backend's name.
    pub backend: String,
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
}

/// Every metric the proxy keeps, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    health_transitions: Family<TransitionLabels, Counter>,
    table_rebuilds: Counter,
    table_rebuild_duration: Histogram,
    table_moved_ratio: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let health_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "affinity_health_transitions",
            "Backend health changes, by backend and the state it changed to",
            health_transitions.clone(),
        );
        let table_rebuilds = Counter::default();
        registry.register(
            "affinity_table_rebuilds",
            "Pool snapshots published after a health change or a reload",
            table_rebuilds.clone(),
        );
        // 50 µs .. ~3.3 s.
        let table_rebuild_duration = Histogram::new(exponential_buckets(50e-6, 4.0, 9));
        registry.register(
            "affinity_table_rebuild_duration_seconds",
            "Time to build the next pool snapshot (selector table included)",
            table_rebuild_duration.clone(),
        );
        let table_moved_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "affinity_table_moved_ratio",
            "Share of the key space whose backend the last rebuild changed",
            table_moved_ratio.clone(),
        );
        Metrics {
            registry,
            health_transitions,
            table_rebuilds,
            table_rebuild_duration,
            table_moved_ratio,
        }
    }

    /// Counts a health change of `backend`.
    pub fn health_transition(&self, backend: &str, transition: Transition) {
        let to = match transition {
            Transition::Up => "healthy",
            Transition::Down => "unhealthy",
        };
        self.health_transitions
            .get_or_create(&TransitionLabels {
                backend: backend.to_owned(),
                to,
            })
            .inc();
    }

    /// Counts a published rebuild that took `duration` and moved `moved`
    /// (0..=1) of the key space.
    pub fn table_rebuilt(&self, duration: Duration, moved: f64) {
        self.table_rebuilds.inc();
        self.table_rebuild_duration.observe(duration.as_secs_f64());
        self.table_moved_ratio.set(moved);
    }

    /// The text exposition of every family (OpenMetrics text, which
    /// Prometheus reads), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn a_fresh_registry_exposes_every_family_with_help_text() {
        let text = Metrics::new().encode();
        for family in [
            "affinity_health_transitions",
            "affinity_table_rebuilds",
            "affinity_table_rebuild_duration_seconds",
            "affinity_table_moved_ratio",
        ] {
            assert!(
                line(&text, &format!("# HELP {family} ")).is_some(),
                "{family}:\n{text}"
            );
        }
        assert_eq!(
            line(&text, "affinity_table_rebuilds_total "),
            Some("affinity_table_rebuilds_total 0")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn transitions_and_rebuilds_count_with_their_labels() {
        let metrics = Metrics::new();
        metrics.health_transition("server-1", Transition::Down);
        metrics.health_transition("server-1", Transition::Down);
        metrics.health_transition("server-1", Transition::Up);
        metrics.table_rebuilt(Duration::from_micros(120), 0.25);
        let text = metrics.encode();
        assert_eq!(
            line(
                &text,
                "affinity_health_transitions_total{backend=\"server-1\",to=\"unhealthy\"}"
            ),
            Some("affinity_health_transitions_total{backend=\"server-1\",to=\"unhealthy\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "affinity_health_transitions_total{backend=\"server-1\",to=\"healthy\"}"
            ),
            Some("affinity_health_transitions_total{backend=\"server-1\",to=\"healthy\"} 1")
        );
        assert_eq!(
            line(&text, "affinity_table_rebuilds_total "),
            Some("affinity_table_rebuilds_total 1")
        );
        assert_eq!(
            line(&text, "affinity_table_moved_ratio "),
            Some("affinity_table_moved_ratio 0.25")
        );
        assert_eq!(
            line(&text, "affinity_table_rebuild_duration_seconds_count "),
            Some("affinity_table_rebuild_duration_seconds_count 1")
        );
    }
}
