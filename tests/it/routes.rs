//! Listeners, pools and routes through the real proxy: a table of requests
//! that each land in exactly the pool the routing rules name (or get `404`),
//! each pool's key and algorithm applied to its own traffic only, health
//! that belongs to a (pool, backend) pair and not to an address, `/lookup`
//! per pool against real requests, reloads under load that add, change and
//! remove pools without failing a request, and metrics and `/status` grouped
//! by pool.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::common::*;

/// The admin endpoint on any free port.
const ADMIN: &str = "[admin]\naddress = \"127.0.0.1:0\"\n";

/// Probes an hour apart: in the tests that are not about health, health
/// changes only when a test makes it change.
const NO_PROBES: &str =
    "health_check = { path = \"/health\", interval = \"1h\", timeout = \"1s\" }\n";

// ---------------------------------------------------------------------------
// Config text
// ---------------------------------------------------------------------------

/// A `[[pools]]` entry: `settings` are its own lines (algorithm, key,
/// health_check...), then its backends under their own names.
fn pool_entry<'b>(
    name: &str,
    settings: &str,
    backends: impl IntoIterator<Item = &'b TestBackend>,
) -> String {
    let members: Vec<String> = backends
        .into_iter()
        .map(|b| format!("{{ name = \"{}\", url = \"http://{}\" }}", b.name, b.addr))
        .collect();
    format!(
        "[[pools]]\nname = \"{name}\"\n{settings}backends = [{}]\n",
        members.join(", ")
    )
}

/// A `[[listeners]]` entry on any free port.
fn listener_entry(name: &str, default_pool: Option<&str>) -> String {
    let pool = default_pool.map_or_else(String::new, |p| format!("pool = \"{p}\"\n"));
    format!("[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n{pool}")
}

/// The backends of the three pools of [`three_pools`].
struct ThreePools {
    api: Vec<TestBackend>,
    ws: Vec<TestBackend>,
    static_: Vec<TestBackend>,
}

impl ThreePools {
    async fn start() -> ThreePools {
        let mut api = Vec::new();
        for name in ["api-1", "api-2", "api-3"] {
            api.push(TestBackend::start(name).await);
        }
        let mut ws = Vec::new();
        for name in ["ws-1", "ws-2"] {
            ws.push(TestBackend::start(name).await);
        }
        let mut static_ = Vec::new();
        for name in ["static-1", "static-2"] {
            static_.push(TestBackend::start(name).await);
        }
        ThreePools { api, ws, static_ }
    }

    fn all(&self) -> impl Iterator<Item = &TestBackend> {
        self.api.iter().chain(&self.ws).chain(&self.static_)
    }

    /// The pool a backend name belongs to.
    fn pool_of(&self, backend: &str) -> Option<&'static str> {
        let has = |list: &[TestBackend]| list.iter().any(|b| b.name == backend);
        if has(&self.api) {
            Some("api")
        } else if has(&self.ws) {
            Some("ws")
        } else if has(&self.static_) {
            Some("static")
        } else {
            None
        }
    }

    fn named(&self, backend: &str) -> &TestBackend {
        self.all().find(|b| b.name == backend).unwrap()
    }

    fn total(&self) -> u64 {
        self.all().map(TestBackend::count).sum()
    }

    /// Three pools on two listeners: `api` (Maglev by cookie `sid`), `ws`
    /// (ring hash by URL), `static` (round robin); listener `internal`
    /// sends what matches no route to `static`, `web` answers it `404`.
    fn config(&self) -> String {
        let mut text = String::from(ADMIN);
        text += &listener_entry("web", None);
        text += &listener_entry("internal", Some("static"));
        text += r#"
# The exact host: two prefixes, one nested in the other.
[[routes]]
host = "shop.example.com"
path_prefix = "/api"
pool = "api"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/v2"
pool = "ws"
# A suffix, and a longer suffix inside it.
[[routes]]
host = "*.example.com"
pool = "static"
[[routes]]
host = "*.eu.example.com"
path_prefix = "/ws"
pool = "ws"
# Any host.
[[routes]]
path_prefix = "/api"
strip_prefix = true
pool = "api"
[[routes]]
path_prefix = "/ws"
pool = "ws"
[[routes]]
path_prefix = "/stream"
strip_prefix = true
pool = "ws"
# One listener each.
[[routes]]
listener = "web"
path_prefix = "/shop"
pool = "api"
[[routes]]
listener = "internal"
host = "ops.example.com"
pool = "ws"
"#;
        let api = format!("algorithm = \"maglev\"\nkey = \"cookie:sid\"\n{NO_PROBES}");
        let ws = format!("algorithm = \"ring_hash\"\nkey = \"url\"\n{NO_PROBES}");
        let static_ = format!("algorithm = \"round_robin\"\n{NO_PROBES}");
        text += &pool_entry("api", &api, &self.api);
        text += &pool_entry("ws", &ws, &self.ws);
        text += &pool_entry("static", &static_, &self.static_);
        text
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `GET path` with `Host: host` and extra headers.
async fn get_at(client: &mut Client, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send(request.body(full("")).unwrap()).await
}

/// A `GET` to the admin endpoint.
async fn admin_get(admin: SocketAddr, target: &str) -> Reply {
    Client::connect(admin).await.get(target, &[]).await
}

/// A JSON answer of the admin endpoint, with its status.
async fn admin_json(admin: SocketAddr, target: &str) -> (StatusCode, Value) {
    json_of(admin_get(admin, target).await, target)
}

/// `reply`'s JSON body, with its status.
fn json_of(reply: Reply, target: &str) -> (StatusCode, Value) {
    let value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {}", reply.text()));
    (reply.status, value)
}

/// The backend `/lookup?pool=<pool>&<query>` names, asked over `admin`, a
/// keep-alive connection to the admin endpoint.
async fn lookup(admin: &mut Client, pool: &str, query: &str) -> String {
    let target = format!("/lookup?pool={pool}&{query}");
    let (status, answer) = json_of(admin.get(&target, &[]).await, &target);
    assert_eq!(status, 200, "{pool} {query}: {answer}");
    assert_eq!(answer["pool"], pool, "{answer}");
    answer["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("{pool} {query}: {answer}"))
        .to_owned()
}

/// `affinity_requests_total` from a Prometheus text, by (pool, backend,
/// code).
fn requests_total(metrics: &str) -> BTreeMap<(String, String, String), f64> {
    let mut samples = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("affinity_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let mut by_name = HashMap::new();
        for pair in labels.split(',') {
            let (name, quoted) = pair.split_once('=').unwrap();
            by_name.insert(name, quoted.trim_matches('"').to_owned());
        }
        let label = |name: &str| {
            by_name
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{line}"))
        };
        samples.insert(
            (label("pool"), label("backend"), label("code")),
            value.trim().parse().unwrap(),
        );
    }
    samples
}

// ---------------------------------------------------------------------------
// 1. The routing table
// ---------------------------------------------------------------------------

/// What a row of the routing table expects.
#[derive(Debug, Clone, Copy)]
enum Lands {
    /// `200` from a backend of this pool.
    In(&'static str),
    /// `200` from a backend of this pool, which saw this request target.
    As(&'static str, &'static str),
    /// The proxy's `404`, no backend reached.
    NotFound,
}

use Lands::{As, In, NotFound};

/// (listener, Host, request target) → where it lands.
const TABLE: &[(&str, &str, &str, Lands)] = &[
    // The exact host, its two nested prefixes, without stripping.
    ("web", "shop.example.com", "/api", As("api", "/api")),
    (
        "web",
        "shop.example.com",
        "/api/cart",
        As("api", "/api/cart"),
    ),
    ("web", "shop.example.com", "/api/v2", In("ws")),
    ("web", "shop.example.com", "/api/v2/items", In("ws")),
    // /api/v2x is not under /api/v2, but is under /api.
    ("web", "shop.example.com", "/api/v2x", In("api")),
    // Hosts without case, port or final dot.
    ("web", "SHOP.Example.COM:8080", "/api/cart", In("api")),
    ("web", "shop.example.com.", "/api", In("api")),
    ("web", "Shop.Example.Com.:443", "/api/v2", In("ws")),
    // Segment boundaries, and no fall-through from the exact host to the
    // suffix or the catch-all routes.
    ("web", "shop.example.com", "/apix", NotFound),
    ("web", "shop.example.com", "/", NotFound),
    ("web", "shop.example.com", "/ws", NotFound),
    // Suffixes: one label or more before it; the longest wins, and does not
    // fall through to the shorter one either.
    ("web", "www.example.com", "/anything", In("static")),
    ("web", "A.B.Example.com", "/x", In("static")),
    ("web", "x.eu.example.com", "/ws/chat", In("ws")),
    ("web", "x.eu.example.com", "/", NotFound),
    ("web", "eu.example.com", "/ws", In("static")),
    // A bare example.com matches no suffix: the routes without a host.
    ("web", "example.com", "/ws", In("ws")),
    ("web", "example.com", "/other", NotFound),
    // strip_prefix: the backend sees the rest, query included.
    (
        "web",
        "other.test",
        "/api/users?q=1",
        As("api", "/users?q=1"),
    ),
    ("web", "other.test", "/api", As("api", "/")),
    ("web", "other.test", "/apix", NotFound),
    ("web", "other.test", "/stream/k/1", As("ws", "/k/1")),
    // A route of one listener only.
    ("web", "other.test", "/shop/cart", As("api", "/shop/cart")),
    ("web", "other.test", "/shopping", NotFound),
    (
        "internal",
        "other.test",
        "/shop/cart",
        As("static", "/shop/cart"),
    ),
    ("web", "ops.example.com", "/x", In("static")),
    ("internal", "ops.example.com", "/x", In("ws")),
    // The listener's default pool takes what no route takes, even for a
    // host whose group has no matching prefix.
    ("internal", "other.test", "/nothing", In("static")),
    ("internal", "shop.example.com", "/", In("static")),
    ("internal", "x.eu.example.com", "/", In("static")),
    // Routes without a listener apply to both.
    ("internal", "shop.example.com", "/api/v2", In("ws")),
    ("internal", "other.test", "/api/users", As("api", "/users")),
];

/// Every row of a 32-row table of (listener, host, path) lands exactly as
/// the routing rules say: exact host, then the longest suffix, then any
/// host, never falling through; the longest prefix on a segment boundary;
/// hosts without case, port or final dot; listener-scoped routes and the
/// listener's default pool; and `strip_prefix` seen by the backend. A `404`
/// reaches no backend, a `200` exactly one, of the expected pool.
#[tokio::test]
async fn a_routing_table_of_twenty_requests_lands_exactly() {
    let pools = ThreePools::start().await;
    let proxy = start_proxy(&pools.config()).await;
    let mut web = Client::connect(proxy.listener_addr("web").unwrap()).await;
    let mut internal = Client::connect(proxy.listener_addr("internal").unwrap()).await;
    assert!(TABLE.len() >= 20);
    for &(listener, host, path, lands) in TABLE {
        let client = match listener {
            "web" => &mut web,
            _ => &mut internal,
        };
        let row = format!("{listener} {host} {path}");
        let before = pools.total();
        let reply = get_at(client, host, path, &[]).await;
        let reached = pools.total() - before;
        match lands {
            NotFound => {
                assert_eq!(reply.status, 404, "{row}: {}", reply.text());
                assert_eq!(reply.backend(), "", "{row}");
                assert_eq!(reached, 0, "{row}: a backend saw the request");
            }
            In(pool) | As(pool, _) => {
                assert_eq!(reply.status, 200, "{row}: {}", reply.text());
                assert_eq!(
                    pools.pool_of(reply.backend()),
                    Some(pool),
                    "{row}: {reply:?}"
                );
                assert_eq!(reached, 1, "{row}");
                if let As(_, target) = lands {
                    let seen = pools.named(reply.backend()).seen();
                    let last = seen.last().unwrap();
                    assert_eq!(last.uri.path_and_query().unwrap().as_str(), target, "{row}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Keys and algorithms per pool
// ---------------------------------------------------------------------------

/// How many of `replies` each backend answered; every reply a `200`.
fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        *counts.entry(reply.backend().to_owned()).or_default() += 1;
    }
    counts
}

/// Each pool hashes (or not) by its own settings: the Maglev pool by cookie
/// `sid` whatever the path, the ring by URL whatever the cookie, each pick
/// the one the hashing core predicts for the pool's config; the round-robin
/// pool spreads 20 identical requests 10 and 10.
#[tokio::test]
async fn each_pools_key_and_algorithm_apply_to_its_own_traffic() {
    let pools = ThreePools::start().await;
    let text = pools.config();
    let config = parse(&text);
    let api_order = fallback_orders(config.pool("api").unwrap());
    let ws_order = fallback_orders(config.pool("ws").unwrap());
    let proxy = start_proxy(&text).await;
    let mut client = Client::connect(proxy.listener_addr("web").unwrap()).await;
    let alice = [("cookie", "sid=alice")];

    let (mut api, mut ws, mut rr) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        api.push(get_at(&mut client, "shop.example.com", "/api/x", &alice).await);
        ws.push(get_at(&mut client, "other.test", "/ws/x", &alice).await);
        rr.push(get_at(&mut client, "www.example.com", "/x", &alice).await);
    }
    let alice_on = api_order(b"alice")[0].clone();
    let x_on = ws_order(b"/ws/x")[0].clone();
    assert_eq!(tally(&api), BTreeMap::from([(alice_on.clone(), 20)]));
    assert_eq!(tally(&ws), BTreeMap::from([(x_on.clone(), 20)]));
    assert_eq!(
        tally(&rr),
        BTreeMap::from([("static-1".to_owned(), 10), ("static-2".to_owned(), 10)])
    );

    // The cookie pool ignores the path, the URL pool ignores the cookie; and
    // each pool's own key does move its picks.
    let (mut by_path, mut by_cookie, mut api_keys, mut ws_keys) = (0, 0, Vec::new(), Vec::new());
    for i in 0..20 {
        let path = format!("/api/p/{i}");
        let reply = get_at(&mut client, "shop.example.com", &path, &alice).await;
        by_path += usize::from(reply.backend() == alice_on);
        let cookie = format!("sid=user-{i}");
        let reply = get_at(&mut client, "other.test", "/ws/x", &[("cookie", &cookie)]).await;
        by_cookie += usize::from(reply.backend() == x_on);

        let sid = format!("user-{i}");
        let reply = get_at(
            &mut client,
            "shop.example.com",
            "/api/x",
            &[("cookie", &format!("sid={sid}"))],
        )
        .await;
        assert_eq!(reply.backend(), api_order(sid.as_bytes())[0], "sid {sid}");
        api_keys.push(reply.backend().to_owned());
        let path = format!("/ws/k/{i}");
        let reply = get_at(&mut client, "other.test", &path, &alice).await;
        assert_eq!(reply.backend(), ws_order(path.as_bytes())[0], "{path}");
        ws_keys.push(reply.backend().to_owned());
    }
    assert_eq!((by_path, by_cookie), (20, 20));
    api_keys.sort();
    api_keys.dedup();
    ws_keys.sort();
    ws_keys.dedup();
    assert!(api_keys.len() >= 2, "20 sids all on {api_keys:?}");
    assert_eq!(ws_keys.len(), 2, "20 paths all on {ws_keys:?}");
}

// ---------------------------------------------------------------------------
// 3. Health per (pool, backend)
// ---------------------------------------------------------------------------

/// Where each of `keys` users goes, sent as `X-User` to `path`.
async fn mapping(client: &mut Client, path: &str, keys: usize) -> Vec<String> {
    let mut map = Vec::with_capacity(keys);
    for i in 0..keys {
        let user = format!("user-{i}");
        let reply = get_at(client, "any.test", path, &[("x-user", &user)]).await;
        assert_eq!(reply.status, 200, "{path} {user}: {}", reply.text());
        map.push(reply.backend().to_owned());
    }
    map
}

/// The requests with target `path` a backend has seen (its probes, for a
/// probe path other than [`HEALTH_PATH`]).
fn seen_at(backend: &TestBackend, path: &str) -> usize {
    backend
        .seen()
        .iter()
        .filter(|s| s.uri.path() == path)
        .count()
}

/// One backend, `shared`, is a member of two hash pools under the same
/// name. Pool `a` probes `/health`, which it starts failing; pool `b` probes
/// `/alive`, which it keeps answering. Pool `a` marks it down and moves
/// exactly its keys; pool `b` keeps it healthy and moves none of 100 keys:
/// health belongs to the (pool, backend) pair, not to the name or address.
#[tokio::test]
async fn killing_a_backend_in_one_pool_moves_no_key_in_another() {
    const KEYS: usize = 100;
    let a = [
        TestBackend::start("a-1").await,
        TestBackend::start("a-2").await,
    ];
    let b = [
        TestBackend::start("b-1").await,
        TestBackend::start("b-2").await,
    ];
    let shared = TestBackend::start("shared").await;
    let checks = |path: &str| {
        format!(
            "key = \"header:x-user\"\nhealth_check = {{ path = \"{path}\", interval = \"200ms\", \
             timeout = \"150ms\", healthy_threshold = 1, unhealthy_threshold = 2 }}\n"
        )
    };
    let mut text = String::from(ADMIN);
    text += &listener_entry("web", None);
    text += "[[routes]]\npath_prefix = \"/a\"\npool = \"a\"\n";
    text += "[[routes]]\npath_prefix = \"/b\"\npool = \"b\"\n";
    let a_settings = format!("algorithm = \"maglev\"\n{}", checks("/health"));
    let b_settings = format!("algorithm = \"ring_hash\"\n{}", checks("/alive"));
    text += &pool_entry("a", &a_settings, [&a[0], &shared, &a[1]]);
    text += &pool_entry("b", &b_settings, [&b[0], &shared, &b[1]]);
    let proxy = start_proxy(&text).await;
    let (pool_a, pool_b) = (
        proxy.pool_named("a").unwrap(),
        proxy.pool_named("b").unwrap(),
    );
    let mut client = Client::connect(proxy.local_addr()).await;
    let a_before = mapping(&mut client, "/a/r", KEYS).await;
    let b_before = mapping(&mut client, "/b/r", KEYS).await;
    let on_shared = |map: &[String]| map.iter().filter(|b| *b == "shared").count();
    assert!(on_shared(&a_before) > 0 && on_shared(&b_before) > 0);

    shared.set_health(false);
    until_healthy_count(&pool_a, 2).await;
    // Pool b goes on probing it, and it goes on passing pool b's probe.
    let probed = seen_at(&shared, "/alive");
    bounded(async {
        while seen_at(&shared, "/alive") < probed + 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let b_snapshot = pool_b.snapshot();
    assert_eq!(b_snapshot.healthy_count(), 3);
    assert!(b_snapshot.backend("shared").unwrap().is_healthy());
    assert!(!pool_a.snapshot().backend("shared").unwrap().is_healthy());

    let a_after = mapping(&mut client, "/a/r", KEYS).await;
    let b_after = mapping(&mut client, "/b/r", KEYS).await;
    assert_eq!(b_after, b_before, "pool b moved keys");
    for (i, (before, after)) in a_before.iter().zip(&a_after).enumerate() {
        if before == "shared" {
            assert_ne!(after, "shared", "user-{i} still on the down backend");
        } else {
            assert_eq!(after, before, "user-{i} moved though {before} is up");
        }
    }
}

// ---------------------------------------------------------------------------
// 4. /lookup per pool
// ---------------------------------------------------------------------------

/// `value` as is, checked to need no percent-encoding in a query string
/// (the keys here are `[a-z0-9/-]`).
fn plain(value: &str) -> &str {
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-')
    );
    value
}

/// For 200 keys in each of two hash pools, `/lookup?pool=P` names the
/// backend that answered the real request: by cookie (`key=`) in the
/// Maglev pool, by URL (`url=`) in the ring; and through a `strip_prefix`
/// route, by the path the backend sees, which is what the ring hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_agrees_with_real_routing_in_each_hash_pool() {
    const KEYS: usize = 200;
    let pools = ThreePools::start().await;
    let proxy = start_proxy(&pools.config()).await;
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let mut client = Client::connect(proxy.listener_addr("web").unwrap()).await;
    let mut used: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..KEYS {
        let sid = format!("session-{i}");
        let cookie = format!("sid={sid}");
        let reply = get_at(
            &mut client,
            "shop.example.com",
            "/api/x",
            &[("cookie", &cookie)],
        )
        .await;
        assert_eq!(reply.status, 200);
        let looked = lookup(&mut admin, "api", &format!("key={}", plain(&sid))).await;
        assert_eq!(reply.backend(), looked, "sid {sid}");
        used.entry("api").or_default().push(looked);

        let path = format!("/ws/k/{i}");
        let reply = get_at(&mut client, "other.test", &path, &[]).await;
        assert_eq!(reply.status, 200);
        let looked = lookup(&mut admin, "ws", &format!("url={}", plain(&path))).await;
        assert_eq!(reply.backend(), looked, "{path}");
        used.entry("ws").or_default().push(looked);

        if i % 4 == 0 {
            let stripped = format!("/k/{i}");
            let reply = get_at(
                &mut client,
                "other.test",
                &format!("/stream{stripped}"),
                &[],
            )
            .await;
            let looked = lookup(&mut admin, "ws", &format!("url={stripped}")).await;
            assert_eq!(reply.backend(), looked, "/stream{stripped}");
        }
    }
    for (pool, backends) in &mut used {
        backends.sort();
        backends.dedup();
        assert!(backends.len() >= 2, "{pool}: 200 keys all on {backends:?}");
    }
}

// ---------------------------------------------------------------------------
// 5. Reloads under load
// ---------------------------------------------------------------------------

/// A body type for the load's own connections.
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// One keep-alive connection of the load: unlike [`Client`], a failure is
/// returned (and counted), not a panic.
async fn load_connection(proxy: SocketAddr) -> SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET path`: the status, the backend that answered and the body, or why
/// the exchange failed.
async fn try_get(
    sender: &mut SendRequest<Body>,
    path: &str,
) -> Result<(u16, String, Bytes), String> {
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let request = Request::get(path)
            .header("host", "load.test")
            .body(full(""))
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let backend = response
            .headers()
            .get("x-backend")
            .map_or_else(String::new, |v| v.to_str().unwrap().to_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, backend, body))
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// What the load may see, switched by the test around its reloads: a
/// request answered before the reload that changes its path started gets
/// the old answer; one sent after that reload returned, the new one; one
/// that overlaps it, either.
#[derive(Default)]
struct Phase {
    /// The reload that routes `/c` has started (`/c` is a `404` before).
    c_routing: AtomicBool,
    /// ... and returned.
    c_routed: AtomicBool,
    /// The reload that moves `/a` from pool `a` to pool `b` has started.
    a_moving: AtomicBool,
    /// ... and returned.
    a_moved: AtomicBool,
    stop: AtomicBool,
    /// Requests answered so far, by every client.
    done: AtomicU64,
}

/// Sends `/a/N`, `/b/N`, `/c/N`, `/k/N` in turn until stopped; returns how
/// many it sent and every failure: a transport error, a `5xx`, or an
/// answer that neither the routing before nor the one after an overlapping
/// reload gives (see [`Phase`]).
async fn load_client(proxy: SocketAddr, phase: Arc<Phase>, first: usize) -> (u64, Vec<String>) {
    let mut sender = load_connection(proxy).await;
    let (mut sent, mut failures) = (0, Vec::new());
    let mut i = first;
    while !phase.stop.load(Ordering::SeqCst) {
        let class = ["a", "b", "c", "k"][i % 4];
        let path = format!("/{class}/{i}");
        // A reload that had returned before the request was sent routed
        // it; one that had not started when its answer came back did not.
        let c_routed = phase.c_routed.load(Ordering::SeqCst);
        let a_moved = phase.a_moved.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let outcome = try_get(&mut sender, &path).await;
        let took = started.elapsed();
        let c_routing = phase.c_routing.load(Ordering::SeqCst);
        let a_moving = phase.a_moving.load(Ordering::SeqCst);
        sent += 1;
        i += 1;
        phase.done.fetch_add(1, Ordering::SeqCst);
        let (status, backend, body) = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                failures.push(format!("{path}: {error} after {took:?}"));
                sender = load_connection(proxy).await;
                continue;
            }
        };
        let pool = backend.split('-').next().unwrap_or("");
        let fine = match (status, class) {
            (404, "c") => !c_routed,
            (200, "c") => c_routing && pool == "c",
            (200, "a") => (pool == "a" && !a_moved) || (pool == "b" && a_moving),
            (200, _) => pool == class,
            _ => false,
        };
        if !fine {
            failures.push(format!(
                "{path}: {status} from {backend:?} after {took:?}: {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    (sent, failures)
}

/// Waits (bounded) until the load has answered `more` requests since
/// `since`; returns the new count.
async fn until_done(phase: &Phase, since: u64, more: u64) -> u64 {
    bounded(async {
        loop {
            let done = phase.done.load(Ordering::SeqCst);
            if done >= since + more {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Four keep-alive clients send to `/a`, `/b`, `/c` and `/k` while three
/// reloads add pool `c` (and its route), change pool `b` (a third backend,
/// ring hash to Maglev), and remove pool `a` (its route moved to `b`): no
/// request fails, `/c` answers from the reload that routes it, `/a` goes to
/// `b` from the last one, and the removed pool's probes stop. The pool no
/// reload changes (`k`) keeps its very snapshot throughout; `b` keeps its
/// snapshot while unchanged and its `Pool` when changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_that_adds_removes_and_changes_pools_fails_no_request() {
    const PHASE: u64 = 250;
    let mut started = HashMap::new();
    for name in ["a-1", "a-2", "b-1", "b-2", "b-3", "c-1", "k-1", "k-2"] {
        started.insert(name, TestBackend::start(name).await);
    }
    let backends = |names: &'static [&'static str]| names.iter().map(|n| &started[n]);
    // Probes run (they restart with a changed pool and stop with a removed
    // one) but are slow to mark a backend down, and connects may take a SYN
    // retransmit (1 s): on a busy host with many sockets in TIME_WAIT, a
    // loopback connect now and then does, and this test is about reloads.
    let checks = "health_check = { path = \"/health\", interval = \"200ms\", timeout = \"150ms\", \
                  healthy_threshold = 1, unhealthy_threshold = 5 }\n\
                  upstream = { connect_timeout = \"5s\" }\n";
    let route = |prefix: &str, pool: &str| {
        format!("[[routes]]\npath_prefix = \"{prefix}\"\npool = \"{pool}\"\n")
    };
    let config = |a: bool, c: bool, b_changed: bool| {
        let mut text = String::from(ADMIN);
        text += &listener_entry("web", None);
        text += &route("/a", if a { "a" } else { "b" });
        text += &route("/b", "b");
        text += &route("/k", "k");
        if c {
            text += &route("/c", "c");
        }
        if a {
            let settings = format!("algorithm = \"maglev\"\nkey = \"url\"\n{checks}");
            text += &pool_entry("a", &settings, backends(&["a-1", "a-2"]));
        }
        let (algorithm, b_members) = if b_changed {
            ("maglev", backends(&["b-1", "b-2", "b-3"]))
        } else {
            ("ring_hash", backends(&["b-1", "b-2"]))
        };
        let settings = format!("algorithm = \"{algorithm}\"\nkey = \"url\"\n{checks}");
        text += &pool_entry("b", &settings, b_members);
        if c {
            let settings = format!("algorithm = \"round_robin\"\n{checks}");
            text += &pool_entry("c", &settings, backends(&["c-1"]));
        }
        let settings = format!("algorithm = \"round_robin\"\n{checks}");
        text += &pool_entry("k", &settings, backends(&["k-1", "k-2"]));
        text
    };
    let proxy = start_proxy(&config(true, false, false)).await;
    let address = proxy.local_addr();
    let k_snapshot = proxy.pool_named("k").unwrap().snapshot();
    let b_pool = proxy.pool_named("b").unwrap();
    let b_snapshot = b_pool.snapshot();

    let phase = Arc::new(Phase::default());
    let mut clients = JoinSet::new();
    for n in 0..4 {
        clients.spawn(load_client(address, phase.clone(), n));
    }
    let mut done = until_done(&phase, 0, PHASE).await;

    // 1. Pool c and its route.
    phase.c_routing.store(true, Ordering::SeqCst);
    proxy
        .reload(parse(&config(true, true, false)))
        .await
        .unwrap();
    phase.c_routed.store(true, Ordering::SeqCst);
    assert!(Arc::ptr_eq(
        &b_snapshot,
        &proxy.pool_named("b").unwrap().snapshot()
    ));
    done = until_done(&phase, done, PHASE).await;

    // 2. Pool b: a third backend, another algorithm.
    proxy
        .reload(parse(&config(true, true, true)))
        .await
        .unwrap();
    let changed = proxy.pool_named("b").unwrap();
    assert!(
        Arc::ptr_eq(&b_pool, &changed),
        "a changed pool is the same pool"
    );
    let b_now = changed.snapshot();
    assert!(!Arc::ptr_eq(&b_snapshot, &b_now));
    assert_eq!(b_now.backends().len(), 3);
    assert_eq!(b_now.healthy_count(), 3);
    done = until_done(&phase, done, PHASE).await;

    // 3. Pool a removed, /a to pool b.
    phase.a_moving.store(true, Ordering::SeqCst);
    proxy
        .reload(parse(&config(false, true, true)))
        .await
        .unwrap();
    phase.a_moved.store(true, Ordering::SeqCst);
    assert!(proxy.pool_named("a").is_none());
    let a_probes: u64 = ["a-1", "a-2"].iter().map(|n| started[n].probes()).sum();
    until_done(&phase, done, PHASE).await;
    phase.stop.store(true, Ordering::SeqCst);

    let (mut sent, mut failures) = (0, Vec::new());
    while let Some(joined) = bounded(clients.join_next()).await {
        let (n, mut failed) = joined.unwrap();
        sent += n;
        failures.append(&mut failed);
    }
    let health = admin_get(proxy.admin_addr().unwrap(), "/metrics").await;
    let health: Vec<&str> = health
        .text()
        .lines()
        .filter(|l| {
            l.starts_with("affinity_health_transitions_total{")
                || l.starts_with("affinity_upstream_retries_total{")
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}; health transitions and retries: {health:?}",
        failures.len()
    );
    assert!(sent >= 4 * PHASE, "only {sent} requests");

    let mut client = Client::connect(address).await;
    for i in 0..20 {
        let reply = client.get(&format!("/a/after/{i}"), &[]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.backend().starts_with("b-"), "{reply:?}");
        let reply = client.get(&format!("/c/after/{i}"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "c-1"));
    }
    for name in ["a-1", "a-2"] {
        assert!(
            started[name].count() > 0,
            "{name} took no request before its pool went"
        );
    }
    assert!(Arc::ptr_eq(
        &k_snapshot,
        &proxy.pool_named("k").unwrap().snapshot()
    ));
    assert!(
        started["b-3"].count() > 0,
        "b's new backend took no request"
    );

    // The removed pool's probes have stopped (one may have been in flight):
    // b-1 is probed three more times meanwhile.
    let b_probes = started["b-1"].probes();
    bounded(async {
        while started["b-1"].probes() < b_probes + 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let a_later: u64 = ["a-1", "a-2"].iter().map(|n| started[n].probes()).sum();
    assert!(
        a_later <= a_probes + 2,
        "pool a still probes: {a_probes} then {a_later}"
    );
}

// ---------------------------------------------------------------------------
// 6. Metrics, /status, /lookup by pool
// ---------------------------------------------------------------------------

/// A pool in `/status`: name, algorithm, key, healthy count, backends.
type PoolLine<'a> = (&'a str, &'a str, Option<&'a str>, u64, Vec<&'a str>);

/// After requests to two pools and one unrouted request, the
/// `affinity_requests_total` samples are exactly those requests by pool,
/// backend and code (the `404` with `pool=""` and `backend=""`); `/status`
/// lists each pool with its algorithm, key and backends, the listeners with
/// their default pools and the routes; `/lookup` needs `pool=` with several
/// pools (`400`), knows no other pool (`404`) and answers per pool.
#[tokio::test]
async fn metrics_and_status_are_grouped_by_pool() {
    let pools = ThreePools::start().await;
    let text = pools.config();
    let config = parse(&text);
    let api_order = fallback_orders(config.pool("api").unwrap());
    let proxy = start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(proxy.listener_addr("web").unwrap()).await;
    let mut expected: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut count = |pool: &str, backend: &str, code: &str| {
        *expected
            .entry((pool.to_owned(), backend.to_owned(), code.to_owned()))
            .or_default() += 1.0;
    };
    for sid in ["alice", "bob", "carol"] {
        let cookie = format!("sid={sid}");
        let reply = get_at(
            &mut client,
            "shop.example.com",
            "/api/x",
            &[("cookie", &cookie)],
        )
        .await;
        assert_eq!(reply.status, 200);
        count("api", reply.backend(), "200");
    }
    for _ in 0..2 {
        let reply = get_at(&mut client, "www.example.com", "/x", &[]).await;
        assert_eq!(reply.status, 200);
        count("static", reply.backend(), "200");
    }
    let reply = get_at(&mut client, "shop.example.com", "/nowhere", &[]).await;
    assert_eq!(reply.status, 404);
    count("", "", "404");

    // A response is counted when its body has been sent: poll until all are.
    let samples = bounded(async {
        loop {
            let samples = requests_total(admin_get(admin, "/metrics").await.text());
            if samples.values().sum::<f64>() >= 6.0 {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(samples, expected);

    let (status, answer) = admin_json(admin, "/status").await;
    assert_eq!(status, 200);
    let listed: Vec<PoolLine<'_>> = answer["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["algorithm"].as_str().unwrap(),
                p["key"].as_str(),
                p["healthy_backends"].as_u64().unwrap(),
                p["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        assert_eq!(b["healthy"], true, "{b}");
                        b["name"].as_str().unwrap()
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{answer}");
    assert_eq!(
        listed[0],
        (
            "api",
            "maglev",
            Some("cookie:sid"),
            3,
            vec!["api-1", "api-2", "api-3"]
        )
    );
    assert_eq!(
        listed[1],
        ("ws", "ring_hash", Some("url"), 2, vec!["ws-1", "ws-2"])
    );
    assert_eq!(
        (listed[2].0, listed[2].1, listed[2].3, &listed[2].4),
        ("static", "round_robin", 2, &vec!["static-1", "static-2"])
    );
    assert!(
        answer.get("backends").is_none(),
        "no top-level pool with several: {answer}"
    );
    let listeners: Vec<(&str, &Value)> = answer["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), &l["pool"]))
        .collect();
    assert_eq!(
        listeners,
        [("web", &Value::Null), ("internal", &Value::from("static"))]
    );
    let routes = answer["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 9, "{answer}");
    assert_eq!(routes[0]["host"], "shop.example.com");
    assert_eq!(routes[0]["pool"], "api");
    assert_eq!(routes[4]["strip_prefix"], true);
    assert_eq!(routes[7]["listener"], "web");

    let (status, error) = admin_json(admin, "/lookup?key=alice").await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("pool="),
        "{error}"
    );
    let (status, error) = admin_json(admin, "/lookup?pool=nope&key=alice").await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = admin_json(admin, "/lookup?pool=static&key=alice").await;
    assert_eq!(status, 409, "{error}");
    let mut keep_alive = Client::connect(admin).await;
    assert_eq!(
        lookup(&mut keep_alive, "api", "key=alice").await,
        api_order(b"alice")[0]
    );
}

// ---------------------------------------------------------------------------
// Targets that are not plain origin-form paths
// ---------------------------------------------------------------------------

/// Sends `request` as raw bytes on a new connection to `proxy`.
async fn raw_exchange(proxy: SocketAddr, request: &str) -> RawResponse {
    let mut connection = RawConnection::connect(proxy).await;
    connection.send(request.as_bytes()).await.unwrap();
    connection.response().await.expect("a response")
}

/// A single-pool config means one catch-all route: a server-wide
/// `OPTIONS *` (RFC 9110 §9.3.7) is routed as `/` and reaches the pool as
/// it was sent.
#[tokio::test]
async fn an_options_asterisk_request_still_reaches_the_only_pool() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let response = raw_exchange(proxy.local_addr(), "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-backend"), Some("server-1"));
    let seen = backends[0].seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.to_string()),
        ("OPTIONS", "*".to_owned())
    );
}

/// RFC 9112 §3.2.2: a server that receives an absolute-form target MUST
/// ignore `Host` and use the target's authority: the proxy routes by it.
#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority_not_by_host() {
    let pools = ThreePools::start().await;
    let proxy = start_proxy(&pools.config()).await;
    let web = proxy.listener_addr("web").unwrap();
    // shop.example.com has no /ws route, and does not fall through.
    let response = raw_exchange(
        web,
        "GET http://shop.example.com/ws HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 404, "{}", response.head);
    let response = raw_exchange(
        web,
        "GET http://other.test/ws/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        pools.pool_of(response.header("x-backend").unwrap()),
        Some("ws")
    );
}

/// A path with dot segments is routed, and forwarded, as a backend that
/// resolves them would see it: `/api/../ws/x` is `/ws/x`, so a prefix
/// route cannot be stepped out of; one that climbs above the root is `400`.
#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_climbing_above_the_root_is_refused() {
    let pools = ThreePools::start().await;
    let proxy = start_proxy(&pools.config()).await;
    let web = proxy.listener_addr("web").unwrap();
    for (target, pool, seen) in [
        ("/api/../ws/x", "ws", "/ws/x"),
        ("/api/%2E%2e/ws/y?q=1", "ws", "/ws/y?q=1"),
        ("/ws/./z/.", "ws", "/ws/z/"),
        ("/ws/../api/users", "api", "/users"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: other.test\r\n\r\n");
        let response = raw_exchange(web, &request).await;
        assert_eq!(response.status, 200, "{target}: {}", response.head);
        let backend = response.header("x-backend").unwrap().to_owned();
        assert_eq!(pools.pool_of(&backend), Some(pool), "{target}");
        let all: Vec<&TestBackend> = pools
            .api
            .iter()
            .chain(&pools.ws)
            .chain(&pools.static_)
            .collect();
        let answered = all.iter().find(|b| b.name == backend).unwrap();
        let last = answered.seen().last().unwrap().uri.to_string();
        assert_eq!(last, seen, "{target}");
    }
    for target in ["/..", "/api/../../etc/passwd", "/%2e%2e/x"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: other.test\r\n\r\n");
        let response = raw_exchange(web, &request).await;
        assert_eq!(response.status, 400, "{target}: {}", response.head);
    }
}
