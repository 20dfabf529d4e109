//! Fault handling (issue 7, item 3): backends that refuse, hang, reset,
//! answer garbage, trickle, close pooled connections or die under load,
//! scripted as raw TCP servers in the test, with what the client sees
//! asserted over a raw connection (or, for streaming, hyper's strict client).
//!
//! Every await is bounded: a proxy that hangs fails the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Request;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::common::*;

/// The proxy's request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// Config sections for the tests: probes rare (a probe a scripted backend
/// gets is answered apart anyway), the request timeout short, and
/// `upstream` settings appended.
fn sections(upstream: &str) -> String {
    format!(
        "[health_check]\ninterval = \"60s\"\ntimeout = \"1s\"\n\
         [upstream]\nrequest_timeout = \"300ms\"\n{upstream}"
    )
}

// ---------------------------------------------------------------------------
// The proxy in front of a scripted backend ([`Scripted`])
// ---------------------------------------------------------------------------

/// A proxy in front of the one scripted backend `backend`.
async fn proxy_for(backend: &Scripted, upstream: &str) -> affinity::listener::ProxyHandle {
    start_proxy(&config_text(
        &sections(upstream),
        &[("scripted", backend.addr)],
    ))
    .await
}

// ---------------------------------------------------------------------------
// Before a response head
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_that_refuses_connections_gets_503_at_once() {
    let proxy = start_proxy(&config_text(
        &sections(""),
        &[("refuses", dead_address().await)],
    ))
    .await;
    let started = Instant::now();
    let (response, _) = exchange(proxy.local_addr(), &get("/")).await;
    let response = response.expect("a response");
    assert_eq!(response.status, 503, "{}", response.head);
    assert_eq!(response.body, b"no healthy backend\n");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

// Each case on a proxy of its own: failures may count against the backend's
// health, and the next case must not find it taken out.
#[tokio::test]
async fn a_backend_that_accepts_and_never_answers_gets_504_at_the_request_timeout() {
    for (request, line) in [(get("/hang"), "GET /hang"), (post("/hang"), "POST /hang")] {
        let backend = Scripted::start(|mut conn| async move {
            if conn.request().await.is_some() {
                std::future::pending::<()>().await;
            }
        })
        .await;
        let proxy = proxy_for(&backend, "retries = 1").await;
        let started = Instant::now();
        let (response, _) = exchange(proxy.local_addr(), &request).await;
        let took = started.elapsed();
        let response = response.expect("a response");
        assert_eq!(response.status, 504, "{line}: {}", response.head);
        assert_eq!(response.body, b"gateway timeout\n");
        assert!(
            took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_millis(500),
            "{line}: took {took:?}"
        );
        let requests: Vec<String> = backend.requests().into_iter().map(|(_, r)| r).collect();
        assert_eq!(requests, [line], "a timeout is not retried");
    }
}

// The proxy cannot tell a pooled connection from a fresh one when the
// exchange breaks: an idempotent request broken off before any answer is
// sent once more, on another connection (the stale-pool race is the usual
// cause); a POST never is.
#[tokio::test]
async fn a_backend_that_resets_before_answering_gets_502_a_get_resent_once_a_post_never() {
    for (request, line, times) in [(get("/rst"), "GET /rst", 2), (post("/rst"), "POST /rst", 1)] {
        let backend = Scripted::start(|mut conn| async move {
            if conn.request().await.is_some() {
                conn.reset();
            }
        })
        .await;
        let proxy = proxy_for(&backend, "retries = 1").await;
        let (response, _) = exchange(proxy.local_addr(), &request).await;
        let response = response.expect("a response");
        assert_eq!(response.status, 502, "{line}: {}", response.head);
        assert_eq!(response.body, b"bad gateway\n");
        let requests = backend.requests();
        let lines: Vec<&str> = requests.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(lines, vec![line; times], "{line}");
        if times == 2 {
            assert_ne!(
                requests[0].0, requests[1].0,
                "resent on the same connection"
            );
        }
    }
}

/// Responses a backend sends in place of a valid one; each must become a
/// `502`.
const INVALID_RESPONSES: [(&str, &[u8]); 10] = [
    ("a status that is not a number", b"HTTP/1.1 abc\r\n\r\n"),
    (
        "a four-digit status",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    ),
    ("garbage", b"\x16\x03\x01\x02\x00\xff\xfegarbage\r\n\r\n"),
    ("plain text", b"hello there\r\n\r\n"),
    ("a head cut short", b"HTTP/1.1 200 OK\r\ncontent-le"),
    ("nothing at all", b""),
    (
        "an invalid Content-Length",
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nhello",
    ),
    (
        "two differing Content-Lengths",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    ),
    (
        "NUL in a header value",
        b"HTTP/1.1 200 OK\r\nx-a: 1\x002\r\ncontent-length: 0\r\n\r\n",
    ),
    (
        "an obs-fold header",
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n continued\r\ncontent-length: 0\r\n\r\n",
    ),
];

/// A proxy in front of a backend that answers every request with `bytes`
/// and closes (with a reset if `reset`) after `linger`.
async fn answering(
    bytes: &[u8],
    linger: Duration,
    reset: bool,
) -> (Scripted, affinity::listener::ProxyHandle) {
    let bytes: Arc<[u8]> = bytes.into();
    let backend = Scripted::start(move |mut conn| {
        let bytes = bytes.clone();
        async move {
            if conn.request().await.is_none() {
                return;
            }
            conn.write(&bytes).await;
            tokio::time::sleep(linger).await;
            if reset {
                conn.reset();
            }
        }
    })
    .await;
    let proxy = proxy_for(&backend, "retries = 1").await;
    (backend, proxy)
}

// A GET: one that the backend broke off before a complete head (closed,
// cut short) is sent once more on another connection, an answer it could
// not parse is not.
#[tokio::test]
async fn an_invalid_or_garbage_response_gets_502_and_the_request_at_most_twice() {
    for (case, bytes) in INVALID_RESPONSES {
        let (backend, proxy) = answering(bytes, Duration::ZERO, false).await;
        let (response, _) = exchange(proxy.local_addr(), &get("/invalid")).await;
        let response = response.unwrap_or_else(|| panic!("{case}: closed without a response"));
        assert_eq!(response.status, 502, "{case}: {}", response.head);
        let requests = backend.requests();
        assert!((1..=2).contains(&requests.len()), "{case}: {requests:?}");
        if requests.len() == 2 {
            assert_ne!(
                requests[0].0, requests[1].0,
                "{case}: resent on the same connection"
            );
        }
    }
}

#[tokio::test]
async fn a_backends_5xx_is_passed_through_untouched_and_not_retried() {
    let script = |mut conn: Conn| async move {
        while conn.request().await.is_some() {
            conn.write(
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\n\
                  content-length: 4\r\n\r\nbusy",
            )
            .await;
        }
    };
    let (a, b) = (Scripted::start(script).await, Scripted::start(script).await);
    let proxy = start_proxy(&config_text(
        &sections("retries = 1"),
        &[("a", a.addr), ("b", b.addr)],
    ))
    .await;
    let (response, _) = exchange(proxy.local_addr(), &get("/busy")).await;
    let response = response.expect("a response");
    assert_eq!(response.status, 503, "{}", response.head);
    assert_eq!(response.body, b"busy");
    assert_eq!(response.header("retry-after"), Some("7"));
    assert_eq!(a.requests().len() + b.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// During a response body
// ---------------------------------------------------------------------------

/// Response starts that promise more than the backend then sends, and how
/// the backend ends: `true` for a reset, `false` for a plain close.
const CUT_OFF: [(&str, &[u8], bool); 4] = [
    (
        "Content-Length 1000, 100 sent, reset",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        true,
    ),
    (
        "Content-Length 1000, 100 sent, closed",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        false,
    ),
    (
        "chunked, cut inside a chunk, reset",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n",
        true,
    ),
    (
        "delimited by the close, reset",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
        true,
    ),
];

// Whatever the framing the backend used, the client must be able to tell
// its response is incomplete: fewer bytes than its Content-Length, or a
// chunked body without its last chunk.
#[tokio::test]
async fn a_backend_cut_off_mid_body_cuts_the_clients_response_off_too() {
    for (case, head, reset) in CUT_OFF {
        let mut start = head.to_vec();
        start.extend_from_slice(&[b'x'; 100]);
        // The 50 ms let the proxy pass the bytes on before the cut.
        let (backend, proxy) = answering(&start, Duration::from_millis(50), reset).await;
        let (response, mut client) = exchange(proxy.local_addr(), &get("/cut")).await;
        if let Some(response) = response {
            // The head was passed on before the cut: then the body must
            // show it.
            assert_eq!(response.status, 200, "{case}: {}", response.head);
            assert!(
                !response.complete,
                "{case}: the client got a complete response of {} bytes: {}",
                response.body.len(),
                response.head
            );
            assert!(
                response.body.len() <= 100,
                "{case}: {} bytes",
                response.body.len()
            );
            assert!(
                client.closes_within(Duration::from_secs(1)).await,
                "{case}: still open"
            );
        }
        let requests = backend.requests();
        assert_eq!(
            requests.len(),
            1,
            "{case}: a cut-off response is not retried: {requests:?}"
        );
    }
}

// The bytes reach the client as the backend sends them, and a body that
// takes longer than `request_timeout` (which bounds the wait for the head)
// still completes.
#[tokio::test]
async fn a_slow_body_reaches_the_client_as_it_comes_and_completes() {
    let next = Arc::new(Notify::new());
    let go = next.clone();
    let backend = Scripted::start(move |mut conn| {
        let go = go.clone();
        async move {
            if conn.request().await.is_none() {
                return;
            }
            conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 30\r\n\r\naaaaaaaaaa")
                .await;
            go.notified().await;
            conn.write(b"bbbbbbbbbb").await;
            tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_millis(200)).await;
            conn.write(b"cccccccccc").await;
            conn.serve_ok().await;
        }
    })
    .await;
    let proxy = proxy_for(&backend, "").await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let response = client
        .send_streaming(
            Request::get("/slow")
                .header("host", "proxy.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "30");
    let mut body = response.into_body();
    let mut got = Vec::new();
    let frame = bounded(body.frame()).await.unwrap().unwrap();
    got.extend_from_slice(frame.data_ref().unwrap());
    assert_eq!(got, b"aaaaaaaaaa", "before the backend sent more");
    next.notify_one();
    let rest = bounded(body.collect()).await.unwrap().to_bytes();
    got.extend_from_slice(&rest);
    assert_eq!(got, b"aaaaaaaaaabbbbbbbbbbcccccccccc");
    assert_eq!(backend.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Pooled connections
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Backend connection reuse
// ---------------------------------------------------------------------------

// One backend connection carries every request that comes after a complete
// response, whichever client connection it came on (one worker thread).
#[tokio::test]
async fn requests_after_complete_responses_reuse_one_backend_connection() {
    let backend = Scripted::start(|conn| conn.serve_ok()).await;
    let proxy = proxy_for(&backend, "").await;
    for client in 0..5 {
        let mut raw = RawConnection::connect(proxy.local_addr()).await;
        for i in 0..10 {
            raw.send(&get(&format!("/c{client}/r{i}"))).await.unwrap();
            let response = raw.response().await.expect("a response");
            assert_eq!(response.status, 200, "{}", response.head);
            assert_eq!(response.header("x-conn"), Some("0"), "{}", response.head);
        }
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 50);
    assert!(requests.iter().all(|(conn, _)| *conn == 0), "{requests:?}");
}

// A response without a body (`204`, or any answer to `HEAD`) is complete at
// once: its connection goes back too.
#[tokio::test]
async fn responses_without_a_body_give_their_connection_back() {
    let backend = Scripted::start(|mut conn| async move {
        while let Some(line) = conn.request().await {
            let head: &[u8] = if line.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
            } else {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            };
            conn.write(head).await;
        }
    })
    .await;
    let proxy = proxy_for(&backend, "").await;
    let mut raw = RawConnection::connect(proxy.local_addr()).await;
    for i in 0..6 {
        let request = if i % 2 == 0 {
            get(&format!("/empty{i}"))
        } else {
            format!("HEAD /head{i} HTTP/1.1\r\nHost: proxy.test\r\n\r\n").into_bytes()
        };
        raw.send(&request).await.unwrap();
        if i % 2 == 0 {
            let response = raw.response().await.expect("a response");
            assert_eq!(response.status, 204, "{}", response.head);
        } else {
            // A HEAD answer has no body whatever its Content-Length: read
            // the head alone.
            let head = raw.head().await.expect("a head");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(requests.iter().all(|(conn, _)| *conn == 0), "{requests:?}");
}

// A response the client stopped reading midway leaves its backend connection
// in the middle of a body: it never carries another request.
#[tokio::test]
async fn a_response_abandoned_midway_never_lends_its_connection_again() {
    let backend = Scripted::start(|mut conn| async move {
        if conn.index > 0 {
            return conn.serve_ok().await;
        }
        if conn.request().await.is_some() {
            conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf way")
                .await;
            // Holds the rest back until the proxy gives up on it.
            let _ = conn.request().await;
        }
    })
    .await;
    let proxy = proxy_for(&backend, "").await;
    let mut first = RawConnection::connect(proxy.local_addr()).await;
    first.send(&get("/abandoned")).await.unwrap();
    let head = first.head().await.expect("the head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(first);
    // The client went away: give the proxy a moment to drop its response.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (response, _client) = exchange(proxy.local_addr(), &get("/next")).await;
    let response = response.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-conn"), Some("1"), "{}", response.head);
    let requests = backend.requests();
    assert_eq!(
        requests,
        [
            (0, "GET /abandoned".to_owned()),
            (1, "GET /next".to_owned())
        ]
    );
}

/// Connection 0 answers one request and then, once the proxy holds it idle
/// in its pool, is closed by the backend (`closed` is notified); later
/// connections serve normally.
async fn closes_when_idle(closed: Arc<Notify>) -> Scripted {
    Scripted::start(move |mut conn| {
        let closed = closed.clone();
        async move {
            if conn.index > 0 {
                return conn.serve_ok().await;
            }
            if conn.request().await.is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-conn: 0\r\n\r\nfirst")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(conn);
            closed.notify_one();
        }
    })
    .await
}

// The benign order: the backend's close reaches the proxy while the
// connection is idle, and the next request goes out on a fresh one.
#[tokio::test]
async fn a_pooled_connection_the_backend_closed_while_idle_is_not_used_again() {
    let closed = Arc::new(Notify::new());
    let backend = closes_when_idle(closed.clone()).await;
    let proxy = proxy_for(&backend, "retries = 1").await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    client.send(&get("/first")).await.unwrap();
    let first = client.response().await.expect("a response");
    assert_eq!(first.status, 200, "{}", first.head);
    bounded(closed.notified()).await;
    // Give the proxy's pool time to see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (request, line) in [
        (get("/second"), "GET /second"),
        (post("/third"), "POST /third"),
    ] {
        client.send(&request).await.unwrap();
        let response = client.response().await.expect("a response");
        assert_eq!(response.status, 200, "{line}: {}", response.head);
        let times = backend.requests().iter().filter(|(_, r)| r == line).count();
        assert_eq!(times, 1, "{line} was sent {times} times");
    }
    assert_eq!(backend.connections(), 2);
}

/// Connection 0 answers one request, then reads the next and closes without
/// answering it: what a proxy sees when a backend's idle timeout closes a
/// pooled connection just as a request goes out on it. Later connections
/// serve normally.
async fn closes_under_the_next_request() -> Scripted {
    Scripted::start(|mut conn| async move {
        if conn.index > 0 {
            return conn.serve_ok().await;
        }
        if conn.request().await.is_some() {
            conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-conn: 0\r\n\r\nfirst")
                .await;
            let _ = conn.request().await;
        }
    })
    .await
}

// The racing order, for a GET: it may be sent again, once, on a fresh
// connection to the same backend (RFC 9110 §9.2.2), and the client gets its
// answer.
#[tokio::test]
async fn an_idempotent_request_on_a_pooled_connection_closed_under_it_is_retried_once_on_a_fresh_one()
 {
    let backend = closes_under_the_next_request().await;
    let proxy = proxy_for(&backend, "retries = 1").await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    client.send(&get("/first")).await.unwrap();
    assert_eq!(client.response().await.expect("a response").status, 200);
    client.send(&get("/second")).await.unwrap();
    let response = client.response().await.expect("a response");
    let requests = backend.requests();
    assert_eq!(
        response.status, 200,
        "{}; backend got {requests:?}",
        response.head
    );
    assert_eq!(response.header("x-conn"), Some("1"));
    assert_eq!(
        requests,
        [
            (0, "GET /first".to_owned()),
            (0, "GET /second".to_owned()),
            (1, "GET /second".to_owned())
        ]
    );
}

// The racing order, for a POST: the backend may have acted on it, so it is
// not sent again; the client gets 502 and the backend saw it once.
#[tokio::test]
async fn a_post_on_a_pooled_connection_closed_under_it_gets_502_and_is_never_sent_twice() {
    let backend = closes_under_the_next_request().await;
    let proxy = proxy_for(&backend, "retries = 1").await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    client.send(&get("/first")).await.unwrap();
    assert_eq!(client.response().await.expect("a response").status, 200);
    client.send(&post("/order")).await.unwrap();
    let response = client.response().await.expect("a response");
    let requests = backend.requests();
    let posts = requests.iter().filter(|(_, r)| r == "POST /order").count();
    assert_eq!(posts, 1, "the POST was sent {posts} times: {requests:?}");
    assert_eq!(response.status, 502, "{}", response.head);
}

// ---------------------------------------------------------------------------
// Under load
// ---------------------------------------------------------------------------

/// One `GET` on a new connection: the status, or an error if the proxy
/// closed the connection without one.
async fn try_get(proxy: SocketAddr, path: &str) -> Result<u16, String> {
    let mut client = RawConnection::connect(proxy).await;
    client.send(&get(path)).await.map_err(|e| e.to_string())?;
    match client.response().await {
        Some(response) if response.complete => Ok(response.status),
        Some(response) => Err(format!("incomplete: {}", response.head)),
        None => Err("closed without a response".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_under_load_gives_only_200_502_or_503_and_nothing_hangs() {
    const TOTAL: usize = 200;
    const CLIENTS: usize = 8;
    let mut backends = TestBackend::start_many(3).await;
    // Slow enough that requests are in flight on it when it dies.
    backends[0].set_slow(Duration::from_millis(20));
    let proxy = start_proxy(&config_text(
        "[balancer]\nkey = \"url\"\n[upstream]\nretries = 1\nrequest_timeout = \"2s\"",
        &pool(&backends),
    ))
    .await;
    let addr = proxy.local_addr();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (next, done, results_tx) = (next.clone(), done.clone(), results_tx.clone());
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let started = Instant::now();
                let outcome = try_get(addr, &format!("/load/{i}")).await;
                let _ = results_tx.send((i, outcome, started.elapsed()));
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    drop(results_tx);
    bounded(async {
        while done.load(Ordering::SeqCst) < TOTAL / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let in_flight_on_victim = backends[0].count();
    drop(backends.remove(0));
    bounded(async { while clients.join_next().await.is_some() {} }).await;
    let mut statuses = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    while let Some((i, outcome, took)) = results.recv().await {
        match outcome {
            Ok(status) if [200, 502, 503].contains(&status) => {
                *statuses.entry(status).or_insert(0) += 1;
            }
            other => failures.push((i, other, took)),
        }
        assert!(took < Duration::from_secs(3), "request {i} took {took:?}");
    }
    assert!(failures.is_empty(), "{failures:?}; others: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), TOTAL, "{statuses:?}");
    assert!(
        in_flight_on_victim > 0,
        "the dying backend never got a request"
    );
    // With retries = 1 and two live backends left, a request the dead one
    // could not answer goes to the next: every request succeeds.
    assert_eq!(statuses.get(&200), Some(&TOTAL), "{statuses:?}");
}
