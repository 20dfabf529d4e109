//! Each worker thread's idle HTTP/1.1 connections to backends, per backend
//! address (and TLS settings): a request takes the most recently used one
//! that is still open, and a response read to its end gives its connection
//! back. An idle connection is its socket alone: nothing polls it, and
//! whether the backend closed it is read from the socket's readiness when
//! it is taken, and once a second for all of them by a sweeper task per
//! thread (running only while there are idle connections).

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;
use tokio::io::{AsyncRead, ReadBuf};

use crate::pool::target::BackendStream;

/// How long a backend connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most idle connections a thread keeps per backend.
pub const MAX_IDLE_PER_BACKEND: usize = 1024;

/// How often, at most, a thread looks through its idle lists for
/// connections to drop.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// [`IDLE_TIMEOUT`] in sweeps: an idle connection's age is counted in the
/// sweeps since it was given back, so that giving a connection back and
/// taking it read no clock.
const IDLE_SWEEPS: u64 = IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs();

/// One in how many connections given back checks that the thread's
/// sweeper still sweeps (a clock read).
const CHECK_SWEEPER_EVERY: u32 = 64;

/// An HTTP/1.1 connection to a backend, between requests.
#[derive(Debug)]
pub struct Conn {
    stream: BackendStream,
    /// Its idle list ([`crate::pool::target::Target::key`]).
    key: Arc<str>,
}

impl Conn {
    /// A new connection, for the idle list `key`.
    pub fn new(stream: BackendStream, key: Arc<str>) -> Conn {
        Conn { stream, key }
    }

    /// The idle list it goes back to.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// The connection's stream.
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        &mut self.stream
    }

    /// The connection's stream, for good (after a `101`).
    pub fn into_stream(self) -> BackendStream {
        self.stream
    }

    /// Whether an idle connection can take a request: nothing arrived on it
    /// while it was idle (neither the backend's close nor a stray byte).
    /// Asks the socket's readiness, which the runtime keeps without a system
    /// call; only when it says readable is the socket read.
    pub fn is_reusable(&mut self) -> bool {
        let mut byte = [MaybeUninit::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

/// The most recently used idle connection of the pool `key` on this thread
/// that is still open and fresh, if any.
pub fn take(key: &str) -> Option<Conn> {
    IDLE.with(|idle| idle.borrow_mut().take(key))
}

/// Gives `conn`, whose last response was read to its end, back to this
/// thread's idle list.
pub fn release(conn: Conn) {
    IDLE.with(|idle| idle.borrow_mut().put(conn));
}

thread_local! {
    static IDLE: RefCell<IdleConnections> = RefCell::new(IdleConnections::default());
}

/// Sweeps this thread's idle lists every [`SWEEP_EVERY`] while they hold
/// connections, so that a connection the backend closed is closed here too
/// (not left in `CLOSE_WAIT`) and [`IDLE_TIMEOUT`] applies, even when no
/// request comes any more. One per thread, started by the first connection
/// given back; it ends when the lists are empty. (The workers' runtimes are
/// single-threaded: it runs on the thread whose lists it sweeps.)
async fn sweeper() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let done = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            idle.sweep(Instant::now());
            if idle.by_key.is_empty() {
                idle.sweeping = false;
            }
            !idle.sweeping
        });
        if done {
            return;
        }
    }
}

/// One thread's idle connections, by backend address (and TLS settings).
#[derive(Default)]
struct IdleConnections {
    /// FxHash: the keys are backend addresses from the config, not a
    /// client's, and short; FNV took a few instructions per byte.
    by_key: HashMap<Arc<str>, Vec<Idle>, FxBuildHasher>,
    /// Sweeps so far: the clock idle connections age by.
    sweeps: u64,
    last_sweep: Option<Instant>,
    /// A sweeper task is running for this thread ([`sweeper`]).
    sweeping: bool,
    /// Connections given back, to check the sweeper now and then.
    given_back: u32,
}

/// An idle connection and since when (the sweep count then).
struct Idle {
    conn: Conn,
    since: u64,
}

impl IdleConnections {
    /// The most recently used connection of the pool `key` that is still
    /// open and fresh, if any; those that are not are closed.
    fn take(&mut self, key: &str) -> Option<Conn> {
        let list = self.by_key.get_mut(key)?;
        while let Some(mut idle) = list.pop() {
            if self.sweeps - idle.since < IDLE_SWEEPS && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` as idle, unless the list is full.
    fn put(&mut self, conn: Conn) {
        self.given_back = self.given_back.wrapping_add(1);
        if !self.sweeping || self.given_back.is_multiple_of(CHECK_SWEEPER_EVERY) {
            self.start_sweeper();
        }
        let list = match self.by_key.get_mut(&**conn.key()) {
            Some(list) => list,
            None => self.by_key.entry(conn.key().clone()).or_default(),
        };
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                conn,
                since: self.sweeps,
            });
        }
    }

    /// Starts a sweeper for this thread if none sweeps. Sweeping is the
    /// sweeper's, off the request path. One that has not swept for a while
    /// ran elsewhere (a multi-threaded runtime moved it) or is gone:
    /// another one.
    fn start_sweeper(&mut self) {
        let now = Instant::now();
        let stale = self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) >= 3 * SWEEP_EVERY);
        if (!self.sweeping || stale) && tokio::runtime::Handle::try_current().is_ok() {
            self.sweeping = true;
            // Its first sweep is a period away: stale from then on only.
            self.last_sweep = Some(now);
            tokio::spawn(sweeper());
        }
    }

    /// Closes the connections the backend closed or that have been idle for
    /// too long, and drops the lists left empty (a backend removed by a
    /// reload leaves nothing behind).
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        self.sweeps += 1;
        let sweeps = self.sweeps;
        self.by_key.retain(|_, list| {
            list.retain_mut(|idle| sweeps - idle.since < IDLE_SWEEPS && idle.conn.is_reusable());
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connection to a fresh listener, and the listener's end of it.
    async fn pair(key: &Arc<str>) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Conn::new(BackendStream::Plain(client), key.clone()), server)
    }

    #[tokio::test]
    async fn an_idle_connection_is_taken_until_it_has_been_idle_for_the_timeout_in_sweeps() {
        let key: Arc<str> = Arc::from("b");
        let mut idle = IdleConnections::default();
        let (conn, _server) = pair(&key).await;
        idle.put(conn);
        for _ in 0..IDLE_SWEEPS - 1 {
            idle.sweep(Instant::now());
        }
        let conn = idle.take(&key).expect("idle for less than the timeout");
        idle.put(conn);
        for _ in 0..IDLE_SWEEPS - 1 {
            idle.sweep(Instant::now());
        }
        assert_eq!(idle.by_key.get(&key).map(Vec::len), Some(1));
        idle.sweep(Instant::now());
        assert!(idle.by_key.is_empty(), "idle for the timeout: closed");
        let (conn, _server) = pair(&key).await;
        idle.put(conn);
        idle.sweeps += IDLE_SWEEPS;
        assert!(idle.take(&key).is_none(), "too old when taken: closed");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_or_wrote_on_is_not_taken() {
        let key: Arc<str> = Arc::from("b");
        let mut idle = IdleConnections::default();
        let (conn, server) = pair(&key).await;
        idle.put(conn);
        let (conn, mut chatty) = pair(&key).await;
        idle.put(conn);
        let (conn, _open) = pair(&key).await;
        idle.put(conn);
        drop(server);
        chatty.write_all(b"x").await.unwrap();
        // Until the runtime has seen the close and the byte.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut taken = idle.take(&key).expect("the last one given back is open");
        assert!(taken.is_reusable());
        assert!(
            idle.take(&key).is_none(),
            "one closed, one with a byte: both dropped"
        );
    }
}
