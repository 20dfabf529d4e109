//! The classic policies through the real proxy, one client sending requests
//! one after another unless a test says otherwise.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

fn with_weights(backends: &[TestBackend], weights: &[u32], sections: &str) -> String {
    let mut text = format!("[listener]\naddress = \"127.0.0.1:0\"\n{sections}\n");
    for (backend, weight) in backends.iter().zip(weights) {
        text.push_str(&format!(
            "[[backends]]\nname = \"{}\"\nurl = \"http://{}\"\nweight = {weight}\n",
            backend.name, backend.addr
        ));
    }
    text
}

async fn tally(client: &mut Client, requests: usize) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let reply = client.get("/", &[]).await;
        assert_eq!(reply.status, 200);
        *counts.entry(reply.backend().to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_cycles_through_the_backends_in_config_order() {
    let backends = TestBackend::start_many(3).await;
    let proxy = start_proxy(&config_text(
        "[balancer]\nalgorithm = \"round_robin\"",
        &pool(&backends),
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..30 {
        let reply = client.get(&format!("/r/{i}"), &[]).await;
        assert_eq!(
            reply.backend(),
            format!("server-{}", i % 3 + 1),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn weighted_round_robin_5_1_1_over_70_requests_gives_50_10_10_interleaved() {
    let backends = TestBackend::start_many(3).await;
    let text = with_weights(
        &backends,
        &[5, 1, 1],
        "[balancer]\nalgorithm = \"weighted_round_robin\"",
    );
    let proxy = start_proxy(&text).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut sequence = Vec::new();
    for _ in 0..70 {
        sequence.push(client.get("/", &[]).await.backend().to_owned());
    }
    // nginx's smooth sequence for 5:1:1 is a a b a c a a.
    let first_period: Vec<&str> = sequence[..7].iter().map(String::as_str).collect();
    assert_eq!(
        first_period,
        [
            "server-1", "server-1", "server-2", "server-1", "server-3", "server-1", "server-1"
        ]
    );
    let counts = [1, 2, 3].map(|i| {
        sequence
            .iter()
            .filter(|b| **b == format!("server-{i}"))
            .count()
    });
    assert_eq!(counts, [50, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_to_the_idle_backend_while_another_is_busy() {
    let backends = TestBackend::start_many(2).await;
    let proxy = start_proxy(&config_text(
        "[balancer]\nalgorithm = \"least_connections\"",
        &pool(&backends),
    ))
    .await;
    // One request is held by whichever backend it reaches; every request
    // sent meanwhile must go to the other, idle one.
    let addr = proxy.local_addr();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.get("/hold", &[]).await
    });
    let busy = bounded(async {
        loop {
            if let Some(b) = backends.iter().find(|b| b.count() == 1) {
                break b.name.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut client = Client::connect(addr).await;
    for i in 0..20 {
        let reply = client.get("/", &[]).await;
        assert_ne!(
            reply.backend(),
            busy,
            "request {i} went to the busy backend"
        );
    }
    for backend in &backends {
        backend.release();
    }
    let held = bounded(held).await.unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(held.backend(), busy);
    // Both idle again: they take turns.
    let counts = tally(&mut client, 20).await;
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10]);
}

#[tokio::test]
async fn least_response_time_avoids_a_backend_made_slow() {
    let backends = TestBackend::start_many(3).await;
    backends[1].set_slow(Duration::from_millis(150));
    let proxy = start_proxy(&config_text(
        "[balancer]\nalgorithm = \"least_response_time\"",
        &pool(&backends),
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    // Unmeasured backends are tried first: one request each.
    let warmup = tally(&mut client, 3).await;
    assert_eq!(warmup.len(), 3, "{warmup:?}");
    let after = tally(&mut client, 40).await;
    assert_eq!(after.get("server-2"), None, "{after:?}");
    assert_eq!(backends[1].count(), 1);
}

#[tokio::test]
async fn random_with_its_fixed_seed_spreads_requests_within_a_chi_square_bound() {
    let backends = TestBackend::start_many(4).await;
    let proxy = start_proxy(&config_text(
        "[balancer]\nalgorithm = \"random\"",
        &pool(&backends),
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let requests = 800;
    let counts = tally(&mut client, requests).await;
    let expected = requests as f64 / 4.0;
    let chi_square: f64 = backends
        .iter()
        .map(|b| {
            let observed = counts.get(&b.name).copied().unwrap_or(0) as f64;
            (observed - expected).powi(2) / expected
        })
        .sum();
    // 99.9 % critical value of χ² with 3 degrees of freedom.
    assert!(chi_square < 16.27, "χ² = {chi_square}, counts {counts:?}");

    // The seed is fixed: two fresh proxies pick the same sequence.
    let text = config_text("[balancer]\nalgorithm = \"random\"", &pool(&backends));
    let (one, two) = (start_proxy(&text).await, start_proxy(&text).await);
    let mut a = Client::connect(one.local_addr()).await;
    let mut b = Client::connect(two.local_addr()).await;
    let mut picks = Vec::new();
    for i in 0..50 {
        let pick = a.get("/", &[]).await.backend().to_owned();
        assert_eq!(pick, b.get("/", &[]).await.backend(), "pick {i}");
        picks.push(pick);
    }
    picks.sort_unstable();
    picks.dedup();
    assert_eq!(picks.len(), 4, "the sequence is not stuck on one backend");
}
