//! Reading and removing a pinned redirect without loading anything: [`status`], [`detach`].

use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData};
use serde::Serialize;
use tollgate_common::{
    ClientKey, ConnectRecord, ProxyConfig, CONFIG_FLAG_ENABLED, CONFIG_FLAG_PREEXISTING_UNCHECKED,
    MAP_CONFIG, MAP_DIRECT, MAP_NAMES, MAP_ORIG_DST, MAP_PENDING, MAP_TARGET_PORTS,
};

use crate::{
    direct::{from_lpm_key, DirectRange, DirectReason},
    pins::{Hook, PinLayout},
    redirector::cgroup_path,
    sys, BpfError,
};

/// A snapshot of a pinned redirect, for `tollgate status` and for tests.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pin directory inspected.
    pub pin_dir: PathBuf,
    /// Whether the pin directory exists at all.
    pub pinned: bool,
    /// Every pinned link.
    pub links: Vec<LinkStatus>,
    /// The configuration the programs run with; `None` when the CONFIG map is not pinned.
    pub config: Option<ConfigStatus>,
    /// Connects redirected whose SYN has not been sent yet (normally 0).
    pub pending_entries: usize,
    /// Redirected connections not yet claimed by the proxy.
    pub orig_dst_entries: usize,
    /// For each (hook, cgroup) with a pinned link: how many Tollgate programs the kernel
    /// reports attached there. Exactly 1 everywhere means no duplicates and no gaps.
    pub kernel_attachments: Vec<KernelAttachment>,
}

/// One pinned link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The hook it attaches.
    pub hook: Hook,
    /// The cgroup id (inode) it is attached to.
    pub cgroup_id: u64,
    /// The cgroup's directory, when it still exists.
    pub cgroup_path: Option<PathBuf>,
    /// The kernel's link id; `None` when the pin could not be opened.
    pub link_id: Option<u32>,
    /// The id of the program the link runs.
    pub prog_id: Option<u32>,
    /// Whether the kernel reports the link attached to that very cgroup.
    pub attached: bool,
    /// Where it is pinned.
    pub pin: PathBuf,
}

/// The contents of the CONFIG, TARGET_PORTS and DIRECT maps.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// Whether redirection is enabled.
    pub enabled: bool,
    /// The proxy's listener port (on 127.0.0.1 and ::1).
    pub listen_port: u16,
    /// The proxy process whose connects are never redirected.
    pub proxy_tgid: u32,
    /// Whether that process is alive.
    pub proxy_alive: bool,
    /// The cgroup id of the proxy's cgroup.
    pub proxy_cgroup_id: u64,
    /// The socket mark that is never redirected (0: none).
    pub mark: u32,
    /// Whether every destination port is intercepted (`target_ports` is then empty).
    pub all_ports: bool,
    /// Intercepted destination ports, sorted (when not `all_ports`).
    pub target_ports: Vec<u16>,
    /// Destinations that stay direct, longest prefixes first.
    pub direct: Vec<DirectRange>,
    /// What the last attach did about connections opened before it.
    pub preexisting: PreexistingStatus,
}

/// The last attach's sweep of pre-existing connections, as recorded in the pinned CONFIG map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PreexistingStatus {
    /// Connections destroyed.
    pub destroyed: u32,
    /// Connections that would be redirected but could not be destroyed: they still bypass
    /// the proxy until they close.
    pub failed: u32,
    /// Some network namespace or dump could not be examined (see the attach log).
    pub unchecked: bool,
}

/// Programs attached to one cgroup for one hook, according to the kernel.
#[derive(Debug, Clone, Serialize)]
pub struct KernelAttachment {
    /// The hook.
    pub hook: Hook,
    /// The cgroup id.
    pub cgroup_id: u64,
    /// Tollgate programs attached directly to that cgroup for that hook; `None` when the
    /// cgroup could not be found.
    pub tollgate_programs: Option<usize>,
}

/// What [`detach`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DetachReport {
    /// Link pins removed (each one detached a hook from a cgroup).
    pub links: usize,
    /// Program pins removed.
    pub programs: usize,
    /// Map pins removed.
    pub maps: usize,
}

/// Describes the redirect pinned under `pin_dir`. Works without loading anything and while a
/// [`crate::Redirector`] runs in another process.
pub fn status(pin_dir: &Path) -> Result<Status, BpfError> {
    let layout = PinLayout::new(pin_dir);
    let mut status = Status {
        pin_dir: pin_dir.to_owned(),
        pinned: pin_dir.is_dir(),
        links: Vec::new(),
        config: None,
        pending_entries: 0,
        orig_dst_entries: 0,
        kernel_attachments: Vec::new(),
    };
    if !status.pinned {
        return Ok(status);
    }

    let names = tollgate_program_ids();
    let pinned = layout.pinned_links().map_err(|source| BpfError::Pin {
        action: "listing",
        path: layout.links(),
        source,
    })?;
    for (parsed, pin) in pinned {
        let Some((hook, cgroup_id)) = parsed else {
            continue;
        };
        let info = sys::obj_get(&pin)
            .and_then(|fd| sys::link_info(fd.as_fd()))
            .ok();
        let path = cgroup_path(cgroup_id);
        let attached = path.as_deref().and_then(|p| {
            let dir = fs::File::open(p).ok()?;
            let ids = sys::cgroup_prog_ids(dir.as_fd(), hook.attach_type()).ok()?;
            Some(
                ids.iter()
                    .filter(|id| names.get(id).is_some_and(|n| *n == hook.program()))
                    .count(),
            )
        });
        status.kernel_attachments.push(KernelAttachment {
            hook,
            cgroup_id,
            tollgate_programs: attached,
        });
        status.links.push(LinkStatus {
            hook,
            cgroup_id,
            cgroup_path: path,
            link_id: info.map(|i| i.id),
            prog_id: info.map(|i| i.prog_id),
            attached: info.is_some_and(|i| i.cgroup_id == cgroup_id),
            pin,
        });
    }

    if let Some(map) = open_map(&layout, MAP_CONFIG)? {
        let config: Array<_, ProxyConfig> = map.try_into().map_err(|e| map_err(MAP_CONFIG, e))?;
        let value = config.get(&0, 0).map_err(|e| map_err(MAP_CONFIG, e))?;
        let mut target_ports = Vec::new();
        if let Some(map) = open_map(&layout, MAP_TARGET_PORTS)? {
            let ports: HashMap<_, u16, u8> =
                map.try_into().map_err(|e| map_err(MAP_TARGET_PORTS, e))?;
            target_ports = ports.keys().filter_map(Result::ok).collect();
            target_ports.sort_unstable();
        }
        let mut direct = Vec::new();
        if let Some(map) = open_map(&layout, MAP_DIRECT)? {
            let trie: LpmTrie<_, [u8; 16], u32> =
                map.try_into().map_err(|e| map_err(MAP_DIRECT, e))?;
            for entry in trie.iter().filter_map(Result::ok) {
                let (key, code) = entry;
                if let (Some(net), Some(reason)) = (
                    from_lpm_key(key.prefix_len(), key.data()),
                    DirectReason::from_code(code),
                ) {
                    direct.push(DirectRange { net, reason });
                }
            }
            direct.sort_by(|a, b| {
                (a.reason, b.net.prefix_len(), a.net).cmp(&(b.reason, a.net.prefix_len(), b.net))
            });
        }
        status.config = Some(ConfigStatus {
            enabled: value.flags & CONFIG_FLAG_ENABLED != 0,
            listen_port: value.listen_port(),
            proxy_tgid: value.proxy_tgid,
            proxy_alive: value.proxy_tgid != 0
                && Path::new(&format!("/proc/{}", value.proxy_tgid)).exists(),
            proxy_cgroup_id: value.proxy_cgroup_id,
            mark: value.mark,
            all_ports: value.all_ports(),
            target_ports,
            direct,
            preexisting: PreexistingStatus {
                destroyed: value.preexisting_destroyed,
                failed: value.preexisting_failed,
                unchecked: value.flags & CONFIG_FLAG_PREEXISTING_UNCHECKED != 0,
            },
        });
    }
    if let Some(map) = open_map(&layout, MAP_PENDING)? {
        let pending: HashMap<_, u64, ConnectRecord> =
            map.try_into().map_err(|e| map_err(MAP_PENDING, e))?;
        status.pending_entries = pending.keys().count();
    }
    if let Some(map) = open_map(&layout, MAP_ORIG_DST)? {
        let orig: HashMap<_, ClientKey, ConnectRecord> =
            map.try_into().map_err(|e| map_err(MAP_ORIG_DST, e))?;
        status.orig_dst_entries = orig.keys().count();
    }
    Ok(status)
}

/// Removes the redirect pinned under `pin_dir`: every link (so every hook is detached at
/// once), program and map, then the directory. Idempotent: a missing directory is success.
///
/// A [`crate::Redirector`] still running keeps its own fds, but no hook runs any more.
pub fn detach(pin_dir: &Path) -> Result<DetachReport, BpfError> {
    let layout = PinLayout::new(pin_dir);
    // Links first: the redirect stops before its maps disappear.
    let report = DetachReport {
        links: remove_dir_entries(&layout.links())?,
        programs: remove_dir_entries(&layout.progs())?,
        maps: remove_dir_entries(&layout.maps())?,
    };
    for dir in [layout.links(), layout.progs(), layout.maps(), layout.root] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BpfError::Pin {
                    action: "removing",
                    path: dir,
                    source,
                })
            }
        }
    }
    Ok(report)
}

fn remove_dir_entries(dir: &Path) -> Result<usize, BpfError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(BpfError::Pin {
                action: "listing",
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BpfError::Pin {
                    action: "removing",
                    path,
                    source,
                })
            }
        }
    }
    Ok(removed)
}

fn open_map(layout: &PinLayout, name: &'static str) -> Result<Option<Map>, BpfError> {
    debug_assert!(MAP_NAMES.contains(&name));
    let path = layout.map(name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(|e| map_err(name, e))?;
    Map::from_map_data(data)
        .map(Some)
        .map_err(|e| map_err(name, e))
}

fn map_err(map: &'static str, source: aya::maps::MapError) -> BpfError {
    BpfError::Map { map, source }
}

/// Program id → name for every loaded program whose name is one of ours.
fn tollgate_program_ids() -> StdHashMap<u32, &'static str> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?;
            let hook = Hook::ALL.into_iter().find(|h| h.program() == name)?;
            Some((info.id(), hook.program()))
        })
        .collect()
}
