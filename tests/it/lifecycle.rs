//! The proxy's life: HTTP/2 with prior knowledge on the same listener, and
//! graceful shutdown (stop accepting, drain, bounded by the drain timeout).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::common::*;
use affinity::listener::Drain;

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_and_host_comes_from_the_authority() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::get("http://shop.example/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = bounded(sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-backend"], "server-1");
        let body = bounded(response.into_body().collect()).await.unwrap();
        assert_eq!(&body.to_bytes()[..], b"server-1");
    }
    let seen = backends[0].seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].headers["host"], "shop.example");
    assert_eq!(seen[0].uri, "/h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_and_lets_a_request_in_flight_finish() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let addr = proxy.local_addr();
    let in_flight = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.get("/hold", &[]).await
    });
    bounded(async {
        while backends[0].count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let shutdown = tokio::spawn(proxy.shutdown());
    // The listener closes promptly; the drain waits for the held request.
    bounded(async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!shutdown.is_finished());
    backends[0].release();
    let reply = bounded(in_flight).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "server-1");
    assert_eq!(bounded(shutdown).await.unwrap(), Drain::Complete);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_hold_up_shutdown() {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text("", &pool(&backends))).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    let started = Instant::now();
    assert_eq!(bounded(proxy.shutdown()).await, Drain::Complete);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn the_drain_timeout_cuts_off_a_request_that_does_not_finish() {
    let backends = TestBackend::start_many(1).await;
    backends[0].set_mode(Mode::Hang);
    let text = config_text("", &pool(&backends))
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"300ms\"");
    let proxy = start_proxy(&text).await;
    let addr = proxy.local_addr();
    let stuck = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::get("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        sender.send_request(request).await
    });
    bounded(async {
        while backends[0].count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let started = Instant::now();
    assert_eq!(bounded(proxy.shutdown()).await, Drain::TimedOut);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1300),
        "took {took:?}"
    );
    assert!(
        bounded(stuck).await.unwrap().is_err(),
        "the client saw its connection cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_port_route_alike_and_all_drain() {
    let backends = TestBackend::start_many(5).await;
    let text = config_text("[balancer]\nkey = \"url\"\n", &pool(&backends));
    let proxy = affinity::listener::start_workers(parse(&text), 3)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    // Many connections, so the kernel spreads them over the three workers;
    // every worker must send each URL to the same backend.
    let mut first: std::collections::HashMap<String, String> = Default::default();
    for round in 0..2 {
        for c in 0..24 {
            let mut client = Client::connect(addr).await;
            for k in 0..10 {
                let path = format!("/item/{}", c * 10 + k);
                let reply = client.get(&path, &[]).await;
                assert_eq!(reply.status, 200, "round {round} {path}");
                let backend = reply.backend().to_string();
                let was = first.entry(path.clone()).or_insert_with(|| backend.clone());
                assert_eq!(*was, backend, "{path} moved between connections");
            }
        }
    }
    let total: u64 = backends.iter().map(TestBackend::count).sum();
    assert_eq!(total, 480);
    assert_eq!(bounded(proxy.shutdown()).await, Drain::Complete);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "every worker stopped listening"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_others_keep_being_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(
        "[limits]\nmax_connections = 2",
        &pool(&backends),
    ))
    .await;
    let address = proxy.local_addr();
    let mut first = Client::connect(address).await;
    let mut second = Client::connect(address).await;
    assert_eq!(first.get("/", &[]).await.status, 200);
    assert_eq!(second.get("/", &[]).await.status, 200);

    // The third is accepted and closed without an answer.
    let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: proxy.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = bounded(third.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(backends[0].count(), 2);

    // The two open ones are still served; once one closes, a new one is.
    assert_eq!(first.get("/", &[]).await.status, 200);
    drop(second);
    let reply = bounded(async {
        loop {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nhost: proxy.test\r\n\r\n")
                .await;
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            if let Ok(n) = stream.read(&mut buf).await
                && n > 0
            {
                answer.extend_from_slice(&buf[..n]);
                return String::from_utf8_lossy(&answer).into_owned();
            }
            // The closed connection's slot is freed when its task ends.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
