//! Loading, pinning and attaching: [`Redirector::attach`], the identity lookup
//! ([`ConnectLookup`]) and the reader of the programs' log records ([`KernelLog`]).
//!
//! The two run-time users are apart so neither waits for the other: the proxy's accept path
//! holds a [`ConnectLookup`] (a shared map handle; a lookup is one syscall on `&self`, no lock),
//! and one task owns the [`KernelLog`] (draining its ring buffer needs `&mut`).

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapInfo, MapType,
    },
    programs::{CgroupSockAddr, CgroupSockopt, SockOps},
    Ebpf, EbpfLoader,
};
use serde::Serialize;
use tollgate_common::{
    ClientKey, ConnectRecord, ProxyConfig, CONFIG_FLAG_ALL_PORTS, CONFIG_FLAG_ENABLED,
    CONFIG_FLAG_PREEXISTING_UNCHECKED, DIRECT_MAX_ENTRIES, MAP_CONFIG, MAP_DIRECT, MAP_NAMES,
    MAP_ORIG_DST, MAP_PENDING, MAP_TARGET_PORTS, ORIG_DST_MAX_ENTRIES, PENDING_MAX_ENTRIES,
    TARGET_PORTS_MAX_ENTRIES,
};

use crate::{
    direct::{self, DirectRange, DirectSet},
    existing::{self, PreexistingConnections},
    host::{self, cgroup_id},
    pins::{pin_replace, Hook, PinLayout},
    sys, BpfError, ConnectInfo, RedirectConfig, TargetPorts,
};

/// What [`Redirector::attach`] did, for the log and the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttachReport {
    /// Links in force (one per hook and cgroup).
    pub links: usize,
    /// The destinations that stay direct, as written to the kernel.
    pub direct: Vec<DirectRange>,
    /// Host addresses left out of `direct` because the map was full (they are redirected).
    pub direct_dropped: usize,
    /// Why the host's addresses could not be listed, if they could not (none is direct then).
    pub host_addresses_error: Option<String>,
    /// Connections of the target cgroups opened before this attach that it would now
    /// redirect: destroyed, or not (those still bypass the proxy).
    pub preexisting: PreexistingConnections,
}

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf"));

/// A loaded and attached redirect. Dropping it leaves the redirect in force (links, programs
/// and maps are pinned); only [`crate::detach`] removes it.
///
/// For the proxy's run time, split it: [`Redirector::connect_lookup`] gives the accept path
/// its lock-free handle, [`Redirector::take_kernel_log`] gives the log reader its own.
pub struct Redirector {
    // Keeps the object's own map and program fds open while the proxy runs.
    _ebpf: Ebpf,
    lookup: ConnectLookup,
    logger: Option<KernelLog>,
    pin_dir: PathBuf,
    report: AttachReport,
}

/// The identity lookup of redirected connections: a handle on the pinned ORIG_DST map.
///
/// Cheap to clone and `Send + Sync`: every clone shares one map file descriptor, and a lookup
/// is a single `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on `&self`, so the accept path needs no lock.
/// It stays valid after the [`Redirector`] it came from is dropped (the fd is its own).
#[derive(Clone)]
pub struct ConnectLookup {
    orig_dst: Arc<MapData>,
}

impl std::fmt::Debug for ConnectLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectLookup").finish_non_exhaustive()
    }
}

impl ConnectLookup {
    /// Reads and removes the record of the redirected connection whose client end is `client`
    /// (the peer address of a socket the proxy accepted). IPv4 and IPv4-mapped IPv6 client
    /// addresses find the same record.
    ///
    /// Call it after `getsockopt(SO_ORIGINAL_DST)`, which reads the same record without
    /// removing it. `None` when no redirect is known for that client (a direct connection to
    /// the listener, or a record evicted under load).
    pub fn lookup(&self, client: SocketAddr) -> Option<ConnectInfo> {
        let key = client_key(client);
        match sys::map_lookup_and_delete::<ClientKey, ConnectRecord>(
            self.orig_dst.fd().as_fd(),
            &key,
        ) {
            Ok(record) => record.map(ConnectInfo::from),
            Err(e) => {
                log::warn!("ORIG_DST lookup for {client} failed: {e}");
                None
            }
        }
    }
}

/// The reader of the eBPF programs' log records (they log only when they cannot store a
/// connection record). Its file descriptor becomes readable when there is something to read;
/// [`KernelLog::flush`] forwards the records to the `log` crate.
pub struct KernelLog {
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog").finish_non_exhaustive()
    }
}

impl KernelLog {
    /// Forwards every pending record to the `log` crate's logger (the one installed when the
    /// redirect was attached).
    pub fn flush(&mut self) {
        self.logger.flush();
    }
}

impl AsFd for KernelLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// Loads the programs, reuses (or creates) the pinned maps, writes the configuration and
    /// attaches every hook as a pinned link, replacing the links of a previous run without a
    /// gap. Cgroups pinned by a previous run that `cfg` no longer lists are detached.
    ///
    /// Then destroys the TCP connections of the target cgroups that were opened before (and
    /// that the hooks would now redirect), and records how many could not be destroyed where
    /// [`crate::status`] finds it. [`Redirector::attach_report`] has the details.
    ///
    /// Runs [`crate::preflight`] first.
    pub fn attach(cfg: &RedirectConfig) -> Result<Self, BpfError> {
        crate::preflight(cfg)?;
        if OBJECT.is_empty() {
            return Err(BpfError::ObjectMissing);
        }
        let layout = PinLayout::new(&cfg.pin_dir);
        layout.create_dirs()?;
        drop_incompatible_map_pins(&layout);

        let map_paths: Vec<(&str, PathBuf)> = MAP_NAMES
            .iter()
            .map(|name| (*name, layout.map(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(BpfError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(KernelLog { logger }),
            Err(e) => {
                log::debug!("eBPF logging unavailable: {e}");
                None
            }
        };

        let proxy_cgroup_id =
            cgroup_id(&cfg.proxy_cgroup).map_err(|source| BpfError::CgroupMissing {
                path: cfg.proxy_cgroup.clone(),
                source,
            })?;
        let mut report = AttachReport::default();
        let host_addresses = if cfg.direct.host_addresses {
            direct::host_addresses().unwrap_or_else(|e| {
                log::warn!("listing the host's addresses failed ({e}): none stays direct");
                report.host_addresses_error = Some(e.to_string());
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let (ranges, dropped) = direct::direct_ranges(&cfg.direct, &host_addresses);
        if dropped > 0 {
            log::warn!(
                "{dropped} host address(es) left out of the direct set (capacity {DIRECT_MAX_ENTRIES}): connects to them are redirected"
            );
        }
        report.direct = ranges;
        report.direct_dropped = dropped;

        // The maps are shared with the links of a previous run, which keep running until they
        // are replaced: writing the configuration first makes them use it too.
        write_config(&mut ebpf, cfg, proxy_cgroup_id, &report.direct)?;

        let mut progs = Vec::with_capacity(Hook::ALL.len());
        for hook in Hook::ALL {
            let fd = load_program(&mut ebpf, hook)?;
            pin_replace(fd.as_fd(), &layout.prog(hook))?;
            progs.push((hook, fd));
        }
        let prog_fd = |hook: Hook| {
            progs
                .iter()
                .find(|(h, _)| *h == hook)
                .map(|(_, fd)| fd.as_fd())
                .expect("every hook was loaded above")
        };

        let mut wanted = BTreeSet::new();
        let mut targets: Vec<(Hook, &Path)> = Vec::new();
        for cgroup in &cfg.cgroups {
            for hook in Hook::TARGET {
                targets.push((hook, cgroup));
            }
        }
        targets.push((Hook::Getsockopt, &cfg.proxy_cgroup));
        for (hook, cgroup) in targets {
            let id = cgroup_id(cgroup).map_err(|source| BpfError::CgroupMissing {
                path: cgroup.to_owned(),
                source,
            })?;
            if !wanted.insert((hook, id)) {
                continue; // the same cgroup listed twice
            }
            attach_link(&layout, hook, prog_fd(hook), cgroup, id)?;
        }
        detach_unwanted(&layout, &wanted)?;

        let orig_dst = match ebpf.take_map(MAP_ORIG_DST) {
            Some(Map::LruHashMap(data)) => data,
            _ => {
                return Err(BpfError::Map {
                    map: MAP_ORIG_DST,
                    source: aya::maps::MapError::InvalidName {
                        name: MAP_ORIG_DST.into(),
                    },
                })
            }
        };
        report.links = wanted.len();
        log::info!(
            "redirect attached: {} links pinned under {}, listener port {}, ports {}, {} direct range(s)",
            wanted.len(),
            cfg.pin_dir.display(),
            cfg.listen_port,
            cfg.ports,
            report.direct.len()
        );

        // The hooks are in force: whatever is found now was connected before them.
        report.preexisting = existing::close_preexisting(
            &cfg.cgroups,
            proxy_cgroup_id,
            cfg.mark,
            &cfg.ports,
            DirectSet::new(&report.direct),
            cfg.listen_port,
        );
        record_preexisting(&mut ebpf, &report.preexisting)?;
        Ok(Self {
            _ebpf: ebpf,
            lookup: ConnectLookup {
                orig_dst: Arc::new(orig_dst),
            },
            logger,
            pin_dir: cfg.pin_dir.clone(),
            report,
        })
    }

    /// What the attach did: links, direct destinations, and the pre-existing connections it
    /// destroyed or could not destroy.
    pub fn attach_report(&self) -> &AttachReport {
        &self.report
    }

    /// Reads and removes the record of the redirected connection whose client end is `client`;
    /// see [`ConnectLookup::lookup`].
    pub fn lookup(&self, client: SocketAddr) -> Option<ConnectInfo> {
        self.lookup.lookup(client)
    }

    /// A handle for the accept path: lookups through it take no lock and need no `&mut`.
    pub fn connect_lookup(&self) -> ConnectLookup {
        self.lookup.clone()
    }

    /// Hands the reader of the programs' log records to its own owner (a task that flushes it
    /// when its fd is readable, or now and then). `None` when eBPF logging is unavailable or
    /// the reader was taken already.
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.logger.take()
    }

    /// Forwards the log records the eBPF programs produced (map insert failures) to the `log`
    /// crate, unless the reader was taken with [`Redirector::take_kernel_log`]. Call it now
    /// and then, or when [`Redirector::log_fd`] is readable.
    pub fn flush_kernel_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// A file descriptor that becomes readable when the eBPF programs have logged something
    /// (`None` when logging is unavailable or the reader was taken).
    pub fn log_fd(&self) -> Option<BorrowedFd<'_>> {
        self.logger.as_ref().map(|l| l.as_fd())
    }

    /// The pin directory this redirect lives in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

// The accept path shares the lookup across threads without a lock.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ConnectLookup>();
};

/// The ORIG_DST key of a client address: IPv4 as IPv4-mapped IPv6.
pub(crate) fn client_key(client: SocketAddr) -> ClientKey {
    match client {
        SocketAddr::V4(v4) => ClientKey::from_v4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => ClientKey::from_v6(v6.ip().octets(), v6.port()),
    }
}

/// (type, key size, value size, max entries) each map must have for the pin to be reused.
pub(crate) fn expected_map_shape(name: &str) -> Option<(MapType, u32, u32, u32)> {
    use std::mem::size_of;
    Some(match name {
        MAP_CONFIG => (MapType::Array, 4, size_of::<ProxyConfig>() as u32, 1),
        MAP_TARGET_PORTS => (MapType::Hash, 2, 1, TARGET_PORTS_MAX_ENTRIES),
        MAP_DIRECT => (MapType::LpmTrie, 4 + 16, 4, DIRECT_MAX_ENTRIES),
        MAP_PENDING => (
            MapType::LruHash,
            8,
            size_of::<ConnectRecord>() as u32,
            PENDING_MAX_ENTRIES,
        ),
        MAP_ORIG_DST => (
            MapType::LruHash,
            size_of::<ClientKey>() as u32,
            size_of::<ConnectRecord>() as u32,
            ORIG_DST_MAX_ENTRIES,
        ),
        _ => return None,
    })
}

/// aya reuses any object pinned at a map's path without checking it. A pin from a version
/// with another ABI would make the new programs read garbage: unpin it so a fresh map is
/// created. The old links keep the old map alive until they are replaced a moment later.
fn drop_incompatible_map_pins(layout: &PinLayout) {
    for name in MAP_NAMES {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let Some((ty, key, value, max)) = expected_map_shape(name) else {
            continue;
        };
        let compatible = MapInfo::from_pin(&path).is_ok_and(|info| {
            info.map_type().is_ok_and(|t| t == ty)
                && info.key_size() == key
                && info.value_size() == value
                && info.max_entries() == max
        });
        if !compatible {
            log::warn!(
                "pinned map {} does not match this version's ABI; replacing it (its entries are lost)",
                path.display()
            );
            let _ = fs::remove_file(&path);
        }
    }
}

/// Writes DIRECT, TARGET_PORTS and CONFIG so that the running programs (a previous run's
/// included) never see a state looser than either the old or the new configuration for long:
/// new direct ranges and ports are added first, then the flags, then stale entries go.
fn write_config(
    ebpf: &mut Ebpf,
    cfg: &RedirectConfig,
    proxy_cgroup_id: u64,
    direct: &[DirectRange],
) -> Result<(), BpfError> {
    let mut flags = CONFIG_FLAG_ENABLED;
    let ports: &[u16] = match &cfg.ports {
        TargetPorts::All => {
            flags |= CONFIG_FLAG_ALL_PORTS;
            &[]
        }
        TargetPorts::Only(ports) => ports,
    };
    let value = ProxyConfig {
        proxy_tgid: cfg.proxy_tgid,
        proxy_cgroup_id,
        mark: cfg.mark,
        flags,
        ..ProxyConfig::default()
    }
    .with_loopback_listener(cfg.listen_port);

    let keys: Vec<(u32, [u8; 16], u32)> = direct
        .iter()
        .map(|r| {
            let (len, addr) = direct::lpm_key(&r.net);
            (len, addr, r.reason.code())
        })
        .collect();
    let stale_direct = {
        let mut trie = direct_map(ebpf)?;
        for (len, addr, reason) in &keys {
            trie.insert(&Key::new(*len, *addr), reason, 0)
                .map_err(|e| map_err(MAP_DIRECT, e))?;
        }
        let stale: Vec<Key<[u8; 16]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !keys
                    .iter()
                    .any(|(len, addr, _)| k.prefix_len() == *len && k.data() == *addr)
            })
            .collect();
        stale
    };

    let stale_ports = {
        let mut map = ports_map(ebpf)?;
        // Add before removing: a port listed both times is never absent.
        for port in ports {
            map.insert(port, 1, 0)
                .map_err(|e| map_err(MAP_TARGET_PORTS, e))?;
        }
        let stale: Vec<u16> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        stale
    };

    set_config(ebpf, value)?;

    let mut map = ports_map(ebpf)?;
    for port in stale_ports {
        map.remove(&port)
            .map_err(|e| map_err(MAP_TARGET_PORTS, e))?;
    }
    let mut trie = direct_map(ebpf)?;
    for key in stale_direct {
        trie.remove(&key).map_err(|e| map_err(MAP_DIRECT, e))?;
    }
    Ok(())
}

fn map_err(map: &'static str, source: aya::maps::MapError) -> BpfError {
    BpfError::Map { map, source }
}

fn config_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, ProxyConfig>, BpfError> {
    ebpf.map_mut(MAP_CONFIG)
        .ok_or_else(|| missing_map(MAP_CONFIG))?
        .try_into()
        .map_err(|e| map_err(MAP_CONFIG, e))
}

fn set_config(ebpf: &mut Ebpf, value: ProxyConfig) -> Result<(), BpfError> {
    config_map(ebpf)?
        .set(0, value, 0)
        .map_err(|e| map_err(MAP_CONFIG, e))
}

fn ports_map(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, u16, u8>, BpfError> {
    ebpf.map_mut(MAP_TARGET_PORTS)
        .ok_or_else(|| missing_map(MAP_TARGET_PORTS))?
        .try_into()
        .map_err(|e| map_err(MAP_TARGET_PORTS, e))
}

fn direct_map(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, [u8; 16], u32>, BpfError> {
    ebpf.map_mut(MAP_DIRECT)
        .ok_or_else(|| missing_map(MAP_DIRECT))?
        .try_into()
        .map_err(|e| map_err(MAP_DIRECT, e))
}

/// Stores the pre-existing connection counts in CONFIG's loader-only fields, where
/// [`crate::status`] reads them (bpffs holds no regular files, and the pins are exactly as
/// long-lived as what they describe). Only those fields and one loader-only flag change; the
/// bytes the programs read are rewritten with their current values.
fn record_preexisting(ebpf: &mut Ebpf, pre: &PreexistingConnections) -> Result<(), BpfError> {
    let mut value = config_map(ebpf)?
        .get(&0, 0)
        .map_err(|e| map_err(MAP_CONFIG, e))?;
    value.preexisting_destroyed = u32::try_from(pre.destroyed.len()).unwrap_or(u32::MAX);
    value.preexisting_failed = u32::try_from(pre.failed.len()).unwrap_or(u32::MAX);
    if pre.scan_errors.is_empty() {
        value.flags &= !CONFIG_FLAG_PREEXISTING_UNCHECKED;
    } else {
        value.flags |= CONFIG_FLAG_PREEXISTING_UNCHECKED;
    }
    set_config(ebpf, value)
}

fn missing_map(name: &'static str) -> BpfError {
    BpfError::Map {
        map: name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

/// Loads the program of `hook` and returns a dup of its fd (aya keeps its own).
fn load_program(ebpf: &mut Ebpf, hook: Hook) -> Result<OwnedFd, BpfError> {
    let program = hook.program();
    let err = |source| BpfError::Program { program, source };
    let prog = ebpf
        .program_mut(program)
        .ok_or(aya::programs::ProgramError::NotLoaded)
        .map_err(err)?;
    let fd = match hook {
        Hook::Connect4 | Hook::Connect6 => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.fd().map_err(err)?.as_fd().try_clone_to_owned()
        }
        Hook::Sockops => {
            let p: &mut SockOps = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.fd().map_err(err)?.as_fd().try_clone_to_owned()
        }
        Hook::Getsockopt => {
            let p: &mut CgroupSockopt = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.fd().map_err(err)?.as_fd().try_clone_to_owned()
        }
    };
    let fd = fd.map_err(|source| BpfError::Pin {
        action: "duplicating the fd of program",
        path: PathBuf::from(program),
        source,
    })?;
    Ok(fd)
}

/// Attaches `prog` to `cgroup` as a new link and pins it over the previous run's link (which
/// the kernel then detaches). Both links run for an instant; they share the maps and the
/// second one to see a redirected connect finds it already pointing at the listener.
fn attach_link(
    layout: &PinLayout,
    hook: Hook,
    prog: std::os::fd::BorrowedFd<'_>,
    cgroup: &Path,
    id: u64,
) -> Result<(), BpfError> {
    let dir = fs::File::open(cgroup).map_err(|source| BpfError::CgroupMissing {
        path: cgroup.to_owned(),
        source,
    })?;
    let link =
        sys::cgroup_link_create(prog, dir.as_fd(), hook.attach_type()).map_err(|source| {
            BpfError::Attach {
                hook: hook.name(),
                cgroup: cgroup.to_owned(),
                source,
            }
        })?;
    pin_replace(link.as_fd(), &layout.link(hook, id))
}

/// Removes the pins of links that this configuration does not want (their cgroup is no
/// longer configured) and leftovers of an interrupted run.
fn detach_unwanted(layout: &PinLayout, wanted: &BTreeSet<(Hook, u64)>) -> Result<(), BpfError> {
    let pinned = layout.pinned_links().map_err(|source| BpfError::Pin {
        action: "listing",
        path: layout.links(),
        source,
    })?;
    for (parsed, path) in pinned {
        if parsed.is_some_and(|k| wanted.contains(&k)) {
            continue;
        }
        log::info!("detaching {}: no longer configured", path.display());
        fs::remove_file(&path).map_err(|source| BpfError::Pin {
            action: "removing",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Finds the cgroup directory of `id` for reports; `None` when it no longer exists.
pub(crate) fn cgroup_path(id: u64) -> Option<PathBuf> {
    host::find_cgroup(id)
}
