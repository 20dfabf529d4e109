//! Asking DNS for a pool's backends: the I/O around [`crate::pool::discovery`]'s plain
//! state. One task per `discover` entry ([`run`]) looks the name up with
//! `hickory-resolver` (the entry's `resolvers`, or those of
//! `/etc/resolv.conf`; no answer cache, since the task itself waits out
//! each answer's TTL), feeds the outcome to its [`Tracker`], logs what the
//! tracker notes, counts each lookup in the pool's stats, and sends every
//! new set to the pool's controller.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc;

use crate::config::{DiscoverConfig, DiscoverTarget};
use crate::pool::discovery::{Failure, Found, Note, Outcome, Tracker};
use crate::pool::stats::Stats;

/// How long one query may take (two attempts per lookup).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A set of backends one entry found.
#[derive(Debug)]
pub struct Discovered {
    /// The entry (its place in the pool's `discover`).
    pub entry: usize,
    /// The controller's generation of discovery tasks it belongs to.
    pub generation: u64,
    /// The backends, sorted by name.
    pub found: Vec<Found>,
}

/// The resolver for `config`: its `resolvers`, or the system's.
pub fn resolver(config: &DiscoverConfig) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 2;
    let builder = if config.resolvers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let servers = config
            .resolvers
            .iter()
            .map(|address| {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot start a resolver: {e}"))
}

/// Looks `config`'s name up once.
pub async fn lookup(resolver: &TokioResolver, config: &DiscoverConfig) -> Outcome {
    match &config.target {
        DiscoverTarget::Host { host, port } => match resolver.lookup_ip(host.as_str()).await {
            Ok(answer) => {
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                let found = answer
                    .iter()
                    .map(|ip| Found::address(ip, *port, config.weight))
                    .collect();
                Outcome::Records(found, ttl)
            }
            Err(error) => failed(error),
        },
        DiscoverTarget::Srv(name) => srv(resolver, name).await,
    }
}

/// The SRV records of `name` of the lowest priority, each target's
/// address from the answer's additional records or a lookup of its own.
async fn srv(resolver: &TokioResolver, name: &str) -> Outcome {
    let answer = match resolver.srv_lookup(name).await {
        Ok(answer) => answer,
        Err(error) => return failed(error),
    };
    let mut ttl = answer
        .valid_until()
        .saturating_duration_since(Instant::now());
    let records: Vec<_> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let Some(priority) = records.iter().map(|r| r.priority).min() else {
        return Outcome::Empty(ttl);
    };
    let glue = |target: &str| -> Option<IpAddr> {
        let mut addresses: Vec<IpAddr> = answer
            .additionals()
            .iter()
            .filter(|r| r.name.to_ascii().eq_ignore_ascii_case(target))
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect();
        addresses.sort();
        addresses.first().copied()
    };
    let mut found = Vec::new();
    for record in records.iter().filter(|r| r.priority == priority) {
        let target = record.target.to_ascii();
        let address = match glue(&target) {
            Some(address) => address,
            None => match resolver.lookup_ip(target.as_str()).await {
                Ok(ips) => {
                    ttl = ttl.min(ips.valid_until().saturating_duration_since(Instant::now()));
                    let mut ips: Vec<IpAddr> = ips.iter().collect();
                    ips.sort();
                    match ips.first() {
                        Some(ip) => *ip,
                        None => continue,
                    }
                }
                // A target without an address is no backend; any other
                // failure fails the whole lookup (the last set stays).
                Err(NetError::Dns(DnsError::NoRecordsFound(_))) => continue,
                Err(error) => return failed(error),
            },
        };
        found.push(Found::srv(
            &target,
            record.port,
            record.weight,
            Some(address),
        ));
    }
    Outcome::Records(found, ttl)
}

/// What a failed lookup means: empty (the name exists without records),
/// or a failure of a kind.
fn failed(error: NetError) -> Outcome {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.response_code {
            ResponseCode::NXDomain => Outcome::Failed(Failure::NxDomain),
            _ => Outcome::Empty(Duration::from_secs(u64::from(
                none.negative_ttl.unwrap_or(0),
            ))),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Outcome::Failed(Failure::ServFail(code.to_string()))
        }
        NetError::Timeout => Outcome::Failed(Failure::Timeout),
        other => Outcome::Failed(Failure::Other(other.to_string())),
    }
}

/// Looks `config`'s name up for ever, sending each new set of backends
/// (entry `entry`, `generation`) to `sets`; stops when the receiver is gone.
pub async fn run(
    entry: usize,
    generation: u64,
    config: DiscoverConfig,
    pool: Arc<str>,
    stats: Arc<Stats>,
    sets: mpsc::UnboundedSender<Discovered>,
) {
    let name: Arc<str> = Arc::from(match &config.target {
        DiscoverTarget::Srv(name) => name.clone(),
        DiscoverTarget::Host { host, port } => format!("{host}:{port}"),
    });
    let resolver = loop {
        match resolver(&config) {
            Ok(resolver) => break resolver,
            Err(problem) => {
                // Such as no /etc/resolv.conf yet: try again, the pool
                // keeps what it has.
                tracing::error!(pool = %pool, name = %name, %problem, "discovery cannot start; trying again");
                stats.discovery_lookup(&pool, &name, "error");
                tokio::time::sleep(config.max_interval).await;
            }
        }
    };
    let mut tracker = Tracker::new(&config);
    loop {
        let outcome = lookup(&resolver, &config).await;
        let result = match &outcome {
            Outcome::Records(found, _) if found.is_empty() => "empty",
            Outcome::Records(..) => "ok",
            Outcome::Empty(_) => "empty",
            Outcome::Failed(failure) => failure.kind(),
        };
        stats.discovery_lookup(&pool, &name, result);
        let decision = tracker.observe(outcome, Instant::now());
        match &decision.note {
            Some(Note::Failing(failure)) => tracing::warn!(
                pool = %pool, name = %name, %failure,
                "discovery lookup failed; the pool keeps the backends it had"
            ),
            Some(Note::Recovered) => {
                tracing::info!(pool = %pool, name = %name, "discovery lookups answer again")
            }
            Some(Note::EmptyPending(left)) => tracing::warn!(
                pool = %pool, name = %name, grace = ?left,
                "discovery found no backends; applied only if it lasts"
            ),
            Some(Note::EmptyApplied) => tracing::warn!(
                pool = %pool, name = %name,
                "discovery found no backends for the whole grace period; they leave the pool"
            ),
            None => {}
        }
        if let Some(found) = decision.apply {
            tracing::info!(pool = %pool, name = %name, backends = found.len(), "discovery found a new set of backends");
            let set = Discovered {
                entry,
                generation,
                found,
            };
            if sets.send(set).is_err() {
                return;
            }
        }
        tokio::time::sleep(decision.next).await;
    }
}
