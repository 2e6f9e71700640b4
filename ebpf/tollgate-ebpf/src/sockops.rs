//! `sockops`: at `BPF_SOCK_OPS_TCP_CONNECT_CB`, move the connect record from PENDING (socket
//! cookie) to ORIG_DST (client ip, port) — the key the proxy can compute from an accepted
//! socket.
//!
//! Kernel assumptions:
//! - `TCP_CONNECT_CB` fires in `tcp_connect()`, after the source port is chosen and before the
//!   SYN is sent, so the proxy can never accept the connection before the record is re-keyed.
//! - `local_port` is in host byte order; `remote_port` is in network byte order (unused here).
//! - For an `AF_INET6` socket connecting to an IPv4-mapped address, `tcp_v6_connect` calls
//!   `tcp_v4_connect` and only sets the v6 source address *after* it returns: at this callback
//!   `local_ip6` is still `::` and the real source is in `local_ip4`.
//! - Return value: sock_ops programs report through `reply`; the return value 1 means success.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB, helpers::bpf_get_socket_cookie, macros::sock_ops,
    programs::SockOpsContext, EbpfContext as _,
};
use aya_log_ebpf::warn;
use tollgate_common::{ClientKey, AF_INET6};

use crate::maps::{ORIG_DST, PENDING};

#[sock_ops]
pub fn tg_sockops(ctx: SockOpsContext) -> u32 {
    if let Err(err) = try_sockops(&ctx) {
        warn!(&ctx, "sockops: ORIG_DST insert failed ({})", err);
    }
    1
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), i32> {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return Ok(());
    }
    // SAFETY: helper called with this program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = PENDING.get_ptr(cookie) else {
        // Not a redirected connect: the common case.
        return Ok(());
    };
    // SAFETY: a PENDING value is written whole by connect4/6 and never mutated in place.
    let record = unsafe { *record };

    let local_ip6 = ctx.local_ip6();
    let unset6 = local_ip6[0] | local_ip6[1] | local_ip6[2] | local_ip6[3] == 0;
    let port = ctx.local_port() as u16;
    let key = if ctx.family() == u32::from(AF_INET6) && !unset6 {
        let mut ip6 = [0u8; 16];
        for (i, w) in local_ip6.iter().enumerate() {
            ip6[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        ClientKey::from_v6(ip6, port)
    } else {
        ClientKey::from_v4(ctx.local_ip4().to_ne_bytes(), port)
    };

    ORIG_DST.insert(key, record, 0)?;
    // A failed remove only leaves an entry for LRU eviction.
    let _ = PENDING.remove(cookie);
    Ok(())
}
