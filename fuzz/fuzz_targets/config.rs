//! Feeds arbitrary text to the config parser: it must never panic, a file it
//! accepts must describe a non-empty pool whose summary renders and whose
//! hash table can be built, and every error of a file it refuses must
//! start with the file name.

#![no_main]

use std::path::Path;

use affinity::config::Config;
use affinity::balance::member::Member;
use affinity::balance::ring::MAX_POINTS;
use affinity::balance::selector::{HashAlgorithm, HashTable};
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
        Ok(config) => {
            let _ = config.summary();
            let members = config.members();
            assert!(!members.is_empty(), "accepted a config without backends");
            check_hash_table_builds(&config, &members);
        }
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

/// A config that passes validation must not fail later, when the proxy
/// builds its Maglev table or ring from it.
fn check_hash_table_builds(config: &Config, members: &[Member]) {
    let Some(algorithm) = config.balancer.hash_algorithm() else {
        return;
    };
    let total_weight: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let slots = match algorithm {
        HashAlgorithm::Maglev { table_size } => table_size as u64,
        HashAlgorithm::RingHash { points_per_weight } => {
            let points = total_weight * u64::from(points_per_weight);
            assert!(
                points <= MAX_POINTS,
                "accepted a ring_hash pool of total weight {total_weight} that needs {points} points \
                 (more than MAX_POINTS = {MAX_POINTS}), so the ring cannot be built"
            );
            points
        }
    };
    if slots <= MAX_BUILD_SLOTS {
        if let Err(e) = HashTable::new(algorithm, members) {
            panic!(
                "accepted a config whose {} table cannot be built: {e}",
                algorithm.name()
            );
        }
    }
}
