//! Prometheus metrics, kept with the `prometheus-client` crate and rendered
//! by it in the OpenMetrics text format or the Prometheus text format 0.0.4
//! ([`Metrics::encode_with`], served by the admin endpoint's `/metrics`).
//!
//! One [`Metrics`] belongs to a [`crate::pool::Pool`] and lives as long as
//! it: counters keep counting across snapshots and reloads. Recording is a
//! few atomic operations (plus a read-locked label lookup in a family) and
//! never blocks a request.
//!
//! Families recorded as things happen:
//! * `affinity_requests_total{backend,code}`: requests finished (counted when
//!   the response body has been sent or abandoned), by the backend that
//!   answered and the status the client got. A `502` or `504` the proxy
//!   answered because a backend failed counts against that backend; a
//!   request that no backend is to blame for (`503` no healthy backend, `405`
//!   for `CONNECT`, `400`) has the backend label `""` ([`NO_BACKEND`], which
//!   no configured backend can have: names are never empty);
//! * `affinity_request_duration_seconds{backend}`: from the request's arrival
//!   to the end of its response body, labelled as above;
//! * `affinity_upstream_retries_total{backend,reason}`: requests sent on to
//!   the next backend after `backend` failed, `reason` being
//!   `connect_error` or `upstream_error`;
//! * `affinity_health_transitions_total{backend,to}`: health changes, `to`
//!   being `healthy` or `unhealthy`;
//! * `affinity_table_rebuilds_total`: snapshots published after a health
//!   change or a reload;
//! * `affinity_table_rebuild_duration_seconds`: how long building each took;
//! * `affinity_table_moved_ratio`: the share of the key space whose backend
//!   the last rebuild changed (hash algorithms; 0 for the classic policies).
//!
//! Families read from the current [`Snapshot`] at scrape time (a
//! [`Collector`], so a backend removed by a reload disappears from them):
//! * `affinity_backend_healthy{backend}`: 1 or 0;
//! * `affinity_backend_in_flight{backend}`: requests sent to it whose
//!   response has not finished;
//! * `affinity_table_share{backend}`: its share of the key space now (hash
//!   algorithms), or of the healthy weight (classic policies).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::health::Transition;
use crate::pool::Snapshot;

/// The `backend` label of requests no backend is to blame for.
pub const NO_BACKEND: &str = "";

/// Upper bounds of the request duration buckets, in seconds: 1 ms to 30 s.
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of `affinity_health_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The backend's name.
    pub backend: String,
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
}

/// Labels of `affinity_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
    /// The status the client got.
    pub code: u16,
}

/// Labels of the per-backend families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend's name, or [`NO_BACKEND`].
    pub backend: Arc<str>,
}

/// Labels of `affinity_upstream_retries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// The backend that failed.
    pub backend: Arc<str>,
    /// `connect_error` or `upstream_error`.
    pub reason: &'static str,
}

type DurationFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// The exposition formats `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0 (ends with `# EOF`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format a scraper asks for in its `Accept` header: OpenMetrics
    /// when it names `application/openmetrics-text`, else the Prometheus
    /// text format (as Prometheus's own client libraries negotiate).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Every metric the proxy keeps, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: DurationFamily,
    upstream_retries: Family<RetryLabels, Counter>,
    health_transitions: Family<TransitionLabels, Counter>,
    table_rebuilds: Counter,
    table_rebuild_duration: Histogram,
    table_moved_ratio: Gauge<f64, AtomicU64>,
    /// The [`NO_BACKEND`] label, allocated once.
    no_backend: Arc<str>,
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
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "affinity_requests",
            "Requests finished, by the backend that answered (\"\" when none is to blame) and the status the client got",
            requests.clone(),
        );
        let request_duration =
            DurationFamily::new_with_constructor(request_duration_histogram as fn() -> Histogram);
        registry.register(
            "affinity_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by backend",
            request_duration.clone(),
        );
        let upstream_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "affinity_upstream_retries",
            "Requests sent on to the next backend after this backend failed, by reason",
            upstream_retries.clone(),
        );
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
            requests,
            request_duration,
            upstream_retries,
            health_transitions,
            table_rebuilds,
            table_rebuild_duration,
            table_moved_ratio,
            no_backend: Arc::from(NO_BACKEND),
        }
    }

    /// Counts a finished request: answered by `backend` (`None`: no backend
    /// is to blame) with `status`, `elapsed` after it arrived.
    pub fn request_finished(&self, backend: Option<&Arc<str>>, status: u16, elapsed: Duration) {
        let backend = backend.unwrap_or(&self.no_backend);
        self.requests
            .get_or_create(&RequestLabels {
                backend: backend.clone(),
                code: status,
            })
            .inc();
        self.request_duration
            .get_or_create(&BackendLabels {
                backend: backend.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request sent on to its next backend after `backend` failed
    /// for `reason` (`connect_error` or `upstream_error`).
    pub fn upstream_retry(&self, backend: &Arc<str>, reason: &'static str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                backend: backend.clone(),
                reason,
            })
            .inc();
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

    /// The OpenMetrics text of the families recorded as things happen (not
    /// the ones read from a snapshot), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The exposition of every family in `format`: those recorded as things
    /// happen, and the gauges read from `snapshot` now.
    pub fn encode_with(&self, snapshot: Arc<Snapshot>, format: Format) -> String {
        let mut live = Registry::default();
        live.register_collector(Box::new(SnapshotGauges(snapshot)));
        let mut text = String::new();
        // Writing to a String cannot fail, and neither can the collector.
        match format {
            Format::OpenMetrics => {
                use prometheus_client::encoding::text;
                let _ = text::encode_registry(&mut text, &self.registry);
                let _ = text::encode_registry(&mut text, &live);
                let _ = text::encode_eof(&mut text);
            }
            Format::Prometheus => {
                use prometheus_client::encoding::prometheus_text;
                let _ = prometheus_text::encode(&mut text, &self.registry);
                let _ = prometheus_text::encode(&mut text, &live);
            }
        }
        text
    }
}

/// The gauges read from a snapshot at scrape time.
#[derive(Debug)]
struct SnapshotGauges(Arc<Snapshot>);

impl SnapshotGauges {
    fn family<N>(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(usize) -> ConstGauge<N>,
    ) -> fmt::Result
    where
        ConstGauge<N>: EncodeMetric,
    {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (i, backend) in self.0.backends().iter().enumerate() {
            let labels = BackendLabels {
                backend: backend.name().clone(),
            };
            value(i).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for SnapshotGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let backends = self.0.backends();
        self.family(
            &mut encoder,
            "affinity_backend_healthy",
            "Whether the backend is in the pool now (1) or out of it (0).",
            |i| ConstGauge::new(i64::from(backends[i].is_healthy())),
        )?;
        self.family(
            &mut encoder,
            "affinity_backend_in_flight",
            "Requests sent to the backend whose response has not finished.",
            |i| ConstGauge::new(backends[i].state().in_flight()),
        )?;
        let shares = self.0.shares();
        self.family(
            &mut encoder,
            "affinity_table_share",
            "The backend's share of the key space now (hash algorithms) or of the healthy weight (classic policies).",
            |i| ConstGauge::new(shares.get(i).copied().unwrap_or(0.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    fn snapshot(text: &str) -> Arc<Snapshot> {
        let config = Config::from_toml(text, Path::new("t.toml")).unwrap();
        Arc::new(Snapshot::all_healthy(Arc::new(config)).unwrap())
    }

    const TWO: &str = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n\
                       [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\nweight = 3\n";

    #[test]
    fn a_fresh_registry_exposes_the_unlabelled_families_at_zero() {
        let text = Metrics::new().encode_with(snapshot(TWO), Format::OpenMetrics);
        assert_eq!(
            line(&text, "affinity_table_rebuilds_total "),
            Some("affinity_table_rebuilds_total 0")
        );
        assert_eq!(
            line(&text, "affinity_table_moved_ratio "),
            Some("affinity_table_moved_ratio 0.0")
        );
        // A labelled family appears with its first sample.
        assert!(!text.contains("affinity_requests"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_family_has_help_text_once_it_has_a_sample() {
        let metrics = Metrics::new();
        let a: Arc<str> = Arc::from("a");
        metrics.request_finished(Some(&a), 200, Duration::from_millis(1));
        metrics.upstream_retry(&a, "connect_error");
        metrics.health_transition("a", Transition::Down);
        let text = metrics.encode_with(snapshot(TWO), Format::OpenMetrics);
        for family in [
            "affinity_requests",
            "affinity_request_duration_seconds",
            "affinity_upstream_retries",
            "affinity_health_transitions",
            "affinity_table_rebuilds",
            "affinity_table_rebuild_duration_seconds",
            "affinity_table_moved_ratio",
            "affinity_backend_healthy",
            "affinity_backend_in_flight",
            "affinity_table_share",
        ] {
            assert!(
                line(&text, &format!("# HELP {family} ")).is_some(),
                "{family}:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
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

    #[test]
    fn requests_count_by_backend_and_code_and_local_answers_have_an_empty_backend() {
        let metrics = Metrics::new();
        let a: Arc<str> = Arc::from("a");
        metrics.request_finished(Some(&a), 200, Duration::from_millis(3));
        metrics.request_finished(Some(&a), 200, Duration::from_millis(40));
        metrics.request_finished(None, 503, Duration::from_micros(10));
        metrics.upstream_retry(&a, "connect_error");
        let text = metrics.encode();
        assert_eq!(
            line(&text, "affinity_requests_total{backend=\"a\",code=\"200\"}"),
            Some("affinity_requests_total{backend=\"a\",code=\"200\"} 2")
        );
        assert_eq!(
            line(&text, "affinity_requests_total{backend=\"\",code=\"503\"}"),
            Some("affinity_requests_total{backend=\"\",code=\"503\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "affinity_request_duration_seconds_count{backend=\"a\"}"
            ),
            Some("affinity_request_duration_seconds_count{backend=\"a\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "affinity_request_duration_seconds_bucket{le=\"0.005\",backend=\"a\"}"
            ),
            Some("affinity_request_duration_seconds_bucket{le=\"0.005\",backend=\"a\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "affinity_upstream_retries_total{backend=\"a\",reason=\"connect_error\"}"
            ),
            Some("affinity_upstream_retries_total{backend=\"a\",reason=\"connect_error\"} 1")
        );
    }

    #[test]
    fn snapshot_gauges_follow_the_snapshot_they_are_read_from() {
        let metrics = Metrics::new();
        let two = snapshot(TWO);
        let _busy = two.backends()[1].state().begin();
        let text = metrics.encode_with(two.clone(), Format::OpenMetrics);
        assert_eq!(
            line(&text, "affinity_backend_healthy{backend=\"b\"}"),
            Some("affinity_backend_healthy{backend=\"b\"} 1")
        );
        assert_eq!(
            line(&text, "affinity_backend_in_flight{backend=\"b\"}"),
            Some("affinity_backend_in_flight{backend=\"b\"} 1")
        );
        assert!(line(&text, "affinity_table_share{backend=\"a\"}").is_some());
        // A pool without `b`: its gauges are gone.
        let one = snapshot("[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n");
        let text = metrics.encode_with(one, Format::OpenMetrics);
        assert!(!text.contains("backend=\"b\""), "{text}");
        assert_eq!(
            line(&text, "affinity_table_share{backend=\"a\"}"),
            Some("affinity_table_share{backend=\"a\"} 1.0")
        );
    }

    #[test]
    fn the_prometheus_format_has_no_eof_and_types_counters_by_their_sample_name() {
        let metrics = Metrics::new();
        metrics.table_rebuilt(Duration::from_millis(1), 0.5);
        let text = metrics.encode_with(snapshot(TWO), Format::Prometheus);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE affinity_table_rebuilds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\naffinity_table_rebuilds_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE affinity_backend_healthy gauge\n"),
            "{text}"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert!(
            Format::OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text")
        );
        assert!(
            Format::Prometheus
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
    }
}
