//! Helpers shared by the integration tests: real backends, raw-TCP backends
//! that run a script (for answers no HTTP library would send), the proxy
//! started in-process on port 0, and an HTTP/1.1 client that can connect
//! from any 127.0.0.0/8 source address.
//!
//! Everything binds 127.0.0.1 (or 127.0.0.N) on ephemeral ports, and every
//! task is aborted when its owner is dropped, so a test cleans up by ending.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use affinity::config::Config;
use affinity::listener::ProxyHandle;

/// Every await in a test is bounded by this, so a bug fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`LIMIT`].
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("timed out: the proxy or a backend hung")
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// How a test backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// `200` with its name.
    Normal = 0,
    /// Like `Normal`, after the configured delay.
    Slow = 1,
    /// `500` with body `boom`.
    Fail = 2,
    /// Never answers.
    Hang = 3,
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body length.
    pub body_len: u64,
    /// FNV-1a of the body.
    pub body_hash: u64,
}

struct Shared {
    name: String,
    count: AtomicU64,
    mode: AtomicU8,
    delay_ms: AtomicU64,
    health_ok: AtomicBool,
    probes: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    released: watch::Sender<bool>,
}

/// A real HTTP backend on 127.0.0.1, port 0.
///
/// Every request is counted and recorded (method, target, headers, body
/// length and hash). It answers `200` with its name as the body and an
/// `x-backend` header, plus `x-body-len` and `x-body-hash` of the body it
/// read, unless:
/// * the mode says otherwise (slow, `500`, hang);
/// * the path is [`HEALTH_PATH`] (the proxy's health probe): it answers
///   `200`, or `503` after [`TestBackend::set_health`]`(false)`, whatever its
///   mode, and the probe is neither counted nor recorded;
/// * the path is `/hold`: it waits until [`TestBackend::release`];
/// * the path is `/download?bytes=N`: it streams N bytes of [`pattern`];
/// * the path is `/hop`: its response carries hop-by-hop headers;
/// * the path is `/trickle`: it sends `first` and then waits for
///   [`TestBackend::release`] before sending `second`.
pub struct TestBackend {
    /// Its name in the proxy config.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl TestBackend {
    /// Starts a backend called `name`.
    pub async fn start(name: &str) -> TestBackend {
        TestBackend::start_at(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a backend called `name` listening on `addr` (port 0: any), such
    /// as the address of a backend that was stopped, to restart it.
    pub async fn start_at(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = bind_reusing(addr).await;
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            count: AtomicU64::new(0),
            mode: AtomicU8::new(Mode::Normal as u8),
            delay_ms: AtomicU64::new(0),
            health_ok: AtomicBool::new(true),
            probes: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            released: watch::channel(false).0,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone()));
        TestBackend {
            name: name.to_owned(),
            addr,
            shared,
            _tasks: tasks,
        }
    }

    /// Starts backends `server-1` .. `server-N`.
    pub async fn start_many(n: usize) -> Vec<TestBackend> {
        let mut backends = Vec::with_capacity(n);
        for i in 1..=n {
            backends.push(TestBackend::start(&format!("server-{i}")).await);
        }
        backends
    }

    /// Requests received so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Makes it answer after `delay`.
    pub fn set_slow(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self.set_mode(Mode::Slow);
    }

    /// Makes it pass (`true`, the default) or fail (`503`) health probes.
    pub fn set_health(&self, ok: bool) {
        self.shared.health_ok.store(ok, Ordering::SeqCst);
    }

    /// Health probes received so far.
    pub fn probes(&self) -> u64 {
        self.shared.probes.load(Ordering::SeqCst)
    }

    /// Lets `/hold` and `/trickle` requests finish.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// The requests it has seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// A listener on `addr` that does not wait for the TIME_WAIT of an earlier
/// listener on the same port.
pub async fn bind_reusing(addr: SocketAddr) -> TcpListener {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

/// The default `health_check.path`, which test backends answer apart.
pub const HEALTH_PATH: &str = "/health";

/// The loopback address dead backends live on: no test listens there, so a
/// port closed on it stays closed. (A port closed on 127.0.0.1 can be taken
/// at once by another test's listener, and the "dead" backend would answer.)
pub const DEAD_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 99, 1);

/// An address on which nothing listens: bound, then closed.
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind((DEAD_HOST, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// A backend that accepts connections and closes each at once, without
/// answering: the request reaches a server but gets no response. The
/// listener lives as long as the returned set.
pub async fn closing_backend() -> (SocketAddr, JoinSet<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    });
    (addr, tasks)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let service = service_fn(move |request| answer(request, shared.clone()));
        connections.spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type TestBody = BoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<TestBody>, Infallible> {
    if request.uri().path() == HEALTH_PATH {
        shared.probes.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(full("health"));
        if !shared.health_ok.load(Ordering::SeqCst) {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(named(response, &shared.name));
    }
    shared.count.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = request.into_parts();
    let mut hasher = Fnv::new();
    let mut body_len = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            hasher.write(data);
            body_len += data.len() as u64;
        }
    }
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body_len,
        body_hash: hasher.finish(),
    });

    match shared.mode.load(Ordering::SeqCst) {
        m if m == Mode::Hang as u8 => std::future::pending::<()>().await,
        m if m == Mode::Slow as u8 => {
            let delay = shared.delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        m if m == Mode::Fail as u8 => {
            let mut response = Response::new(full("boom"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(named(response, &shared.name));
        }
        _ => {}
    }

    let path = parts.uri.path();
    if path == "/hold" {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|&r| r).await;
    }
    if path == "/download" {
        let bytes: u64 = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let body = PatternBody {
            offset: 0,
            len: bytes,
        };
        return Ok(named(Response::new(body.boxed()), &shared.name));
    }
    if path == "/trickle" {
        let (tx, body) = ChannelBody::new();
        let mut released = shared.released.subscribe();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first")).await;
            let _ = released.wait_for(|&r| r).await;
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        return Ok(named(Response::new(body.boxed()), &shared.name));
    }
    let mut response = Response::new(full(&shared.name));
    let headers = response.headers_mut();
    headers.insert("x-body-len", HeaderValue::from(body_len));
    headers.insert(
        "x-body-hash",
        HeaderValue::from_str(&format!("{:016x}", hasher.finish())).unwrap(),
    );
    if path == "/hop" {
        for (name, value) in [
            ("connection", "x-backend-hop"),
            ("x-backend-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"x\""),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    Ok(named(response, &shared.name))
}

fn named(mut response: Response<TestBody>, name: &str) -> Response<TestBody> {
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::from_str(name).unwrap());
    response
}

/// A full body from text.
pub fn full(text: &str) -> TestBody {
    Full::new(Bytes::from(text.to_owned())).boxed()
}

/// A full body from bytes.
pub fn full_bytes(bytes: Bytes) -> TestBody {
    Full::new(bytes).boxed()
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// Byte `i` of the deterministic download pattern.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// `len` bytes of [`pattern`], produced in 64 KiB frames as they are polled.
pub struct PatternBody {
    offset: u64,
    len: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.offset >= self.len {
            return Poll::Ready(None);
        }
        let end = (self.offset + 64 * 1024).min(self.len);
        let chunk: Vec<u8> = (self.offset..end).map(pattern).collect();
        self.offset = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// A body fed chunk by chunk through a channel, of unknown length.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl ChannelBody {
    /// The sending end and the body.
    pub fn new() -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, ChannelBody(rx))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// 64-bit FNV-1a, to compare bodies without keeping them.
pub struct Fnv(u64);

impl Fnv {
    /// An empty hash.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Adds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// A directory of its own in the system temp dir, removed with what it
/// holds on drop: for config files a test writes and reloads.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory named after the process and `name`.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("affinity-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to the file `name` in it (replacing it); its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// A config on 127.0.0.1:0 with `sections` (TOML tables, may be empty) and
/// one `[[backends]]` entry per `(name, address)`.
pub fn config_text(sections: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut text =
        format!("[listener]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n{sections}\n");
    for (name, addr) in backends {
        text.push_str(&format!(
            "[[backends]]\nname = \"{name}\"\nurl = \"http://{addr}\"\n"
        ));
    }
    text
}

/// `(name, address)` of each backend, for [`config_text`].
pub fn pool(backends: &[TestBackend]) -> Vec<(&str, SocketAddr)> {
    backends.iter().map(|b| (b.name.as_str(), b.addr)).collect()
}

/// Parses a config.
pub fn parse(text: &str) -> Config {
    Config::from_toml(text, Path::new("test.toml")).unwrap()
}

/// Starts the proxy in-process from config text.
pub async fn start_proxy(text: &str) -> ProxyHandle {
    affinity::listener::start(parse(text)).await.unwrap()
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// What the client got back.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The `x-backend` header: which backend answered.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// One HTTP/1.1 keep-alive connection to the proxy.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    _connection: JoinSet<()>,
}

impl Client {
    /// Connects from 127.0.0.1.
    pub async fn connect(proxy: SocketAddr) -> Client {
        Client::connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), proxy).await
    }

    /// Connects from `source` (any 127.0.0.0/8 address works on Linux).
    pub async fn connect_from(source: IpAddr, proxy: SocketAddr) -> Client {
        let stream = connect_stream_from(source, proxy).await;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _ = connection.await;
        });
        Client {
            sender,
            _connection: tasks,
        }
    }

    /// `GET path` with extra headers.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path).header("host", "proxy.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(full("")).unwrap()).await
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, request: Request<TestBody>) -> Reply {
        bounded(async {
            self.sender.ready().await.unwrap();
            let response = self.sender.send_request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
        .await
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send_streaming(&mut self, request: Request<TestBody>) -> Response<Incoming> {
        bounded(async {
            self.sender.ready().await.unwrap();
            self.sender.send_request(request).await.unwrap()
        })
        .await
    }
}

/// A TCP connection to `proxy` from `source`, port chosen by the OS.
pub async fn connect_stream_from(source: IpAddr, proxy: SocketAddr) -> TcpStream {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    bounded(socket.connect(proxy)).await.unwrap()
}

/// A header name, for building requests in tests.
pub fn header(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.x over TCP
// ---------------------------------------------------------------------------

/// How long a [`RawConnection`] waits for its peer's next bytes before
/// failing the test: a peer that neither answers nor closes has hung.
pub const RAW_WAIT: Duration = Duration::from_secs(3);

/// A response as read off a [`RawConnection`], byte for byte.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The head as received (status line and header lines).
    pub head: String,
    /// The header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body as the head frames it (decoded, when chunked).
    pub body: Vec<u8>,
    /// Whether the body ended as its framing says: every `Content-Length`
    /// byte, the last chunk, or, for a body delimited by the close, a clean
    /// close (not a reset).
    pub complete: bool,
    /// Whether the body was chunked.
    pub chunked: bool,
    /// The trailer lines after the last chunk of a chunked body.
    pub trailers: Vec<String>,
}

impl RawResponse {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One client TCP connection that writes exactly the bytes a test gives it
/// and reads responses without any HTTP library smoothing them over.
pub struct RawConnection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The peer closed (cleanly) or reset the connection.
    ended: bool,
    /// It was a reset (or another read error).
    reset: bool,
}

impl RawConnection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConnection {
        let stream = bounded(TcpStream::connect(addr)).await.unwrap();
        RawConnection::over(stream)
    }

    /// Over a connection made already (such as from a chosen source
    /// address, [`connect_stream_from`]).
    pub fn over(stream: TcpStream) -> RawConnection {
        RawConnection {
            stream,
            buf: Vec::new(),
            ended: false,
            reset: false,
        }
    }

    /// Writes all of `bytes`. An error is returned, not a failure: a server
    /// may answer and close before it has read everything.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        bounded(self.stream.write_all(bytes)).await
    }

    /// Reads more bytes: `false` once the peer has closed or reset. Fails
    /// the test after [`RAW_WAIT`] of silence.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        if self.ended {
            return false;
        }
        match tokio::time::timeout(RAW_WAIT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => {
                self.ended = true;
                false
            }
            Ok(Ok(_)) => true,
            Ok(Err(_)) => {
                self.ended = true;
                self.reset = true;
                false
            }
            Err(_) => panic!(
                "the peer neither sent anything nor closed within {RAW_WAIT:?}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// One line (without its CRLF), reading as needed; `None` if the
    /// connection ends first.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Exactly `n` bytes, or what came before the connection ended.
    async fn take(&mut self, n: usize) -> (Vec<u8>, bool) {
        while self.buf.len() < n {
            if !self.fill().await {
                let got = std::mem::take(&mut self.buf);
                return (got, false);
            }
        }
        (self.buf.drain(..n).collect(), true)
    }

    /// Reads the next response head only (status line and headers, without
    /// the blank line), leaving any body unread: for a `HEAD` answer, or a
    /// body that never ends. `None` if the connection ends first.
    pub async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 4);
                return Some(head);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads the next response (a `1xx` included, as a response of its
    /// own); `None` if the connection ends before a complete head.
    pub async fn response(&mut self) -> Option<RawResponse> {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            head,
            headers,
            body: Vec::new(),
            complete: true,
            chunked: false,
            trailers: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Some(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.chunked = true;
            response.complete = self
                .chunks(&mut response.body, &mut response.trailers)
                .await;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("a numeric Content-Length");
            let (body, complete) = self.take(len).await;
            response.body = body;
            response.complete = complete;
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
            response.complete = !self.reset;
        }
        Some(response)
    }

    /// Decodes a chunked body into `body`, its trailer lines into
    /// `trailers`: `true` if it ended with the last chunk and its trailers.
    async fn chunks(&mut self, body: &mut Vec<u8>, trailers: &mut Vec<String>) -> bool {
        loop {
            let Some(line) = self.line().await else {
                return false;
            };
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    match self.line().await {
                        Some(line) if line.is_empty() => return true,
                        Some(line) => trailers.push(String::from_utf8_lossy(&line).into_owned()),
                        None => return false,
                    }
                }
            }
            let (data, whole) = self.take(size + 2).await;
            let data_len = data.len().min(size);
            body.extend_from_slice(&data[..data_len]);
            if !whole {
                return false;
            }
        }
    }

    /// Whether the peer closes (or resets) the connection within `wait`,
    /// sending nothing more. Bytes that arrive instead are kept and mean no.
    pub async fn closes_within(&mut self, wait: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        if self.ended {
            return true;
        }
        if !self.buf.is_empty() {
            return false;
        }
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => {
                self.ended = true;
                true
            }
            Ok(Err(_)) => {
                self.ended = true;
                self.reset = true;
                true
            }
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// The bytes received and not yet read as part of a response.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// The underlying stream, for a test that must read and write at once.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// A second handle on the connection, to write with (an upload going
    /// on) while this one reads the answer: a peer that answers early and
    /// closes then resets the connection, and what it sent before still
    /// reads here.
    pub fn with_writer(self) -> (RawConnection, TcpStream) {
        let RawConnection {
            stream,
            buf,
            ended,
            reset,
        } = self;
        let stream = stream.into_std().unwrap();
        let writer = TcpStream::from_std(stream.try_clone().unwrap()).unwrap();
        let reader = RawConnection {
            stream: TcpStream::from_std(stream).unwrap(),
            buf,
            ended,
            reset,
        };
        (reader, writer)
    }
}

// ---------------------------------------------------------------------------
// Scripted raw-TCP backends
// ---------------------------------------------------------------------------

/// A request as a [`Scripted`] backend read it off the wire.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request line without its version: `METHOD /path`.
    pub line: String,
    /// The head as received: request line and header lines, CRLF-separated,
    /// without the blank line.
    pub head: String,
    /// The body as its framing delimits it, decoded when chunked; empty
    /// when only the head was read ([`Conn::receive_head`]).
    pub body: Vec<u8>,
    /// The trailer lines of a chunked body.
    pub trailers: Vec<String>,
    /// What was wrong with the chunked framing, if anything (the
    /// connection was then given up).
    pub bad_framing: Option<String>,
}

impl Received {
    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

/// What a scripted backend received: each request with the number of the
/// connection it came on, health probes left out.
#[derive(Default)]
pub struct Log {
    connections: AtomicUsize,
    requests: Mutex<Vec<(usize, Received)>>,
}

/// One connection a [`Scripted`] backend accepted, handed to its script.
pub struct Conn {
    /// The connection.
    pub stream: TcpStream,
    /// Bytes read and not yet taken as part of a request.
    pub buf: Vec<u8>,
    /// 0 for the first connection the backend accepted, and so on.
    pub index: usize,
    log: Arc<Log>,
}

impl Conn {
    /// Reads the next request (head and body, `Content-Length` or chunked)
    /// and returns its `METHOD /path`; `None` if the connection ends first.
    /// Health probes are answered `200` and skipped.
    pub async fn request(&mut self) -> Option<String> {
        self.receive().await.map(|received| received.line)
    }

    /// Reads the next request, head and body (`Content-Length` or chunked,
    /// the chunked framing checked strictly), and records it; `None` if the
    /// connection ends first or the framing is invalid. Health probes are
    /// answered `200` and skipped.
    pub async fn receive(&mut self) -> Option<Received> {
        let mut received = self.receive_unrecorded_head().await?;
        let ended = self.read_body(&mut received).await;
        if ended.is_none() && received.bad_framing.is_none() {
            return None;
        }
        self.record(&received);
        ended.map(|()| received)
    }

    /// Reads the next request head only, leaving its body unread (as a
    /// server answering early does), and records it. Health probes are
    /// answered `200` and skipped.
    pub async fn receive_head(&mut self) -> Option<Received> {
        let received = self.receive_unrecorded_head().await?;
        self.record(&received);
        Some(received)
    }

    fn record(&self, received: &Received) {
        self.log
            .requests
            .lock()
            .unwrap()
            .push((self.index, received.clone()));
    }

    /// The next head that is not a health probe's.
    async fn receive_unrecorded_head(&mut self) -> Option<Received> {
        loop {
            let end = loop {
                if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at;
                }
                if !self.fill().await {
                    return None;
                }
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            let line = head
                .lines()
                .next()
                .and_then(|l| l.rsplit_once(' '))
                .map_or_else(String::new, |(line, _)| line.to_owned());
            if line.ends_with(" /health") {
                self.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                continue;
            }
            return Some(Received {
                line,
                head,
                body: Vec::new(),
                trailers: Vec::new(),
                bad_framing: None,
            });
        }
    }

    /// Reads the body `received`'s head announces; `None` if the connection
    /// ends first or its chunked framing is invalid.
    async fn read_body(&mut self, received: &mut Received) -> Option<()> {
        let chunked = received
            .header_values("transfer-encoding")
            .iter()
            .any(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return self.chunked_body(received).await;
        }
        if let Some(len) = received
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                if !self.fill().await {
                    return None;
                }
            }
            received.body = self.buf.drain(..len).collect();
        }
        Some(())
    }

    /// Decodes a chunked body strictly: hex size (extensions allowed), CRLF,
    /// the data, CRLF; after the last chunk, trailer lines up to an empty
    /// one.
    async fn chunked_body(&mut self, received: &mut Received) -> Option<()> {
        loop {
            let line = self.line().await?;
            let text = String::from_utf8_lossy(&line).into_owned();
            let digits = text
                .split(';')
                .next()
                .unwrap_or("")
                .trim_end_matches([' ', '\t']);
            let Ok(size) = usize::from_str_radix(digits, 16) else {
                received.bad_framing = Some(format!("chunk size line {text:?}"));
                return None;
            };
            if size == 0 {
                loop {
                    let trailer = self.line().await?;
                    if trailer.is_empty() {
                        return Some(());
                    }
                    received
                        .trailers
                        .push(String::from_utf8_lossy(&trailer).into_owned());
                }
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    return None;
                }
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                received.bad_framing = Some(format!("no CRLF after a chunk of {size} bytes"));
                return None;
            }
            received.body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// One line without its CRLF; `None` if the connection ends first.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads more bytes: `false` once the connection has ended (or after
    /// [`LIMIT`] of silence).
    pub async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        matches!(
            tokio::time::timeout(LIMIT, self.stream.read_buf(&mut self.buf)).await,
            Ok(Ok(n)) if n > 0
        )
    }

    /// Writes `bytes`, ignoring a proxy that has gone.
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Aborts the connection: `SO_LINGER` 0 makes the close send a RST.
    pub fn reset(self) {
        self.stream.set_zero_linger().unwrap();
        drop(self.stream);
    }

    /// Serves every request on the connection with a small `200` naming the
    /// request and, in `x-conn`, the connection.
    pub async fn serve_ok(mut self) {
        while let Some(line) = self.request().await {
            let body = format!("ok {line}");
            self.write(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-conn: {}\r\n\r\n{body}",
                    body.len(),
                    self.index
                )
                .as_bytes(),
            )
            .await;
        }
    }
}

/// A raw TCP backend on 127.0.0.1 that runs its script on every connection
/// it accepts, for answers no HTTP library would send. Dropping it stops
/// it, its connections with it.
pub struct Scripted {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Log>,
    _tasks: JoinSet<()>,
}

impl Scripted {
    /// Starts a backend that runs `script` on each connection.
    pub async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let mut tasks = JoinSet::new();
        let shared = log.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = shared.connections.fetch_add(1, Ordering::SeqCst);
                connections.spawn(script(Conn {
                    stream,
                    buf: Vec::new(),
                    index,
                    log: shared.clone(),
                }));
            }
        });
        Scripted {
            addr,
            log,
            _tasks: tasks,
        }
    }

    /// The requests received so far, as `(connection, "METHOD /path")`.
    pub fn requests(&self) -> Vec<(usize, String)> {
        self.received()
            .into_iter()
            .map(|(conn, received)| (conn, received.line))
            .collect()
    }

    /// The requests received so far, whole, with their connection.
    pub fn received(&self) -> Vec<(usize, Received)> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far (health probes' included).
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }
}

/// `request` on a new raw connection to `proxy`; the response, or `None` if
/// the proxy closed without one.
pub async fn exchange(proxy: SocketAddr, request: &[u8]) -> (Option<RawResponse>, RawConnection) {
    let mut client = RawConnection::connect(proxy).await;
    client.send(request).await.unwrap();
    let response = client.response().await;
    (response, client)
}

/// A `GET` of `path` with `Host`.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n").into_bytes()
}

/// A `POST` of `path` with a small body.
pub fn post(path: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 8\r\n\r\norder #1")
        .into_bytes()
}

// ---------------------------------------------------------------------------
// What the hashing core predicts
// ---------------------------------------------------------------------------

/// The fallback order (backend names, first choice first) of each key's
/// bytes under `config`'s hash algorithm, with every backend healthy and the
/// default hash key: where the proxy sends that key.
pub fn fallback_orders(
    config: &affinity::config::PoolConfig,
) -> impl Fn(&[u8]) -> Vec<String> + '_ {
    use affinity::balance::hash::KeyHasher;
    use affinity::balance::selector::{HashSelector, HashTable};
    let table = HashTable::new(
        config.balancer.hash_algorithm().expect("a hash algorithm"),
        &config.members(),
    )
    .unwrap();
    let selector = HashSelector::new(&table, &vec![true; config.backends.len()]);
    move |key: &[u8]| {
        selector
            .fallback(KeyHasher::default().hash(key))
            .map(|i| config.backends[i].name.clone())
            .collect()
    }
}

/// Waits (bounded) until the pool's published snapshot has `healthy`
/// healthy backends; returns how long that took.
pub async fn until_healthy_count(pool: &affinity::pool::Pool, healthy: usize) -> Duration {
    let started = std::time::Instant::now();
    bounded(async {
        while pool.snapshot().healthy_count() != healthy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    started.elapsed()
}

/// Every value of header `name`, as text.
pub fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}
