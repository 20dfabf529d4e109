//! HTTP/2 with prior knowledge (h2c) as real clients speak it, through a raw
//! client on the `h2` crate that sends each frame when the test says so:
//! request bodies whose `END_STREAM` comes in a frame of its own, many
//! streams at once on one connection, and every `[limits]` rule.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::common::*;

/// An h2c connection to `addr`: the handle that opens streams, and the task
/// that drives the connection (it ends when the connection does).
async fn connect(addr: SocketAddr) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = bounded(h2::client::handshake(stream)).await.unwrap();
    (sender, tokio::spawn(connection))
}

/// A response as the client read it.
#[derive(Debug)]
struct H2Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl H2Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Reads a response head and its whole body.
async fn read_reply(response: h2::client::ResponseFuture) -> Result<H2Reply, h2::Error> {
    let (head, mut body) = response.await?.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        // Without this the connection window fills up after 64 KiB.
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(H2Reply {
        status: head.status,
        headers: head.headers,
        body: Bytes::from(bytes),
    })
}

/// A POST of `body` with its `Content-Length`, sent as httpx and other
/// clients send it: HEADERS, then DATA, then, after a yield, an empty DATA
/// frame that carries `END_STREAM`.
async fn post_ending_apart(
    sender: SendRequest<Bytes>,
    path: &str,
    body: Bytes,
) -> Result<H2Reply, h2::Error> {
    let mut sender = sender.ready().await?;
    let request = Request::post(format!("http://affinity.test{path}"))
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let (response, mut stream) = sender.send_request(request, false)?;
    stream.send_data(body, false)?;
    tokio::task::yield_now().await;
    stream.send_data(Bytes::new(), true)?;
    read_reply(response).await
}

/// A request with no body and `headers` besides the pseudo-headers.
async fn get_with(
    sender: SendRequest<Bytes>,
    headers: &[(String, String)],
) -> Result<H2Reply, h2::Error> {
    let mut sender = sender.ready().await?;
    let mut request = Request::get("http://affinity.test/fields");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let (response, _stream) = sender.send_request(request.body(()).unwrap(), true)?;
    read_reply(response).await
}

/// `count` distinct header fields of 40 bytes each as HTTP/2 counts a
/// field's size (name, value and 32 bytes of overhead).
fn fields(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-h{i:04}"), "1".to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_that_end_their_stream_in_a_frame_of_their_own_all_get_the_backends_answer()
 {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    let mut streams: JoinSet<Result<H2Reply, h2::Error>> = JoinSet::new();
    let mut failures = Vec::new();
    let mut answered = 0;
    for i in 0..400u32 {
        if streams.len() == 20 {
            match bounded(streams.join_next()).await.unwrap().unwrap() {
                Ok(reply) => answered += usize::from(check_echo(&reply)),
                Err(error) => failures.push(error.to_string()),
            }
        }
        let body = Bytes::from(format!("request {i}: {}", "x".repeat(100)));
        streams.spawn(post_ending_apart(sender.clone(), "/upload", body));
    }
    while let Some(done) = bounded(streams.join_next()).await {
        match done.unwrap() {
            Ok(reply) => answered += usize::from(check_echo(&reply)),
            Err(error) => failures.push(error.to_string()),
        }
    }
    assert_eq!(failures, Vec::<String>::new(), "requests that failed");
    assert_eq!(answered, 400);
    assert_eq!(backends[0].count(), 400);
}

/// Whether `reply` is the backend's answer to a POST of the body the
/// concurrency test sends.
fn check_echo(reply: &H2Reply) -> bool {
    reply.status == 200
        && reply.header("x-backend") == Some("server-1")
        && &reply.body[..] == b"server-1"
        && reply
            .header("x-body-len")
            .and_then(|len| len.parse::<usize>().ok())
            .is_some_and(|len| len > 100)
}

#[tokio::test]
async fn a_post_that_ends_its_stream_only_after_the_whole_response_is_not_reset() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    let mut sender = bounded(sender.ready()).await.unwrap();
    let request = Request::post("http://affinity.test/upload")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (response, mut stream) = sender.send_request(request, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    let reply = bounded(read_reply(response)).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-len"), Some("5"));
    // Long enough for a reset sent with the response's end to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.send_data(Bytes::new(), true).unwrap();
    let reset = tokio::time::timeout(
        Duration::from_millis(200),
        std::future::poll_fn(|cx| stream.poll_reset(cx)),
    )
    .await;
    assert!(reset.is_err(), "the stream was reset: {reset:?}");
}

#[tokio::test]
async fn a_client_that_never_ends_its_request_stream_is_reset_after_the_header_timeout() {
    let backends = TestBackend::start_many(1).await;
    let limits = "[limits]\nheader_timeout = \"1s\"\n";
    let proxy = start_proxy(&config_text(limits, &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    let mut sender = bounded(sender.ready()).await.unwrap();
    let request = Request::post("http://affinity.test/upload")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (response, mut stream) = sender.send_request(request, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    let reply = bounded(read_reply(response)).await.unwrap();
    assert_eq!(reply.status, 200);
    let waited = Instant::now();
    let reason = bounded(std::future::poll_fn(|cx| stream.poll_reset(cx)))
        .await
        .unwrap();
    assert_eq!(reason, h2::Reason::NO_ERROR);
    let waited = waited.elapsed();
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_secs(5),
        "reset after {waited:?}"
    );
}

#[tokio::test]
async fn an_http2_request_with_a_thousand_header_fields_gets_431_from_the_proxy() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    // 40,000 bytes: under the 64 KiB header list limit.
    let reply = bounded(get_with(sender, &fields(1000))).await.unwrap();
    assert_eq!(reply.status, 431);
    assert_eq!(&reply.body[..], b"request header fields too large\n");
    assert_eq!(backends[0].count(), 0);
}

#[tokio::test]
async fn an_http2_request_over_max_headers_gets_431_and_one_at_the_limit_is_forwarded() {
    let backends = TestBackend::start_many(1).await;
    let limits = "[limits]\nmax_headers = 20\n";
    let proxy = start_proxy(&config_text(limits, &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    let over = bounded(get_with(sender.clone(), &fields(21)))
        .await
        .unwrap();
    assert_eq!(over.status, 431);
    assert_eq!(backends[0].count(), 0);
    // Pseudo-headers are not fields: :method, :scheme, :authority and :path
    // come on top of these 20, as the request line does in HTTP/1.
    let at = bounded(get_with(sender, &fields(20))).await.unwrap();
    assert_eq!(at.status, 200);
    assert_eq!(at.header("x-backend"), Some("server-1"));
    assert_eq!(backends[0].count(), 1);
    assert_eq!(backends[0].seen()[0].headers["x-h0019"], "1");
}

#[tokio::test]
async fn an_http2_header_list_over_max_header_bytes_gets_431_and_reaches_no_backend() {
    let backends = TestBackend::start_many(1).await;
    let limits = "[limits]\nmax_header_bytes = 8192\n";
    let proxy = start_proxy(&config_text(limits, &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;
    let big = vec![("x-big".to_owned(), "v".repeat(10_000))];
    let over = bounded(get_with(sender.clone(), &big)).await.unwrap();
    assert_eq!(over.status, 431);
    assert_eq!(backends[0].count(), 0);
    // The connection serves the next request.
    let small = vec![("x-small".to_owned(), "v".repeat(4_000))];
    let within = bounded(get_with(sender, &small)).await.unwrap();
    assert_eq!(within.status, 200);
    assert_eq!(backends[0].count(), 1);
}

#[tokio::test]
async fn an_http2_body_over_max_body_bytes_gets_413_and_one_within_it_is_forwarded() {
    let backends = TestBackend::start_many(1).await;
    let limits = "[limits]\nmax_body_bytes = 1000\n";
    let proxy = start_proxy(&config_text(limits, &pool(&backends))).await;
    let (sender, _connection) = connect(proxy.local_addr()).await;

    let mut ready = bounded(sender.clone().ready()).await.unwrap();
    let request = Request::post("http://affinity.test/upload")
        .header("content-length", "5000")
        .body(())
        .unwrap();
    let (response, _stream) = ready.send_request(request, false).unwrap();
    let over = bounded(read_reply(response)).await.unwrap();
    assert_eq!(over.status, 413);
    assert_eq!(backends[0].count(), 0);

    let body = Bytes::from(vec![b'x'; 1000]);
    let within = bounded(post_ending_apart(sender, "/upload", body))
        .await
        .unwrap();
    assert_eq!(within.status, 200);
    assert_eq!(within.header("x-body-len"), Some("1000"));
    assert_eq!(backends[0].count(), 1);
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let backends = TestBackend::start_many(1).await;
    let limits = "[limits]\nheader_timeout = \"1s\"\n";
    let proxy = start_proxy(&config_text(limits, &pool(&backends))).await;
    let started = Instant::now();
    let (_sender, connection) = connect(proxy.local_addr()).await;
    // The proxy drops the connection: the client sees it end, cleanly or not.
    let _ = bounded(connection).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// A body of one data frame, then trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// An HTTP/2 (prior knowledge) backend on 127.0.0.1 answering each request
/// with `name`, a `grpc-status: 0` trailer, and what it saw: the `te`
/// header (`x-seen-te`) and the HTTP version; it counts its connections.
async fn h2c_backend(
    name: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let te = request
                            .headers()
                            .get("te")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let version = format!("{:?}", request.version());
                        let mut trailers = hyper::HeaderMap::new();
                        trailers
                            .insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        let body = WithTrailers {
                            data: Some(Bytes::from_static(name.as_bytes())),
                            trailers: Some(trailers),
                        };
                        let response = hyper::Response::builder()
                            .header("x-backend", name)
                            .header("x-seen-te", te)
                            .header("x-seen-version", version)
                            .body(body)
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (address, connections)
}

#[tokio::test]
async fn an_h2c_pool_multiplexes_requests_over_one_backend_connection_and_passes_trailers() {
    use std::sync::atomic::Ordering;

    let (backend, connections) = h2c_backend("h2c-1").await;
    let proxy = start_proxy(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\
         [upstream]\nprotocol = \"h2c\"\n[health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n\
         [[backends]]\nname = \"h2c-1\"\nurl = \"http://{backend}\"\n"
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            let request = Request::post(format!("http://proxy.test/svc.Echo/Call{i}"))
                .header("te", "trailers")
                .header("content-type", "application/grpc")
                .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let te = response.headers()["x-seen-te"].to_str().unwrap().to_owned();
            let version = response.headers()["x-seen-version"]
                .to_str()
                .unwrap()
                .to_owned();
            let collected = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
            let trailers = collected.trailers().cloned();
            (status, te, version, collected.to_bytes(), trailers)
        }));
    }
    for call in calls {
        let (status, te, version, body, trailers) = bounded(call).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(te, "trailers");
        assert_eq!(version, "HTTP/2.0");
        assert_eq!(&body[..], b"h2c-1");
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap()),
            Some("0")
        );
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "one connection carries every stream"
    );
}

/// An h2c pool probes its backends over HTTP/2: an HTTP/2-only backend stays
/// healthy there, and is taken out by the HTTP/1.1 probes of an http1 pool.
#[tokio::test]
async fn an_h2c_pool_probes_its_backends_over_http2() {
    let (backend, _) = h2c_backend("h2c-probed").await;
    let pool = |protocol: &str| {
        format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nprotocol = \"{protocol}\"\n\
             [health_check]\ninterval = \"50ms\"\ntimeout = \"40ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 2\n\
             [[backends]]\nname = \"h2c-probed\"\nurl = \"http://{backend}\"\n"
        )
    };
    let h2 = start_proxy(&pool("h2c")).await;
    let h1 = start_proxy(&pool("http1")).await;
    until_healthy_count(&h1.pool(), 0).await;
    // Many probe rounds later, the h2c pool still has it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h2.pool().snapshot().healthy_count(), 1);
    let record = h2.pool().snapshot().backends()[0].state().health();
    let last = record.last_probe.expect("probed");
    assert!(last.ok, "{}", last.detail);
}
