mod common;
use std::time::Duration;
use common::*;

async fn probe(sections: &str, case: &str, parts: &[&[u8]]) {
    let backend = TestBackend::start("server-1").await;
    let proxy = start_proxy(&config_text(sections, &[("server-1", backend.addr)])).await;
    let mut c = RawConnection::connect(proxy.local_addr()).await;
    let mut out = Vec::new();
    for p in parts {
        let w = c.send(p).await;
        let r = c.response().await;
        out.push(format!("write={w:?} response={:?}", r.map(|r| (r.status, r.head))));
    }
    let closed = c.closes_within(Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen: Vec<_> = backend.seen().iter().map(|s| (s.method.to_string(), s.uri.to_string(), s.body_len)).collect();
    eprintln!("=== {case}\n {out:#?}\n closed={closed}\n seen={seen:?}");
}

#[tokio::test]
async fn probes() {
    let mut big = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 2048));
    probe("[limits]\nmax_body_bytes = 1024", "cl 2048 whole", &[&big]).await;
    probe("[limits]\nmax_body_bytes = 1024", "cl 4096 head only", &[b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n"]).await;
    let mut ch = b"POST /big-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 { ch.extend_from_slice(b"200\r\n"); ch.extend(std::iter::repeat_n(b'a', 512)); ch.extend_from_slice(b"\r\n"); }
    ch.extend_from_slice(b"0\r\n\r\n");
    probe("[limits]\nmax_body_bytes = 1024", "chunked 2048", &[&ch]).await;
    probe("", "100-continue", &[b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n", b"hello world"]).await;
}
