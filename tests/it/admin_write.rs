//! The admin write API against a running proxy with real backends and real
//! sockets: `POST /pools/P/backends/B/drain` and `/undrain`, `PUT
//! /pools/P/backends/B/weight`, behind a bearer token read from
//! `admin.token_file` at each write; overrides across reloads; slow start
//! of a backend that returns, joins or stops draining, for a hash pool and
//! for round robin; and the API driven by `curl`, as an operator would.
//!
//! Everything that waits polls with a deadline: no sleep decides an
//! outcome.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::{Method, Request};
use serde_json::Value;

use crate::common::*;

/// A token of the accepted length (at least 16 characters).
const TOKEN: &str = "affinity-admin-token-0123456789abcdef";

/// Probes an hour apart: health changes only when a test makes them.
const NO_PROBES: &str = "[health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n";

/// Probes every 50 ms; one good probe brings a backend back. Three bad ones
/// in a row take it out, so that a probe slowed past its 40 ms timeout on a
/// loaded machine does not take a healthy backend out in the middle of a
/// test that watches keys.
const FAST_CHECKS: &str = "[health_check]\ninterval = \"50ms\"\ntimeout = \"40ms\"\n\
                           healthy_threshold = 1\nunhealthy_threshold = 3\n";

/// The slow start of the ramp tests.
const RAMP: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `[admin]` on any free port with the write API's token in `token_file`.
fn admin_with_token(token_file: &Path) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    )
}

/// Backends named `b0` .. `b{n-1}`, as the API's paths name them.
async fn backends(n: usize) -> Vec<TestBackend> {
    let mut backends = Vec::with_capacity(n);
    for i in 0..n {
        backends.push(TestBackend::start(&format!("b{i}")).await);
    }
    backends
}

/// The path of `action` on backend `backend` of the single pool.
fn path(backend: &str, action: &str) -> String {
    format!("/pools/default/backends/{backend}/{action}")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One admin request on a connection of its own, with `Authorization:
/// authorization` when given.
async fn call(
    admin: SocketAddr,
    method: Method,
    target: &str,
    authorization: Option<&str>,
    body: &str,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "admin.test");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    Client::connect(admin)
        .await
        .send(request.body(full(body)).unwrap())
        .await
}

fn json_of(reply: &Reply) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{}",
        reply.text()
    );
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

/// A write with `token` that must succeed; the backend state it answers.
async fn applied(
    admin: SocketAddr,
    method: Method,
    target: &str,
    token: &str,
    body: &str,
) -> Value {
    let reply = call(admin, method, target, Some(&bearer(token)), body).await;
    assert_eq!(reply.status, 200, "{target}: {}", reply.text());
    json_of(&reply)
}

async fn drain(admin: SocketAddr, backend: &str) -> Value {
    applied(admin, Method::POST, &path(backend, "drain"), TOKEN, "").await
}

async fn undrain(admin: SocketAddr, backend: &str) -> Value {
    applied(admin, Method::POST, &path(backend, "undrain"), TOKEN, "").await
}

async fn set_weight(admin: SocketAddr, backend: &str, weight: u32) -> Value {
    let body = weight.to_string();
    applied(admin, Method::PUT, &path(backend, "weight"), TOKEN, &body).await
}

async fn fetch_status(admin: SocketAddr) -> Value {
    let reply = Client::connect(admin).await.get("/status", &[]).await;
    assert_eq!(reply.status, 200);
    json_of(&reply)
}

/// The backend entry called `name` in a `/status` answer.
fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Polls `/status` (bounded) until `done` holds; returns that answer.
async fn status_until(admin: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    bounded(async {
        loop {
            let status = fetch_status(admin).await;
            if done(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The value of `name{…backend="backend"…}` in `/metrics`.
async fn metric(admin: SocketAddr, name: &str, backend: &str) -> f64 {
    let reply = Client::connect(admin).await.get("/metrics", &[]).await;
    let label = format!("backend=\"{backend}\"");
    reply
        .text()
        .lines()
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && line.contains(&label)
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {backend} in:\n{}", reply.text()))
}

/// Which backend each key (an `x-key` header) reaches through the proxy.
async fn reached(client: &mut Client, keys: &[String]) -> Vec<String> {
    let mut reached = Vec::with_capacity(keys.len());
    for key in keys {
        let reply = client.get("/", &[("x-key", key)]).await;
        assert_eq!(reply.status, 200, "{key}: {}", reply.text());
        reached.push(reply.backend().to_owned());
    }
    reached
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

// ---------------------------------------------------------------------------
// The API's answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn without_a_token_file_the_write_api_does_not_exist() {
    let backends = backends(2).await;
    let sections = format!("[admin]\naddress = \"127.0.0.1:0\"\n{NO_PROBES}");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    for (method, action) in [
        (Method::POST, "drain"),
        (Method::POST, "undrain"),
        (Method::PUT, "weight"),
    ] {
        let reply = call(
            admin,
            method,
            &path("b0", action),
            Some(&bearer(TOKEN)),
            "5",
        )
        .await;
        assert_eq!(reply.status, 404, "{action}: {}", reply.text());
        assert!(
            json_of(&reply)["error"]
                .as_str()
                .unwrap()
                .contains("token_file")
        );
    }
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["draining"], false, "{status}");
    assert_eq!(entry(&status, "b0")["weight"], 1, "{status}");
}

#[tokio::test]
async fn a_write_without_the_exact_bearer_token_is_401_whatever_it_names() {
    let dir = TempDir::new("admin-write-401");
    let token_file = dir.write("token", &format!("{TOKEN}\n"));
    let backends = backends(2).await;
    let sections = format!("{}{NO_PROBES}", admin_with_token(&token_file));
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let basic = format!("Basic {TOKEN}");
    let wrong = bearer(&format!("{TOKEN}x"));
    let short = bearer(&TOKEN[..TOKEN.len() - 1]);
    for target in [
        path("b0", "drain"),
        // Checked before the pool or backend is looked up: an
        // unauthenticated client learns nothing about either.
        path("nope", "drain"),
        "/pools/nope/backends/b0/drain".to_owned(),
    ] {
        for authorization in [
            None,
            Some(basic.as_str()),
            Some(wrong.as_str()),
            Some(short.as_str()),
        ] {
            let reply = call(admin, Method::POST, &target, authorization, "").await;
            assert_eq!(
                reply.status,
                401,
                "{target} with {authorization:?}: {}",
                reply.text()
            );
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge:?}");
            assert!(!reply.text().contains("nope"), "{}", reply.text());
        }
    }
    // Nothing was applied.
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["draining"], false, "{status}");
    // The scheme is case-insensitive; the token is not.
    let lower = format!("bearer {TOKEN}");
    let reply = call(admin, Method::POST, &path("b0", "drain"), Some(&lower), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let upper = bearer(&TOKEN.to_uppercase());
    let reply = call(
        admin,
        Method::POST,
        &path("b0", "undrain"),
        Some(&upper),
        "",
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
}

#[tokio::test]
async fn a_write_with_the_wrong_method_is_405_with_allow() {
    let dir = TempDir::new("admin-write-405");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(2).await;
    let sections = format!("{}{NO_PROBES}", admin_with_token(&token_file));
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    for (method, action, allow) in [
        (Method::GET, "drain", "POST"),
        (Method::PUT, "undrain", "POST"),
        (Method::POST, "weight", "PUT"),
        (Method::GET, "weight", "PUT"),
    ] {
        let reply = call(
            admin,
            method.clone(),
            &path("b0", action),
            Some(&bearer(TOKEN)),
            "5",
        )
        .await;
        assert_eq!(reply.status, 405, "{method} {action}: {}", reply.text());
        assert_eq!(reply.header("allow"), Some(allow), "{method} {action}");
    }
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["draining"], false, "{status}");
    assert_eq!(entry(&status, "b0")["weight"], 1, "{status}");
}

#[tokio::test]
async fn unknown_pools_and_backends_are_404_and_bad_weights_400_with_a_good_token() {
    let dir = TempDir::new("admin-write-404");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(2).await;
    let sections = format!("{}{NO_PROBES}", admin_with_token(&token_file));
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let auth = bearer(TOKEN);
    for target in [
        "/pools/nope/backends/b0/drain".to_owned(),
        path("nope", "drain"),
        path("nope", "undrain"),
        "/pools/default/backends/b0/stop".to_owned(),
        "/pools/default/backends/b0".to_owned(),
    ] {
        let reply = call(admin, Method::POST, &target, Some(&auth), "").await;
        assert_eq!(reply.status, 404, "{target}: {}", reply.text());
    }
    let reply = call(
        admin,
        Method::PUT,
        &path("nope", "weight"),
        Some(&auth),
        "5",
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(reply.text().contains("nope"), "{}", reply.text());

    for body in ["0", "1001", "abc", "", "-1", "2.5"] {
        let reply = call(admin, Method::PUT, &path("b0", "weight"), Some(&auth), body).await;
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.text());
        assert!(json_of(&reply)["error"].as_str().unwrap().contains("1000"));
    }
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["weight"], 1, "{status}");
    assert!(
        entry(&status, "b0")["overrides"]["weight"].is_null(),
        "{status}"
    );
    // Both ends of the range are fine, whitespace around them too.
    for (body, weight) in [("1000\n", 1000), (" 1 ", 1)] {
        let reply = call(admin, Method::PUT, &path("b0", "weight"), Some(&auth), body).await;
        assert_eq!(reply.status, 200, "{body:?}: {}", reply.text());
        assert_eq!(json_of(&reply)["weight"], weight);
    }
}

#[tokio::test]
async fn a_drained_backend_gets_no_fresh_keys_and_undrain_brings_its_keys_back() {
    let dir = TempDir::new("admin-write-drain");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(3).await;
    let sections = format!(
        "{}[balancer]\nkey = \"header:x-key\"\n{NO_PROBES}",
        admin_with_token(&token_file)
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(proxy.local_addr()).await;
    let known = keys("known", 200);
    let before = reached(&mut client, &known).await;
    let on_b1 = before.iter().filter(|b| *b == "b1").count();
    assert!((40..=100).contains(&on_b1), "b1 has {on_b1} of 200 keys");

    let state = drain(admin, "b1").await;
    assert_eq!(state["pool"], "default", "{state}");
    assert_eq!(state["backend"], "b1", "{state}");
    assert_eq!(state["draining"], true, "{state}");
    assert_eq!(state["healthy"], true, "{state}");
    assert_eq!(state["weight"], 1, "{state}");
    assert_eq!(state["overrides"]["drain"], true, "{state}");
    assert!(state["overrides"]["weight"].is_null(), "{state}");
    assert_eq!(state["file"]["draining"], false, "{state}");
    assert_eq!(state["file"]["weight"], 1, "{state}");
    assert_eq!(state["in_flight"], 0, "{state}");

    // Fresh keys never reach it; of the known keys only its own move.
    let fresh = reached(&mut client, &keys("fresh", 200)).await;
    assert!(!fresh.iter().any(|b| b == "b1"), "{fresh:?}");
    let during = reached(&mut client, &known).await;
    for ((key, was), now) in known.iter().zip(&before).zip(&during) {
        match was.as_str() {
            "b1" => assert_ne!(now, "b1", "{key}"),
            _ => assert_eq!(now, was, "{key}"),
        }
    }
    let status = fetch_status(admin).await;
    let b1 = entry(&status, "b1");
    assert_eq!(b1["draining"], true, "{b1}");
    assert_eq!(b1["healthy"], true, "{b1}");
    assert_eq!(b1["overrides"]["drain"], true, "{b1}");
    assert_eq!(number(&b1["share"]), 0.0, "{b1}");
    assert_eq!(metric(admin, "affinity_backend_draining", "b1").await, 1.0);
    assert_eq!(metric(admin, "affinity_backend_draining", "b0").await, 0.0);
    // Draining twice is the same state.
    assert_eq!(drain(admin, "b1").await["overrides"]["drain"], true);

    // Back: the override goes (the file's value), and every key is home.
    let state = undrain(admin, "b1").await;
    assert_eq!(state["draining"], false, "{state}");
    assert!(state["overrides"]["drain"].is_null(), "{state}");
    assert_eq!(number(&state["slow_start"]), 1.0, "no slow_start: {state}");
    assert_eq!(reached(&mut client, &known).await, before);
    let status = fetch_status(admin).await;
    let b1 = entry(&status, "b1");
    assert_eq!(b1["draining"], false, "{b1}");
    assert!(b1["overrides"]["drain"].is_null(), "{b1}");
    assert!(number(&b1["share"]) > 0.2, "{b1}");
    assert_eq!(metric(admin, "affinity_backend_draining", "b1").await, 0.0);
}

#[tokio::test]
async fn a_weight_of_5_on_one_of_3_maglev_backends_gives_it_5_7_of_the_keys() {
    let dir = TempDir::new("admin-write-weight");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(3).await;
    let sections = format!(
        "{}[balancer]\nalgorithm = \"maglev\"\nkey = \"header:x-key\"\n{NO_PROBES}",
        admin_with_token(&token_file)
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let share = |status: &Value, name: &str| number(&entry(status, name)["share"]);
    let before = fetch_status(admin).await;
    assert!((share(&before, "b2") - 1.0 / 3.0).abs() < 0.01, "{before}");

    let state = set_weight(admin, "b2", 5).await;
    assert_eq!(state["weight"], 5, "{state}");
    assert_eq!(state["overrides"]["weight"], 5, "{state}");
    assert!(state["overrides"]["drain"].is_null(), "{state}");
    assert_eq!(state["file"]["weight"], 1, "{state}");
    let after = fetch_status(admin).await;
    let b2 = entry(&after, "b2");
    assert_eq!(b2["weight"], 5, "{b2}");
    assert_eq!(b2["overrides"]["weight"], 5, "{b2}");
    // Maglev gives each backend its weight's share of the table's slots.
    assert!((share(&after, "b2") - 5.0 / 7.0).abs() < 0.05, "{after}");
    for other in ["b0", "b1"] {
        assert!((share(&after, other) - 1.0 / 7.0).abs() < 0.05, "{after}");
    }
    assert_eq!(metric(admin, "affinity_backend_weight", "b2").await, 5.0);
    // Requests follow the table.
    let mut client = Client::connect(proxy.local_addr()).await;
    let counted = reached(&mut client, &keys("weighted", 700)).await;
    let on_b2 = counted.iter().filter(|b| *b == "b2").count() as f64 / 700.0;
    assert!((on_b2 - 5.0 / 7.0).abs() < 0.06, "{on_b2}");

    // The file's own value removes the override.
    let state = set_weight(admin, "b2", 1).await;
    assert_eq!(state["weight"], 1, "{state}");
    assert!(state["overrides"]["weight"].is_null(), "{state}");
    let status = fetch_status(admin).await;
    assert!((share(&status, "b2") - 1.0 / 3.0).abs() < 0.01, "{status}");
    assert_eq!(metric(admin, "affinity_backend_weight", "b2").await, 1.0);
}

// ---------------------------------------------------------------------------
// The token file
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_rewritten_token_file_takes_effect_at_the_next_write_without_a_reload() {
    let dir = TempDir::new("admin-write-rotation");
    let token_file = dir.write("token", &format!("  {TOKEN}\n"));
    let backends = backends(2).await;
    let sections = format!("{}{NO_PROBES}", admin_with_token(&token_file));
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let drain_b0 = path("b0", "drain");
    applied(admin, Method::POST, &drain_b0, TOKEN, "").await;

    let rotated = "rotated-token-fedcba9876543210";
    dir.write("token", &format!("{rotated}\n"));
    let old = call(
        admin,
        Method::POST,
        &path("b0", "undrain"),
        Some(&bearer(TOKEN)),
        "",
    )
    .await;
    assert_eq!(old.status, 401, "{}", old.text());
    let state = applied(admin, Method::POST, &path("b0", "undrain"), rotated, "").await;
    assert_eq!(state["draining"], false, "{state}");

    // A token file that is gone or holds too short a token refuses every
    // write (it fails closed), and works again once fixed.
    std::fs::remove_file(&token_file).unwrap();
    let gone = call(admin, Method::POST, &drain_b0, Some(&bearer(rotated)), "").await;
    assert_eq!(gone.status, 500, "{}", gone.text());
    dir.write("token", "short");
    let short = call(admin, Method::POST, &drain_b0, Some(&bearer("short")), "").await;
    assert_eq!(short.status, 500, "{}", short.text());
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["draining"], false, "{status}");
    dir.write("token", rotated);
    applied(admin, Method::POST, &drain_b0, rotated, "").await;
}

#[tokio::test]
async fn the_proxy_does_not_start_without_a_readable_token_of_16_characters() {
    let dir = TempDir::new("admin-write-startup");
    let backends = backends(1).await;
    let start = async |token_file: &Path| {
        let sections = format!("{}{NO_PROBES}", admin_with_token(token_file));
        affinity::listener::start(parse(&config_text(&sections, &pool(&backends)))).await
    };
    let missing = dir.write("placeholder", "").with_file_name("missing");
    for (file, problem) in [
        (missing, "cannot read"),
        (dir.write("empty", " \n"), "empty"),
        (dir.write("short", "0123456789abcde\n"), "15 characters"),
    ] {
        match start(&file).await {
            Ok(_) => panic!("started with token file {}", file.display()),
            Err(error) => assert!(error.to_string().contains(problem), "{error}"),
        }
    }
    let proxy = start(&dir.write("ok", "0123456789abcdef\n")).await.unwrap();
    let admin = proxy.admin_addr().unwrap();
    applied(
        admin,
        Method::POST,
        &path("b0", "drain"),
        "0123456789abcdef",
        "",
    )
    .await;
}

#[tokio::test]
async fn a_reload_cannot_move_the_token_file_it_says_so_and_the_running_one_governs() {
    let dir = TempDir::new("admin-write-reload-token");
    let token_file = dir.write("token", TOKEN);
    let other = dir.write("other", "another-token-0123456789");
    let backends = backends(2).await;
    let sections = |file: &Path| format!("{}{NO_PROBES}", admin_with_token(file));
    let proxy = start_proxy(&config_text(&sections(&token_file), &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let reloaded = proxy
        .reload(parse(&config_text(&sections(&other), &pool(&backends))))
        .await
        .unwrap();
    assert_eq!(reloaded.needs_restart, ["admin"]);
    let refused = call(
        admin,
        Method::POST,
        &path("b0", "drain"),
        Some(&bearer("another-token-0123456789")),
        "",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    applied(admin, Method::POST, &path("b0", "drain"), TOKEN, "").await;
}

// ---------------------------------------------------------------------------
// Overrides across reloads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn overrides_last_across_reloads_while_the_name_stays_and_yield_to_the_file() {
    let dir = TempDir::new("admin-write-reload");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(3).await;
    let sections = format!(
        "{}[balancer]\nkey = \"header:x-key\"\n{NO_PROBES}",
        admin_with_token(&token_file)
    );
    let text = config_text(&sections, &pool(&backends));
    let file = dir.write("affinity.toml", &text);
    let proxy = start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let b1 = |status: &Value| entry(status, "b1").clone();

    drain(admin, "b1").await;
    set_weight(admin, "b0", 3).await;
    // The same file again: nothing changes.
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["draining"], true, "{status}");
    assert_eq!(b1(&status)["overrides"]["drain"], true, "{status}");
    assert_eq!(entry(&status, "b0")["overrides"]["weight"], 3, "{status}");
    // A changed file that keeps the names keeps the overrides too.
    let reweighed = config_text(&sections, &pool(&backends))
        .replace("name = \"b2\"\n", "name = \"b2\"\nweight = 2\n");
    proxy.reload(parse(&reweighed)).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["draining"], true, "{status}");
    assert_eq!(entry(&status, "b0")["weight"], 3, "{status}");
    assert_eq!(entry(&status, "b2")["weight"], 2, "{status}");

    // b1 renamed (same address): the override is gone with the name.
    dir.write(
        "affinity.toml",
        &text.replace("name = \"b1\"", "name = \"b1-renamed\""),
    );
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    let renamed = entry(&status, "b1-renamed");
    assert_eq!(renamed["draining"], false, "{status}");
    assert!(renamed["overrides"]["drain"].is_null(), "{status}");
    assert_eq!(entry(&status, "b0")["overrides"]["weight"], 3, "{status}");
    // Back under its old name: a new backend, not draining.
    dir.write("affinity.toml", &text);
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["draining"], false, "{status}");
    assert!(b1(&status)["overrides"]["drain"].is_null(), "{status}");
    let mut client = Client::connect(proxy.local_addr()).await;
    let fresh = reached(&mut client, &keys("back", 100)).await;
    assert!(fresh.iter().any(|b| b == "b1"), "b1 takes keys again");

    // Removed, then re-added: the same.
    drain(admin, "b1").await;
    let without_b1: Vec<(&str, SocketAddr)> = pool(&backends)
        .into_iter()
        .filter(|(name, _)| *name != "b1")
        .collect();
    let without_b1 = config_text(&sections, &without_b1);
    dir.write("affinity.toml", &without_b1);
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert!(
        !status["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "b1"),
        "{status}"
    );
    dir.write("affinity.toml", &text);
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["draining"], false, "{status}");
    assert!(b1(&status)["overrides"]["drain"].is_null(), "{status}");

    // The file catches up with a runtime drain: the override is dropped
    // (the file governs), and an undrain through the API is then an
    // override of its own.
    drain(admin, "b1").await;
    let drained_in_file = text.replace("name = \"b1\"\n", "name = \"b1\"\nstate = \"drain\"\n");
    dir.write("affinity.toml", &drained_in_file);
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["draining"], true, "{status}");
    assert!(b1(&status)["overrides"]["drain"].is_null(), "{status}");
    let state = undrain(admin, "b1").await;
    assert_eq!(state["draining"], false, "{state}");
    assert_eq!(state["overrides"]["drain"], false, "{state}");
    assert_eq!(state["file"]["draining"], true, "{state}");
    let status = fetch_status(admin).await;
    assert_eq!(b1(&status)["overrides"]["drain"], false, "{status}");
    assert!(number(&b1(&status)["share"]) > 0.0, "{status}");

    // Same for a weight: the file says 3 too, so the override goes, and
    // a later file value governs.
    dir.write(
        "affinity.toml",
        &drained_in_file.replace("name = \"b0\"\n", "name = \"b0\"\nweight = 3\n"),
    );
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["weight"], 3, "{status}");
    assert!(
        entry(&status, "b0")["overrides"]["weight"].is_null(),
        "{status}"
    );
    dir.write("affinity.toml", &drained_in_file);
    proxy.reload_file(&file).await.unwrap();
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["weight"], 1, "{status}");
    // b1's undrain override outlived both reloads.
    assert_eq!(b1(&status)["overrides"]["drain"], false, "{status}");
    assert_eq!(b1(&status)["draining"], false, "{status}");
}

// ---------------------------------------------------------------------------
// Slow start
// ---------------------------------------------------------------------------

/// `/lookup?key=KEY` on a kept-alive admin connection.
async fn lookup(client: &mut Client, key: &str) -> Value {
    let reply = client.get(&format!("/lookup?key={key}"), &[]).await;
    assert_eq!(reply.status, 200, "{key}: {}", reply.text());
    json_of(&reply)
}

/// A `/status` sample of one backend, with when it was asked for and
/// answered.
#[derive(Debug, Clone, Copy)]
struct Sample {
    asked: Instant,
    answered: Instant,
    progress: f64,
    share: f64,
}

async fn sample(client: &mut Client, name: &str) -> Sample {
    let asked = Instant::now();
    let reply = client.get("/status", &[]).await;
    let answered = Instant::now();
    let status = json_of(&reply);
    for b in status["backends"].as_array().unwrap() {
        assert_eq!(b["healthy"], true, "no backend goes down here: {status}");
    }
    let b = entry(&status, name);
    Sample {
        asked,
        answered,
        progress: number(&b["slow_start"]),
        share: number(&b["share"]),
    }
}

/// `(ms since since, progress)` of each sample, for failure messages.
fn timeline(samples: &[Sample], since: Instant) -> String {
    samples
        .iter()
        .map(|s| {
            let ms = s.asked.saturating_duration_since(since).as_millis();
            format!("+{ms}ms {:.3}", s.progress)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ramp that started after `since`, as `/status` samples saw it: from
/// about 0, only up, following the clock (never ahead of the time since
/// `since`, and behind it by no more than a probe and a few steps; half
/// of the ramp allows for a loaded machine), 1 once the ramp's time has passed;
/// the share is always the progress's part of the full share.
fn check_ramp(samples: &[Sample], since: Instant, full_share: f64) {
    let line = timeline(samples, since);
    assert!(samples[0].progress < 0.3, "starts near 0: {line}");
    for pair in samples.windows(2) {
        assert!(pair[0].progress <= pair[1].progress, "only up: {line}");
    }
    let elapsed = |at: Instant| {
        let ratio = at.saturating_duration_since(since).as_secs_f64() / RAMP.as_secs_f64();
        ratio.min(1.0)
    };
    for s in samples {
        assert!(
            (s.share - s.progress * full_share).abs() < 1e-3,
            "share {} at progress {} of a full share {full_share}",
            s.share,
            s.progress
        );
        assert!(
            s.progress <= elapsed(s.answered) + 1e-9,
            "ahead of the clock: {line}"
        );
        assert!(
            s.progress >= elapsed(s.asked) - 0.5,
            "the ramp lags the clock by more than half of it at +{}ms \
             (progress {:.3}): it did not advance; samples: {line}",
            s.asked.saturating_duration_since(since).as_millis(),
            s.progress
        );
    }
    let done = samples
        .iter()
        .find(|s| s.progress >= 1.0)
        .unwrap_or_else(|| panic!("never done: {line}"));
    assert!(
        done.answered.duration_since(since) >= RAMP,
        "done before its time: {line}"
    );
}

/// Samples backend `name` on `/status` until its ramp is done (bounded).
async fn watch_ramp(client: &mut Client, name: &str) -> Vec<Sample> {
    bounded(async {
        let mut samples = Vec::new();
        loop {
            let s = sample(client, name).await;
            samples.push(s);
            if s.progress >= 1.0 {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_returning_backend_takes_its_keys_back_gradually_and_then_exactly() {
    // Five backends probed every 50 ms: a probe result every 10 ms or so
    // reaches the pool's controller while the ramp runs.
    let backends = backends(5).await;
    let sections = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[balancer]\nkey = \"header:x-key\"\n\
         slow_start = \"2s\"\n{FAST_CHECKS}"
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(admin).await;
    let keys = keys("user", 300);
    let owners = async |client: &mut Client| {
        let mut owners = Vec::with_capacity(keys.len());
        for key in &keys {
            owners.push(
                lookup(client, key).await["backend"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        owners
    };

    // Nothing ramps at startup.
    let start = sample(&mut client, "b1").await;
    assert_eq!(start.progress, 1.0, "{start:?}");
    let full_share = start.share;
    assert!((full_share - 0.2).abs() < 0.01, "{start:?}");
    let before = owners(&mut client).await;
    let home: BTreeSet<usize> = (0..keys.len()).filter(|&i| before[i] == "b1").collect();
    assert!(
        (30..=90).contains(&home.len()),
        "b1 has {} keys",
        home.len()
    );

    // Down: its keys go elsewhere, no other key moves.
    backends[1].set_health(false);
    until_healthy_count(&proxy.pool(), 4).await;
    let away = owners(&mut client).await;
    for i in 0..keys.len() {
        match home.contains(&i) {
            true => assert_ne!(away[i], "b1", "{}", keys[i]),
            false => assert_eq!(away[i], before[i], "{}", keys[i]),
        }
    }

    // Back: it ramps over 2 s.
    let up_at = Instant::now();
    backends[1].set_health(true);
    until_healthy_count(&proxy.pool(), 5).await;
    let mut samples = vec![sample(&mut client, "b1").await];
    let mut returned: BTreeSet<usize> = BTreeSet::new();
    let mut partial_rounds = 0;
    let mut ratio_seen_ramping = false;
    let deadline = up_at + RAMP + Duration::from_secs(3);
    loop {
        let ended = samples.last().unwrap().progress >= 1.0;
        let mut round = BTreeSet::new();
        for (i, key) in keys.iter().enumerate() {
            if i % 50 == 0 {
                samples.push(sample(&mut client, "b1").await);
            }
            let answer = lookup(&mut client, key).await;
            let backend = answer["backend"].as_str().unwrap();
            assert_eq!(answer["first_choice"], before[i].as_str(), "{answer}");
            if !home.contains(&i) {
                assert_eq!(backend, before[i], "a key that is not b1's moved: {answer}");
                continue;
            }
            if backend == "b1" {
                round.insert(i);
            } else {
                assert_eq!(backend, away[i], "{answer}");
                assert!(
                    !returned.contains(&i),
                    "a key went back from the ramping backend: {answer}"
                );
                assert_eq!(
                    answer["detour"],
                    serde_json::json!(["slow_start"]),
                    "{answer}"
                );
            }
            // While b1 ramps, /lookup says whether the key is let through.
            if let Some(ramp) = answer.get("slow_start") {
                assert_eq!(ramp["backend"], "b1", "{answer}");
                assert_eq!(ramp["admitted"], backend == "b1", "{answer}");
                assert!(number(&ramp["progress"]) < 1.0, "{answer}");
            }
        }
        if (1..home.len()).contains(&round.len()) {
            partial_rounds += 1;
        }
        returned.extend(round);
        if !ended && !ratio_seen_ramping {
            let ratio = metric(admin, "affinity_backend_slow_start_ratio", "b1").await;
            ratio_seen_ramping = ratio < 1.0;
            assert!((0.0..=1.0).contains(&ratio), "{ratio}");
        }
        if ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ramp has not ended 5 s after the backend returned: {}",
            timeline(&samples, up_at)
        );
    }

    check_ramp(&samples, up_at, full_share);
    assert!(ratio_seen_ramping, "the metric never showed the ramp");
    assert_eq!(
        metric(admin, "affinity_backend_slow_start_ratio", "b1").await,
        1.0
    );

    // Keys only ever came back to it, some at a time, and in the end
    // exactly its own did.
    assert!(partial_rounds >= 1, "no round saw part of the keys back");
    assert_eq!(returned, home);
    assert_eq!(owners(&mut client).await, before);
}

#[tokio::test]
async fn undrain_starts_a_ramp_and_a_failure_during_it_restarts_it_from_zero() {
    let dir = TempDir::new("admin-write-undrain-ramp");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(3).await;
    let sections = format!(
        "{}[balancer]\nkey = \"header:x-key\"\nslow_start = \"2s\"\n{FAST_CHECKS}",
        admin_with_token(&token_file)
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let full_share = number(&entry(&fetch_status(admin).await, "b2")["share"]);

    let state = drain(admin, "b2").await;
    assert_eq!(state["slow_start"], 1.0, "draining is no ramp: {state}");
    let state = undrain(admin, "b2").await;
    assert_eq!(state["draining"], false, "{state}");
    let right_after = number(&state["slow_start"]);
    assert!(right_after < 0.5, "{state}");
    let status = fetch_status(admin).await;
    let b2 = entry(&status, "b2");
    assert!(number(&b2["slow_start"]) < 1.0, "{b2}");
    assert!(number(&b2["share"]) < full_share, "{b2}");

    // A failure ends the ramp; the return starts it again from zero.
    backends[2].set_health(false);
    let down = status_until(admin, |s| entry(s, "b2")["healthy"] == false).await;
    assert_eq!(entry(&down, "b2")["share"], 0.0, "{down}");
    let returned_at = Instant::now();
    backends[2].set_health(true);
    let back = status_until(admin, |s| entry(s, "b2")["healthy"] == true).await;
    let b2 = entry(&back, "b2");
    let progress = number(&b2["slow_start"]);
    let since_return = returned_at.elapsed().as_secs_f64() / RAMP.as_secs_f64();
    assert!(progress <= since_return, "{b2}: {since_return}");
    assert!(progress < 0.5, "{b2}");
    // And it ends with the full share.
    let done = status_until(admin, |s| number(&entry(s, "b2")["slow_start"]) >= 1.0).await;
    assert!(returned_at.elapsed() >= RAMP);
    assert!(
        (number(&entry(&done, "b2")["share"]) - full_share).abs() < 1e-9,
        "{done}"
    );
}

/// The ramp's steps are timed by the pool's controller, which also takes
/// every probe result: a ramp must advance however often those arrive (here
/// eight backends probed every 50 ms: a result every 6 ms or so, more often
/// than the ramp's 50 ms steps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_follows_the_clock_while_probe_results_keep_arriving() {
    let dir = TempDir::new("admin-write-ramp-probes");
    let token_file = dir.write("token", TOKEN);
    let backends = backends(8).await;
    let sections = format!(
        "{}[balancer]\nkey = \"header:x-key\"\nslow_start = \"2s\"\n{FAST_CHECKS}",
        admin_with_token(&token_file)
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let full_share = number(&entry(&fetch_status(admin).await, "b3")["share"]);
    drain(admin, "b3").await;
    let undrained_at = Instant::now();
    undrain(admin, "b3").await;
    let mut client = Client::connect(admin).await;
    let samples = watch_ramp(&mut client, "b3").await;
    check_ramp(&samples, undrained_at, full_share);
}

#[tokio::test]
async fn a_backend_added_by_a_reload_ramps_and_one_there_at_startup_does_not() {
    let backends = backends(4).await;
    let sections = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[balancer]\nkey = \"header:x-key\"\n\
         slow_start = \"2s\"\n{NO_PROBES}"
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends[..3]))).await;
    let admin = proxy.admin_addr().unwrap();
    let status = fetch_status(admin).await;
    for b in status["backends"].as_array().unwrap() {
        assert_eq!(b["slow_start"], 1.0, "{b}");
    }
    let added_at = Instant::now();
    proxy
        .reload(parse(&config_text(&sections, &pool(&backends))))
        .await
        .unwrap();
    let status = fetch_status(admin).await;
    let b3 = entry(&status, "b3");
    let progress = number(&b3["slow_start"]);
    assert!(progress < 1.0, "{b3}");
    assert!(
        progress <= added_at.elapsed().as_secs_f64() / RAMP.as_secs_f64(),
        "{b3}"
    );
    assert!(number(&b3["share"]) < 0.25 * progress + 0.01, "{b3}");
    for name in ["b0", "b1", "b2"] {
        assert_eq!(entry(&status, name)["slow_start"], 1.0, "{status}");
    }
    // Without probes nothing holds the ramp's steps back: it follows
    // the clock.
    let mut client = Client::connect(admin).await;
    let samples = watch_ramp(&mut client, "b3").await;
    check_ramp(&samples, added_at, 0.25);
    let done = fetch_status(admin).await;
    assert!(
        (number(&entry(&done, "b3")["share"]) - 0.25).abs() < 0.01,
        "{done}"
    );
}

#[tokio::test]
async fn under_round_robin_a_ramping_backend_gets_fewer_requests_until_the_ramp_ends() {
    let backends = backends(3).await;
    let sections = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[balancer]\nalgorithm = \"round_robin\"\n\
         slow_start = \"3s\"\n{FAST_CHECKS}"
    );
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(proxy.local_addr()).await;
    let counts = || {
        backends
            .iter()
            .map(TestBackend::count)
            .collect::<Vec<u64>>()
    };
    let batch = async |client: &mut Client| {
        let before = counts();
        for i in 0..30 {
            let reply = client.get(&format!("/rr/{i}"), &[]).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
        let after = counts();
        before
            .iter()
            .zip(after)
            .map(|(b, a)| a - b)
            .collect::<Vec<u64>>()
    };

    backends[1].set_health(false);
    until_healthy_count(&proxy.pool(), 2).await;
    backends[1].set_health(true);
    until_healthy_count(&proxy.pool(), 3).await;
    let early = batch(&mut client).await;
    let status = fetch_status(admin).await;
    let b1 = entry(&status, "b1");
    let progress = number(&b1["slow_start"]);
    // A classic policy's share: the ramped weight's part of the total.
    if progress < 1.0 {
        let expected = progress / (2.0 + progress);
        assert!((number(&b1["share"]) - expected).abs() < 1e-6, "{status}");
    }
    // At most its share at the end of the batch (the largest it had), a
    // request or two of rounding.
    let bound = (30.0 * progress / (2.0 + progress)).ceil() as u64 + 2;
    assert!(early[1] <= bound, "{early:?} with progress {progress}");

    status_until(admin, |s| entry(s, "b1")["slow_start"] == 1.0).await;
    let late = batch(&mut client).await;
    for (i, n) in late.iter().enumerate() {
        assert!((9..=11).contains(n), "b{i}: {late:?}");
    }
    assert!(
        early[1] * 2 < late[1],
        "early in the ramp {early:?}, after it {late:?}"
    );
}

// ---------------------------------------------------------------------------
// As an operator would, with curl
// ---------------------------------------------------------------------------

/// Runs curl with `args` off the runtime's thread (the proxy under test
/// runs on it); `None` when curl is not installed.
async fn curl(args: &[&str]) -> Option<(String, bool)> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .arg("--max-time")
            .arg("10")
            .args(&args)
            .output()
    })
    .await
    .unwrap();
    match output {
        Ok(output) => Some((
            String::from_utf8_lossy(&output.stdout).into_owned(),
            output.status.success(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run curl: {e}"),
    }
}

#[tokio::test]
async fn an_operator_drains_and_reweighs_a_backend_with_curl() {
    let dir = TempDir::new("admin-write-curl");
    let token_file = dir.write("token", &format!("{TOKEN}\n"));
    let backends = backends(2).await;
    let sections = format!("{}{NO_PROBES}", admin_with_token(&token_file));
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let url = |action: &str| format!("http://{admin}{}", path("b0", action));
    let (drain_url, weight_url, undrain_url) = (url("drain"), url("weight"), url("undrain"));
    let authorization = format!("Authorization: Bearer {TOKEN}");

    let args = ["-s", "-X", "POST", "-H", &authorization, &drain_url];
    let Some((body, ok)) = curl(&args).await else {
        eprintln!(
            "curl is not installed: skipping an_operator_drains_and_reweighs_a_backend_with_curl"
        );
        return;
    };
    assert!(ok, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        state,
        serde_json::json!({
            "pool": "default",
            "backend": "b0",
            "healthy": true,
            "draining": true,
            "weight": 1,
            "slow_start": 1.0,
            "in_flight": 0,
            "file": {"draining": false, "weight": 1},
            "overrides": {"drain": true, "weight": null},
        })
    );

    let args = [
        "-s",
        "-X",
        "PUT",
        "-H",
        &authorization,
        "--data",
        "7",
        &weight_url,
    ];
    let (body, ok) = curl(&args).await.unwrap();
    assert!(ok, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(state["weight"], 7, "{state}");
    assert_eq!(
        state["overrides"],
        serde_json::json!({"drain": true, "weight": 7})
    );

    // Without the token: 401 and the challenge, as curl -i shows them.
    let args = ["-s", "-i", "-X", "POST", &undrain_url];
    let (head, _) = curl(&args).await.unwrap();
    let status_line = head.lines().next().unwrap_or_default();
    assert!(status_line.contains(" 401"), "{head}");
    assert!(
        head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("www-authenticate: bearer")),
        "{head}"
    );
    let status = fetch_status(admin).await;
    assert_eq!(entry(&status, "b0")["draining"], true, "{status}");
}
