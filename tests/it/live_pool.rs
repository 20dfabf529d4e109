//! The pool while it changes, observed through real requests: a backend
//! killed and restarted under steady load, a flapping backend, a request in
//! flight across 100 snapshot swaps, reloads that keep health by name,
//! bounded loads with one hot key, and sticky cookies shared by two proxies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(50);

/// URL keys, fast probes (100 ms, 50 ms timeout), thresholds 2/2, one retry.
fn fast_checks() -> String {
    format!(
        "[balancer]\nkey = \"url\"\n[upstream]\nretries = 1\n[health_check]\n\
         interval = \"{}ms\"\ntimeout = \"{}ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

fn target(i: usize) -> String {
    format!("/k/{i}")
}

/// Sends `GET /k/<i>` for every key over 8 keep-alive connections and
/// returns the backend that answered each; every answer must be a 200.
async fn routed(proxy: SocketAddr, keys: usize) -> Vec<String> {
    const CONNECTIONS: usize = 8;
    let mut stripes = tokio::task::JoinSet::new();
    for stripe in 0..CONNECTIONS {
        stripes.spawn(async move {
            let mut client = Client::connect(proxy).await;
            let mut answers = Vec::new();
            for i in (stripe..keys).step_by(CONNECTIONS) {
                let reply = client.get(&target(i), &[]).await;
                assert_eq!(reply.status, 200, "key {i}: {}", reply.text());
                answers.push((i, reply.backend().to_owned()));
            }
            answers
        });
    }
    let mut map = vec![String::new(); keys];
    while let Some(answers) = bounded(stripes.join_next()).await {
        for (i, backend) in answers.unwrap() {
            map[i] = backend;
        }
    }
    map
}

/// Requests sent in the background until stopped, and the failures seen.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl SteadyLoad {
    /// Cycles through `keys` URL keys on two connections, one request at a
    /// time each.
    fn start(proxy: SocketAddr, keys: usize) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut clients = [Client::connect(proxy).await, Client::connect(proxy).await];
            let (mut sent, mut failures) = (0u64, Vec::new());
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) {
                let reply = clients[i % 2].get(&target(i % keys), &[]).await;
                if reply.status != 200 {
                    failures.push(format!(
                        "key {}: {} {}",
                        i % keys,
                        reply.status,
                        reply.text()
                    ));
                }
                sent += 1;
                i += 1;
            }
            (sent, failures)
        });
        SteadyLoad { stop, task }
    }

    /// Stops it; returns how many requests it sent, asserting none failed.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (sent, failures) = bounded(self.task).await.unwrap();
        assert!(
            failures.is_empty(),
            "{} of {sent} failed: {failures:?}",
            failures.len()
        );
        sent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_five_backends_under_load_moves_only_its_keys_and_restarting_it_restores_all()
 {
    const KEYS: usize = 1000;
    let mut backends = TestBackend::start_many(5).await;
    let proxy = start_proxy(&config_text(&fast_checks(), &pool(&backends))).await;
    let address = proxy.local_addr();
    let before = routed(address, KEYS).await;

    let load = SteadyLoad::start(address, KEYS);
    let victim = backends.remove(2);
    let (name, victim_addr) = (victim.name.clone(), victim.addr);
    assert!(before.contains(&name));
    drop(victim);
    let took = until_healthy_count(&proxy.pool(), 4).await;
    // Probes alone take it down within threshold × interval + timeout; the
    // load's refused connects count too, so it is usually sooner.
    let limit = INTERVAL * 2 + TIMEOUT + Duration::from_millis(500);
    assert!(took < limit, "marked down after {took:?}, limit {limit:?}");

    let during = routed(address, KEYS).await;
    let mut moved = 0;
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        assert_ne!(*d, name, "key {i} still on the killed backend");
        if b != d {
            assert_eq!(*b, name, "key {i} moved from {b} to {d}, though {b} is up");
            moved += 1;
        }
    }
    assert_eq!(moved, before.iter().filter(|b| **b == name).count());

    let restarted = TestBackend::start_at(&name, victim_addr).await;
    until_healthy_count(&proxy.pool(), 5).await;
    let after = routed(address, KEYS).await;
    assert_eq!(after, before, "every key is back on its original backend");
    let sent = load.finish().await;
    assert!(sent > 100, "the load sent only {sent} requests");
    assert!(restarted.count() > 0);
}

#[tokio::test]
async fn a_flapping_backend_never_moves_the_keys_of_the_others() {
    const KEYS: usize = 300;
    let backends = Arc::new(TestBackend::start_many(5).await);
    // Thresholds of 1 flip on every probe; the timeout leaves room for a
    // busy machine, where a healthy backend's probe must not time out.
    let sections = "[balancer]\nkey = \"url\"\n[health_check]\ninterval = \"60ms\"\n\
                    timeout = \"50ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    let text = config_text(sections, &pool(&backends));
    let config = parse(&text);
    let orders = fallback_orders(&config.pools[0]);
    let proxy = start_proxy(&text).await;
    let before = routed(proxy.local_addr(), KEYS).await;
    let flapping = backends[3].name.clone();

    // Fail every other probe: with thresholds of 1 the backend goes down
    // and up on each one.
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (backends, stop) = (backends.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let probes = backends[3].probes();
                backends[3].set_health(probes % 2 == 1);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut client = Client::connect(proxy.local_addr()).await;
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        for i in (rounds % 3..KEYS).step_by(3) {
            let reply = client.get(&target(i), &[]).await;
            assert_eq!(reply.status, 200);
            if before[i] == flapping {
                let order = orders(target(i).as_bytes());
                assert!(
                    reply.backend() == order[0] || reply.backend() == order[1],
                    "key {i} went to {}, order {order:?}",
                    reply.backend()
                );
            } else {
                assert_eq!(reply.backend(), before[i], "key {i} moved");
            }
        }
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    bounded(toggler).await.unwrap();
    let metrics = affinity::admin::metrics::Metrics::new(proxy.pool().stats()).encode();
    let downs = transitions(&metrics, &flapping, "unhealthy");
    assert!(downs >= 3, "it flapped only {downs} times:\n{metrics}");
    for other in backends.iter().filter(|b| b.name != flapping) {
        assert_eq!(transitions(&metrics, &other.name, "unhealthy"), 0);
    }
}

/// `affinity_health_transitions_total{backend,to}` from a metrics text.
fn transitions(metrics: &str, backend: &str, to: &str) -> u64 {
    let prefix = format!(
        "affinity_health_transitions_total{{pool=\"default\",backend=\"{backend}\",to=\"{to}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_100_reloads_completes_on_the_backend_it_chose() {
    let backends = TestBackend::start_many(5).await;
    let full = config_text("[balancer]\nkey = \"url\"", &pool(&backends));
    let full_config = parse(&full);
    let chosen_name = fallback_orders(&full_config.pools[0])(b"/hold")[0].clone();
    let chosen = backends.iter().find(|b| b.name == chosen_name).unwrap();
    let others: Vec<_> = backends.iter().filter(|b| b.name != chosen_name).collect();
    let without = config_text(
        "[balancer]\nkey = \"url\"",
        &others
            .iter()
            .map(|b| (b.name.as_str(), b.addr))
            .collect::<Vec<_>>(),
    );
    let proxy = start_proxy(&full).await;
    let address = proxy.local_addr();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(address).await;
        client.get("/hold", &[]).await
    });
    bounded(async {
        while chosen.count() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    let load = SteadyLoad::start(address, 200);
    let mut removed = 0;
    for swap in 0..100 {
        // Every other swap takes the held request's backend out of the pool.
        let text = if swap % 2 == 0 { &without } else { &full };
        proxy.reload(parse(text)).await.unwrap();
        if swap % 2 == 0 {
            assert!(proxy.pool().snapshot().backend(&chosen_name).is_none());
            removed += 1;
        }
    }
    assert_eq!(removed, 50);
    assert!(!held.is_finished(), "the held request ended early");
    chosen.release();
    let reply = bounded(held).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), chosen_name);
    assert_eq!(reply.text(), chosen_name);
    load.finish().await;
    let rebuild = proxy.pool().snapshot().rebuild().cloned().unwrap();
    assert_eq!(rebuild.cause, "reload");
}

#[tokio::test]
async fn a_reload_keeps_a_down_backend_down_and_a_new_backend_starts_taking_keys() {
    const KEYS: usize = 400;
    let backends = TestBackend::start_many(5).await;
    let (first_four, fifth) = backends.split_at(4);
    // Ring hash: a newcomer takes keys only for itself (Maglev may also
    // shuffle a few others; see the hashing core).
    let sections = fast_checks().replace("[balancer]\n", "[balancer]\nalgorithm = \"ring_hash\"\n");
    let text = config_text(&sections, &pool(first_four));
    let proxy = start_proxy(&text).await;
    first_four[1].set_health(false);
    until_healthy_count(&proxy.pool(), 3).await;
    let down = routed(proxy.local_addr(), KEYS).await;
    assert!(!down.contains(&first_four[1].name));

    // The same pool plus server-5, and a new listener address (restart only).
    let grown = config_text(&sections, &pool(&backends)).replace("127.0.0.1:0", "127.0.0.1:1");
    let reloaded = proxy.reload(parse(&grown)).await.unwrap();
    assert_eq!(reloaded.needs_restart, ["listener.address"]);
    let snapshot = proxy.pool().snapshot();
    assert_eq!(snapshot.backends().len(), 5);
    assert_eq!(
        snapshot.healthy_count(),
        4,
        "server-2 stays down, server-5 starts up"
    );
    assert!(!snapshot.backend(&first_four[1].name).unwrap().is_healthy());
    let after = routed(proxy.local_addr(), KEYS).await;
    let mut gained = 0;
    for (i, (b, a)) in down.iter().zip(&after).enumerate() {
        assert_ne!(*a, first_four[1].name, "key {i} on the down backend");
        if b != a {
            assert_eq!(*a, fifth[0].name, "key {i} moved from {b} to {a}");
            gained += 1;
        }
    }
    assert!(gained > KEYS / 10, "server-5 gained only {gained} keys");

    // Its probes restart with the pool: healthy again, it takes its keys back.
    first_four[1].set_health(true);
    until_healthy_count(&proxy.pool(), 5).await;
    let orders = fallback_orders(snapshot.config());
    let now = routed(proxy.local_addr(), KEYS).await;
    for (i, backend) in now.iter().enumerate() {
        assert_eq!(*backend, orders(target(i).as_bytes())[0], "key {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bounded_load_a_hot_key_fills_its_backends_in_fallback_order_up_to_the_bound() {
    const HELD: usize = 12;
    const C: f64 = 1.25;
    let backends = TestBackend::start_many(4).await;
    let text = config_text(
        "[balancer]\nkey = \"header:X-User\"\nbounded_load = 1.25",
        &pool(&backends),
    );
    let config = parse(&text);
    let order = fallback_orders(&config.pools[0])(b"hot");
    let proxy = start_proxy(&text).await;
    let address = proxy.local_addr();

    // The model: each new request goes to the first backend of the key's
    // order whose in-flight count is below ⌈c · (m + 1) / N⌉, m being the
    // requests in flight.
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut held = Vec::new();
    for n in 0..HELD {
        let m = n as f64;
        let bound = (C * (m + 1.0) / 4.0).ceil() as u64;
        let pick = order
            .iter()
            .find(|b| expected.get(*b).copied().unwrap_or(0) < bound)
            .unwrap()
            .clone();
        *expected.entry(pick).or_default() += 1;
        held.push(tokio::spawn(async move {
            let mut client = Client::connect(address).await;
            client.get("/hold", &[("x-user", "hot")]).await
        }));
        // One at a time, so that each decision sees the previous ones.
        bounded(async {
            while backends.iter().map(TestBackend::count).sum::<u64>() < n as u64 + 1 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
    }
    let snapshot = proxy.pool().snapshot();
    let cap = (C * HELD as f64 / 4.0).ceil() as u64;
    for backend in &backends {
        let want = expected.get(&backend.name).copied().unwrap_or(0);
        assert_eq!(backend.count(), want, "{} (order {order:?})", backend.name);
        let in_flight = snapshot.backend(&backend.name).unwrap().state().in_flight();
        assert_eq!(in_flight, want);
        assert!(
            in_flight <= cap,
            "{} holds {in_flight} > ⌈c × mean⌉ = {cap}",
            backend.name
        );
    }
    assert_eq!(
        expected[&order[0]], cap,
        "the first choice fills up to the bound"
    );
    assert!(expected.get(&order[3]).copied().unwrap_or(0) < cap);
    for backend in &backends {
        backend.release();
    }
    for request in held {
        assert_eq!(bounded(request).await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn two_proxies_with_one_config_agree_on_every_sticky_session() {
    let backends = TestBackend::start_many(5).await;
    let text = config_text(
        "[balancer.sticky_cookie]\nname = \"sid\"\nmax_age = \"1h\"",
        &pool(&backends),
    );
    let (a, b) = (start_proxy(&text).await, start_proxy(&text).await);
    let mut to_a = Client::connect(a.local_addr()).await;
    let mut to_b = Client::connect(b.local_addr()).await;
    let mut used = std::collections::HashSet::new();
    for _ in 0..40 {
        let first = to_a.get("/", &[]).await;
        let cookie = first.header("set-cookie").unwrap();
        let pair = cookie.split_once(';').unwrap().0.to_owned();
        for client in [&mut to_a, &mut to_b] {
            for _ in 0..5 {
                let again = client.get("/", &[("cookie", &pair)]).await;
                assert_eq!(again.backend(), first.backend(), "{pair}");
                assert!(again.header("set-cookie").is_none());
            }
        }
        used.insert(first.backend().to_owned());
    }
    assert!(used.len() >= 3, "40 sessions used only {used:?}");
}

#[tokio::test]
async fn in_panic_mode_keys_keep_their_full_mapping_and_leave_it_when_health_returns() {
    const KEYS: usize = 300;
    let backends = TestBackend::start_many(4).await;
    let sections = fast_checks().replace("[balancer]\n", "[balancer]\npanic_threshold = 50\n");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let address = proxy.local_addr();
    let all = routed(address, KEYS).await;

    // Two of four failing their probes: 50% healthy is not below 50%.
    backends[0].set_health(false);
    backends[1].set_health(false);
    until_healthy_count(&proxy.pool(), 2).await;
    assert!(!proxy.pool().snapshot().in_panic());
    let half = routed(address, KEYS).await;
    assert!(
        half.iter()
            .all(|b| *b == backends[2].name || *b == backends[3].name)
    );

    // A third: 25% healthy, panic. The failing backends still answer
    // requests here, so every key goes back to its full-pool backend.
    backends[2].set_health(false);
    until_healthy_count(&proxy.pool(), 1).await;
    assert!(proxy.pool().snapshot().in_panic());
    assert_eq!(routed(address, KEYS).await, all);

    backends[2].set_health(true);
    until_healthy_count(&proxy.pool(), 2).await;
    assert!(!proxy.pool().snapshot().in_panic());
    assert_eq!(routed(address, KEYS).await, half);
}

/// Two pools by path: `/a...` to `a`, everything else to `b`.
fn two_pools(a: &TestBackend, b: &TestBackend, with_a: bool) -> String {
    let mut text = String::from(
        "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\npool = \"b\"\n",
    );
    if with_a {
        text.push_str("[[routes]]\npath_prefix = \"/hold\"\npool = \"a\"\n");
        text.push_str(&format!(
            "[[pools]]\nname = \"a\"\nbackends = [{{ name = \"a-1\", url = \"http://{}\" }}]\n",
            a.addr
        ));
    }
    text.push_str(&format!(
        "[[pools]]\nname = \"b\"\nbackends = [{{ name = \"b-1\", url = \"http://{}\" }}]\n",
        b.addr
    ));
    text
}

/// A reload that removes a pool: the request in flight to it finishes on
/// its backend; the next request for its path takes the route that is left.
#[tokio::test]
async fn a_request_in_flight_to_a_removed_pool_finishes_and_the_next_one_goes_elsewhere() {
    let a = TestBackend::start("a-1").await;
    let b = TestBackend::start("b-1").await;
    let proxy = start_proxy(&two_pools(&a, &b, true)).await;
    let address = proxy.local_addr();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(address).await;
        client.get("/hold", &[]).await
    });
    bounded(async {
        while a.count() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    proxy
        .reload(parse(&two_pools(&a, &b, false)))
        .await
        .unwrap();
    assert!(proxy.pool_named("a").is_none());
    let mut client = Client::connect(address).await;
    let reply = client.get("/hold/next", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), "b-1");
    assert!(!held.is_finished(), "the held request ended early");
    a.release();
    let reply = bounded(held).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), "a-1");
}
