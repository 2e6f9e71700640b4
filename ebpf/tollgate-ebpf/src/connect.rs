//! `cgroup/connect4` and `cgroup/connect6`: redirect intercepted TCP connects to the proxy.
//!
//! Kernel assumptions:
//! - The hooks run in the connecting task's context, inside `connect()` before the kernel
//!   routes or binds anything (`__cgroup_bpf_run_filter_sock_addr` from `inet_stream_connect`
//!   paths), so `bpf_get_current_*` describe the caller. This is the only point where the
//!   caller's identity exists; the record made here is what the proxy later reports.
//! - `user_ip4`/`user_ip6`/`user_port` are in network byte order (the port in the low 16 bits
//!   of a `u32`), and rewriting them changes the address the kernel connects to.
//! - `ctx->sk` is a full socket (`PTR_TO_SOCKET`, never NULL here); `mark` is readable.
//! - An IPv4-mapped destination (`::ffff:a.b.c.d`) on an `AF_INET6` socket reaches only
//!   `connect6` (`tcp_v6_connect` hands it to `tcp_v4_connect` later); `connect4` never sees it.
//! - Only `SOCK_STREAM`/`IPPROTO_TCP` connects are considered: UDP (and its `connect()`) is
//!   never touched.
//! - Returning 1 allows the connect; returning 0 would fail it with `EPERM`. We always allow:
//!   a hook that fails must not break the host's networking.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use core::ptr::{read_volatile, write_volatile};
use tollgate_common::{
    v4_mapped, ConnectRecord, ProxyConfig, AF_INET, AF_INET6, IPPROTO_TCP, SOCK_STREAM,
};

use crate::maps::{enabled_config, is_direct, PENDING, TARGET_PORTS};

/// Why a connect was left alone. Not an error for the caller: every variant means "allow".
enum Skip {
    NotConfigured,
    NotTcp,
    NotTargetPort,
    Proxy,
    /// The destination is in the DIRECT map (loopback, a host address, a configured range).
    Direct,
    /// The destination is the proxy's own listener: redirecting it would only loop.
    Listener,
    PendingFull(i32),
}

#[cgroup_sock_addr(connect4)]
pub fn tg_connect4(ctx: SockAddrContext) -> i32 {
    if let Err(Skip::PendingFull(err)) = try_connect4(&ctx) {
        warn!(
            &ctx,
            "connect4: PENDING insert failed ({}); redirected without a record (the proxy refuses it)", err
        );
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn tg_connect6(ctx: SockAddrContext) -> i32 {
    if let Err(Skip::PendingFull(err)) = try_connect6(&ctx) {
        warn!(
            &ctx,
            "connect6: PENDING insert failed ({}); redirected without a record (the proxy refuses it)", err
        );
    }
    1
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = ctx.sock_addr;
    let cfg = enabled_config().ok_or(Skip::NotConfigured)?;
    let port = target_port(ctx, cfg)?;
    skip_proxy(ctx, cfg)?;

    // SAFETY: `sa` is the program's context pointer; the verifier checks every field access.
    let ip4 = unsafe { (*sa).user_ip4 };
    if ip4 == cfg.listen_ip4 && port == cfg.listen_port() {
        return Err(Skip::Listener);
    }
    let orig = v4_mapped(ip4.to_ne_bytes());
    if is_direct(orig) {
        return Err(Skip::Direct);
    }
    // Fail closed: even when the record cannot be stored, the connect goes to the proxy, which
    // refuses a connection it knows nothing about. Never a direct path.
    let remembered = remember(ctx, orig, port, AF_INET);
    unsafe {
        write_volatile(&mut (*sa).user_ip4, cfg.listen_ip4);
        write_volatile(&mut (*sa).user_port, cfg.listen_port4);
    }
    remembered
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = ctx.sock_addr;
    let cfg = enabled_config().ok_or(Skip::NotConfigured)?;
    let port = target_port(ctx, cfg)?;
    skip_proxy(ctx, cfg)?;

    // The verifier only accepts 4-byte accesses to `user_ip6[i]`: read and write word by word.
    // SAFETY: context pointer, fields checked by the verifier.
    let words = unsafe {
        [
            read_volatile(&(*sa).user_ip6[0]),
            read_volatile(&(*sa).user_ip6[1]),
            read_volatile(&(*sa).user_ip6[2]),
            read_volatile(&(*sa).user_ip6[3]),
        ]
    };
    let mapped_prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let is_mapped = words[0] == 0 && words[1] == 0 && words[2] == mapped_prefix;
    if port == cfg.listen_port()
        && (words == cfg.listen_ip6 || (is_mapped && words[3] == cfg.listen_ip4))
    {
        return Err(Skip::Listener);
    }
    let mut orig = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        orig[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if is_direct(orig) {
        return Err(Skip::Direct);
    }
    // Fail closed, as in connect4: redirect even when the record cannot be stored.
    let remembered = remember(ctx, orig, port, AF_INET6);

    let target = if is_mapped {
        // Java and other dual-stack clients connect to IPv4 through an AF_INET6 socket: the
        // rewritten address must stay IPv4-mapped, or the kernel would switch the socket to
        // real IPv6 and connect to a listener that may not exist.
        [0, 0, mapped_prefix, cfg.listen_ip4]
    } else {
        cfg.listen_ip6
    };
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], target[0]);
        write_volatile(&mut (*sa).user_ip6[1], target[1]);
        write_volatile(&mut (*sa).user_ip6[2], target[2]);
        write_volatile(&mut (*sa).user_ip6[3], target[3]);
        write_volatile(&mut (*sa).user_port, cfg.listen_port6);
    }
    remembered
}

/// The destination port (host order) when this is a TCP connect to an intercepted port: any
/// port with `CONFIG_FLAG_ALL_PORTS`, else one listed in TARGET_PORTS.
#[inline(always)]
fn target_port(ctx: &SockAddrContext, cfg: &ProxyConfig) -> Result<u16, Skip> {
    let sa = ctx.sock_addr;
    // SAFETY: context pointer, fields checked by the verifier.
    let (ty, proto, user_port) = unsafe { ((*sa).type_, (*sa).protocol, (*sa).user_port) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    // The port's network-order bytes sit in the low 16 bits of the field.
    let port = u16::from_be(user_port as u16);
    if cfg.all_ports() {
        return Ok(port);
    }
    // SAFETY: the value is a plain `u8` only ever replaced whole by userspace.
    if unsafe { TARGET_PORTS.get(port) }.is_none() {
        return Err(Skip::NotTargetPort);
    }
    Ok(port)
}

/// Loop avoidance: never redirect the proxy's own (upstream) connects.
#[inline(always)]
fn skip_proxy(ctx: &SockAddrContext, cfg: &ProxyConfig) -> Result<(), Skip> {
    if cfg.mark != 0 {
        // SAFETY: `ctx->sk` is a non-NULL PTR_TO_SOCKET in sock_addr programs.
        let mark = unsafe { read_volatile(&(*(*ctx.sock_addr).__bindgen_anon_1.sk).mark) };
        if mark == cfg.mark {
            return Err(Skip::Proxy);
        }
    }
    // SAFETY: helper without preconditions.
    if cfg.proxy_cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } == cfg.proxy_cgroup_id {
        return Err(Skip::Proxy);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if cfg.proxy_tgid != 0 && tgid == cfg.proxy_tgid {
        return Err(Skip::Proxy);
    }
    Ok(())
}

/// Stores the record for this socket in PENDING, keyed by socket cookie.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig_ip6: [u8; 16], port: u16, family: u16) -> Result<(), Skip> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helpers called with this program's own context pointer.
    let (socket_cookie, netns_cookie, cgroup_id, now) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_current_cgroup_id(),
            bpf_ktime_get_ns(),
        )
    };
    let record = ConnectRecord {
        orig_ip6,
        orig_port: port,
        family,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        cgroup_id,
        netns_cookie,
        socket_cookie,
        timestamp_ns: now,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    PENDING
        .insert(socket_cookie, record, 0)
        .map_err(Skip::PendingFull)
}
