//! What a client sees when backends fail, and bodies streaming through
//! intact.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;

use crate::common::*;
use affinity::config::Config;

const MIB: usize = 1024 * 1024;

/// The fallback order (backend names) of a `url` key under `config`, with
/// every backend healthy, as the proxy sees it at startup: a URL key is the
/// request target's bytes.
fn fallback_of(config: &Config, target: &str) -> Vec<String> {
    assert_eq!(
        config.pools[0].balancer.key,
        affinity::config::KeySource::Url
    );
    fallback_orders(&config.pools[0])(target.as_bytes())
}

/// Five live backends and one dead one, `server-dead`, hashed on the URL.
async fn pool_with_a_dead_backend(sections: &str) -> (Vec<TestBackend>, String) {
    let backends = TestBackend::start_many(5).await;
    let mut members = pool(&backends);
    let dead = dead_address().await;
    members.push(("server-dead", dead));
    let text = config_text(&format!("[balancer]\nkey = \"url\"\n{sections}"), &members);
    (backends, text)
}

#[tokio::test]
async fn a_dead_backends_keys_fall_to_their_next_backend_without_a_client_error() {
    let (_backends, text) = pool_with_a_dead_backend("").await;
    let config = parse(&text);
    let proxy = start_proxy(&text).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut fell_back = 0;
    for i in 0..300 {
        let target = format!("/k/{i}");
        let order = fallback_of(&config, &target);
        let want = order.iter().find(|b| *b != "server-dead").unwrap();
        fell_back += usize::from(order[0] == "server-dead");
        let reply = client.get(&target, &[]).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        assert_eq!(reply.backend(), want, "{target}");
    }
    assert!(
        fell_back > 20,
        "only {fell_back} keys had the dead backend first"
    );
}

#[tokio::test]
async fn with_every_backend_dead_the_client_gets_503() {
    let members = [("a", dead_address().await), ("b", dead_address().await)];
    let proxy = start_proxy(&config_text("[upstream]\nretries = 1", &members)).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get("/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "no healthy backend\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn when_retries_run_out_before_the_backends_do_the_client_gets_502() {
    let members = [
        ("a", dead_address().await),
        ("b", dead_address().await),
        ("c", dead_address().await),
    ];
    let proxy = start_proxy(&config_text("[upstream]\nretries = 0", &members)).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get("/", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "bad gateway\n");
}

#[tokio::test]
async fn a_backend_that_never_answers_gives_504_within_the_request_timeout() {
    let backends = TestBackend::start_many(1).await;
    backends[0].set_mode(Mode::Hang);
    let proxy = start_proxy(&config_text(
        "[upstream]\nrequest_timeout = \"500ms\"",
        &pool(&backends),
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let started = Instant::now();
    let reply = client.get("/", &[]).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "gateway timeout\n");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(backends[0].count(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn a_backend_answering_500_is_passed_through_and_not_retried() {
    let backends = TestBackend::start_many(3).await;
    for backend in &backends {
        backend.set_mode(Mode::Fail);
    }
    let proxy = start_proxy(&config_text("[upstream]\nretries = 2", &pool(&backends))).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get("/", &[]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.text(), "boom");
    let total: u64 = backends.iter().map(TestBackend::count).sum();
    assert_eq!(total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_upload_streams_through_intact() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let payload: Vec<u8> = (0..10 * MIB as u64).map(pattern).collect();
    let mut hash = Fnv::new();
    hash.write(&payload);
    // Sent in 64 KiB chunks of unknown total length (chunked encoding).
    let (tx, body) = ChannelBody::new();
    let payload = Bytes::from(payload);
    let feeder = tokio::spawn(async move {
        for chunk in payload.chunks(64 * 1024) {
            tx.send(payload.slice_ref(chunk)).await.unwrap();
        }
    });
    let mut client = Client::connect(proxy.local_addr()).await;
    let request = Request::post("/upload")
        .header("host", "proxy.test")
        .body(body.boxed())
        .unwrap();
    let reply = client.send(request).await;
    bounded(feeder).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-len"), Some("10485760"));
    assert_eq!(
        reply.header("x-body-hash"),
        Some(format!("{:016x}", hash.finish()).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_download_streams_through_intact() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let response = client
        .send_streaming(
            Request::get(format!("/download?bytes={}", 10 * MIB))
                .header("host", "proxy.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut got, mut len) = (Fnv::new(), 0u64);
    while let Some(frame) = bounded(body.frame()).await {
        if let Some(data) = frame.unwrap().data_ref() {
            got.write(data);
            len += data.len() as u64;
        }
    }
    let mut want = Fnv::new();
    want.write(&(0..10 * MIB as u64).map(pattern).collect::<Vec<u8>>());
    assert_eq!(len, 10 * MIB as u64);
    assert_eq!(got.finish(), want.finish());
}

#[tokio::test]
async fn a_response_body_reaches_the_client_before_the_backend_has_finished_it() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let response = client
        .send_streaming(
            Request::get("/trickle")
                .header("host", "proxy.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    let mut body = response.into_body();
    let first = bounded(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"first"[..]));
    backends[0].release();
    let rest = bounded(body.collect()).await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
}

#[tokio::test]
async fn a_post_whose_first_backend_is_dead_is_retried_on_the_next_with_its_body_intact() {
    let (backends, text) = pool_with_a_dead_backend("").await;
    let config = parse(&text);
    let target = (0..)
        .map(|i| format!("/orders/{i}"))
        .find(|t| fallback_of(&config, t)[0] == "server-dead")
        .unwrap();
    let want = fallback_of(&config, &target)[1].clone();
    let proxy = start_proxy(&text).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    for (i, size) in [0, 1, 300 * 1024].into_iter().enumerate() {
        let payload: Vec<u8> = (0..size as u64).map(|n| pattern(n + 7)).collect();
        let mut hash = Fnv::new();
        hash.write(&payload);
        let (tx, body) = ChannelBody::new();
        let feeder = tokio::spawn(async move {
            for chunk in payload.chunks(16 * 1024) {
                tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
        });
        let request = Request::post(&target)
            .header("host", "proxy.test")
            .body(body.boxed())
            .unwrap();
        let reply = client.send(request).await;
        bounded(feeder).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), want);
        assert_eq!(reply.header("x-body-len"), Some(size.to_string().as_str()));
        assert_eq!(
            reply.header("x-body-hash"),
            Some(format!("{:016x}", hash.finish()).as_str())
        );
        let answered = backends.iter().find(|b| b.name == want).unwrap();
        assert_eq!(answered.seen().len(), i + 1);
        assert_eq!(answered.seen()[i].method, "POST");
    }
}

#[tokio::test]
async fn a_get_cut_off_by_its_backend_is_retried_on_the_next_but_a_post_is_not() {
    let backends = TestBackend::start_many(3).await;
    let (closing, _closing_task) = closing_backend().await;
    let mut members = pool(&backends);
    members.push(("server-closes", closing));
    let text = config_text("[balancer]\nkey = \"url\"", &members);
    let config = parse(&text);
    let target = (0..)
        .map(|i| format!("/cut/{i}"))
        .find(|t| fallback_of(&config, t)[0] == "server-closes")
        .unwrap();
    let want = fallback_of(&config, &target)[1].clone();
    let proxy = start_proxy(&text).await;

    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get(&target, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.backend(), want);

    let post = Request::post(&target)
        .header("host", "proxy.test")
        .body(full("order #1"))
        .unwrap();
    let reply = client.send(post).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "bad gateway\n");
    let posts: usize = backends
        .iter()
        .flat_map(TestBackend::seen)
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 0, "a POST that may have been acted on is not resent");
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_never_reaches_a_backend() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let reply = raw_exchange(
        proxy.local_addr(),
        b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Still serving others.
    let mut client = Client::connect(proxy.local_addr()).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    assert_eq!(backends[0].count(), 1);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let reply = raw_exchange(proxy.local_addr(), &request).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(backends[0].count(), 0);
}

#[tokio::test]
async fn a_connect_request_gets_405() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let reply = raw_exchange(
        proxy.local_addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert_eq!(backends[0].count(), 0);
}

/// Writes `request` on a fresh connection and reads until the proxy closes
/// it or 2 s pass; a blocking socket on a thread keeps this byte-exact.
async fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let request = request.to_vec();
    let read = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // The proxy may answer and close before reading all of it.
        let _ = stream.write_all(&request);
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    });
    bounded(read).await.unwrap()
}

#[tokio::test]
async fn a_body_over_max_body_bytes_gets_413_declared_or_streamed() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(
        "[limits]\nmax_body_bytes = 1024",
        &pool(&backends),
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    // Declared: refused before any backend sees it.
    let declared = Request::post("/upload")
        .header("host", "proxy.test")
        .body(full_bytes(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let reply = client.send(declared).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.text(), "request body too large\n");
    assert_eq!(backends[0].count(), 0);

    // At the limit: forwarded.
    let at_limit = Request::post("/upload")
        .header("host", "proxy.test")
        .body(full_bytes(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    let reply = Client::connect(proxy.local_addr())
        .await
        .send(at_limit)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-len"), Some("1024"));

    // Chunked, of unknown length: cut off at the limit.
    let (tx, body) = ChannelBody::new();
    let feeder = tokio::spawn(async move {
        for _ in 0..4 {
            if tx.send(Bytes::from(vec![b'y'; 512])).await.is_err() {
                break;
            }
        }
    });
    let streamed = Request::post("/upload")
        .header("host", "proxy.test")
        .body(body.boxed())
        .unwrap();
    let reply = Client::connect(proxy.local_addr())
        .await
        .send(streamed)
        .await;
    assert_eq!(reply.status, 413);
    let _ = bounded(feeder).await;
    // Nothing but the request at the limit got an answer from the backend.
    assert!(backends[0].seen().iter().all(|seen| seen.body_len <= 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_in_flight_is_skipped_and_503_when_all_are() {
    let backends = TestBackend::start_many(2).await;
    let text = config_text(
        "[balancer]\nkey = \"url\"\n[limits]\nmax_in_flight_per_backend = 1",
        &pool(&backends),
    );
    let order = fallback_of(&parse(&text), "/hold");
    let proxy = start_proxy(&text).await;
    let address = proxy.local_addr();
    let hold = || {
        tokio::spawn(async move {
            let mut client = Client::connect(address).await;
            client.get("/hold", &[]).await
        })
    };
    let first = hold();
    let backend = |name: &str| backends.iter().find(|b| b.name == name).unwrap();
    bounded(async {
        while backend(&order[0]).count() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Its first choice is full: the same key goes to the next backend.
    let second = hold();
    bounded(async {
        while backend(&order[1]).count() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Both full.
    let mut client = Client::connect(address).await;
    let reply = client.get("/hold", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "every backend is at its request limit\n");
    for b in &backends {
        b.release();
    }
    assert_eq!(bounded(first).await.unwrap().backend(), order[0]);
    assert_eq!(bounded(second).await.unwrap().backend(), order[1]);
    assert_eq!(client.get("/hold", &[]).await.backend(), order[0]);
}
