//! The PROXY protocol on listeners and toward backends: a listener with
//! `proxy_protocol = true` takes its client from the header a trusted peer
//! sends first (for keys, `X-Forwarded-For` and `/lookup`), and closes every
//! connection without a valid one; a tcp pool with `send_proxy_protocol`
//! names the client to its backends. Also the per-listener connection
//! limit, live byte counters and the drain of open tcp connections.
//! (HAProxy, nginx and curl on either side: `proxy_interop.rs`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use affinity::listener::Drain;
use affinity::listener::proxy_protocol::{
    self, Header, encode_v1, encode_v2, encode_v2_local, take_header,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::common::*;
use crate::tcp::{EchoBackend, backend_for, client, tcp_config};

/// A request that asks for a closed connection after its answer.
const GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n";

/// A client address no socket here has: it can only come from a header.
fn remote(i: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)),
        40_000 + u16::from(i),
    )
}

/// The address every test header names as the one the client reached.
fn front() -> SocketAddr {
    "198.51.100.1:443".parse().unwrap()
}

/// One HTTP exchange over a connection from `source` that starts with
/// `header`, written in pieces of `piece` bytes; the answering backend, or
/// `None` when the proxy closed the connection.
async fn get_with_header(
    proxy: SocketAddr,
    source: IpAddr,
    header: &[u8],
    piece: usize,
) -> Option<String> {
    let stream = connect_stream_from(source, proxy).await;
    stream.set_nodelay(true).unwrap();
    let mut connection = RawConnection::over(stream);
    for chunk in header.chunks(piece) {
        connection.send(chunk).await.ok()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    connection.send(GET).await.ok()?;
    let response = connection.response().await?;
    assert_eq!(response.status, 200, "{}", response.head);
    response.header("x-backend").map(str::to_owned)
}

/// The `X-Forwarded-For` of the last request `backend` saw.
fn last_forwarded_for(backend: &TestBackend) -> String {
    let seen = backend.seen();
    let last = seen.last().expect("the backend saw a request");
    last.headers
        .get("x-forwarded-for")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The admin endpoint's `/metrics` text.
async fn metrics(proxy: &affinity::listener::ProxyHandle) -> String {
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    admin.get("/metrics", &[]).await.text().to_owned()
}

/// The value of the metric line starting with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_client_named_by_a_proxy_header_is_the_key_the_forwarded_for_and_the_lookup() {
    let backends = TestBackend::start_many(3).await;
    let text = config_text(
        "trusted = [\"127.0.0.0/8\"]\nproxy_protocol = true\n\
         [balancer]\nalgorithm = \"maglev\"\nkey = \"client_ip\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n",
        &pool(&backends),
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.local_addr();
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let mut homes = Vec::new();
    for i in 1..=8 {
        let who = remote(i);
        // The real peers differ; the header's client decides.
        let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 12, i));
        let v1 = get_with_header(addr, peer, &encode_v1(who, front()), 1000)
            .await
            .expect("served");
        let answered = backends.iter().find(|b| b.name == v1).unwrap();
        assert_eq!(last_forwarded_for(answered), who.ip().to_string());
        // v2, from another peer, byte by byte: the same backend.
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 13, i));
        let v2 = get_with_header(addr, other, &encode_v2(who, front()), 1).await;
        assert_eq!(v2.as_deref(), Some(v1.as_str()), "client {who}");
        let lookup = admin.get(&format!("/lookup?ip={}", who.ip()), &[]).await;
        let lookup: serde_json::Value = serde_json::from_str(lookup.text()).unwrap();
        assert_eq!(lookup["backend"], v1.as_str(), "{lookup}");
        homes.push(v1);
    }
    homes.sort();
    homes.dedup();
    assert!(homes.len() >= 2, "8 clients all on {homes:?}");
    // A LOCAL header (a health check of the proxy in front): the peer's
    // own address stands.
    let local = IpAddr::V4(Ipv4Addr::new(127, 0, 14, 1));
    let served = get_with_header(addr, local, &encode_v2_local(), 1000).await;
    let answered = backends.iter().find(|b| Some(&b.name) == served.as_ref());
    assert_eq!(last_forwarded_for(answered.unwrap()), "127.0.14.1");
    let text = metrics(&proxy).await;
    let events = "affinity_listener_events_total{listener=\"default\",event=";
    assert_eq!(metric(&text, &format!("{events}\"proxy_header\"}}")), 16.0);
    assert_eq!(metric(&text, &format!("{events}\"proxy_local\"}}")), 1.0);
}

#[tokio::test]
async fn untrusted_missing_malformed_and_slow_headers_close_the_connection_before_any_backend() {
    let backend = TestBackend::start("only").await;
    let text = config_text(
        "trusted = [\"127.0.0.1\", \"127.0.15.0/24\"]\nproxy_protocol = true\n\
         [limits]\nheader_timeout = \"300ms\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n",
        &pool(std::slice::from_ref(&backend)),
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.local_addr();
    let trusted = IpAddr::V4(Ipv4Addr::new(127, 0, 15, 1));
    let untrusted = IpAddr::V4(Ipv4Addr::new(127, 0, 16, 1));
    let valid = encode_v1(remote(1), front());

    let cases: [(&str, IpAddr, &[u8]); 4] = [
        ("an untrusted peer with a valid header", untrusted, &valid),
        ("no header", trusted, GET),
        (
            "a malformed header",
            trusted,
            b"PROXY TCP4 203.0.113.300 198.51.100.1 1 2\r\n",
        ),
        ("a header with a wrong v2 version", trusted, &{
            let mut wrong = encode_v2(remote(1), front());
            wrong[12] = 0x31;
            wrong
        }),
    ];
    for (case, source, bytes) in cases {
        let mut connection = RawConnection::over(connect_stream_from(source, addr).await);
        let _ = connection.send(bytes).await;
        let _ = connection.send(GET).await;
        assert!(
            connection.closes_within(Duration::from_secs(2)).await,
            "{case}: not closed"
        );
        assert!(connection.unread().is_empty(), "{case}: got an answer");
    }
    // Half a header, then silence: closed at the header timeout.
    let mut slow = RawConnection::over(connect_stream_from(trusted, addr).await);
    slow.send(b"PROXY TCP4 203.0.113.9 ").await.unwrap();
    let started = Instant::now();
    assert!(slow.closes_within(Duration::from_secs(3)).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(
        backend.count(),
        0,
        "a connection without a valid header reached the backend"
    );
    // The listener serves a good header all the same.
    let served = get_with_header(addr, trusted, &valid, 1000).await;
    assert_eq!(served.as_deref(), Some("only"));
    let text = metrics(&proxy).await;
    let events = "affinity_listener_events_total{listener=\"default\",event=";
    assert_eq!(
        metric(&text, &format!("{events}\"proxy_untrusted\"}}")),
        1.0
    );
    assert_eq!(metric(&text, &format!("{events}\"proxy_invalid\"}}")), 3.0);
    assert_eq!(metric(&text, &format!("{events}\"proxy_timeout\"}}")), 1.0);
}

/// A tcp backend that reads a PROXY header, answers
/// `NAME SOURCE DESTINATION\n` (`-` for a LOCAL or UNKNOWN header), then
/// echoes until the client's FIN.
struct HeaderBackend {
    name: String,
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl HeaderBackend {
    async fn start(name: &str) -> HeaderBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let label = name.to_owned();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let label = label.clone();
                connections.spawn(async move {
                    let said = match take_header(&mut stream, Duration::from_secs(5)).await {
                        Ok(Header::Proxy {
                            source,
                            destination,
                        }) => format!("{label} {source} {destination}\n"),
                        Ok(_) => format!("{label} - -\n"),
                        Err(error) => format!("{label} error {error}\n"),
                    };
                    if stream.write_all(said.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buffer = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                        if stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        HeaderBackend {
            name: name.to_owned(),
            addr,
            _tasks: tasks,
        }
    }
}

/// A tcp listener config over `backends`, `listener_extra` in the
/// listener's table and `pool_extra` in the pool's.
fn header_config(backends: &[HeaderBackend], listener_extra: &str, pool_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ name = \"{}\", url = \"tcp://{}\" }}", b.name, b.addr))
        .collect();
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"kv\"\n{listener_extra}\n\
         [[pools]]\nname = \"kv\"\n{pool_extra}\n\
         health_check = {{ type = \"tcp\", interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{}]\n",
        list.join(", ")
    )
}

/// A tcp connection from `source` that sends `header` and then `data`, and
/// half-closes: the backend's first line and the echo after it.
async fn relayed(
    proxy: SocketAddr,
    source: IpAddr,
    header: &[u8],
    data: &[u8],
) -> (String, Vec<u8>) {
    let mut stream = connect_stream_from(source, proxy).await;
    stream.write_all(&[header, data].concat()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    bounded(stream.read_to_end(&mut answer)).await.unwrap();
    let newline = answer
        .iter()
        .position(|&b| b == b'\n')
        .expect("a first line");
    let rest = answer.split_off(newline + 1);
    (
        String::from_utf8(answer).unwrap().trim_end().to_owned(),
        rest,
    )
}

#[tokio::test]
async fn a_tcp_pool_names_the_client_to_its_backends_in_v1_and_v2() {
    for version in ["v1", "v2"] {
        let backends = vec![HeaderBackend::start("h1").await];
        let pool_extra = format!("upstream = {{ send_proxy_protocol = \"{version}\" }}");
        let proxy = start_proxy(&header_config(&backends, "", &pool_extra)).await;
        let addr = proxy.listener_addr("tcp").unwrap();
        for i in [21, 22] {
            let source = client(i);
            let (line, echo) = relayed(addr, source, b"", b"payload after the header").await;
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words[0], "h1", "{version}: {line}");
            let seen_source: SocketAddr = words[1].parse().unwrap();
            assert_eq!(seen_source.ip(), source, "{version}: {line}");
            assert_ne!(seen_source.port(), 0);
            assert_eq!(words[2], addr.to_string(), "{version}: {line}");
            assert_eq!(echo, b"payload after the header");
        }
    }
}

#[tokio::test]
async fn a_tcp_listener_keys_by_the_header_client_and_passes_that_client_on() {
    let backends = vec![
        HeaderBackend::start("h1").await,
        HeaderBackend::start("h2").await,
        HeaderBackend::start("h3").await,
    ];
    let proxy = start_proxy(&header_config(
        &backends,
        "proxy_protocol = true\ntrusted = [\"127.0.9.0/24\"]",
        "upstream = { send_proxy_protocol = \"v2\" }",
    ))
    .await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let mut homes = Vec::new();
    for i in 1..=8 {
        let who = remote(i);
        let header = encode_v1(who, front());
        let (line, echo) = relayed(addr, client(30 + i), &header, b"ping").await;
        assert_eq!(echo, b"ping");
        // The backend sees the header's client and destination, as sent.
        let expected_tail = format!("{who} {}", front());
        assert!(line.ends_with(&expected_tail), "{line}");
        let home = line.split(' ').next().unwrap().to_owned();
        // Another real peer with the same client: the same backend.
        let (again, _) = relayed(addr, client(40 + i), &encode_v2(who, front()), b"").await;
        assert!(again.starts_with(&home), "{again} vs {home}");
        let lookup = admin.get(&format!("/lookup?ip={}", who.ip()), &[]).await;
        let lookup: serde_json::Value = serde_json::from_str(lookup.text()).unwrap();
        assert_eq!(lookup["backend"], home.as_str(), "{lookup}");
        homes.push(home);
    }
    homes.sort();
    homes.dedup();
    assert!(homes.len() >= 2, "8 clients all on {homes:?}");
    // Nothing passes without the header.
    let mut bare = connect_stream_from(client(50), addr).await;
    bare.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), bare.read_to_end(&mut rest)).await;
    assert!(read.is_ok() && rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_listener_limit_refuses_connections_beyond_it_while_other_listeners_serve() {
    let backend = EchoBackend::start("e0").await;
    let text = tcp_config(&[&backend], "").replace(
        "idle_timeout = \"5s\"\n",
        "idle_timeout = \"5s\"\nmax_connections = 2\n\
         [[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"echo\"\n",
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let other = proxy.listener_addr("other").unwrap();
    let greet = |source| async move {
        let mut stream = connect_stream_from(source, addr).await;
        let mut greeting = [0u8; 3];
        let read =
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut greeting)).await;
        (stream, matches!(read, Ok(Ok(_))))
    };
    let (first, ok1) = greet(client(61)).await;
    let (_second, ok2) = greet(client(62)).await;
    assert!(ok1 && ok2);
    let (_third, ok3) = greet(client(63)).await;
    assert!(
        !ok3,
        "a third connection was served over max_connections = 2"
    );
    // The other listener is not limited by this one's count.
    assert_eq!(backend_for(client(64), other).await, "e0");
    let text = metrics(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "affinity_listener_events_total{listener=\"tcp\",event=\"refused_listener_max_connections\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "affinity_listener_connections_open{listener=\"tcp\"}"
        ),
        2.0
    );
    // A closed connection makes room.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_fourth, ok) = greet(client(65)).await;
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bytes_are_counted_while_a_connection_is_open() {
    let backend = EchoBackend::start("e0").await;
    let proxy = start_proxy(&tcp_config(&[&backend], "")).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let mut stream = connect_stream_from(client(70), addr).await;
    let sent = vec![b'x'; 100_000];
    stream.write_all(&sent).await.unwrap();
    let mut back = vec![0u8; 3 + sent.len()];
    bounded(stream.read_exact(&mut back)).await.unwrap();
    // Still open: the counters already have it.
    let text = metrics(&proxy).await;
    let series = |direction: &str| {
        format!(
            "affinity_tcp_bytes_total{{pool=\"echo\",backend=\"e0\",direction=\"{direction}\"}}"
        )
    };
    assert_eq!(metric(&text, &series("to_backend")), 100_000.0, "{text}");
    assert_eq!(metric(&text, &series("to_client")), 100_003.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "affinity_tcp_connections_opened_total{pool=\"echo\",backend=\"e0\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "affinity_backend_in_flight{pool=\"echo\",backend=\"e0\"}"
        ),
        1.0,
        "{text}"
    );
    drop(stream);
}

/// What `proxy.shutdown()` (what SIGTERM runs) does to an open tcp
/// connection: it keeps flowing while the drain lasts, new connections are
/// refused, and at `drain_timeout` it is closed.
#[tokio::test]
async fn the_drain_lets_open_tcp_connections_run_until_its_timeout_then_closes_them() {
    let backend = EchoBackend::start("e0").await;
    let text =
        tcp_config(&[&backend], "").replace("drain_timeout = \"2s\"", "drain_timeout = \"1s\"");
    let proxy = start_proxy(&text).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let mut open = connect_stream_from(client(80), addr).await;
    let mut greeting = [0u8; 3];
    bounded(open.read_exact(&mut greeting)).await.unwrap();
    let started = Instant::now();
    let draining = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused...
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during the drain"
    );
    // ...while the open one still relays both ways.
    open.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    bounded(open.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"STILL HERE");
    // At the drain timeout it is closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), open.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection outlived the drain");
    let drain = bounded(draining).await.unwrap();
    assert_eq!(drain, Drain::TimedOut);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_drain_ends_as_soon_as_the_last_tcp_connection_closes() {
    let backend = EchoBackend::start("e0").await;
    let text =
        tcp_config(&[&backend], "").replace("drain_timeout = \"2s\"", "drain_timeout = \"10s\"");
    let proxy = start_proxy(&text).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let mut open = connect_stream_from(client(81), addr).await;
    let mut greeting = [0u8; 3];
    bounded(open.read_exact(&mut greeting)).await.unwrap();
    let started = Instant::now();
    let draining = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded(open.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(bounded(draining).await.unwrap(), Drain::Complete);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_header_sent_for_a_client_parses_back_to_it() {
    let sent = proxy_protocol::encode(affinity::config::SendProxyProtocol::V2, remote(9), front())
        .unwrap();
    let (header, used) = proxy_protocol::parse(&sent).unwrap();
    assert_eq!(used, sent.len());
    assert_eq!(
        header,
        Header::Proxy {
            source: remote(9),
            destination: front()
        }
    );
    assert!(
        proxy_protocol::encode(affinity::config::SendProxyProtocol::Off, remote(9), front())
            .is_none()
    );
}
