//! Feeds arbitrary bytes, in arbitrary chunks, to the request-framing watch
//! that finds requests with both `Content-Length` and `Transfer-Encoding`,
//! and serves the same bytes with hyper over a `Watched` connection.
//!
//! Input: the first byte's low four bits say how many of the next bytes are
//! run lengths (each byte `b` a run of `b + 1` bytes, cycled); the rest is
//! the stream a client sends.
//!
//! Invariants: nothing panics; fed in those runs, or a byte at a time, the
//! watch flags the same request and follows the same number of heads as
//! fed whole (and still follows if the whole feed does); hyper never hands
//! the service more requests than the watch followed (the watch never gives
//! up before hyper does); the service finds exactly the ambiguous request
//! flagged, and that request carries a `Transfer-Encoding`.

#![no_main]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use affinity::proxy::framing::{FramingWatch, Watched};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::TRANSFER_ENCODING;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// The head limit of the watch and of hyper (its smallest `max_buf_size`).
const MAX: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let runs = usize::from(control & 15).min(rest.len());
    let (runs, stream) = rest.split_at(runs);
    let runs: Vec<usize> = runs.iter().map(|&b| usize::from(b) + 1).collect();

    let whole = fed(stream, &[]);
    for split in [fed(stream, &runs), fed(stream, &[1])] {
        assert_eq!(split.ambiguous(), whole.ambiguous(), "{runs:?}");
        assert_eq!(split.requests(), whole.requests(), "{runs:?}");
        assert!(!whole.is_following() || split.is_following(), "{runs:?}");
    }

    let seen = runtime().block_on(serve(stream, &runs));
    assert!(
        seen.len() as u64 <= whole.requests(),
        "hyper took {} requests, the watch followed {}",
        seen.len(),
        whole.requests()
    );
    for (index, request) in seen.iter().enumerate() {
        let ambiguous = whole.ambiguous() == Some(index as u64);
        assert_eq!(request.flagged, ambiguous, "request {index}");
        assert!(!ambiguous || request.chunked, "request {index}");
    }
});

fn fed(stream: &[u8], runs: &[usize]) -> FramingWatch {
    let mut watch = FramingWatch::new(MAX);
    if runs.is_empty() {
        watch.feed(stream);
        return watch;
    }
    let mut rest = stream;
    for &run in runs.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at(run.min(rest.len()));
        watch.feed(chunk);
        rest = after;
    }
    watch
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// What the service saw of one request.
struct Seen {
    flagged: bool,
    chunked: bool,
}

/// Serves `stream`, written in `runs`, with hyper's HTTP/1 server over a
/// `Watched` connection: what the service saw, in order.
async fn serve(stream: &[u8], runs: &[usize]) -> Vec<Seen> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (server, ambiguity) = Watched::new(server, MAX);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let next = AtomicU64::new(0);
    let service = {
        let seen = Arc::clone(&seen);
        service_fn(move |request: Request<Incoming>| {
            let flagged = ambiguity.is(next.fetch_add(1, Ordering::Relaxed));
            let chunked = request.headers().contains_key(TRANSFER_ENCODING);
            seen.lock().unwrap().push(Seen { flagged, chunked });
            async move {
                let _ = request.into_body().collect().await;
                // Not 2xx: a CONNECT is not turned into a tunnel.
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::NOT_FOUND;
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .max_buf_size(MAX)
        .serve_connection(TokioIo::new(server), service);
    let (mut read, mut write) = tokio::io::split(client);
    let writer = async move {
        let mut rest = stream;
        let runs = if runs.is_empty() {
            &[usize::MAX][..]
        } else {
            runs
        };
        for &run in runs.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(run.min(rest.len()));
            rest = after;
            if write.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = write.shutdown().await;
    };
    let reader = async move {
        let mut responses = Vec::new();
        let _ = read.read_to_end(&mut responses).await;
    };
    let all = async { tokio::join!(connection, writer, reader) };
    let (_served, (), ()) = tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("hyper finished");
    std::mem::take(&mut *seen.lock().unwrap())
}
