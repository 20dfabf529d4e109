//! TCP relaying: one client connection joined to one backend connection,
//! bytes copied both ways as they arrive, whatever they mean (the `tcp`
//! listeners' data path, as HAProxy's `mode tcp` or nginx's `stream`).
//!
//! [`relay`] runs one pair until it is over:
//!
//! * **Half-close.** When one side ends its stream (a FIN), everything it
//!   sent has already been passed on; the other side's write half is then
//!   shut down (a FIN passed along), and the other direction goes on until it
//!   ends too. Both ended: [`Ended::Closed`]. So a client may send its
//!   request, shut down its write side and still read the whole answer, and a
//!   backend may finish its answer first and still receive what the client
//!   sends afterwards. (Unlike an upgraded HTTP [tunnel](super::tunnel),
//!   which ends at the first end of stream.)
//! * **Idle timeout.** No byte read or written in either direction for
//!   [`RelayLimits::idle_timeout`]: [`Ended::IdleTimeout`]. Bytes moving one
//!   way keep the whole connection alive: a long download to a silent client
//!   is not idle. A write that cannot progress (the peer reads nothing) moves
//!   no bytes.
//! * **Errors.** A read, write or shutdown that fails on one side (a reset,
//!   say) ends the relay at once: [`Ended::ClientError`] or
//!   [`Ended::BackendError`], after the side the error came from.
//! * **Shutdown.** When the `shutdown` future completes (the listener's drain
//!   deadline), the relay ends: [`Ended::Shutdown`].
//!
//! When the relay ends for any reason but [`Ended::Closed`], both
//! connections are dropped at once, not shut down first: each peer sees its
//! connection closed right away (a FIN, or a reset if it had sent bytes the
//! relay had not read), and a peer behind a TLS layer sees no clean
//! `close_notify`, so a client can tell a cut-off stream from a finished one.
//!
//! Each direction copies through one buffer of its own, allocated once; the
//! counts are of bytes the destination accepted, exact whatever way the relay
//! ended. [`relay_counted`] also adds them, as they go, to [`Counters`] that
//! others may read while the relay runs (live byte metrics).
//!
//! The relay runs in the task that awaits it (nothing is spawned), so its
//! future is `Send` whenever both connections and `shutdown` are.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How much one direction reads at once: its buffer's size.
const BUFFER_SIZE: usize = 16 * 1024;

/// The limits of one relayed connection, and what its sides are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayLimits {
    /// How long the connection may go without a byte moving either way
    /// before both sides are closed; zero means no limit.
    pub idle_timeout: Duration,
    /// The client's connection is plain TCP (no TLS layer to close): when
    /// it is the last side to get its end of stream passed on, closing it
    /// sends that FIN, so the relay leaves it to the close (one `shutdown`
    /// call fewer per connection; nothing is left unread on it, so the
    /// close is a FIN, not a reset).
    pub plain_client: bool,
    /// The same for the backend's connection.
    pub plain_backend: bool,
}

/// Where a relay adds its byte counts as it writes, readable while it runs
/// (such as a metric's atomic); several relays may share them to count
/// together.
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Bytes written to the backend (sent by the client).
    pub to_backend: &'a AtomicU64,
    /// Bytes written to the client (sent by the backend).
    pub to_client: &'a AtomicU64,
}

/// What one relay did: its byte counts, how it ended and how long it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes the client sent that were written to the backend.
    pub client_to_backend: u64,
    /// Bytes the backend sent that were written to the client.
    pub backend_to_client: u64,
    /// Why it ended.
    pub ended: Ended,
    /// From the start of [`relay`] to its end.
    pub duration: Duration,
}

/// Why a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Both sides ended their streams (a FIN each way) and every byte was
    /// passed on.
    Closed,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// Reading from, writing to or shutting down the client's connection
    /// failed; the error's text.
    ClientError(String),
    /// Reading from, writing to or shutting down the backend's connection
    /// failed; the error's text.
    BackendError(String),
    /// The `shutdown` future completed (the drain deadline passed).
    Shutdown,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed => f.write_str("closed"),
            Ended::IdleTimeout => f.write_str("idle timeout"),
            Ended::ClientError(error) => write!(f, "client error: {error}"),
            Ended::BackendError(error) => write!(f, "backend error: {error}"),
            Ended::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// Relays `client` and `backend` both ways until both ends are done, the
/// idle timeout passes, either side fails or `shutdown` completes (see the
/// [module docs](self)). Both connections are closed when it returns.
pub async fn relay<C, B>(
    client: C,
    backend: B,
    limits: &RelayLimits,
    shutdown: impl Future<Output = ()>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (to_backend, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let counters = Counters {
        to_backend: &to_backend,
        to_client: &to_client,
    };
    relay_counted(client, backend, limits, counters, shutdown).await
}

/// [`relay`], also adding the bytes to `counters` as they are written, so
/// that they can be read while the relay runs. The returned counts are this
/// relay's alone, even when `counters` is shared.
pub async fn relay_counted<C, B>(
    client: C,
    backend: B,
    limits: &RelayLimits,
    counters: Counters<'_>,
    shutdown: impl Future<Output = ()>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let activity = Activity::new();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let mut up = Direction::new(counters.to_backend, &activity, limits.plain_backend);
    let mut down = Direction::new(counters.to_client, &activity, limits.plain_client);
    let ended = tokio::select! {
        // Finished copying wins over a timeout or shutdown that comes due in
        // the same instant.
        biased;
        copied = async {
            tokio::try_join!(
                up.copy(&mut client_read, &mut backend_write, Side::Client, Side::Backend),
                down.copy(&mut backend_read, &mut client_write, Side::Backend, Side::Client),
            )
        } => match copied {
            Ok(((), ())) => Ended::Closed,
            Err(failed) => failed,
        },
        () = shutdown => Ended::Shutdown,
        () = idle(&activity, limits.idle_timeout) => Ended::IdleTimeout,
    };
    // Both connections are dropped with the halves when this returns.
    Relayed {
        client_to_backend: up.copied,
        backend_to_client: down.copied,
        ended,
        duration: activity.start.elapsed(),
    }
}

/// Which connection an error came from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Side {
    /// The ending that `error` on this side makes.
    fn failed(self, error: io::Error) -> Ended {
        match self {
            Side::Client => Ended::ClientError(error.to_string()),
            Side::Backend => Ended::BackendError(error.to_string()),
        }
    }
}

/// When a byte last moved either way, shared by both directions and the idle
/// timer: nanoseconds since the relay started (an atomic, not a `Cell`, so
/// that the relay's future stays `Send`).
struct Activity {
    start: Instant,
    last: AtomicU64,
    /// A direction has passed its end of stream on already.
    one_ended: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            one_ended: AtomicBool::new(false),
        }
    }

    /// Bytes moved just now.
    fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// When bytes last moved (the start, if never).
    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Completes once no byte has moved for `timeout`; never, for a zero
/// timeout (or one too long for the clock). One timer per idle period, not
/// one per read: it sleeps until the last activity plus `timeout`, and
/// sleeps again if bytes moved since.
async fn idle(activity: &Activity, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let Some(deadline) = activity.last().checked_add(timeout) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// One direction of a relay: what it has copied so far.
struct Direction<'a> {
    copied: u64,
    live: &'a AtomicU64,
    activity: &'a Activity,
    /// What it writes to is plain TCP: see [`RelayLimits::plain_client`].
    plain_destination: bool,
}

impl<'a> Direction<'a> {
    fn new(live: &'a AtomicU64, activity: &'a Activity, plain_destination: bool) -> Direction<'a> {
        Direction {
            copied: 0,
            live,
            activity,
            plain_destination,
        }
    }

    /// Copies `from` to `to` until `from` ends, then shuts `to`'s write half
    /// down (passing the FIN on; left to the close when `to` is plain TCP
    /// and the other direction has ended already). Fails with the ending an
    /// error makes, naming the side it came from (`reader` for `from`,
    /// `writer` for `to`). Every partial write is counted as soon as it is
    /// accepted. The buffer is read into uninitialised: nothing is zeroed.
    async fn copy<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        reader: Side,
        writer: Side,
    ) -> Result<(), Ended>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buffer = Vec::with_capacity(BUFFER_SIZE);
        loop {
            buffer.clear();
            let read = from
                .read_buf(&mut buffer)
                .await
                .map_err(|e| reader.failed(e))?;
            if read == 0 {
                let last = self.activity.one_ended.swap(true, Ordering::Relaxed);
                if last && self.plain_destination {
                    return Ok(());
                }
                return to.shutdown().await.map_err(|e| writer.failed(e));
            }
            self.activity.touch();
            let mut written = 0;
            while written < read {
                let accepted = to
                    .write(&buffer[written..read])
                    .await
                    .map_err(|e| writer.failed(e))?;
                if accepted == 0 {
                    return Err(writer.failed(io::ErrorKind::WriteZero.into()));
                }
                written += accepted;
                self.copied += accepted as u64;
                self.live.fetch_add(accepted as u64, Ordering::Relaxed);
                self.activity.touch();
            }
            // A no-op on a plain TCP stream; pushes a TLS record out.
            to.flush().await.map_err(|e| writer.failed(e))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn a_relay_of_send_connections_is_a_send_future() {
        let limits = RelayLimits::default();
        let (client, _) = duplex(64);
        let (backend, _) = duplex(64);
        assert_send(&relay(client, backend, &limits, std::future::pending()));
    }

    #[tokio::test]
    async fn a_relay_passes_half_closes_on_and_counts_both_ways() {
        let (mut client, client_side) = duplex(64);
        let (backend_side, mut backend) = duplex(64);
        let limits = RelayLimits::default();
        let running = tokio::spawn(async move {
            relay(client_side, backend_side, &limits, std::future::pending()).await
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        backend.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"ping");
        backend.write_all(b"pong!").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong!");
        let relayed = running.await.unwrap();
        assert_eq!(relayed.ended, Ended::Closed);
        assert_eq!(
            (relayed.client_to_backend, relayed.backend_to_client),
            (4, 5)
        );
    }

    #[tokio::test]
    async fn a_write_to_a_backend_that_is_gone_is_a_backend_error() {
        let (mut client, client_side) = duplex(64);
        let (backend_side, backend) = duplex(64);
        drop(backend);
        let limits = RelayLimits::default();
        let running = tokio::spawn(async move {
            relay(client_side, backend_side, &limits, std::future::pending()).await
        });
        client.write_all(b"hello").await.unwrap();
        let relayed = running.await.unwrap();
        assert!(
            matches!(relayed.ended, Ended::BackendError(_)),
            "{:?}",
            relayed.ended
        );
        assert_eq!(relayed.client_to_backend, 0);
        // The client's connection was closed with the relay.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_idle_timeout_too_long_for_the_clock_never_fires() {
        let (_client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let limits = RelayLimits {
            idle_timeout: Duration::MAX,
            ..RelayLimits::default()
        };
        let shutdown = tokio::time::sleep(Duration::from_millis(20));
        let relayed = relay(client_side, backend_side, &limits, shutdown).await;
        assert_eq!(relayed.ended, Ended::Shutdown);
    }

    #[test]
    fn endings_read_as_a_log_line_would_say_them() {
        assert_eq!(Ended::Closed.to_string(), "closed");
        assert_eq!(Ended::IdleTimeout.to_string(), "idle timeout");
        assert_eq!(
            Ended::BackendError("connection reset".into()).to_string(),
            "backend error: connection reset"
        );
    }
}
