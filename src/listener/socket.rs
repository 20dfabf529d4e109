//! The listening sockets.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// Pending connections the kernel queues per listening socket.
pub(super) const LISTEN_BACKLOG: u32 = 1024;

/// A TCP socket bound to `address`, with `SO_REUSEADDR` (restarts do not
/// wait for TIME_WAIT) and, when `shared`, `SO_REUSEPORT`.
pub(super) fn bind(address: SocketAddr, shared: bool) -> io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    Ok(socket)
}
