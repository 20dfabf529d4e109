//! One connection of a `tcp` listener: keyed by the client's address
//! through the listener's pool, connected along the key's fallback order,
//! then relayed both ways ([`crate::proxy::relay`]) until both sides are
//! done, the idle timeout passes or the drain ends it; one access-log line
//! when it ends.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::balance::key::IpText;
use crate::config::{ListenerConfig, SendProxyProtocol};
use crate::pool::routing::{Pools, Routed};
use crate::pool::target::BackendStream;
use crate::pool::{Backend, InFlight, Snapshot};
use crate::proxy::relay::{Counters, Ended, RelayLimits, Relayed, relay_counted};

/// The key bytes of a connection from `client`: its canonical address as
/// text (IPv4-mapped IPv6 as IPv4), the bytes `/lookup?ip=` hashes too.
fn client_key(client: IpAddr) -> IpText {
    IpText::new(client.to_canonical())
}

/// A backend connected, counted in flight until the relay ends.
struct Connected<'s> {
    backend: &'s Backend,
    stream: BackendStream,
    _in_flight: InFlight,
}

/// Connects to the first backend of the key's fallback order that answers
/// within `upstream.connect_timeout`, at most `upstream.retries + 1`
/// attempts; each failure is reported to the pool's health checks. The
/// backends tried and failed, and the one connected (if any).
async fn connect<'s>(
    snapshot: &'s Snapshot,
    routed: &Routed,
    key_hash: u64,
    now_ns: u64,
) -> (Vec<&'s Backend>, Option<Connected<'s>>) {
    let upstream = &snapshot.config().upstream;
    let attempts = upstream.retries as usize + 1;
    let mut tried = Vec::new();
    let mut failed = Vec::new();
    while tried.len() < attempts {
        let Some(index) = snapshot.next_backend(key_hash, &tried, now_ns) else {
            break;
        };
        tried.push(index);
        let Some(backend) = snapshot.backends().get(index) else {
            break;
        };
        let in_flight = backend.state().begin();
        match backend.target().connect(upstream.connect_timeout).await {
            Ok(stream) => {
                return (
                    failed,
                    Some(Connected {
                        backend,
                        stream,
                        _in_flight: in_flight,
                    }),
                );
            }
            Err(error) => {
                tracing::debug!(backend = %backend.name(), %error, "tcp connect failed");
                routed.pool.stats().upstream_retry(
                    routed.pool.name(),
                    backend.name(),
                    "connect_error",
                );
                if let Some(health) = &routed.health {
                    health.connect_failed(backend.name(), backend.authority());
                }
                failed.push(backend);
            }
        }
    }
    (failed, None)
}

/// A tcp listener's client connection: plain TCP, or TLS the listener
/// terminated.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    /// Whether it is plain TCP (see [`RelayLimits::plain_client`]).
    fn is_plain(&self) -> bool;
    /// The address the client connected to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl ClientStream for TcpStream {
    fn is_plain(&self) -> bool {
        true
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn is_plain(&self) -> bool {
        false
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }
}

/// Serves one connection of tcp listener `listener` from `peer` to its
/// end; `shutdown` completes when the drain deadline passes.
/// `proxy_header` makes the PROXY protocol header naming the client in the
/// version the pool's `upstream.send_proxy_protocol` asks for, given the
/// address the client connected to (looked up only then): the listener
/// knows the addresses and the encoding. It goes to the backend before any
/// of the client's bytes.
pub async fn serve<C: ClientStream>(
    client: C,
    peer: SocketAddr,
    listener: &ListenerConfig,
    pools: &Pools,
    proxy_header: impl FnOnce(SendProxyProtocol, Option<SocketAddr>) -> Option<Vec<u8>>,
    shutdown: impl Future<Output = ()>,
) {
    let started = Instant::now();
    let routing = pools.routing_full();
    let Some(routed) = listener.pool.as_deref().and_then(|p| routing.pool(p)) else {
        tracing::warn!(listener = %listener.name, "tcp listener without a pool; closing a connection");
        return;
    };
    let snapshot = routed.pool.snapshot();
    let hasher = snapshot.selector().hasher().copied();
    let key_hash = hasher.map_or(0, |h| h.hash(client_key(peer.ip()).as_bytes()));
    let (failed, connected) = connect(&snapshot, routed, key_hash, routed.pool.now_ns()).await;
    let failed_names: Vec<&str> = failed.iter().map(|b| &**b.name()).collect();
    let mut line = Line {
        listener: &listener.name,
        client: peer,
        pool: routed.pool.name(),
        backend: None,
        key_hash,
        failed: &failed_names,
        relayed: None,
        started,
    };
    let stats = routed.pool.stats();
    let Some(Connected {
        backend,
        mut stream,
        ..
    }) = connected
    else {
        stats.tcp_connection(routed.pool.name(), None, NO_BACKEND);
        log(&line);
        return;
    };
    line.backend = Some(backend.name());
    let (to_backend, to_client) = stats.tcp_opened(routed.pool.name(), backend.name());
    let version = snapshot.config().upstream.send_proxy_protocol;
    let local = (version != SendProxyProtocol::Off)
        .then(|| client.local_addr().ok())
        .flatten();
    let sent = match proxy_header(version, local) {
        None => Ok(()),
        Some(header) => stream.write_all(&header).await,
    };
    let relayed = match sent {
        Ok(()) => {
            let limits = RelayLimits {
                idle_timeout: listener.idle_timeout,
                plain_client: client.is_plain(),
                plain_backend: matches!(stream, BackendStream::Plain(_)),
            };
            let counters = Counters {
                to_backend: to_backend.inner(),
                to_client: to_client.inner(),
            };
            relay_counted(client, stream, &limits, counters, shutdown).await
        }
        Err(error) => Relayed {
            client_to_backend: 0,
            backend_to_client: 0,
            ended: Ended::BackendError(format!("cannot send the PROXY header: {error}")),
            duration: started.elapsed(),
        },
    };
    stats.tcp_connection(
        routed.pool.name(),
        Some(backend.name()),
        outcome(&relayed.ended),
    );
    line.relayed = Some(&relayed);
    log(&line);
}

/// The outcome of a connection no backend could take.
const NO_BACKEND: &str = "no_backend";

/// How a relay ended, as the access log and metrics name it.
fn outcome(ended: &Ended) -> &'static str {
    match ended {
        Ended::Closed => "closed",
        Ended::IdleTimeout => "idle_timeout",
        Ended::ClientError(_) => "client_error",
        Ended::BackendError(_) => "backend_error",
        Ended::Shutdown => "shutdown",
    }
}

/// What a tcp connection's access-log line says.
struct Line<'a> {
    listener: &'a str,
    client: SocketAddr,
    pool: &'a Arc<str>,
    backend: Option<&'a Arc<str>>,
    key_hash: u64,
    failed: &'a [&'a str],
    relayed: Option<&'a Relayed>,
    started: Instant,
}

/// One access-log line (target `access`) for a tcp connection: client,
/// listener, pool, key hash, backend, attempts, backends that failed,
/// bytes each way, duration and how it ended (`closed`, `idle_timeout`,
/// `client_error`, `backend_error`, `shutdown`, or `no_backend` when none
/// could be connected).
fn log(line: &Line<'_>) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let (to_backend, to_client, outcome) = match line.relayed {
        Some(r) => (r.client_to_backend, r.backend_to_client, outcome(&r.ended)),
        None => (0, 0, NO_BACKEND),
    };
    tracing::info!(
        target: "access",
        protocol = "tcp",
        client = %line.client,
        listener = line.listener,
        pool = %line.pool,
        key_hash = %format_args!("{:016x}", line.key_hash),
        backend = line.backend.map_or("", |b| &**b),
        attempts = line.failed.len() + usize::from(line.backend.is_some()),
        failed = ?line.failed,
        bytes_in = to_backend,
        bytes_out = to_client,
        duration_ms = line.started.elapsed().as_millis() as u64,
        outcome,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_keyed_by_its_address_as_lookup_ip_hashes_it() {
        assert_eq!(
            client_key("192.0.2.7".parse().unwrap()).as_bytes(),
            b"192.0.2.7"
        );
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()).as_bytes(),
            b"192.0.2.7"
        );
    }
}
