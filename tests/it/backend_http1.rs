//! The project's own HTTP/1.1 client toward backends
//! (`src/proxy/upstream/{h1,idle,codec}.rs`), from the outside: the real
//! proxy in front of raw-TCP backends ([`Scripted`]) that send the exact
//! bytes each case needs, and what the client receives and what the backend
//! received, on which of its connections, asserted.
//!
//! Whether a backend connection was used again is read off the backend: it
//! logs each request with the number of the connection it came on. The
//! scripted backends here keep every connection open and answer whatever
//! comes on it, so a connection the proxy should have dropped and did not
//! would show in that log (and usually in a wrong answer). Health probes are
//! set an hour apart (the first at a random time within that hour), so that
//! none opens a connection of its own during a test.
//!
//! Every await is bounded: a proxy that hangs fails the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cli::{TempFile, start_affinity_logging, terminate};
use crate::common::*;
use affinity::listener::ProxyHandle;

/// Probes an hour apart, a request timeout no case comes near, and one
/// retry (an idempotent request broken off is sent once more).
const SECTIONS: &str = "[health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n\
                        [upstream]\nrequest_timeout = \"2s\"\nretries = 1\n";

/// The pause between the pieces of a scripted answer, so that each reaches
/// the proxy in a read of its own.
const PIECE_PAUSE: Duration = Duration::from_millis(20);

/// The longest response head the proxy takes (`codec::MAX_HEAD_BYTES`,
/// hyper's default read buffer limit: `8192 + 4096 * 100`).
const MAX_HEAD_BYTES: usize = 417_792;

/// A proxy in front of `backend` alone.
async fn proxy_before(backend: &Scripted) -> ProxyHandle {
    start_proxy(&config_text(SECTIONS, &[("scripted", backend.addr)])).await
}

/// How a scripted backend answers a request: these bytes, in pieces written
/// [`PIECE_PAUSE`] apart.
type Pieces = Vec<Vec<u8>>;

/// A backend that answers each request (on any connection, as often as it
/// comes) with the pieces of the entry whose `METHOD /path` it is, or else a
/// small `200` whose body is `ok METHOD /path`, with the connection's number
/// in `x-conn`. Every connection stays open as long as the proxy keeps it.
async fn by_request<S: Into<String>>(answers: impl IntoIterator<Item = (S, Pieces)>) -> Scripted {
    let answers: Vec<(String, Pieces)> = answers
        .into_iter()
        .map(|(request, pieces)| (request.into(), pieces))
        .collect();
    let answers = Arc::new(answers);
    Scripted::start(move |mut conn| {
        let answers = answers.clone();
        async move {
            conn.stream.set_nodelay(true).unwrap();
            while let Some(line) = conn.request().await {
                match answers.iter().find(|(request, _)| *request == line) {
                    Some((_, pieces)) => write_pieces(&mut conn, pieces).await,
                    None => answer_ok(&mut conn, &line).await,
                }
            }
        }
    })
    .await
}

/// Writes `pieces` on `conn`, [`PIECE_PAUSE`] apart.
async fn write_pieces(conn: &mut Conn, pieces: &[Vec<u8>]) {
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(PIECE_PAUSE).await;
        }
        conn.write(piece).await;
    }
}

/// The small `200` of [`by_request`]: `ok METHOD /path`.
async fn answer_ok(conn: &mut Conn, line: &str) {
    let body = format!("ok {line}");
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-conn: {}\r\n\r\n{body}",
        body.len(),
        conn.index
    );
    conn.write(answer.as_bytes()).await;
}

/// The backend connections that `line` (`METHOD /path`) came on, in order.
fn connections_of(backend: &Scripted, line: &str) -> Vec<usize> {
    backend
        .requests()
        .into_iter()
        .filter(|(_, request)| request == line)
        .map(|(conn, _)| conn)
        .collect()
}

/// The backend connections that requests came on, each once, in order.
fn connections_used(backend: &Scripted) -> Vec<usize> {
    let mut used = Vec::new();
    for (conn, _) in backend.requests() {
        if !used.contains(&conn) {
            used.push(conn);
        }
    }
    used
}

/// `request` on `client`, expecting a `200` whose body is `body`.
async fn expect_ok(client: &mut RawConnection, request: &[u8], body: &[u8]) -> RawResponse {
    client.send(request).await.unwrap();
    let response = client.response().await.expect("a response");
    let what = shown(&request[..request.len().min(40)]);
    assert_eq!(response.status, 200, "{what}: {}", response.head);
    assert!(response.complete, "{what}: {}", response.head);
    assert_same_bytes(&response.body, body, &what);
    response
}

/// Fails unless `got` is `want`, saying where they part (bodies here run to
/// 100 KB: printing them whole would bury the difference).
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    panic!(
        "{what}: {} bytes, expected {}; from byte {at}: got {}, expected {}",
        got.len(),
        want.len(),
        shown(&got[at..]),
        shown(&want[at..])
    );
}

/// At most the first 80 bytes of `bytes`, as text.
fn shown(bytes: &[u8]) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
    )
}

/// A `HEAD` of `path` with `Host`.
fn head_request(path: &str) -> Vec<u8> {
    format!("HEAD {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------
// Interim answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn interim_1xx_answers_are_skipped_and_the_client_gets_the_final_answer_and_its_body() {
    let last = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nfinal".to_vec();
    let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec();
    let backend = by_request(vec![
        (
            "GET /continue",
            vec![b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), last.clone()],
        ),
        ("GET /early-hints", vec![[&hints[..], &last].concat()]),
        (
            "GET /several",
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n".to_vec(),
                [&hints[..], b"HTTP/1.1 100 Cont"].concat(),
                b"inue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-len".to_vec(),
                b"gth: 5\r\nx-final: yes\r\n\r\nfinal".to_vec(),
            ],
        ),
        (
            "POST /expecting",
            vec![b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), last.clone()],
        ),
    ])
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    for path in ["/continue", "/early-hints", "/several"] {
        let response = expect_ok(&mut client, &get(path), b"final").await;
        assert_eq!(response.header("x-final"), Some("yes"), "{path}");
        assert_eq!(response.header("link"), None, "{path}: {}", response.head);
    }
    // A client that asked for `100 Continue` gets one, from the proxy's own
    // server when the body is wanted; the backend's is not passed on as a
    // second one.
    client
        .send(
            b"POST /expecting HTTP/1.1\r\nHost: proxy.test\r\nExpect: 100-continue\r\n\
              Content-Length: 4\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = client.response().await.expect("100 Continue");
    assert_eq!(interim.status, 100, "{}", interim.head);
    client.send(b"data").await.unwrap();
    let response = client.response().await.expect("the final answer");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.body, b"final");
    // Nothing more: no interim answer arrives late either.
    assert!(!client.closes_within(Duration::from_millis(100)).await);
    assert!(
        client.unread().is_empty(),
        "{:?}",
        String::from_utf8_lossy(client.unread())
    );
    // Interim answers read off exactly: the connection carried them all.
    assert_eq!(connections_used(&backend), [0], "{:?}", backend.requests());
}

// ---------------------------------------------------------------------------
// Response bodies
// ---------------------------------------------------------------------------

// What happens to the trailers: the proxy strips `Trailer` from the
// response head as hop-by-hop (`proxy::headers::HOP_BY_HOP`), and hyper's
// server (1.12, `proto/h1/encode.rs`, `encode_trailers`) writes only the
// trailer fields the response's `Trailer` header declares. So over HTTP/1.1
// the backend's trailers never reach the client, whether it sent
// `TE: trailers` or not: the body ends with a bare last chunk.
#[tokio::test]
async fn a_chunked_response_with_extensions_and_trailers_reaches_the_client_byte_for_byte_without_the_trailers()
 {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz";
    let backend = by_request(vec![(
        "GET /chunked",
        vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5;name=va"
                .to_vec(),
            b"lue\r\nhello\r".to_vec(),
            b"\n6 ; ext\r\n wor".to_vec(),
            [&b"ld\r\n1A;a=1;b=\"2\"\r\n"[..], alphabet, b"\r\n0\r\nx-check"].concat(),
            b"sum: abc\r\nx-other: 1\r\n\r\n".to_vec(),
        ],
    )])
    .await;
    let proxy = proxy_before(&backend).await;
    let expected = [&b"hello world"[..], alphabet].concat();
    let mut raw = RawConnection::connect(proxy.local_addr()).await;
    for te in ["", "TE: trailers\r\n"] {
        let request = format!("GET /chunked HTTP/1.1\r\nHost: proxy.test\r\n{te}\r\n");
        let response = expect_ok(&mut raw, request.as_bytes(), &expected).await;
        assert!(response.chunked, "{te:?}: {}", response.head);
        assert!(
            response.trailers.is_empty(),
            "{te:?}: {:?}",
            response.trailers
        );
        assert_eq!(
            response.header("trailer"),
            None,
            "{te:?}: {}",
            response.head
        );
    }
    // And as hyper's strict client reads it.
    let mut client = Client::connect(proxy.local_addr()).await;
    let response = client
        .send_streaming(
            Request::get("/chunked")
                .header("host", "proxy.test")
                .header("te", "trailers")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let collected = bounded(response.into_body().collect()).await.unwrap();
    assert!(collected.trailers().is_none(), "{:?}", collected.trailers());
    assert_eq!(collected.to_bytes(), expected);
    // Read to its last chunk and trailers: the connection carried them all.
    assert_eq!(backend.requests().len(), 3);
    assert_eq!(connections_used(&backend), [0], "{:?}", backend.requests());
}

#[tokio::test]
async fn a_response_delimited_by_the_close_reaches_the_client_whole_and_the_next_request_opens_a_new_connection()
 {
    let large: Vec<u8> = (0..100_000).map(pattern).collect();
    let cases: [(&str, &[u8], Vec<u8>); 2] = [
        (
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part, ",
            large,
        ),
        (
            "HTTP/1.0",
            b"HTTP/1.0 200 OK\r\n\r\nfirst part, ",
            b"second part".to_vec(),
        ),
    ];
    for (case, start, rest) in cases {
        let pieces = Arc::new(vec![start.to_vec(), rest.clone()]);
        let backend = Scripted::start(move |mut conn| {
            let pieces = pieces.clone();
            async move {
                while let Some(line) = conn.request().await {
                    if line != "GET /until-close" {
                        answer_ok(&mut conn, &line).await;
                        continue;
                    }
                    write_pieces(&mut conn, &pieces).await;
                    // The end of the body is the end of the connection.
                    return;
                }
            }
        })
        .await;
        let proxy = proxy_before(&backend).await;
        let whole = [&b"first part, "[..], &rest].concat();
        let mut client = RawConnection::connect(proxy.local_addr()).await;
        expect_ok(&mut client, &get("/until-close"), &whole).await;
        // A new client connection: an HTTP/1.0 answer closes this one (see
        // `an_http_1_0_answer_reaches_an_http_1_1_client_as_http_1_1_on_a_connection_kept_open`).
        let mut client = RawConnection::connect(proxy.local_addr()).await;
        expect_ok(&mut client, &get("/next"), b"ok GET /next").await;
        let first = connections_of(&backend, "GET /until-close");
        let next = connections_of(&backend, "GET /next");
        assert_eq!(first.len(), 1, "{case}");
        assert_eq!(next.len(), 1, "{case}");
        assert_ne!(
            first, next,
            "{case}: the next request went on the closed connection"
        );
        assert_eq!(backend.connections(), 2, "{case}");
    }
}

// RFC 9110 §6.2: an intermediary sends its own HTTP version in the messages
// it forwards. Were the backend's `HTTP/1.0` status line passed on, hyper's
// server would delimit a body of unknown length by closing the client's
// connection, and a client would read even a `Content-Length` answer as the
// last on its connection (HTTP/1.0 without `keep-alive`).
#[tokio::test]
async fn an_http_1_0_answer_reaches_an_http_1_1_client_as_http_1_1_on_a_connection_kept_open() {
    // A body delimited by the close ends when the backend closes, as an
    // HTTP/1.0 server does after such an answer.
    let backend = Scripted::start(|mut conn| async move {
        while let Some(line) = conn.request().await {
            match line.as_str() {
                "GET /sized" => {
                    conn.write(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                "GET /until-close" => {
                    conn.write(b"HTTP/1.0 200 OK\r\n\r\nok").await;
                    return;
                }
                _ => answer_ok(&mut conn, &line).await,
            }
        }
    })
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    for path in ["/sized", "/until-close", "/sized"] {
        let response = expect_ok(&mut client, &get(path), b"ok").await;
        assert!(
            response.head.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {}",
            response.head
        );
    }
    expect_ok(&mut client, &get("/next"), b"ok GET /next").await;
}

// ---------------------------------------------------------------------------
// Connection reuse
// ---------------------------------------------------------------------------

#[tokio::test]
async fn backend_connections_are_reused_unless_the_answer_says_close_or_is_http_1_0_without_keep_alive()
 {
    let cases: [(&str, &[u8], usize, usize); 4] = [
        (
            "HTTP/1.1 with Content-Length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            20,
            1,
        ),
        (
            "HTTP/1.1 with Connection: close",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            5,
            5,
        ),
        (
            "HTTP/1.0 without keep-alive",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            5,
            5,
        ),
        (
            "HTTP/1.0 with Connection: keep-alive",
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            5,
            1,
        ),
    ];
    for (case, answer, requests, connections) in cases {
        // The backend keeps answering on every connection, whatever it said:
        // only the proxy decides whether a connection is used again.
        let backend = by_request(vec![("GET /page", vec![answer.to_vec()])]).await;
        let proxy = proxy_before(&backend).await;
        let mut client = RawConnection::connect(proxy.local_addr()).await;
        for _ in 0..requests {
            let response = expect_ok(&mut client, &get("/page"), b"ok").await;
            assert_eq!(response.header("connection"), None, "{case}");
        }
        let used = connections_used(&backend);
        assert_eq!(backend.requests().len(), requests, "{case}");
        assert_eq!(used.len(), connections, "{case}: connections {used:?}");
        assert_eq!(backend.connections(), connections, "{case}: accepted");
    }
}

// Bytes after the end of a body can only be the backend being wrong about
// its own framing (or a response meant for another request): the connection
// is not used again, and the bytes are passed to no one.
#[tokio::test]
async fn bytes_after_the_end_of_a_response_body_are_dropped_with_their_connection() {
    let cases: [(&str, &[u8]); 4] = [
        (
            "junk after a Content-Length body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK",
        ),
        (
            "a whole response after a Content-Length body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
        ),
        (
            "junk after the last chunk",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nJUNK",
        ),
        ("a 204 with a body", b"HTTP/1.1 204 No Content\r\n\r\nok"),
    ];
    for (case, answer) in cases {
        let backend = by_request(vec![("GET /extra", vec![answer.to_vec()])]).await;
        let proxy = proxy_before(&backend).await;
        let mut client = RawConnection::connect(proxy.local_addr()).await;
        client.send(&get("/extra")).await.unwrap();
        let response = client.response().await.expect("a response");
        if answer.starts_with(b"HTTP/1.1 204") {
            assert_eq!(response.status, 204, "{case}: {}", response.head);
        } else {
            assert_eq!(response.status, 200, "{case}: {}", response.head);
            assert_eq!(response.body, b"ok", "{case}");
        }
        expect_ok(&mut client, &get("/next"), b"ok GET /next").await;
        assert!(client.unread().is_empty(), "{case}");
        let first = connections_of(&backend, "GET /extra");
        let next = connections_of(&backend, "GET /next");
        assert_eq!(first.len(), 1, "{case}");
        assert_ne!(first, next, "{case}: the connection was used again");
    }
}

// RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length`, and an
// intermediary must remove the `Content-Length` before passing such a
// message on. Kept (as it was, under hyper's client too), it framed the
// decoded body for the client: cut to a shorter length with the connection
// left open, and for a longer one a body that never ended (hyper's client)
// or no answer at all.
#[tokio::test]
async fn a_response_with_both_transfer_encoding_and_content_length_reaches_the_client_whole_without_the_length()
 {
    let both = |length: usize| {
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: {length}\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        .into_bytes()
    };
    let backend = by_request([
        ("GET /shorter", vec![both(3)]),
        ("GET /longer", vec![both(30)]),
    ])
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    for path in ["/shorter", "/longer"] {
        let response = expect_ok(&mut client, &get(path), b"hello world").await;
        assert_eq!(
            response.header("content-length"),
            None,
            "{path}: {}",
            response.head
        );
    }
    expect_ok(&mut client, &get("/next"), b"ok GET /next").await;
    assert_eq!(connections_used(&backend), [0], "{:?}", backend.requests());
}

// The backend answers after the first 64 KiB of a 4 MiB body (as servers do
// for a body they will refuse) and goes on reading, as a server that
// answered early should: the proxy stops sending the body, passes the answer on at once,
// and never uses that connection again (the request on it was cut short).
#[tokio::test]
async fn an_early_413_reaches_a_client_still_uploading_and_its_connection_is_not_used_again() {
    const UPLOAD: usize = 4 * 1024 * 1024;
    const PIECE: usize = 16 * 1024;
    let closed = Arc::new(Notify::new());
    let seen_closed = closed.clone();
    let backend = Scripted::start(move |mut conn| {
        let closed = seen_closed.clone();
        async move {
            let Some(request) = conn.receive_head().await else {
                return;
            };
            if request.line != "POST /upload" {
                answer_ok(&mut conn, &request.line).await;
                return conn.serve_ok().await;
            }
            // The first 64 KiB: the proxy is sending the body when the
            // answer comes.
            while conn.buf.len() < 64 * 1024 {
                if !conn.fill().await {
                    return;
                }
            }
            conn.write(
                b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 16\r\n\r\nupload too big\r\n",
            )
            .await;
            // Reads and drops whatever else comes, until the proxy closes.
            let mut sink = vec![0; 64 * 1024];
            while matches!(conn.stream.read(&mut sink).await, Ok(n) if n > 0) {}
            closed.notify_one();
        }
    })
    .await;
    let proxy = proxy_before(&backend).await;
    let (mut reader, mut writer) = RawConnection::connect(proxy.local_addr())
        .await
        .with_writer();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let started = Instant::now();
    // 4 MiB, 16 KiB every 10 ms: at least 2.5 s to send it all.
    let upload = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: {UPLOAD}\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'u'; PIECE];
        for _ in 0..UPLOAD / PIECE {
            writer.write_all(&piece).await?;
            counted.fetch_add(PIECE, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    let response = reader.response().await.expect("the 413");
    let took = started.elapsed();
    let uploaded = sent.load(Ordering::SeqCst);
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(response.body, b"upload too big\r\n");
    assert!(response.complete);
    assert!(
        took < Duration::from_secs(1),
        "the 413 took {took:?} ({uploaded} bytes uploaded)"
    );
    assert!(uploaded < UPLOAD, "the whole body went up first");
    upload.abort();
    // The connection that carried the cut-short request is closed, and the
    // next request goes on a new one.
    tokio::time::timeout(Duration::from_secs(2), closed.notified())
        .await
        .expect("the connection of the cut-short request was kept open");
    let (response, _client) = exchange(proxy.local_addr(), &get("/after")).await;
    let response = response.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.body, b"ok GET /after");
    let upload_conn = connections_of(&backend, "POST /upload");
    let after_conn = connections_of(&backend, "GET /after");
    assert_eq!(upload_conn.len(), 1);
    assert_ne!(upload_conn, after_conn);
}

#[tokio::test]
async fn an_invalid_chunk_in_a_response_body_cuts_the_clients_response_off_and_drops_the_connection()
 {
    let oversized_trailer = [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: "[..],
        &[b'a'; 20 * 1024],
    ]
    .concat();
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "a chunk size that is not hex",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n".to_vec(),
        ),
        (
            "no CRLF after a chunk's data",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX5\r\n".to_vec(),
        ),
        (
            "a chunk size over 64 bits",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\
              10000000000000000\r\n"
                .to_vec(),
        ),
        ("a trailer section over 16 KiB", oversized_trailer),
    ];
    for (case, answer) in cases {
        // The backend then waits: only the proxy can end the response.
        let backend = by_request(vec![("GET /broken", vec![answer])]).await;
        let proxy = proxy_before(&backend).await;
        let (response, mut client) = exchange(proxy.local_addr(), &get("/broken")).await;
        let response = response.unwrap_or_else(|| panic!("{case}: no response head"));
        assert_eq!(response.status, 200, "{case}: {}", response.head);
        assert!(!response.complete, "{case}: a complete response");
        assert!(response.body.len() <= 5, "{case}: {:?}", response.body);
        assert!(
            client.closes_within(Duration::from_secs(1)).await,
            "{case}: still open"
        );
        let (next, _client) = exchange(proxy.local_addr(), &get("/next")).await;
        let next = next.expect("a response");
        assert_eq!(next.status, 200, "{case}: {}", next.head);
        assert_ne!(
            connections_of(&backend, "GET /broken"),
            connections_of(&backend, "GET /next"),
            "{case}: the connection was used again"
        );
    }
}

// ---------------------------------------------------------------------------
// Request framing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_bodies_reach_the_backend_framed_as_the_client_framed_them_with_the_same_bytes() {
    let backend = by_request(Vec::<(&str, Pieces)>::new()).await;
    let proxy = proxy_before(&backend).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    // Unknown length: hyper's client sends it chunked, in the pieces given.
    let large: Vec<u8> = (0..100_000).map(pattern).collect();
    let pieces: Vec<Bytes> = vec![
        Bytes::from_static(b"first "),
        Bytes::from(large.clone()),
        Bytes::new(),
        Bytes::from_static(b" last"),
    ];
    let streamed: Vec<u8> = pieces.concat();
    let (tx, body) = ChannelBody::new();
    let feeding = tokio::spawn(async move {
        for piece in pieces {
            tx.send(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let reply = client
        .send(
            Request::post("/chunked")
                .header("host", "proxy.test")
                .body(body.boxed())
                .unwrap(),
        )
        .await;
    bounded(feeding).await.unwrap();
    assert_eq!(reply.status, 200);
    // Known length.
    let sized: Vec<u8> = (0..70_000).map(|i| pattern(i * 7)).collect();
    let reply = client
        .send(
            Request::post("/sized")
                .header("host", "proxy.test")
                .body(full_bytes(Bytes::from(sized.clone())))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    // No body at all, and an empty one.
    assert_eq!(client.get("/nothing", &[]).await.status, 200);
    let reply = client
        .send(
            Request::post("/empty")
                .header("host", "proxy.test")
                .header("content-length", "0")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    // A raw chunked body with extensions and a trailer, split oddly.
    let mut raw = RawConnection::connect(proxy.local_addr()).await;
    for piece in [
        &b"POST /raw-chunked HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\
           Trailer: x-sum\r\n\r\n5;ext=1\r\nhel"[..],
        b"lo\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
    ] {
        raw.send(piece).await.unwrap();
        tokio::time::sleep(PIECE_PAUSE).await;
    }
    let response = raw.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);

    let received = backend.received();
    let lines: Vec<&str> = received.iter().map(|(_, r)| r.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /chunked",
            "POST /sized",
            "GET /nothing",
            "POST /empty",
            "POST /raw-chunked"
        ]
    );
    for (_, request) in &received {
        assert_eq!(request.bad_framing, None, "{}", request.head);
    }
    let chunked = &received[0].1;
    assert_eq!(chunked.header_values("transfer-encoding"), ["chunked"]);
    assert_eq!(chunked.header("content-length"), None, "{}", chunked.head);
    assert_same_bytes(&chunked.body, &streamed, "POST /chunked");
    let sized_seen = &received[1].1;
    assert_eq!(sized_seen.header_values("content-length"), ["70000"]);
    assert_eq!(sized_seen.header("transfer-encoding"), None);
    assert_same_bytes(&sized_seen.body, &sized, "POST /sized");
    let nothing = &received[2].1;
    assert_eq!(nothing.header("content-length"), None, "{}", nothing.head);
    assert_eq!(
        nothing.header("transfer-encoding"),
        None,
        "{}",
        nothing.head
    );
    let empty = &received[3].1;
    assert_eq!(
        empty.header_values("content-length"),
        ["0"],
        "{}",
        empty.head
    );
    assert_eq!(empty.header("transfer-encoding"), None, "{}", empty.head);
    assert!(empty.body.is_empty());
    let raw_chunked = &received[4].1;
    assert_eq!(raw_chunked.header_values("transfer-encoding"), ["chunked"]);
    assert_eq!(raw_chunked.header("content-length"), None);
    assert_eq!(raw_chunked.body, b"hello world");
    // Its trailer is not passed on: the client sends only trailers its
    // `Trailer` header names (as hyper's did), and the proxy strips `Trailer`
    // as hop-by-hop.
    assert!(
        raw_chunked.trailers.is_empty(),
        "{:?}",
        raw_chunked.trailers
    );
    assert_eq!(raw_chunked.header("trailer"), None);
    // Every body framed exactly: each request was read where the one
    // before ended, all on one backend connection (the raw client's
    // connection is served on the same thread, and takes the idle one).
    assert_eq!(connections_used(&backend), [0], "{:?}", backend.requests());
}

// ---------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------

// `faults` has the backend closing an idle connection; here it sends bytes
// on it instead and leaves it open. An idle connection with anything on it
// is out of step with its backend: used again, the stray bytes would be read
// as (the start of) the next request's answer.
#[tokio::test]
async fn an_idle_connection_on_which_the_backend_sent_bytes_is_not_used_again() {
    let cases: [(&str, &[u8]); 3] = [
        ("a stray byte", b"X"),
        ("a stray CRLF", b"\r\n"),
        (
            "a whole stale response",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
        ),
    ];
    for (case, stray) in cases {
        let idle = Arc::new(Notify::new());
        let sent = Arc::new(Notify::new());
        let (when_idle, after) = (idle.clone(), sent.clone());
        let backend = Scripted::start(move |mut conn| {
            let (idle, sent) = (when_idle.clone(), after.clone());
            async move {
                if conn.index > 0 {
                    return conn.serve_ok().await;
                }
                let Some(line) = conn.request().await else {
                    return;
                };
                answer_ok(&mut conn, &line).await;
                idle.notified().await;
                conn.write(stray).await;
                sent.notify_one();
                // Still there, and answering.
                conn.serve_ok().await;
            }
        })
        .await;
        let proxy = proxy_before(&backend).await;
        let mut client = RawConnection::connect(proxy.local_addr()).await;
        expect_ok(&mut client, &get("/first"), b"ok GET /first").await;
        // The answer was read to its end: the connection is idle now.
        idle.notify_one();
        bounded(sent.notified()).await;
        // Give the proxy's runtime a turn to see the socket readable.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = expect_ok(&mut client, &get("/second"), b"ok GET /second").await;
        assert_eq!(response.header("x-conn"), Some("1"), "{case}");
        assert_eq!(
            backend.requests(),
            [(0, "GET /first".to_owned()), (1, "GET /second".to_owned())],
            "{case}"
        );
    }
}

// The backend's close of an idle connection reaches the proxy's socket,
// and the proxy's side should close too without waiting for a request to
// come by (`idle.rs`: "whether the backend closed it is read from the
// socket's readiness when it is taken, and once a second for all of them"),
// or the socket sits in CLOSE_WAIT, holding a descriptor, for as long as no
// request releases a connection on that worker thread. (hyper's client
// noticed at once: each idle connection had a task reading it.)
#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_closed_by_the_proxy_without_another_request() {
    let idle = Arc::new(Notify::new());
    let (tx, closed) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let when_idle = idle.clone();
    let backend = Scripted::start(move |mut conn| {
        let (idle, tx) = (when_idle.clone(), tx.clone());
        async move {
            let Some(line) = conn.request().await else {
                return;
            };
            answer_ok(&mut conn, &line).await;
            idle.notified().await;
            // Half-closed: the proxy sees the end, and this side sees whether
            // the proxy closes its own.
            conn.stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_secs(3), conn.stream.read_to_end(&mut rest))
                    .await
                    .is_ok();
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(ended);
            }
        }
    })
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    expect_ok(&mut client, &get("/only"), b"ok GET /only").await;
    idle.notify_one();
    assert!(
        bounded(closed).await.unwrap(),
        "the proxy kept its side of a connection the backend closed for 3 s"
    );
}

// ---------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------

// `upgrade` covers tunnels with hyper's server behind; here the backend's
// first tunnel bytes come in the very write of its `101`, more of them than
// the proxy's first read of a head takes.
#[tokio::test]
async fn bytes_a_backend_sends_right_behind_its_101_reach_the_client_through_the_tunnel() {
    let mut early = b"hello before you asked\n".to_vec();
    early.extend((0..20_000).map(pattern));
    let answer = [
        &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"[..],
        &early,
    ]
    .concat();
    let backend = Scripted::start(move |mut conn| {
        let answer = answer.clone();
        async move {
            if conn.request().await.is_none() {
                return;
            }
            conn.write(&answer).await;
            // Then echoes.
            loop {
                let pending = std::mem::take(&mut conn.buf);
                conn.write(&pending).await;
                if !conn.fill().await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    client
        .send(
            b"GET /ws HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = client.head().await.expect("the 101");
    assert!(
        head.to_ascii_lowercase()
            .starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    let mut tunneled = client.unread().to_vec();
    let mut stream = client.into_stream();
    let mut rest = vec![0; early.len().saturating_sub(tunneled.len())];
    bounded(stream.read_exact(&mut rest)).await.unwrap();
    tunneled.extend_from_slice(&rest);
    assert_same_bytes(&tunneled, &early, "through the tunnel");
    bounded(stream.write_all(b"ping")).await.unwrap();
    let mut echoed = [0; 4];
    bounded(stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"ping");
}

// ---------------------------------------------------------------------------
// Invalid response heads
// ---------------------------------------------------------------------------

/// A `200` head of exactly `len` bytes (filled with `x-fill-NN` headers,
/// 8 KiB at most each), then the body `ok`.
fn head_of_len(len: usize) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
    let mut i = 0;
    while answer.len() + 2 < len {
        // Header lines still to add, each `x-fill-NN: ` (11), a value, CRLF.
        let room = len - 2 - answer.len();
        let line = match room {
            r if r > 2 * 8192 => 8192,
            r if r > 8192 => r / 2,
            r => r,
        };
        answer.extend_from_slice(format!("x-fill-{i:02}: ").as_bytes());
        answer.resize(answer.len() + line - 13, b'a');
        answer.extend_from_slice(b"\r\n");
        i += 1;
    }
    answer.extend_from_slice(b"\r\nok");
    assert_eq!(answer.len(), len + 2);
    answer
}

/// A `200` head with `count` header fields (`content-length` one of them),
/// then the body `ok`.
fn head_with_fields(count: usize) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
    for i in 1..count {
        answer.extend_from_slice(format!("x-field-{i}: {i}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\nok");
    answer
}

#[tokio::test]
async fn a_response_head_at_the_size_and_field_limits_passes_and_one_past_them_gets_502() {
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("GET /largest", head_of_len(MAX_HEAD_BYTES), 200),
        ("GET /too-large", head_of_len(MAX_HEAD_BYTES + 1), 502),
        ("GET /100-fields", head_with_fields(100), 200),
        ("GET /101-fields", head_with_fields(101), 502),
    ];
    let backend = by_request(
        cases
            .iter()
            .map(|(line, answer, _)| (*line, vec![answer.clone()])),
    )
    .await;
    let proxy = proxy_before(&backend).await;
    for (line, _, status) in &cases {
        let path = line.trim_start_matches("GET ");
        let (response, _client) = exchange(proxy.local_addr(), &get(path)).await;
        let response = response.unwrap_or_else(|| panic!("{line}: no response"));
        assert_eq!(response.status, *status, "{line}");
        if *status == 200 {
            assert_eq!(response.body, b"ok", "{line}");
        } else {
            assert_eq!(response.body, b"bad gateway\n", "{line}");
        }
    }
    assert_eq!(
        backend.requests().len(),
        cases.len(),
        "an invalid head is not sent again: {:?}",
        backend.requests()
    );
}

// Through the `affinity` command, to read its access log: a 502 the proxy
// answered itself (`outcome` `local`), with the backend named in `failed`
// and one attempt; the warning says what was wrong with the head.
#[tokio::test]
async fn an_invalid_response_head_gets_502_and_an_access_line_naming_the_backend_that_failed() {
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "/garbage",
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
            "invalid response head",
        ),
        (
            "/length-abc",
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nhello".to_vec(),
            "invalid Content-Length in the response",
        ),
        (
            "/chunked-on-1.0",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
            "Transfer-Encoding on an HTTP/1.0 response",
        ),
        (
            "/101-fields",
            head_with_fields(101),
            "invalid response head: too many headers",
        ),
        (
            "/too-large",
            head_of_len(MAX_HEAD_BYTES + 1),
            "the response head is larger than 417792 bytes",
        ),
    ];
    let backend = by_request(
        cases
            .iter()
            .map(|(path, answer, _)| (format!("GET {path}"), vec![answer.clone()])),
    )
    .await;
    let file = TempFile::new(
        "backend-http1-invalid.toml",
        &config_text(SECTIONS, &[("scripted", backend.addr)]),
    );
    let (mut child, log, address) =
        start_affinity_logging(&file, &["--log-format", "json"], "info,access=info");
    for (path, _, _) in &cases {
        let (response, _client) = exchange(address, &get(path)).await;
        let response = response.unwrap_or_else(|| panic!("{path}: no response"));
        assert_eq!(
            response.status,
            502,
            "{path}: {}",
            shown(response.head.as_bytes())
        );
        assert_eq!(response.body, b"bad gateway\n", "{path}");
    }
    let (response, _client) = exchange(address, &get("/fine")).await;
    assert_eq!(response.expect("a response").status, 200);
    assert_eq!(terminate(&mut child).code(), Some(0));
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect();
    let access = |path: &str| -> serde_json::Value {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["target"] == "access" && l["fields"]["path"] == path)
            .collect();
        assert_eq!(found.len(), 1, "{path}: {found:?}");
        found[0]["fields"].clone()
    };
    for (path, _, why) in &cases {
        let fields = access(path);
        assert_eq!(fields["status"], 502, "{path}: {fields}");
        assert_eq!(fields["outcome"], "local", "{path}: {fields}");
        assert_eq!(fields["attempts"], 1, "{path}: {fields}");
        assert_eq!(fields["failed"], serde_json::json!(["scripted"]), "{path}");
        assert_eq!(fields["bytes_out"], 0, "{path}: {fields}");
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && l["fields"]["error"]
                    .as_str()
                    .is_some_and(|error| error.contains(why))),
            "{path}: no warning saying {why:?}"
        );
    }
    let fine = access("/fine");
    assert_eq!(fine["status"], 200, "{fine}");
    assert_eq!(fine["outcome"], "complete", "{fine}");
    assert_eq!(fine["backend"], "scripted", "{fine}");
    assert_eq!(fine["failed"], serde_json::json!([]), "{fine}");
    // None was sent twice: an answer that cannot be read is no broken-off
    // connection.
    assert_eq!(backend.requests().len(), cases.len() + 1);
}

// ---------------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_head_answer_ends_at_its_head_whatever_its_content_length_and_its_connection_is_reused() {
    let mut page = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec();
    page.extend((0..1000).map(pattern));
    let backend = by_request(vec![
        (
            "HEAD /page",
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/html\r\n\r\n"
                    .to_vec(),
            ],
        ),
        ("GET /page", vec![page]),
        // A body a HEAD answer must not have.
        (
            "HEAD /liar",
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()],
        ),
    ])
    .await;
    let proxy = proxy_before(&backend).await;
    let mut client = RawConnection::connect(proxy.local_addr()).await;
    let expected: Vec<u8> = (0..1000).map(pattern).collect();
    for _ in 0..2 {
        client.send(&head_request("/page")).await.unwrap();
        let answer = client.head().await.expect("the HEAD answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\ncontent-length: 1000"),
            "{answer}"
        );
        assert!(client.unread().is_empty(), "a body after a HEAD answer");
        expect_ok(&mut client, &get("/page"), &expected).await;
    }
    assert_eq!(backend.requests().len(), 4);
    assert_eq!(connections_used(&backend), [0], "{:?}", backend.requests());

    client.send(&head_request("/liar")).await.unwrap();
    let answer = client.head().await.expect("the HEAD answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let response = expect_ok(&mut client, &get("/after"), b"ok GET /after").await;
    assert!(client.unread().is_empty());
    assert_ne!(
        response.header("x-conn"),
        Some("0"),
        "the connection the HEAD answer left a body on was used again"
    );
    assert_eq!(connections_of(&backend, "HEAD /liar"), [0]);
}
