//! Hash routing through the real proxy: for each hash algorithm and each key
//! kind, 1,000 distinct keys sent twice to 5 real backends land where the
//! hashing core predicts, every time.
//!
//! The prediction uses the public pieces directly (`key::request_key`,
//! `KeyHasher`, `HashTable`, `HashSelector`), not the proxy's snapshot, so a
//! wiring mistake in the proxy (wrong bytes, wrong index order, wrong hasher)
//! shows up as a mismatch.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hyper::Uri;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::task::JoinSet;

use crate::common::*;
use affinity::balance::hash::KeyHasher;
use affinity::balance::key;
use affinity::balance::selector::{HashSelector, HashTable};
use affinity::config::Config;

const KEYS: usize = 1_000;

#[derive(Debug, Clone, Copy)]
enum Kind {
    ClientIp,
    Url,
    Path,
    Header,
    Cookie,
}

impl Kind {
    fn config(self) -> &'static str {
        match self {
            Kind::ClientIp => "client_ip",
            Kind::Url => "url",
            Kind::Path => "path",
            Kind::Header => "header:X-User",
            Kind::Cookie => "cookie:session",
        }
    }
}

/// One request for key `i`: its source address, target and headers. `visit`
/// changes what the key must ignore (the query for `path`, other cookies).
fn request_for(
    kind: Kind,
    i: usize,
    visit: usize,
) -> (IpAddr, String, Vec<(&'static str, String)>) {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match kind {
        // 127.0.1.1 .. 127.0.4.250: 1,000 distinct sources.
        Kind::ClientIp => (
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            )),
            format!("/visit/{visit}"),
            Vec::new(),
        ),
        Kind::Url => (localhost, format!("/items/{i}?page={}", i % 7), Vec::new()),
        Kind::Path => (
            localhost,
            format!("/users/{i}/profile?visit={visit}"),
            Vec::new(),
        ),
        Kind::Header => (
            localhost,
            format!("/visit/{visit}"),
            vec![("x-user", format!("user-{i}"))],
        ),
        Kind::Cookie => (
            localhost,
            "/".to_owned(),
            vec![(
                "cookie",
                format!("theme=t{visit}; session=s-{i:04}; lang=en"),
            )],
        ),
    }
}

/// The backend name the hashing core predicts for each key.
fn predict(config: &Config, kind: Kind) -> Vec<String> {
    let algorithm = config.pools[0].balancer.hash_algorithm().unwrap();
    let table = HashTable::new(algorithm, &config.pools[0].members()).unwrap();
    let selector = HashSelector::new(&table, &vec![true; config.pools[0].backends.len()]);
    let hasher = KeyHasher::default();
    (0..KEYS)
        .map(|i| {
            let (source, target, pairs) = request_for(kind, i, 0);
            let uri: Uri = target.parse().unwrap();
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            let key = key::request_key(&config.pools[0].balancer.key, &uri, &headers, source, &[]);
            let pick = selector.pick(hasher.hash(key.as_bytes())).unwrap();
            config.pools[0].backends[pick].name.clone()
        })
        .collect()
}

/// Sends every key twice (second time with a different `visit`) and
/// returns, per key, the two backends that answered.
async fn route_all(proxy: SocketAddr, kind: Kind) -> Vec<[String; 2]> {
    let workers = match kind {
        Kind::ClientIp => 16,
        _ => 8,
    };
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        tasks.spawn(async move {
            let mut results = Vec::new();
            let mut shared: Option<Client> = None;
            for i in (worker..KEYS).step_by(workers) {
                let (source, _, _) = request_for(kind, i, 0);
                // One connection per key for client_ip (its source is the
                // key), one per worker otherwise.
                let mut own = None;
                let client = match kind {
                    Kind::ClientIp => own.insert(Client::connect_from(source, proxy).await),
                    _ => match &mut shared {
                        Some(client) => client,
                        None => shared.insert(Client::connect(proxy).await),
                    },
                };
                let mut got = [String::new(), String::new()];
                for (visit, slot) in got.iter_mut().enumerate() {
                    let (_, target, pairs) = request_for(kind, i, visit);
                    let headers: Vec<(&str, &str)> =
                        pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let reply = client.get(&target, &headers).await;
                    assert_eq!(reply.status, 200, "key {i}: {}", reply.text());
                    *slot = reply.backend().to_owned();
                }
                results.push((i, got));
            }
            results
        });
    }
    let mut all = vec![[String::new(), String::new()]; KEYS];
    while let Some(results) = bounded(tasks.join_next()).await {
        for (i, got) in results.unwrap() {
            all[i] = got;
        }
    }
    all
}

async fn keys_land_where_the_hashing_core_predicts(algorithm: &str, kind: Kind) {
    let backends = TestBackend::start_many(5).await;
    let text = config_text(
        &format!(
            "[balancer]\nalgorithm = \"{algorithm}\"\nkey = \"{}\"",
            kind.config()
        ),
        &pool(&backends),
    );
    let expected = predict(&parse(&text), kind);
    let proxy = start_proxy(&text).await;
    let routed = route_all(proxy.local_addr(), kind).await;

    for (i, (got, want)) in routed.iter().zip(&expected).enumerate() {
        assert_eq!(got[0], got[1], "key {i} moved between its two requests");
        assert_eq!(
            &got[0], want,
            "key {i} did not land on its predicted backend"
        );
    }
    let mut predicted: HashMap<&str, u64> = HashMap::new();
    for name in &expected {
        *predicted.entry(name).or_default() += 2;
    }
    for backend in &backends {
        let want = predicted.get(backend.name.as_str()).copied().unwrap_or(0);
        assert_eq!(
            backend.count(),
            want,
            "{} served {} requests",
            backend.name,
            backend.count()
        );
        assert!(
            want > 2 * KEYS as u64 / 10,
            "{} got only {want} requests",
            backend.name
        );
    }
    proxy.shutdown().await;
}

macro_rules! hash_routing_tests {
    ($($name:ident: $algorithm:literal, $kind:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            keys_land_where_the_hashing_core_predicts($algorithm, $kind).await;
        }
    )*};
}

hash_routing_tests! {
    maglev_client_ip_keys_are_sticky_and_land_as_predicted: "maglev", Kind::ClientIp;
    maglev_url_keys_are_sticky_and_land_as_predicted: "maglev", Kind::Url;
    maglev_path_keys_ignore_the_query_and_land_as_predicted: "maglev", Kind::Path;
    maglev_header_keys_are_sticky_and_land_as_predicted: "maglev", Kind::Header;
    maglev_cookie_keys_ignore_other_cookies_and_land_as_predicted: "maglev", Kind::Cookie;
    ring_hash_client_ip_keys_are_sticky_and_land_as_predicted: "ring_hash", Kind::ClientIp;
    ring_hash_url_keys_are_sticky_and_land_as_predicted: "ring_hash", Kind::Url;
    ring_hash_path_keys_ignore_the_query_and_land_as_predicted: "ring_hash", Kind::Path;
    ring_hash_header_keys_are_sticky_and_land_as_predicted: "ring_hash", Kind::Header;
    ring_hash_cookie_keys_ignore_other_cookies_and_land_as_predicted: "ring_hash", Kind::Cookie;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_backends_listed_in_different_orders_route_every_key_alike() {
    let backends = TestBackend::start_many(5).await;
    for algorithm in ["maglev", "ring_hash"] {
        let sections = format!("[balancer]\nalgorithm = \"{algorithm}\"\nkey = \"url\"");
        let forward = pool(&backends);
        let mut shuffled = forward.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let a = start_proxy(&config_text(&sections, &forward)).await;
        let b = start_proxy(&config_text(&sections, &shuffled)).await;
        let routed_a = route_all(a.local_addr(), Kind::Url).await;
        let routed_b = route_all(b.local_addr(), Kind::Url).await;
        for i in 0..KEYS {
            assert_eq!(routed_a[i][0], routed_b[i][0], "{algorithm}: key {i}");
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_is_the_key() {
    let backends = TestBackend::start_many(5).await;
    let text = config_text(
        "[balancer]\nkey = \"client_ip\"\ntrusted_proxies = [\"127.0.0.2/32\"]",
        &pool(&backends),
    );
    let config = parse(&text);
    let order_of = fallback_orders(&config.pools[0]);
    let backend_of = |ip: &str| order_of(ip.as_bytes())[0].clone();
    let proxy = start_proxy(&text).await;
    let trusted_peer = "127.0.0.2".parse().unwrap();
    let untrusted_peer = "127.0.0.3".parse().unwrap();
    let mut trusted = Client::connect_from(trusted_peer, proxy.local_addr()).await;
    let mut untrusted = Client::connect_from(untrusted_peer, proxy.local_addr()).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let client = format!("198.51.100.{}", i % 250);
        let forwarded = format!("203.0.113.1, {client}");
        let reply = trusted.get("/", &[("x-forwarded-for", &forwarded)]).await;
        assert_eq!(reply.backend(), backend_of(&client), "{client}");
        seen.insert(reply.backend().to_owned());
        let reply = untrusted.get("/", &[("x-forwarded-for", &forwarded)]).await;
        assert_eq!(reply.backend(), backend_of("127.0.0.3"), "spoofed {client}");
    }
    assert_eq!(seen.len(), 5, "forwarded clients spread over every backend");
}

#[tokio::test]
async fn a_request_without_its_header_key_falls_back_to_its_client_address() {
    let backends = TestBackend::start_many(5).await;
    let text = config_text("[balancer]\nkey = \"header:X-User\"", &pool(&backends));
    let config = parse(&text);
    let order_of = fallback_orders(&config.pools[0]);
    let proxy = start_proxy(&text).await;
    for i in 1..=50u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 9, i));
        let mut client = Client::connect_from(source, proxy.local_addr()).await;
        let want = order_of(source.to_string().as_bytes())[0].clone();
        for _ in 0..2 {
            let reply = client.get("/", &[]).await;
            assert_eq!(reply.backend(), want, "{source}");
        }
    }
}

#[tokio::test]
async fn a_new_client_gets_a_session_cookie_and_sticks_to_the_backend_its_id_hashes_to() {
    let backends = TestBackend::start_many(5).await;
    let text = config_text(
        "[balancer]\nalgorithm = \"ring_hash\"\n\
         [balancer.sticky_cookie]\nname = \"sid\"\nmax_age = \"10m\"",
        &pool(&backends),
    );
    let config = parse(&text);
    let order_of = fallback_orders(&config.pools[0]);
    let proxy = start_proxy(&text).await;
    // Every request comes from 127.0.0.1: without the cookie they would all
    // share one backend.
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut ids = std::collections::HashSet::new();
    let mut used = std::collections::HashSet::new();
    for _ in 0..100 {
        let first = client.get("/", &[]).await;
        let cookie = first
            .header("set-cookie")
            .expect("a new client gets a cookie");
        let (pair, attributes) = cookie.split_once("; ").unwrap();
        assert_eq!(attributes, "Max-Age=600; Path=/; HttpOnly; SameSite=Lax");
        let id = pair.strip_prefix("sid=").unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(ids.insert(id.clone()), "session ids repeat");
        let want = order_of(id.as_bytes())[0].clone();
        assert_eq!(first.backend(), want);
        for _ in 0..3 {
            let again = client
                .get("/", &[("cookie", &format!("lang=en; sid={id}"))])
                .await;
            assert_eq!(again.backend(), want);
            assert!(again.header("set-cookie").is_none());
        }
        used.insert(want);
    }
    assert_eq!(used.len(), 5, "sessions spread over every backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bounded_load_a_busy_first_choice_overflows_to_the_keys_next_backend() {
    let backends = TestBackend::start_many(3).await;
    let text = config_text(
        "[balancer]\nkey = \"header:X-User\"\nbounded_load = 1.25",
        &pool(&backends),
    );
    let config = parse(&text);
    let order = fallback_orders(&config.pools[0])(b"alice");
    let first = backends.iter().find(|b| b.name == order[0]).unwrap();
    let proxy = start_proxy(&text).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let alice = [("x-user", "alice")];
    assert_eq!(client.get("/", &alice).await.backend(), order[0]);

    // One of alice's requests held on her first choice: with 1 request in
    // flight over 3 backends, its bound is ⌈1.25 · 2 / 3⌉ = 1, so it is full.
    let addr = proxy.local_addr();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.get("/hold", &[("x-user", "alice")]).await
    });
    bounded(async {
        while first.count() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(client.get("/", &alice).await.backend(), order[1]);
    }
    first.release();
    assert_eq!(bounded(held).await.unwrap().backend(), order[0]);
    // The held response has ended: alice is back on her first choice.
    bounded(async {
        loop {
            if client.get("/", &alice).await.backend() == order[0] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}
