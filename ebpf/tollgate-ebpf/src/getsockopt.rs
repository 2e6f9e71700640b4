//! `cgroup/getsockopt`: emulate netfilter's `SO_ORIGINAL_DST` (`SOL_IP` and `SOL_IPV6`, 80)
//! for the proxy's accepted sockets, so the proxy has one original-destination path whether
//! redirection came from these programs or from an iptables/nft REDIRECT fallback.
//!
//! Kernel assumptions:
//! - Attached to the cgroup of the process that created the *listening* socket: accepted
//!   sockets inherit the listener's cgroup (`sk_clone` copies `sk_cgrp_data`), not the
//!   acceptor's.
//! - Runs after the kernel's own getsockopt: `retval` holds its answer (`-ENOPROTOOPT` or
//!   `-ENOENT` without a conntrack entry). Setting `retval = 0` and `optlen` makes the kernel
//!   copy `optval` to the caller; leaving them alone keeps the kernel's answer.
//! - `optval..optval_end` is the kernel's copy of the caller's buffer (at most a page); `optlen`
//!   may only shrink.
//! - `ctx->sk` is the accepted socket: its `dst_*` fields are the client, `dst_port` is a
//!   network-order `__be16`.
//! - Returning 1 keeps the (possibly rewritten) answer; 0 would fail the call with `EPERM`.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use core::ptr::read_volatile;
use tollgate_common::{
    as_v4_mapped, ClientKey, AF_INET, AF_INET6, SOCKADDR_IN6_LEN, SOCKADDR_IN_LEN, SOL_IP,
    SOL_IPV6, SO_ORIGINAL_DST,
};

use crate::maps::ORIG_DST;

#[cgroup_sockopt(getsockopt)]
pub fn tg_getsockopt(ctx: SockoptContext) -> i32 {
    let _ = try_getsockopt(&ctx);
    1
}

/// `Err` means "not ours, leave the kernel's answer": there is nothing to log.
fn try_getsockopt(ctx: &SockoptContext) -> Result<(), ()> {
    let so = ctx.sockopt;
    // SAFETY: context pointer, fields checked by the verifier.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return Err(());
    }

    // SAFETY: `ctx->sk` is a non-NULL PTR_TO_SOCKET in sockopt programs.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    // Verifier: "pointer arithmetic on sock prohibited" when LLVM merged the v4 and v6 reads
    // into one load from `sk + (is_v4 ? off4 : off6)`. Reading every field unconditionally,
    // each with its own volatile load, keeps every offset constant.
    let (family, port_be, ip4, ip6) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).dst_port),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
        )
    };
    let port = u16::from_be(port_be);
    let key = if family == u32::from(AF_INET) {
        ClientKey::from_v4(ip4.to_ne_bytes(), port)
    } else {
        let mut bytes = [0u8; 16];
        for (i, w) in ip6.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        ClientKey::from_v6(bytes, port)
    };
    // SAFETY: values are written whole by sockops and never mutated in place.
    let record = unsafe { *ORIG_DST.get_ptr(key).ok_or(())? };

    // SAFETY: context pointer, fields checked by the verifier.
    let (optval, optval_end) = unsafe {
        (
            (*so).__bindgen_anon_2.optval as *mut u8,
            (*so).__bindgen_anon_3.optval_end as *mut u8,
        )
    };
    let port_bytes = record.orig_port.to_be_bytes();
    let len = if level == SOL_IP {
        // SOL_IP answers only for an IPv4 original destination, like netfilter.
        let v4 = as_v4_mapped(&record.orig_ip6).ok_or(())?;
        if optval as usize + SOCKADDR_IN_LEN > optval_end as usize {
            return Err(());
        }
        let mut sin = [0u8; SOCKADDR_IN_LEN];
        sin[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        sin[2..4].copy_from_slice(&port_bytes);
        sin[4..8].copy_from_slice(&v4);
        // SAFETY: bounds checked against optval_end just above.
        unsafe { core::ptr::write_unaligned(optval as *mut [u8; SOCKADDR_IN_LEN], sin) };
        SOCKADDR_IN_LEN
    } else {
        if optval as usize + SOCKADDR_IN6_LEN > optval_end as usize {
            return Err(());
        }
        let mut sin6 = [0u8; SOCKADDR_IN6_LEN];
        sin6[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        sin6[2..4].copy_from_slice(&port_bytes);
        // sin6_flowinfo (4..8) and sin6_scope_id (24..28) stay zero.
        sin6[8..24].copy_from_slice(&record.orig_ip6);
        // SAFETY: bounds checked against optval_end just above.
        unsafe { core::ptr::write_unaligned(optval as *mut [u8; SOCKADDR_IN6_LEN], sin6) };
        SOCKADDR_IN6_LEN
    };
    // SAFETY: context pointer; optlen and retval are writable in getsockopt programs.
    unsafe {
        (*so).optlen = len as i32;
        (*so).retval = 0;
    }
    Ok(())
}
