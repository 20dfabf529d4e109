//! Active health checks and passive failure counting: a backend failing its
//! probes (or refusing real requests) leaves the table, only its keys move,
//! and restoring it restores every key; clients see no errors meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::Uri;
use hyper::header::HeaderMap;

use crate::common::*;
use affinity::listener::ProxyHandle;
use affinity::pool::{Pool, Snapshot};

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(50);
const THRESHOLD: u32 = 2;

/// URL keys, 100 ms probes with a 50 ms timeout, thresholds 2/2.
fn fast_checks() -> String {
    format!(
        "[balancer]\nkey = \"url\"\n[health_check]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\n\
         healthy_threshold = {THRESHOLD}\nunhealthy_threshold = {THRESHOLD}\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

fn target(i: usize) -> String {
    format!("/k/{i}")
}

/// The backend (name) each of `n` URL keys goes to under `snapshot`, as the
/// proxy routes a first attempt.
fn key_map(snapshot: &Snapshot, n: usize) -> Vec<String> {
    let headers = HeaderMap::new();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    (0..n)
        .map(|i| {
            let uri: Uri = target(i).parse().unwrap();
            let hash = snapshot.key_hash(&uri, &headers, peer).unwrap();
            let index = snapshot.next_backend(hash, &[], 0).unwrap();
            snapshot.backends()[index].name().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_backend_failing_its_probes_loses_only_its_keys_and_gets_them_all_back_on_recovery() {
    const KEYS: usize = 1000;
    let backends = TestBackend::start_many(5).await;
    let proxy = start_proxy(&config_text(&fast_checks(), &pool(&backends))).await;
    let pool = proxy.pool().clone();
    let before = key_map(&pool.snapshot(), KEYS);
    let down = &backends[2];
    assert!(before.contains(&down.name));

    down.set_health(false);
    let took = until_healthy_count(&pool, 4).await;
    // Up to one interval until the next probe, then `THRESHOLD` failures
    // an interval apart, each taking at most the timeout; plus slack.
    let limit = INTERVAL * THRESHOLD + TIMEOUT + Duration::from_millis(750);
    assert!(took < limit, "marked down after {took:?}, limit {limit:?}");
    let snapshot = pool.snapshot();
    assert!(!snapshot.backend(&down.name).unwrap().is_healthy());

    let during = key_map(&snapshot, KEYS);
    let mut moved = 0;
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        assert_ne!(*d, down.name, "key {i} still maps to the down backend");
        if b != d {
            assert_eq!(*b, down.name, "key {i} moved from {b} to {d}");
            moved += 1;
        }
    }
    assert!(moved > 0 && moved == before.iter().filter(|b| **b == down.name).count());

    let mut client = Client::connect(proxy.local_addr()).await;
    for i in (0..KEYS).step_by(10) {
        let reply = client.get(&target(i), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.backend(), during[i], "key {i} while down");
    }

    down.set_health(true);
    until_healthy_count(&pool, 5).await;
    let after = key_map(&pool.snapshot(), KEYS);
    assert_eq!(after, before, "every key is back on its original backend");
    for i in (0..KEYS).step_by(10) {
        let reply = client.get(&target(i), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.backend(), before[i], "key {i} after recovery");
    }
}

#[tokio::test]
async fn clients_see_no_errors_while_a_backend_fails_its_probes() {
    let backends = TestBackend::start_many(5).await;
    let proxy = start_proxy(&config_text(&fast_checks(), &pool(&backends))).await;
    let failing = &backends[0];
    failing.set_health(false);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(proxy.local_addr()).await);
    }
    // Keep requests flowing across the removal: through at least twice the
    // time it needs, and past the swap.
    let started = Instant::now();
    let mut i = 0;
    let mut sent_after_removal = 0;
    while sent_after_removal < 200 || started.elapsed() < INTERVAL * 2 * THRESHOLD {
        let removed = proxy.pool().snapshot().healthy_count() == 4;
        let client = &mut clients[i % 4];
        let reply = client.get(&target(i), &[]).await;
        assert_eq!(
            reply.status,
            200,
            "request {i} after {:?}",
            started.elapsed()
        );
        if removed {
            assert_ne!(reply.backend(), failing.name, "routed to a down backend");
            sent_after_removal += 1;
        }
        i += 1;
        assert!(started.elapsed() < Duration::from_secs(4), "never removed");
    }
    assert!(failing.probes() >= u64::from(THRESHOLD));
}

#[tokio::test]
async fn connect_failures_of_real_requests_take_a_backend_down_without_client_errors() {
    let backends = TestBackend::start_many(5).await;
    let mut members = pool(&backends);
    let dead = dead_address().await;
    members.push(("server-dead", dead));
    // Probes an hour apart: only real requests can take it down here.
    let sections = "[balancer]\nkey = \"url\"\n[upstream]\nretries = 1\n[health_check]\n\
                    interval = \"1h\"\ntimeout = \"1s\"\nhealthy_threshold = 2\n\
                    unhealthy_threshold = 2\n";
    let proxy = start_proxy(&config_text(sections, &members)).await;
    let pool = proxy.pool().clone();
    let start = key_map(&pool.snapshot(), 500);
    let on_dead: Vec<usize> = (0..500).filter(|&i| start[i] == "server-dead").collect();
    assert!(
        on_dead.len() >= 3,
        "{} keys on the dead backend",
        on_dead.len()
    );

    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get(&target(on_dead[0]), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pool.snapshot().healthy_count(),
        6,
        "one failure is not enough"
    );

    let reply = client.get(&target(on_dead[1]), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    until_healthy_count(&pool, 5).await;
    assert!(!pool.snapshot().backend("server-dead").unwrap().is_healthy());

    // From now on its keys go straight to their next backend.
    let now = key_map(&pool.snapshot(), 500);
    for i in 0..200 {
        let reply = client.get(&target(i), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), now[i]);
        if start[i] != "server-dead" {
            assert_eq!(now[i], start[i], "key {i} moved though its backend is up");
        }
    }
}

#[tokio::test]
async fn dropping_the_proxy_stops_its_health_probes() {
    let backends = TestBackend::start_many(2).await;
    let sections = "[health_check]\ninterval = \"20ms\"\ntimeout = \"10ms\"\n";
    let proxy = start_proxy(&config_text(sections, &pool(&backends))).await;
    bounded(async {
        while backends.iter().any(|b| b.probes() < 2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(proxy);
    // Let an exchange already under way finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let probes: Vec<u64> = backends.iter().map(TestBackend::probes).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later: Vec<u64> = backends.iter().map(TestBackend::probes).collect();
    assert_eq!(probes, later, "probes went on after the proxy was dropped");
}

#[tokio::test]
async fn shutting_down_stops_the_health_probes_too() {
    let backends = TestBackend::start_many(1).await;
    let sections = "[health_check]\ninterval = \"20ms\"\ntimeout = \"10ms\"\n";
    let proxy = start_proxy(&config_text(sections, &pool(&backends))).await;
    bounded(async {
        while backends[0].probes() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded(proxy.shutdown()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let probes = backends[0].probes();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backends[0].probes(), probes);
}

/// A backend that reads each request head, answers `200` with a
/// `Content-Length` of 100 but sends only 3 bytes, and closes.
async fn cutting_backend() -> (std::net::SocketAddr, tokio::task::JoinSet<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                    .await;
            });
        }
    });
    (addr, tasks)
}

/// Probes an hour apart: only real requests can take a backend down.
const PASSIVE_ONLY: &str = "[balancer]\nkey = \"url\"\n[upstream]\nretries = 1\n\
                            [health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n\
                            healthy_threshold = 2\nunhealthy_threshold = 2\n";

/// A proxy (passive checks only) over three good backends and `name` at
/// `address`, with at least two of 300 URL keys (`target(i)`) on `name`.
async fn beside_three_good(
    name: &'static str,
    address: SocketAddr,
) -> (Vec<TestBackend>, ProxyHandle, Vec<usize>) {
    let backends = TestBackend::start_many(3).await;
    let mut members = pool(&backends);
    members.push((name, address));
    let proxy = start_proxy(&config_text(PASSIVE_ONLY, &members)).await;
    let start = key_map(&proxy.pool().snapshot(), 300);
    let on_it: Vec<usize> = (0..300).filter(|&i| start[i] == name).collect();
    assert!(on_it.len() >= 2);
    (backends, proxy, on_it)
}

/// What the last result counted for `name`'s health said.
fn last_result(pool: &Pool, name: &str) -> String {
    let record = pool.snapshot().backend(name).unwrap().state().health();
    record.last_probe.unwrap().detail
}

#[tokio::test]
async fn a_backend_that_drops_requests_before_answering_is_taken_down_by_them() {
    let (closing, _tasks) = closing_backend().await;
    let (_backends, proxy, on_it) = beside_three_good("server-closing", closing).await;
    let pool = proxy.pool().clone();
    let mut client = Client::connect(proxy.local_addr()).await;
    for &i in &on_it[..2] {
        // A GET is retried on the key's next backend.
        let reply = client.get(&target(i), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    until_healthy_count(&pool, 3).await;
    assert!(
        !pool
            .snapshot()
            .backend("server-closing")
            .unwrap()
            .is_healthy()
    );
    let detail = last_result(&pool, "server-closing");
    assert!(
        detail.contains("closed the connection before answering"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_backend_that_cuts_off_its_responses_is_taken_down_by_them() {
    let (cutting, _tasks) = cutting_backend().await;
    let (_backends, proxy, on_it) = beside_three_good("server-cutting", cutting).await;
    let pool = proxy.pool().clone();
    for &i in &on_it[..2] {
        // The head came through, so the client gets the 200 and then a body
        // that breaks off: never a complete body of the wrong length.
        let mut client = Client::connect(proxy.local_addr()).await;
        let response = client
            .send_streaming(
                hyper::Request::get(target(i))
                    .header("host", "proxy.test")
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body = bounded(http_body_util::BodyExt::collect(response.into_body())).await;
        assert!(body.is_err(), "a cut-off body must not end cleanly");
    }
    until_healthy_count(&pool, 3).await;
    let detail = last_result(&pool, "server-cutting");
    assert!(detail.contains("cut off its response"), "{detail}");
    // Its keys now go to their next backend.
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get(&target(on_it[0]), &[]).await;
    assert_eq!(reply.status, 200);
    assert_ne!(reply.backend(), "server-cutting");
}
