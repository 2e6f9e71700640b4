//! The one error type of this crate.

use std::{io, path::PathBuf};

/// Everything that can go wrong while checking the host, loading, attaching, reading or
/// detaching Tollgate's eBPF programs. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BpfError {
    /// The kernel exposes no BTF, which CO-RE loading needs.
    #[error("kernel BTF not found at {path}: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer), or use the iptables/nft REDIRECT fallback")]
    NoBtf {
        /// Where BTF was expected.
        path: PathBuf,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup2 file system is mounted: mount one (`mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy=1")]
    NoCgroup2Mount,
    /// A configured cgroup path does not exist or cannot be opened.
    #[error("cgroup {path} cannot be opened: create it or fix the configured path (it must be a cgroup2 directory)")]
    CgroupMissing {
        /// The configured path.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: io::Error,
    },
    /// A configured cgroup path exists but is not in a cgroup v2 hierarchy.
    #[error("{path} is not a cgroup2 directory: use a path under the cgroup2 mount ({mount})")]
    NotCgroup2 {
        /// The configured path.
        path: PathBuf,
        /// The cgroup2 mount point found on this host.
        mount: String,
    },
    /// The process lacks the capabilities to load and attach the programs.
    #[error("missing capabilities {missing}: run as root, or grant CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) to the binary")]
    MissingCapability {
        /// The capabilities that are missing, comma separated.
        missing: String,
    },
    /// The BPF file system is not mounted where pins go, and mounting it failed.
    #[error("no BPF file system at {path} and mounting it failed: run `mount -t bpf bpf {path}` (or add `bpf /sys/fs/bpf bpf defaults 0 0` to /etc/fstab)")]
    BpffsUnavailable {
        /// Where bpffs was expected.
        path: PathBuf,
        /// Why mounting failed.
        #[source]
        source: io::Error,
    },
    /// The pin directory is not on a BPF file system.
    #[error(
        "pin directory {path} is not on a BPF file system: choose a directory under /sys/fs/bpf"
    )]
    NotBpffs {
        /// The configured pin directory.
        path: PathBuf,
    },
    /// The embedded eBPF object is empty: the crate was built with `AYA_BUILD_SKIP`.
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP was set): rebuild without it, with bpf-linker and rust-src installed")]
    ObjectMissing,
    /// The eBPF object could not be loaded (maps created or reused, relocations applied).
    #[error("loading the eBPF object failed: check `dmesg` and that the kernel is 5.15 or newer; if pinned maps come from an incompatible version, run `tollgate detach` first")]
    Load(#[source] aya::EbpfError),
    /// A program failed to load (usually the verifier) or is missing from the object.
    #[error("eBPF program {program} could not be loaded: the verifier log above says why; this kernel may lack a helper the program uses")]
    Program {
        /// The program name.
        program: &'static str,
        /// The aya error, carrying the verifier log.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map could not be opened, read or written.
    #[error("eBPF map {map} could not be used: if its pin is stale, run `tollgate detach` and attach again")]
    Map {
        /// The map name.
        map: &'static str,
        /// The aya error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A program could not be attached to a cgroup.
    #[error("attaching {hook} to cgroup {cgroup} failed: another tool may hold an exclusive (non-multi) attachment there; inspect with `bpftool cgroup show {cgroup}`")]
    Attach {
        /// The hook being attached.
        hook: &'static str,
        /// The cgroup path.
        cgroup: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A file-system operation on the pin directory (or a cgroup) failed.
    #[error("{action} {path} failed: check that the path is on bpffs and writable by this user")]
    Pin {
        /// What was being done (`pinning`, `removing`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}
