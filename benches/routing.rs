//! Choosing a route: one route against fifty (issue 15 wants 50 routes to
//! cost no more than 1 in the peer benchmark). Nothing is allocated per
//! choice; this measures the lookups and prefix comparisons.
//!
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;

use affinity::balance::route::{HostPattern, RouteSpec, RouteTable};
use criterion::{Criterion, criterion_group, criterion_main};

/// `n` routes: a catch-all, then exact hosts, wildcards and prefixes mixed.
fn table(n: usize) -> RouteTable<usize> {
    let mut specs = vec![RouteSpec {
        host: None,
        path_prefix: "/".to_owned(),
        target: 0,
    }];
    for i in 1..n {
        let host = match i % 3 {
            0 => None,
            1 => Some(HostPattern::Exact(format!("svc-{i}.example.com"))),
            _ => Some(HostPattern::Suffix(format!("zone-{i}.example.com"))),
        };
        specs.push(RouteSpec {
            host,
            path_prefix: format!("/api/v{i}"),
            target: i,
        });
    }
    RouteTable::new(specs).expect("distinct routes")
}

fn choose(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_select");
    for n in [1, 50] {
        let table = table(n);
        group.bench_function(format!("routes/{n}"), |b| {
            b.iter(|| {
                black_box(table.select(
                    black_box(Some("Shop.Example.com:8443")),
                    black_box("/api/v7/users/42"),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, choose);
criterion_main!(benches);
