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
