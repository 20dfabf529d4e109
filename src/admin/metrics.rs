//! Prometheus metrics, kept with the `prometheus-client` crate and rendered
//! by it in the OpenMetrics text format or the Prometheus text format 0.0.4
//! ([`Metrics::encode_with`], served by the admin endpoint's `/metrics`).
//!
//! The counters are the pool's [`Stats`], recorded by the pool and the
//! request path; [`Metrics`] registers them under the names below once, when
//! the admin endpoint starts, and reads the rest from the current
//! [`Snapshot`] at each scrape.
//!
//! Families recorded as things happen:
//! Every family about a backend or a pool has a `pool` label, the pool's
//! name (backends are named within their pool).
//!
//! * `affinity_requests_total{pool,backend,code}`: requests finished (counted when
//!   the response body has been sent or abandoned), by the pool the request
//!   was routed to (`""` when no route took it: a `404`, or a request refused
//!   before routing), the backend that answered and the status the client got. A `502` or `504` the proxy
//!   answered because a backend failed counts against that backend; a
//!   request that no backend is to blame for (`503` no healthy backend, `405`
//!   for `CONNECT`, `400`) has the backend label `""` ([`NO_BACKEND`](crate::pool::stats::NO_BACKEND), which
//!   no configured backend can have: names are never empty);
//! * `affinity_request_duration_seconds{backend}`: from the request's arrival
//!   to the end of its response body, labelled as above;
//! * `affinity_upstream_retries_total{backend,reason}`: requests sent on to
//!   the next backend after `backend` failed, `reason` being
//!   `connect_error` or `upstream_error`;
//! * `affinity_tcp_connections_opened_total{pool,backend}`: connections
//!   tcp listeners opened to backends;
//! * `affinity_listener_connections_open{listener}`: client connections
//!   open now on each listener (what its `max_connections` caps);
//! * `affinity_listener_events_total{listener,event}`: connections refused
//!   for `limits.max_connections` or the listener's own, and the fate of
//!   PROXY protocol headers (see [`crate::pool::stats::ListenerEventLabels`]);
//! * `affinity_tcp_connections_total{pool,backend,outcome}` and
//!   `affinity_tcp_bytes_total{pool,backend,direction}`: tcp listeners'
//!   connections as they end, and their bytes as they are relayed (connect
//!   failures count in
//!   `affinity_upstream_retries_total{reason="connect_error"}`);
//! * `affinity_discovery_lookups_total{pool,name,result}`: DNS lookups of
//!   `discover` entries, by result (`ok`, `empty`, `servfail`, `nxdomain`,
//!   `timeout`, `error`);
//! * `affinity_health_transitions_total{backend,to}`: health changes, `to`
//!   being `healthy` or `unhealthy`;
//! * `affinity_table_rebuilds_total{pool}`: snapshots published after a health
//!   change or a reload;
//! * `affinity_table_rebuild_duration_seconds`: how long building each took;
//! * `affinity_table_moved_ratio`: the share of the key space whose backend
//!   the last rebuild changed (hash algorithms; 0 for the classic policies);
//! * `affinity_config_reloads_total{result}`: config reloads (SIGHUP), by
//!   `result`, `success` or `failure` (both from the start, at 0);
//! * `affinity_config_last_reload_successful`: 1 when the last reload
//!   succeeded (or none happened yet), 0 when it failed and the proxy runs an
//!   older config than its file: the metric to alert on, named as
//!   Prometheus names its own;
//! * `affinity_config_last_reload_success_timestamp_seconds`: when the
//!   running config was loaded (the start, until a reload succeeds);
//! * `affinity_client_connections_open`: client connections open now, over
//!   every worker (the count `limits.max_connections` caps);
//! * `affinity_client_connections_total`: client connections accepted, those
//!   closed at once for `limits.max_connections` included. (The open count
//!   is not called `affinity_client_connections`: OpenMetrics names a
//!   counter's family without `_total`, and two families may not share a
//!   name.)
//!
//! Families read from the current [`Snapshot`] at scrape time (a
//! [`Collector`], so a backend removed by a reload disappears from them):
//! * `affinity_backend_healthy{backend}`: 1 or 0;
//! * `affinity_backend_in_flight{backend}`: requests sent to it whose
//!   response has not finished;
//! * `affinity_backend_draining{backend}`: 1 while it drains;
//! * `affinity_backend_weight{backend}`: its weight, overrides included;
//! * `affinity_backend_slow_start_ratio{backend}`: its slow-start progress,
//!   0 to 1 (1 when it is not ramping);
//! * `affinity_table_share{backend}`: its share of the key space now (hash
//!   algorithms), or of the healthy weight (classic policies).
//!
//! And the standard `process_*` metrics, read from `/proc` at scrape time
//! ([`crate::admin::process`]; Linux only).

use std::fmt;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::EncodeLabelSet;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::admin::process::ProcessMetrics;
use crate::pool::Snapshot;
use crate::pool::stats::{BackendLabels, CertificateRecord, Stats};

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

/// The registry that renders a pool's [`Stats`] under their Prometheus
/// names; the registered families are shared with the stats, so it shows
/// what they count at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Every family of `stats` registered.
    pub fn new(stats: &Stats) -> Metrics {
        let mut registry = Registry::default();
        registry.register(
            "affinity_requests",
            "Requests finished, by pool (\"\" when no route took them), the backend that answered (\"\" when none is to blame) and the status the client got",
            stats.requests().clone(),
        );
        registry.register(
            "affinity_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by pool and backend",
            stats.request_duration().clone(),
        );
        registry.register(
            "affinity_upstream_retries",
            "Requests sent on to the next backend after this backend failed, by reason",
            stats.upstream_retries().clone(),
        );
        registry.register(
            "affinity_health_transitions",
            "Backend health changes, by backend and the state it changed to",
            stats.health_transition_family().clone(),
        );
        registry.register(
            "affinity_tcp_connections",
            "Connections of tcp listeners, by pool, the backend that relayed them (\"\" when none could be connected) and how they ended",
            stats.tcp_connections().clone(),
        );
        registry.register(
            "affinity_tcp_bytes",
            "Bytes tcp connections relayed, by pool, backend and direction (to_backend, to_client), counted when a connection ends",
            stats.tcp_bytes().clone(),
        );
        registry.register(
            "affinity_tcp_connections_opened",
            "Connections tcp listeners opened to backends, by pool and backend",
            stats.tcp_connections_opened().clone(),
        );
        registry.register(
            "affinity_listener_connections_open",
            "Client connections open now on each listener",
            stats.listener_connections().clone(),
        );
        registry.register(
            "affinity_listener_events",
            "Listeners' connections refused for a connection limit, and PROXY protocol headers by fate",
            stats.listener_events().clone(),
        );
        registry.register(
            "affinity_discovery_lookups",
            "DNS lookups of the pools' discover entries, by pool, name looked up and result (ok, empty, servfail, nxdomain, timeout, error)",
            stats.discovery_lookups().clone(),
        );
        registry.register(
            "affinity_table_rebuilds",
            "Pool snapshots published after a health change or a reload, by pool",
            stats.table_rebuild_counter().clone(),
        );
        registry.register(
            "affinity_table_rebuild_duration_seconds",
            "Time to build the next pool snapshot (selector table included)",
            stats.table_rebuild_duration().clone(),
        );
        registry.register(
            "affinity_table_moved_ratio",
            "Share of the pool's key space whose backend its last rebuild changed",
            stats.table_moved_ratio().clone(),
        );
        registry.register(
            "affinity_config_reloads",
            "Config reloads, by result (success or failure)",
            stats.config_reloads().clone(),
        );
        registry.register(
            "affinity_config_last_reload_successful",
            "Whether the last config reload succeeded (1) or failed and the previous config still runs (0)",
            stats.last_reload_successful().clone(),
        );
        registry.register(
            "affinity_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start or last successful reload), in Unix seconds",
            stats.last_reload_success_time().clone(),
        );
        registry.register(
            "affinity_client_connections_open",
            "Client connections open now, over every worker",
            stats.client_connections().clone(),
        );
        registry.register(
            "affinity_client_connections",
            "Client connections accepted, those closed at once for limits.max_connections included",
            stats.client_connections_accepted().clone(),
        );
        registry.register(
            "affinity_tls_handshakes",
            "TLS handshakes, by listener, result (success, failure, timeout) and TLS version",
            stats.tls_handshakes().clone(),
        );
        registry.register(
            "affinity_tls_handshake_duration_seconds",
            "Time from a TLS connection's accept to the end of its handshake, by listener",
            stats.tls_handshake_duration().clone(),
        );
        registry.register_collector(Box::new(ProcessMetrics));
        Metrics { registry }
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
    /// happen, and the gauges read from `snapshots` (one per pool) now.
    pub fn encode_with(&self, snapshots: Vec<Arc<Snapshot>>, format: Format) -> String {
        self.encode_all(snapshots, Vec::new(), format)
    }

    /// [`encode_with`](Self::encode_with), and the expiry gauge of each of
    /// `certificates`.
    pub fn encode_all(
        &self,
        snapshots: Vec<Arc<Snapshot>>,
        certificates: Vec<CertificateRecord>,
        format: Format,
    ) -> String {
        let mut live = Registry::default();
        live.register_collector(Box::new(SnapshotGauges(snapshots)));
        if !certificates.is_empty() {
            live.register_collector(Box::new(CertificateExpiry(certificates)));
        }
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

/// Labels of `affinity_tls_certificate_expiry_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertificateLabels {
    listener: String,
    name: String,
}

/// When each certificate of the TLS listeners expires, read at scrape time.
#[derive(Debug)]
struct CertificateExpiry(Vec<CertificateRecord>);

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "affinity_tls_certificate_expiry_seconds",
            "When the certificate served for this name expires, in Unix seconds.",
            None,
            MetricType::Gauge,
        )?;
        for certificate in &self.0 {
            let expiry = certificate
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            for name in &certificate.names {
                let labels = CertificateLabels {
                    listener: certificate.listener.clone(),
                    name: name.clone(),
                };
                ConstGauge::new(expiry).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The gauges read from each pool's snapshot at scrape time.
#[derive(Debug)]
struct SnapshotGauges(Vec<Arc<Snapshot>>);

impl SnapshotGauges {
    /// One gauge family over every backend of every pool: `value(pool,
    /// backend)` by places.
    fn family<N>(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(usize, usize) -> ConstGauge<N>,
    ) -> fmt::Result
    where
        ConstGauge<N>: EncodeMetric,
    {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (p, snapshot) in self.0.iter().enumerate() {
            let pool: Arc<str> = Arc::from(snapshot.config().name.as_str());
            for (i, backend) in snapshot.backends().iter().enumerate() {
                let labels = BackendLabels {
                    pool: pool.clone(),
                    backend: backend.name().clone(),
                };
                value(p, i).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for SnapshotGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let pools = &self.0;
        self.family(
            &mut encoder,
            "affinity_backend_healthy",
            "Whether the backend is in the pool now (1) or out of it (0).",
            |p, i| ConstGauge::new(i64::from(pools[p].backends()[i].is_healthy())),
        )?;
        self.family(
            &mut encoder,
            "affinity_backend_in_flight",
            "Requests sent to the backend whose response has not finished.",
            |p, i| ConstGauge::new(pools[p].backends()[i].state().in_flight()),
        )?;
        self.family(
            &mut encoder,
            "affinity_backend_draining",
            "Whether the backend drains (1): no new keys or sessions, pinned sessions still reach it.",
            |p, i| ConstGauge::new(i64::from(pools[p].backends()[i].is_draining())),
        )?;
        self.family(
            &mut encoder,
            "affinity_backend_weight",
            "The backend's weight now: the file's, or the admin API's override.",
            |p, i| ConstGauge::new(i64::from(pools[p].backends()[i].weight())),
        )?;
        self.family(
            &mut encoder,
            "affinity_backend_slow_start_ratio",
            "Slow-start progress: the part of its share the backend has taken back (1: all of it).",
            |p, i| ConstGauge::new(pools[p].backends()[i].progress()),
        )?;
        let shares: Vec<Vec<f64>> = pools.iter().map(|s| s.shares()).collect();
        self.family(
            &mut encoder,
            "affinity_table_share",
            "The backend's share of the key space now (hash algorithms) or of the healthy weight (classic policies).",
            |p, i| ConstGauge::new(shares[p].get(i).copied().unwrap_or(0.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::pool::health::Transition;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    fn snapshot(text: &str) -> Arc<Snapshot> {
        let config = Config::from_toml(text, Path::new("t.toml")).unwrap();
        Arc::new(Snapshot::all_healthy(config.pools[0].clone()).unwrap())
    }

    const TWO: &str = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n\
                       [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\nweight = 3\n";

    #[test]
    fn a_new_pool_exposes_its_rebuild_families_at_zero() {
        let stats = Stats::new();
        stats.pool_added(&Arc::from("default"));
        let text = Metrics::new(&stats).encode_with(vec![snapshot(TWO)], Format::OpenMetrics);
        assert_eq!(
            line(&text, "affinity_table_rebuilds_total{pool=\"default\"} "),
            Some("affinity_table_rebuilds_total{pool=\"default\"} 0")
        );
        assert_eq!(
            line(&text, "affinity_table_moved_ratio{pool=\"default\"} "),
            Some("affinity_table_moved_ratio{pool=\"default\"} 0.0")
        );
        // A labelled family appears with its first sample.
        assert!(!text.contains("affinity_requests"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_family_has_help_text_once_it_has_a_sample() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let p: Arc<str> = Arc::from("default");
        let a: Arc<str> = Arc::from("a");
        stats.request_finished(Some(&p), Some(&a), 200, Duration::from_millis(1));
        stats.upstream_retry(&p, &a, "connect_error");
        stats.health_transition(&p, "a", Transition::Down);
        stats.pool_added(&p);
        let text = metrics.encode_with(vec![snapshot(TWO)], Format::OpenMetrics);
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
            "affinity_config_reloads",
            "affinity_config_last_reload_successful",
            "affinity_config_last_reload_success_timestamp_seconds",
            "affinity_client_connections_open",
            "affinity_client_connections",
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
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let p: Arc<str> = Arc::from("default");
        stats.health_transition(&p, "server-1", Transition::Down);
        stats.health_transition(&p, "server-1", Transition::Down);
        stats.health_transition(&p, "server-1", Transition::Up);
        stats.table_rebuilt(&p, Duration::from_micros(120), 0.25);
        let text = metrics.encode();
        assert_eq!(
            line(
                &text,
                "affinity_health_transitions_total{pool=\"default\",backend=\"server-1\",to=\"unhealthy\"}"
            ),
            Some(
                "affinity_health_transitions_total{pool=\"default\",backend=\"server-1\",to=\"unhealthy\"} 2"
            )
        );
        assert_eq!(
            line(
                &text,
                "affinity_health_transitions_total{pool=\"default\",backend=\"server-1\",to=\"healthy\"}"
            ),
            Some(
                "affinity_health_transitions_total{pool=\"default\",backend=\"server-1\",to=\"healthy\"} 1"
            )
        );
        assert_eq!(
            line(&text, "affinity_table_rebuilds_total{pool=\"default\"} "),
            Some("affinity_table_rebuilds_total{pool=\"default\"} 1")
        );
        assert_eq!(
            line(&text, "affinity_table_moved_ratio{pool=\"default\"} "),
            Some("affinity_table_moved_ratio{pool=\"default\"} 0.25")
        );
        assert_eq!(
            line(
                &text,
                "affinity_table_rebuild_duration_seconds_count{pool=\"default\"} "
            ),
            Some("affinity_table_rebuild_duration_seconds_count{pool=\"default\"} 1")
        );
    }

    #[test]
    fn a_backends_cached_handles_count_in_the_same_series_as_label_lookups() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let cache = crate::pool::stats::RequestMetricsCache::default();
        let p: Arc<str> = Arc::from("default");
        let a: Arc<str> = Arc::from("a");
        let ms = Duration::from_millis(2);
        // A common status through its handle, an uncommon one by label, and
        // the same series by label: one count each, all in one series.
        stats.backend_request_finished(&cache, &p, &a, 200, ms);
        stats.backend_request_finished(&cache, &p, &a, 200, ms);
        stats.backend_request_finished(&cache, &p, &a, 418, ms);
        stats.request_finished(Some(&p), Some(&a), 200, ms);
        // The cache was made for `default`/`a`: other labels go the long way.
        let renamed: Arc<str> = Arc::from("renamed");
        stats.backend_request_finished(&cache, &renamed, &a, 200, ms);
        let text = metrics.encode();
        let count = |pool: &str, code: u16| {
            let series =
                format!("affinity_requests_total{{pool=\"{pool}\",backend=\"a\",code=\"{code}\"}}");
            line(&text, &series).map(|l| l[series.len()..].trim().to_owned())
        };
        assert_eq!(count("default", 200).as_deref(), Some("3"), "{text}");
        assert_eq!(count("default", 418).as_deref(), Some("1"), "{text}");
        assert_eq!(count("renamed", 200).as_deref(), Some("1"), "{text}");
        assert_eq!(
            line(
                &text,
                "affinity_request_duration_seconds_count{pool=\"default\",backend=\"a\"}"
            ),
            Some("affinity_request_duration_seconds_count{pool=\"default\",backend=\"a\"} 4")
        );
    }

    #[test]
    fn requests_count_by_backend_and_code_and_local_answers_have_an_empty_backend() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let p: Arc<str> = Arc::from("default");
        let a: Arc<str> = Arc::from("a");
        stats.request_finished(Some(&p), Some(&a), 200, Duration::from_millis(3));
        stats.request_finished(Some(&p), Some(&a), 200, Duration::from_millis(40));
        stats.request_finished(None, None, 503, Duration::from_micros(10));
        stats.upstream_retry(&p, &a, "connect_error");
        let text = metrics.encode();
        assert_eq!(
            line(
                &text,
                "affinity_requests_total{pool=\"default\",backend=\"a\",code=\"200\"}"
            ),
            Some("affinity_requests_total{pool=\"default\",backend=\"a\",code=\"200\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "affinity_requests_total{pool=\"\",backend=\"\",code=\"503\"}"
            ),
            Some("affinity_requests_total{pool=\"\",backend=\"\",code=\"503\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "affinity_request_duration_seconds_count{pool=\"default\",backend=\"a\"}"
            ),
            Some("affinity_request_duration_seconds_count{pool=\"default\",backend=\"a\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "affinity_request_duration_seconds_bucket{le=\"0.005\",pool=\"default\",backend=\"a\"}"
            ),
            Some(
                "affinity_request_duration_seconds_bucket{le=\"0.005\",pool=\"default\",backend=\"a\"} 1"
            )
        );
        assert_eq!(
            line(
                &text,
                "affinity_upstream_retries_total{pool=\"default\",backend=\"a\",reason=\"connect_error\"}"
            ),
            Some(
                "affinity_upstream_retries_total{pool=\"default\",backend=\"a\",reason=\"connect_error\"} 1"
            )
        );
    }

    #[test]
    fn snapshot_gauges_follow_the_snapshot_they_are_read_from() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let two = snapshot(TWO);
        let _busy = two.backends()[1].state().begin();
        let text = metrics.encode_with(vec![two.clone()], Format::OpenMetrics);
        assert_eq!(
            line(
                &text,
                "affinity_backend_healthy{pool=\"default\",backend=\"b\"}"
            ),
            Some("affinity_backend_healthy{pool=\"default\",backend=\"b\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "affinity_backend_in_flight{pool=\"default\",backend=\"b\"}"
            ),
            Some("affinity_backend_in_flight{pool=\"default\",backend=\"b\"} 1")
        );
        assert!(
            line(
                &text,
                "affinity_table_share{pool=\"default\",backend=\"a\"}"
            )
            .is_some()
        );
        // A pool without `b`: its gauges are gone.
        let one = snapshot("[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n");
        let text = metrics.encode_with(vec![one], Format::OpenMetrics);
        assert!(!text.contains("backend=\"b\""), "{text}");
        assert_eq!(
            line(
                &text,
                "affinity_table_share{pool=\"default\",backend=\"a\"}"
            ),
            Some("affinity_table_share{pool=\"default\",backend=\"a\"} 1.0")
        );
    }

    #[test]
    fn reloads_count_by_result_and_the_last_one_sets_the_alerting_gauge() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let text = metrics.encode();
        assert_eq!(
            line(&text, "affinity_config_reloads_total{result=\"failure\"}"),
            Some("affinity_config_reloads_total{result=\"failure\"} 0")
        );
        assert_eq!(
            line(&text, "affinity_config_last_reload_successful "),
            Some("affinity_config_last_reload_successful 1")
        );
        stats.reload_failed("bad".to_owned());
        let text = metrics.encode();
        assert_eq!(
            line(&text, "affinity_config_reloads_total{result=\"failure\"}"),
            Some("affinity_config_reloads_total{result=\"failure\"} 1")
        );
        assert_eq!(
            line(&text, "affinity_config_last_reload_successful "),
            Some("affinity_config_last_reload_successful 0")
        );
        stats.reload_succeeded();
        let text = metrics.encode();
        assert_eq!(
            line(&text, "affinity_config_reloads_total{result=\"success\"}"),
            Some("affinity_config_reloads_total{result=\"success\"} 1")
        );
        assert_eq!(
            line(&text, "affinity_config_last_reload_successful "),
            Some("affinity_config_last_reload_successful 1")
        );
        let at: f64 = line(
            &text,
            "affinity_config_last_reload_success_timestamp_seconds ",
        )
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap();
        assert!(at > 1.7e9, "{at}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_metrics_are_there_in_both_formats_with_their_types() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let open = metrics.encode_with(vec![snapshot(TWO)], Format::OpenMetrics);
        assert!(
            open.contains("# TYPE process_cpu_seconds counter\n"),
            "{open}"
        );
        assert!(
            line(&open, "process_cpu_seconds_total ").is_some(),
            "{open}"
        );
        let plain = metrics.encode_with(vec![snapshot(TWO)], Format::Prometheus);
        assert!(
            plain.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{plain}"
        );
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                open.contains(&format!("# TYPE {name} gauge\n")),
                "{name}:\n{open}"
            );
            assert!(
                line(&plain, &format!("{name} ")).is_some(),
                "{name}:\n{plain}"
            );
        }
    }

    #[test]
    fn the_prometheus_format_has_no_eof_and_types_counters_by_their_sample_name() {
        let stats = Stats::new();
        let metrics = Metrics::new(&stats);
        let p: Arc<str> = Arc::from("default");
        stats.table_rebuilt(&p, Duration::from_millis(1), 0.5);
        let text = metrics.encode_with(vec![snapshot(TWO)], Format::Prometheus);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE affinity_table_rebuilds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\naffinity_table_rebuilds_total{pool=\"default\"} 1\n"),
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
