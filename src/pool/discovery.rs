//! Backends from DNS, as plain state: what one `discover` entry's answers
//! make of the pool, with the clock passed in. The task that asks DNS
//! ([`crate::pool::resolve`]) feeds each answer to a [`Tracker`] and sends
//! the sets it decides on to the pool's controller, which merges them with
//! the file's backends ([`merge`]).
//!
//! Rules:
//! * **identity**: an SRV record is the backend `target:port` (the target
//!   without its final dot, lowercase), an A/AAAA address the backend
//!   `address:port`; a set is sorted by name, so the order of the answers
//!   never matters; a name that comes back gets its keys back exactly (the
//!   tables hash names);
//! * SRV: only the records of the lowest priority are used (the others are
//!   backups, RFC 2782); the weight is the record's, 0 read as 1 and capped
//!   at 1,000;
//! * **a failure is not emptiness**: SERVFAIL, NXDOMAIN, a timeout or any
//!   other error keeps the last good set, is logged once per change of
//!   what fails, and retried after `min_interval`, doubling up to
//!   `max_interval`;
//! * an **empty answer** (the name exists, no records) is applied only once
//!   it has persisted for `empty_grace`; before the first good answer it
//!   applies at once (there is nothing to keep);
//! * the next lookup is due at the answer's TTL, clamped to
//!   `[min_interval, max_interval]`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::Uri;

use crate::balance::member::MAX_WEIGHT;
use crate::config::{BackendConfig, DiscoverConfig, PoolConfig};

/// One record of an answer: where a backend listens, and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The backend's name: `target:port` or `address:port`.
    pub name: String,
    /// Where to connect: an address, or the SRV target's name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its weight, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

impl Found {
    /// A backend at `address` (an A/AAAA answer), named by it.
    pub fn address(address: IpAddr, port: u16, weight: u32) -> Found {
        let socket = SocketAddr::new(address, port);
        Found {
            name: socket.to_string(),
            host: match address {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            },
            port,
            weight: weight.clamp(1, MAX_WEIGHT),
        }
    }

    /// The backend of an SRV record: `target` (with or without its final
    /// dot) at `port`, reached at `address` when one is known.
    pub fn srv(target: &str, port: u16, weight: u16, address: Option<IpAddr>) -> Found {
        let target = target.trim_end_matches('.').to_ascii_lowercase();
        Found {
            name: format!("{target}:{port}"),
            host: match address {
                Some(IpAddr::V4(v4)) => v4.to_string(),
                Some(IpAddr::V6(v6)) => format!("[{v6}]"),
                None => target,
            },
            port,
            weight: u32::from(weight).clamp(1, MAX_WEIGHT),
        }
    }
}

/// What one lookup came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Records, and how long the answer may be kept.
    Records(Vec<Found>, Duration),
    /// The name exists and has no records of the type asked for.
    Empty(Duration),
    /// The lookup failed; the last good set stays.
    Failed(Failure),
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered SERVFAIL (or REFUSED, or another error code).
    ServFail(String),
    /// The name does not exist.
    NxDomain,
    /// No answer in time.
    Timeout,
    /// Anything else (no nameserver, a malformed answer).
    Other(String),
}

impl Failure {
    /// Its metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::ServFail(_) => "servfail",
            Failure::NxDomain => "nxdomain",
            Failure::Timeout => "timeout",
            Failure::Other(_) => "error",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ServFail(code) => write!(f, "the nameserver answered {code}"),
            Failure::NxDomain => f.write_str("the name does not exist (NXDOMAIN)"),
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Other(problem) => f.write_str(problem),
        }
    }
}

/// What the tracker decided about one outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// A new set of backends to apply (sorted by name), if it changed.
    pub apply: Option<Vec<Found>>,
    /// When to look up again, from now.
    pub next: Duration,
    /// What to log, when something changed worth a line.
    pub note: Option<Note>,
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Lookups started failing, or fail differently now; the last good set
    /// stays.
    Failing(Failure),
    /// Lookups answer again after failing.
    Recovered,
    /// An empty answer arrived; it applies after the grace period.
    EmptyPending(Duration),
    /// An empty answer persisted through the grace period and applied.
    EmptyApplied,
}

/// One `discover` entry's view of its answers.
#[derive(Debug, Clone)]
pub struct Tracker {
    min_interval: Duration,
    max_interval: Duration,
    empty_grace: Duration,
    /// The set applied last; `None` before the first good answer.
    current: Option<Vec<Found>>,
    /// Since when answers have been empty, while that is not applied yet.
    empty_since: Option<Instant>,
    /// What the lookups fail with, while they do.
    failing: Option<Failure>,
    /// Consecutive failures, for the back-off.
    failures: u32,
}

impl Tracker {
    /// A tracker for `config`, before any answer.
    pub fn new(config: &DiscoverConfig) -> Tracker {
        Tracker {
            min_interval: config.min_interval,
            max_interval: config.max_interval,
            empty_grace: config.empty_grace,
            current: None,
            empty_since: None,
            failing: None,
            failures: 0,
        }
    }

    /// The set applied last, if any.
    pub fn current(&self) -> Option<&[Found]> {
        self.current.as_deref()
    }

    /// Takes in what a lookup at `now` came to.
    pub fn observe(&mut self, outcome: Outcome, now: Instant) -> Decision {
        let (min, max) = (self.min_interval, self.max_interval);
        let clamp = |ttl: Duration| ttl.clamp(min, max);
        let recovered = match &outcome {
            Outcome::Failed(_) => false,
            _ => self.failing.take().is_some(),
        };
        let mut decision = match outcome {
            Outcome::Records(found, ttl) => {
                self.failures = 0;
                self.empty_since = None;
                let set = canonical(found);
                Decision {
                    apply: self.replace(set),
                    next: clamp(ttl),
                    note: None,
                }
            }
            Outcome::Empty(ttl) => {
                self.failures = 0;
                self.empty(now, clamp(ttl))
            }
            Outcome::Failed(failure) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .min_interval
                    .saturating_mul(1 << (self.failures - 1).min(16))
                    .min(self.max_interval);
                let note = (self.failing.as_ref() != Some(&failure))
                    .then(|| Note::Failing(failure.clone()));
                self.failing = Some(failure);
                Decision {
                    apply: None,
                    next: backoff,
                    note,
                }
            }
        };
        if recovered && decision.note.is_none() {
            decision.note = Some(Note::Recovered);
        }
        decision
    }

    fn empty(&mut self, now: Instant, next: Duration) -> Decision {
        if self.current.as_ref().is_none_or(Vec::is_empty) {
            // Nothing to keep.
            self.empty_since = None;
            return Decision {
                apply: self.replace(Vec::new()),
                next,
                note: None,
            };
        }
        let since = *self.empty_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if waited >= self.empty_grace {
            self.empty_since = None;
            return Decision {
                apply: self.replace(Vec::new()),
                next,
                note: Some(Note::EmptyApplied),
            };
        }
        let left = self.empty_grace - waited;
        Decision {
            apply: None,
            next: next.min(left),
            note: (waited.is_zero()).then_some(Note::EmptyPending(left)),
        }
    }

    /// Adopts `set`; it, when it differs from the current one.
    fn replace(&mut self, set: Vec<Found>) -> Option<Vec<Found>> {
        if self.current.as_ref() == Some(&set) {
            return None;
        }
        self.current = Some(set.clone());
        Some(set)
    }
}

/// `found` sorted by name, one entry per name (the first of the answer
/// order cannot matter: duplicates of a name are identical records or the
/// same target at several addresses, of which the lowest address is kept).
fn canonical(mut found: Vec<Found>) -> Vec<Found> {
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.host.cmp(&b.host)));
    found.dedup_by(|b, a| a.name == b.name);
    found
}

/// The backend a found record is, with `https` URLs or `http` ones.
pub fn backend(found: &Found, https: bool) -> Option<BackendConfig> {
    let scheme = if https { "https" } else { "http" };
    let url: Uri = format!("{scheme}://{}:{}", found.host, found.port)
        .parse()
        .ok()?;
    Some(BackendConfig {
        name: found.name.clone(),
        url,
        weight: found.weight,
        drain: false,
    })
}

/// `file`'s pool with the backends each `discover` entry found (`None`
/// for an entry without an answer yet) after its own, sorted by name (so
/// that the same backends always make the same member list); a name the
/// file or an earlier entry already has is skipped (the first wins).
pub fn merge(file: &PoolConfig, found: &[Option<Vec<Found>>]) -> PoolConfig {
    let mut pool = file.clone();
    let mut names: BTreeMap<String, ()> =
        pool.backends.iter().map(|b| (b.name.clone(), ())).collect();
    let mut discovered = Vec::new();
    for (entry, set) in file.discover.iter().zip(found) {
        for f in set.iter().flatten() {
            if names.contains_key(&f.name) {
                continue;
            }
            if let Some(backend) = backend(f, entry.https) {
                names.insert(f.name.clone(), ());
                discovered.push(backend);
            }
        }
    }
    discovered.sort_by(|a, b| a.name.cmp(&b.name));
    pool.backends.extend(discovered);
    pool
}

/// `next` (the merge of file `file`) with the discovered backends of
/// `current` that it lost kept in it as *gone* (their names returned), when
/// that leaves the member list as it is: then only health changes, so the
/// lost backends' keys alone move, and come back exactly if they return.
/// When `next` adds a backend, or a backend of the file (`file`, or the
/// file `current` came from, `before`) leaves, the table is rebuilt anyway
/// and nothing is kept gone.
pub fn keep_gone(
    before: &PoolConfig,
    file: &PoolConfig,
    current: &PoolConfig,
    next: PoolConfig,
) -> (PoolConfig, Vec<String>) {
    let named = |list: &[BackendConfig], name: &str| list.iter().any(|b| b.name == name);
    let lost: Vec<&BackendConfig> = current
        .backends
        .iter()
        .filter(|b| !named(&next.backends, &b.name))
        .collect();
    let only_discovered = lost
        .iter()
        .all(|b| !named(&before.backends, &b.name) && !named(&file.backends, &b.name));
    let nothing_added = next
        .backends
        .iter()
        .all(|b| named(&current.backends, &b.name));
    if lost.is_empty() || !only_discovered || !nothing_added {
        return (next, Vec::new());
    }
    let gone: Vec<String> = lost.iter().map(|b| b.name.clone()).collect();
    let mut pool = next;
    let mut discovered = pool
        .backends
        .split_off(file.backends.len().min(pool.backends.len()));
    discovered.extend(lost.into_iter().cloned());
    discovered.sort_by(|a, b| a.name.cmp(&b.name));
    pool.backends.extend(discovered);
    (pool, gone)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::DiscoverTarget;

    fn config() -> DiscoverConfig {
        DiscoverConfig {
            target: DiscoverTarget::Srv("_http._tcp.api.internal".into()),
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            resolvers: Vec::new(),
            empty_grace: Duration::from_secs(30),
            probe_first: false,
            https: false,
            weight: 1,
        }
    }

    fn at(i: u8) -> Found {
        Found::address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 8080, 1)
    }

    fn names(set: &[Found]) -> Vec<&str> {
        set.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn names_are_target_and_port_or_address_and_port() {
        let srv = Found::srv(
            "API-0.api.internal.",
            8080,
            0,
            Some("10.0.0.7".parse().unwrap()),
        );
        assert_eq!(srv.name, "api-0.api.internal:8080");
        assert_eq!(srv.host, "10.0.0.7");
        assert_eq!(srv.weight, 1);
        assert_eq!(Found::srv("a.b", 1, 60_000, None).weight, MAX_WEIGHT);
        assert_eq!(Found::srv("a.b.", 1, 5, None).host, "a.b");
        let v6 = Found::address("2001:db8::1".parse().unwrap(), 80, 3);
        assert_eq!(v6.name, "[2001:db8::1]:80");
        assert_eq!(
            backend(&v6, false).unwrap().url.to_string(),
            "http://[2001:db8::1]:80/"
        );
    }

    #[test]
    fn answer_order_never_matters_and_an_unchanged_set_applies_nothing() {
        let mut tracker = Tracker::new(&config());
        let now = Instant::now();
        let ttl = Duration::from_secs(5);
        let first = tracker.observe(Outcome::Records(vec![at(2), at(1), at(3)], ttl), now);
        assert_eq!(
            names(first.apply.as_deref().unwrap()),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
        assert_eq!(first.next, ttl);
        let shuffled =
            tracker.observe(Outcome::Records(vec![at(3), at(1), at(2), at(1)], ttl), now);
        assert_eq!(shuffled.apply, None);
    }

    #[test]
    fn the_ttl_is_clamped_to_the_intervals() {
        let mut tracker = Tracker::new(&config());
        let now = Instant::now();
        let short = tracker.observe(Outcome::Records(vec![at(1)], Duration::ZERO), now);
        assert_eq!(short.next, Duration::from_secs(1));
        let long = tracker.observe(
            Outcome::Records(vec![at(1)], Duration::from_secs(3600)),
            now,
        );
        assert_eq!(long.next, Duration::from_secs(60));
    }

    #[test]
    fn failures_keep_the_last_set_log_once_per_change_and_back_off() {
        let mut tracker = Tracker::new(&config());
        let now = Instant::now();
        tracker.observe(
            Outcome::Records(vec![at(1), at(2)], Duration::from_secs(5)),
            now,
        );
        let first = tracker.observe(Outcome::Failed(Failure::Timeout), now);
        assert_eq!(first.apply, None);
        assert_eq!(first.note, Some(Note::Failing(Failure::Timeout)));
        assert_eq!(first.next, Duration::from_secs(1));
        let again = tracker.observe(Outcome::Failed(Failure::Timeout), now);
        assert_eq!(again.note, None);
        assert_eq!(again.next, Duration::from_secs(2));
        let other = tracker.observe(Outcome::Failed(Failure::NxDomain), now);
        assert_eq!(other.note, Some(Note::Failing(Failure::NxDomain)));
        assert_eq!(other.next, Duration::from_secs(4));
        for _ in 0..20 {
            assert!(
                tracker
                    .observe(Outcome::Failed(Failure::NxDomain), now)
                    .next
                    <= Duration::from_secs(60)
            );
        }
        assert_eq!(
            names(tracker.current().unwrap()),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        let back = tracker.observe(
            Outcome::Records(vec![at(2), at(1)], Duration::from_secs(5)),
            now,
        );
        assert_eq!(back.apply, None);
        assert_eq!(back.note, Some(Note::Recovered));
    }

    #[test]
    fn an_empty_answer_applies_only_after_the_grace_period() {
        let mut tracker = Tracker::new(&config());
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        tracker.observe(Outcome::Records(vec![at(1)], ttl), t0);
        let pending = tracker.observe(Outcome::Empty(ttl), t0);
        assert_eq!(pending.apply, None);
        assert_eq!(
            pending.note,
            Some(Note::EmptyPending(Duration::from_secs(30)))
        );
        let later = tracker.observe(Outcome::Empty(ttl), t0 + Duration::from_secs(28));
        assert_eq!(later.apply, None);
        assert_eq!(later.next, Duration::from_secs(2));
        let applied = tracker.observe(Outcome::Empty(ttl), t0 + Duration::from_secs(30));
        assert_eq!(applied.apply, Some(Vec::new()));
        assert_eq!(applied.note, Some(Note::EmptyApplied));
        // Records between empty answers restart the grace period.
        let mut tracker = Tracker::new(&config());
        tracker.observe(Outcome::Records(vec![at(1)], ttl), t0);
        tracker.observe(Outcome::Empty(ttl), t0);
        tracker.observe(
            Outcome::Records(vec![at(1)], ttl),
            t0 + Duration::from_secs(20),
        );
        let fresh = tracker.observe(Outcome::Empty(ttl), t0 + Duration::from_secs(40));
        assert_eq!(fresh.apply, None);
        // Before any good answer an empty one applies at once.
        let mut fresh = Tracker::new(&config());
        assert_eq!(
            fresh.observe(Outcome::Empty(ttl), t0).apply,
            Some(Vec::new())
        );
    }

    #[test]
    fn merging_keeps_the_file_backends_first_and_skips_names_already_taken() {
        let text = "[[pools]]\nname = \"p\"\n\
                    backends = [{ name = \"10.0.0.1:8080\", url = \"http://127.0.0.1:9000\" }]\n\
                    discover = [{ dns = \"api.internal:8080\" }, { dns = \"_http._tcp.api.internal\", scheme = \"https\" }]\n";
        let config =
            crate::config::Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let file = &config.pools[0];
        let merged = merge(
            file,
            &[
                Some(vec![at(1), at(2)]),
                Some(vec![Found::srv("api-0.api.internal", 8443, 2, None), at(2)]),
            ],
        );
        let got: Vec<(String, String, u32)> = merged
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.url.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080".into(), "http://127.0.0.1:9000/".into(), 1),
                ("10.0.0.2:8080".into(), "http://10.0.0.2:8080/".into(), 1),
                (
                    "api-0.api.internal:8443".into(),
                    "https://api-0.api.internal:8443/".into(),
                    2
                ),
            ]
        );
        assert_eq!(merge(file, &[None, None]).backends.len(), 1);
    }

    #[test]
    fn a_lost_backend_stays_gone_until_something_is_added() {
        let text = "[[pools]]\nname = \"p\"\n\
                    backends = [{ name = \"static\", url = \"http://127.0.0.1:9000\" }]\n\
                    discover = [{ dns = \"api.internal:8080\" }]\n";
        let config =
            crate::config::Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let file = &config.pools[0];
        let four = merge(file, &[Some(vec![at(1), at(2), at(3), at(4)])]);
        let names_of = |p: &PoolConfig| {
            p.backends
                .iter()
                .map(|b| b.name.clone())
                .collect::<Vec<_>>()
        };
        // 3 leaves: kept, same member list (so the table is the same).
        let (three, gone) = keep_gone(
            file,
            file,
            &four,
            merge(file, &[Some(vec![at(1), at(2), at(4)])]),
        );
        assert_eq!(gone, ["10.0.0.3:8080"]);
        assert_eq!(names_of(&three), names_of(&four));
        // 2 leaves too: both gone, still the same list.
        let (two, gone) = keep_gone(file, file, &three, merge(file, &[Some(vec![at(1), at(4)])]));
        assert_eq!(gone, ["10.0.0.2:8080", "10.0.0.3:8080"]);
        assert_eq!(names_of(&two), names_of(&four));
        // 3 returns: 2 stays gone.
        let (back, gone) = keep_gone(
            file,
            file,
            &two,
            merge(file, &[Some(vec![at(1), at(3), at(4)])]),
        );
        assert_eq!(gone, ["10.0.0.2:8080"]);
        assert_eq!(names_of(&back), names_of(&four));
        // A new name: a rebuild, nothing kept gone.
        let (grown, gone) = keep_gone(
            file,
            file,
            &back,
            merge(file, &[Some(vec![at(1), at(3), at(4), at(5)])]),
        );
        assert!(gone.is_empty());
        assert_eq!(
            names_of(&grown),
            [
                "static",
                "10.0.0.1:8080",
                "10.0.0.3:8080",
                "10.0.0.4:8080",
                "10.0.0.5:8080"
            ]
        );
        // The file's own backend leaving is a rebuild too.
        let mut no_static = file.as_ref().clone();
        no_static.backends.clear();
        let (after, gone) = keep_gone(
            file,
            &no_static,
            &four,
            merge(&no_static, &[Some(vec![at(1), at(2), at(3), at(4)])]),
        );
        assert!(gone.is_empty());
        assert_eq!(after.backends.len(), 4);
    }
}
