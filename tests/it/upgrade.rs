//! WebSocket-style upgrades through the proxy: routed by key like any other
//! request, a byte tunnel after the backend's `101`, and no tunnel without
//! one.
//!
//! The backends here are hyper servers with upgrades on: a request carrying
//! `Upgrade` to a `/ws` path gets `101 Switching Protocols` (`Upgrade:
//! websocket`, `Connection: Upgrade`), then the connection greets the client
//! with `hello from NAME\n` and echoes every byte back. No WebSocket framing:
//! the proxy tunnels bytes, whatever they mean.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::common::*;
use affinity::listener::{Drain, ProxyHandle};

// ---------------------------------------------------------------------------
// An upgrade-capable echo backend
// ---------------------------------------------------------------------------

struct EchoShared {
    name: String,
    /// Headers of every request that carried `Upgrade`, as received.
    seen: Mutex<Vec<HeaderMap>>,
    /// Tunnels whose client side reached end of stream.
    eofs: watch::Sender<u64>,
}

/// A backend that answers:
/// * an upgrade request to `/ws` or `/ws/...`: `101`, then greets and echoes;
///   `/ws/hangup` greets and closes at once;
/// * an upgrade request to `/ws/refuse`: `200` with its name, still carrying
///   `Upgrade` and `Connection: upgrade`;
/// * an upgrade request to `/ws/bare`: a `101` without `Upgrade`;
/// * any request to `/switch`: a `101`, asked for or not;
/// * anything else: `200` with its name.
///
/// Every answer carries `x-backend: NAME`.
struct EchoBackend {
    addr: SocketAddr,
    shared: Arc<EchoShared>,
    _tasks: JoinSet<()>,
}

impl EchoBackend {
    async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(EchoShared {
            name: name.to_owned(),
            seen: Mutex::new(Vec::new()),
            eofs: watch::Sender::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(echo_accept_loop(listener, shared.clone()));
        EchoBackend {
            addr,
            shared,
            _tasks: tasks,
        }
    }

    async fn start_many(n: usize) -> Vec<EchoBackend> {
        let mut backends = Vec::with_capacity(n);
        for i in 1..=n {
            backends.push(EchoBackend::start(&format!("server-{i}")).await);
        }
        backends
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits until `n` tunnels have seen their client's end of stream.
    async fn wait_for_eofs(&self, n: u64) {
        let mut eofs = self.shared.eofs.subscribe();
        bounded(eofs.wait_for(|&seen| seen >= n)).await.unwrap();
    }
}

fn echo_pool(backends: &[EchoBackend]) -> Vec<(&str, SocketAddr)> {
    backends.iter().map(|b| (b.name(), b.addr)).collect()
}

async fn echo_accept_loop(listener: TcpListener, shared: Arc<EchoShared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let service = service_fn(move |request| echo_answer(request, shared.clone()));
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn echo_answer(
    mut request: Request<Incoming>,
    shared: Arc<EchoShared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let wants_upgrade = request.headers().contains_key(UPGRADE);
    if wants_upgrade {
        shared.seen.lock().unwrap().push(request.headers().clone());
    }
    let mut response = Response::new(Full::new(Bytes::from(shared.name.clone())));
    let headers = response.headers_mut();
    headers.insert("x-backend", HeaderValue::from_str(&shared.name).unwrap());
    let switching = |response: &mut Response<Full<Bytes>>| {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.body_mut() = Full::new(Bytes::new());
    };
    match path.as_str() {
        "/switch" => switching(&mut response),
        "/ws/bare" if wants_upgrade => switching(&mut response),
        "/ws/refuse" if wants_upgrade => {
            let headers = response.headers_mut();
            headers.insert("upgrade", HeaderValue::from_static("websocket"));
            headers.insert("connection", HeaderValue::from_static("upgrade"));
        }
        "/ws" | "/ws/echo" | "/ws/hangup" if wants_upgrade => {
            switching(&mut response);
            for (name, value) in [
                ("upgrade", "websocket"),
                ("connection", "Upgrade, X-Backend-Hop"),
                ("x-backend-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ] {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static(value));
            }
            let on = hyper::upgrade::on(&mut request);
            tokio::spawn(echo(on, shared, path == "/ws/hangup"));
        }
        _ => {}
    }
    Ok(response)
}

/// The backend's side of a tunnel: greets, then echoes until end of stream
/// (or hangs up after the greeting).
async fn echo(on: OnUpgrade, shared: Arc<EchoShared>, hang_up: bool) {
    let Ok(upgraded) = on.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let greeting = format!("hello from {}\n", shared.name);
    if io.write_all(greeting.as_bytes()).await.is_err() || hang_up {
        let _ = io.shutdown().await;
        return;
    }
    let mut buffer = vec![0; 8192];
    loop {
        match io.read(&mut buffer).await {
            Ok(0) => {
                shared.eofs.send_modify(|n| *n += 1);
                return;
            }
            Ok(n) => {
                if io.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------
// A client that can upgrade
// ---------------------------------------------------------------------------

/// The headers of a WebSocket handshake (RFC 6455 §4.1).
const WEBSOCKET: [(&str, &str); 4] = [
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

/// One HTTP/1.1 connection to the proxy, with upgrades on.
struct UpgradingClient {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _connection: JoinSet<()>,
}

impl UpgradingClient {
    async fn connect(proxy: SocketAddr) -> UpgradingClient {
        let stream = bounded(TcpStream::connect(proxy)).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        UpgradingClient {
            sender,
            _connection: tasks,
        }
    }

    /// `GET path` with `headers`; the response with its body unread.
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
        let mut request = Request::get(path).header("host", "chat.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).unwrap();
        bounded(async {
            self.sender.ready().await.unwrap();
            self.sender.send_request(request).await.unwrap()
        })
        .await
    }
}

/// A tunnel through the proxy: the `101`'s headers and the connection.
struct Tunnel {
    headers: HeaderMap,
    io: TokioIo<Upgraded>,
}

impl Tunnel {
    /// Upgrades `path` with the WebSocket headers plus `extra`; fails the
    /// test unless the answer is `101` and the switch happens.
    async fn open(proxy: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Tunnel {
        let mut client = UpgradingClient::connect(proxy).await;
        let headers: Vec<(&str, &str)> = WEBSOCKET.iter().chain(extra).copied().collect();
        let response = client.get(path, &headers).await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers().clone();
        let upgraded = bounded(hyper::upgrade::on(response)).await.unwrap();
        Tunnel {
            headers,
            io: TokioIo::new(upgraded),
        }
    }

    /// Reads one `\n`-terminated line (the backend's greeting).
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        bounded(async {
            loop {
                let byte = self.io.read_u8().await.unwrap();
                if byte == b'\n' {
                    break;
                }
                line.push(byte);
            }
        })
        .await;
        String::from_utf8(line).unwrap()
    }

    /// Sends `bytes` and reads as many back, concurrently.
    async fn round_trip(&mut self, bytes: &[u8]) -> Vec<u8> {
        let (mut reader, mut writer) = tokio::io::split(&mut self.io);
        let mut back = vec![0; bytes.len()];
        let (written, read) =
            bounded(async { tokio::join!(writer.write_all(bytes), reader.read_exact(&mut back)) })
                .await;
        written.unwrap();
        read.unwrap();
        back
    }

    /// Reads until the proxy closes the tunnel; what came before the end.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        // A reset instead of a clean end also counts as closed.
        let _ = bounded(self.io.read_to_end(&mut rest)).await;
        rest
    }
}

/// Requests in flight to backend `index`, as the proxy counts them.
fn in_flight(proxy: &ProxyHandle, index: usize) -> u64 {
    proxy.pool().snapshot().backends()[index]
        .state()
        .in_flight()
}

/// Waits (bounded) until `condition` holds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    bounded(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A proxy over `backends` with `sections`, and `drain_timeout` instead of
/// the helper's default.
async fn proxy_for(backends: &[EchoBackend], sections: &str, drain_timeout: &str) -> ProxyHandle {
    let text = config_text(sections, &echo_pool(backends)).replace(
        "drain_timeout = \"2s\"",
        &format!("drain_timeout = \"{drain_timeout}\""),
    );
    start_proxy(&text).await
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_upgrade_gets_101_and_bytes_echo_both_ways_including_64_kib() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut tunnel = Tunnel::open(proxy.local_addr(), "/ws", &[]).await;
    assert_eq!(values(&tunnel.headers, "upgrade"), ["websocket"]);
    assert_eq!(values(&tunnel.headers, "connection"), ["upgrade"]);
    assert_eq!(values(&tunnel.headers, "x-backend"), ["server-1"]);
    assert_eq!(tunnel.line().await, "hello from server-1");
    for round in 0..5 {
        let message = format!("message {round}");
        assert_eq!(
            tunnel.round_trip(message.as_bytes()).await,
            message.as_bytes()
        );
    }
    let payload: Vec<u8> = (0..64 * 1024).map(pattern).collect();
    assert!(tunnel.round_trip(&payload).await == payload);
    assert_eq!(tunnel.round_trip(b"still open").await, b"still open");
}

#[tokio::test]
async fn the_handshake_keeps_upgrade_and_connection_upgrade_and_drops_other_hop_by_hop_headers() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let tunnel = Tunnel::open(
        proxy.local_addr(),
        "/ws",
        &[
            ("connection", "X-Client-Hop"),
            ("x-client-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ],
    )
    .await;
    let seen = &backends[0].seen()[0];
    assert_eq!(values(seen, "upgrade"), ["websocket"]);
    assert_eq!(values(seen, "connection"), ["upgrade"]);
    assert_eq!(
        values(seen, "sec-websocket-key"),
        ["dGhlIHNhbXBsZSBub25jZQ=="]
    );
    assert_eq!(values(seen, "sec-websocket-version"), ["13"]);
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization"] {
        assert!(seen.get(hop).is_none(), "{hop} reached the backend");
    }
    assert_eq!(values(seen, "x-forwarded-for"), ["127.0.0.1"]);
    // And on the way back.
    assert_eq!(values(&tunnel.headers, "upgrade"), ["websocket"]);
    assert_eq!(values(&tunnel.headers, "connection"), ["upgrade"]);
    assert_eq!(
        values(&tunnel.headers, "sec-websocket-accept"),
        ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    );
    for hop in ["x-backend-hop", "keep-alive"] {
        assert!(
            tunnel.headers.get(hop).is_none(),
            "{hop} reached the client"
        );
    }
}

#[tokio::test]
async fn upgrades_are_routed_by_key_to_the_backend_a_plain_request_with_that_key_gets() {
    let backends = EchoBackend::start_many(5).await;
    let proxy = proxy_for(&backends, "[balancer]\nkey = \"header:X-User\"", "2s").await;
    let mut plain = Client::connect(proxy.local_addr()).await;
    let mut used = std::collections::HashSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let reply = plain.get("/profile", &[("x-user", &user)]).await;
        assert_eq!(reply.status, 200);
        let mut tunnel = Tunnel::open(proxy.local_addr(), "/ws", &[("x-user", &user)]).await;
        assert_eq!(
            values(&tunnel.headers, "x-backend"),
            [reply.backend()],
            "{user}"
        );
        assert_eq!(
            tunnel.line().await,
            format!("hello from {}", reply.backend())
        );
        used.insert(reply.backend().to_owned());
    }
    assert!(used.len() >= 3, "20 users reached only {used:?}");
}

#[tokio::test]
async fn a_backend_refusing_the_upgrade_gives_an_ordinary_response_on_a_plain_connection() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut client = UpgradingClient::connect(proxy.local_addr()).await;
    let response = client.get("/ws/refuse", &WEBSOCKET).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("upgrade").is_none());
    assert_eq!(values(response.headers(), "x-backend"), ["server-1"]);
    let body = bounded(response.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "server-1");
    // The same connection still speaks HTTP.
    let next = client.get("/after", &[]).await;
    assert_eq!(next.status(), StatusCode::OK);
    let body = bounded(next.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "server-1");
    eventually(|| in_flight(&proxy, 0) == 0).await;
}

#[tokio::test]
async fn a_101_the_client_did_not_ask_for_is_a_502_and_no_tunnel() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut client = UpgradingClient::connect(proxy.local_addr()).await;
    // No `Upgrade` at all; then `Upgrade` without `Connection: upgrade`.
    for headers in [&[][..], &[("upgrade", "websocket")][..]] {
        let response = client.get("/switch", headers).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{headers:?}");
        let body = bounded(response.into_body().collect()).await.unwrap();
        assert_eq!(body.to_bytes(), "bad gateway\n");
    }
    // A `101` naming no protocol cannot start a tunnel either.
    let response = client.get("/ws/bare", &WEBSOCKET).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = bounded(response.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "bad gateway\n");
    // The client's connection is still plain HTTP.
    let next = client.get("/after", &[]).await;
    assert_eq!(next.status(), StatusCode::OK);
    eventually(|| in_flight(&proxy, 0) == 0).await;
}

#[tokio::test]
async fn a_client_closing_the_tunnel_ends_it_at_the_backend_and_in_flight_returns_to_zero() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut tunnel = Tunnel::open(proxy.local_addr(), "/ws", &[]).await;
    assert_eq!(tunnel.line().await, "hello from server-1");
    assert_eq!(tunnel.round_trip(b"ping").await, b"ping");
    assert_eq!(in_flight(&proxy, 0), 1, "an open tunnel is in flight");
    bounded(tunnel.io.shutdown()).await.unwrap();
    drop(tunnel);
    backends[0].wait_for_eofs(1).await;
    eventually(|| in_flight(&proxy, 0) == 0).await;
}

#[tokio::test]
async fn a_backend_closing_the_tunnel_ends_it_at_the_client() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut tunnel = Tunnel::open(proxy.local_addr(), "/ws/hangup", &[]).await;
    assert_eq!(tunnel.line().await, "hello from server-1");
    assert_eq!(tunnel.read_to_end().await, b"");
    eventually(|| in_flight(&proxy, 0) == 0).await;
}

#[tokio::test]
async fn an_open_tunnel_holds_the_drain_until_it_closes() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "20s").await;
    let address = proxy.local_addr();
    let mut tunnel = Tunnel::open(address, "/ws", &[]).await;
    assert_eq!(tunnel.line().await, "hello from server-1");
    let shutdown = tokio::spawn(proxy.shutdown());
    // The listener is closed once connecting is refused.
    bounded(async {
        while TcpStream::connect(address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(tunnel.round_trip(b"still here").await, b"still here");
    assert!(
        !shutdown.is_finished(),
        "the drain did not wait for the tunnel"
    );
    bounded(tunnel.io.shutdown()).await.unwrap();
    drop(tunnel);
    assert_eq!(bounded(shutdown).await.unwrap(), Drain::Complete);
}

#[tokio::test]
async fn an_open_tunnel_is_cut_off_when_the_drain_timeout_passes() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "300ms").await;
    let pool = proxy.pool().clone();
    let mut tunnel = Tunnel::open(proxy.local_addr(), "/ws", &[]).await;
    assert_eq!(tunnel.line().await, "hello from server-1");
    assert_eq!(bounded(proxy.shutdown()).await, Drain::TimedOut);
    assert_eq!(tunnel.read_to_end().await, b"");
    backends[0].wait_for_eofs(1).await;
    eventually(|| pool.snapshot().backends()[0].state().in_flight() == 0).await;
}

#[tokio::test]
async fn a_raw_handshake_gets_a_bare_101_and_bytes_sent_right_behind_it_arrive() {
    let backends = EchoBackend::start_many(1).await;
    let proxy = proxy_for(&backends, "", "2s").await;
    let mut stream = bounded(TcpStream::connect(proxy.local_addr()))
        .await
        .unwrap();
    let handshake = "GET /ws HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\nearly bytes";
    bounded(stream.write_all(handshake.as_bytes()))
        .await
        .unwrap();
    let expected_tail = "hello from server-1\nearly bytes";
    let mut received = Vec::new();
    bounded(async {
        while !received.ends_with(expected_tail.as_bytes()) {
            let mut chunk = [0; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed after {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let received = String::from_utf8(received).unwrap();
    let (head, tail) = received.split_once("\r\n\r\n").unwrap();
    assert_eq!(tail, expected_tail);
    let head = head.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}
