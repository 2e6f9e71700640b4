//! The original destination of a redirected connection, read with `SO_ORIGINAL_DST`.
//!
//! One lookup path serves both redirect mechanisms: iptables/nft `REDIRECT` answers it from
//! conntrack, and Tollgate's `cgroup/getsockopt` eBPF hook emulates it (`docs/design.md`,
//! "Redirection (eBPF)").

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::TcpStream;

use crate::sockopt;

/// Reads the original destination of an accepted connection.
///
/// Returns `Ok(None)` when the connection was not redirected: the kernel has no record
/// (`ENOENT`, `ENOPROTOOPT` without netfilter) or the "original" destination is the listener
/// itself — a client that dialled the proxy directly, which must never be relayed to itself.
/// IPv4-mapped IPv6 results are returned as IPv4.
pub fn original_dst(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    // The level follows the connection's family: SOL_IP for IPv4 peers (including v4-mapped
    // peers on a dual-stack socket), SOL_IPV6 for IPv6 peers.
    let v4_peer = match peer {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let lookup = if v4_peer {
        sockopt::original_dst_v4(stream.as_fd())
    } else {
        sockopt::original_dst_v6(stream.as_fd())
    };
    let dst = match lookup {
        Ok(dst) => canonical(dst),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOPROTOOPT)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if dst == canonical(local) {
        return Ok(None);
    }
    Ok(Some(dst))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                continue; // no IPv6 loopback on this host
            };
            let addr = listener.local_addr().unwrap();
            let _client = TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(original_dst(&accepted).unwrap(), None, "{bind}");
        }
    }
}
