//! Host checks: BTF, capabilities, cgroup2, bpffs. Everything `preflight` verifies, and the
//! helpers the loader and `status` share (cgroup ids, finding a cgroup by id).

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::{BpfError, RedirectConfig};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Checks that this host and process can run the redirect described by `cfg`, mounting bpffs
/// at `/sys/fs/bpf` when the pin directory lives there and it is not mounted yet.
///
/// Errors name what is missing and how to fix it: no BTF, no cgroup2 mount, a configured
/// cgroup that is missing or not cgroup2, missing capabilities, no usable bpffs.
pub fn preflight(cfg: &RedirectConfig) -> Result<(), BpfError> {
    if !Path::new(BTF_PATH).exists() {
        return Err(BpfError::NoBtf {
            path: BTF_PATH.into(),
        });
    }
    check_capabilities()?;
    let mount = cgroup2_mount()?.ok_or(BpfError::NoCgroup2Mount)?;
    for path in cfg.cgroups.iter().chain(std::iter::once(&cfg.proxy_cgroup)) {
        check_cgroup2_dir(path, &mount)?;
    }
    ensure_bpffs(&cfg.pin_dir)
}

fn check_capabilities() -> Result<(), BpfError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    Err(BpfError::MissingCapability {
        missing: missing.join(", "),
    })
}

/// The first cgroup2 mount point in `/proc/self/mountinfo` (`None` when cgroup2 is not
/// mounted).
pub fn cgroup2_mount() -> Result<Option<PathBuf>, BpfError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|source| BpfError::Pin {
        action: "reading",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    // Fields: id parent major:minor root mountpoint options... - fstype source superopts
    Ok(mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    }))
}

fn statfs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn check_cgroup2_dir(path: &Path, mount: &Path) -> Result<(), BpfError> {
    let meta = fs::metadata(path).map_err(|source| BpfError::CgroupMissing {
        path: path.to_owned(),
        source,
    })?;
    let magic = statfs_magic(path).map_err(|source| BpfError::CgroupMissing {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() || magic != CGROUP2_SUPER_MAGIC {
        return Err(BpfError::NotCgroup2 {
            path: path.to_owned(),
            mount: mount.display().to_string(),
        });
    }
    Ok(())
}

/// Makes sure `pin_dir` can be created on a BPF file system, mounting bpffs at `/sys/fs/bpf`
/// if that is where it goes and nothing is mounted there yet.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    // The nearest existing ancestor decides which file system the pins land on.
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if statfs_magic(existing).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && root.is_dir() {
        mount_bpffs(root)?;
        if statfs_magic(root).ok() == Some(BPF_FS_MAGIC) {
            return Ok(());
        }
    }
    Err(BpfError::NotBpffs {
        path: pin_dir.to_owned(),
    })
}

fn mount_bpffs(at: &Path) -> Result<(), BpfError> {
    let err = |source| BpfError::BpffsUnavailable {
        path: at.to_owned(),
        source,
    };
    let target = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at {}", at.display());
    Ok(())
}

/// The cgroup v2 id of the cgroup directory at `path`: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks in it.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// Finds the directory of the cgroup with id `id` under the cgroup2 mount, if it still exists.
pub(crate) fn find_cgroup(id: u64) -> Option<PathBuf> {
    let mount = cgroup2_mount().ok()??;
    let mut stack = vec![(mount, 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        if cgroup_id(&dir).ok() == Some(id) {
            return Some(dir);
        }
        if depth >= 32 {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    None
}
