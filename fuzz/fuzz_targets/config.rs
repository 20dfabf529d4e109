//! Feeds arbitrary text to the config parser: it must never panic, a file it
//! accepts must have pools that each have backends, a summary that renders,
//! hash tables that can be built and a routing that can be built (which
//! reaches every route), and every error of a file it refuses must start
//! with the file name.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use affinity::balance::ring::MAX_POINTS;
use affinity::balance::route::HostPattern;
use affinity::balance::selector::{HashAlgorithm, HashTable};
use affinity::config::{Config, PoolConfig};
use affinity::pool::routing::{Pools, Routing};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

/// Building bigger tables or rings than this per input would slow the
/// fuzzer to a crawl; above it only the size limits are checked.
const MAX_BUILD_SLOTS: u64 = 1 << 17;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, Path::new(FILE)) {
        Ok(config) => check_accepted(config),
        Err(errors) => {
            for error in &errors {
                let message = error.to_string();
                assert!(!message.is_empty(), "empty error message");
                assert!(
                    message.starts_with(FILE),
                    "error does not name the file: {message:?}"
                );
            }
        }
    }
});

fn check_accepted(config: Config) {
    let _ = config.summary();
    assert!(!config.pools.is_empty(), "accepted a config without pools");
    assert!(
        !config.listeners.is_empty(),
        "accepted a config without listeners"
    );
    let mut total_slots: u64 = 0;
    for pool in &config.pools {
        assert!(
            !pool.backends.is_empty(),
            "accepted pool {:?} without backends",
            pool.name
        );
        total_slots = total_slots.saturating_add(check_hash_table_builds(pool));
    }
    for route in &config.routes {
        assert!(
            config.pool(&route.pool).is_some(),
            "accepted a route to unknown pool {:?}",
            route.pool
        );
    }
    // Building every pool again (and the routing) only when that stays cheap.
    if total_slots <= MAX_BUILD_SLOTS {
        let config = Arc::new(config);
        match Pools::unchecked(config.clone()) {
            Ok(pools) => check_routes_reachable(&config, &pools.routing()),
            Err(e) => panic!("accepted a config whose pools or routing cannot be built: {e}"),
        }
    }
}

/// A config that passes validation must not fail later, when the proxy
/// builds a pool's Maglev table or ring from it. Returns how many slots (or
/// points) the pool's table has; 0 for a pool without one.
fn check_hash_table_builds(pool: &PoolConfig) -> u64 {
    let Some(algorithm) = pool.balancer.hash_algorithm() else {
        return 0;
    };
    let members = pool.members();
    let total_weight: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let slots = match algorithm {
        HashAlgorithm::Maglev { table_size } => table_size as u64,
        HashAlgorithm::RingHash { points_per_weight } => {
            let points = total_weight * u64::from(points_per_weight);
            assert!(
                points <= MAX_POINTS,
                "accepted ring_hash pool {:?} of total weight {total_weight} that needs {points} \
                 points (more than MAX_POINTS = {MAX_POINTS}), so the ring cannot be built",
                pool.name
            );
            points
        }
    };
    if slots <= MAX_BUILD_SLOTS {
        if let Err(e) = HashTable::new(algorithm, &members) {
            panic!(
                "accepted pool {:?} whose {} table cannot be built: {e}",
                pool.name,
                algorithm.name()
            );
        }
    }
    slots
}

/// Every accepted route can be taken: on each listener it applies to, a
/// request for its own host (for `*.suffix`, a name under it that no exact
/// route names) and its own prefix as the path goes through it, to its pool.
fn check_routes_reachable(config: &Config, routing: &Routing) {
    for (index, route) in config.routes.iter().enumerate() {
        let host = match &route.host {
            None => None,
            Some(HostPattern::Exact(host)) => Some(host.clone()),
            Some(HostPattern::Suffix(suffix)) => {
                let host = format!("fuzz-probe.{suffix}");
                let named_exactly = config
                    .routes
                    .iter()
                    .any(|r| r.host == Some(HostPattern::Exact(host.clone())));
                if named_exactly {
                    continue;
                }
                Some(host)
            }
        };
        let header = match host.as_deref().map(HeaderValue::from_str) {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(e)) => panic!("accepted route host {host:?} that is no header value: {e}"),
        };
        for (at, listener) in config.listeners.iter().enumerate() {
            if route.listener.as_ref().is_some_and(|l| *l != listener.name) {
                continue;
            }
            let Some(destination) = routing.select(at, header.as_ref(), &route.path_prefix) else {
                panic!(
                    "routes[{index}] ({}) is unreachable on listener {:?}: no destination",
                    route.pattern(),
                    listener.name
                );
            };
            let taken = destination.route.map(|r| r as *const _);
            assert_eq!(
                taken,
                Some(route as *const _),
                "routes[{index}] ({}) is not taken on listener {:?} for its own host and prefix; \
                 took {:?}",
                route.pattern(),
                listener.name,
                destination.route_name
            );
            assert_eq!(
                &**destination.pool.pool.name(),
                route.pool.as_str(),
                "routes[{index}] leads to the wrong pool"
            );
        }
    }
}
