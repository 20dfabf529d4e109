//! Properties of pins, drain and slow start, over random pools and states.
//!
//! * With pins, where a request goes is a pure function of (cookie, healthy
//!   set, drain set): the same whatever the history of snapshots that led
//!   there, and whether the drain came from the file or the admin API.
//! * Slow start: at 10 points of a ramp the ramping backend's share is
//!   linear in the progress (exactly, and within 1 point when counted over
//!   200,000 keys), the keys it owns only grow, and at the end the table is
//!   exactly the full one.
//!
//! Longer runs: `PROPTEST_CASES=500 cargo test --release --test it session_properties`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use affinity::balance::hash::KeyHasher;
use affinity::balance::key::{pinned_value, split_pin};
use affinity::config::{Config, PoolConfig};
use affinity::pool::snapshot::pin_of;
use affinity::pool::{Conditions, Override, Snapshot};
use proptest::prelude::*;

/// A pool of `n` backends `b0..` with `weights`, `algorithm`, a pinned
/// sticky cookie, and `drain` on the backends the file drains.
fn pool(algorithm: &str, weights: &[u32], drain: &[bool]) -> Arc<PoolConfig> {
    let mut text = format!(
        "[balancer]\nalgorithm = \"{algorithm}\"\ntable_size = 4093\n\
         sticky_cookie = {{ name = \"sid\", pin = true }}\n"
    );
    for (i, w) in weights.iter().enumerate() {
        let state = if drain.get(i).copied().unwrap_or(false) {
            "drain"
        } else {
            "active"
        };
        text.push_str(&format!(
            "[[backends]]\nname = \"b{i}\"\nurl = \"http://127.0.0.1:{}\"\nweight = {w}\nstate = \"{state}\"\n",
            9000 + i
        ));
    }
    Config::from_toml(&text, Path::new("t.toml")).unwrap().pools[0].clone()
}

/// Where a request with sticky cookie value `cookie` goes, as the proxy
/// decides it: a routable pinned backend, else the session id's pick.
fn route(snapshot: &Snapshot, cookie: &str) -> Option<String> {
    let hasher = snapshot.selector().hasher().unwrap();
    let (id, pin) = split_pin(cookie.as_bytes());
    let index = pin
        .and_then(|pin| snapshot.pinned(pin))
        .or_else(|| snapshot.next_backend(hasher.hash(id), &[], 0))?;
    Some(snapshot.backends()[index].name().to_string())
}

/// Cookies: bare ids, ids pinned to each backend, and tampered pins.
fn cookies(n: usize, pool: &PoolConfig) -> Vec<String> {
    let hasher = KeyHasher::new(
        pool.balancer
            .hash_key
            .unwrap_or(affinity::balance::hash::DEFAULT_HASH_KEY),
    );
    let mut cookies = Vec::new();
    for k in 0..200u64 {
        let id = format!("{:032x}", k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        cookies.push(id.clone());
        let pinned = pinned_value(&id, pin_of(&hasher, &format!("b{}", k as usize % n)));
        cookies.push(pinned);
        cookies.push(pinned_value(&id, k ^ 0x1234_5678));
    }
    cookies
}

fn state(n: usize) -> impl Strategy<Value = (Vec<bool>, Vec<bool>)> {
    (
        proptest::collection::vec(proptest::bool::weighted(0.75), n),
        proptest::collection::vec(proptest::bool::weighted(0.25), n),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn with_pins_routing_is_a_pure_function_of_cookie_health_and_drain(
        algorithm in prop_oneof![Just("maglev"), Just("ring_hash")],
        weights in proptest::collection::vec(1u32..=4, 2..=8),
        history in proptest::collection::vec(state(8), 0..4),
        (healthy, drain) in state(8),
    ) {
        let n = weights.len();
        let (healthy, drain) = (&healthy[..n], &drain[..n]);
        // Straight from the file: drain written there.
        let file_drained = pool(algorithm, &weights, drain);
        let direct = Snapshot::build(file_drained.clone(), healthy, None).unwrap();
        // Through a history of other states, drain set by overrides.
        let plain = pool(algorithm, &weights, &[]);
        let mut previous: Option<Snapshot> = None;
        for (h, d) in history.iter().chain([(healthy.to_vec(), drain.to_vec())].iter()) {
            let conditions = Conditions {
                healthy: h[..n].to_vec(),
                overrides: d[..n]
                    .iter()
                    .map(|&d| Override { drain: d.then_some(true), weight: None })
                    .collect(),
                progress: Vec::new(),
                source: None,
                gone: Vec::new(),
            };
            previous = Some(Snapshot::build_with(plain.clone(), &conditions, previous.as_ref()).unwrap());
        }
        let replayed = previous.unwrap();
        let all_up = Snapshot::build(plain.clone(), &vec![true; n], None).unwrap();
        for cookie in cookies(n, &plain) {
            let answer = route(&direct, &cookie);
            prop_assert_eq!(&answer, &route(&replayed, &cookie), "{}", cookie);
            let (_, pin) = split_pin(cookie.as_bytes());
            let pinned = pin.and_then(|p| direct.pinned(p));
            match pinned {
                // A routable pinned backend gets it, even draining.
                Some(b) => prop_assert_eq!(answer.as_deref(), Some(&*direct.backends()[b].name().to_string())),
                None => {
                    if let Some(name) = &answer {
                        let i: usize = name[1..].parse().unwrap();
                        // Unpinned: never to a draining backend (outside
                        // panic mode), and where every backend is up and
                        // none drains, exactly the id's first choice.
                        prop_assert!(!drain[i] || direct.in_panic());
                        let home = route(&all_up, cookie.split(".v1.").next().unwrap());
                        let i_home: usize = home.as_deref().unwrap()[1..].parse().unwrap();
                        if healthy[i_home] && !drain[i_home] {
                            prop_assert_eq!(answer, home);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn slow_start_is_linear_monotone_and_ends_at_the_full_table(
        algorithm in prop_oneof![Just("maglev"), Just("ring_hash")],
        weights in proptest::collection::vec(1u32..=4, 2..=8),
        ramping in 0usize..8,
    ) {
        let n = weights.len();
        let ramping = ramping % n;
        let config = pool(algorithm, &weights, &[]);
        let full = Snapshot::build(config.clone(), &vec![true; n], None).unwrap();
        let full_share = full.shares()[ramping];
        let hasher = *full.selector().hasher().unwrap();
        let keys: Vec<u64> = (0..200_000u64).map(|k| hasher.hash(&k.to_le_bytes())).collect();
        let mut owned: HashSet<u64> = HashSet::new();
        let mut previous: Option<Snapshot> = None;
        for step in 0..=10 {
            let p = f64::from(step) / 10.0;
            let mut progress = vec![1.0; n];
            progress[ramping] = p;
            let conditions = Conditions {
                healthy: vec![true; n],
                overrides: Vec::new(),
                progress,
                source: None,
                gone: Vec::new(),
            };
            let snapshot = Snapshot::build_with(config.clone(), &conditions, previous.as_ref()).unwrap();
            // Exactly linear.
            let share = snapshot.shares()[ramping];
            prop_assert!((share - p * full_share).abs() < 1e-9, "p {}: {} vs {}", p, share, p * full_share);
            // Counted over keys: within one point of linear.
            let now: HashSet<u64> = keys
                .iter()
                .copied()
                .filter(|&k| snapshot.next_backend(k, &[], 0) == Some(ramping))
                .collect();
            let counted = now.len() as f64 / keys.len() as f64;
            prop_assert!((counted - p * full_share).abs() < 0.01, "p {}: counted {} vs {}", p, counted, p * full_share);
            // Only grows.
            prop_assert!(owned.is_subset(&now), "p {}: a key left the ramping backend", p);
            // Moved: exactly the growth of its share.
            if let Some(previous) = &previous {
                let moved = snapshot.moved_from(previous);
                prop_assert!((moved - 0.1 * full_share).abs() < 1e-9, "moved {}", moved);
            }
            owned = now;
            previous = Some(snapshot);
        }
        // At the end: the full table, key for key.
        let end = previous.unwrap();
        for &k in &keys {
            prop_assert_eq!(end.next_backend(k, &[], 0), full.next_backend(k, &[], 0));
        }
    }
}
