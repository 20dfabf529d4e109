//! Backends discovered through DNS, against real DNS servers on loopback:
//! the in-process authoritative server of [`crate::dns`] (SRV with or
//! without glue, A/AAAA, a TTL of 1 s, every answer in a new order,
//! SERVFAIL, NXDOMAIN, silence, empty answers, switched while the proxy
//! runs) and, when it is installed, dnsmasq.
//!
//! What a client and an operator see: a pool with nothing but `discover`
//! serves once DNS answers; scaling down moves only the keys of the backend
//! that left and scaling back up brings exactly those keys back; answer
//! order, failures and short empty spells move nothing; a long empty spell
//! empties the pool; `probe_first` keeps a new backend out until its probes
//! pass; three proxies that ask the same DNS map every key alike; a change
//! in DNS reaches `/status` in well under a second. Each test prints what
//! it measured (keys moved, moved shares, latencies) with `eprintln!`: run
//! with `--nocapture` to read them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_server::proto::rr::RecordType;
use hyper::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::common::*;
use crate::dns::{Answer, DnsServer, Srv};

/// The SRV name the pools discover.
const SRV_NAME: &str = "_http._tcp.api.test";

/// The host name of the A/AAAA discovery.
const HOST_NAME: &str = "web.api.test";

/// Keys whose backend the tests follow through `/lookup`.
const KEYS: usize = 1_000;

/// Probes every 200 ms: a backend is up after one good probe, down after
/// two failed ones.
const HEALTH: &str = "health_check = { interval = \"200ms\", timeout = \"150ms\", \
                      healthy_threshold = 1, unhealthy_threshold = 2 }\n";

// ---------------------------------------------------------------------------
// Config and DNS records
// ---------------------------------------------------------------------------

/// A proxy with listener `web` and the admin endpoint, whose only pool
/// `api` (keyed on header `x-key`, `pool` lines added) has no backends but
/// one `discover` entry looking `dns` up at `server` every 100 to 300 ms
/// (`entry` fields added).
fn config(server: SocketAddr, dns: &str, pool: &str, entry: &str) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\npool = \"api\"\n\
         [[pools]]\nname = \"api\"\nkey = \"header:x-key\"\n{pool}{HEALTH}\
         discover = [{{ dns = \"{dns}\", resolvers = [\"{server}\"], \
         min_interval = \"100ms\", max_interval = \"300ms\", empty_grace = \"1s\"{entry} }}]\n"
    )
}

/// [`config`] for SRV discovery of [`SRV_NAME`].
fn srv_config(server: &DnsServer, pool: &str, entry: &str) -> String {
    config(server.addr, SRV_NAME, pool, entry)
}

/// Backends `app-1` .. `app-N` on 127.0.0.1, each with its A record
/// `app-I.api.test` in `server`'s zone (in no SRV answer yet).
async fn start_apps(server: &DnsServer, n: usize) -> Vec<TestBackend> {
    let mut apps = Vec::new();
    for i in 1..=n {
        let app = TestBackend::start(&format!("app-{i}")).await;
        server.set_host(&target(&app), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        apps.push(app);
    }
    apps
}

/// A backend's SRV target.
fn target(app: &TestBackend) -> String {
    format!("{}.api.test", app.name)
}

/// The name the proxy gives the backend of `app`'s SRV record.
fn srv_name(app: &TestBackend) -> String {
    format!("{}:{}", target(app), app.addr.port())
}

/// Makes [`SRV_NAME`] answer one record per app.
fn publish(server: &DnsServer, apps: &[&TestBackend]) {
    let records = apps
        .iter()
        .map(|app| Srv::new(&target(app), app.addr.port()))
        .collect();
    server.set_srv(SRV_NAME, records);
}

/// The proxy's names of `apps`, sorted as `/status` lists them.
fn names_of(apps: &[&TestBackend]) -> Vec<String> {
    let mut names: Vec<String> = apps.iter().map(|a| srv_name(a)).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// The admin endpoint
// ---------------------------------------------------------------------------

/// A JSON answer of the admin endpoint, with its status.
async fn admin_json(admin: SocketAddr, target: &str) -> (StatusCode, Value) {
    let reply = Client::connect(admin).await.get(target, &[]).await;
    let value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {}", reply.text()));
    (reply.status, value)
}

/// Pool `api` in `/status`.
async fn pool_status(admin: SocketAddr) -> Value {
    let (status, answer) = admin_json(admin, "/status").await;
    assert_eq!(status, 200, "{answer}");
    let pools = answer["pools"].as_array().unwrap();
    pools
        .iter()
        .find(|p| p["name"] == "api")
        .unwrap_or_else(|| panic!("no pool api: {answer}"))
        .clone()
}

/// The backends of a pool's `/status`, by name.
/// The backends `/status` lists for a pool, by name, without those that
/// left DNS and stay in the table as `gone` (unroutable).
fn backends(pool: &Value) -> BTreeMap<String, Value> {
    pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["gone"] != true)
        .map(|b| (b["name"].as_str().unwrap().to_owned(), b.clone()))
        .collect()
}

/// The names `/status` lists for pool `api`, sorted.
async fn names(admin: SocketAddr) -> Vec<String> {
    backends(&pool_status(admin).await).into_keys().collect()
}

/// Polls `/status` until pool `api` has exactly the backends `want`
/// (sorted); how long that took.
async fn until_names(admin: SocketAddr, want: &[String]) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    let waited = tokio::time::timeout(LIMIT, async {
        loop {
            last = names(admin).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the pool never had {want:?}; it has {last:?}"
    );
    started.elapsed()
}

/// Where each of [`KEYS`] keys (`user-I`) goes in pool `api`, by
/// `/lookup`, over four admin connections at once.
async fn mapping(admin: SocketAddr) -> Vec<String> {
    const CONNECTIONS: usize = 4;
    let mut tasks = JoinSet::new();
    for first in 0..CONNECTIONS {
        tasks.spawn(async move {
            let mut client = Client::connect(admin).await;
            let mut found = Vec::new();
            for i in (first..KEYS).step_by(CONNECTIONS) {
                let target = format!("/lookup?pool=api&key=user-{i}");
                let reply = client.get(&target, &[]).await;
                let answer: Value = serde_json::from_slice(&reply.body).unwrap();
                assert_eq!(reply.status, 200, "{target}: {answer}");
                let backend = answer["backend"].as_str();
                let backend = backend.unwrap_or_else(|| panic!("{target}: {answer}"));
                found.push((i, backend.to_owned()));
            }
            found
        });
    }
    let mut map = vec![String::new(); KEYS];
    while let Some(found) = tasks.join_next().await {
        for (i, backend) in found.unwrap() {
            map[i] = backend;
        }
    }
    map
}

/// The keys whose backend differs between two mappings.
fn moved(before: &[String], after: &[String]) -> Vec<usize> {
    (0..KEYS).filter(|&i| before[i] != after[i]).collect()
}

/// How many keys of `map` go to `backend`.
fn keys_on(map: &[String], backend: &str) -> usize {
    map.iter().filter(|b| *b == backend).count()
}

/// `last_rebuild` of a pool's `/status`: when, why, and the exact share of
/// the key space that moved.
fn last_rebuild(pool: &Value) -> (String, String, f64) {
    let rebuild = &pool["last_rebuild"];
    (
        rebuild["at"].as_str().unwrap_or("").to_owned(),
        rebuild["cause"].as_str().unwrap_or("").to_owned(),
        rebuild["moved"].as_f64().unwrap_or(f64::NAN),
    )
}

/// The Prometheus text of `/metrics`.
async fn metrics(admin: SocketAddr) -> String {
    let reply = Client::connect(admin).await.get("/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    reply.text().to_owned()
}

/// `affinity_table_rebuilds_total` of pool `api`.
async fn rebuilds(admin: SocketAddr) -> u64 {
    let text = metrics(admin).await;
    let prefix = "affinity_table_rebuilds_total{pool=\"api\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// `affinity_discovery_lookups_total` of pool `api`, by result.
async fn lookups(admin: SocketAddr) -> BTreeMap<String, u64> {
    let text = metrics(admin).await;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("affinity_discovery_lookups_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        if !labels.contains("pool=\"api\"") {
            continue;
        }
        let result = labels
            .split(',')
            .find_map(|l| l.strip_prefix("result=\""))
            .unwrap()
            .trim_end_matches('"');
        let value = value.trim().parse::<f64>().unwrap() as u64;
        *counts.entry(result.to_owned()).or_default() += value;
    }
    counts
}

/// Waits (bounded) until the lookups of `result` have grown by `more`
/// from `since`.
async fn until_lookups(admin: SocketAddr, result: &str, since: &BTreeMap<String, u64>, more: u64) {
    let from = since.get(result).copied().unwrap_or(0);
    let mut last = BTreeMap::new();
    let waited = tokio::time::timeout(LIMIT, async {
        loop {
            last = lookups(admin).await;
            if last.get(result).copied().unwrap_or(0) >= from + more {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "never {more} more {result} lookups than {since:?}: {last:?}"
    );
}

/// Sends `GET /` with `x-key: user-I` for each `i` and returns which
/// backend (its test name) answered each, every answer a `200`.
async fn answered_by(proxy: SocketAddr, keys: impl IntoIterator<Item = usize>) -> Vec<String> {
    let mut client = Client::connect(proxy).await;
    let mut answered = Vec::new();
    for i in keys {
        let key = format!("user-{i}");
        let reply = client.get("/", &[("x-key", &key)]).await;
        assert_eq!(reply.status, 200, "{key}: {}", reply.text());
        answered.push(reply.backend().to_owned());
    }
    answered
}

// ---------------------------------------------------------------------------
// 1. Startup
// ---------------------------------------------------------------------------

/// A pool configured with nothing but `discover` answers `503` while its
/// name does not exist, and serves once DNS answers: the names are
/// `target:port`, the URLs the targets' addresses, every backend healthy
/// with a third of the keys, and each request lands where `/lookup` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_only_discover_serves_once_dns_answers() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 3).await;
    dns.set_answer(Answer::NxDomain);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();

    let before = Client::connect(web)
        .await
        .get("/", &[("x-key", "user-0")])
        .await;
    assert_eq!(before.status, 503, "no backend yet: {}", before.text());
    let (status, _) = admin_json(admin, "/lookup?pool=api&key=user-0").await;
    assert_eq!(status, 503);

    let started = Instant::now();
    publish(&dns, &apps.iter().collect::<Vec<_>>());
    dns.set_answer(Answer::Zone);
    let mut client = Client::connect(web).await;
    let served = bounded(async {
        loop {
            let reply = client.get("/", &[("x-key", "user-0")]).await;
            match reply.status {
                StatusCode::OK => return started.elapsed(),
                StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("{other} before the backends were found: {}", reply.text()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!("startup: first request served {served:?} after the name resolved");

    let pool = pool_status(admin).await;
    let listed = backends(&pool);
    let all: Vec<&TestBackend> = apps.iter().collect();
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        names_of(&all),
        "{pool}"
    );
    for app in &apps {
        let backend = &listed[&srv_name(app)];
        assert_eq!(
            backend["url"],
            format!("http://127.0.0.1:{}/", app.addr.port())
        );
        assert_eq!(backend["healthy"], true, "{backend}");
        let share = backend["share"].as_f64().unwrap();
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{backend}");
    }
    assert_eq!(last_rebuild(&pool).1, "discovery", "{pool}");

    let map = mapping(admin).await;
    let answered = answered_by(web, 0..100).await;
    for i in 0..100 {
        let app = apps.iter().find(|a| srv_name(a) == map[i]).unwrap();
        assert_eq!(answered[i], app.name, "user-{i}");
    }
    for app in &apps {
        assert!(app.count() > 0, "{} got none of 100 keys", app.name);
    }
}

// ---------------------------------------------------------------------------
// 2. Scaling down and up
// ---------------------------------------------------------------------------

/// 4 SRV records, then 3, then the same 4, then a fifth with a new name,
/// in a pool of `algorithm`: the scale-down moves exactly the keys of the
/// backend that left (and `last_rebuild.moved` is its share), the
/// scale-up with the same name brings every key back where it was. With
/// `optimal_add`, the new name takes keys only onto itself, and
/// `last_rebuild.moved` is its share.
async fn scale_down_and_up(algorithm: &str, optimal_add: bool) {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 5).await;
    let four: Vec<&TestBackend> = apps[..4].iter().collect();
    publish(&dns, &four);
    let pool = format!("algorithm = \"{algorithm}\"\n");
    let proxy = start_proxy(&srv_config(&dns, &pool, "")).await;
    let admin = proxy.admin_addr().unwrap();
    until_names(admin, &names_of(&four)).await;
    let before = mapping(admin).await;
    let shares: BTreeMap<String, f64> = backends(&pool_status(admin).await)
        .into_iter()
        .map(|(name, b)| (name, b["share"].as_f64().unwrap()))
        .collect();

    // Down: app-3 leaves.
    let gone = srv_name(&apps[2]);
    let three: Vec<&TestBackend> = [0, 1, 3].iter().map(|&i| &apps[i]).collect();
    publish(&dns, &three);
    until_names(admin, &names_of(&three)).await;
    let down = mapping(admin).await;
    let status = pool_status(admin).await;
    let (_, cause, down_moved) = last_rebuild(&status);
    let down_keys = moved(&before, &down);
    let stray: Vec<usize> = down_keys
        .iter()
        .copied()
        .filter(|&i| before[i] != gone)
        .collect();
    eprintln!(
        "{algorithm} scale-down 4 -> 3: {} of {KEYS} keys moved ({} were on {gone}); \
         last_rebuild.moved = {down_moved:.5}, the removed backend's share was {:.5}; \
         keys of other backends moved: {}",
        down_keys.len(),
        keys_on(&before, &gone),
        shares[&gone],
        stray.len()
    );
    assert_eq!(cause, "discovery", "{status}");
    assert!(
        stray.is_empty(),
        "{algorithm}: scaling down moved {} keys of backends that stayed, e.g. user-{}: {} -> {}",
        stray.len(),
        stray[0],
        before[stray[0]],
        down[stray[0]]
    );
    assert_eq!(down_keys.len(), keys_on(&before, &gone));
    assert!(
        (down_moved - shares[&gone]).abs() < 1e-9,
        "{algorithm}: moved {down_moved}, the removed share was {}",
        shares[&gone]
    );

    // Up again with the same name: every key back where it was.
    publish(&dns, &four);
    until_names(admin, &names_of(&four)).await;
    let up = mapping(admin).await;
    let (_, _, up_moved) = last_rebuild(&pool_status(admin).await);
    let not_back = moved(&before, &up);
    eprintln!(
        "{algorithm} scale-up 3 -> 4 (same name): {} keys went back to {gone}, \
         last_rebuild.moved = {up_moved:.5}; keys not where they were first: {}",
        keys_on(&up, &gone),
        not_back.len()
    );
    assert!(
        not_back.is_empty(),
        "{algorithm}: {} keys did not come back, e.g. user-{}: {} first, {} now",
        not_back.len(),
        not_back[0],
        before[not_back[0]],
        up[not_back[0]]
    );
    assert!(
        (up_moved - down_moved).abs() < 1e-9,
        "{algorithm}: {up_moved} moved back, {down_moved} had moved away"
    );

    // Up with a new name.
    let newcomer = srv_name(&apps[4]);
    let five: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &five);
    until_names(admin, &names_of(&five)).await;
    let grown = mapping(admin).await;
    let status = pool_status(admin).await;
    let (_, _, new_moved) = last_rebuild(&status);
    let new_share = backends(&status)[&newcomer]["share"].as_f64().unwrap();
    let new_keys = moved(&up, &grown);
    let elsewhere = new_keys.iter().filter(|&&i| grown[i] != newcomer).count();
    eprintln!(
        "{algorithm} scale-up 4 -> 5 (new name {newcomer}): {} of {KEYS} keys moved, \
         {} of them onto the newcomer and {elsewhere} between the old backends; \
         last_rebuild.moved = {new_moved:.5}, the newcomer's share {new_share:.5}",
        new_keys.len(),
        keys_on(&grown, &newcomer),
    );
    assert!(keys_on(&grown, &newcomer) > 0);
    if optimal_add {
        assert_eq!(elsewhere, 0, "{algorithm}: keys moved between old backends");
        assert!(
            (new_moved - new_share).abs() < 1e-9,
            "{algorithm}: moved {new_moved}, the newcomer's share is {new_share}"
        );
    }
}

/// Maglev: the removed backend's keys move and no other; the same name
/// back brings exactly its keys back. A brand-new name is a table rebuild:
/// what moved is printed, not bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_scaling_down_and_back_up_moves_only_the_removed_backends_keys() {
    scale_down_and_up("maglev", false).await;
}

/// Ring hash: the same, and a new name takes keys only onto itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_scaling_down_and_up_moves_only_the_keys_of_the_backend_that_changed() {
    scale_down_and_up("ring_hash", true).await;
}

// ---------------------------------------------------------------------------
// 3. Answer order
// ---------------------------------------------------------------------------

/// Every answer lists the SRV records and their glue in a new order: over
/// many lookups nothing is rebuilt and every key stays; the glue spares
/// the lookups of the targets' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_answers_move_nothing() {
    let dns = DnsServer::start().await;
    dns.set_glue(true);
    let apps = start_apps(&dns, 4).await;
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    until_names(admin, &names_of(&all)).await;
    let first = mapping(admin).await;
    let rebuilt = rebuilds(admin).await;
    let last = last_rebuild(&pool_status(admin).await);
    let asked = dns.queries(SRV_NAME, RecordType::SRV);

    for _ in 0..2 {
        let since = lookups(admin).await;
        until_lookups(admin, "ok", &since, 3).await;
        assert_eq!(mapping(admin).await, first);
    }
    let answers = dns.queries(SRV_NAME, RecordType::SRV) - asked;
    let orders = dns.orders(SRV_NAME, RecordType::SRV);
    let target_lookups: u64 = apps
        .iter()
        .map(|a| dns.queries(&target(a), RecordType::A) + dns.queries(&target(a), RecordType::AAAA))
        .sum();
    eprintln!(
        "shuffled answers: {answers} SRV answers ({orders} record orders served in all), 2 mappings of \
         {KEYS} keys compared, table rebuilds {rebuilt} -> {}, target address lookups with glue: \
         {target_lookups}",
        rebuilds(admin).await
    );
    assert!(answers >= 6, "{answers}");
    assert!(orders >= 3, "answers in {orders} orders only");
    assert_eq!(
        rebuilds(admin).await,
        rebuilt,
        "an unchanged set rebuilt the table"
    );
    assert_eq!(last_rebuild(&pool_status(admin).await), last);
    assert_eq!(target_lookups, 0, "the glue records were not used");
}

// ---------------------------------------------------------------------------
// 4. Failures
// ---------------------------------------------------------------------------

/// SERVFAIL, NXDOMAIN and silence, each for longer than `empty_grace`:
/// the backends stay, keys stay, requests are served, and the metric
/// counts each kind; once DNS answers again with the same records, still
/// nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_lookups_keep_the_backends_and_move_nothing() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 3).await;
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();
    let want = names_of(&all);
    until_names(admin, &want).await;
    let first = mapping(admin).await;
    let rebuilt = rebuilds(admin).await;

    for (answer, result) in [
        (Answer::ServFail, "servfail"),
        (Answer::NxDomain, "nxdomain"),
        (Answer::Silent, "timeout"),
    ] {
        let since = lookups(admin).await;
        let started = Instant::now();
        dns.set_answer(answer);
        until_lookups(admin, result, &since, 1).await;
        let first_seen = started.elapsed();
        // Longer than empty_grace (1 s): a failure taken for an empty
        // answer would have emptied the pool by now.
        let grace = Duration::from_millis(1_300);
        if let Some(left) = grace.checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        let counts = lookups(admin).await;
        eprintln!(
            "{result}: first counted after {first_seen:?}; lookups by result after {:?}: {counts:?}",
            started.elapsed()
        );
        assert_eq!(names(admin).await, want, "{result} changed the backends");
        assert_eq!(mapping(admin).await, first, "{result} moved keys");
        assert_eq!(answered_by(web, 0..20).await.len(), 20);
        assert_eq!(rebuilds(admin).await, rebuilt, "{result} rebuilt the table");
        assert_eq!(counts.get("empty"), None, "{result} counted as empty");
        dns.set_answer(Answer::Zone);
        // Back to answers before the next kind of failure.
        let since = lookups(admin).await;
        until_lookups(admin, "ok", &since, 1).await;
    }
    let since = lookups(admin).await;
    until_lookups(admin, "ok", &since, 2).await;
    assert_eq!(names(admin).await, want);
    assert_eq!(mapping(admin).await, first, "the recovery moved keys");
    assert_eq!(
        rebuilds(admin).await,
        rebuilt,
        "the recovery rebuilt the table"
    );
    eprintln!(
        "failures: lookups by result at the end: {:?}",
        lookups(admin).await
    );
}

// ---------------------------------------------------------------------------
// 5. Empty answers
// ---------------------------------------------------------------------------

/// An empty NOERROR is not applied within `empty_grace` (2 s): backends
/// and keys stay. Once it has lasted that long the pool empties (`503`);
/// when the records come back every key maps as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_applies_only_after_the_grace_period_and_records_bring_every_key_back() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 3).await;
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    // A grace of 2 s, to leave the check within it time on a busy machine.
    let text = srv_config(&dns, "", "").replace("empty_grace = \"1s\"", "empty_grace = \"2s\"");
    assert!(text.contains("empty_grace = \"2s\""));
    let proxy = start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();
    let want = names_of(&all);
    until_names(admin, &want).await;
    let first = mapping(admin).await;

    let since = lookups(admin).await;
    let started = Instant::now();
    dns.set_answer(Answer::Empty);
    until_lookups(admin, "empty", &since, 1).await;
    // Within the grace period: nothing changed.
    let names_within = names(admin).await;
    let map_within = mapping(admin).await;
    let within = started.elapsed();
    eprintln!(
        "empty: {} of {KEYS} keys moved {within:?} into the empty spell",
        moved(&first, &map_within).len()
    );
    assert!(
        within < Duration::from_secs(2),
        "the check took {within:?}: too slow to be within the grace period"
    );
    assert_eq!(names_within, want, "applied before empty_grace");
    assert_eq!(map_within, first, "keys moved before empty_grace");

    until_names(admin, &[]).await;
    let applied_after = started.elapsed();
    eprintln!("empty: applied {applied_after:?} after the answers became empty (grace 2 s)");
    assert!(applied_after >= Duration::from_secs(2), "{applied_after:?}");
    assert!(lookups(admin).await["empty"] >= 2);
    let reply = Client::connect(web)
        .await
        .get("/", &[("x-key", "user-0")])
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());

    dns.set_answer(Answer::Zone);
    let back = until_names(admin, &want).await;
    eprintln!("empty: records back, the pool refilled in {back:?}");
    assert_eq!(mapping(admin).await, first, "keys not back where they were");
    assert_eq!(answered_by(web, 0..10).await.len(), 10);
}

// ---------------------------------------------------------------------------
// 6. probe_first
// ---------------------------------------------------------------------------

/// With `probe_first = true` a newly discovered backend whose health
/// endpoint fails is listed unhealthy from the start and takes no request;
/// once its probes pass it takes its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_probe_first_a_new_backend_takes_no_traffic_until_its_probes_pass() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 3).await;
    let two: Vec<&TestBackend> = apps[..2].iter().collect();
    publish(&dns, &two);
    let proxy = start_proxy(&srv_config(&dns, "", ", probe_first = true")).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();
    until_names(admin, &names_of(&two)).await;
    until_healthy_count(&proxy.pool_named("api").unwrap(), 2).await;

    let newcomer = &apps[2];
    newcomer.set_health(false);
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    until_names(admin, &names_of(&all)).await;
    let pool = pool_status(admin).await;
    let first_sight = &backends(&pool)[&srv_name(newcomer)];
    assert_eq!(first_sight["healthy"], false, "{first_sight}");

    let probes = newcomer.probes();
    bounded(async {
        while newcomer.probes() < probes + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let answered = answered_by(web, 0..300).await;
    let map = mapping(admin).await;
    eprintln!(
        "probe_first: {} failed probes later, {} of 300 requests and {} of {KEYS} keys \
         on the unprobed backend",
        newcomer.probes() - probes,
        newcomer.count(),
        keys_on(&map, &srv_name(newcomer))
    );
    assert_eq!(newcomer.count(), 0);
    assert!(answered.iter().all(|b| *b != newcomer.name));
    assert_eq!(keys_on(&map, &srv_name(newcomer)), 0);
    assert_eq!(
        backends(&pool_status(admin).await)[&srv_name(newcomer)]["healthy"],
        false
    );

    newcomer.set_health(true);
    until_healthy_count(&proxy.pool_named("api").unwrap(), 3).await;
    answered_by(web, 0..300).await;
    assert!(newcomer.count() > 0, "healthy, and still no request");
}

/// Without `probe_first` a newly discovered backend starts healthy: listed
/// so when it first appears, with keys of its own, even one whose probes
/// are about to fail (two failures take it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_probe_first_a_new_backend_starts_healthy() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 3).await;
    let two: Vec<&TestBackend> = apps[..2].iter().collect();
    publish(&dns, &two);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    until_names(admin, &names_of(&two)).await;

    let newcomer = &apps[2];
    newcomer.set_health(false);
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    until_names(admin, &names_of(&all)).await;
    let pool = pool_status(admin).await;
    let first_sight = &backends(&pool)[&srv_name(newcomer)];
    assert_eq!(first_sight["healthy"], true, "{first_sight}");
    assert!(
        first_sight["share"].as_f64().unwrap() > 0.2,
        "{first_sight}"
    );
    // Its failing probes then take it down.
    until_healthy_count(&proxy.pool_named("api").unwrap(), 2).await;
}

// ---------------------------------------------------------------------------
// 7. Three instances
// ---------------------------------------------------------------------------

/// Three proxies with the same config asking the same DNS server map every
/// key to the same backend, before and after a scale event (one backend
/// leaves, a new one comes), once each has seen the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_that_ask_the_same_dns_map_every_key_alike() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 5).await;
    let four: Vec<&TestBackend> = apps[..4].iter().collect();
    publish(&dns, &four);
    let text = srv_config(&dns, "", "");
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(start_proxy(&text).await);
    }
    let admins: Vec<SocketAddr> = proxies.iter().map(|p| p.admin_addr().unwrap()).collect();

    let mut maps = Vec::new();
    for &admin in &admins {
        until_names(admin, &names_of(&four)).await;
        maps.push(mapping(admin).await);
    }
    assert_eq!(maps[0], maps[1]);
    assert_eq!(maps[0], maps[2]);

    let after: Vec<&TestBackend> = [0, 2, 3, 4].iter().map(|&i| &apps[i]).collect();
    publish(&dns, &after);
    let mut scaled = Vec::new();
    for &admin in &admins {
        until_names(admin, &names_of(&after)).await;
        scaled.push(mapping(admin).await);
    }
    eprintln!(
        "three instances: identical maps of {KEYS} keys before and after app-2 left and app-5 \
         came; {} keys moved",
        moved(&maps[0], &scaled[0]).len()
    );
    assert_eq!(scaled[0], scaled[1]);
    assert_eq!(scaled[0], scaled[2]);
}

// ---------------------------------------------------------------------------
// 8. A/AAAA
// ---------------------------------------------------------------------------

/// `dns = "host:port"`: one backend per A/AAAA address, named
/// `address:port`, at that address; the answer order does not matter, and
/// requests land where `/lookup` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_give_one_backend_per_address() {
    let dns = DnsServer::start().await;
    let first = TestBackend::start_at("a-1", SocketAddr::from(([127, 0, 53, 1], 0))).await;
    let port = first.addr.port();
    let mut apps = vec![first];
    for i in 2..=3 {
        let at = SocketAddr::from(([127, 0, 53, i], port));
        apps.push(TestBackend::start_at(&format!("a-{i}"), at).await);
    }
    // IPv6 loopback, where the machine has it.
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    if std::net::TcpListener::bind(v6).is_ok() {
        apps.push(TestBackend::start_at("a-6", v6).await);
    } else {
        eprintln!("A/AAAA: no IPv6 loopback here: A records only");
    }
    dns.set_host(HOST_NAME, apps.iter().map(|a| a.addr.ip()).collect());
    let proxy = start_proxy(&config(dns.addr, &format!("{HOST_NAME}:{port}"), "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();
    let mut want: Vec<String> = apps.iter().map(|a| a.addr.to_string()).collect();
    want.sort();
    until_names(admin, &want).await;
    let pool = pool_status(admin).await;
    for app in &apps {
        let backend = &backends(&pool)[&app.addr.to_string()];
        assert_eq!(backend["url"], format!("http://{}/", app.addr), "{backend}");
    }
    let map = mapping(admin).await;
    let answered = answered_by(web, 0..100).await;
    for i in 0..100 {
        let app = apps.iter().find(|a| a.addr.to_string() == map[i]).unwrap();
        assert_eq!(answered[i], app.name, "user-{i}");
    }
    let rebuilt = rebuilds(admin).await;
    let since = lookups(admin).await;
    until_lookups(admin, "ok", &since, 3).await;
    assert_eq!(
        rebuilds(admin).await,
        rebuilt,
        "the answer order rebuilt the table"
    );
    assert_eq!(mapping(admin).await, map);
    eprintln!("A/AAAA: backends {want:?}; 3 reordered answers moved nothing");

    // One address leaves.
    let left: Vec<IpAddr> = apps
        .iter()
        .filter(|a| a.name != "a-2")
        .map(|a| a.addr.ip())
        .collect();
    dns.set_host(HOST_NAME, left);
    want.retain(|n| !n.starts_with("127.0.53.2:"));
    until_names(admin, &want).await;
}

// ---------------------------------------------------------------------------
// 9. TTLs
// ---------------------------------------------------------------------------

/// The next lookup is due at the answer's TTL clamped to `[min_interval,
/// max_interval]` (100 to 300 ms here): a TTL of an hour is looked up
/// again every 300 ms, a TTL of 0 every 100 ms, not in a loop. (A rate is
/// measured over a fixed window: the sleep is the measurement.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_ttl_is_clamped_to_the_lookup_intervals() {
    const WINDOW: Duration = Duration::from_millis(1_500);
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 2).await;
    let all: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &all);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    until_names(admin, &names_of(&all)).await;
    // (TTL, fewest and most lookups in the window.)
    for (ttl, fewest, most) in [(3_600, 2, 6), (0, 7, 16)] {
        dns.set_ttl(ttl);
        // The lookup that reads the new TTL.
        let since = lookups(admin).await;
        until_lookups(admin, "ok", &since, 1).await;
        let before = dns.queries(SRV_NAME, RecordType::SRV);
        tokio::time::sleep(WINDOW).await;
        let asked = dns.queries(SRV_NAME, RecordType::SRV) - before;
        eprintln!("TTL {ttl} s: {asked} SRV lookups in {WINDOW:?}");
        assert!(
            (fewest..=most).contains(&asked),
            "TTL {ttl}: {asked} lookups in {WINDOW:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 10. How long a change takes
// ---------------------------------------------------------------------------

/// From the moment the DNS answer changes to the new set in `/status`,
/// with `max_interval = 300ms` and a TTL of 1 s: well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_change_reaches_status_in_well_under_a_second() {
    let dns = DnsServer::start().await;
    let apps = start_apps(&dns, 4).await;
    let three: Vec<&TestBackend> = apps[..3].iter().collect();
    let four: Vec<&TestBackend> = apps.iter().collect();
    publish(&dns, &three);
    let proxy = start_proxy(&srv_config(&dns, "", "")).await;
    let admin = proxy.admin_addr().unwrap();
    until_names(admin, &names_of(&three)).await;
    let mut latencies = Vec::new();
    for round in 0..6 {
        let set = if round % 2 == 0 { &four } else { &three };
        let want = names_of(set);
        let changed = Instant::now();
        publish(&dns, set);
        until_names(admin, &want).await;
        latencies.push(changed.elapsed());
    }
    latencies.sort();
    eprintln!(
        "change latency (DNS answer changed -> new set in /status), 6 changes: {latencies:?}; \
         median {:?}, max {:?}",
        latencies[3], latencies[5]
    );
    assert!(latencies[3] < Duration::from_secs(1), "{latencies:?}");
    assert!(latencies[5] < Duration::from_secs(2), "{latencies:?}");
}

// ---------------------------------------------------------------------------
// 11. dnsmasq
// ---------------------------------------------------------------------------

/// The dnsmasq binary, if installed.
fn dnsmasq() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("dnsmasq"))
        .find(|file| file.is_file())
}

/// A dnsmasq process, killed when dropped.
struct Dnsmasq(Child);

impl Dnsmasq {
    /// Starts `binary` in the foreground with `conf`, its messages in
    /// `log`; fails the test if it exits at once (a bad config, a port
    /// taken).
    async fn start(
        binary: &std::path::Path,
        conf: &std::path::Path,
        log: &std::path::Path,
    ) -> Dnsmasq {
        let child = Command::new(binary)
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Dnsmasq(child);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = server.0.try_wait().unwrap() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            panic!("dnsmasq exited at once ({status}): {said}");
        }
        server
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq's config: a server on `port` with one SRV record per app
/// (`srv-host`) and its A record (`host-record`), TTL 1 s.
fn dnsmasq_conf(port: u16, apps: &[&TestBackend]) -> String {
    let mut conf = format!(
        "no-resolv\nno-hosts\nport={port}\nlisten-address=127.0.0.1\nbind-interfaces\n\
         local-ttl=1\npid-file=\n"
    );
    for app in apps {
        conf += &format!(
            "srv-host={SRV_NAME},{},{},0,1\nhost-record={},127.0.0.1\n",
            target(app),
            app.addr.port(),
            target(app)
        );
    }
    conf
}

/// A port free for both UDP and TCP on 127.0.0.1, for dnsmasq.
fn free_port() -> u16 {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// Real DNS software: dnsmasq serves three SRV records; the proxy finds
/// the backends and requests reach them. dnsmasq restarted with one record
/// fewer moves only that backend's keys (ring hash, whose removals move
/// exactly the removed backend's keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsmasq_serves_the_srv_records_and_a_restart_with_one_fewer_moves_only_its_keys() {
    let Some(binary) = dnsmasq() else {
        eprintln!("SKIP: dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    let mut apps = Vec::new();
    for i in 1..=3 {
        apps.push(TestBackend::start(&format!("app-{i}")).await);
    }
    let all: Vec<&TestBackend> = apps.iter().collect();
    let dir = TempDir::new("dnsmasq");
    let port = free_port();
    let conf = dir.write("dnsmasq.conf", &dnsmasq_conf(port, &all));
    let log = dir.write("dnsmasq.log", "");
    let mut server = Dnsmasq::start(&binary, &conf, &log).await;
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let proxy = start_proxy(&config(dns, SRV_NAME, "algorithm = \"maglev\"\n", "")).await;
    let admin = proxy.admin_addr().unwrap();
    let web = proxy.listener_addr("web").unwrap();
    let found = until_names(admin, &names_of(&all)).await;
    eprintln!("dnsmasq: the proxy found the 3 backends {found:?} after it started");
    let before = mapping(admin).await;
    let answered = answered_by(web, 0..100).await;
    for i in 0..100 {
        let app = apps.iter().find(|a| srv_name(a) == before[i]).unwrap();
        assert_eq!(answered[i], app.name, "user-{i}");
    }
    for app in &apps {
        assert!(app.count() > 0, "{} got none of 100 keys", app.name);
    }

    drop(server);
    let two: Vec<&TestBackend> = [&apps[0], &apps[2]].into_iter().collect();
    dir.write("dnsmasq.conf", &dnsmasq_conf(port, &two));
    server = Dnsmasq::start(&binary, &conf, &log).await;
    until_names(admin, &names_of(&two)).await;
    let after = mapping(admin).await;
    let gone = srv_name(&apps[1]);
    let keys = moved(&before, &after);
    eprintln!(
        "dnsmasq: restarted without {gone}: {} of {KEYS} keys moved, {} of them were on it; lookups {:?}",
        keys.len(),
        keys.iter().filter(|&&i| before[i] == gone).count(),
        lookups(admin).await
    );
    assert!(keys.iter().all(|&i| before[i] == gone));
    assert_eq!(keys.len(), keys_on(&before, &gone));
    drop(server);
}
