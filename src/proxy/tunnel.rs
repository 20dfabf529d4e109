//! Upgraded connections (WebSocket, or any protocol named in `Upgrade`):
//! once the backend has answered an upgrade request with `101 Switching
//! Protocols`, the client's connection and the backend's are joined, and
//! bytes are copied both ways as they arrive, whatever they mean.
//!
//! The proxy decides whether there is a tunnel at all (see [`crate::proxy`]):
//! only a request that [asks to upgrade](crate::proxy::headers::is_upgrade_request)
//! and a `101` answer to it make one. This module runs it:
//!
//! * **Either side closes**, or a read or write fails: everything read from
//!   the closing side has already been passed on; both connections are then
//!   shut down (a FIN each way) and dropped. As with nginx, a half-closed
//!   tunnel is not kept open: one side's end of stream ends the tunnel, so a
//!   tunnel never lingers on a peer that went away. Bytes the other side was
//!   still sending at that moment may be lost.
//! * **Shutdown**: an open tunnel counts as in flight. The listener's drain
//!   waits for the [`Tunnels`] it started to close, and when
//!   `listener.drain_timeout` passes, cuts them off (both connections are
//!   dropped at once). A WebSocket client does not know the proxy is
//!   stopping, so in practice an open tunnel holds the drain for the whole
//!   timeout, as it does with nginx's `worker_shutdown_timeout`.
//!
//! While a tunnel is open its backend counts it as one request in flight
//! (least connections and bounded load see it), and its access-log line is
//! written when it ends: `bytes_out` is what the backend sent to the client,
//! `bytes_in` what the client sent to the backend, and `outcome` says how it
//! ended (`tunnel closed by client`, `tunnel closed by backend`, `tunnel
//! error`, `tunnel cut off`, or `upgrade failed` when the client went away
//! before the switch).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::proxy::access::Finish;
use crate::proxy::upstream::h1::Upgraded;

/// How much one direction of a tunnel reads at once.
const BUFFER_SIZE: usize = 16 * 1024;

/// The tunnels one listener started: counted, so that its drain can wait for
/// them, and cut off together when the drain timeout passes.
///
/// Each tunnel holds a receiver of one `watch` channel, the same shape as
/// hyper-util's `GracefulShutdown`: the channel's receiver count is the
/// number of open tunnels, and its value turns `true` to cut them off.
/// Cloning gives another handle on the same set.
#[derive(Debug, Clone)]
pub struct Tunnels {
    cut: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Tunnels {
        Tunnels::new()
    }
}

impl Tunnels {
    /// An empty set.
    pub fn new() -> Tunnels {
        Tunnels {
            cut: watch::Sender::new(false),
        }
    }

    /// How many tunnels are open (including ones still waiting for the
    /// switch).
    pub fn open(&self) -> usize {
        self.cut.receiver_count()
    }

    /// Completes once no tunnel is open.
    pub async fn closed(&self) {
        self.cut.closed().await;
    }

    /// A future that completes when the set is cut off (the drain timeout
    /// passed), for a connection relayed elsewhere (a tcp listener's): it
    /// counts as an open tunnel while it lives, so the drain waits for it.
    pub fn on_cut_off(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut cut = self.cut.subscribe();
        async move {
            let _ = cut.wait_for(|&cut| cut).await;
        }
    }

    /// Cuts every open tunnel off, and any started from now on: each drops
    /// both its connections and ends.
    pub fn cut_off(&self) {
        self.cut.send_replace(true);
    }

    /// Starts a tunnel on the current runtime between the client's side of
    /// an upgrade and the backend's. It waits for the client's switch (which
    /// completes once hyper has written the `101` to it), then copies bytes
    /// until either side closes or the set is cut off. When the tunnel ends,
    /// the bytes the client sent are added to `bytes_in` (the access
    /// record's count), and `finish` ends the backend's in-flight count and
    /// writes the access-log line with the bytes the backend sent.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        backend: Upgraded,
        finish: Finish,
        bytes_in: Option<Arc<AtomicU64>>,
    ) {
        // Subscribed here, not in the task: the tunnel counts as open from
        // this moment, so a drain that begins before the task first runs
        // still waits for it.
        let mut cut = self.cut.subscribe();
        tokio::spawn(async move {
            let mut up = 0;
            let mut down = 0;
            let outcome = tokio::select! {
                outcome = run(client, backend, &mut up, &mut down) => outcome,
                // Cut off, or the listener that owned the set is gone.
                _ = cut.wait_for(|&cut| cut) => "tunnel cut off",
            };
            tracing::debug!(
                client_to_backend = up,
                backend_to_client = down,
                outcome,
                "tunnel ended"
            );
            if let Some(bytes_in) = bytes_in {
                bytes_in.fetch_add(up, Ordering::Relaxed);
            }
            finish.done(down, outcome);
        });
    }
}

/// The tunnel itself: waits for the client's switch, then copies until one side
/// closes, counting the bytes sent up (client to backend) and down. Returns
/// how it ended.
async fn run(client: OnUpgrade, backend: Upgraded, up: &mut u64, down: &mut u64) -> &'static str {
    let client = match client.await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed; no tunnel");
            return "upgrade failed";
        }
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let outcome = tokio::select! {
        ended = pump(&mut client_read, &mut backend_write, up) => match ended {
            Ok(()) => "tunnel closed by client",
            Err(error) => {
                tracing::debug!(%error, "tunnel failed (client to backend)");
                "tunnel error"
            }
        },
        ended = pump(&mut backend_read, &mut client_write, down) => match ended {
            Ok(()) => "tunnel closed by backend",
            Err(error) => {
                tracing::debug!(%error, "tunnel failed (backend to client)");
                "tunnel error"
            }
        },
    };
    // A FIN to each side; a side already gone makes its shutdown fail, which
    // changes nothing. Both connections close when dropped here.
    let _ = tokio::join!(client_write.shutdown(), backend_write.shutdown());
    outcome
}

/// Copies `from` to `to` until `from` ends (`Ok`) or either fails, adding
/// each chunk to `copied` once it has been written.
async fn pump<R, W>(from: &mut R, to: &mut W, copied: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
        to.flush().await?;
        *copied += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pump_copies_everything_until_the_end_of_stream_and_counts_it() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut writer, mut from) = tokio::io::duplex(4096);
        let (mut to, mut reader) = tokio::io::duplex(BUFFER_SIZE * 8);
        let sent = payload.clone();
        let feeding = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
        });
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            received
        });
        let mut copied = 0;
        pump(&mut from, &mut to, &mut copied).await.unwrap();
        feeding.await.unwrap();
        drop(to);
        assert_eq!(copied, payload.len() as u64);
        assert_eq!(reading.await.unwrap(), payload);
    }

    #[tokio::test]
    async fn a_pump_whose_destination_is_gone_fails() {
        let (mut writer, mut from) = tokio::io::duplex(64);
        let (mut to, reader) = tokio::io::duplex(64);
        drop(reader);
        writer.write_all(b"hello").await.unwrap();
        let mut copied = 0;
        assert!(pump(&mut from, &mut to, &mut copied).await.is_err());
        assert_eq!(copied, 0);
    }

    #[tokio::test]
    async fn a_set_counts_its_tunnels_and_closes_when_they_end() {
        let tunnels = Tunnels::new();
        assert_eq!(tunnels.open(), 0);
        tunnels.closed().await;
        let held = tunnels.cut.subscribe();
        assert_eq!(tunnels.clone().open(), 1);
        let waiting = tokio::spawn({
            let tunnels = tunnels.clone();
            async move { tunnels.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap();
    }
}
