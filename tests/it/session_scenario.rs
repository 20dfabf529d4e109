//! The "sessions survive change" scenario, from a user's report: affinity
//! in front of four instances of a web app that keeps its sessions in
//! process memory. Killing the instance that holds a user's session logs
//! that user out once, which is expected; without pins, the user's key goes
//! back to the instance when it restarts (empty) and the user is logged out
//! a second time. With pinned sticky cookies the user stays where it moved,
//! and a drain moves nobody.
//!
//! The same phases run with `pin = true` and without, side by side, and the
//! sessions each phase lost are printed as a table.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{COOKIE, HeaderValue, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use affinity::balance::churn::churn;
use affinity::balance::hash::KeyHasher;
use affinity::balance::selector::{HashSelector, HashTable};
use affinity::listener::ProxyHandle;

use crate::common::*;

/// Users in the scenario, and again new users after the drain.
const USERS: usize = 20;
/// Pages each user reads per phase.
const PAGES: usize = 3;
/// Random session ids asked about with `/lookup` around the drain.
const LOOKUPS: usize = 1_000;

// ---------------------------------------------------------------------------
// The web app: sessions in process memory
// ---------------------------------------------------------------------------

/// One instance of a web app that keeps its sessions in memory, on a
/// plain HTTP/1.1 server. It answers, always with an `x-backend: NAME`
/// header:
/// * `GET /health`: `200` (the proxy's probes);
/// * `POST /login` (any method): a new random session token, remembered,
///   and `Set-Cookie: app=TOKEN`;
/// * any other path: `200` if the request's `app` cookie is a session it
///   remembers, else `401`.
///
/// [`AppBackend::stop`] closes the listener and every connection and drops
/// the sessions; [`AppBackend::start`] on the same address is a restarted
/// instance that knows none.
struct AppBackend {
    name: String,
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

/// What an instance remembers: its name and the sessions it issued.
struct App {
    name: String,
    sessions: Mutex<HashSet<String>>,
}

impl AppBackend {
    /// Starts an instance called `name` listening on `addr` (port 0: any).
    async fn start(name: &str, addr: SocketAddr) -> AppBackend {
        let listener = bind_reusing(addr).await;
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App {
            name: name.to_owned(),
            sessions: Mutex::new(HashSet::new()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // Owned by the accept task: aborting it closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let app = app.clone();
                let service = service_fn(move |request| answer(request, app.clone()));
                connections.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        AppBackend {
            name: name.to_owned(),
            addr,
            tasks,
        }
    }

    /// Kills the instance: once this returns its listener is closed and its
    /// memory gone. Its address, to restart it on.
    async fn stop(mut self) -> SocketAddr {
        self.tasks.abort_all();
        while bounded(self.tasks.join_next()).await.is_some() {}
        self.addr
    }
}

async fn answer(
    request: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = request.uri().path();
    let mut response = if path == HEALTH_PATH {
        Response::new(full("ok"))
    } else if path == "/login" {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        app.sessions.lock().unwrap().insert(token.clone());
        let mut response = Response::new(full("welcome"));
        response.headers_mut().insert(
            SET_COOKIE,
            HeaderValue::from_str(&format!("app={token}; Path=/; HttpOnly")).unwrap(),
        );
        response
    } else {
        let known = cookie_in(&request, "app")
            .is_some_and(|token| app.sessions.lock().unwrap().contains(token));
        let mut response = Response::new(full(if known { "page" } else { "log in first" }));
        if !known {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        response
    };
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::from_str(&app.name).unwrap());
    Ok(response)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_in<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

// ---------------------------------------------------------------------------
// Users: a browser that keeps its cookies
// ---------------------------------------------------------------------------

/// A simulated user: its own keep-alive connection to the proxy and its
/// cookie jar (the proxy's `sid`, the app's `app`).
struct User {
    client: Client,
    sid: Option<String>,
    app: Option<String>,
    /// The backend that answered its last request.
    backend: String,
}

impl User {
    /// A user with no cookies, connecting from 127.0.0.`host` (routing is
    /// by cookie, whatever the address).
    async fn new(proxy: SocketAddr, host: u8) -> User {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
        User {
            client: Client::connect_from(source, proxy).await,
            sid: None,
            app: None,
            backend: String::new(),
        }
    }

    /// `method path` with its cookies; takes the cookies the answer sets.
    async fn request(&mut self, method: &str, path: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.test");
        let jar: Vec<String> = [("sid", &self.sid), ("app", &self.app)]
            .into_iter()
            .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
            .collect();
        if !jar.is_empty() {
            request = request.header(COOKIE, jar.join("; "));
        }
        let reply = self.client.send(request.body(full("")).unwrap()).await;
        for set in values(&reply.headers, "set-cookie") {
            let pair = set.split(';').next().unwrap_or("");
            match pair.split_once('=') {
                Some(("sid", value)) => self.sid = Some(value.to_owned()),
                Some(("app", value)) => self.app = Some(value.to_owned()),
                _ => {}
            }
        }
        assert!(
            reply.status == StatusCode::OK || reply.status == StatusCode::UNAUTHORIZED,
            "{method} {path}: {} {:?} from {:?}",
            reply.status,
            reply.text(),
            reply.backend()
        );
        self.backend = reply.backend().to_owned();
        reply
    }

    /// Logs in on whatever backend the proxy picks.
    async fn login(&mut self) {
        let reply = self.request("POST", "/login").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(self.sid.is_some(), "the proxy issued a session cookie");
        assert!(self.app.is_some(), "the app issued a session");
    }

    /// Reads [`PAGES`] pages; on a `401` the session was lost: logs in
    /// again and goes on. How many times the session was lost.
    async fn browse(&mut self) -> usize {
        let mut lost = 0;
        for page in 0..PAGES {
            let reply = self.request("GET", &format!("/page/{page}")).await;
            if reply.status == StatusCode::UNAUTHORIZED {
                lost += 1;
                self.login().await;
            }
        }
        lost
    }
}

/// `USERS` new users, logged in.
async fn log_in_users(proxy: SocketAddr) -> Vec<User> {
    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let mut user = User::new(proxy, 10 + (i % 4) as u8).await;
        user.login().await;
        users.push(user);
    }
    users
}

/// Every user browses; the sessions lost, user by user.
async fn browse_all(users: &mut [User]) -> Vec<usize> {
    let mut lost = Vec::with_capacity(users.len());
    for user in users.iter_mut() {
        lost.push(user.browse().await);
    }
    lost
}

/// Which backend each user is on.
fn homes(users: &[User]) -> Vec<String> {
    users.iter().map(|u| u.backend.clone()).collect()
}

/// The backend most users are on (the last named of a tie, in config
/// order), and how many.
fn busiest(names: &[String], homes: &[String]) -> (String, usize) {
    names
        .iter()
        .map(|name| (name.clone(), homes.iter().filter(|h| *h == name).count()))
        .max_by_key(|(_, count)| *count)
        .unwrap()
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// One line of the printed table: a phase, how many users were on the
/// instance it changed (none changed: `None`), and how many sessions were
/// lost in it.
struct Row {
    phase: &'static str,
    affected: Option<usize>,
    lost: usize,
}

/// The proxy's config sections. Health thresholds of 1 as in `sessions.rs`,
/// but probes every 200 ms with a 150 ms timeout instead of 50 ms and 40 ms:
/// the scenario runs for seconds, and on a loaded machine (six runs sharing
/// two cores beside another build) a probe that misses 40 ms marked healthy
/// instances down, even all four at once, and moved users that nothing had
/// happened to: 10 of 24 runs failed with 50/40 ms, none with 200/150 ms. A
/// killed instance refuses connections at once, so it is still seen down
/// within one interval.
fn sections(pin: bool) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [balancer]\nsticky_cookie = {{ name = \"sid\", pin = {pin} }}\n\
         [health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         healthy_threshold = 1\nunhealthy_threshold = 1\n"
    )
}

/// Where `/lookup` sends a bare session id (no pin) now.
async fn lookup(admin: &mut Client, id: &str) -> String {
    let reply = admin.get(&format!("/lookup?key={id}"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let answer: serde_json::Value = serde_json::from_str(reply.text()).unwrap();
    assert_eq!(answer["pinned"], false, "{answer}");
    let backend = answer["backend"].as_str();
    backend
        .unwrap_or_else(|| panic!("no backend for {id}: {answer}"))
        .to_owned()
}

/// Runs every phase against its own four app instances on `host` (a
/// loopback address no other test uses, so a killed instance's port stays
/// free for its restart) and asserts what each user sees.
async fn scenario(pin: bool, host: Ipv4Addr) -> Vec<Row> {
    let run = if pin { "pinned" } else { "unpinned" };
    let mut backends = Vec::new();
    for i in 1..=4 {
        backends.push(AppBackend::start(&format!("app-{i}"), SocketAddr::from((host, 0))).await);
    }
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let members: Vec<(&str, SocketAddr)> = names
        .iter()
        .zip(&backends)
        .map(|(name, b)| (name.as_str(), b.addr))
        .collect();
    let text = config_text(&sections(pin), &members);
    let proxy: ProxyHandle = start_proxy(&text).await;
    until_healthy_count(&proxy.pool(), 4).await;
    let mut rows = Vec::new();

    // a. Everyone logs in and browses: nothing is lost.
    let mut users = log_in_users(proxy.local_addr()).await;
    let lost = browse_all(&mut users).await;
    assert_eq!(lost, vec![0; USERS], "{run} a: nobody loses a session");
    rows.push(Row {
        phase: "a. 20 users log in and browse",
        affected: None,
        lost: 0,
    });
    let before_kill = homes(&users);

    // b. The instance with the most users dies: each of its users loses the
    // session once and logs in again elsewhere; nobody else notices.
    let (victim, on_victim) = busiest(&names, &before_kill);
    assert!(on_victim > 0);
    let at = backends.iter().position(|b| b.name == victim).unwrap();
    let address = backends.remove(at).stop().await;
    until_healthy_count(&proxy.pool(), 3).await;
    let lost = browse_all(&mut users).await;
    for (i, user) in users.iter().enumerate() {
        let was_there = before_kill[i] == victim;
        assert_eq!(
            lost[i],
            usize::from(was_there),
            "{run} b: user {i} on {} lost its session {} times",
            before_kill[i],
            lost[i]
        );
        if was_there {
            assert_ne!(user.backend, victim, "{run} b: user {i}");
        } else {
            assert_eq!(user.backend, before_kill[i], "{run} b: user {i} stays");
        }
    }
    assert_eq!(lost.iter().sum::<usize>(), on_victim);
    rows.push(Row {
        phase: "b. kill the busiest instance",
        affected: Some(on_victim),
        lost: on_victim,
    });
    let after_kill = homes(&users);

    // c. It restarts, empty, on the same address. With pins nobody moves;
    // without, every user it had goes back to it and is logged out again.
    let restarted = AppBackend::start(&victim, address).await;
    assert_eq!(restarted.addr, address);
    backends.insert(at, restarted);
    until_healthy_count(&proxy.pool(), 4).await;
    let lost = browse_all(&mut users).await;
    for (i, user) in users.iter().enumerate() {
        let moved = before_kill[i] == victim;
        let (want_lost, want_backend) = if moved && !pin {
            (1, &victim)
        } else {
            (0, &after_kill[i])
        };
        assert_eq!(lost[i], want_lost, "{run} c: user {i}");
        assert_eq!(&user.backend, want_backend, "{run} c: user {i}");
    }
    let lost_c: usize = lost.iter().sum();
    assert_eq!(lost_c, if pin { 0 } else { on_victim }, "{run} c");
    rows.push(Row {
        phase: "c. restart it, empty",
        affected: Some(on_victim),
        lost: lost_c,
    });
    let before_drain = homes(&users);

    // d. The instance with the most users now is drained by a reload.
    let (drained, on_drained) = busiest(&names, &before_drain);
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let mut rng = fastrand::Rng::with_seed(0x5e55_10e5);
    let ids: Vec<String> = (0..LOOKUPS)
        .map(|_| format!("{:016x}{:016x}", rng.u64(..), rng.u64(..)))
        .collect();
    let mut mapped = HashMap::new();
    for id in &ids {
        mapped.insert(id.clone(), lookup(&mut admin, id).await);
    }
    let drain_text = text.replace(
        &format!("name = \"{drained}\"\n"),
        &format!("name = \"{drained}\"\nstate = \"drain\"\n"),
    );
    assert_ne!(drain_text, text);
    bounded(proxy.reload(parse(&drain_text))).await.unwrap();

    // With pins every session stays, the drained instance's too; without,
    // the drained instance's users move and are logged out.
    let lost = browse_all(&mut users).await;
    for (i, user) in users.iter().enumerate() {
        let there = before_drain[i] == drained;
        if pin || !there {
            assert_eq!(lost[i], 0, "{run} d: user {i} on {}", before_drain[i]);
            assert_eq!(user.backend, before_drain[i], "{run} d: user {i}");
        } else {
            assert_eq!(lost[i], 1, "{run} d: user {i} on {drained}");
            assert_ne!(user.backend, drained, "{run} d: user {i}");
        }
    }
    let lost_d: usize = lost.iter().sum();
    assert_eq!(lost_d, if pin { 0 } else { on_drained }, "{run} d");
    rows.push(Row {
        phase: "d. drain the busiest instance",
        affected: Some(on_drained),
        lost: lost_d,
    });

    // New users never land on the drained instance.
    let mut newcomers = log_in_users(proxy.local_addr()).await;
    for (i, user) in newcomers.iter().enumerate() {
        assert_ne!(user.backend, drained, "{run} d: new user {i}");
    }
    let lost = browse_all(&mut newcomers).await;
    assert_eq!(lost, vec![0; USERS], "{run} d: new users");
    rows.push(Row {
        phase: "d. 20 new users log in and browse",
        affected: None,
        lost: 0,
    });

    // Of the keys without a pin only the drained instance's move, each to
    // the next in its fallback order, as the hashing core predicts.
    let config = parse(&text);
    let pool = &config.pools[0];
    let algorithm = pool.balancer.hash_algorithm().unwrap();
    let table = HashTable::new(algorithm, &pool.members()).unwrap();
    let routable: Vec<bool> = names.iter().map(|n| *n != drained).collect();
    let without = HashSelector::new(&table, &routable);
    let hasher = KeyHasher::default();
    let mut moved = 0;
    for id in &ids {
        let now = lookup(&mut admin, id).await;
        let was = &mapped[id];
        if *was == drained {
            moved += 1;
            assert_ne!(now, drained, "{run} d: key {id}");
        } else {
            assert_eq!(&now, was, "{run} d: key {id} did not map to {drained}");
        }
        let predicted = without.pick(hasher.hash(id.as_bytes())).unwrap();
        assert_eq!(now, names[predicted], "{run} d: key {id}");
    }
    let report = churn(algorithm, &pool.members(), &[]).unwrap();
    let removal = report.remove.iter().find(|r| r.name == drained).unwrap();
    eprintln!(
        "{run}: draining {drained} moved {moved} of {LOOKUPS} sampled keys \
         ({:.3}); exact share that moves: {:.4} (its own share {:.4})",
        moved as f64 / LOOKUPS as f64,
        removal.moved,
        removal.optimal
    );
    assert!(moved > 0);
    rows
}

#[tokio::test]
async fn pinned_sessions_survive_a_restart_and_a_drain_that_unpinned_ones_do_not() {
    // Every request and wait inside is bounded by `LIMIT`; the whole, about
    // 1.5 s alone, by a minute, which leaves room for a loaded machine.
    let (pinned, unpinned) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            scenario(true, Ipv4Addr::new(127, 0, 77, 1)),
            scenario(false, Ipv4Addr::new(127, 0, 77, 2)),
        )
    })
    .await
    .expect("the scenario hung");
    eprintln!("sessions lost per phase, {USERS} users, 4 instances, maglev:");
    eprintln!(
        "{:<36} {:>13} {:>13} {:>15}",
        "phase", "lost, pinned", "lost, no pin", "on it (pin/no)"
    );
    let on = |row: &Row| row.affected.map_or("-".to_owned(), |n| n.to_string());
    for (p, u) in pinned.iter().zip(&unpinned) {
        assert_eq!(p.phase, u.phase);
        eprintln!(
            "{:<36} {:>13} {:>13} {:>15}",
            p.phase,
            p.lost,
            u.lost,
            format!("{}/{}", on(p), on(u))
        );
    }
}
