//! The immutable snapshot a request routes with: the backends, their health
//! and the selector built over them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Scheme;

use crate::balance::hash::{DEFAULT_HASH_KEY, KeyHasher};
use crate::balance::key::{self, RequestKey};
use crate::balance::policy::{
    LeastConnections, LeastResponseTime, Load, Policy, Random, RoundRobin, WeightedRoundRobin,
};
use crate::balance::selector::{BuildError, HashSelector, HashTable};
use crate::balance::slow_start::{self, Ramp};
use crate::config::{Algorithm, KeySource, PoolConfig};
use crate::pool::backend::{Backend, BackendState, Override};
use crate::pool::target::{Target, UpstreamTls};
use fnv::FnvHashMap;

/// The seed of the `random` policy: the ASCII bytes of `affinity` read as a
/// big-endian `u64`. Fixed so that a pool's sequence of picks is
/// reproducible; every new snapshot restarts the sequence.
pub const RANDOM_SEED: u64 = u64::from_be_bytes(*b"affinity");

/// Why a snapshot cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The hash table or ring refused the pool.
    #[error(transparent)]
    Table(#[from] BuildError),
    /// A backend URL without a host (the config module rejects these).
    #[error("backend {name:?}: url {url} has no host")]
    NoHost {
        /// The backend.
        name: String,
        /// Its URL.
        url: Uri,
    },
    /// A route names a pool the config does not have (the config module
    /// rejects these).
    #[error("a route names pool {name:?}, which is not configured")]
    UnknownPool {
        /// The pool's name.
        name: String,
    },
    /// A listener's routes cannot be compiled (the config module rejects
    /// these).
    #[error(transparent)]
    Route(#[from] crate::balance::route::RouteError),
    /// The TLS client settings for the pool's `https://` backends cannot be
    /// made (a CA file or client certificate that cannot be read).
    #[error("pool {pool:?}: {problem}")]
    UpstreamTls {
        /// The pool.
        pool: String,
        /// What is wrong.
        problem: String,
    },
    /// Building the snapshot failed unexpectedly (a panic in the build).
    #[error("building the pool failed: {0}")]
    BuildFailed(String),
}

/// How a snapshot picks backends: by key hash, or by a classic policy.
#[derive(Debug)]
pub enum Selector {
    /// Consistent hashing of the request key (`maglev`, `ring_hash`).
    Hash {
        /// The table seen through the snapshot's health.
        selector: HashSelector,
        /// Hashes request keys (configured `hash_key` or the default).
        hasher: KeyHasher,
        /// Bounded-load factor `c`, or 0 for off.
        bounded_load: f64,
        /// Weight of each backend (pool index), 0 for an unhealthy one.
        weights: Vec<u32>,
        /// Backends in slow start, if any: keys they hold back route with
        /// the table without them.
        ramp: Option<Box<Ramp>>,
    },
    /// A classic policy; requests have no key.
    Policy(Policy),
}

impl Selector {
    /// The key hasher of a hash selector; `None` for the classic policies,
    /// which have no use for a key.
    pub fn hasher(&self) -> Option<&KeyHasher> {
        match self {
            Selector::Hash { hasher, .. } => Some(hasher),
            Selector::Policy(_) => None,
        }
    }

    /// The next backend (pool index) to try that is not in `tried`, or
    /// `None` when no healthy backend is left.
    ///
    /// Hash selectors walk the key's fallback order: the first try is the
    /// key's pick, a retry the next backend of that order not yet tried.
    /// With bounded load (Mirrokni, Thorup & Zadimoghaddam, "Consistent
    /// Hashing with Bounded Loads", SODA 2018, weighted here), a backend is
    /// skipped while its requests in flight reach `⌈c · (m + 1) · w / W⌉`,
    /// where `m` is the requests in flight to the healthy backends, `w` its
    /// weight and `W` the healthy weight; since `c > 1` some backend is
    /// always below its bound. Policies pick as [`Policy::pick`] does.
    /// `key_hash` is ignored by policies.
    pub fn next(&self, key_hash: u64, load: &dyn Load, tried: &[usize]) -> Option<usize> {
        match self {
            Selector::Hash {
                selector,
                bounded_load,
                weights,
                ramp,
                ..
            } => {
                let selector = slow_start::view(selector, ramp.as_deref(), key_hash);
                if *bounded_load > 0.0 {
                    return next_bounded(selector, weights, *bounded_load, key_hash, load, tried);
                }
                if tried.is_empty() {
                    selector.pick(key_hash)
                } else {
                    selector.fallback(key_hash).find(|b| !tried.contains(b))
                }
            }
            Selector::Policy(policy) => policy.pick(load, tried),
        }
    }
}

fn next_bounded(
    selector: &HashSelector,
    weights: &[u32],
    c: f64,
    key_hash: u64,
    load: &dyn Load,
    tried: &[usize],
) -> Option<usize> {
    let healthy = || weights.iter().enumerate().filter(|(_, w)| **w > 0);
    let total_weight: u64 = healthy().map(|(_, &w)| u64::from(w)).sum();
    let requests: u64 = healthy().map(|(b, _)| load.in_flight(b)).sum::<u64>() + 1;
    let mut first_untried = None;
    for b in selector.fallback(key_hash) {
        if tried.contains(&b) {
            continue;
        }
        first_untried.get_or_insert(b);
        let weight = weights.get(b).copied().unwrap_or(0);
        let bound = (c * requests as f64 * f64::from(weight) / total_weight as f64).ceil();
        if (load.in_flight(b) as f64) < bound {
            return Some(b);
        }
    }
    first_untried
}

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// The config in effect: the file's, with the runtime overrides.
    config: Arc<PoolConfig>,
    /// The config as the file has it.
    file: Arc<PoolConfig>,
    /// Each backend's pin (see [`pin_of`]), to its place.
    pins: FnvHashMap<u64, usize>,
    /// The TLS client settings of its `https://` backends, if it has any.
    upstream_tls: Option<UpstreamTls>,
    key_source: KeySource,
    backends: Vec<Backend>,
    healthy_count: usize,
    /// Some backend drains (read by [`Snapshot::detour`] on each request).
    draining: bool,
    panic: bool,
    selector: Selector,
    rebuild: Option<Rebuild>,
}

/// How a published snapshot came to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuild {
    /// When it was published.
    pub at: SystemTime,
    /// How long building it took.
    pub duration: Duration,
    /// The share of the key space whose backend it changed (hash
    /// algorithms; 0 for the classic policies).
    pub moved: f64,
    /// Why: `health`, `reload`, `admin` (the write API) or `slow_start` (a
    /// step of a ramp).
    pub cause: &'static str,
}

/// What a snapshot is built from besides its config, one entry per
/// configured backend (config order); missing entries mean unhealthy, no
/// override, no ramp.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Whether each backend is healthy.
    pub healthy: Vec<bool>,
    /// Each backend's runtime overrides.
    pub overrides: Vec<Override>,
    /// Each backend's slow-start progress in `[0, 1]`; 1 (or missing): its
    /// full share.
    pub progress: Vec<f64>,
    /// The pool as the file has it, when the config built from differs
    /// (backends found by discovery added); `None`: the config itself.
    pub source: Option<Arc<PoolConfig>>,
    /// Each backend that discovery no longer finds but that stays in the
    /// table, out of it as an unhealthy backend is, so that its leaving
    /// moves only its own keys (and its return brings them back exactly).
    pub gone: Vec<bool>,
}

impl Conditions {
    /// Backends healthy as given, without overrides or ramps.
    pub fn healthy(healthy: &[bool]) -> Conditions {
        Conditions {
            healthy: healthy.to_vec(),
            ..Conditions::default()
        }
    }
}

/// `file` with `overrides` (config order) applied; `file` itself when they
/// change nothing.
fn effective(file: &Arc<PoolConfig>, overrides: &[Override]) -> Arc<PoolConfig> {
    if overrides.iter().all(Override::is_empty) {
        return file.clone();
    }
    let mut config = PoolConfig::clone(file);
    for (backend, o) in config.backends.iter_mut().zip(overrides) {
        backend.drain = o.drain.unwrap_or(backend.drain);
        backend.weight = o.weight.unwrap_or(backend.weight);
    }
    Arc::new(config)
}

impl Snapshot {
    /// Builds a snapshot of `config`'s pool in which backend `i` (config
    /// order) is healthy when `healthy[i]` is true; missing entries count as
    /// unhealthy.
    ///
    /// From `previous`, when given, it takes what should survive a change:
    /// the live state of each backend with the same name, the hash table
    /// when the algorithm and the pool (names, weights, order) are unchanged
    /// (so a health change costs one pass over the table, not a rebuild).
    /// Idle backend connections outlive snapshots too: they belong to the
    /// worker threads, by backend address ([`crate::proxy::upstream`]).
    pub fn build(
        config: Arc<PoolConfig>,
        healthy: &[bool],
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, PoolError> {
        Snapshot::build_with(config, &Conditions::healthy(healthy), previous)
    }

    /// Builds a snapshot of `pool` (the file's backends and those found by
    /// discovery) under `conditions`: health, runtime overrides (a drain or
    /// weight set through the admin API) and slow-start progress. Otherwise
    /// as [`build`](Self::build).
    pub fn build_with(
        pool: Arc<PoolConfig>,
        conditions: &Conditions,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, PoolError> {
        let config = effective(&pool, &conditions.overrides);
        let file = conditions.source.clone().unwrap_or(pool);
        let gone: Vec<bool> = (0..config.backends.len())
            .map(|i| conditions.gone.get(i).copied().unwrap_or(false))
            .collect();
        let healthy: Vec<bool> = (0..config.backends.len())
            .map(|i| conditions.healthy.get(i).copied().unwrap_or(false) && !gone[i])
            .collect();
        let progress: Vec<f64> = (0..config.backends.len())
            .map(|i| {
                conditions
                    .progress
                    .get(i)
                    .map_or(1.0, |p| p.clamp(0.0, 1.0))
            })
            .collect();
        let upstream_tls = upstream_tls(&config, previous)?;
        let pin_hasher = KeyHasher::new(config.balancer.hash_key.unwrap_or(DEFAULT_HASH_KEY));
        let mut backends = Vec::with_capacity(config.backends.len());
        for (i, (b, &up)) in config.backends.iter().zip(&healthy).enumerate() {
            let mut backend = new_backend(&config, b, &upstream_tls, previous)?;
            backend.pin = pin_of(&pin_hasher, &b.name);
            backend.healthy = up;
            backend.overrides = conditions.overrides.get(i).copied().unwrap_or_default();
            backend.progress = if up { progress[i] } else { 1.0 };
            backend.gone = gone[i];
            backends.push(backend);
        }
        let healthy_count = healthy.iter().filter(|&&h| h).count();
        let present = gone.iter().filter(|&&g| !g).count();
        let panic = in_panic(config.balancer.panic_threshold, healthy_count, present);
        // In panic mode the selector routes over every backend; a draining
        // backend takes no new keys either way (it leaves the table as an
        // unhealthy one does), though its pinned sessions still reach it.
        let routable: Vec<bool> = config
            .backends
            .iter()
            .zip(&healthy)
            .zip(&gone)
            .map(|((b, &up), &gone)| (up || panic) && !b.drain && !gone)
            .collect();
        let selector = build_selector(&config, &routable, &progress, previous)?;
        if let Selector::Hash { ramp: None, .. } = &selector {
            // Nothing is held back (see `Ramp::new`): no backend ramps.
            backends.iter_mut().for_each(|b| b.progress = 1.0);
        }
        // A sticky cookie replaces the configured key with itself.
        let key_source = match &config.balancer.sticky_cookie {
            Some(sticky) => KeySource::Cookie(sticky.name.clone()),
            None => config.balancer.key.clone(),
        };
        let pins = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.pin, i))
            .collect();
        Ok(Snapshot {
            draining: config.backends.iter().any(|b| b.drain),
            pins,
            healthy_count,
            panic,
            key_source,
            upstream_tls,
            config,
            file,
            backends,
            selector,
            rebuild: None,
        })
    }

    /// This snapshot, recorded as the result of `rebuild`.
    pub fn with_rebuild(mut self, rebuild: Rebuild) -> Snapshot {
        self.rebuild = Some(rebuild);
        self
    }

    /// How this snapshot came to be; `None` for the first one.
    pub fn rebuild(&self) -> Option<&Rebuild> {
        self.rebuild.as_ref()
    }

    /// The exact share of the key space whose backend differs between
    /// `previous` and this snapshot, backends matched by name (hash
    /// algorithms); 0 for the classic policies, which keep no mapping.
    pub fn moved_from(&self, previous: &Snapshot) -> f64 {
        match (&self.selector, &previous.selector) {
            (
                Selector::Hash {
                    selector: now,
                    ramp: now_ramp,
                    ..
                },
                Selector::Hash {
                    selector: before,
                    ramp: before_ramp,
                    ..
                },
            ) => slow_start::moved(
                (now, now_ramp.as_deref()),
                (before, before_ramp.as_deref()),
                |i| {
                    let name = previous.backends.get(i)?.name();
                    self.backends.iter().position(|b| b.name() == name)
                },
            ),
            _ => 0.0,
        }
    }

    /// The config as the file has it, without the runtime overrides that
    /// [`config`](Self::config) has.
    pub fn file_config(&self) -> &Arc<PoolConfig> {
        &self.file
    }

    /// A snapshot in which every backend is healthy, as at startup.
    pub fn all_healthy(config: Arc<PoolConfig>) -> Result<Snapshot, PoolError> {
        let healthy = vec![true; config.backends.len()];
        Snapshot::build(config, &healthy, None)
    }

    /// The configuration this snapshot was built from.
    pub fn config(&self) -> &Arc<PoolConfig> {
        &self.config
    }

    /// The backends, in config order (their pool indices).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// The backend (place) that `pin` names, if it is routable now: healthy,
    /// or any backend in panic mode.
    pub fn pinned(&self, pin: u64) -> Option<usize> {
        let index = *self.pins.get(&pin)?;
        let backend = self.backends.get(index)?;
        ((backend.healthy || self.panic) && !backend.gone).then_some(index)
    }

    /// How many backends are healthy.
    pub fn healthy_count(&self) -> usize {
        self.healthy_count
    }

    /// Whether the pool is in panic mode: fewer than
    /// `balancer.panic_threshold` percent of its backends are healthy, so
    /// the selector routes over all of them.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    /// How many backends the selector may pick: the healthy ones, or all of
    /// them in panic mode.
    pub fn routable_count(&self) -> usize {
        if self.panic {
            self.backends.iter().filter(|b| !b.gone).count()
        } else {
            self.healthy_count
        }
    }

    /// How backends are picked.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Whether `peer` is one of the configured trusted proxies.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        key::is_trusted(peer, &self.config.balancer.trusted_proxies)
    }

    /// What requests are keyed on: `balancer.key`, or the sticky cookie
    /// when `[balancer.sticky_cookie]` is configured.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// The key bytes of a request under [`key_source`](Self::key_source)
    /// (see [`key`] for exactly which bytes). With a sticky
    /// cookie, a request without one falls back to its client IP here; the
    /// proxy issues it a new session id instead.
    pub fn request_key<'a>(
        &self,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        peer: IpAddr,
    ) -> RequestKey<'a> {
        let trusted = &self.config.balancer.trusted_proxies;
        key::request_key(&self.key_source, uri, headers, peer, trusted)
    }

    /// The hash of a request's key, for the hash algorithms; `None` for the
    /// classic policies.
    pub fn key_hash(&self, uri: &Uri, headers: &HeaderMap, peer: IpAddr) -> Option<u64> {
        let hasher = self.selector.hasher()?;
        Some(hasher.hash(self.request_key(uri, headers, peer).as_bytes()))
    }

    /// The next backend to try (pool index) that is not in `tried`, reading
    /// live load at `now_ns` (on [`Pool::now_ns`](crate::pool::Pool::now_ns)'s clock).
    pub fn next_backend(&self, key_hash: u64, tried: &[usize], now_ns: u64) -> Option<usize> {
        let load = LiveLoad {
            backends: &self.backends,
            now_ns,
        };
        self.selector.next(key_hash, &load, tried)
    }

    /// The fallback order of a key hash (hash algorithms): healthy backends,
    /// first choice first. Empty for the classic policies.
    pub fn fallback_order(&self, key_hash: u64) -> Vec<&Backend> {
        match &self.selector {
            Selector::Hash { selector, ramp, .. } => {
                slow_start::view(selector, ramp.as_deref(), key_hash)
                    .fallback(key_hash)
                    .filter_map(|b| self.backends.get(b))
                    .collect()
            }
            Selector::Policy(_) => Vec::new(),
        }
    }

    /// The key's first choice with every backend healthy, none draining
    /// and none ramping (hash algorithms).
    pub fn first_choice(&self, key_hash: u64) -> Option<usize> {
        match &self.selector {
            Selector::Hash { selector, .. } => Some(selector.preferred(key_hash)),
            Selector::Policy(_) => None,
        }
    }

    /// When the key's pick is in slow start: that backend, and whether the
    /// ramp has let the key through yet (hash algorithms).
    pub fn ramp_of(&self, key_hash: u64) -> Option<(usize, bool)> {
        match &self.selector {
            Selector::Hash {
                selector,
                ramp: Some(ramp),
                ..
            } => {
                let pick = selector.pick(key_hash)?;
                ramp.is_ramping(pick)
                    .then(|| (pick, !ramp.holds_back(pick, key_hash)))
            }
            _ => None,
        }
    }

    /// Why `chosen`, a key's first attempt (as [`next_backend`](Self::next_backend)
    /// picked it), is not the key's first choice with every backend healthy
    /// and idle. Cheap: nothing is looked up while every backend is healthy
    /// and bounded load is off. Always no detour for the classic policies.
    pub fn detour(&self, key_hash: u64, chosen: usize) -> Detour {
        let mut detour = Detour::default();
        if let Selector::Hash {
            selector,
            bounded_load,
            ramp,
            ..
        } = &self.selector
        {
            let first = || selector.preferred(key_hash);
            if self.healthy_count < self.backends.len() {
                // In panic mode a down first choice may still be chosen.
                let first = first();
                detour.unhealthy =
                    first != chosen && self.backends.get(first).is_some_and(|b| !b.healthy);
            }
            if self.draining {
                let first = first();
                detour.draining =
                    first != chosen && self.backends.get(first).is_some_and(|b| b.draining);
            }
            if let Some(ramp) = ramp {
                detour.slow_start = selector
                    .pick(key_hash)
                    .is_some_and(|pick| pick != chosen && ramp.holds_back(pick, key_hash));
            }
            if *bounded_load > 0.0 {
                let view = slow_start::view(selector, ramp.as_deref(), key_hash);
                detour.bounded_load = view.pick(key_hash) != Some(chosen);
            }
        }
        detour
    }

    /// Each backend's share (config order) of the requests it may get now:
    /// its exact share of the key space (hash algorithms), or its weight's
    /// share of the routable backends' weight (classic policies). 0 for a
    /// backend the selector may not pick.
    pub fn shares(&self) -> Vec<f64> {
        match &self.selector {
            Selector::Hash { selector, ramp, .. } => {
                slow_start::shares(selector, ramp.as_deref(), self.backends.len())
            }
            Selector::Policy(_) => {
                // A ramping backend weighs its progress's part of its weight.
                let weight =
                    |b: &Backend| match (b.healthy || self.in_panic()) && !b.draining && !b.gone {
                        true => f64::from(b.weight) * b.progress,
                        false => 0.0,
                    };
                let total: f64 = self.backends.iter().map(weight).sum();
                self.backends
                    .iter()
                    .map(|b| if total > 0.0 { weight(b) / total } else { 0.0 })
                    .collect()
            }
        }
    }
}

/// Why a request's first attempt goes to another backend than its key's
/// first choice (hash algorithms), for the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detour {
    /// The key's first choice is unhealthy: the key went down its fallback
    /// order.
    pub unhealthy: bool,
    /// The key's healthy pick was at its bounded-load cap: the request went
    /// further down the fallback order.
    pub bounded_load: bool,
    /// The key's first choice is draining: it takes no new keys.
    pub draining: bool,
    /// The key's pick is in slow start and has not taken this key back yet.
    pub slow_start: bool,
}

/// A backend's pin: a keyed hash of its name (the pool's `hash_key`), so a
/// sticky cookie names its backend without giving away a name or an
/// address, and every instance with the same config reads it the same way.
pub fn pin_of(hasher: &KeyHasher, name: &str) -> u64 {
    let mut bytes = Vec::with_capacity(name.len() + 13);
    bytes.extend_from_slice(b"affinity-pin\0");
    bytes.extend_from_slice(name.as_bytes());
    hasher.hash(&bytes)
}

/// Backend `b` of `config` as a snapshot holds it, with its live state
/// from `previous` when it has one of the same name; healthy, with no pin,
/// override or ramp (the caller sets those).
fn new_backend(
    config: &PoolConfig,
    b: &crate::config::BackendConfig,
    upstream_tls: &Option<UpstreamTls>,
    previous: Option<&Snapshot>,
) -> Result<Backend, PoolError> {
    let no_host = || PoolError::NoHost {
        name: b.name.clone(),
        url: b.url.clone(),
    };
    let authority = b.url.authority().cloned().ok_or_else(no_host)?;
    let scheme = b.url.scheme().cloned().unwrap_or(Scheme::HTTP);
    let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    let host_header = HeaderValue::from_str(&host).map_err(|_| no_host())?;
    let target = match (upstream_tls, scheme == Scheme::HTTPS) {
        (Some(tls), true) => Target::tls(authority.clone(), tls.clone()).map_err(|problem| {
            PoolError::UpstreamTls {
                pool: config.name.clone(),
                problem: format!("backend {:?}: {problem}", b.name),
            }
        })?,
        _ => Target::plain(authority.clone()),
    };
    let state = previous
        .and_then(|p| p.backend(&b.name))
        .map_or_else(|| Arc::new(BackendState::new()), |p| p.state.clone());
    Ok(Backend {
        draining: b.drain,
        pin: 0,
        name: Arc::from(b.name.as_str()),
        url: b.url.clone(),
        scheme,
        authority,
        host_header,
        target,
        weight: b.weight,
        healthy: true,
        overrides: Override::default(),
        progress: 1.0,
        gone: false,
        state,
    })
}

/// The TLS client settings for `config`'s `https://` backends: those of
/// `previous` when its upstream settings are the same (so a health change
/// reads no file), else new ones; `None` when no backend is `https://`.
fn upstream_tls(
    config: &PoolConfig,
    previous: Option<&Snapshot>,
) -> Result<Option<UpstreamTls>, PoolError> {
    if !config
        .backends
        .iter()
        .any(|b| b.url.scheme() == Some(&Scheme::HTTPS))
    {
        return Ok(None);
    }
    if let Some(previous) = previous
        && previous.config.upstream == config.upstream
        && let Some(tls) = &previous.upstream_tls
    {
        return Ok(Some(tls.clone()));
    }
    UpstreamTls::new(&config.upstream)
        .map(Some)
        .map_err(|problem| PoolError::UpstreamTls {
            pool: config.name.clone(),
            problem,
        })
}

/// Whether `healthy` of `total` backends is below `threshold` percent (0 is
/// off).
fn in_panic(threshold: f64, healthy: usize, total: usize) -> bool {
    threshold > 0.0 && (healthy as f64) * 100.0 < threshold * total as f64
}

fn build_selector(
    config: &PoolConfig,
    routable: &[bool],
    progress: &[f64],
    previous: Option<&Snapshot>,
) -> Result<Selector, BuildError> {
    let balancer = &config.balancer;
    if config.backends.is_empty() {
        // A pool that discovers its backends and has found none yet: every
        // request gets `503`, as with no healthy backend.
        return Ok(Selector::Policy(Policy::RoundRobin(RoundRobin::new(
            Vec::new(),
        ))));
    }
    let Some(algorithm) = balancer.hash_algorithm() else {
        return Ok(Selector::Policy(classic_policy(
            balancer.algorithm,
            &ramped_weights(config, routable, progress),
        )));
    };
    let reused = previous
        .filter(|p| same_table(&p.config, config))
        .and_then(|p| match &p.selector {
            Selector::Hash { selector, .. } => Some(selector.table()),
            Selector::Policy(_) => None,
        });
    let table = match reused {
        Some(table) => table,
        None => HashTable::new(algorithm, &config.members())?,
    };
    Ok(Selector::Hash {
        selector: HashSelector::new(&table, routable),
        ramp: Ramp::new(&table, routable, progress).map(Box::new),
        hasher: KeyHasher::new(balancer.hash_key.unwrap_or(DEFAULT_HASH_KEY)),
        bounded_load: balancer.bounded_load,
        weights: config
            .backends
            .iter()
            .zip(routable)
            .map(|(b, &up)| if up { b.weight } else { 0 })
            .collect(),
    })
}

/// Steps of a ramping backend's weight under the classic policies: while
/// any backend ramps, every weight is scaled by this and a ramping one by
/// its progress too.
const RAMP_STEPS: f64 = 100.0;

/// The routable `(pool index, weight)` pairs a classic policy is built
/// over, and whether a backend ramps: while one does, every weight is
/// multiplied by [`RAMP_STEPS`] and a ramping backend's also by its
/// progress (at least 1, so it is tried and measured).
fn ramped_weights(config: &PoolConfig, routable: &[bool], progress: &[f64]) -> Ramped {
    let ramping = |i: usize| routable[i] && progress.get(i).is_some_and(|&p| p < 1.0);
    let any = (0..routable.len()).any(ramping);
    let weighted = config
        .backends
        .iter()
        .enumerate()
        .filter(|&(i, _)| routable[i])
        .map(|(i, b)| {
            if !any {
                return (i, b.weight);
            }
            let p = if ramping(i) { progress[i] } else { 1.0 };
            let w = (f64::from(b.weight) * RAMP_STEPS * p).round();
            (i, (w as u32).max(1))
        })
        .collect();
    Ramped { weighted, any }
}

/// See [`ramped_weights`].
struct Ramped {
    weighted: Vec<(usize, u32)>,
    /// Some backend ramps.
    any: bool,
}

/// The classic policy over the routable backends. While a backend ramps,
/// the unweighted policies weigh too: round robin runs as smooth weighted
/// round robin (equal weights give the same turns), least response time
/// takes a ramping backend's latency as `1/progress` times longer.
fn classic_policy(algorithm: Algorithm, ramped: &Ramped) -> Policy {
    let weighted = ramped.weighted.clone();
    let indices = || weighted.iter().map(|&(i, _)| i).collect::<Vec<usize>>();
    match algorithm {
        Algorithm::WeightedRoundRobin => {
            Policy::WeightedRoundRobin(WeightedRoundRobin::new(weighted))
        }
        Algorithm::LeastConnections => Policy::LeastConnections(LeastConnections::new(weighted)),
        Algorithm::LeastResponseTime if ramped.any => {
            Policy::LeastResponseTime(LeastResponseTime::weighted(weighted))
        }
        Algorithm::LeastResponseTime => {
            Policy::LeastResponseTime(LeastResponseTime::new(indices()))
        }
        Algorithm::Random => Policy::Random(Random::new(weighted, RANDOM_SEED)),
        Algorithm::RoundRobin if ramped.any => {
            Policy::WeightedRoundRobin(WeightedRoundRobin::new(weighted))
        }
        // The hash algorithms never get here (`BalancerConfig::hash_algorithm`
        // answers for them); were one added without a table, it would still
        // serve, in turn.
        Algorithm::RoundRobin | Algorithm::Maglev | Algorithm::RingHash => {
            Policy::RoundRobin(RoundRobin::new(indices()))
        }
    }
}

/// Whether two configs give the same hash table: same algorithm, parameters
/// and members in the same order.
fn same_table(a: &PoolConfig, b: &PoolConfig) -> bool {
    a.balancer.hash_algorithm() == b.balancer.hash_algorithm() && a.members() == b.members()
}

/// The live load of a snapshot's backends at one instant.
struct LiveLoad<'a> {
    backends: &'a [Backend],
    now_ns: u64,
}

impl Load for LiveLoad<'_> {
    fn in_flight(&self, backend: usize) -> u64 {
        self.backends
            .get(backend)
            .map_or(0, |b| b.state.in_flight())
    }

    fn latency_ewma_ns(&self, backend: usize) -> Option<u64> {
        self.backends
            .get(backend)
            .and_then(|b| b.state.latency_ewma_ns(self.now_ns))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn config(text: &str) -> Arc<PoolConfig> {
        Config::from_toml(text, Path::new("test.toml"))
            .unwrap()
            .pools[0]
            .clone()
    }

    fn pool_of(algorithm: &str, weights: &[u32]) -> Arc<PoolConfig> {
        pool_with(&format!("algorithm = \"{algorithm}\""), weights)
    }

    /// A pool `b0`, `b1`, ... of `weights`, with `balancer` lines in its
    /// `[balancer]` table.
    fn pool_with(balancer: &str, weights: &[u32]) -> Arc<PoolConfig> {
        let mut text = format!("[balancer]\n{balancer}\n");
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!(
                "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\nweight = {w}\n",
                9000 + i
            ));
        }
        config(&text)
    }

    fn names(snapshot: &Snapshot, picks: &[usize]) -> Vec<String> {
        picks
            .iter()
            .map(|&i| snapshot.backends()[i].name().to_string())
            .collect()
    }

    #[test]
    fn a_hash_snapshot_picks_the_first_backend_of_the_fallback_order_then_the_next_ones() {
        for algorithm in ["maglev", "ring_hash"] {
            let snapshot = Snapshot::all_healthy(pool_of(algorithm, &[1; 5])).unwrap();
            for key_hash in [0, 1, 12_345, u64::MAX] {
                let order: Vec<usize> = match snapshot.selector() {
                    Selector::Hash { selector, .. } => selector.fallback(key_hash).collect(),
                    Selector::Policy(_) => unreachable!(),
                };
                let mut tried = Vec::new();
                while let Some(b) = snapshot.next_backend(key_hash, &tried, 0) {
                    tried.push(b);
                }
                assert_eq!(tried, order, "{algorithm}");
                assert_eq!(tried.len(), 5);
            }
        }
    }

    #[test]
    fn unhealthy_backends_are_never_picked_and_none_healthy_picks_none() {
        let snapshot =
            Snapshot::build(pool_of("maglev", &[1; 3]), &[true, false, true], None).unwrap();
        assert_eq!(snapshot.healthy_count(), 2);
        for key_hash in 0..200 {
            assert_ne!(snapshot.next_backend(key_hash, &[], 0), Some(1));
        }
        let none = Snapshot::build(pool_of("round_robin", &[1; 3]), &[false; 3], None).unwrap();
        assert_eq!(none.next_backend(0, &[], 0), None);
    }

    #[test]
    fn below_the_panic_threshold_every_backend_is_routable_and_the_mapping_is_the_full_one() {
        let with_panic = |algorithm: &str| {
            pool_with(
                &format!("algorithm = \"{algorithm}\"\npanic_threshold = 50"),
                &[1; 4],
            )
        };
        for algorithm in ["maglev", "ring_hash", "round_robin"] {
            let all = Snapshot::all_healthy(with_panic(algorithm)).unwrap();
            // 2 of 4 healthy is 50%: not below the threshold.
            let half =
                Snapshot::build(with_panic(algorithm), &[true, false, true, false], None).unwrap();
            assert!(!half.in_panic(), "{algorithm}");
            assert_eq!(half.routable_count(), 2);
            // 1 of 4 is 25%: panic.
            let one =
                Snapshot::build(with_panic(algorithm), &[false, false, true, false], None).unwrap();
            assert!(one.in_panic(), "{algorithm}");
            assert_eq!((one.healthy_count(), one.routable_count()), (1, 4));
            assert!(!one.backends()[0].is_healthy(), "health itself is kept");
            let none = Snapshot::build(with_panic(algorithm), &[false; 4], None).unwrap();
            assert!(none.in_panic());
            let mut picked = std::collections::HashSet::new();
            for key_hash in (0..4000u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
                let pick = one.next_backend(key_hash, &[], 0);
                if algorithm != "round_robin" {
                    // Hash keys map exactly as with every backend healthy.
                    assert_eq!(pick, all.next_backend(key_hash, &[], 0), "{algorithm}");
                    assert_eq!(none.next_backend(key_hash, &[], 0), pick);
                }
                picked.extend(pick);
            }
            assert_eq!(picked.len(), 4, "{algorithm}");
        }
        let off = Snapshot::build(
            pool_of("maglev", &[1; 4]),
            &[false, false, true, false],
            None,
        )
        .unwrap();
        assert!(!off.in_panic());
        assert_eq!(off.routable_count(), 1);
    }

    #[test]
    fn every_classic_algorithm_becomes_its_policy() {
        for algorithm in [
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "least_response_time",
            "random",
        ] {
            let snapshot = Snapshot::all_healthy(pool_of(algorithm, &[1, 2, 3])).unwrap();
            assert!(snapshot.selector().hasher().is_none(), "{algorithm}");
            assert_eq!(
                snapshot.key_hash(
                    &Uri::from_static("/"),
                    &HeaderMap::new(),
                    [127, 0, 0, 1].into()
                ),
                None
            );
            let mut tried = Vec::new();
            while let Some(b) = snapshot.next_backend(0, &tried, 0) {
                tried.push(b);
            }
            tried.sort_unstable();
            assert_eq!(tried, [0, 1, 2], "{algorithm}");
        }
    }

    #[test]
    fn round_robin_cycles_in_config_order() {
        let snapshot = Snapshot::all_healthy(pool_of("round_robin", &[1; 3])).unwrap();
        let picks: Vec<usize> = (0..6)
            .map(|_| snapshot.next_backend(0, &[], 0).unwrap())
            .collect();
        assert_eq!(
            names(&snapshot, &picks),
            ["b0", "b1", "b2", "b0", "b1", "b2"]
        );
    }

    #[test]
    fn live_state_is_shared_by_name_across_snapshots() {
        let first = Snapshot::all_healthy(pool_of("least_connections", &[1; 3])).unwrap();
        let guard = first.backend("b1").unwrap().state().begin();
        let second = Snapshot::build(first.config().clone(), &[true; 3], Some(&first)).unwrap();
        assert_eq!(second.backend("b1").unwrap().state().in_flight(), 1);
        drop(guard);
        assert_eq!(second.backend("b1").unwrap().state().in_flight(), 0);

        let renamed = config(
            "[[backends]]\nname = \"other\"\nurl = \"http://127.0.0.1:1\"\n\
             [[backends]]\nname = \"b1\"\nurl = \"http://127.0.0.1:2\"\n",
        );
        let _busy = first.backend("b1").unwrap().state().begin();
        let third = Snapshot::build(renamed, &[true; 2], Some(&first)).unwrap();
        assert_eq!(third.backend("b1").unwrap().state().in_flight(), 1);
        assert_eq!(third.backend("other").unwrap().state().in_flight(), 0);
    }

    #[test]
    fn a_health_change_reuses_the_hash_table() {
        let first = Snapshot::all_healthy(pool_of("maglev", &[1; 4])).unwrap();
        let second = Snapshot::build(
            first.config().clone(),
            &[true, false, true, true],
            Some(&first),
        )
        .unwrap();
        match (first.selector(), second.selector()) {
            (Selector::Hash { selector: a, .. }, Selector::Hash { selector: b, .. }) => {
                match (a.table(), b.table()) {
                    (HashTable::Maglev(x), HashTable::Maglev(y)) => assert!(Arc::ptr_eq(&x, &y)),
                    _ => panic!("expected Maglev tables"),
                }
            }
            _ => panic!("expected hash selectors"),
        }
    }

    #[test]
    fn least_connections_reads_in_flight_requests_from_the_live_state() {
        let snapshot = Snapshot::all_healthy(pool_of("least_connections", &[1; 2])).unwrap();
        let _busy = snapshot.backends()[0].state().begin();
        for _ in 0..10 {
            assert_eq!(snapshot.next_backend(0, &[], 0), Some(1));
        }
    }

    #[test]
    fn least_response_time_reads_the_latency_average() {
        let snapshot = Snapshot::all_healthy(pool_of("least_response_time", &[1; 3])).unwrap();
        let b = snapshot.backends();
        b[0].state()
            .observe_latency(Duration::from_millis(200), 1_000);
        b[1].state()
            .observe_latency(Duration::from_millis(2), 1_000);
        b[2].state()
            .observe_latency(Duration::from_millis(50), 1_000);
        for _ in 0..10 {
            assert_eq!(snapshot.next_backend(0, &[], 2_000), Some(1));
        }
    }

    #[test]
    fn bounded_load_moves_a_key_off_a_backend_at_its_bound() {
        let snapshot = Snapshot::all_healthy(pool_with("bounded_load = 1.25", &[1; 4])).unwrap();
        let key_hash = 42;
        let order: Vec<usize> = match snapshot.selector() {
            Selector::Hash { selector, .. } => selector.fallback(key_hash).collect(),
            Selector::Policy(_) => unreachable!(),
        };
        // Idle pool: bound ⌈1.25 · 1 / 4⌉ = 1, everyone is below it.
        assert_eq!(snapshot.next_backend(key_hash, &[], 0), Some(order[0]));
        // The first choice holds 2 of 2 requests: bound ⌈1.25 · 3 / 4⌉ = 1.
        let _a = snapshot.backends()[order[0]].state().begin();
        let _b = snapshot.backends()[order[0]].state().begin();
        assert_eq!(snapshot.next_backend(key_hash, &[], 0), Some(order[1]));
        // A retry never returns a tried backend even when it is below the bound.
        assert_eq!(
            snapshot.next_backend(key_hash, &[order[1]], 0),
            Some(order[2])
        );
    }

    #[test]
    fn the_random_seed_is_the_documented_ascii_string() {
        assert_eq!(RANDOM_SEED.to_be_bytes(), *b"affinity");
    }

    #[test]
    fn a_key_whose_first_choice_is_down_is_a_detour_for_unhealthy_only() {
        for algorithm in ["maglev", "ring_hash"] {
            let all = Snapshot::all_healthy(pool_of(algorithm, &[1; 4])).unwrap();
            let one_down =
                Snapshot::build(all.config().clone(), &[true, false, true, true], Some(&all))
                    .unwrap();
            let (mut detours, mut direct) = (0, 0);
            for key_hash in (0..2_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
                let first = all.next_backend(key_hash, &[], 0).unwrap();
                assert_eq!(all.detour(key_hash, first), Detour::default());
                let now = one_down.next_backend(key_hash, &[], 0).unwrap();
                let detour = one_down.detour(key_hash, now);
                assert!(!detour.bounded_load);
                assert_eq!(detour.unhealthy, first == 1, "{algorithm} {key_hash}");
                if detour.unhealthy {
                    detours += 1
                } else {
                    direct += 1
                }
            }
            assert!(
                detours > 300 && direct > 1_000,
                "{algorithm}: {detours} {direct}"
            );
        }
    }

    #[test]
    fn a_key_pushed_past_its_pick_by_bounded_load_is_a_detour_for_bounded_load() {
        let snapshot = Snapshot::all_healthy(pool_with("bounded_load = 1.25", &[1; 4])).unwrap();
        let key_hash = 42;
        let pick = snapshot.next_backend(key_hash, &[], 0).unwrap();
        assert_eq!(snapshot.detour(key_hash, pick), Detour::default());
        let _a = snapshot.backends()[pick].state().begin();
        let _b = snapshot.backends()[pick].state().begin();
        let moved = snapshot.next_backend(key_hash, &[], 0).unwrap();
        assert_ne!(moved, pick);
        assert_eq!(
            snapshot.detour(key_hash, moved),
            Detour {
                bounded_load: true,
                ..Detour::default()
            }
        );
    }

    #[test]
    fn shares_are_the_table_shares_or_the_healthy_weight_shares() {
        let hash = Snapshot::all_healthy(pool_of("maglev", &[1, 3])).unwrap();
        let shares = hash.shares();
        assert!((shares[0] - 0.25).abs() < 1e-4 && (shares[1] - 0.75).abs() < 1e-4);
        let policy = Snapshot::build(
            pool_of("round_robin", &[1, 2, 6]),
            &[true, true, false],
            None,
        )
        .unwrap();
        assert_eq!(policy.shares(), [1.0 / 3.0, 2.0 / 3.0, 0.0]);
    }

    #[test]
    fn every_attempt_counts_as_a_request_sent() {
        let snapshot = Snapshot::all_healthy(pool_of("round_robin", &[1])).unwrap();
        let state = snapshot.backends()[0].state();
        drop(state.begin());
        let _open = state.begin();
        assert_eq!((state.requests(), state.in_flight()), (2, 1));
    }
}
