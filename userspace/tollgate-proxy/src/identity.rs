//! Who opened a connection: the [`ProcessIdentity`] captured by the redirect hooks (the type
//! lives in `tollgate-identity`, shared with the Snowflake layer, the policy and the audit
//! trail), the [`Redirects`] seam through which the proxy receives it, and enrichment from
//! `/proc`.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::net::TcpStream;

/// The process behind a redirected connection: the shared type, filled here (the redirect
/// record through [`Redirects`], then [`ProcFs::enrich`]).
pub use tollgate_identity::ProcessIdentity;

/// Where the proxy learns what the redirect hooks knew about a connection.
///
/// In production this is backed by the eBPF maps (the `tollgate-bpf` crate); tests supply a
/// fixed answer.
pub trait Redirects: Send + Sync + 'static {
    /// Process identity recorded by the redirect hooks for this client address (consumed:
    /// called once per connection).
    fn take_identity(&self, client: SocketAddr) -> Option<ProcessIdentity>;

    /// The connection's original destination. The default asks the kernel
    /// (`SO_ORIGINAL_DST`, see [`crate::orig_dst`]); override only to inject a destination
    /// in tests.
    fn original_dst(
        &self,
        client: SocketAddr,
        stream: &TcpStream,
    ) -> io::Result<Option<SocketAddr>> {
        let _ = client;
        crate::orig_dst::original_dst(stream)
    }
}

/// A [`Redirects`] with no identity source: original destinations from `SO_ORIGINAL_DST`
/// only (the iptables/nft `REDIRECT` fallback).
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelRedirectsOnly;

impl Redirects for KernelRedirectsOnly {
    fn take_identity(&self, _client: SocketAddr) -> Option<ProcessIdentity> {
        None
    }
}

/// Where to read process facts from: `/proc` and the cgroup2 mount.
#[derive(Debug, Clone)]
pub struct ProcFs {
    proc_root: PathBuf,
    cgroup2_mount: Option<PathBuf>,
}

/// The most directories visited when resolving a cgroup id by inode, so that a huge cgroup
/// tree cannot stall a blocking thread.
const MAX_CGROUP_DIRS_VISITED: usize = 20_000;

impl ProcFs {
    /// The running system: `/proc`, and the cgroup2 mount found in `/proc/self/mountinfo`
    /// (on this project's hosts `/sys/fs/cgroup/unified`, elsewhere usually `/sys/fs/cgroup`).
    pub fn system() -> Self {
        let cgroup2_mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| find_cgroup2_mount(&info));
        ProcFs {
            proc_root: PathBuf::from("/proc"),
            cgroup2_mount,
        }
    }

    /// Explicit roots (for tests and unusual mounts).
    pub fn new(proc_root: impl Into<PathBuf>, cgroup2_mount: Option<PathBuf>) -> Self {
        ProcFs {
            proc_root: proc_root.into(),
            cgroup2_mount,
        }
    }

    /// Fills `exe` and `cgroup_path` where missing. Blocking file-system reads: run it on a
    /// blocking thread.
    ///
    /// Process ids are reused: when `/proc/<tgid>/comm` no longer matches the recorded `comm`
    /// the process is treated as gone and nothing is filled in from `/proc/<tgid>`.
    pub fn enrich(&self, identity: &mut ProcessIdentity) {
        let proc_dir = self.proc_root.join(identity.tgid.to_string());
        let same_process = fs::read_to_string(proc_dir.join("comm"))
            .map(|comm| comm.trim_end_matches('\n') == identity.comm)
            .unwrap_or(false);
        if same_process {
            if identity.exe.is_none() {
                identity.exe = fs::read_link(proc_dir.join("exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned());
            }
            if identity.cgroup_path.is_none() {
                identity.cgroup_path = fs::read_to_string(proc_dir.join("cgroup"))
                    .ok()
                    .and_then(|text| unified_cgroup_path(&text));
            }
        }
        if identity.cgroup_path.is_none() && identity.cgroup_id != 0 {
            if let Some(mount) = &self.cgroup2_mount {
                identity.cgroup_path = find_cgroup_by_inode(mount, identity.cgroup_id);
            }
        }
    }
}

/// The cgroup v2 entry (`0::/path`) of a `/proc/<pid>/cgroup` file.
fn unified_cgroup_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point options ... - fstype source super-options
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Breadth-first search for the directory whose inode number is the cgroup id.
fn find_cgroup_by_inode(mount: &Path, cgroup_id: u64) -> Option<String> {
    let mut queue = std::collections::VecDeque::from([mount.to_path_buf()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > MAX_CGROUP_DIRS_VISITED {
            return None;
        }
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == cgroup_id {
            let relative = dir.strip_prefix(mount).ok()?;
            return Some(format!("/{}", relative.to_string_lossy()));
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                queue.push_back(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_and_mountinfo() {
        assert_eq!(
            unified_cgroup_path("12:cpu:/x\n0::/agents.slice/a.scope\n").as_deref(),
            Some("/agents.slice/a.scope")
        );
        let info = "24 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn enriches_own_process() {
        let procfs = ProcFs::system();
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        let mut me = ProcessIdentity {
            tgid: std::process::id(),
            comm: comm.trim_end().to_string(),
            ..Default::default()
        };
        procfs.enrich(&mut me);
        assert_eq!(
            me.exe.as_deref().map(Path::new),
            Some(std::env::current_exe().unwrap().as_path())
        );
        assert!(me.cgroup_path.is_some());

        // A recycled pid (different comm) is not attributed.
        let mut stranger = ProcessIdentity {
            tgid: std::process::id(),
            comm: "not-this-one".into(),
            ..Default::default()
        };
        procfs.enrich(&mut stranger);
        assert_eq!(stranger.exe, None);
    }

    #[test]
    fn resolves_cgroup_id_by_inode() {
        // CI and every supported host mount cgroup2 (Tollgate refuses to run without it), so
        // its absence is a broken test host, not a reason to pass.
        let mount = ProcFs::system().cgroup2_mount.expect(
            "no cgroup2 mount in /proc/self/mountinfo: this test needs one \
             (mount -t cgroup2 none /sys/fs/cgroup/unified)",
        );
        let own = unified_cgroup_path(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
        let dir = mount.join(own.trim_start_matches('/'));
        let id = fs::metadata(&dir).unwrap().ino();
        assert_eq!(find_cgroup_by_inode(&mount, id), Some(own));
    }
}
