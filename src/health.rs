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
//! * one controller task, the only owner of the health states (by backend
//!   name) and of the probe tasks: it receives the probe results and the
//!   passive failures ([`HealthReporter`]: connect failures seen by real
//!   requests), applies them, and on any transition builds the next
//!   [`Snapshot`] and publishes it. Observations that arrive together are
//!   applied first and cost one rebuild. Builds run on the blocking pool,
//!   never on the request path. Each transition is logged once and counted
//!   in the pool's metrics; each probe result is recorded on the backend's
//!   live state for `/status`.
//! * a reload ([`HealthChecks::reload`]) goes through the same controller:
//!   backends whose name is unchanged keep their health (a new one starts
//!   healthy), probes restart only for backends whose address or probe
//!   settings changed, and the new snapshot is published; an observation
//!   made at an address a backend no longer has is ignored.
//!
//! Dropping the [`HealthChecks`] the shell returns stops every task.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HOST, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

use crate::config::{Config, HealthCheckConfig};
use crate::pool::{Pool, PoolError, Rebuild, Snapshot};
use crate::upstream;

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
    /// A real request reached the backend, which then broke the exchange
    /// off (reset or closed the connection before or during its response).
    RequestFailed(&'static str),
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
            Observation::RequestFailed(what) => write!(f, "a request failed: {what}"),
        }
    }
}

/// One observation of the backend called `backend` at `authority`.
#[derive(Debug, Clone)]
pub struct HealthEvent {
    /// The backend's name.
    pub backend: Arc<str>,
    /// The address it was observed at: an observation of an address the
    /// backend no longer has (a reload moved it) is ignored.
    pub authority: Authority,
    /// What was observed.
    pub observation: Observation,
}

/// What the health controller is asked to do.
#[derive(Debug)]
enum Command {
    /// Count an observation made by a request.
    Observe(HealthEvent),
    /// Adopt a new config; answer whether it was published.
    Reload(Arc<Config>, oneshot::Sender<Result<(), PoolError>>),
}

/// How the request path reports connect failures: a cheap, non-blocking
/// send to the health controller.
#[derive(Debug, Clone)]
pub struct HealthReporter(mpsc::UnboundedSender<Command>);

impl HealthReporter {
    /// Counts a failed connect to `backend` (at `authority`) as a failed
    /// probe. Never blocks; does nothing once the health checks have stopped.
    pub fn connect_failed(&self, backend: &Arc<str>, authority: &Authority) {
        self.observe(backend, authority, Observation::ConnectFailed);
    }

    /// Counts a request that `backend` broke off (`what` happened) as a
    /// failed probe.
    pub fn request_failed(&self, backend: &Arc<str>, authority: &Authority, what: &'static str) {
        self.observe(backend, authority, Observation::RequestFailed(what));
    }

    fn observe(&self, backend: &Arc<str>, authority: &Authority, observation: Observation) {
        let _ = self.0.send(Command::Observe(HealthEvent {
            backend: backend.clone(),
            authority: authority.clone(),
            observation,
        }));
    }
}

/// The running health controller and its probes; dropping this stops them
/// all.
#[derive(Debug)]
pub struct HealthChecks {
    task: AbortHandle,
    reporter: HealthReporter,
}

impl HealthChecks {
    /// Where the request path reports connect failures.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }

    /// Replaces the config: backends keep their health by name (a new one
    /// starts healthy), probes restart only for backends whose address or
    /// probe settings changed, and the new snapshot is built off the request
    /// path and published. On error the running config stays.
    pub async fn reload(&self, config: Arc<Config>) -> Result<(), ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.reporter
            .0
            .send(Command::Reload(config, reply))
            .map_err(|_| ReloadError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ReloadError::Pool(error)),
            Err(_) => Err(ReloadError::Stopped),
        }
    }

    /// Stops the controller and every probe now.
    pub fn stop(&mut self) {
        self.task.abort();
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    Stopped,
}

/// Starts the health controller for the pool's current snapshot, which
/// probes every backend and publishes health changes, on the current tokio
/// runtime.
pub fn spawn(pool: Arc<Pool>) -> HealthChecks {
    let (commands, received) = mpsc::unbounded_channel();
    let mut controller = Controller::new(pool);
    controller.start_probes();
    let task = tokio::spawn(controller.run(received)).abort_handle();
    HealthChecks {
        task,
        reporter: HealthReporter(commands),
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
            authority: authority.clone(),
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
    let stream = TcpStream::connect(upstream::connect_address(authority).as_str())
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

/// A running probe task and what it probes.
struct Probe {
    authority: Authority,
    settings: HealthCheckConfig,
    task: AbortHandle,
}

/// The only owner of the health states and the probe tasks: applies every
/// observation, adopts reloads, and publishes the snapshots.
struct Controller {
    pool: Arc<Pool>,
    config: Arc<Config>,
    states: HashMap<Arc<str>, HealthState>,
    probes: HashMap<Arc<str>, Probe>,
    /// The probe tasks; dropped (so aborted) with the controller.
    tasks: JoinSet<()>,
    probe_events: mpsc::UnboundedSender<HealthEvent>,
    probe_received: mpsc::UnboundedReceiver<HealthEvent>,
    published: usize,
}

impl Controller {
    /// A controller for the pool's current config, every backend healthy.
    fn new(pool: Arc<Pool>) -> Controller {
        let config = pool.snapshot().config().clone();
        let (probe_events, probe_received) = mpsc::unbounded_channel();
        let states = config
            .backends
            .iter()
            .map(|b| (Arc::from(b.name.as_str()), HealthState::new()))
            .collect();
        Controller {
            pool,
            config,
            states,
            probes: HashMap::new(),
            tasks: JoinSet::new(),
            probe_events,
            probe_received,
            published: 0,
        }
    }

    /// Runs until every command sender is gone; returns how many snapshots
    /// it published. Observations that arrive together are applied first and
    /// cost one rebuild; a reload is built and published on its own.
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) -> usize {
        loop {
            let first = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
                Some(event) = self.probe_received.recv() => Command::Observe(event),
                // Reap ended probe tasks (only aborted ones end).
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => continue,
            };
            let mut changed = false;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Observe(event) => changed |= self.observe(event),
                    Command::Reload(config, reply) => {
                        let result = self.reload(config).await;
                        if result.is_ok() {
                            // Pending health changes went out with it.
                            changed = false;
                        }
                        let _ = reply.send(result);
                    }
                }
                next = match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(_) => self.probe_received.try_recv().ok().map(Command::Observe),
                };
            }
            if changed {
                let healthy = self.healthy();
                if publish(&self.pool, self.config.clone(), healthy, "health")
                    .await
                    .is_ok()
                {
                    self.published += 1;
                }
            }
        }
        self.published
    }

    /// The health flag of every configured backend, in config order.
    fn healthy(&self) -> Vec<bool> {
        healthy_flags(&self.config, &self.states)
    }

    /// Starts a probe for every configured backend that has none running
    /// with its current address and settings, and stops the probes of
    /// backends that are gone or changed.
    fn start_probes(&mut self) {
        let settings = &self.config.health_check;
        let mut wanted: HashMap<Arc<str>, Authority> = HashMap::new();
        for backend in &self.config.backends {
            if let Some(authority) = backend.url.authority() {
                wanted.insert(Arc::from(backend.name.as_str()), authority.clone());
            }
        }
        self.probes.retain(|name, probe| {
            let keep = wanted.get(name) == Some(&probe.authority) && probe.settings == *settings;
            if !keep {
                probe.task.abort();
            }
            keep
        });
        for (name, authority) in wanted {
            if self.probes.contains_key(&name) {
                continue;
            }
            let task = self.tasks.spawn(probe_loop(
                name.clone(),
                authority.clone(),
                settings.clone(),
                self.probe_events.clone(),
            ));
            self.probes.insert(
                name,
                Probe {
                    authority,
                    settings: settings.clone(),
                    task,
                },
            );
        }
    }

    /// Applies one observation; whether it changed a backend's health.
    fn observe(&mut self, event: HealthEvent) -> bool {
        let Some(backend) = self
            .config
            .backends
            .iter()
            .find(|b| b.name == *event.backend)
        else {
            return false;
        };
        // Made at an address the backend no longer has.
        if backend.url.authority() != Some(&event.authority) {
            return false;
        }
        let Some(state) = self.states.get_mut(&event.backend) else {
            return false;
        };
        let success = event.observation.is_success();
        let transition = state.record(success, Thresholds::from(&self.config.health_check));
        let snapshot = self.pool.snapshot();
        if let Some(live) = snapshot.backend(&event.backend) {
            live.state()
                .record_probe(success, event.observation.to_string(), transition.is_some());
        }
        let Some(transition) = transition else {
            return false;
        };
        match transition {
            Transition::Down => tracing::warn!(
                backend = %event.backend,
                from = "healthy",
                to = "unhealthy",
                reason = %event.observation,
                "backend marked down"
            ),
            Transition::Up => tracing::info!(
                backend = %event.backend,
                from = "unhealthy",
                to = "healthy",
                reason = %event.observation,
                "backend restored"
            ),
        }
        self.pool
            .metrics()
            .health_transition(&event.backend, transition);
        true
    }

    /// Adopts `config` if its snapshot builds: a backend whose name is
    /// unchanged keeps its health, a new one starts healthy.
    async fn reload(&mut self, config: Arc<Config>) -> Result<(), PoolError> {
        let states: HashMap<Arc<str>, HealthState> = config
            .backends
            .iter()
            .map(|b| {
                let state = self.states.get(b.name.as_str()).copied();
                (Arc::from(b.name.as_str()), state.unwrap_or_default())
            })
            .collect();
        let healthy = healthy_flags(&config, &states);
        publish(&self.pool, config.clone(), healthy, "reload").await?;
        self.published += 1;
        self.config = config;
        self.states = states;
        self.start_probes();
        Ok(())
    }
}

/// The health flag of each of `config`'s backends (config order) in
/// `states`; a backend without a state is healthy, as every backend starts.
fn healthy_flags(config: &Config, states: &HashMap<Arc<str>, HealthState>) -> Vec<bool> {
    config
        .backends
        .iter()
        .map(|b| states.get(b.name.as_str()).is_none_or(|s| s.healthy))
        .collect()
}

/// Builds the snapshot of `config` with `healthy` on the blocking pool (a
/// pass over the table, or a full rebuild when the pool changed: CPU work
/// that must not hold up the runtime thread, which also serves requests),
/// records how it went, and publishes it.
async fn publish(
    pool: &Arc<Pool>,
    config: Arc<Config>,
    healthy: Vec<bool>,
    cause: &'static str,
) -> Result<(), PoolError> {
    let current = pool.snapshot();
    let built = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let next = Snapshot::build(config, &healthy, Some(&current))?;
        let moved = next.moved_from(&current);
        Ok::<_, PoolError>(next.with_rebuild(Rebuild {
            at: SystemTime::now(),
            duration: started.elapsed(),
            moved,
            cause,
        }))
    })
    .await;
    let next = match built {
        Ok(Ok(next)) => next,
        Ok(Err(error)) => {
            tracing::error!(%error, cause, "cannot rebuild the pool");
            return Err(error);
        }
        Err(error) => {
            // Only a panic in the build gets here: keep serving the old
            // snapshot, loudly.
            tracing::error!(%error, cause, "the pool rebuild task failed");
            return Err(PoolError::BuildFailed(error.to_string()));
        }
    };
    if let Some(rebuild) = next.rebuild() {
        pool.metrics()
            .table_rebuilt(rebuild.duration, rebuild.moved);
        tracing::info!(
            healthy = next.healthy_count(),
            backends = next.backends().len(),
            cause,
            build_us = u64::try_from(rebuild.duration.as_micros()).unwrap_or(u64::MAX),
            moved = rebuild.moved,
            "published a new pool snapshot"
        );
    }
    pool.publish(next);
    Ok(())
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

    /// An observation of backend `b<i>` at `127.0.0.1:900<i>`, as the
    /// test pools below configure it.
    fn event(backend: &str, observation: Observation) -> Command {
        let port = 9000 + backend.trim_start_matches('b').parse::<u16>().unwrap_or(99);
        Command::Observe(HealthEvent {
            backend: Arc::from(backend),
            authority: format!("127.0.0.1:{port}").parse().unwrap(),
            observation,
        })
    }

    fn pool_of(n: usize) -> Arc<Pool> {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\n",
                9000 + i
            ));
        }
        let config =
            crate::config::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap();
        Arc::new(Pool::new(Snapshot::all_healthy(Arc::new(config)).unwrap()))
    }

    fn healthy_flags(pool: &Pool) -> Vec<(String, bool)> {
        let snapshot = pool.snapshot();
        snapshot
            .backends()
            .iter()
            .map(|b| (b.name().to_string(), b.is_healthy()))
            .collect()
    }

    /// Runs a controller of `pool` over `commands`; how many snapshots it
    /// published.
    async fn run(pool: &Arc<Pool>, commands: Vec<Command>) -> usize {
        let (tx, rx) = mpsc::unbounded_channel();
        for command in commands {
            tx.send(command).unwrap();
        }
        drop(tx);
        Controller::new(pool.clone()).run(rx).await
    }

    fn reload(text: &str) -> (Command, oneshot::Receiver<Result<(), PoolError>>) {
        let config = Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let (reply, answer) = oneshot::channel();
        (Command::Reload(Arc::new(config), reply), answer)
    }

    #[tokio::test]
    async fn transitions_that_arrive_together_cost_one_rebuild() {
        let pool = pool_of(4);
        let mut commands = Vec::new();
        for _ in 0..2 {
            commands.push(event("b1", Observation::ConnectFailed));
            commands.push(event("b3", Observation::ProbeTimeout));
            commands.push(event("b0", Observation::ProbeOk(StatusCode::OK)));
            commands.push(event("unknown", Observation::ConnectFailed));
        }
        assert_eq!(run(&pool, commands).await, 1);
        let healthy: Vec<bool> = healthy_flags(&pool).into_iter().map(|(_, h)| h).collect();
        assert_eq!(healthy, [true, false, true, false]);
        let rebuild = pool
            .snapshot()
            .rebuild()
            .cloned()
            .expect("a rebuild record");
        assert_eq!(rebuild.cause, "health");
        assert!((0.45..0.55).contains(&rebuild.moved), "{rebuild:?}");
        let metrics = pool.metrics().encode();
        assert!(
            metrics.contains("affinity_table_rebuilds_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics
                .contains("affinity_health_transitions_total{backend=\"b1\",to=\"unhealthy\"} 1\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn events_without_a_transition_publish_nothing_but_are_recorded() {
        let pool = pool_of(1);
        let before = pool.snapshot();
        let commands = vec![
            event("b0", Observation::ConnectFailed),
            event("b0", Observation::ProbeOk(StatusCode::NO_CONTENT)),
        ];
        assert_eq!(run(&pool, commands).await, 0);
        assert!(Arc::ptr_eq(&before, &pool.snapshot()));
        let record = before.backends()[0].state().health();
        let last = record.last_probe.expect("the last probe is recorded");
        assert!(last.ok);
        assert_eq!(last.detail, "probe answered 204");
        assert!(record.since <= last.at);
    }

    #[tokio::test]
    async fn a_reload_keeps_health_by_name_and_a_new_backend_starts_healthy() {
        let pool = pool_of(3);
        let down = |b: &str| {
            (0..3)
                .map(|_| event(b, Observation::ConnectFailed))
                .collect::<Vec<_>>()
        };
        let mut commands = down("b1");
        // b1 keeps its name and address but changes weight; b2 leaves; b7
        // joins.
        let (command, answer) = reload(
            "[[backends]]\nname = \"b0\"\nurl = \"http://127.0.0.1:9000\"\n\
             [[backends]]\nname = \"b1\"\nurl = \"http://127.0.0.1:9001\"\nweight = 3\n\
             [[backends]]\nname = \"b7\"\nurl = \"http://127.0.0.1:9007\"\n",
        );
        commands.push(command);
        assert_eq!(
            run(&pool, commands).await,
            1,
            "the reload carries the health change"
        );
        assert!(answer.await.unwrap().is_ok());
        assert_eq!(
            healthy_flags(&pool),
            [
                ("b0".into(), true),
                ("b1".into(), false),
                ("b7".into(), true)
            ]
        );
        let snapshot = pool.snapshot();
        assert_eq!(snapshot.backends()[1].weight(), 3);
        assert_eq!(snapshot.rebuild().map(|r| r.cause), Some("reload"));
    }

    #[tokio::test]
    async fn after_a_reload_moves_a_backend_observations_of_its_old_address_are_ignored() {
        let pool = pool_of(2);
        let (command, answer) = reload(
            "[[backends]]\nname = \"b0\"\nurl = \"http://127.0.0.1:9000\"\n\
             [[backends]]\nname = \"b1\"\nurl = \"http://127.0.0.1:9501\"\n",
        );
        let mut commands = vec![command];
        // Reported by requests still using the old snapshot.
        commands.extend((0..5).map(|_| event("b1", Observation::ConnectFailed)));
        assert_eq!(run(&pool, commands).await, 1);
        assert!(answer.await.unwrap().is_ok());
        assert_eq!(
            healthy_flags(&pool),
            [("b0".into(), true), ("b1".into(), true)]
        );
        assert_eq!(
            pool.snapshot().backends()[1].authority().as_str(),
            "127.0.0.1:9501"
        );
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_is_an_error_not_a_hang() {
        // A loopback address no other test listens on, so the closed port
        // stays closed.
        let listener = tokio::net::TcpListener::bind("127.0.99.2:0").await.unwrap();
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
