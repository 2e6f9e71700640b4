//! `NETLINK_SOCK_DIAG` for TCP sockets, as `ss -K` uses it: a `SOCK_DIAG_BY_FAMILY` dump
//! (optionally filtered in the kernel by cgroup with `INET_DIAG_BC_CGROUP_COND` bytecode) and
//! `SOCK_DESTROY` of one socket by the identity the dump reported.
//!
//! The message builders and parsers are pure functions over byte buffers (unit-tested below);
//! [`DiagNetlink`] only sends and receives them. Layouts mirror `include/uapi/linux/
//! {netlink,sock_diag,inet_diag}.h`; netlink headers and attribute values are in host byte
//! order, addresses and ports in `inet_diag_sockid` in network order.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use serde::Serialize;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_MARK: u16 = 15;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `nla_type` bits that are flags, not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_CGROUP_COND: u8 = 13;

/// `struct inet_diag_sockid`.
pub(crate) const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// One `CGROUP_COND` instruction: `struct inet_diag_bc_op` and a `u64` cgroup id.
const BC_COND_LEN: usize = 12;
/// One `JMP` instruction.
const BC_JMP_LEN: usize = 4;
/// The most cgroup ids put in a kernel filter: the bytecode is one netlink attribute (at most
/// 64 KiB). Above this the dump is unfiltered and the cgroup is checked here.
pub(crate) const MAX_BYTECODE_CGROUPS: usize = 2048;

const IPPROTO_TCP: u8 = 6;

/// A TCP socket state (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    fn from_u8(v: u8) -> Option<Self> {
        use TcpState::*;
        Some(match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    /// The `idiag_states` bit of this state.
    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// One socket of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    /// `AF_INET` or `AF_INET6` (a v4-mapped connection of an `AF_INET6` socket is `AF_INET6`).
    pub(crate) family: u8,
    pub(crate) state: TcpState,
    /// Local end; IPv6 addresses as the kernel reports them (possibly v4-mapped).
    pub(crate) src: SocketAddr,
    /// Remote end.
    pub(crate) dst: SocketAddr,
    pub(crate) uid: u32,
    pub(crate) inode: u32,
    /// `INET_DIAG_CGROUP_ID`: the cgroup v2 id of the socket (the creator's cgroup).
    pub(crate) cgroup_id: Option<u64>,
    /// `INET_DIAG_MARK` (only reported to CAP_NET_ADMIN).
    pub(crate) mark: Option<u32>,
    /// The `inet_diag_sockid` exactly as reported (ports, addresses, interface, cookie): what
    /// `SOCK_DESTROY` must send back.
    pub(crate) id: [u8; SOCKID_LEN],
}

/// What one netlink message of a reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Socket(Box<DiagSocket>),
    /// `NLMSG_DONE`: the dump is complete; a non-zero positive errno when it failed midway.
    Done(i32),
    /// `NLMSG_ERROR`: 0 is an ACK, otherwise a positive errno.
    Ack(i32),
    /// Any other message type (ignored).
    Other(u16),
}

fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

fn push_nlmsghdr(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
}

fn push_req_v2(buf: &mut Vec<u8>, family: u8, states: u32, id: &[u8; SOCKID_LEN]) {
    buf.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(id);
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// A `SOCK_DIAG_BY_FAMILY` dump request for TCP sockets of `family` in `states` (a mask of
/// [`TcpState::bit`]), with an optional `INET_DIAG_REQ_BYTECODE` filter.
pub(crate) fn dump_request(seq: u32, family: u8, states: u32, bytecode: Option<&[u8]>) -> Vec<u8> {
    let mut buf =
        Vec::with_capacity(NLMSG_HDRLEN + REQ_V2_LEN + 4 + bytecode.map_or(0, <[u8]>::len));
    push_nlmsghdr(
        &mut buf,
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    push_req_v2(&mut buf, family, states, &[0; SOCKID_LEN]);
    if let Some(bc) = bytecode {
        let nla_len = (4 + bc.len()) as u16;
        buf.extend_from_slice(&nla_len.to_ne_bytes());
        buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        buf.extend_from_slice(bc);
        buf.resize(nlmsg_align(buf.len()), 0);
    }
    finish(buf)
}

/// A `SOCK_DESTROY` request (acknowledged) for the socket `sock` of a dump.
pub(crate) fn destroy_request(seq: u32, sock: &DiagSocket) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDRLEN + REQ_V2_LEN);
    push_nlmsghdr(&mut buf, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq);
    push_req_v2(&mut buf, sock.family, 0, &sock.id);
    finish(buf)
}

/// Bytecode accepting sockets whose cgroup id is one of `ids`: `C1 OR (C2 OR ...)` compiled
/// as `ss` does, `[COND c1][JMP][COND c2][JMP]...[COND cn]`. A true `COND` falls through to the
/// `JMP` after it, which jumps to the end (accept); a false one skips its `JMP` to the next
/// `COND`; the last false one jumps 4 bytes past the end (reject). `None` for no ids (nothing
/// to match) or too many for one attribute.
pub(crate) fn cgroup_bytecode(ids: &[u64]) -> Option<Vec<u8>> {
    if ids.is_empty() || ids.len() > MAX_BYTECODE_CGROUPS {
        return None;
    }
    let total = ids.len() * (BC_COND_LEN + BC_JMP_LEN) - BC_JMP_LEN;
    let mut bc = Vec::with_capacity(total);
    for (i, id) in ids.iter().enumerate() {
        // struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }: offsets from this op.
        bc.push(INET_DIAG_BC_CGROUP_COND);
        bc.push(BC_COND_LEN as u8);
        bc.extend_from_slice(&((BC_COND_LEN + BC_JMP_LEN) as u16).to_ne_bytes());
        bc.extend_from_slice(&id.to_ne_bytes());
        if i + 1 < ids.len() {
            // A JMP's condition is always false: `no` is the jump, to the end.
            let remaining = total - bc.len();
            bc.push(INET_DIAG_BC_JMP);
            bc.push(BC_JMP_LEN as u8);
            bc.extend_from_slice(&(remaining as u16).to_ne_bytes());
        }
    }
    debug_assert_eq!(bc.len(), total);
    Some(bc)
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sock_diag reply: {0}")]
pub(crate) struct ParseError(&'static str);

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Splits a received buffer into its netlink messages and parses each.
pub(crate) fn parse_replies(mut buf: &[u8]) -> Result<Vec<(u32, Reply)>, ParseError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(ParseError("message length out of bounds"));
        }
        let ty = u16_at(buf, 4);
        let seq = u32_at(buf, 8);
        let payload = &buf[NLMSG_HDRLEN..len];
        let reply = match ty {
            NLMSG_DONE if payload.len() >= 4 => Reply::Done(-(u32_at(payload, 0) as i32)),
            NLMSG_DONE => Reply::Done(0),
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(ParseError("short NLMSG_ERROR"));
                }
                Reply::Ack(-(u32_at(payload, 0) as i32))
            }
            SOCK_DIAG_BY_FAMILY => Reply::Socket(Box::new(parse_diag_msg(payload)?)),
            other => Reply::Other(other),
        };
        out.push((seq, reply));
        buf = &buf[nlmsg_align(len).min(buf.len())..];
    }
    Ok(out)
}

fn sockaddr(family: u8, addr: &[u8], port_be: [u8; 2]) -> Result<SocketAddr, ParseError> {
    let port = u16::from_be_bytes(port_be);
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        10 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&addr[..16]).expect("16 bytes"),
        )),
        _ => return Err(ParseError("unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses a `struct inet_diag_msg` and its attributes.
pub(crate) fn parse_diag_msg(p: &[u8]) -> Result<DiagSocket, ParseError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(ParseError("short inet_diag_msg"));
    }
    let family = p[0];
    let state = TcpState::from_u8(p[1]).ok_or(ParseError("unknown TCP state"))?;
    let id: [u8; SOCKID_LEN] = p[4..4 + SOCKID_LEN].try_into().expect("sockid");
    // inet_diag_sockid: sport(2) dport(2) src[16] dst[16] if(4) cookie(8)
    let src = sockaddr(family, &id[4..20], [id[0], id[1]])?;
    let dst = sockaddr(family, &id[20..36], [id[2], id[3]])?;
    let tail = 4 + SOCKID_LEN; // expires, rqueue, wqueue, uid, inode
    let uid = u32_at(p, tail + 12);
    let inode = u32_at(p, tail + 16);

    let mut cgroup_id = None;
    let mut mark = None;
    let mut attrs = &p[DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        let ty = u16_at(attrs, 2) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return Err(ParseError("attribute length out of bounds"));
        }
        let value = &attrs[4..len];
        match ty {
            INET_DIAG_CGROUP_ID if value.len() >= 8 => {
                cgroup_id = Some(u64::from_ne_bytes(value[..8].try_into().expect("8 bytes")));
            }
            INET_DIAG_MARK if value.len() >= 4 => mark = Some(u32_at(value, 0)),
            _ => {}
        }
        attrs = &attrs[nlmsg_align(len).min(attrs.len())..];
    }
    Ok(DiagSocket {
        family,
        state,
        src,
        dst,
        uid,
        inode,
        cgroup_id,
        mark,
        id,
    })
}

/// A `NETLINK_SOCK_DIAG` socket of the network namespace of the thread that opened it.
pub(crate) struct DiagNetlink {
    fd: OwnedFd,
    seq: u32,
}

impl DiagNetlink {
    /// Opens the socket, with a receive timeout so a silent kernel never hangs the caller.
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = Duration::from_secs(5);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `addr` are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Every TCP socket of `family` in `states` (optionally filtered by `bytecode`).
    pub(crate) fn dump(
        &mut self,
        family: u8,
        states: u32,
        bytecode: Option<&[u8]>,
    ) -> io::Result<Vec<DiagSocket>> {
        let seq = self.next_seq();
        self.send(&dump_request(seq, family, states, bytecode))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sock_diag socket closed mid-dump",
                ));
            }
            let replies = parse_replies(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for (reply_seq, reply) in replies {
                if reply_seq != seq {
                    continue; // a late answer to an earlier request
                }
                match reply {
                    Reply::Socket(s) => out.push(*s),
                    Reply::Done(0) => return Ok(out),
                    Reply::Done(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    Reply::Ack(0) => {}
                    Reply::Ack(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    Reply::Other(_) => {}
                }
            }
        }
    }

    /// `SOCK_DESTROY` of one socket of a dump; the kernel aborts it (`ECONNABORTED` for its
    /// owner, a RST to the peer). `ENOENT`: it is gone already; `EOPNOTSUPP`: the kernel was
    /// built without `CONFIG_INET_DIAG_DESTROY`.
    pub(crate) fn destroy(&mut self, sock: &DiagSocket) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&destroy_request(seq, sock))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sock_diag socket closed before the ACK",
                ));
            }
            let replies = parse_replies(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for (reply_seq, reply) in replies {
                if reply_seq != seq {
                    continue;
                }
                if let Reply::Ack(errno) = reply {
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(errno))
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply message as the kernel would build it.
    fn diag_msg(
        seq: u32,
        family: u8,
        state: u8,
        src: SocketAddr,
        dst: SocketAddr,
        attrs: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        push_nlmsghdr(&mut b, SOCK_DIAG_BY_FAMILY, 2, seq);
        b.extend_from_slice(&[family, state, 0, 0]);
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&src.port().to_be_bytes());
        id[2..4].copy_from_slice(&dst.port().to_be_bytes());
        let put = |id: &mut [u8; SOCKID_LEN], at: usize, ip: IpAddr| match ip {
            IpAddr::V4(v4) => id[at..at + 4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => id[at..at + 16].copy_from_slice(&v6.octets()),
        };
        put(&mut id, 4, src.ip());
        put(&mut id, 20, dst.ip());
        id[36..40].copy_from_slice(&7u32.to_ne_bytes()); // interface
        id[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes()); // cookie
        b.extend_from_slice(&id);
        for v in [0u32, 0, 0, 1000, 4242] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for (ty, value) in attrs {
            b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(value);
            b.resize(nlmsg_align(b.len()), 0);
        }
        finish(b)
    }

    #[test]
    fn dump_request_layout() {
        let states = TcpState::Established.bit() | TcpState::SynSent.bit();
        let m = dump_request(9, 10, states, None);
        assert_eq!(m.len(), NLMSG_HDRLEN + REQ_V2_LEN);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&m, 8), 9);
        assert_eq!(&m[16..20], &[10, 6, 0, 0]);
        assert_eq!(u32_at(&m, 20), 0b110);

        let bc = cgroup_bytecode(&[5]).unwrap();
        let m = dump_request(1, 2, states, Some(&bc));
        assert_eq!(m.len(), NLMSG_HDRLEN + REQ_V2_LEN + 4 + bc.len());
        let attr = &m[NLMSG_HDRLEN + REQ_V2_LEN..];
        assert_eq!(u16_at(attr, 0) as usize, 4 + bc.len());
        assert_eq!(u16_at(attr, 2), INET_DIAG_REQ_BYTECODE);
        assert_eq!(&attr[4..], &bc[..]);
    }

    #[test]
    fn cgroup_bytecode_matches_ss() {
        assert_eq!(cgroup_bytecode(&[]), None);
        // One id: exactly what `ss 'cgroup /x'` sends: { CGROUP_COND, 12, 16 } + id.
        let one = cgroup_bytecode(&[0xabcd]).unwrap();
        let mut want = vec![INET_DIAG_BC_CGROUP_COND, 12];
        want.extend_from_slice(&16u16.to_ne_bytes());
        want.extend_from_slice(&0xabcdu64.to_ne_bytes());
        assert_eq!(one, want);

        let ids = [1u64, 2, 3];
        let bc = cgroup_bytecode(&ids).unwrap();
        assert_eq!(bc.len(), 3 * 12 + 2 * 4);
        assert_eq!(bc.len() % 4, 0);
        for (accepts, id) in [(true, 1), (true, 2), (true, 3), (false, 4)] {
            assert_eq!(run_bytecode(&bc, id), accepts, "cgroup {id}");
        }
        assert!(audit_bytecode(&bc), "the kernel's audit would reject it");
        assert!(cgroup_bytecode(&vec![7; MAX_BYTECODE_CGROUPS]).is_some());
        assert!(cgroup_bytecode(&vec![7; MAX_BYTECODE_CGROUPS + 1]).is_none());
        let big = cgroup_bytecode(&(1..=MAX_BYTECODE_CGROUPS as u64).collect::<Vec<_>>()).unwrap();
        assert!(big.len() + 4 <= u16::MAX as usize);
        assert!(run_bytecode(&big, MAX_BYTECODE_CGROUPS as u64));
        assert!(!run_bytecode(&big, 0));
        assert!(audit_bytecode(&big));
    }

    /// `inet_diag_bc_run` of net/ipv4/inet_diag.c for the two opcodes we emit.
    fn run_bytecode(bc: &[u8], cgroup: u64) -> bool {
        let mut at = 0usize;
        let mut len = bc.len() as isize;
        while len > 0 {
            let (code, yes, no) = (bc[at], bc[at + 1] as isize, u16_at(bc, at + 2) as isize);
            let matched = match code {
                INET_DIAG_BC_CGROUP_COND => {
                    u64::from_ne_bytes(bc[at + 4..at + 12].try_into().unwrap()) == cgroup
                }
                INET_DIAG_BC_JMP => false,
                _ => panic!("opcode {code}"),
            };
            let step = if matched { yes } else { no };
            len -= step;
            at = (at as isize + step) as usize;
        }
        len == 0
    }

    /// `inet_diag_bc_audit` (with `valid_cc`) for the two opcodes we emit.
    fn audit_bytecode(bc: &[u8]) -> bool {
        let valid_cc = |cc: isize| {
            let (mut at, mut len) = (0usize, bc.len() as isize);
            while len >= 0 {
                if cc > len {
                    return false;
                }
                if cc == len {
                    return true;
                }
                let yes = bc[at + 1] as isize;
                if yes < 4 || yes & 3 != 0 {
                    return false;
                }
                len -= yes;
                at += yes as usize;
            }
            false
        };
        let (mut at, mut len) = (0usize, bc.len() as isize);
        while len > 0 {
            let (code, yes, no) = (bc[at], bc[at + 1] as isize, u16_at(bc, at + 2) as isize);
            let min_len = match code {
                INET_DIAG_BC_CGROUP_COND => {
                    if len < 12 {
                        return false;
                    }
                    12
                }
                INET_DIAG_BC_JMP => 4,
                _ => return false,
            };
            if no < min_len || no > len + 4 || no & 3 != 0 {
                return false;
            }
            if no < len && !valid_cc(len - no) {
                return false;
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return false;
            }
            at += yes as usize;
            len -= yes;
        }
        true
    }

    #[test]
    fn parses_a_dump_with_attributes_then_done() {
        let src: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "198.18.0.1:3128".parse().unwrap();
        let mut buf = diag_msg(
            4,
            2,
            1,
            src,
            dst,
            &[
                (8, vec![0]), // INET_DIAG_SHUTDOWN, padded
                (INET_DIAG_MARK, 0x746f_6c6cu32.to_ne_bytes().to_vec()),
                (14, vec![]), // INET_DIAG_PAD before the u64
                (INET_DIAG_CGROUP_ID, 12345u64.to_ne_bytes().to_vec()),
            ],
        );
        let v6src: SocketAddr = "[::ffff:10.0.0.2]:40001".parse().unwrap();
        let v6dst: SocketAddr = "[fd00::1]:1080".parse().unwrap();
        buf.extend(diag_msg(4, 10, 2, v6src, v6dst, &[]));
        let mut done = Vec::new();
        push_nlmsghdr(&mut done, NLMSG_DONE, 2, 4);
        done.extend_from_slice(&0i32.to_ne_bytes());
        buf.extend(finish(done));

        let replies = parse_replies(&buf).unwrap();
        assert_eq!(replies.len(), 3);
        let Reply::Socket(s) = &replies[0].1 else {
            panic!("{replies:?}")
        };
        assert_eq!(replies[0].0, 4);
        assert_eq!((s.family, s.state), (2, TcpState::Established));
        assert_eq!((s.src, s.dst), (src, dst));
        assert_eq!((s.uid, s.inode), (1000, 4242));
        assert_eq!(s.cgroup_id, Some(12345));
        assert_eq!(s.mark, Some(0x746f_6c6c));
        let Reply::Socket(s6) = &replies[1].1 else {
            panic!("{replies:?}")
        };
        assert_eq!(
            (s6.state, s6.src, s6.dst),
            (TcpState::SynSent, v6src, v6dst)
        );
        assert_eq!((s6.cgroup_id, s6.mark), (None, None));
        assert_eq!(replies[2].1, Reply::Done(0));

        // The destroy request echoes the reported identity (cookie and interface included).
        let d = destroy_request(5, s);
        assert_eq!(d.len(), NLMSG_HDRLEN + REQ_V2_LEN);
        assert_eq!(u16_at(&d, 4), SOCK_DESTROY);
        assert_eq!(u16_at(&d, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&d[16..20], &[2, 6, 0, 0]);
        assert_eq!(&d[24..], &s.id[..]);
        assert_eq!(&s.id[40..48], &0x1122_3344_5566_7788u64.to_ne_bytes());
    }

    #[test]
    fn parses_errors_and_rejects_garbage() {
        let mut err = Vec::new();
        push_nlmsghdr(&mut err, NLMSG_ERROR, 0, 3);
        err.extend_from_slice(&(-libc::EOPNOTSUPP).to_ne_bytes());
        err.extend_from_slice(&[0; NLMSG_HDRLEN]); // the request's header
        let replies = parse_replies(&finish(err)).unwrap();
        assert_eq!(replies, vec![(3, Reply::Ack(libc::EOPNOTSUPP))]);

        let mut ack = Vec::new();
        push_nlmsghdr(&mut ack, NLMSG_ERROR, 0, 3);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_replies(&finish(ack)).unwrap()[0].1, Reply::Ack(0));

        let good = diag_msg(
            1,
            2,
            1,
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            &[],
        );
        let mut long = good.clone();
        long[0..4].copy_from_slice(&((good.len() + 4) as u32).to_ne_bytes());
        assert!(parse_replies(&long).is_err());
        let mut short = good.clone();
        short[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse_replies(&short).is_err());
        let mut bad_family = good.clone();
        bad_family[16] = 99;
        assert!(parse_replies(&bad_family).is_err());
        let mut bad_attr = diag_msg(
            1,
            2,
            1,
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            &[(INET_DIAG_MARK, vec![1, 2, 3, 4])],
        );
        let at = NLMSG_HDRLEN + DIAG_MSG_LEN;
        bad_attr[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_replies(&bad_attr).is_err());
        // Trailing bytes shorter than a header are ignored; an empty buffer has no messages.
        let mut trailing = good;
        trailing.extend_from_slice(&[0; 3]);
        assert_eq!(parse_replies(&trailing).unwrap().len(), 1);
        assert!(parse_replies(&[]).unwrap().is_empty());
    }
}
