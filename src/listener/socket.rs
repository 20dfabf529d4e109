//! The listening sockets, and who else may listen on their addresses.
//!
//! Every listening socket of affinity sets `SO_REUSEPORT`: the workers of
//! one instance share the address, and so can a new instance started with
//! `--upgrade` beside a running one ([`Addresses::Shared`]). Without
//! `--upgrade`, an address something already listens on is an error
//! ([`Addresses::Exclusive`]): otherwise a second instance would start
//! silently and the kernel would split the traffic between the two.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// Pending connections the kernel queues per listening socket.
pub(super) const LISTEN_BACKLOG: u32 = 1024;

/// Whether the listening addresses may already be in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addresses {
    /// Something else listening on one of them is an error.
    #[default]
    Exclusive,
    /// Listen beside a running instance on the same addresses (a binary
    /// upgrade: the old one is then stopped with SIGTERM and drains).
    Shared,
}

/// A TCP socket bound to `address`, with `SO_REUSEADDR` (restarts do not
/// wait for TIME_WAIT) and `SO_REUSEPORT` (the workers, and an upgrade,
/// share it). With [`Addresses::Exclusive`], fails with `AddrInUse` when
/// anything listens on `address` already.
pub(super) fn bind(address: SocketAddr, addresses: Addresses) -> io::Result<TcpSocket> {
    if addresses == Addresses::Exclusive {
        ensure_free(address)?;
    }
    let socket = new_socket(address)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// Fails with `AddrInUse` when a socket listens on `address`. A probe
/// without `SO_REUSEPORT` cannot bind where anything listens, whether or not
/// that socket shares its address; it is closed at once. Port 0 (a port the
/// kernel picks) is always free.
fn ensure_free(address: SocketAddr) -> io::Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    new_socket(address)?.bind(address)
}

/// A socket for `address`'s family with `SO_REUSEADDR`.
fn new_socket(address: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// Whether the kernel moves the connections queued on a listening socket
/// that closes to another socket sharing its address
/// (`net.ipv4.tcp_migrate_req`, Linux 5.14+); `None` when unknown. Without
/// it, connections a stopping instance had queued but not accepted are
/// reset.
pub fn migrates_queued_connections() -> Option<bool> {
    let value = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(value.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_something_listens_on_is_in_use_unless_shared() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let first = bind("127.0.0.1:0".parse().unwrap(), Addresses::Exclusive)
                .unwrap()
                .listen(LISTEN_BACKLOG)
                .unwrap();
            let address = first.local_addr().unwrap();
            let error = bind(address, Addresses::Exclusive).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
            let beside = bind(address, Addresses::Shared).unwrap();
            drop(beside.listen(LISTEN_BACKLOG).unwrap());
            drop(first);
            // Nothing listens any more: free again.
            drop(bind(address, Addresses::Exclusive).unwrap());
        });
    }

    #[test]
    fn a_plain_listener_without_reuseport_makes_the_address_in_use_even_shared() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = plain.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for addresses in [Addresses::Exclusive, Addresses::Shared] {
                let error = bind(address, addresses).unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{addresses:?}");
            }
        });
    }
}
