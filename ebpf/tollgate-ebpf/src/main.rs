//! Tollgate's eBPF programs. One module per hook; each hook is a thin entry point calling a
//! `try_*` function that returns `Result`, and every hook *allows* the operation whatever
//! happens inside it (a failed lookup means "not ours", never "deny").
//!
//! - `connect` (`cgroup/connect4`, `cgroup/connect6`): redirect TCP connects to target ports
//!   (every port with `CONFIG_FLAG_ALL_PORTS`) whose destination is not in the DIRECT trie to
//!   the proxy's loopback listener, remembering the original destination and the caller.
//! - `sockops` (`BPF_SOCK_OPS_TCP_CONNECT_CB`): re-key that record by the client's (ip, port).
//! - `getsockopt` (`cgroup/getsockopt` on the proxy's cgroup): answer `SO_ORIGINAL_DST`.
//!
//! Maps are declared in `maps` and pinned by the loader (not by the object), so their pin
//! layout is a userspace decision.
//!
//! Built for the host (as `cargo clippy --workspace` does) it is an empty program, so that
//! workspace-wide checks type-check these sources instead of failing on `no_main`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod connect;
mod getsockopt;
mod maps;
mod sockops;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF can neither unwind nor abort. No path in these programs panics; if one ever did,
    // the verifier would reject this infinite loop at load time rather than let it run.
    loop {}
}

// The kernel checks the license string for GPL-only helpers; none is used on purpose, but the
// dual licence keeps every helper available.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
