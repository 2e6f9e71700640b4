//! Listening sockets: `SO_REUSEADDR`, and `IPV6_V6ONLY` on IPv6 so that `[::1]` and
//! `127.0.0.1` listeners coexist on one port.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::{TcpListener, TcpSocket};

use crate::sockopt;

/// Pending connections the kernel queues per listener. Beyond the connection limit, clients
/// wait here (and then in SYN retries) rather than being refused.
const BACKLOG: u32 = 1024;

/// Binds and listens on `addr` (port 0 picks a free port). Must run inside a Tokio runtime.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            sockopt::set_ipv6_only(socket.as_fd())?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
