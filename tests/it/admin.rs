//! The admin endpoint against a running proxy with real backends: `/status`
//! follows health changes, `/lookup` names where real requests land,
//! `/metrics` counts exactly what was sent, `/healthz` reports draining, the
//! status page renders in a real browser, and the access log (JSON) carries
//! its documented fields.
//!
//! The exposition is checked with a strict parser written here: every line
//! must be a well-formed comment or `name{labels} value` sample of a declared
//! family.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hyper::Request;
use serde_json::Value;

use affinity::listener::ReloadFailed;

use crate::common::*;

/// The admin endpoint on any free port.
const ADMIN: &str = "[admin]\naddress = \"127.0.0.1:0\"\n";

/// URL keys, 100 ms probes with a 50 ms timeout, thresholds 2/2.
const FAST_CHECKS: &str = "[balancer]\nkey = \"url\"\n[health_check]\ninterval = \"100ms\"\n\
                           timeout = \"50ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";

/// Probes an hour apart: health changes only when a test makes them.
const NO_PROBES: &str = "[health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n";

// ---------------------------------------------------------------------------
// Admin requests
// ---------------------------------------------------------------------------

async fn admin_get(admin: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    Client::connect(admin).await.get(target, headers).await
}

async fn admin_json(admin: SocketAddr, target: &str) -> Value {
    let reply = admin_get(admin, target, &[]).await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {}", reply.text()))
}

async fn status(admin: SocketAddr) -> Value {
    admin_json(admin, "/status").await
}

/// The backend entry called `name` in a `/status` answer.
fn backend<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}

/// Polls `/status` (bounded) until `done` holds; returns that answer.
async fn status_until(admin: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    bounded(async {
        loop {
            let status = status(admin).await;
            if done(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `bytes` percent-encoded for a query string: everything but unreserved
/// characters and `/` becomes `%XX`.
fn encode(bytes: &str) -> String {
    bytes
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/lookup?<query>`: the backend it names and its fallback order.
async fn lookup(admin: SocketAddr, query: &str) -> (String, Vec<String>, Value) {
    let answer = admin_json(admin, &format!("/lookup?{query}")).await;
    let backend = answer["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("{query}: {answer}"))
        .to_owned();
    let fallback = answer["fallback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (backend, fallback, answer)
}

fn timestamp(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// A strict parser of the exposition formats
// ---------------------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `name{a="x",b="y"} value` (or `name value`), escapes included;
/// panics on anything else.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(is_metric_name(name), "bad metric name: {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            let eq = r
                .find('=')
                .unwrap_or_else(|| panic!("label without '=': {line:?}"));
            let label = &r[..eq];
            assert!(is_label_name(label), "bad label name {label:?}: {line:?}");
            let mut chars = r[eq + 1..]
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("unquoted label value: {line:?}"))
                .chars();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line:?}"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value: {line:?}"),
                }
            }
            assert!(
                labels.insert(label.to_owned(), value).is_none(),
                "label {label} twice: {line:?}"
            );
            r = chars.as_str();
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            r = r
                .strip_prefix(',')
                .unwrap_or_else(|| panic!("expected ',' or '}}': {line:?}"));
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("expected one space before the value: {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => {
            assert!(!text.contains(' '), "extra tokens: {line:?}");
            text.parse()
                .unwrap_or_else(|e| panic!("bad value ({e}): {line:?}"))
        }
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// Parses a whole exposition: `# HELP` before `# TYPE` for every family,
/// every sample of a declared family (by the suffixes its type allows), and,
/// for OpenMetrics, `# EOF` as the last line and nowhere else.
fn parse_exposition(text: &str, openmetrics: bool) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "no final newline");
    let lines: Vec<&str> = text.lines().collect();
    let mut help: Vec<String> = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("bad comment: {line:?}"));
            if comment == "EOF" {
                assert!(openmetrics, "# EOF in the Prometheus format");
                assert_eq!(i, lines.len() - 1, "# EOF before the end");
                continue;
            }
            let (kind, rest) = comment
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad comment: {line:?}"));
            let (family, text) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("comment without text: {line:?}"));
            assert!(is_metric_name(family), "bad family name: {line:?}");
            match kind {
                "HELP" => {
                    assert!(!text.trim().is_empty(), "empty help: {line:?}");
                    help.push(family.to_owned());
                }
                "TYPE" => {
                    assert!(
                        matches!(text, "counter" | "gauge" | "histogram"),
                        "unexpected type: {line:?}"
                    );
                    assert!(
                        help.iter().any(|h| h == family),
                        "TYPE without HELP: {line:?}"
                    );
                    types.insert(family.to_owned(), text.to_owned());
                }
                _ => panic!("unexpected comment: {line:?}"),
            }
            continue;
        }
        let sample = parse_sample(line);
        let declared = types.iter().any(|(family, kind)| {
            let suffix = sample.name.strip_prefix(family.as_str());
            match (kind.as_str(), suffix) {
                (_, Some("")) => kind != "histogram",
                ("counter", Some("_total" | "_created")) => true,
                ("histogram", Some("_bucket" | "_sum" | "_count" | "_created")) => true,
                _ => false,
            }
        });
        assert!(declared, "sample of no declared family: {line:?}");
        samples.push(sample);
    }
    if openmetrics {
        assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF");
    }
    samples
}

/// Scrapes `/metrics` in both formats, parses both strictly, and checks they
/// carry the same samples; returns them.
async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let open = admin_get(
        admin,
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(open.status, 200);
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let open = parse_exposition(open.text(), true);
    let plain = admin_get(admin, "/metrics", &[]).await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let plain = parse_exposition(plain.text(), false);
    // Values may move between the two scrapes; which samples exist does not
    // while no request finishes for a backend for the first time, and
    // callers scrape when requests have finished.
    // Bucket bounds are numbers, written `0.00005` in one format and
    // `5e-05` in the other.
    let key = |s: &Sample| {
        let mut labels = s.labels.clone();
        if let Some(le) = labels.get_mut("le") {
            *le = le.parse::<f64>().unwrap().to_string();
        }
        (s.name.clone(), labels)
    };
    let mut a: Vec<_> = open.iter().map(key).collect();
    let mut b: Vec<_> = plain.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the two formats carry different samples");
    open
}

/// The value of the sample `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

/// Every sample called `name`.
fn named<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

#[test]
fn the_exposition_parser_reads_escapes_and_rejects_malformed_lines() {
    let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                a_total{x=\"q\\\"uote\\\\d\\n\",y=\"\"} 3\n";
    let samples = parse_exposition(text, false);
    assert_eq!(
        value(&samples, "a_total", &[("x", "q\"uote\\d\n"), ("y", "")]),
        Some(3.0)
    );
    for bad in [
        "# HELP a x\n# TYPE a gauge\na{x=\"1\"} 1 2\n",
        "# HELP a x\n# TYPE a gauge\na{x=1} 1\n",
        "# HELP a x\n# TYPE a gauge\na{x=\"1\",} 1\n",
        "# HELP a x\n# TYPE a gauge\na{x=\"1\"}1\n",
        "# HELP a x\n# TYPE a gauge\nb 1\n",
        "# TYPE a gauge\na 1\n",
        "# HELP a x\n# TYPE a gauge\na{x=\"\\t\"} 1\n",
        "# HELP a x\n# TYPE a gauge\na one\n",
    ] {
        let parsed = std::panic::catch_unwind(|| parse_exposition(bad, false));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
    assert!(
        std::panic::catch_unwind(|| parse_exposition("# HELP a x\n# TYPE a gauge\na 1\n", true))
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_agrees_with_reality_while_a_backend_is_down_and_after_it_is_restored() {
    let backends = TestBackend::start_many(4).await;
    let proxy = start_proxy(&config_text(
        &format!("{ADMIN}{FAST_CHECKS}"),
        &pool(&backends),
    ))
    .await;
    let admin = proxy.admin_addr().expect("[admin] is configured");
    assert_ne!(admin, proxy.local_addr());

    let first = status(admin).await;
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["algorithm"], "maglev");
    assert_eq!(first["key"], "url");
    assert_eq!(first["table_size"], 65537);
    assert_eq!(first["healthy_backends"], 4);
    assert_eq!(first["draining"], false);
    assert!(first["last_rebuild"].is_null());
    assert!(first["uptime_seconds"].as_f64().unwrap() >= 0.0);
    let listed: Vec<&str> = first["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["server-1", "server-2", "server-3", "server-4"]);
    for b in &backends {
        let entry = backend(&first, &b.name);
        assert_eq!(entry["url"], format!("http://{}/", b.addr));
        assert_eq!(entry["weight"], 1);
        assert_eq!(entry["healthy"], true);
        assert!((entry["share"].as_f64().unwrap() - 0.25).abs() < 1e-4);
    }

    // Requests: each backend's total is what it received.
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..40 {
        assert_eq!(client.get(&format!("/r/{i}"), &[]).await.status, 200);
    }
    let counted = status_until(admin, |s| {
        backends
            .iter()
            .all(|b| backend(s, &b.name)["in_flight"] == 0)
    })
    .await;
    let mut total = 0;
    for b in &backends {
        assert_eq!(
            backend(&counted, &b.name)["requests_total"],
            b.count(),
            "{}",
            b.name
        );
        total += b.count();
    }
    assert_eq!(total, 40);

    // A request held by its backend is in flight there, and only there.
    let (held_on, _, _) = lookup(admin, "url=/hold").await;
    let mut holder = Client::connect(proxy.local_addr()).await;
    let hold = tokio::spawn(async move { holder.get("/hold", &[]).await });
    let busy = status_until(admin, |s| backend(s, &held_on)["in_flight"] == 1).await;
    for b in &backends {
        let want = u64::from(b.name == held_on);
        assert_eq!(backend(&busy, &b.name)["in_flight"], want, "{}", b.name);
    }
    backends.iter().for_each(TestBackend::release);
    assert_eq!(bounded(hold).await.unwrap().backend(), held_on);
    status_until(admin, |s| backend(s, &held_on)["in_flight"] == 0).await;

    // Down.
    let down = &backends[1];
    let share_before = backend(&first, &down.name)["share"].as_f64().unwrap();
    let went_down = SystemTime::now();
    down.set_health(false);
    let during = status_until(admin, |s| backend(s, &down.name)["healthy"] == false).await;
    assert_eq!(during["healthy_backends"], 3);
    let entry = backend(&during, &down.name);
    assert_eq!(entry["share"], 0.0);
    assert!(timestamp(&entry["since"]) >= went_down);
    assert_eq!(entry["last_probe"]["ok"], false);
    assert_eq!(entry["last_probe"]["detail"], "probe answered 503");
    let shares: f64 = during["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
    let rebuild = &during["last_rebuild"];
    assert_eq!(rebuild["cause"], "health");
    assert!(timestamp(&rebuild["at"]) >= went_down);
    assert!(rebuild["duration_seconds"].as_f64().unwrap() > 0.0);
    // Maglev moves exactly the down backend's slots.
    assert!((rebuild["moved"].as_f64().unwrap() - share_before).abs() < 1e-9);
    // And requests agree: none reaches it.
    for i in 0..40 {
        let reply = client.get(&format!("/r/{i}"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_ne!(reply.backend(), down.name);
    }

    // Restored: the very same shares as before, healthy since the restore.
    let came_back = SystemTime::now();
    down.set_health(true);
    let after = status_until(admin, |s| backend(s, &down.name)["healthy"] == true).await;
    assert_eq!(after["healthy_backends"], 4);
    assert!(timestamp(&backend(&after, &down.name)["since"]) >= came_back);
    assert_eq!(backend(&after, &down.name)["last_probe"]["ok"], true);
    for b in &backends {
        assert_eq!(
            backend(&after, &b.name)["share"],
            backend(&first, &b.name)["share"],
            "{}",
            b.name
        );
    }
}

// ---------------------------------------------------------------------------
// /lookup
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lookup_by_url_answers_where_200_requests_land_before_and_after_a_backend_goes_down() {
    let backends = TestBackend::start_many(5).await;
    let proxy = start_proxy(&config_text(
        &format!("{ADMIN}{FAST_CHECKS}"),
        &pool(&backends),
    ))
    .await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(proxy.local_addr()).await;
    let target = |i: usize| format!("/k/{i}?x={i}&y=a+b%20c");
    for phase in ["all healthy", "server-3 down"] {
        let mut landed: HashMap<String, usize> = HashMap::new();
        for i in 0..200 {
            let target = target(i);
            let reply = client.get(&target, &[]).await;
            assert_eq!(reply.status, 200);
            let (by_url, fallback, answer) =
                lookup(admin, &format!("url={}", encode(&target))).await;
            assert_eq!(by_url, reply.backend(), "{phase}: {target}");
            assert_eq!(answer["key"], target);
            assert_eq!(fallback[0], by_url);
            let (by_key, _, keyed) = lookup(admin, &format!("key={}", encode(&target))).await;
            assert_eq!(by_key, by_url, "{phase}: {target}");
            assert_eq!(keyed["hash"], answer["hash"]);
            *landed.entry(by_url).or_default() += 1;
            if phase == "server-3 down" {
                assert!(!fallback.iter().any(|b| b == "server-3"));
                assert_eq!(fallback.len(), 4);
            } else {
                assert_eq!(fallback.len(), 5);
            }
        }
        assert!(landed.len() >= 4, "{phase}: {landed:?}");
        backends[2].set_health(false);
        bounded(async {
            while proxy.pool().snapshot().healthy_count() != 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn lookup_by_header_key_answers_where_200_requests_land() {
    let backends = TestBackend::start_many(5).await;
    let sections = format!("{ADMIN}{NO_PROBES}[balancer]\nkey = \"header:x-user\"\n");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut landed: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let user = format!("user {i}+{}", i * 7);
        let reply = client.get("/", &[("x-user", &user)]).await;
        assert_eq!(reply.status, 200);
        let (by_key, _, answer) = lookup(admin, &format!("key={}", encode(&user))).await;
        assert_eq!(by_key, reply.backend(), "{user}");
        assert_eq!(answer["key"], user);
        assert_eq!(answer["key_source"], "header:x-user");
        *landed.entry(by_key).or_default() += 1;
    }
    assert_eq!(landed.len(), 5, "{landed:?}");
    // Without the header a request is keyed by its address, and `ip=` says
    // where that goes.
    let reply = client.get("/", &[]).await;
    assert_eq!(lookup(admin, "ip=127.0.0.1").await.0, reply.backend());
}

#[tokio::test]
async fn lookup_by_ip_answers_where_clients_from_200_addresses_land() {
    let backends = TestBackend::start_many(5).await;
    let proxy = start_proxy(&config_text(
        &format!("{ADMIN}{NO_PROBES}"),
        &pool(&backends),
    ))
    .await;
    let admin = proxy.admin_addr().unwrap();
    let mut landed: HashMap<String, usize> = HashMap::new();
    for n in 1..=200u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let reply = Client::connect_from(source, proxy.local_addr())
            .await
            .get("/", &[])
            .await;
        assert_eq!(reply.status, 200);
        let (by_ip, _, answer) = lookup(admin, &format!("ip={source}")).await;
        assert_eq!(by_ip, reply.backend(), "{source}");
        assert_eq!(answer["key"], source.to_string());
        // The key bytes are the address text: key= agrees.
        assert_eq!(lookup(admin, &format!("key={source}")).await.0, by_ip);
        *landed.entry(by_ip).or_default() += 1;
    }
    assert_eq!(landed.len(), 5, "{landed:?}");
}

#[tokio::test]
async fn lookup_refuses_a_classic_policy_with_a_clear_error() {
    let backends = TestBackend::start_many(2).await;
    let sections = format!("{ADMIN}[balancer]\nalgorithm = \"round_robin\"\n");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let reply = admin_get(proxy.admin_addr().unwrap(), "/lookup?key=a", &[]).await;
    assert_eq!(reply.status, 409);
    let error: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("round_robin"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent_by_backend_code_and_retry() {
    let backends = TestBackend::start_many(3).await;
    let mut members = pool(&backends);
    let dead = dead_address().await;
    members.push(("server-dead", dead));
    // The dead backend stays in the pool: only its connect failures, each
    // followed by a retry on the key's next backend, show.
    let sections = format!(
        "{ADMIN}[balancer]\nkey = \"url\"\n[upstream]\nretries = 1\n[health_check]\n\
         interval = \"1h\"\ntimeout = \"1s\"\nunhealthy_threshold = 1000\n"
    );
    let proxy = start_proxy(&config_text(&sections, &members)).await;
    let admin = proxy.admin_addr().unwrap();
    let before = scrape(admin).await;
    assert!(named(&before, "affinity_requests_total").is_empty());
    for name in ["server-1", "server-2", "server-3", "server-dead"] {
        assert_eq!(
            value(
                &before,
                "affinity_backend_healthy",
                &[("pool", "default"), ("backend", name)]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &before,
                "affinity_backend_in_flight",
                &[("pool", "default"), ("backend", name)]
            ),
            Some(0.0)
        );
    }
    let shares: f64 = named(&before, "affinity_table_share")
        .iter()
        .map(|s| s.value)
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);

    let mut client = Client::connect(proxy.local_addr()).await;
    let mut answered: HashMap<String, u64> = HashMap::new();
    let mut retried = 0;
    for i in 0..60 {
        let target = format!("/m/{i}");
        let reply = client.get(&target, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *answered.entry(reply.backend().to_owned()).or_default() += 1;
        if lookup(admin, &format!("url={}", encode(&target))).await.0 == "server-dead" {
            retried += 1;
        }
    }
    // Plus one status the proxy answers itself.
    let failing = format!("{ADMIN}[upstream]\nretries = 0\n{NO_PROBES}");
    let lonely = start_proxy(&config_text(&failing, &[("only", dead)])).await;
    let mut lonely_client = Client::connect(lonely.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(lonely_client.get("/", &[]).await.status, 503);
    }
    assert!(retried > 0, "no key's first choice was the dead backend");

    let after = bounded(async {
        loop {
            let samples = scrape(admin).await;
            let counted: f64 = named(&samples, "affinity_requests_total")
                .iter()
                .map(|s| s.value)
                .sum();
            if counted >= 60.0 {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let requests = named(&after, "affinity_requests_total");
    assert_eq!(requests.len(), answered.len(), "{requests:?}");
    for (name, count) in &answered {
        let labels = [
            ("pool", "default"),
            ("backend", name.as_str()),
            ("code", "200"),
        ];
        assert_eq!(
            value(&after, "affinity_requests_total", &labels),
            Some(*count as f64),
            "{name}"
        );
        assert_eq!(
            value(
                &after,
                "affinity_request_duration_seconds_count",
                &[("pool", "default"), ("backend", name)]
            ),
            Some(*count as f64),
            "{name}"
        );
        assert_eq!(
            value(
                &after,
                "affinity_request_duration_seconds_bucket",
                &[("pool", "default"), ("backend", name), ("le", "+Inf")]
            ),
            Some(*count as f64)
        );
    }
    assert_eq!(answered.values().sum::<u64>(), 60);
    assert!(!answered.contains_key("server-dead"));
    assert_eq!(
        value(
            &after,
            "affinity_upstream_retries_total",
            &[
                ("pool", "default"),
                ("backend", "server-dead"),
                ("reason", "connect_error")
            ]
        ),
        Some(f64::from(retried))
    );
    assert_eq!(named(&after, "affinity_upstream_retries_total").len(), 1);

    let lonely_samples = scrape(lonely.admin_addr().unwrap()).await;
    assert_eq!(
        value(
            &lonely_samples,
            "affinity_requests_total",
            &[("pool", "default"), ("backend", ""), ("code", "503")]
        ),
        Some(3.0)
    );

    // A request held by its backend is in flight in the gauge.
    let (held_on, _, _) = lookup(admin, "url=/hold").await;
    let mut holder = Client::connect(proxy.local_addr()).await;
    let hold = tokio::spawn(async move { holder.get("/hold", &[]).await });
    let labels = [("pool", "default"), ("backend", held_on.as_str())];
    bounded(async {
        while value(&scrape(admin).await, "affinity_backend_in_flight", &labels) != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    backends.iter().for_each(TestBackend::release);
    assert_eq!(bounded(hold).await.unwrap().status, 200);
}

#[tokio::test]
async fn removing_one_of_ten_backends_moves_about_a_tenth_of_keys_in_the_moved_ratio() {
    let backends = TestBackend::start_many(10).await;
    let sections = format!("{ADMIN}{NO_PROBES}");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let before = scrape(admin).await;
    assert_eq!(
        value(
            &before,
            "affinity_table_rebuilds_total",
            &[("pool", "default")]
        ),
        Some(0.0)
    );
    assert_eq!(named(&before, "affinity_table_share").len(), 10);

    let reloaded = proxy
        .reload(parse(&config_text(&sections, &pool(&backends[..9]))))
        .await
        .unwrap();
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");
    let after = scrape(admin).await;
    assert_eq!(
        value(
            &after,
            "affinity_table_rebuilds_total",
            &[("pool", "default")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "affinity_table_rebuild_duration_seconds_count",
            &[("pool", "default")]
        ),
        Some(1.0)
    );
    let moved = value(&after, "affinity_table_moved_ratio", &[("pool", "default")]).unwrap();
    assert!((0.09..=0.12).contains(&moved), "moved {moved}");
    // The removed backend is gone from the gauges read from the pool.
    for family in [
        "affinity_table_share",
        "affinity_backend_healthy",
        "affinity_backend_in_flight",
    ] {
        assert_eq!(named(&after, family).len(), 9, "{family}");
        assert_eq!(
            value(
                &after,
                family,
                &[("pool", "default"), ("backend", "server-10")]
            ),
            None,
            "{family}"
        );
    }
    let status = status(admin).await;
    assert_eq!(status["backends"].as_array().unwrap().len(), 9);
    assert_eq!(status["last_rebuild"]["cause"], "reload");
    let reported = status["last_rebuild"]["moved"].as_f64().unwrap();
    assert!((reported - moved).abs() < 1e-12, "{reported} vs {moved}");
}

// ---------------------------------------------------------------------------
// The endpoint itself
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_are_404_other_methods_405_and_the_proxy_port_serves_no_admin_path() {
    let backends = TestBackend::start_many(2).await;
    let proxy = start_proxy(&config_text(ADMIN, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let mut client = Client::connect(admin).await;
    for path in ["/nope", "/status/", "/metrics/x", "/favicon.ico"] {
        assert_eq!(client.get(path, &[]).await.status, 404, "{path}");
    }
    for path in ["/", "/healthz", "/status", "/lookup?key=a", "/metrics"] {
        for method in ["POST", "PUT", "DELETE"] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "admin.test")
                .body(full("x"))
                .unwrap();
            let reply = client.send(request).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        }
        let head = Request::head(path)
            .header("host", "admin.test")
            .body(full(""))
            .unwrap();
        let reply = client.send(head).await;
        assert_eq!(reply.status, 200, "HEAD {path}");
        assert!(reply.body.is_empty());
    }
    let healthz = client.get("/healthz", &[]).await;
    assert_eq!((healthz.status.as_u16(), healthz.text()), (200, "ok\n"));

    // On the proxy port, admin paths are paths like any other.
    let mut proxied = Client::connect(proxy.local_addr()).await;
    for path in ["/status", "/metrics", "/healthz", "/lookup?key=a"] {
        let reply = proxied.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.backend().starts_with("server-"), "{path}");
        assert_eq!(reply.text(), reply.backend());
    }
    let seen: usize = backends.iter().map(|b| b.seen().len()).sum();
    assert_eq!(seen, 4);
}

#[tokio::test]
async fn without_an_admin_section_there_is_no_admin_endpoint() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    assert_eq!(proxy.admin_addr(), None);
}

#[tokio::test]
async fn healthz_answers_503_while_draining_and_the_endpoint_stops_with_the_proxy() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(ADMIN, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    assert_eq!(admin_get(admin, "/healthz", &[]).await.status, 200);

    let mut holder = Client::connect(proxy.local_addr()).await;
    let hold = tokio::spawn(async move { holder.get("/hold", &[]).await });
    bounded(async {
        while backends[0].seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let shutdown = tokio::spawn(proxy.shutdown());
    let mut admin_client = Client::connect(admin).await;
    let draining = bounded(async {
        loop {
            let reply = admin_client.get("/healthz", &[]).await;
            if reply.status == 503 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(draining.text(), "draining\n");
    assert_eq!(status(admin).await["draining"], true);
    backends[0].release();
    assert_eq!(bounded(hold).await.unwrap().status, 200);
    bounded(shutdown).await.unwrap();
    // Gone with the proxy.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

// ---------------------------------------------------------------------------
// Reloads, the process, client connections, the last minute
// ---------------------------------------------------------------------------

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The reload figures of a scrape: successes, failures, whether the last
/// succeeded, when the running config was loaded.
fn reload_figures(samples: &[Sample]) -> (f64, f64, f64, f64) {
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    (
        get("affinity_config_reloads_total", &[("result", "success")]),
        get("affinity_config_reloads_total", &[("result", "failure")]),
        get("affinity_config_last_reload_successful", &[]),
        get("affinity_config_last_reload_success_timestamp_seconds", &[]),
    )
}

#[tokio::test]
async fn a_failed_reload_from_a_file_shows_in_metrics_and_status_until_a_good_file_replaces_it() {
    let backends = TestBackend::start_many(3).await;
    let files = TempDir::new("reload-metrics");
    let sections = format!("{ADMIN}{NO_PROBES}");
    let path = files.write(
        "affinity.toml",
        &config_text(&sections, &pool(&backends[..2])),
    );
    let loaded = unix_now();
    let config = affinity::config::Config::load(&path).unwrap();
    let proxy = affinity::listener::start(config).await.unwrap();
    let admin = proxy.admin_addr().unwrap();

    // At start: no reload, the start counts as the last success.
    let (ok, failed, last_ok, started) = reload_figures(&scrape(admin).await);
    assert_eq!((ok, failed, last_ok), (0.0, 0.0, 1.0));
    assert!((started - loaded).abs() < 60.0, "{started} vs {loaded}");
    assert!(status(admin).await["last_reload"].is_null());

    // A typo: the reload fails, the running config stays.
    let good = std::fs::read_to_string(&path).unwrap();
    files.write(
        "affinity.toml",
        &good.replacen("[admin]", "bogus = 1\n[admin]", 1),
    );
    let error = proxy.reload_file(&path).await.unwrap_err();
    assert!(matches!(error, ReloadFailed::Config(_)), "{error:?}");
    let (ok, failed, last_ok, at) = reload_figures(&scrape(admin).await);
    assert_eq!((ok, failed, last_ok, at), (0.0, 1.0, 0.0, started));
    let after_typo = status(admin).await;
    let last = &after_typo["last_reload"];
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["error"], error.to_string());
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains(path.to_str().unwrap()),
        "the error names the file: {last}"
    );
    assert!(timestamp(&last["at"]) <= SystemTime::now());
    assert_eq!(after_typo["backends"].as_array().unwrap().len(), 2);

    // A file that is not there fails too.
    let missing = proxy.reload_file(&path.with_file_name("gone.toml")).await;
    assert!(missing.is_err());
    let (_, failed, last_ok, _) = reload_figures(&scrape(admin).await);
    assert_eq!((failed, last_ok), (2.0, 0.0));

    // A good file with a third backend: applied, and the alert clears.
    files.write("affinity.toml", &config_text(&sections, &pool(&backends)));
    let reloaded = proxy.reload_file(&path).await.unwrap();
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");
    let (ok, failed, last_ok, at) = reload_figures(&scrape(admin).await);
    assert_eq!((ok, failed, last_ok), (1.0, 2.0, 1.0));
    assert!(at >= started && at <= unix_now(), "{at}");
    let after_fix = status(admin).await;
    assert_eq!(after_fix["last_reload"]["ok"], true);
    assert!(after_fix["last_reload"]["error"].is_null());
    assert_eq!(after_fix["backends"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn process_metrics_are_present_and_plausible() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(ADMIN, &pool(&backends))).await;
    let samples = scrape(proxy.admin_addr().unwrap()).await;
    let get = |name: &str| value(&samples, name, &[]).unwrap_or_else(|| panic!("no {name}"));
    assert!(get("process_cpu_seconds_total") >= 0.0);
    assert!(get("process_resident_memory_bytes") > 1024.0 * 1024.0);
    assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
    let (open, max) = (get("process_open_fds"), get("process_max_fds"));
    assert!(open >= 1.0 && open <= max, "{open} of {max}");
    let started = get("process_start_time_seconds");
    let now = unix_now();
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
}

#[tokio::test]
async fn client_connections_count_an_open_keep_alive_connection_until_it_closes() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(ADMIN, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let figures = |samples: &[Sample]| {
        (
            value(samples, "affinity_client_connections_open", &[]).unwrap(),
            value(samples, "affinity_client_connections_total", &[]).unwrap(),
        )
    };
    assert_eq!(figures(&scrape(admin).await), (0.0, 0.0));

    let mut client = Client::connect(proxy.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/", &[]).await.status, 200);
    }
    // One keep-alive connection, three requests: one open, one accepted.
    assert_eq!(figures(&scrape(admin).await), (1.0, 1.0));
    let mut second = Client::connect(proxy.local_addr()).await;
    assert_eq!(second.get("/", &[]).await.status, 200);
    assert_eq!(figures(&scrape(admin).await), (2.0, 2.0));

    drop(client);
    drop(second);
    let closed = bounded(async {
        loop {
            let now = figures(&scrape(admin).await);
            if now.0 == 0.0 {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(closed, (0.0, 2.0));
}

#[tokio::test]
async fn status_reports_each_backends_last_minute_of_requests_5xx_share_and_p99() {
    let backends = TestBackend::start_many(2).await;
    let (slow, failing) = (&backends[0], &backends[1]);
    slow.set_slow(Duration::from_millis(30));
    failing.set_mode(Mode::Fail);
    let sections = format!("{ADMIN}{NO_PROBES}[balancer]\nalgorithm = \"round_robin\"\n");
    let proxy = start_proxy(&config_text(&sections, &pool(&backends))).await;
    let admin = proxy.admin_addr().unwrap();
    let quiet = status(admin).await;
    for b in &backends {
        let minute = &backend(&quiet, &b.name)["last_minute"];
        assert_eq!(minute["requests"], 0, "{minute}");
        assert!(minute["errors_5xx_share"].is_null() && minute["p99_ms"].is_null());
    }

    let mut client = Client::connect(proxy.local_addr()).await;
    let mut statuses = HashMap::<String, Vec<u16>>::new();
    for _ in 0..10 {
        let reply = client.get("/", &[]).await;
        statuses
            .entry(reply.backend().to_owned())
            .or_default()
            .push(reply.status.as_u16());
    }
    assert_eq!(statuses[&slow.name], [200; 5]);
    assert_eq!(statuses[&failing.name], [500; 5]);
    // Counted at the end of each response body, which the client has read.
    let busy = status_until(admin, |s| {
        backends
            .iter()
            .all(|b| backend(s, &b.name)["last_minute"]["requests"] == 5)
    })
    .await;
    let slow_minute = &backend(&busy, &slow.name)["last_minute"];
    assert_eq!(slow_minute["errors_5xx_share"], 0.0);
    let p99 = slow_minute["p99_ms"].as_f64().unwrap();
    // 30 ms at the backend, within a bucket (at most half again).
    assert!((30.0..1000.0).contains(&p99), "{p99}");
    let failing_minute = &backend(&busy, &failing.name)["last_minute"];
    assert_eq!(failing_minute["errors_5xx_share"], 1.0);
    assert!(failing_minute["p99_ms"].as_f64().unwrap() < p99);
}

// ---------------------------------------------------------------------------
// The status page, in a real browser
// ---------------------------------------------------------------------------

/// Debian's chromium on the `PATH`, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// `text` as HTML serializes a text node.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The status page at `admin` as headless Chromium renders it after its
/// first refresh (`--dump-dom`), or `None` (after printing SKIP for `test`)
/// when chromium is not installed.
pub(crate) async fn rendered_page(admin: SocketAddr, test: &str) -> Option<String> {
    let Some(chromium) = chromium() else {
        // Straight to stderr, past the test harness's capture, so that the
        // skip shows in a plain `cargo test` run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: chromium is not installed (`apt-get install chromium`; .ci/run installs it)"
        );
        return None;
    };
    let profile = std::env::temp_dir().join(format!(
        "affinity-chromium-{}-{}",
        std::process::id(),
        admin.port()
    ));
    // Async, so that this runtime keeps serving the page while the browser
    // loads it.
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("http://{admin}/"))
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium did not finish within 120 s")
    .expect("chromium could not be started");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed: {}\n{dom}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(dom)
}

#[tokio::test]
async fn the_status_page_in_a_headless_browser_shows_one_row_per_backend_and_names_as_text() {
    const SCRIPT: &str = "<script>alert(1)</script>";
    const IMAGE: &str = "<img src=x onerror=document.title='pwned'>";
    const AMPERSAND: &str = "a & b <i>c</i>";
    let mut backends = TestBackend::start_many(3).await;
    for name in [SCRIPT, IMAGE, AMPERSAND] {
        backends.push(TestBackend::start(name).await);
    }
    let proxy = start_proxy(&config_text(
        &format!("{ADMIN}{NO_PROBES}"),
        &pool(&backends),
    ))
    .await;
    let admin = proxy.admin_addr().unwrap();
    let Some(dom) = rendered_page(
        admin,
        "the_status_page_in_a_headless_browser_shows_one_row_per_backend_and_names_as_text",
    )
    .await
    else {
        return;
    };
    assert_eq!(
        dom.matches("<tr class=\"backend up\">").count(),
        backends.len(),
        "one row per backend:\n{dom}"
    );
    for b in &backends {
        let cell = format!("<td class=\"name\">{}</td>", escaped(&b.name));
        assert!(dom.contains(&cell), "{cell} missing:\n{dom}");
    }
    assert!(
        dom.contains("<p id=\"healthy\" class=\"all\">6 of 6 healthy</p>"),
        "{dom}"
    );
    assert!(dom.contains("no config reload since start"), "{dom}");
    // Links relative to the page, so that they work under a path prefix.
    assert!(dom.contains("<a href=\"status\">"), "{dom}");
    assert!(dom.contains("<a href=\"metrics\">"), "{dom}");
    // Shown as text, never run or parsed as markup.
    assert!(!dom.contains(SCRIPT), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(!dom.contains("<i>"), "{dom}");
    assert!(dom.contains("<title>affinity</title>"), "{dom}");
}

#[tokio::test]
async fn the_status_page_in_a_headless_browser_shows_one_table_per_pool() {
    let backends = TestBackend::start_many(3).await;
    let url = |b: &TestBackend| format!("http://{}", b.addr);
    let text = format!(
        "{ADMIN}[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/a\"\npool = \"alpha\"\n\
         [[routes]]\npool = \"beta\"\n\
         [[pools]]\nname = \"alpha\"\nhealth_check = {{ interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"a-1\", url = \"{}\" }}, {{ name = \"a-2\", url = \"{}\" }}]\n\
         [[pools]]\nname = \"beta\"\nalgorithm = \"round_robin\"\n\
         health_check = {{ interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"b-1\", url = \"{}\" }}]\n",
        url(&backends[0]),
        url(&backends[1]),
        url(&backends[2]),
    );
    let proxy = start_proxy(&text).await;
    let Some(dom) = rendered_page(
        proxy.admin_addr().unwrap(),
        "the_status_page_in_a_headless_browser_shows_one_table_per_pool",
    )
    .await
    else {
        return;
    };
    assert_eq!(dom.matches("<section class=\"pool\">").count(), 2, "{dom}");
    let alpha = dom
        .split("<h2>pool alpha")
        .nth(1)
        .unwrap_or_else(|| panic!("{dom}"));
    let (alpha, beta) = alpha
        .split_once("<h2>pool beta")
        .unwrap_or_else(|| panic!("alpha before beta:\n{dom}"));
    assert!(alpha.contains("2 of 2 healthy"), "{alpha}");
    assert!(alpha.contains("maglev · key client_ip"), "{alpha}");
    assert_eq!(
        alpha.matches("<tr class=\"backend up\">").count(),
        2,
        "{alpha}"
    );
    assert!(beta.contains("round_robin"), "{beta}");
    assert_eq!(
        beta.matches("<tr class=\"backend up\">").count(),
        1,
        "{beta}"
    );
    assert!(
        dom.contains("<p id=\"healthy\" class=\"all\">3 of 3 healthy</p>"),
        "{dom}"
    );
    assert!(dom.contains("2 pools · 2 routes"), "{dom}");
}

/// The `<tr>` element of the DOM that starts with `start`.
fn row<'a>(dom: &'a str, start: &str) -> &'a str {
    let from = dom
        .find(start)
        .unwrap_or_else(|| panic!("no {start}:\n{dom}"));
    let to = dom[from..].find("</tr>").unwrap();
    &dom[from..from + to]
}

#[tokio::test]
async fn the_status_page_in_a_headless_browser_shows_the_healthy_count_why_a_backend_is_down_and_a_failed_reload()
 {
    let backends = TestBackend::start_many(2).await;
    let mut members = pool(&backends);
    members.push(("server-dead", dead_address().await));
    let proxy = start_proxy(&config_text(&format!("{ADMIN}{FAST_CHECKS}"), &members)).await;
    until_healthy_count(&proxy.pool(), 2).await;
    // Requests in the last minute: each healthy backend's row counts them.
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..20 {
        assert_eq!(client.get(&format!("/p/{i}"), &[]).await.status, 200);
    }
    let files = TempDir::new("page-reload");
    let bad = files.write(
        "bad.toml",
        "[listener]\naddress = \"127.0.0.1:0\"\nbogus = 1\n",
    );
    let error = proxy.reload_file(&bad).await.unwrap_err().to_string();

    let Some(dom) = rendered_page(
        proxy.admin_addr().unwrap(),
        "the_status_page_in_a_headless_browser_shows_the_healthy_count_why_a_backend_is_down_and_a_failed_reload",
    )
    .await
    else {
        return;
    };
    assert!(
        dom.contains("<p id=\"healthy\" class=\"some\">2 of 3 healthy</p>"),
        "{dom}"
    );
    let down = row(&dom, "<tr class=\"backend down\">");
    assert!(down.contains("server-dead"), "{down}");
    assert!(
        down.contains("<div class=\"reason\">last check failed: "),
        "the reason is in the row, not only in a tooltip:\n{down}"
    );
    assert!(down.contains(" UTC)</div>"), "{down}");
    let up = row(&dom, "<tr class=\"backend up\">");
    assert!(!up.contains("class=\"reason"), "{up}");
    assert!(up.contains("<td class=\"num p99\">"), "{up}");
    assert!(!up.contains("<td class=\"num p99\">–</td>"), "{up}");
    let reload = dom
        .split("<p id=\"reload\" class=\"failed\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no failed reload:\n{dom}"));
    let reload = &reload[..reload.find("</p>").unwrap()];
    assert!(reload.contains("FAILED"), "{reload}");
    assert!(
        reload.contains(&format!(
            "<pre class=\"reload-error\">{}</pre>",
            escaped(&error)
        )),
        "{error}\n{reload}"
    );
}

// ---------------------------------------------------------------------------
// The access log of the `affinity` command, as JSON lines
// ---------------------------------------------------------------------------

/// A child process killed on drop, with its config file removed.
struct Running {
    child: Child,
    config: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The next JSON log line for which `wanted` holds (bounded).
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    bounded(async {
        loop {
            let line = lines.recv().await.expect("affinity exited");
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if wanted(&entry) {
                return entry;
            }
        }
    })
    .await
}

/// The address in a `... on ADDRESS` log message.
fn address_in(entry: &Value) -> SocketAddr {
    let message = entry["fields"]["message"].as_str().unwrap();
    message.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_json_access_log_has_one_line_per_request_with_why_it_fell_back_and_no_raw_key() {
    let backends = TestBackend::start_many(3).await;
    let mut members = pool(&backends);
    members.push(("server-dead", dead_address().await));
    let sections = format!(
        "{ADMIN}[balancer]\nkey = \"header:x-session\"\n[upstream]\nretries = 2\n\
         [health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\nunhealthy_threshold = 1000\n"
    );
    let config = std::env::temp_dir().join(format!("affinity-access-{}.toml", std::process::id()));
    std::fs::write(&config, config_text(&sections, &members)).unwrap();
    let mut running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_affinity"))
            .arg("-c")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,access=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        config,
    };
    let stderr = running.child.stderr.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut proxy = None;
    let mut admin = None;
    while proxy.is_none() || admin.is_none() {
        let entry = next_line(&mut lines, |_| true).await;
        let message = entry["fields"]["message"].as_str().unwrap_or("");
        if message.starts_with("listening on ") {
            proxy = Some(address_in(&entry));
        } else if message.starts_with("admin endpoint on ") {
            admin = Some(address_in(&entry));
        }
    }
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());

    // A session whose first choice is the dead backend.
    let mut session = None;
    for i in 0..1000 {
        let candidate = format!("secret-session-{i}");
        let (first, fallback, answer) = lookup(admin, &format!("key={candidate}")).await;
        if first == "server-dead" {
            session = Some((candidate, fallback, answer["hash"].clone()));
            break;
        }
    }
    let (session, fallback, hash) = session.expect("a key of the dead backend");
    let mut client = Client::connect(proxy).await;
    let request = Request::post("/a/b?c=d")
        .header("host", "proxy.test")
        .header("x-session", &session)
        .body(full("hello"))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), fallback[1]);

    let started = Instant::now();
    let line = next_line(&mut lines, |e| e["target"] == "access").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = line.to_string();
    assert!(!text.contains(&session), "the raw key is logged: {text}");
    let fields = &line["fields"];
    assert_eq!(fields["client"], "127.0.0.1", "{text}");
    assert_eq!(fields["method"], "POST");
    assert_eq!(fields["path"], "/a/b");
    assert_eq!(fields["key_hash"], hash);
    assert_eq!(fields["key_fallback"], false);
    assert_eq!(fields["backend"], fallback[1].as_str());
    assert_eq!(fields["attempts"], 2);
    assert_eq!(fields["fallback"], "connect_error");
    // A JSON array (issue 14): it was the string "[\"server-dead\"]".
    assert_eq!(fields["failed"], serde_json::json!(["server-dead"]));
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["bytes_in"], 5);
    assert_eq!(fields["bytes_out"], fallback[1].len());
    assert!(fields["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(fields["outcome"], "complete");

    // No session header: keyed by the client address, said so, one line.
    let reply = client.get("/plain", &[]).await;
    assert_eq!(reply.status, 200);
    let line = next_line(&mut lines, |e| e["target"] == "access").await;
    let fields = &line["fields"];
    assert_eq!(fields["path"], "/plain");
    assert_eq!(fields["key_fallback"], true);
    assert_eq!(fields["backend"], reply.backend());
    assert_eq!(fields["bytes_in"], 0);
    let (first, _, by_ip) = lookup(admin, "ip=127.0.0.1").await;
    assert_eq!(fields["key_hash"], by_ip["hash"]);
    let expected = if first == "server-dead" {
        "connect_error"
    } else {
        "none"
    };
    assert_eq!(fields["fallback"], expected, "{line}");
    drop(running);
}
