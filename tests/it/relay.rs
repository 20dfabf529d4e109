//! The TCP relay ([`affinity::proxy::relay`]) on real sockets: a client
//! connected to the relay's front socket on 127.0.0.1, the relay connected
//! to a backend socket the test holds, and what each end sees.
//!
//! Half-close both ways, large transfers both ways at once (checked byte by
//! byte against a pattern by offset as they arrive, never kept), a
//! backend killed mid-stream, the idle timeout, shutdown and the byte
//! counters.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::*;
use affinity::proxy::relay::{Counters, Ended, RelayLimits, Relayed, relay_counted};

/// How soon a peer must see its connection closed once the relay has a
/// reason to close it.
const PROMPTLY: Duration = Duration::from_secs(1);

/// A client and a backend joined by a relay running on its own task.
struct Rig {
    client: TcpStream,
    backend: TcpStream,
    relay: JoinHandle<Relayed>,
    counters: Arc<Bytes>,
}

/// The byte counts a rig's relay adds to as it runs.
#[derive(Default)]
struct Bytes {
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl Rig {
    /// A relay with no idle timeout that never shuts down.
    async fn start() -> Rig {
        Rig::start_with(RelayLimits::default(), std::future::pending()).await
    }

    async fn start_with(
        limits: RelayLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Rig {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let to_backend = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (backend, _) = back.accept().await.unwrap();
        let counters = Arc::new(Bytes::default());
        let relay = tokio::spawn({
            let counters = Arc::clone(&counters);
            async move {
                let counting = Counters {
                    to_backend: &counters.to_backend,
                    to_client: &counters.to_client,
                };
                relay_counted(accepted, to_backend, &limits, counting, shutdown).await
            }
        });
        Rig {
            client,
            backend,
            relay,
            counters,
        }
    }
}

/// Reads `stream` to its end; what it read and whether it ended with an
/// error (a reset) rather than an end of stream.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return (received, false),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (received, true),
        }
    }
}

/// Waits for the relay's result, bounded.
async fn finished(relay: JoinHandle<Relayed>) -> Relayed {
    bounded(relay).await.unwrap()
}

/// Both kinds of sides: connections shut down by the relay, and plain TCP
/// ones whose last FIN the relay leaves to their close. Each peer reads a
/// clean end of stream either way.
const SIDES: [RelayLimits; 2] = [
    RelayLimits {
        idle_timeout: Duration::ZERO,
        plain_client: false,
        plain_backend: false,
    },
    RelayLimits {
        idle_timeout: Duration::ZERO,
        plain_client: true,
        plain_backend: true,
    },
];

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_reads_the_whole_answer() {
    for limits in SIDES {
        client_half_closes_first(limits).await;
    }
}

async fn client_half_closes_first(limits: RelayLimits) {
    let Rig {
        mut client,
        mut backend,
        relay,
        ..
    } = Rig::start_with(limits, std::future::pending()).await;
    let serving = tokio::spawn(async move {
        // An echo-like backend: reads the request to its end, then answers.
        let mut request = Vec::new();
        backend.read_to_end(&mut request).await.unwrap();
        let answer: Vec<u8> = request.iter().rev().copied().collect();
        backend.write_all(b"answer to ").await.unwrap();
        backend.write_all(&answer).await.unwrap();
        backend.shutdown().await.unwrap();
        request
    });
    client.write_all(b"a request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    bounded(client.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"answer to tseuqer a");
    assert_eq!(bounded(serving).await.unwrap(), b"a request");
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Closed);
    assert_eq!(relayed.client_to_backend, 9);
    assert_eq!(relayed.backend_to_client, 19);
}

#[tokio::test]
async fn a_backend_that_half_closes_still_receives_what_the_client_sends_afterwards() {
    for limits in SIDES {
        backend_half_closes_first(limits).await;
    }
}

async fn backend_half_closes_first(limits: RelayLimits) {
    let Rig {
        mut client,
        mut backend,
        relay,
        ..
    } = Rig::start_with(limits, std::future::pending()).await;
    backend.write_all(b"everything I have").await.unwrap();
    backend.shutdown().await.unwrap();
    let mut answer = Vec::new();
    bounded(client.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"everything I have");
    // The client's side of the connection is still open for writing, and
    // what it writes reaches the backend.
    for part in [&b"and "[..], b"still ", b"more"] {
        client.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.shutdown().await.unwrap();
    let mut received = Vec::new();
    bounded(backend.read_to_end(&mut received)).await.unwrap();
    assert_eq!(received, b"and still more");
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Closed);
    assert_eq!(relayed.client_to_backend, 14);
    assert_eq!(relayed.backend_to_client, 17);
}

// ---------------------------------------------------------------------------
// Large transfers
// ---------------------------------------------------------------------------

/// The transfer pattern's period: a prime, so it lines up with no buffer
/// size. A lost, repeated or reordered piece shifts everything after it
/// against the pattern and cannot go unnoticed, unless its length is a
/// multiple of the period (a megabyte).
const PERIOD: usize = 1_048_573;

/// How much is sent and checked at once.
const CHUNK: usize = 64 * 1024;

/// Byte `o` of the transfer is `table[o % PERIOD]`: the table holds one
/// period and one more chunk, so any chunk is one slice of it and sending or
/// checking one costs no more than a copy or a comparison.
fn pattern_table() -> Arc<Vec<u8>> {
    let mut state = 0x5eed_u64;
    let mut table: Vec<u8> = (0..PERIOD)
        .map(|_| {
            // xorshift64: cheap, and no short repeats within a period.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    table.extend_from_within(..CHUNK);
    Arc::new(table)
}

/// Writes `len` bytes of the pattern (a multiple of [`CHUNK`]), then a FIN.
async fn send_pattern(mut to: OwnedWriteHalf, table: Arc<Vec<u8>>, len: u64) {
    let mut offset = 0;
    while offset < len {
        let at = (offset % PERIOD as u64) as usize;
        to.write_all(&table[at..at + CHUNK]).await.unwrap();
        offset += CHUNK as u64;
    }
    to.shutdown().await.unwrap();
}

/// Reads to the end, checking each read against the pattern at its offset
/// as it arrives (nothing is kept); how many bytes came.
async fn check_pattern(mut from: OwnedReadHalf, table: Arc<Vec<u8>>) -> u64 {
    let mut buffer = vec![0; CHUNK];
    let mut offset = 0u64;
    loop {
        let read = from.read(&mut buffer).await.unwrap();
        if read == 0 {
            return offset;
        }
        let at = (offset % PERIOD as u64) as usize;
        if buffer[..read] != table[at..at + read] {
            panic!("the {read} bytes at offset {offset} are not the pattern's");
        }
        offset += read as u64;
    }
}

/// Sends `len` bytes each way at once through a relay, checks them, and
/// prints the throughput.
async fn transfer_both_ways(len: u64) {
    let Rig {
        client,
        backend,
        relay,
        ..
    } = Rig::start().await;
    let (client_read, client_write) = client.into_split();
    let (backend_read, backend_write) = backend.into_split();
    let table = pattern_table();
    let started = Instant::now();
    let tasks = [
        tokio::spawn({
            let table = Arc::clone(&table);
            async move {
                send_pattern(client_write, table, len).await;
                0
            }
        }),
        tokio::spawn(check_pattern(backend_read, Arc::clone(&table))),
        tokio::spawn({
            let table = Arc::clone(&table);
            async move {
                send_pattern(backend_write, table, len).await;
                0
            }
        }),
        tokio::spawn(check_pattern(client_read, table)),
    ];
    let mut received = Vec::new();
    for task in tasks {
        received.push(tokio::time::timeout(Duration::from_secs(120), task).await);
    }
    let elapsed = started.elapsed();
    let received: Vec<u64> = received.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!((received[1], received[3]), (len, len));
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Closed);
    assert_eq!(
        (relayed.client_to_backend, relayed.backend_to_client),
        (len, len)
    );
    let mib_per_s = len as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64();
    println!(
        "{} MiB each way in {:.2} s: {mib_per_s:.0} MiB/s each way, {:.0} MiB/s both ways",
        len >> 20,
        elapsed.as_secs_f64(),
        2.0 * mib_per_s
    );
}

/// 1.6 to 3.5 s on the 2-core development machine with the other tests
/// running beside it (over 500 MiB/s each way when it is not loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_each_way_at_once_arrives_intact() {
    transfer_both_ways(1 << 30).await;
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// A backend task that streams to `backend` until aborted.
fn stream_forever(mut backend: TcpStream) -> JoinHandle<()> {
    tokio::spawn(async move {
        let chunk = [b'x'; 16 * 1024];
        loop {
            if backend.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn a_backend_reset_mid_stream_closes_the_client_promptly_and_is_a_backend_error() {
    let Rig {
        mut client,
        backend,
        relay,
        ..
    } = Rig::start().await;
    // Dropped with SO_LINGER 0, its socket sends a reset, as a killed
    // process's would with bytes unread.
    backend.set_zero_linger().unwrap();
    let streaming = stream_forever(backend);
    let mut first = vec![0; 256 * 1024];
    bounded(client.read_exact(&mut first)).await.unwrap();
    streaming.abort();
    let killed = Instant::now();
    bounded(read_until_closed(&mut client)).await;
    assert!(
        killed.elapsed() < PROMPTLY,
        "the client's connection closed {:?} after the backend was killed",
        killed.elapsed()
    );
    let relayed = finished(relay).await;
    assert!(
        matches!(relayed.ended, Ended::BackendError(_)),
        "{:?}",
        relayed.ended
    );
    assert!(relayed.backend_to_client >= 256 * 1024);
}

#[tokio::test]
async fn a_backend_gone_mid_stream_with_a_fin_ends_the_clients_stream_promptly() {
    let Rig {
        mut client,
        backend,
        relay,
        ..
    } = Rig::start().await;
    let streaming = stream_forever(backend);
    let mut first = vec![0; 256 * 1024];
    bounded(client.read_exact(&mut first)).await.unwrap();
    // Aborting the task drops its socket: a plain close, a FIN.
    streaming.abort();
    let killed = Instant::now();
    let (_, reset) = bounded(read_until_closed(&mut client)).await;
    assert!(!reset, "a FIN is passed on as an end of stream");
    assert!(
        killed.elapsed() < PROMPTLY,
        "the client saw the end of stream {:?} after the backend was gone",
        killed.elapsed()
    );
    // Half-closed: the relay waits for the client's end too.
    assert!(!relay.is_finished());
    drop(client);
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Closed);
    assert_eq!(relayed.client_to_backend, 0);
}

#[tokio::test]
async fn a_client_reset_closes_the_backend_promptly_and_is_a_client_error() {
    let Rig {
        client,
        mut backend,
        relay,
        ..
    } = Rig::start().await;
    client.set_zero_linger().unwrap();
    drop(client);
    let gone = Instant::now();
    bounded(read_until_closed(&mut backend)).await;
    assert!(gone.elapsed() < PROMPTLY, "{:?}", gone.elapsed());
    let relayed = finished(relay).await;
    assert!(
        matches!(relayed.ended, Ended::ClientError(_)),
        "{:?}",
        relayed.ended
    );
}

// ---------------------------------------------------------------------------
// Idle timeout and shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_connection_without_traffic_for_the_idle_timeout_is_closed_both_ways() {
    let idle_timeout = Duration::from_millis(300);
    let Rig {
        mut client,
        mut backend,
        relay,
        ..
    } = Rig::start_with(
        RelayLimits {
            idle_timeout,
            ..RelayLimits::default()
        },
        std::future::pending(),
    )
    .await;
    // Taken before the last byte moves, so the timeout cannot look early.
    let quiet_since = Instant::now();
    client.write_all(b"hi").await.unwrap();
    let mut hi = [0; 2];
    bounded(backend.read_exact(&mut hi)).await.unwrap();
    let (to_client, _) = bounded(read_until_closed(&mut client)).await;
    let closed_after = quiet_since.elapsed();
    assert!(to_client.is_empty());
    assert!(
        closed_after >= idle_timeout && closed_after < idle_timeout + PROMPTLY,
        "closed {closed_after:?} after the last byte"
    );
    let (to_backend, _) = bounded(read_until_closed(&mut backend)).await;
    assert!(to_backend.is_empty());
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::IdleTimeout);
    assert_eq!(
        (relayed.client_to_backend, relayed.backend_to_client),
        (2, 0)
    );
}

#[tokio::test]
async fn a_trickle_one_way_keeps_the_connection_open_past_several_idle_timeouts() {
    // Long enough that a test thread stalled on a loaded machine does not
    // miss a byte's turn by a whole two thirds of it.
    let idle_timeout = Duration::from_millis(900);
    let Rig {
        mut client,
        mut backend,
        relay,
        ..
    } = Rig::start_with(
        RelayLimits {
            idle_timeout,
            ..RelayLimits::default()
        },
        std::future::pending(),
    )
    .await;
    // A download to a silent client: one byte every third of the timeout,
    // for four timeouts.
    let started = Instant::now();
    for _ in 0..12 {
        tokio::time::sleep(idle_timeout / 3).await;
        backend.write_all(b".").await.unwrap();
        let mut dot = [0; 1];
        bounded(client.read_exact(&mut dot)).await.unwrap();
    }
    assert!(started.elapsed() >= idle_timeout * 4);
    assert!(
        !relay.is_finished(),
        "the relay timed out while bytes moved"
    );
    // Then silence: the timeout ends it.
    let (rest, _) = bounded(read_until_closed(&mut client)).await;
    assert!(rest.is_empty());
    bounded(read_until_closed(&mut backend)).await;
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::IdleTimeout);
    assert_eq!(
        (relayed.client_to_backend, relayed.backend_to_client),
        (0, 12)
    );
}

#[tokio::test]
async fn the_shutdown_future_completing_ends_the_relay_and_closes_both_sides() {
    let (stop, stopped) = oneshot::channel::<()>();
    let Rig {
        mut client,
        mut backend,
        relay,
        ..
    } = Rig::start_with(RelayLimits::default(), async move {
        let _ = stopped.await;
    })
    .await;
    client.write_all(b"still talking").await.unwrap();
    let mut talk = [0; 13];
    bounded(backend.read_exact(&mut talk)).await.unwrap();
    stop.send(()).unwrap();
    let stopped_at = Instant::now();
    bounded(read_until_closed(&mut client)).await;
    bounded(read_until_closed(&mut backend)).await;
    assert!(
        stopped_at.elapsed() < PROMPTLY,
        "{:?}",
        stopped_at.elapsed()
    );
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Shutdown);
    assert_eq!(relayed.client_to_backend, 13);
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// Waits until `read` gives `expected`, bounded.
async fn until_counted(read: impl Fn() -> u64, expected: u64) {
    bounded(async {
        while read() != expected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_counters_are_exact_while_the_relay_runs_and_at_its_end() {
    let Rig {
        client,
        backend,
        relay,
        counters,
    } = Rig::start().await;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = backend.into_split();
    // Uneven writes, so the counts cannot come out right by chunk size.
    let up = tokio::spawn(async move {
        for size in (1..=400).map(|i| i * 7 % 1000 + 1) {
            client_write.write_all(&vec![1; size]).await.unwrap();
        }
        client_write
    });
    let mut sent_up = 0;
    for size in (1..=400).map(|i| i * 7 % 1000 + 1) {
        sent_up += size as u64;
    }
    let mut received = vec![0; sent_up as usize];
    bounded(backend_read.read_exact(&mut received))
        .await
        .unwrap();
    until_counted(|| counters.to_backend.load(Ordering::Relaxed), sent_up).await;
    assert_eq!(counters.to_client.load(Ordering::Relaxed), 0);

    let down = tokio::spawn(async move {
        for _ in 0..250 {
            backend_write.write_all(&[2; 1001]).await.unwrap();
        }
        backend_write
    });
    let mut received = vec![0; 250 * 1001];
    bounded(client_read.read_exact(&mut received))
        .await
        .unwrap();
    until_counted(|| counters.to_client.load(Ordering::Relaxed), 250 * 1001).await;
    assert_eq!(counters.to_backend.load(Ordering::Relaxed), sent_up);

    bounded(up).await.unwrap().shutdown().await.unwrap();
    bounded(down).await.unwrap().shutdown().await.unwrap();
    let relayed = finished(relay).await;
    assert_eq!(relayed.ended, Ended::Closed);
    assert_eq!(
        (relayed.client_to_backend, relayed.backend_to_client),
        (sent_up, 250 * 1001)
    );
    assert_eq!(counters.to_backend.load(Ordering::Relaxed), sent_up);
    assert_eq!(counters.to_client.load(Ordering::Relaxed), 250 * 1001);
}
