//! Request hygiene (issue 7, item 2): malformed, ambiguous and hostile
//! requests written as exact bytes on a raw TCP connection to the proxy,
//! with a recording backend behind it.
//!
//! Each case asserts what a client sees (the status line, whether the proxy
//! closed the connection), that the backend received nothing (or exactly
//! the one well-formed request), and that the proxy still serves a good
//! request on a new connection afterwards.
//!
//! Which of these hyper 1.x rejects by itself (before the proxy's handler
//! runs) and which it lets through is written beside each case.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use affinity::listener::ProxyHandle;

/// Time given to anything the proxy might still forward to reach the
/// backend, before its count is checked.
const SETTLE: Duration = Duration::from_millis(100);

/// How long a test waits to see the proxy close a connection after its
/// answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A proxy in front of one recording backend.
struct Rig {
    backend: TestBackend,
    proxy: ProxyHandle,
}

impl Rig {
    /// The proxy, configured with `sections`, in front of `server-1`.
    async fn start(sections: &str) -> Rig {
        let backend = TestBackend::start("server-1").await;
        let proxy = start_proxy(&config_text(
            sections,
            &[(backend.name.as_str(), backend.addr)],
        ))
        .await;
        Rig { backend, proxy }
    }

    async fn connect(&self) -> RawConnection {
        RawConnection::connect(self.proxy.local_addr()).await
    }

    /// What the backend has received, once anything still on its way has had
    /// time to arrive.
    async fn forwarded(&self) -> Vec<Seen> {
        tokio::time::sleep(SETTLE).await;
        self.backend.seen()
    }

    /// The paths of the requests the backend received, in order.
    async fn forwarded_paths(&self) -> Vec<String> {
        self.forwarded()
            .await
            .iter()
            .map(|s| s.uri.path().to_owned())
            .collect()
    }

    /// A well-formed request on a new connection still gets the backend's
    /// `200`.
    async fn assert_still_serving(&self) {
        let mut client = self.connect().await;
        client
            .send(b"GET /after HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            .await
            .unwrap();
        let response = client
            .response()
            .await
            .expect("a response to a good request");
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body, b"server-1");
    }

    /// Sends `request` on a new connection and asserts that the proxy
    /// answers with one of `statuses`, closes the connection, forwards
    /// nothing, and still serves others. `case` names it in failures.
    async fn assert_rejected(&self, case: &str, request: &[u8], statuses: &[u16]) {
        let before = self.backend.count();
        let mut client = self.connect().await;
        let _ = client.send(request).await;
        let response = client
            .response()
            .await
            .unwrap_or_else(|| panic!("{case}: the connection closed without a response"));
        assert!(
            statuses.contains(&response.status),
            "{case}: got {} instead of one of {statuses:?}",
            response.head
        );
        assert!(
            client.closes_within(CLOSE_WAIT).await,
            "{case}: the connection stayed open after {}; then: {:?}",
            response.status,
            String::from_utf8_lossy(client.unread())
        );
        let seen = self.forwarded().await;
        assert_eq!(
            self.backend.count(),
            before,
            "{case}: the backend received {:?}",
            seen.last().map(|s| (&s.method, &s.uri, &s.headers))
        );
        self.assert_still_serving().await;
    }
}

// ---------------------------------------------------------------------------
// Message framing: Content-Length and Transfer-Encoding
// ---------------------------------------------------------------------------

// hyper: with both headers it decodes the body as chunked and drops
// Content-Length from the head (whichever came first) before the proxy sees
// it. The proxy watches the raw bytes beside hyper (src/framing.rs) and
// refuses the request.
#[tokio::test]
async fn content_length_with_chunked_transfer_encoding_gets_400_and_is_never_forwarded() {
    let rig = Rig::start("").await;
    for (case, request) in [
        (
            "CL then TE",
            &b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
               Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "TE then CL",
            &b"POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
               Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
    ] {
        rig.assert_rejected(case, request, &[400]).await;
    }
}

// The watch follows the framing of every request before it on the
// connection: the ambiguous request is found at its index, after a chunked
// body and a Content-Length body whose bytes look like headers.
#[tokio::test]
async fn an_ambiguous_request_after_others_on_a_keep_alive_connection_gets_400_alone() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(
            b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nwiki\r\n0\r\n\r\n\
              POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 49\r\n\r\n\
              Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              GET /third HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    for expected in [200, 200, 400] {
        let response = client.response().await.expect("a response");
        assert_eq!(response.status, expected, "{}", response.head);
    }
    assert!(client.closes_within(CLOSE_WAIT).await, "still open");
    assert_eq!(rig.forwarded_paths().await, ["/first", "/second"]);
}

// hyper: Content-Length must be all digits; anything else is a parse error
// and hyper answers 400 itself.
#[tokio::test]
async fn an_invalid_content_length_gets_400_and_is_never_forwarded() {
    let rig = Rig::start("").await;
    for value in [
        "abc",
        "-1",
        "1,2",
        "+5",
        "0x5",
        "5 5",
        "",
        "99999999999999999999999",
    ] {
        let request =
            format!("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello");
        rig.assert_rejected(
            &format!("Content-Length: {value:?}"),
            request.as_bytes(),
            &[400],
        )
        .await;
    }
}

// hyper: differing Content-Length values are a parse error (400).
#[tokio::test]
async fn differing_content_lengths_get_400_and_are_never_forwarded() {
    let rig = Rig::start("").await;
    rig.assert_rejected(
        "Content-Length 5 and 6",
        b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        &[400],
    )
    .await;
}

// hyper collapses identical Content-Length headers into one (RFC 9110 §8.6
// allows it): today the request is forwarded once, with one Content-Length
// and the right body, and the connection stays usable. Refusing it (400,
// closed, nothing forwarded) would be as safe; anything else is not.
#[tokio::test]
async fn identical_duplicate_content_lengths_are_forwarded_once_with_the_body_or_refused() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(
            b"POST /dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello\
              GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let first = client.response().await.expect("a response");
    if first.status == 400 {
        assert!(
            client.closes_within(CLOSE_WAIT).await,
            "still open after 400"
        );
        assert_eq!(rig.forwarded().await.len(), 0);
        return rig.assert_still_serving().await;
    }
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.header("x-body-len"), Some("5"));
    let second = client
        .response()
        .await
        .expect("a response to the next request");
    assert_eq!(second.status, 200, "{}", second.head);
    let seen = rig.forwarded().await;
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert_eq!(paths, ["/dup", "/next"]);
    assert_eq!(seen[0].body_len, 5);
    let lengths: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"]);
}

// hyper: a Transfer-Encoding whose last coding is not `chunked`, any
// Transfer-Encoding on HTTP/1.0, and `Transfer-Encoding : chunked` (space
// before the colon, which httparse rejects) are all 400.
#[tokio::test]
async fn a_transfer_encoding_not_ending_in_chunked_gets_400_and_is_never_forwarded() {
    let rig = Rig::start("").await;
    for (case, request) in [
        (
            "gzip alone",
            &b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello"[..],
        ),
        (
            "chunked, identity",
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n\
              0\r\n\r\n",
        ),
        (
            "identity",
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
        ),
        (
            "xchunked",
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked then a second gzip header",
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
              Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked on HTTP/1.0",
            b"POST /te HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before the colon",
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
    ] {
        rig.assert_rejected(case, request, &[400, 501]).await;
    }
}

// hyper accepts any codings before a final `chunked`; the proxy then strips
// Transfer-Encoding (hop-by-hop) and re-chunks, so the backend would get
// the still-coded bytes with nothing saying how they are coded.
#[tokio::test]
async fn an_unknown_transfer_coding_before_chunked_gets_400_or_501_and_is_never_forwarded() {
    let rig = Rig::start("").await;
    rig.assert_rejected(
        "x-unknown, chunked",
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: x-unknown, chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
        &[400, 501],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Header syntax
// ---------------------------------------------------------------------------

// httparse rejects obs-fold in requests, bare CR and NUL in values, and a
// space before the colon: hyper answers 400 and closes.
#[tokio::test]
async fn obs_fold_bare_cr_and_nul_in_headers_get_400_and_are_never_forwarded() {
    let rig = Rig::start("").await;
    for (case, request) in [
        (
            "obs-fold",
            &b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n"[..],
        ),
        (
            "obs-fold with a tab",
            b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tcontinued\r\n\r\n",
        ),
        (
            "bare CR in a value",
            b"GET /cr HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"GET /nul HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET /space HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
        ),
        (
            "NUL in the target",
            b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ] {
        rig.assert_rejected(case, request, &[400]).await;
    }
}

// httparse accepts a bare LF as a line ending (RFC 9112 §2.2 allows a
// recipient to), and so today the proxy does. That is safe because hyper
// re-serialises the request with CRLF: the backend gets exactly the headers
// the proxy parsed (here `Content-Length: 5`, not part of `X-A`), so the two
// cannot disagree about where a header or the body starts. Refusing it
// (400, nothing forwarded) would be as safe.
#[tokio::test]
async fn bare_lf_line_endings_are_forwarded_intact_with_crlf_or_refused() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(b"POST /lf HTTP/1.1\nHost: x\nX-A: 1\nContent-Length: 5\n\nhello")
        .await
        .unwrap();
    let response = client.response().await.expect("a response");
    let seen = rig.forwarded().await;
    if response.status == 400 {
        assert!(seen.is_empty(), "refused, yet forwarded");
        return rig.assert_still_serving().await;
    }
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-body-len"), Some("5"));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.path(), "/lf");
    assert_eq!(seen[0].headers["x-a"], "1");
    assert_eq!(seen[0].headers["host"], "x");
    assert_eq!(seen[0].headers["content-length"], "5");
    assert_eq!(seen[0].body_len, 5);
}

// httparse does not care whether `Host` is there or repeated, and neither does
// hyper: it is the proxy's check to make (RFC 9112 §3.2: 400).
#[tokio::test]
async fn a_missing_host_on_http_1_1_gets_400_and_is_never_forwarded() {
    let rig = Rig::start("").await;
    rig.assert_rejected(
        "no Host",
        b"GET /no-host HTTP/1.1\r\nX-A: 1\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn two_host_headers_get_400_and_are_never_forwarded() {
    let rig = Rig::start("").await;
    rig.assert_rejected(
        "two Host headers",
        b"GET /two-hosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        &[400],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Chunked bodies and smuggling
// ---------------------------------------------------------------------------

/// Sends a chunked request whose chunk-size line is `size_line`, with a
/// second request hidden after it, and asserts the client never gets a
/// `200`, the connection ends, and the hidden request never reaches the
/// backend. hyper forwards the head before it meets the bad chunk, so the
/// backend may see the outer request with its body cut off (never whole).
async fn assert_bad_chunk_refused(rig: &Rig, case: &str, size_line: &str) {
    let request = format!(
        "POST /bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {size_line}\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let mut client = rig.connect().await;
    let _ = client.send(request.as_bytes()).await;
    // Closed without an answer is also a refusal.
    if let Some(response) = client.response().await {
        assert!(
            response.status >= 400,
            "{case}: the client got {}",
            response.head
        );
        assert!(
            client.closes_within(CLOSE_WAIT).await,
            "{case}: the connection stayed open after {}",
            response.status
        );
    }
    let seen = rig.forwarded().await;
    for request in &seen {
        assert_ne!(request.uri.path(), "/smuggled", "{case}: smuggled through");
        if request.uri.path() == "/bad-chunk" {
            assert_eq!(
                request.body_len, 0,
                "{case}: a bad chunk's data reached the backend"
            );
        }
    }
}

#[tokio::test]
async fn an_invalid_chunk_size_never_gets_a_200_and_smuggles_nothing() {
    let rig = Rig::start("").await;
    for (case, size_line) in [
        ("not hex", "zz"),
        ("overflow", "ffffffffffffffffff"),
        ("negative", "-5"),
        ("empty", ""),
    ] {
        assert_bad_chunk_refused(&rig, case, size_line).await;
    }
    rig.assert_still_serving().await;
}

// A body the client framed wrongly is the client's fault: 400, not a 502
// that blames (and counts against) the backend.
#[tokio::test]
async fn an_invalid_chunk_size_gets_400_not_a_bad_gateway() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    let _ = client
        .send(b"POST /bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 400, "{}", response.head);
    assert!(client.closes_within(CLOSE_WAIT).await, "still open");
    rig.assert_still_serving().await;
}

// The classic CL.TE desync: a front end that believed `Content-Length: 0`
// would pass the chunked "body" on as a second request. hyper goes by
// Transfer-Encoding and, with both headers present, closes the connection
// after the first response, so whatever followed is never read as a
// request. Here the backend must never see `/smuggled` as a request.
#[tokio::test]
async fn a_request_hidden_behind_content_length_0_and_chunked_never_reaches_the_backend() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    let _ = client
        .send(
            b"POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
              Transfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
    let first = client.response().await;
    // The hidden request is never answered: the connection closes instead.
    let closed = client.closes_within(CLOSE_WAIT).await;
    let seen = rig.forwarded().await;
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert!(!paths.contains(&"/smuggled"), "smuggled: {paths:?}");
    assert!(closed, "the connection stayed open after {first:?}");
    // The TE.CL mirror image: the chunk data holds a request line that a
    // back end believing `Content-Length: 4` would read as a request.
    let mut client = rig.connect().await;
    let _ = client
        .send(
            b"POST /front2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n\
              2d\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Pad: 1\r\n\r\n\r\n0\r\n\r\n",
        )
        .await;
    let _ = client.response().await;
    assert!(client.closes_within(CLOSE_WAIT).await);
    let seen = rig.forwarded().await;
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert!(!paths.contains(&"/smuggled"), "smuggled: {paths:?}");
    for request in &seen {
        // Whatever reached the backend is framed by its own length, never by
        // a Content-Length the proxy did not go by.
        let lengths = request.headers.get_all("content-length").iter().count();
        let chunked = request.headers.contains_key("transfer-encoding");
        assert!(
            !(lengths > 0 && chunked),
            "forwarded with both: {:?}",
            request.headers
        );
    }
    rig.assert_still_serving().await;
}

// ---------------------------------------------------------------------------
// Connection management
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_http_1_0_request_without_keep_alive_is_answered_and_the_connection_closed() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(response.complete, "{response:?}");
    assert_eq!(response.body, b"server-1");
    assert!(!response.chunked, "chunked to an HTTP/1.0 client");
    assert!(client.closes_within(CLOSE_WAIT).await, "still open");
    assert_eq!(rig.forwarded().await.len(), 1);
}

#[tokio::test]
async fn an_http_1_0_request_with_keep_alive_keeps_the_connection_for_the_next() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    for path in ["/one", "/two"] {
        client
            .send(
                format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let response = client
            .response()
            .await
            .expect("a response on the kept connection");
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body, b"server-1");
        assert!(!response.chunked, "chunked to an HTTP/1.0 client");
        assert_eq!(
            response
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "{}",
            response.head
        );
    }
    assert_eq!(rig.forwarded_paths().await, ["/one", "/two"]);
}

#[tokio::test]
async fn connection_close_on_http_1_1_closes_after_the_response() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(
            b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(client.closes_within(CLOSE_WAIT).await, "still open");
    assert_eq!(rig.forwarded_paths().await, ["/bye"]);
}

// hyper sends `100 Continue` when the body is first read, which the proxy
// does as it forwards it.
#[tokio::test]
async fn expect_100_continue_gets_100_then_the_body_goes_through_whole() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = client.response().await.expect("100 Continue");
    assert_eq!(interim.status, 100, "{}", interim.head);
    client.send(b"hello world").await.unwrap();
    let response = client.response().await.expect("the final response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-body-len"), Some("11"));
    let seen = rig.forwarded().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 11);
}

// ---------------------------------------------------------------------------
// Forwarding headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn naming_x_forwarded_headers_in_connection_cannot_strip_the_proxys_values() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(
            b"GET /xf HTTP/1.1\r\nHost: proxy.test\r\n\
              Connection: X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto\r\n\
              X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\n\
              X-Forwarded-Proto: https\r\n\r\n",
        )
        .await
        .unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    let seen = rig.forwarded().await;
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-host"), ["proxy.test"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert!(!headers.contains_key("connection"), "{headers:?}");
}

// `Host` named in `Connection` is removed as a connection option (RFC 9110
// §7.6.1 read literally), and `X-Forwarded-Host`, which the proxy derives
// from it, goes with it; the backend then sees the proxy's own idea of the
// host (its address, from hyper's client).
#[tokio::test]
async fn naming_host_in_connection_cannot_strip_host_or_x_forwarded_host() {
    let rig = Rig::start("").await;
    let mut client = rig.connect().await;
    client
        .send(b"GET /ch HTTP/1.1\r\nHost: proxy.test\r\nConnection: Host\r\n\r\n")
        .await
        .unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    let seen = rig.forwarded().await;
    assert_eq!(seen.len(), 1);
    let header = |name| seen[0].headers.get(name).map(|v| v.to_str().unwrap());
    assert_eq!(header("host"), Some("proxy.test"));
    assert_eq!(header("x-forwarded-host"), Some("proxy.test"));
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// A request head with `n` small extra headers.
fn with_headers(n: usize) -> Vec<u8> {
    let mut request = b"GET /many HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..n {
        request.extend_from_slice(format!("X-H-{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

// hyper's own default is 100 headers; 200 is over it and over the default
// `limits.max_headers` (100).
#[tokio::test]
async fn two_hundred_small_headers_get_431_and_are_never_forwarded() {
    let rig = Rig::start("").await;
    rig.assert_rejected("200 headers", &with_headers(200), &[431])
        .await;
}

// A limit below hyper's default shows `limits.max_headers` is in force.
#[tokio::test]
async fn more_headers_than_limits_max_headers_get_431() {
    let rig = Rig::start("[limits]\nmax_headers = 20").await;
    rig.assert_rejected("30 headers", &with_headers(30), &[431])
        .await;
    let mut client = rig.connect().await;
    client.send(&with_headers(10)).await.unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "12 headers: {}", response.head);
}

/// Connects and writes `head` one byte every 100 ms, returning how long the
/// proxy took to close the connection (and what it sent first), or `None`
/// if it was still open after `give_up`.
async fn trickle(rig: &Rig, head: &'static [u8], give_up: Duration) -> Option<(Duration, Vec<u8>)> {
    let stream = rig.connect().await.into_stream();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for byte in head {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then silence, with the connection held open.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(give_up, async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    closed.ok().map(|()| (started.elapsed(), got))
}

const SLOW_HEAD: &[u8] =
    b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let rig = Rig::start("[limits]\nheader_timeout = \"1s\"").await;
    let slow = trickle(&rig, SLOW_HEAD, Duration::from_millis(2500));
    let other = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        rig.assert_still_serving().await;
        started.elapsed()
    };
    let (slow, other) = tokio::join!(slow, other);
    assert!(
        other < Duration::from_millis(500),
        "another client waited {other:?}"
    );
    let (took, got) = slow.expect("the trickling client was still connected after 2.5 s");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(1500),
        "cut off after {took:?}"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408"),
        "sent {got:?}"
    );
    assert_eq!(
        rig.forwarded().await.len(),
        1,
        "only the other client's request"
    );
}

// hyper-util's auto (HTTP/1 or HTTP/2) builder reads the first bytes to pick
// the protocol before hyper's header timer exists.
#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off_at_the_header_timeout() {
    let rig = Rig::start("[limits]\nheader_timeout = \"1s\"").await;
    let took = trickle(&rig, b"", Duration::from_millis(2500)).await;
    let (took, _) = took.expect("a silent client was still connected after 2.5 s");
    assert!(
        took <= Duration::from_millis(1500),
        "cut off after {took:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_the_http2_preface_is_cut_off_at_the_header_timeout() {
    let rig = Rig::start("[limits]\nheader_timeout = \"1s\"").await;
    let took = trickle(
        &rig,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_millis(2500),
    )
    .await;
    let (took, _) =
        took.expect("a client trickling the HTTP/2 preface was still connected after 2.5 s");
    assert!(
        took <= Duration::from_millis(1500),
        "cut off after {took:?}"
    );
}

/// A request hidden at the start of a body: if the proxy answered without
/// reading the body and then parsed it as the next request, the backend
/// would get it.
const HIDDEN: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// `len` bytes of body that start with [`HIDDEN`].
fn body_hiding_a_request(len: usize) -> Vec<u8> {
    let mut body = HIDDEN.to_vec();
    body.resize(len, b'a');
    body
}

/// After a refusal on `client`: either the connection closes, or, if the
/// proxy kept it (having read the rest of the body), the next request on it
/// is answered as itself. Either way the hidden request never reaches the
/// backend.
async fn assert_closed_or_next_request_clean(rig: &Rig, client: &mut RawConnection, case: &str) {
    if !client.closes_within(Duration::from_millis(200)).await {
        client
            .send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        if let Some(next) = client.response().await {
            assert_eq!(
                next.status, 200,
                "{case}: the next request got {}",
                next.head
            );
        }
    }
    let seen = rig.forwarded().await;
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert!(
        paths.iter().all(|p| *p == "/next"),
        "{case}: the backend got {paths:?}"
    );
}

// hyper reads (drains) a small unread body after the response, so it may
// keep the connection open after the 413: that is fine as long as the body
// is never taken for the next request.
#[tokio::test]
async fn a_body_over_limits_max_body_bytes_with_content_length_gets_413_and_is_never_forwarded() {
    let rig = Rig::start("[limits]\nmax_body_bytes = 1024").await;
    let mut request = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n".to_vec();
    request.extend(body_hiding_a_request(2048));
    let mut client = rig.connect().await;
    let _ = client.send(&request).await;
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 413, "{}", response.head);
    assert_closed_or_next_request_clean(&rig, &mut client, "whole body sent").await;
    rig.assert_still_serving().await;
    // At the limit: through, whole.
    let mut client = rig.connect().await;
    let mut request = b"POST /fits HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024));
    client.send(&request).await.unwrap();
    let response = client.response().await.expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-body-len"), Some("1024"));
}

// The 413 comes from the Content-Length alone: the client need not send the
// body first, and what it sends afterwards is never read as a request.
#[tokio::test]
async fn a_content_length_over_limits_max_body_bytes_gets_413_before_the_body_is_sent() {
    let rig = Rig::start("[limits]\nmax_body_bytes = 1024").await;
    for (case, head) in [
        (
            "plain",
            &b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n"[..],
        ),
        (
            "Expect: 100-continue",
            b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\
              Expect: 100-continue\r\n\r\n",
        ),
    ] {
        let mut client = rig.connect().await;
        client.send(head).await.unwrap();
        let response = client.response().await.expect("a response");
        assert_eq!(response.status, 413, "{case}: {}", response.head);
        // The body the client had been holding back, with a request in it.
        let _ = client.send(&body_hiding_a_request(4096)).await;
        assert_closed_or_next_request_clean(&rig, &mut client, case).await;
    }
    rig.assert_still_serving().await;
}

#[tokio::test]
async fn a_chunked_body_over_limits_max_body_bytes_never_gets_a_200() {
    let rig = Rig::start("[limits]\nmax_body_bytes = 1024").await;
    let mut request =
        b"POST /big-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend(std::iter::repeat_n(b'a', 512));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut client = rig.connect().await;
    let _ = client.send(&request).await;
    if let Some(response) = client.response().await {
        assert!(
            [413, 400].contains(&response.status),
            "got {}",
            response.head
        );
        assert!(client.closes_within(CLOSE_WAIT).await, "still open");
    }
    for seen in rig.forwarded().await {
        assert!(
            seen.body_len <= 1024,
            "{} bytes reached the backend",
            seen.body_len
        );
    }
    rig.assert_still_serving().await;
}
