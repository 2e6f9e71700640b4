//! The layout of the pin directory and the hooks that live in it.
//!
//! ```text
//! <pin_dir>/maps/{CONFIG,TARGET_PORTS,DIRECT,PENDING,ORIG_DST}   reused across restarts
//! <pin_dir>/progs/<hook>                                  the programs the links run
//! <pin_dir>/links/<hook>-<cgroup id>                      one link per hook and cgroup
//! ```
//!
//! A link exists as long as its pin does, whatever happens to the process that made it: that
//! is what keeps the redirect in force (fail closed) while the proxy is down.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;
use tollgate_common::prog;

use crate::{sys, BpfError};

/// One of the four attachment points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// `cgroup/connect4` on each target cgroup.
    Connect4,
    /// `cgroup/connect6` on each target cgroup.
    Connect6,
    /// `sockops` on each target cgroup.
    Sockops,
    /// `cgroup/getsockopt` on the proxy's cgroup.
    Getsockopt,
}

impl Hook {
    /// Every hook, in attach order.
    pub const ALL: [Hook; 4] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sockops,
        Hook::Getsockopt,
    ];
    /// The hooks attached to every target cgroup. Sockops goes first so that no connect can
    /// be redirected on a cgroup before its record can be re-keyed.
    pub(crate) const TARGET: [Hook; 3] = [Hook::Sockops, Hook::Connect4, Hook::Connect6];

    /// The short name used in pins and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sockops => "sockops",
            Hook::Getsockopt => "getsockopt",
        }
    }

    /// The program's function name in the eBPF object (and in the kernel).
    pub const fn program(self) -> &'static str {
        match self {
            Hook::Connect4 => prog::CONNECT4,
            Hook::Connect6 => prog::CONNECT6,
            Hook::Sockops => prog::SOCKOPS,
            Hook::Getsockopt => prog::GETSOCKOPT,
        }
    }

    pub(crate) const fn attach_type(self) -> u32 {
        match self {
            Hook::Connect4 => sys::BPF_CGROUP_INET4_CONNECT,
            Hook::Connect6 => sys::BPF_CGROUP_INET6_CONNECT,
            Hook::Sockops => sys::BPF_CGROUP_SOCK_OPS,
            Hook::Getsockopt => sys::BPF_CGROUP_GETSOCKOPT,
        }
    }

    fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A file in `links/`: what its name says (hook, cgroup id), if it parses, and its path.
pub(crate) type PinnedLinkEntry = (Option<(Hook, u64)>, PathBuf);

/// Paths inside one pin directory.
#[derive(Debug, Clone)]
pub(crate) struct PinLayout {
    pub(crate) root: PathBuf,
}

impl PinLayout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub(crate) fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub(crate) fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub(crate) fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub(crate) fn prog(&self, hook: Hook) -> PathBuf {
        self.progs().join(hook.name())
    }

    pub(crate) fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub(crate) fn link(&self, hook: Hook, cgroup_id: u64) -> PathBuf {
        self.links().join(format!("{}-{cgroup_id}", hook.name()))
    }

    pub(crate) fn create_dirs(&self) -> Result<(), BpfError> {
        for dir in [self.root.clone(), self.maps(), self.progs(), self.links()] {
            fs::create_dir_all(&dir).map_err(|source| BpfError::Pin {
                action: "creating",
                path: dir,
                source,
            })?;
        }
        Ok(())
    }

    /// The pinned links: (hook, cgroup id, pin path). Files that do not parse (such as a
    /// `_new` left by a crash between pin and rename) are returned as `None`.
    pub(crate) fn pinned_links(&self) -> io::Result<Vec<PinnedLinkEntry>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.links()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((parse_link_name(&name), entry.path()));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

/// Parses `<hook>-<cgroup id>`.
pub(crate) fn parse_link_name(name: &str) -> Option<(Hook, u64)> {
    let (hook, id) = name.rsplit_once('-')?;
    Some((Hook::from_name(hook)?, id.parse().ok()?))
}

/// Pins `fd` at `path`, atomically replacing whatever was pinned there.
///
/// The object is pinned under a temporary name first and renamed over `path`: there is never
/// a moment where neither the old nor the new object is pinned, and the old one is released
/// by the kernel as soon as its pin is gone (for a link: detached).
pub(crate) fn pin_replace(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), BpfError> {
    // bpffs rejects names containing '.' (EPERM): the temporary suffix has none.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("_new");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BpfError::Pin {
                action: "removing",
                path: tmp,
                source,
            })
        }
    }
    sys::obj_pin(fd, &tmp).map_err(|source| BpfError::Pin {
        action: "pinning",
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| BpfError::Pin {
        action: "renaming a pin onto",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf/x"));
        for hook in Hook::ALL {
            let path = layout.link(hook, 4026531835);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_link_name(name), Some((hook, 4026531835)));
        }
        assert_eq!(parse_link_name("connect4-12_new"), None);
        assert_eq!(parse_link_name("bogus-12"), None);
    }
}
