//! Active and passive health checks.
//!
//! The core is [`HealthState`], a pure state machine per backend (no I/O, no
//! clock): `unhealthy_threshold` consecutive failures take a healthy backend
//! down, `healthy_threshold` consecutive successes bring a down backend back.
//! Every backend starts healthy.
//!
//! The I/O shell ([`spawn`]) runs on the runtime that starts the proxy:
//! * one probe task per backend, which `GET`s `http://<authority><path>`
//!   every `health_check.interval` (the first probe jittered uniformly in
//!   `[0, interval)` so that backends are not probed in lockstep), each probe
//!   bounded by `health_check.timeout`; a `2xx` or `3xx` is a success,
//!   anything else (timeout, connect error, other status) a failure;
//! * one rebuild task, the only owner of the health states: it receives the
//!   probe results and the passive failures ([`HealthReporter`]: connect
//!   failures seen by real requests) on one channel, applies them, and on any
//!   transition builds the next [`Snapshot`] and publishes it. Observations
//!   that arrive together are applied first and cost one rebuild. Builds
//!   never happen on the request path.
//!
//! Dropping the [`HealthChecks`] the shell returns stops every task.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HOST, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::HealthCheckConfig;
use crate::pool::{Pool, Snapshot};

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
    /// The probe got another status.
    ProbeStatus(StatusCode),
    /// The probe got no response within `health_check.timeout`.
    ProbeTimeout,
    /// The probe could not connect or its exchange failed.
    ProbeError(String),
    /// A real request could not connect to the backend.
    ConnectFailed,
}

impl Observation {
    /// Whether it counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Observation::ProbeOk(_))
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::ProbeOk(status) => write!(f, "probe answered {}", status.as_u16()),
            Observation::ProbeStatus(status) => write!(f, "probe answered {}", status.as_u16()),
            Observation::ProbeTimeout => f.write_str("probe timed out"),
            Observation::ProbeError(error) => write!(f, "probe failed: {error}"),
            Observation::ConnectFailed => f.write_str("a request could not connect"),
        }
    }
}

/// One observation of the backend called `backend`.
#[derive(Debug, Clone)]
pub struct HealthEvent {
    /// The backend's name.
    pub backend: Arc<str>,
    /// What was observed.
    pub observation: Observation,
}

/// How the request path reports connect failures: a cheap, non-blocking
/// send to the rebuild task.
#[derive(Debug, Clone)]
pub struct HealthReporter(mpsc::UnboundedSender<HealthEvent>);

impl HealthReporter {
    /// Counts a failed connect to `backend` as a failed probe. Never blocks;
    /// does nothing once the health checks have stopped.
    pub fn connect_failed(&self, backend: &Arc<str>) {
        let _ = self.0.send(HealthEvent {
            backend: backend.clone(),
            observation: Observation::ConnectFailed,
        });
    }
}

/// The running health tasks; dropping this stops them all.
#[derive(Debug)]
pub struct HealthChecks {
    tasks: Vec<AbortHandle>,
    reporter: HealthReporter,
}

impl HealthChecks {
    /// Where the request path reports connect failures.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }

    /// Stops every health task now.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts probing every backend of the pool's current snapshot and the task
/// that publishes health changes, on the current tokio runtime.
pub fn spawn(pool: Arc<Pool>) -> HealthChecks {
    let snapshot = pool.snapshot();
    let settings = snapshot.config().health_check.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(snapshot.backends().len() + 1);
    for backend in snapshot.backends() {
        let probe = probe_loop(
            backend.name().clone(),
            backend.authority().clone(),
            settings.clone(),
            tx.clone(),
        );
        tasks.push(tokio::spawn(probe).abort_handle());
    }
    tasks.push(tokio::spawn(rebuild_loop(pool, rx)).abort_handle());
    HealthChecks {
        tasks,
        reporter: HealthReporter(tx),
    }
}

/// Probes one backend forever, the first time after a random fraction of
/// the interval.
async fn probe_loop(
    backend: Arc<str>,
    authority: Authority,
    settings: HealthCheckConfig,
    events: mpsc::UnboundedSender<HealthEvent>,
) {
    let interval_ns = u64::try_from(settings.interval.as_nanos()).unwrap_or(u64::MAX);
    let jitter = Duration::from_nanos(fastrand::u64(0..interval_ns.max(1)));
    let start = tokio::time::Instant::now() + jitter;
    let mut ticks = tokio::time::interval_at(start, settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let observation = probe(&authority, &settings.path, settings.timeout).await;
        let event = HealthEvent {
            backend: backend.clone(),
            observation,
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// One probe: `GET http://<authority><path>` with `Host: <authority>` on a
/// new connection, within `timeout`.
pub async fn probe(authority: &Authority, path: &str, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, exchange(authority, path)).await {
        Err(_elapsed) => Observation::ProbeTimeout,
        Ok(Err(error)) => Observation::ProbeError(error),
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            Observation::ProbeOk(status)
        }
        Ok(Ok(status)) => Observation::ProbeStatus(status),
    }
}

async fn exchange(authority: &Authority, path: &str) -> Result<StatusCode, String> {
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // `host:port`, port 80 when the URL has none; an IPv6 host keeps its
    // brackets, so this parses as a socket address.
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = TcpStream::connect(address.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    tokio::select! {
        biased;
        response = &mut response => response.map(|r| r.status()).map_err(|e| e.to_string()),
        // The connection may end right after delivering the response (the
        // server closed it): the response, or its error, is ready by now.
        ended = &mut connection => match (response.await, ended) {
            (Ok(r), _) => Ok(r.status()),
            (Err(_), Err(e)) => Err(e.to_string()),
            (Err(e), Ok(())) => Err(e.to_string()),
        },
    }
}

/// Owns the health states: applies every event, and after each batch with a
/// transition publishes a new snapshot. Returns, once every sender is gone,
/// how many snapshots it published.
async fn rebuild_loop(pool: Arc<Pool>, mut events: mpsc::UnboundedReceiver<HealthEvent>) -> usize {
    let mut published = 0;
    let config = pool.snapshot().config().clone();
    let thresholds = Thresholds::from(&config.health_check);
    let mut states = vec![HealthState::new(); config.backends.len()];
    while let Some(first) = events.recv().await {
        let mut changed = apply(&config, &mut states, thresholds, first);
        while let Ok(event) = events.try_recv() {
            changed |= apply(&config, &mut states, thresholds, event);
        }
        if !changed {
            continue;
        }
        let healthy: Vec<bool> = states.iter().map(|s| s.healthy).collect();
        let current = pool.snapshot();
        // The build is CPU work (a pass over the table, a full rebuild when
        // the pool changed): off the runtime thread, which also serves
        // requests.
        let (config_for_build, healthy_for_build) = (config.clone(), healthy.clone());
        let built = tokio::task::spawn_blocking(move || {
            Snapshot::build(config_for_build, &healthy_for_build, Some(&current))
        })
        .await;
        let built = match built {
            Ok(built) => built,
            Err(error) => {
                tracing::error!(%error, "the pool rebuild task failed");
                continue;
            }
        };
        match built {
            Ok(next) => {
                tracing::info!(
                    healthy = next.healthy_count(),
                    backends = healthy.len(),
                    "published a new pool snapshot"
                );
                pool.publish(next);
                published += 1;
            }
            Err(error) => tracing::error!(%error, "cannot rebuild the pool after a health change"),
        }
    }
    published
}

/// Applies one event; whether it changed a backend's health.
fn apply(
    config: &crate::config::Config,
    states: &mut [HealthState],
    thresholds: Thresholds,
    event: HealthEvent,
) -> bool {
    let Some(index) = config
        .backends
        .iter()
        .position(|b| b.name == *event.backend)
    else {
        return false;
    };
    let Some(state) = states.get_mut(index) else {
        return false;
    };
    let transition = state.record(event.observation.is_success(), thresholds);
    match transition {
        Some(Transition::Down) => tracing::warn!(
            backend = %event.backend,
            from = "healthy",
            to = "unhealthy",
            reason = %event.observation,
            "backend marked down"
        ),
        Some(Transition::Up) => tracing::info!(
            backend = %event.backend,
            from = "unhealthy",
            to = "healthy",
            reason = %event.observation,
            "backend restored"
        ),
        None => {}
    }
    transition.is_some()
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
    }

    fn event(backend: &str, observation: Observation) -> HealthEvent {
        HealthEvent {
            backend: Arc::from(backend),
            observation,
        }
    }

    #[tokio::test]
    async fn transitions_that_arrive_together_cost_one_rebuild() {
        let mut text = String::new();
        for i in 0..4 {
            text.push_str(&format!(
                "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\n",
                9000 + i
            ));
        }
        let config =
            crate::config::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap();
        let pool = Arc::new(Pool::new(Snapshot::all_healthy(Arc::new(config)).unwrap()));
        let (tx, rx) = mpsc::unbounded_channel();
        for _ in 0..2 {
            tx.send(event("b1", Observation::ConnectFailed)).unwrap();
            tx.send(event("b3", Observation::ProbeTimeout)).unwrap();
            tx.send(event("b0", Observation::ProbeOk(StatusCode::OK)))
                .unwrap();
            tx.send(event("unknown", Observation::ConnectFailed))
                .unwrap();
        }
        drop(tx);
        assert_eq!(rebuild_loop(pool.clone(), rx).await, 1);
        let snapshot = pool.snapshot();
        let healthy: Vec<bool> = snapshot.backends().iter().map(|b| b.is_healthy()).collect();
        assert_eq!(healthy, [true, false, true, false]);
    }

    #[tokio::test]
    async fn events_without_a_transition_publish_nothing() {
        let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9000\"\n";
        let config =
            crate::config::Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let pool = Arc::new(Pool::new(Snapshot::all_healthy(Arc::new(config)).unwrap()));
        let before = pool.snapshot();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(event("a", Observation::ConnectFailed)).unwrap();
        tx.send(event("a", Observation::ProbeOk(StatusCode::NO_CONTENT)))
            .unwrap();
        drop(tx);
        assert_eq!(rebuild_loop(pool.clone(), rx).await, 0);
        assert!(Arc::ptr_eq(&before, &pool.snapshot()));
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_is_an_error_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(&authority, "/health", Duration::from_secs(2)).await;
        assert!(
            matches!(observation, Observation::ProbeError(_)),
            "{observation:?}"
        );
    }

    #[tokio::test]
    async fn a_probe_sends_get_of_the_path_with_the_backend_authority_as_host() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(&authority, "/ready", Duration::from_secs(2)).await;
        assert_eq!(observation, Observation::ProbeOk(StatusCode::FOUND));
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /ready http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_probe_of_a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(&authority, "/health", Duration::from_millis(50)).await;
        assert_eq!(observation, Observation::ProbeTimeout);
        drop(listener);
    }
}
