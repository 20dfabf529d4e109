//! The PROXY protocol against real implementations, end to end through the
//! running proxy:
//! * HAProxy (`accept-proxy`) reads the v1 and v2 headers a tcp pool with
//!   `upstream.send_proxy_protocol` writes before the client's bytes, and
//!   answers with the client and destination it read;
//! * HAProxy (`send-proxy`, `send-proxy-v2`, in `mode tcp` and `mode http`)
//!   sends the headers a listener with `proxy_protocol = true` reads: the
//!   client it names is the `X-Forwarded-For` and the `client_ip` key; its
//!   health checks (a v2 LOCAL header) are served as the peer's own;
//! * curl's `--haproxy-protocol` is a client of a plain and a TLS listener
//!   (the header before the handshake), and curl without it is closed;
//! * nginx's stream module (`listen ... proxy_protocol`) reads the headers a
//!   tcp pool sends, when nginx and the module are installed.
//!
//! Each program runs as a child process on 127.0.0.1 ports, killed when its
//! guard drops. A test whose program is not installed prints `SKIP` and
//! passes; `.ci/run` installs them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// How long a started program may take to listen.
const START_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

/// The first of `candidates` that runs with `version` (its version flag);
/// `None`, with SKIP printed for `test`, when none does.
fn installed(candidates: &[&'static str], version: &str, test: &str) -> Option<&'static str> {
    let found = candidates.iter().copied().find(|program| {
        Command::new(program)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if found.is_none() {
        println!("SKIP {test}: {} not installed", candidates[0]);
    }
    found
}

fn haproxy_binary(test: &str) -> Option<&'static str> {
    installed(
        &["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"],
        "-v",
        test,
    )
}

/// A port free on 127.0.0.1 now (bound, then released), for a program
/// that takes its ports from its config.
fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port free on `ip` now.
fn free_port_on(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A program started for a test, with the directory of its config and
/// log: killed, reaped and its directory removed when dropped.
struct Running {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Running {
    /// Runs `program` with `args`, its output to `dir/output.log`, and
    /// returns once 127.0.0.1:`ready` accepts connections; fails the test
    /// with the program's output if it exits or does not listen in time.
    async fn start(program: &str, args: &[&str], dir: TempDir, ready: u16) -> Running {
        let log = dir.path().join("output.log");
        let output = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            log,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + START_WITHIN;
        loop {
            if TcpStream::connect(("127.0.0.1", ready)).await.is_ok() {
                return running;
            }
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!("{program} exited ({status}): {}", running.output());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{program} did not listen within {START_WITHIN:?}: {}",
                running.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it wrote so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy `binary` with `sections` after a global and a defaults part, and
/// a frontend of its own that it is ready once it accepts on (it rejects
/// every connection, so no other frontend sees a probe).
async fn start_haproxy(binary: &str, test: &str, sections: &str) -> Running {
    let dir = TempDir::new(&format!("interop-{test}"));
    let ready = free_port();
    let config = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n    maxconn 200\n\
             defaults\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n\
             frontend ready\n    mode tcp\n    bind 127.0.0.1:{ready}\n    \
             tcp-request connection reject\n\
             {sections}"
        ),
    );
    let config = config.to_str().unwrap().to_owned();
    Running::start(binary, &["-db", "-f", &config], dir, ready).await
}

// ---------------------------------------------------------------------------
// Clients and the admin endpoint
// ---------------------------------------------------------------------------

/// Connects from `source` to `to`, writes `request`, and reads until the
/// peer closes: what it sent back, and the client's own address.
async fn exchange(source: IpAddr, to: SocketAddr, request: &[u8]) -> (String, SocketAddr) {
    let mut stream = connect_stream_from(source, to).await;
    let local = stream.local_addr().unwrap();
    bounded(stream.write_all(request)).await.unwrap();
    let mut answer = Vec::new();
    bounded(stream.read_to_end(&mut answer)).await.unwrap();
    (String::from_utf8_lossy(&answer).into_owned(), local)
}

/// `ip port ip port` (the last line of `text`) as the two addresses.
fn two_addresses(text: &str) -> (SocketAddr, SocketAddr) {
    let line = text.trim_end().lines().last().unwrap_or_default();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 4, "not `ip port ip port`: {text:?}");
    let address = |ip: &str, port: &str| {
        SocketAddr::new(
            ip.parse().unwrap_or_else(|_| panic!("{text:?}")),
            port.parse().unwrap_or_else(|_| panic!("{text:?}")),
        )
    };
    (address(fields[0], fields[1]), address(fields[2], fields[3]))
}

/// `affinity_listener_events_total` of `listener`, by event.
async fn listener_events(admin: SocketAddr, listener: &str) -> BTreeMap<String, u64> {
    let mut client = Client::connect(admin).await;
    let metrics = client.get("/metrics", &[]).await;
    let prefix = format!("affinity_listener_events_total{{listener=\"{listener}\",event=\"");
    metrics
        .text()
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (event, value) = rest.split_once("\"} ").unwrap();
            (event.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The backend `/lookup?pool=<pool>&ip=<ip>` names.
async fn lookup_ip(admin: SocketAddr, pool: &str, ip: IpAddr) -> String {
    let mut client = Client::connect(admin).await;
    let reply = client
        .get(&format!("/lookup?pool={pool}&ip={ip}"), &[])
        .await;
    let answer: serde_json::Value = serde_json::from_str(reply.text()).unwrap();
    answer["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A tcp listener `name` on `address` whose pool `name` sends `version`
/// headers to the one backend at `backend`.
fn sending_listener(name: &str, address: &str, version: &str, backend: u16) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\naddress = \"{address}\"\nprotocol = \"tcp\"\n\
         pool = \"{name}\"\nidle_timeout = \"5s\"\n\
         [[pools]]\nname = \"{name}\"\nupstream = {{ send_proxy_protocol = \"{version}\" }}\n\
         health_check = {{ type = \"tcp\", interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"reader\", url = \"tcp://127.0.0.1:{backend}\" }}]\n"
    )
}

/// Tcp listeners sending v1 and v2 headers to `backend`, on 127.0.0.1 and
/// (when there is an IPv6 loopback) on ::1: each one's name and the source
/// address its clients connect from.
fn sending_listeners(backend: u16) -> (String, Vec<(&'static str, Vec<IpAddr>)>) {
    let mut text = String::from("[admin]\naddress = \"127.0.0.1:0\"\n");
    let v4: Vec<IpAddr> = (11..=14).map(loopback).collect();
    let mut listeners = Vec::new();
    for (name, version) in [("send-v1", "v1"), ("send-v2", "v2")] {
        text.push_str(&sending_listener(name, "127.0.0.1:0", version, backend));
        listeners.push((name, v4.clone()));
    }
    if ipv6_loopback() {
        for (name, version) in [("send6-v1", "v1"), ("send6-v2", "v2")] {
            text.push_str(&sending_listener(name, "[::1]:0", version, backend));
            listeners.push((name, vec!["::1".parse().unwrap()]));
        }
    } else {
        println!("SKIP the IPv6 clients: no IPv6 loopback");
    }
    (text, listeners)
}

// ---------------------------------------------------------------------------
// affinity sends, HAProxy reads
// ---------------------------------------------------------------------------

/// HAProxy answering every request on its port (`accept-proxy`: a PROXY
/// header first) with `%[src] %[src_port] %[dst] %[dst_port]`: the client
/// and destination the header named.
async fn start_reader(binary: &str, test: &str) -> (Running, u16) {
    let reader = free_port();
    let haproxy = start_haproxy(
        binary,
        test,
        &format!(
            "frontend reads_proxy\n    mode http\n    bind 127.0.0.1:{reader} accept-proxy\n    \
             http-request return status 200 content-type text/plain \
             lf-string \"%[src] %[src_port] %[dst] %[dst_port]\\n\"\n"
        ),
    )
    .await;
    (haproxy, reader)
}

/// HAProxy behind tcp listeners whose pools send v1 and v2 headers: for
/// every client address (IPv4, and IPv6 when there is a loopback for it),
/// HAProxy's `%[src]`, `%[src_port]` are the client's own address and port
/// and `%[dst]`, `%[dst_port]` the listener's address, as it read them from
/// the header affinity wrote.
#[tokio::test]
async fn haproxy_reads_the_client_from_the_v1_and_v2_headers_a_tcp_pool_sends() {
    const TEST: &str = "haproxy_reads_the_client_from_the_v1_and_v2_headers_a_tcp_pool_sends";
    let Some(binary) = haproxy_binary(TEST) else {
        return;
    };
    let (_haproxy, reader) = start_reader(binary, "haproxy-reads").await;
    let (text, listeners) = sending_listeners(reader);
    let proxy = start_proxy(&text).await;
    for (name, sources) in &listeners {
        let listener = proxy.listener_addr(name).unwrap();
        for &source in sources {
            let (answer, client) =
                exchange(source, listener, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer:?}");
            let (from, to) = two_addresses(&answer);
            assert_eq!(from, client, "{name}: {answer:?}");
            assert_eq!(to, listener, "{name}: {answer:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// HAProxy sends, affinity reads
// ---------------------------------------------------------------------------

/// HAProxy in front of a listener with `proxy_protocol = true`, through
/// `mode tcp` with `send-proxy` (v1) and `send-proxy-v2` (with CRC32C and
/// unique-id TLVs) and `mode http` with `send-proxy-v2`: every request from
/// client address A reaches the backend `/lookup?ip=A` names (the
/// `client_ip` key is A's, not HAProxy's) with `X-Forwarded-For: A`.
/// HAProxy's health checks (`check` with `send-proxy-v2`: a LOCAL header)
/// are served as coming from HAProxy itself.
#[tokio::test]
async fn haproxy_in_front_names_each_client_for_the_key_and_x_forwarded_for() {
    const TEST: &str = "haproxy_in_front_names_each_client_for_the_key_and_x_forwarded_for";
    let Some(binary) = haproxy_binary(TEST) else {
        return;
    };
    let backends = TestBackend::start_many(3).await;
    let mut text = String::from(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\npool = \"web\"\n\
         proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n\
         [[pools]]\nname = \"web\"\nkey = \"client_ip\"\n\
         health_check = { type = \"tcp\", interval = \"1h\", timeout = \"1s\" }\nbackends = [\n",
    );
    for b in &backends {
        text.push_str(&format!(
            "  {{ name = \"{}\", url = \"http://{}\" }},\n",
            b.name, b.addr
        ));
    }
    text.push_str("]\n");
    let proxy = start_proxy(&text).await;
    let affinity = proxy.listener_addr("web").unwrap();
    let admin = proxy.admin_addr().unwrap();

    let fronts = [
        ("tcp-v1", "tcp", "send-proxy"),
        (
            "tcp-v2",
            "tcp",
            "send-proxy-v2 proxy-v2-options crc32c,unique-id",
        ),
        ("http-v2", "http", "send-proxy-v2"),
    ];
    let ports: Vec<u16> = fronts.iter().map(|_| free_port()).collect();
    let mut sections = String::new();
    for ((name, mode, send), port) in fronts.iter().zip(&ports) {
        sections.push_str(&format!(
            "listen {name}\n    mode {mode}\n    bind 127.0.0.1:{port}\n    \
             unique-id-format %ci:%cp_%Ts\n    \
             server affinity {affinity} {send}\n"
        ));
    }
    sections.push_str(&format!(
        "listen checked\n    mode http\n    bind 127.0.0.1:{}\n    option httpchk GET /health\n    \
         server affinity {affinity} send-proxy-v2 check inter 100ms\n",
        free_port()
    ));
    let _haproxy = start_haproxy(binary, "haproxy-sends", &sections).await;

    let clients: Vec<IpAddr> = (21..=32).map(loopback).collect();
    let mut homes = BTreeMap::new();
    for &ip in &clients {
        homes.insert(ip, lookup_ip(admin, "web", ip).await);
    }
    for ((name, _, _), port) in fronts.iter().zip(&ports) {
        let front = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
        for &ip in &clients {
            let path = format!("/{name}/{ip}");
            let mut client = Client::connect_from(ip, front).await;
            let reply = client.get(&path, &[]).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
            assert_eq!(reply.backend(), homes[&ip], "{path}");
            let saw: Vec<(String, Vec<String>)> = backends
                .iter()
                .flat_map(|b| {
                    b.seen()
                        .into_iter()
                        .filter(|s| s.uri.path() == path)
                        .map(|s| {
                            let forwarded = values(&s.headers, "x-forwarded-for")
                                .into_iter()
                                .map(str::to_owned)
                                .collect();
                            (b.name.clone(), forwarded)
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(
                saw,
                vec![(homes[&ip].clone(), vec![ip.to_string()])],
                "{path}"
            );
        }
    }
    let used: std::collections::BTreeSet<&String> = homes.values().collect();
    assert!(used.len() >= 2, "every client on one backend: {homes:?}");

    // HAProxy's checks: LOCAL headers, served as from HAProxy (127.0.0.1),
    // so they reach that address's backend.
    let checked = lookup_ip(admin, "web", loopback(1)).await;
    let checked = backends.iter().find(|b| b.name == checked).unwrap();
    bounded(async {
        while checked.probes() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let events = listener_events(admin, "web").await;
    let count = |event: &str| events.get(event).copied().unwrap_or(0);
    assert!(count("proxy_local") >= 2, "{events:?}");
    // A header on every connection HAProxy opened for a client: at least
    // one per client and front (in `mode http` too, HAProxy opens a
    // connection of its own for each client whose header it sends).
    assert!(
        count("proxy_header") >= (fronts.len() * clients.len()) as u64,
        "{events:?}"
    );
    for event in [
        "proxy_unknown",
        "proxy_untrusted",
        "proxy_invalid",
        "proxy_timeout",
        "proxy_closed",
    ] {
        assert_eq!(count(event), 0, "{event}: {events:?}");
    }
}

/// A chain: client → HAProxy (`send-proxy`, `send-proxy-v2`) → a tcp
/// listener with `proxy_protocol = true` whose pool sends the other version
/// → HAProxy (`accept-proxy`). The last HAProxy reads the first client's
/// address and port, and as destination the address that client connected
/// to (the first HAProxy's), from the header affinity wrote: what affinity
/// read is what it passes on.
#[tokio::test]
async fn through_haproxy_and_a_tcp_listener_the_backend_still_reads_the_first_client() {
    const TEST: &str =
        "through_haproxy_and_a_tcp_listener_the_backend_still_reads_the_first_client";
    let Some(binary) = haproxy_binary(TEST) else {
        return;
    };
    let (_reader, reader) = start_reader(binary, "haproxy-chain-reads").await;
    let mut text = String::from("[admin]\naddress = \"127.0.0.1:0\"\n");
    for (name, version) in [("relay-v1", "v1"), ("relay-v2", "v2")] {
        text.push_str(&sending_listener(name, "127.0.0.1:0", version, reader));
        text = text.replace(
            &format!("pool = \"{name}\"\n"),
            &format!("pool = \"{name}\"\nproxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n"),
        );
    }
    let proxy = start_proxy(&text).await;
    // (front, what it sends, the listener it sends to, its clients)
    let mut fronts = vec![
        (
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            "send-proxy",
            "relay-v2",
            (51..=53).map(loopback).collect::<Vec<_>>(),
        ),
        (
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            "send-proxy-v2",
            "relay-v1",
            (54..=56).map(loopback).collect(),
        ),
    ];
    if ipv6_loopback() {
        let ip: IpAddr = "::1".parse().unwrap();
        for (send, listener) in [("send-proxy-v2", "relay-v1"), ("send-proxy", "relay-v2")] {
            let front = SocketAddr::new(ip, free_port_on(ip));
            fronts.push((front, send, listener, vec![ip]));
        }
    } else {
        println!("SKIP the IPv6 clients: no IPv6 loopback");
    }
    let mut sections = String::new();
    for (n, (front, send, listener, _)) in fronts.iter().enumerate() {
        let relay = proxy.listener_addr(listener).unwrap();
        sections.push_str(&format!(
            "listen front_{n}\n    mode tcp\n    bind {front}\n    server affinity {relay} {send}\n"
        ));
    }
    let _sender = start_haproxy(binary, "haproxy-chain-sends", &sections).await;
    let mut sent = 0;
    for (front, send, listener, clients) in &fronts {
        for &source in clients {
            let (answer, client) =
                exchange(source, *front, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{send} {listener}: {answer:?}"
            );
            let (from, to) = two_addresses(&answer);
            assert_eq!(
                (from, to),
                (client, *front),
                "{send} {listener}: {answer:?}"
            );
            sent += 1;
        }
    }
    let admin = proxy.admin_addr().unwrap();
    let mut headers = 0;
    for listener in ["relay-v1", "relay-v2"] {
        let events = listener_events(admin, listener).await;
        assert_eq!(
            events.keys().collect::<Vec<_>>(),
            ["proxy_header"],
            "{events:?}"
        );
        headers += events["proxy_header"];
    }
    assert_eq!(headers, sent);
}

// ---------------------------------------------------------------------------
// curl as a client
// ---------------------------------------------------------------------------

/// `curl -sS --max-time 5 ARGS`, bounded; `None` when curl is not
/// installed (SKIP printed for `test`).
async fn curl(args: &[&str], test: &str) -> Option<std::process::Output> {
    let run = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match bounded(run).await {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIP {test}: curl not installed");
            None
        }
        Err(error) => panic!("curl: {error}"),
    }
}

/// A self-signed certificate for `localhost` written to `dir`: its cert
/// and key files.
fn self_signed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        dir.write("cert.pem", &certified.cert.pem()),
        dir.write("key.pem", &certified.key_pair.serialize_pem()),
    )
}

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

/// curl's `--haproxy-protocol` (a v1 header naming its own addresses) gets
/// answers from a plain and a TLS listener with `proxy_protocol = true` (the
/// header comes before the handshake), the backend seeing the client as
/// `X-Forwarded-For`; curl without the header, or from an untrusted
/// address, is closed unanswered, the backend sees nothing, and the
/// listener's events count each.
#[tokio::test]
async fn curl_with_haproxy_protocol_is_served_and_without_it_is_closed() {
    const TEST: &str = "curl_with_haproxy_protocol_is_served_and_without_it_is_closed";
    let backend = TestBackend::start("server-1").await;
    let dir = TempDir::new("interop-curl");
    let (cert, key) = self_signed(&dir);
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\npool = \"web\"\n\
         proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n\
         [[listeners]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\npool = \"web\"\n\
         proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n\
         [listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [[pools]]\nname = \"web\"\n\
         health_check = {{ type = \"tcp\", interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"{}\", url = \"http://{}\" }}]\n",
        toml_path(&cert),
        toml_path(&key),
        backend.name,
        backend.addr
    );
    let proxy = start_proxy(&text).await;
    let admin = proxy.admin_addr().unwrap();
    let plain = format!("http://{}", proxy.listener_addr("web").unwrap());
    let secure = format!("https://{}", proxy.listener_addr("secure").unwrap());
    let answered = "%{http_version} %{http_code}";

    // With the header: answered, over HTTP/1.1 and over TLS (HTTP/2 by
    // ALPN), the backend seeing curl's address.
    let with_header = [
        (format!("{plain}/plain"), "1.1 200"),
        (format!("{secure}/secure"), "2 200"),
    ];
    for (url, expected) in &with_header {
        let Some(output) = curl(&["--haproxy-protocol", "-k", "-w", answered, url], TEST).await
        else {
            return;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{url}: {output:?}");
        assert_eq!(stdout, format!("server-1{expected}"), "{url}: {output:?}");
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, path) in seen.iter().zip(["/plain", "/secure"]) {
        assert_eq!(s.uri.path(), path);
        assert_eq!(
            values(&s.headers, "x-forwarded-for"),
            ["127.0.0.1"],
            "{s:?}"
        );
    }

    // Without the header: closed at its first bytes, before any answer
    // (curl: 52 "empty reply" or 56 "connection reset" in plain HTTP, 35
    // in the TLS handshake).
    let without = [
        (format!("{plain}/no-header"), "web", &[52, 56][..]),
        (format!("{secure}/no-header"), "secure", &[35][..]),
    ];
    for (url, listener, codes) in &without {
        let output = curl(&["-k", url], TEST).await.unwrap();
        let code = output.status.code().unwrap_or(-1);
        println!("curl without the header: {url}: exit {code}");
        assert!(codes.contains(&code), "{url}: {output:?}");
        let events = listener_events(admin, listener).await;
        assert!(
            events.get("proxy_invalid").copied().unwrap_or(0) >= 1,
            "{listener}: {events:?}"
        );
    }
    // From an untrusted address, even with a valid header: closed.
    let output = curl(
        &[
            "--haproxy-protocol",
            "--interface",
            "127.0.0.33",
            &format!("{plain}/untrusted"),
        ],
        TEST,
    )
    .await
    .unwrap();
    let code = output.status.code().unwrap_or(-1);
    println!("curl from an untrusted address: exit {code}");
    assert!([52, 55, 56].contains(&code), "{output:?}");
    let events = listener_events(admin, "web").await;
    assert_eq!(events.get("proxy_untrusted"), Some(&1), "{events:?}");
    assert_eq!(backend.count(), 2, "{:?}", backend.seen());
}

// ---------------------------------------------------------------------------
// nginx reads
// ---------------------------------------------------------------------------

/// The nginx binary and the `load_module` line its stream module needs
/// (empty when the module is built in); `None`, with SKIP printed, when
/// nginx or the module is missing.
fn nginx_stream(test: &str) -> Option<(&'static str, String)> {
    let binary = installed(&["nginx", "/usr/sbin/nginx"], "-v", test)?;
    // nginx -V writes to stderr.
    let output = Command::new(binary).arg("-V").output().unwrap();
    let built = String::from_utf8_lossy(&output.stderr).into_owned();
    let flags: Vec<&str> = built.split_whitespace().collect();
    if flags.contains(&"--with-stream") {
        return Some((binary, String::new()));
    }
    if !flags.contains(&"--with-stream=dynamic") {
        println!("SKIP {test}: nginx is built without its stream module");
        return None;
    }
    let modules = flags
        .iter()
        .find_map(|f| f.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules");
    let module = Path::new(modules).join("ngx_stream_module.so");
    if !module.exists() {
        println!(
            "SKIP {test}: no {} (apt-get install libnginx-mod-stream)",
            module.display()
        );
        return None;
    }
    Some((binary, format!("load_module {};\n", module.display())))
}

/// nginx's stream module behind tcp listeners whose pools send v1 and v2
/// headers: `$proxy_protocol_addr`, `$proxy_protocol_port` are the client's
/// address and port, `$proxy_protocol_server_addr` and `_port` the
/// listener's.
#[tokio::test]
async fn nginx_reads_the_client_from_the_v1_and_v2_headers_a_tcp_pool_sends() {
    const TEST: &str = "nginx_reads_the_client_from_the_v1_and_v2_headers_a_tcp_pool_sends";
    let Some((binary, load)) = nginx_stream(TEST) else {
        return;
    };
    let dir = TempDir::new("interop-nginx");
    let (ready, reader) = (free_port(), free_port());
    let prefix = toml_path(dir.path());
    let config = dir.write(
        "nginx.conf",
        &format!(
            "{load}daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/output.log;\n\
             events {{ worker_connections 64; }}\n\
             stream {{\n\
               server {{ listen 127.0.0.1:{ready}; return \"ready\\n\"; }}\n\
               server {{\n\
                 listen 127.0.0.1:{reader} proxy_protocol;\n\
                 return \"$proxy_protocol_addr $proxy_protocol_port \
                          $proxy_protocol_server_addr $proxy_protocol_server_port\\n\";\n\
               }}\n\
             }}\n"
        ),
    );
    let config = toml_path(&config);
    let test_run = Command::new(binary)
        .args(["-t", "-q", "-e", "/dev/null", "-p", &prefix, "-c", &config])
        .output()
        .unwrap();
    if !test_run.status.success() {
        println!(
            "SKIP {TEST}: nginx refuses the stream config: {}",
            String::from_utf8_lossy(&test_run.stderr)
        );
        return;
    }
    let args = [
        "-e",
        &format!("{prefix}/output.log"),
        "-p",
        &prefix,
        "-c",
        &config,
    ];
    let _nginx = Running::start(binary, &args, dir, ready).await;
    let (text, listeners) = sending_listeners(reader);
    let proxy = start_proxy(&text).await;
    for (name, sources) in &listeners {
        let listener = proxy.listener_addr(name).unwrap();
        for &source in sources {
            let (answer, client) = exchange(source, listener, b"").await;
            let (from, to) = two_addresses(&answer);
            assert_eq!(from, client, "{name}: {answer:?}");
            assert_eq!(to, listener, "{name}: {answer:?}");
        }
    }
}
