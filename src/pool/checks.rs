//! Active and passive health checks: the task that feeds the pure
//! [`HealthState`] of every backend and publishes what changes.
//!
//! The I/O shell ([`spawn`]) runs on the runtime that starts the proxy:
//! * one probe task per backend, which `GET`s `http://<authority><path>`
//!   (TLS to an `https://` backend, as requests go) every `health_check.interval` (the first probe jittered uniformly in
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
//!   in the pool's [stats](crate::pool::stats); each probe result is recorded on the backend's
//!   live state for `/status`.
//! * a reload ([`HealthChecks::reload`]) goes through the same controller:
//!   backends whose name is unchanged keep their health (a new one starts
//!   healthy), probes restart only for backends whose address or probe
//!   settings changed, and the new snapshot is published; an observation
//!   made at an address a backend no longer has is ignored.
//!
//! Dropping the [`HealthChecks`] the shell returns stops every task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::http::uri::Authority;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

use crate::config::{BackendConfig, HealthCheckConfig, PoolConfig, ProbeKind};
use crate::pool::Pool;
use crate::pool::discovery::{self, Found};
use crate::pool::health::{HealthState, Observation, Thresholds, Transition};
use crate::pool::probe::{connects, probe};
use crate::pool::resolve::{self, Discovered};
use crate::pool::runtime::{Change, Runtime};
use crate::pool::snapshot::{Conditions, PoolError, Rebuild, Snapshot};
use crate::pool::target::Target;

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
    Reload(Arc<PoolConfig>, oneshot::Sender<Result<(), PoolError>>),
    /// Change a backend at runtime (the admin API); answer whether it was
    /// published.
    Set(Arc<str>, Change, oneshot::Sender<Result<(), SetError>>),
}

/// Why a runtime change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The pool has no backend of that name.
    #[error("the pool has no backend {0:?}")]
    UnknownBackend(Arc<str>),
    /// The new snapshot could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    Stopped,
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

    /// Replaces the pool's config: backends keep their health by name (a
    /// new one starts healthy), probes restart only for backends whose
    /// address or probe settings changed, and the new snapshot is built off
    /// the request path and published. On error the running config stays.
    pub async fn reload(&self, config: Arc<PoolConfig>) -> Result<(), ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Command::Reload(config, reply))
            .map_err(|_| ReloadError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ReloadError::Pool(error)),
            Err(_) => Err(ReloadError::Stopped),
        }
    }

    /// Applies `change` to the backend called `backend` and publishes the
    /// result; it lasts while the backend's name stays in the pool, across
    /// reloads.
    pub async fn set(&self, backend: Arc<str>, change: Change) -> Result<(), SetError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Command::Set(backend, change, reply))
            .map_err(|_| SetError::Stopped)?;
        answer.await.unwrap_or(Err(SetError::Stopped))
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

    /// Replaces the pool's config, as [`HealthReporter::reload`] does.
    pub async fn reload(&self, config: Arc<PoolConfig>) -> Result<(), ReloadError> {
        self.reporter.reload(config).await
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
    controller.start_discovery();
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
    target: Target,
    h2: bool,
    settings: HealthCheckConfig,
    events: mpsc::UnboundedSender<HealthEvent>,
) {
    let authority = target.authority().clone();
    let interval_ns = u64::try_from(settings.interval.as_nanos()).unwrap_or(u64::MAX);
    let jitter = Duration::from_nanos(fastrand::u64(0..interval_ns.max(1)));
    let start = tokio::time::Instant::now() + jitter;
    let mut ticks = tokio::time::interval_at(start, settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let observation = match settings.kind {
            ProbeKind::Http => probe(&target, h2, &settings.path, settings.timeout).await,
            ProbeKind::Tcp => connects(&target, settings.timeout).await,
        };
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

/// A running probe task and what it probes.
struct Probe {
    /// The target's key: its address and TLS settings.
    target: Arc<str>,
    /// Whether it probes over HTTP/2.
    h2: bool,
    settings: HealthCheckConfig,
    task: AbortHandle,
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The only owner of the health states and the probe tasks: applies every
/// observation, adopts reloads, and publishes the snapshots.
struct Controller {
    pool: Arc<Pool>,
    /// The pool as the file has it.
    file: Arc<PoolConfig>,
    /// The pool with the backends discovery found: what is built.
    config: Arc<PoolConfig>,
    /// What each `discover` entry found last (`None`: no answer yet).
    discovered: Vec<Option<Vec<Found>>>,
    /// The backends discovery lost that stay in the table, unroutable.
    gone: Vec<String>,
    /// The discovery tasks running, and their generation (a set from an
    /// older generation is stale).
    discovery: Vec<AbortHandle>,
    generation: u64,
    sets: mpsc::UnboundedSender<Discovered>,
    sets_received: mpsc::UnboundedReceiver<Discovered>,
    states: HashMap<Arc<str>, HealthState>,
    probes: HashMap<Arc<str>, Probe>,
    /// The probe tasks; dropped (so aborted) with the controller.
    tasks: JoinSet<()>,
    probe_events: mpsc::UnboundedSender<HealthEvent>,
    probe_received: mpsc::UnboundedReceiver<HealthEvent>,
    /// Overrides and slow-start ramps.
    runtime: Runtime,
    published: usize,
    published_at: Instant,
}

impl Controller {
    /// A controller for the pool's current config, every backend healthy.
    fn new(pool: Arc<Pool>) -> Controller {
        let config = pool.snapshot().file_config().clone();
        let (probe_events, probe_received) = mpsc::unbounded_channel();
        let (sets, sets_received) = mpsc::unbounded_channel();
        let states = config
            .backends
            .iter()
            .map(|b| (Arc::from(b.name.as_str()), HealthState::new()))
            .collect();
        Controller {
            pool,
            file: config.clone(),
            discovered: vec![None; config.discover.len()],
            gone: Vec::new(),
            discovery: Vec::new(),
            generation: 0,
            sets,
            sets_received,
            config,
            states,
            probes: HashMap::new(),
            tasks: JoinSet::new(),
            probe_events,
            probe_received,
            runtime: Runtime::new(),
            published: 0,
            published_at: Instant::now(),
        }
    }

    /// Runs until every command sender is gone; returns how many snapshots
    /// it published. Observations that arrive together are applied first and
    /// cost one rebuild; a reload is built and published on its own.
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) -> usize {
        loop {
            let step = self.runtime.next_step(&self.config, self.published_at);
            let first = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => Some(command),
                    None => break,
                },
                Some(event) = self.probe_received.recv() => Some(Command::Observe(event)),
                Some(set) = self.sets_received.recv() => {
                    let _ = self.discovered(set).await;
                    continue;
                }
                // Reap ended probe tasks (only aborted ones end).
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => continue,
                // The next step of a slow-start ramp.
                () = sleep_until(step), if step.is_some() => None,
            };
            let mut cause = first.is_none().then_some("slow_start");
            let mut next = first;
            while let Some(command) = next.take() {
                match command {
                    Command::Observe(event) => {
                        if self.observe(event) {
                            cause = Some("health");
                        }
                    }
                    Command::Reload(config, reply) => {
                        let result = self.reload(config).await;
                        if result.is_ok() {
                            // Pending changes went out with it.
                            cause = None;
                        }
                        let _ = reply.send(result);
                    }
                    Command::Set(backend, change, reply) => {
                        let result = self.set(&backend, change).await;
                        if result.is_ok() {
                            cause = None;
                        }
                        let _ = reply.send(result);
                    }
                }
                next = match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(_) => self.probe_received.try_recv().ok().map(Command::Observe),
                };
            }
            if let Some(cause) = cause {
                let runtime = self.runtime.clone();
                let _ = self.publish(runtime, self.config.clone(), cause).await;
            }
        }
        self.published
    }

    /// Builds and publishes the snapshot of `config` with `runtime` (ending
    /// the ramps that are done) and the current health; on success both
    /// become the controller's.
    async fn publish(
        &mut self,
        mut runtime: Runtime,
        config: Arc<PoolConfig>,
        cause: &'static str,
    ) -> Result<(), PoolError> {
        let now = Instant::now();
        let finished = runtime.finish_ramps(&config, now);
        let healthy = healthy_flags(&config, &self.states);
        let mut conditions = runtime.conditions(&config, healthy, now);
        conditions.source = Some(self.file.clone());
        conditions.gone = config
            .backends
            .iter()
            .map(|b| self.gone.contains(&b.name))
            .collect();
        publish(&self.pool, config.clone(), conditions, cause).await?;
        for backend in runtime
            .ramps()
            .filter(|b| !self.runtime.ramps().any(|r| r == *b))
        {
            tracing::info!(
                pool = %self.pool.name(),
                %backend,
                slow_start = ?config.balancer.slow_start,
                "slow start: the backend takes its share back gradually"
            );
        }
        for backend in finished {
            tracing::info!(pool = %self.pool.name(), %backend, "slow start complete: the backend has its full share");
        }
        self.runtime = runtime;
        self.config = config;
        self.published += 1;
        self.published_at = now;
        Ok(())
    }

    /// Applies an admin change to `backend` and publishes it.
    async fn set(&mut self, backend: &Arc<str>, change: Change) -> Result<(), SetError> {
        let mut runtime = self.runtime.clone();
        if !runtime.set(&self.config, backend, change, Instant::now()) {
            return Err(SetError::UnknownBackend(backend.clone()));
        }
        self.publish(runtime, self.config.clone(), "admin").await?;
        Ok(())
    }

    /// Starts a probe for every configured backend that has none running
    /// with its current address and settings, and stops the probes of
    /// backends that are gone or changed.
    fn start_probes(&mut self) {
        let settings = &self.config.health_check;
        let h2 = self.config.upstream.protocol.is_h2();
        // The targets of the snapshot published for this config.
        let snapshot = self.pool.snapshot();
        let wanted: HashMap<Arc<str>, Target> = snapshot
            .backends()
            .iter()
            .filter(|b| !b.is_gone())
            .map(|b| (b.name().clone(), b.target().clone()))
            .collect();
        self.probes.retain(|name, probe| {
            let keep = wanted.get(name).map(Target::key) == Some(&probe.target)
                && probe.settings == *settings
                && probe.h2 == h2;
            if !keep {
                probe.task.abort();
            }
            keep
        });
        for (name, target) in wanted {
            if self.probes.contains_key(&name) {
                continue;
            }
            let key = target.key().clone();
            let task = self.tasks.spawn(probe_loop(
                name.clone(),
                target,
                h2,
                settings.clone(),
                self.probe_events.clone(),
            ));
            self.probes.insert(
                name,
                Probe {
                    target: key,
                    h2,
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
                pool = %self.pool.name(),
                backend = %event.backend,
                from = "healthy",
                to = "unhealthy",
                reason = %event.observation,
                "backend marked down"
            ),
            Transition::Up => tracing::info!(
                pool = %self.pool.name(),
                backend = %event.backend,
                from = "unhealthy",
                to = "healthy",
                reason = %event.observation,
                "backend restored"
            ),
        }
        self.pool
            .stats()
            .health_transition(self.pool.name(), &event.backend, transition);
        let up = transition == Transition::Up;
        self.runtime
            .health_changed(&self.config, &event.backend, up, Instant::now());
        true
    }

    /// Adopts `file` if its snapshot builds: a backend whose name is
    /// unchanged keeps its health, a new one starts healthy; discovery
    /// restarts when the file's `discover` entries changed (the sets found
    /// are kept otherwise).
    async fn reload(&mut self, file: Arc<PoolConfig>) -> Result<(), PoolError> {
        let rediscover = file.discover != self.file.discover;
        let discovered = match rediscover {
            true => vec![None; file.discover.len()],
            false => self.discovered.clone(),
        };
        self.adopt(file, discovered, false, false, "reload").await?;
        if rediscover {
            self.start_discovery();
        }
        Ok(())
    }

    /// Adopts `file` with the `discovered` sets, and publishes it: the
    /// pool is their merge, with the backends discovery lost kept gone
    /// while the member list allows ([`discovery::keep_gone`]); a backend
    /// keeps its health by name, a new one starts healthy (down until
    /// probed with `probe_first`) and ramps with slow start (at once when
    /// `fills`: an entry's first answer fills the pool as startup does);
    /// a backend that leaves ends its ramp, one that returns from gone
    /// starts one. On error nothing changes.
    async fn adopt(
        &mut self,
        file: Arc<PoolConfig>,
        discovered: Vec<Option<Vec<Found>>>,
        probe_first: bool,
        fills: bool,
        cause: &'static str,
    ) -> Result<(), PoolError> {
        let merged = discovery::merge(&file, &discovered);
        let (config, gone) = discovery::keep_gone(&self.file, &file, &self.config, merged);
        let config = Arc::new(config);
        let states = self.carried_states(&config, probe_first);
        let mut runtime = self.runtime.clone();
        let is_healthy = |name: &str| states.get(name).is_none_or(|s| s.healthy);
        let now = Instant::now();
        runtime.reload(&self.config, &config, is_healthy, now);
        for name in &gone {
            runtime.end_ramp(name);
        }
        for name in self.gone.iter().filter(|n| !gone.contains(n)) {
            if config.backends.iter().any(|b| b.name == *name) && is_healthy(name) {
                runtime.health_changed(&config, &Arc::from(name.as_str()), true, now);
            }
        }
        if fills {
            let new = |b: &&BackendConfig| self.config.backends.iter().all(|c| c.name != b.name);
            for b in config.backends.iter().filter(new) {
                runtime.end_ramp(&b.name);
            }
        }
        let previous_states = std::mem::replace(&mut self.states, states);
        let previous_file = std::mem::replace(&mut self.file, file);
        let previous_gone = std::mem::replace(&mut self.gone, gone);
        if let Err(error) = self.publish(runtime, config, cause).await {
            self.states = previous_states;
            self.file = previous_file;
            self.gone = previous_gone;
            return Err(error);
        }
        self.discovered = discovered;
        self.start_probes();
        Ok(())
    }

    /// The health state of each backend of `config`: the one it has, else
    /// a new backend's (healthy, or down until probed when `probe_first`).
    fn carried_states(
        &self,
        config: &PoolConfig,
        probe_first: bool,
    ) -> HashMap<Arc<str>, HealthState> {
        config
            .backends
            .iter()
            .map(|b| {
                let state = self.states.get(b.name.as_str()).copied();
                let new = match probe_first {
                    true => HealthState {
                        healthy: false,
                        successes: 0,
                        failures: 0,
                    },
                    false => HealthState::new(),
                };
                (Arc::from(b.name.as_str()), state.unwrap_or(new))
            })
            .collect()
    }

    /// Starts a discovery task for each `discover` entry of the file,
    /// stopping those of before.
    fn start_discovery(&mut self) {
        for task in self.discovery.drain(..) {
            task.abort();
        }
        self.generation += 1;
        for (entry, config) in self.file.discover.iter().enumerate() {
            let task = self.tasks.spawn(resolve::run(
                entry,
                self.generation,
                config.clone(),
                self.pool.name().clone(),
                self.pool.stats().clone(),
                self.sets.clone(),
            ));
            self.discovery.push(task);
        }
    }

    /// Adopts a set of backends an entry found: new backends start healthy
    /// (or down until probed, with `probe_first`) and ramp with slow start,
    /// removed ones leave (their requests in flight finish).
    async fn discovered(&mut self, set: Discovered) -> Result<(), PoolError> {
        if set.generation != self.generation || set.entry >= self.discovered.len() {
            return Ok(());
        }
        let probe_first = self.file.discover[set.entry].probe_first;
        let first_answer = self.discovered[set.entry].is_none();
        let mut discovered = self.discovered.clone();
        discovered[set.entry] = Some(set.found);
        let file = self.file.clone();
        self.adopt(file, discovered, probe_first, first_answer, "discovery")
            .await
    }
}

/// The health flag of each of `config`'s backends (config order) in
/// `states`; a backend without a state is healthy, as every backend starts.
fn healthy_flags(config: &PoolConfig, states: &HashMap<Arc<str>, HealthState>) -> Vec<bool> {
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
    config: Arc<PoolConfig>,
    conditions: Conditions,
    cause: &'static str,
) -> Result<(), PoolError> {
    let current = pool.snapshot();
    let built = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let next = Snapshot::build_with(config, &conditions, Some(&current))?;
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
        pool.stats()
            .table_rebuilt(pool.name(), rebuild.duration, rebuild.moved);
        let build_us = u64::try_from(rebuild.duration.as_micros()).unwrap_or(u64::MAX);
        let (healthy, backends) = (next.healthy_count(), next.backends().len());
        let moved = rebuild.moved;
        // A ramp publishes a hundred steps: each is worth a debug line only.
        if cause == "slow_start" {
            tracing::debug!(pool = %pool.name(), healthy, backends, cause, build_us, moved, "published a new pool snapshot");
        } else {
            tracing::info!(pool = %pool.name(), healthy, backends, cause, build_us, moved, "published a new pool snapshot");
        }
    }
    pool.publish(next);
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

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
        Arc::new(Pool::new(
            Snapshot::all_healthy(config.pools[0].clone()).unwrap(),
        ))
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
        let config =
            crate::config::Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let (reply, answer) = oneshot::channel();
        (Command::Reload(config.pools[0].clone(), reply), answer)
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
        assert_eq!(pool.stats().table_rebuilds("default"), 1);
        assert_eq!(
            pool.stats()
                .health_transitions("default", "b1", Transition::Down),
            1
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
}
