//! Table builds, health rebuilds and lookups of affinity's Maglev and ring,
//! side by side with two reference crates, so the README can quote ratios:
//!
//! * `maglev` 0.2 (a direct transcription of the NSDI 2016 paper's
//!   population loop, which precomputes every backend's full permutation);
//! * `pingora-ketama` 0.9 (Cloudflare's port of nginx's ketama ring,
//!   160 points per unit of weight, crc32 key hash).
//!
//! Run with `cargo bench --bench hashing`; filter a group with e.g.
//! `cargo bench --bench hashing -- maglev_build`. Ids read
//! `group/implementation/N`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use affinity::balance::hash::KeyHasher;
use affinity::balance::maglev::{DEFAULT_TABLE_SIZE, HealthyMaglev, LARGE_TABLE_SIZE, Maglev};
use affinity::balance::member::Member;
use affinity::balance::ring::{DEFAULT_POINTS_PER_WEIGHT, HealthyRing, Ring};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use maglev::ConsistentHasher;
use pingora_ketama::{Bucket, Continuum};

/// Pool sizes every comparison is run at.
const POOL_SIZES: [usize; 3] = [10, 100, 1000];

/// nginx's and pingora-ketama's points per unit of weight.
const KETAMA_POINTS_PER_WEIGHT: u32 = 160;

/// Distinct keys cycled through by the lookup benches (a power of two, so
/// the cycle index is a mask).
const KEY_COUNT: usize = 4096;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member::new(format!("backend-{i}"), 1))
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

/// One distinct address per backend, as pingora-ketama identifies a
/// backend by its `SocketAddr`.
fn buckets(n: usize) -> Vec<Bucket> {
    (0..n)
        .map(|i| {
            let port = 10_000 + u16::try_from(i).expect("pool sizes fit in a port range");
            Bucket::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 1)
        })
        .collect()
}

/// URL-path-like keys of 19 bytes, all distinct.
fn lookup_keys() -> Vec<String> {
    (0..KEY_COUNT)
        .map(|i| format!("/api/v1/user/{:06}", i * 7919))
        .collect()
}

/// The `maglev` crate rounds its capacity up to the next prime
/// (`primes_from(capacity)`, inclusive), so a prime capacity gives a table of
/// exactly that size. Checked here, outside the timing loop.
fn reference_maglev(names: &[String], size: usize) -> maglev::Maglev<&String> {
    let table = maglev::Maglev::with_capacity(names.iter(), size);
    assert_eq!(
        table.capacity(),
        size,
        "maglev crate built a different table size"
    );
    table
}

/// Settings for groups whose iterations take from microseconds to seconds.
/// Criterion's automatic sampling mode switches to flat sampling for the slow
/// cases (the `maglev` crate at N = 1000), which keeps them to ~20 builds.
fn build_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group
}

fn maglev_build(c: &mut Criterion) {
    let mut group = build_group(c, "maglev_build");
    for n in POOL_SIZES {
        let pool = members(n);
        let names = names(n);
        assert_eq!(
            Maglev::new(&pool, DEFAULT_TABLE_SIZE)
                .expect("valid pool")
                .size(),
            DEFAULT_TABLE_SIZE
        );
        reference_maglev(&names, DEFAULT_TABLE_SIZE);
        group.bench_with_input(BenchmarkId::new("affinity", n), &pool, |b, pool| {
            b.iter(|| Maglev::new(black_box(pool), DEFAULT_TABLE_SIZE).expect("valid pool"));
        });
        group.bench_with_input(BenchmarkId::new("maglev-crate", n), &names, |b, names| {
            b.iter(|| maglev::Maglev::with_capacity(black_box(names).iter(), DEFAULT_TABLE_SIZE));
        });
    }
    group.finish();

    let mut group = build_group(c, "maglev_build_large");
    let n = 100;
    let pool = members(n);
    let names = names(n);
    reference_maglev(&names, LARGE_TABLE_SIZE);
    group.bench_with_input(BenchmarkId::new("affinity", n), &pool, |b, pool| {
        b.iter(|| Maglev::new(black_box(pool), LARGE_TABLE_SIZE).expect("valid pool"));
    });
    group.bench_with_input(BenchmarkId::new("maglev-crate", n), &names, |b, names| {
        b.iter(|| maglev::Maglev::with_capacity(black_box(names).iter(), LARGE_TABLE_SIZE));
    });
    group.finish();
}

/// What a health change costs: re-deriving the healthy table from the
/// configured one with one backend down.
fn maglev_health_rebuild(c: &mut Criterion) {
    let mut group = build_group(c, "maglev_health_rebuild");
    for n in POOL_SIZES {
        let base = Arc::new(Maglev::new(&members(n), DEFAULT_TABLE_SIZE).expect("valid pool"));
        let mut health = vec![true; n];
        health[n / 2] = false;
        group.bench_with_input(BenchmarkId::new("affinity", n), &health, |b, health| {
            b.iter(|| HealthyMaglev::new(base.clone(), black_box(health)));
        });
    }
    group.finish();
}

fn ring_build(c: &mut Criterion) {
    let mut group = build_group(c, "ring_build");
    for n in POOL_SIZES {
        let pool = members(n);
        let buckets = buckets(n);
        group.bench_with_input(
            BenchmarkId::new("pingora-ketama-160", n),
            &buckets,
            |b, buckets| {
                b.iter(|| Continuum::new(black_box(buckets)));
            },
        );
        group.bench_with_input(BenchmarkId::new("affinity-160", n), &pool, |b, pool| {
            b.iter(|| Ring::new(black_box(pool), KETAMA_POINTS_PER_WEIGHT).expect("valid pool"));
        });
        group.bench_with_input(BenchmarkId::new("affinity-1024", n), &pool, |b, pool| {
            b.iter(|| Ring::new(black_box(pool), DEFAULT_POINTS_PER_WEIGHT).expect("valid pool"));
        });
    }
    group.finish();
}

/// Benches `pick` over the pre-generated keys, one key per iteration, in
/// order, so every implementation sees the same key stream.
fn bench_keys<T>(b: &mut criterion::Bencher<'_>, keys: &[String], mut pick: impl FnMut(&str) -> T) {
    let mut i = 0usize;
    b.iter(|| {
        let key = black_box(keys[i & (KEY_COUNT - 1)].as_str());
        i = i.wrapping_add(1);
        pick(key)
    });
}

/// Key hashing plus lookup, per request. Each implementation hashes with its
/// own function: affinity SipHash-1-3 (keyed), the `maglev` crate std's
/// `DefaultHasher` (also SipHash-1-3), pingora-ketama crc32.
fn lookup(c: &mut Criterion) {
    let keys = lookup_keys();
    let hasher = KeyHasher::default();
    let mut group = c.benchmark_group("lookup");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for n in POOL_SIZES {
        let pool = members(n);
        let healthy = vec![true; n];
        let our_maglev = HealthyMaglev::new(
            Arc::new(Maglev::new(&pool, DEFAULT_TABLE_SIZE).expect("valid pool")),
            &healthy,
        );
        let our_ring = HealthyRing::new(
            Arc::new(Ring::new(&pool, DEFAULT_POINTS_PER_WEIGHT).expect("valid pool")),
            &healthy,
        );
        let our_ring_160 = HealthyRing::new(
            Arc::new(Ring::new(&pool, KETAMA_POINTS_PER_WEIGHT).expect("valid pool")),
            &healthy,
        );
        let names = names(n);
        let their_maglev = reference_maglev(&names, DEFAULT_TABLE_SIZE);
        let continuum = Continuum::new(&buckets(n));

        group.bench_function(BenchmarkId::new("affinity-maglev", n), |b| {
            bench_keys(b, &keys, |k| our_maglev.pick(hasher.hash(k.as_bytes())));
        });
        group.bench_function(BenchmarkId::new("affinity-ring-1024", n), |b| {
            bench_keys(b, &keys, |k| our_ring.pick(hasher.hash(k.as_bytes())));
        });
        // Same point count as pingora-ketama, for a like-for-like ring ratio.
        group.bench_function(BenchmarkId::new("affinity-ring-160", n), |b| {
            bench_keys(b, &keys, |k| our_ring_160.pick(hasher.hash(k.as_bytes())));
        });
        group.bench_function(BenchmarkId::new("maglev-crate", n), |b| {
            bench_keys(b, &keys, |k| their_maglev.get(k).copied());
        });
        // `node_idx` returns the ring point's index; `node` would add one
        // array read to reach the address.
        group.bench_function(BenchmarkId::new("pingora-ketama-160", n), |b| {
            bench_keys(b, &keys, |k| continuum.node_idx(k.as_bytes()));
        });
    }
    group.finish();

    let short_keys: Vec<String> = (0..KEY_COUNT).map(|i| format!("client-{i:09}")).collect();
    assert!(short_keys.iter().all(|k| k.len() == 16));
    let mut group = c.benchmark_group("key_hash");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("affinity-siphash13", "16B"), |b| {
        bench_keys(b, &short_keys, |k| hasher.hash(k.as_bytes()));
    });
    group.finish();
}

// No HTML plots and 10k bootstrap resamples (default 100k): on this busy
// 2-core machine the analysis otherwise costs more than the measurement, and
// the README quotes only point estimates. The command line still overrides
// both (`--plotting-backend plotters`, `--nresamples 100000`).
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().nresamples(10_000);
    targets = maglev_build, maglev_health_rebuild, ring_build, lookup
}
criterion_main!(benches);
