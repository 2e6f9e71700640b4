//! A real file system whose `fsync` fails on demand: `tollgate-faultfs` (`src/bin/faultfs.rs`,
//! a passthrough FUSE file system) mounted for one test. This kernel has neither device-mapper
//! (dm-flakey) nor fault injection, so this is how a test meets a failing `fdatasync`.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let scratch = tollgate_e2e::Scratch::new("faultfs")?;
//! let fs = tollgate_e2e::faultfs::FaultFs::mount(&scratch)?;
//! let spool = fs.path().join("spool"); // a spool on it: `--spool <that>`
//! fs.fail_fsync(true)?; // every fsync / fdatasync / directory fsync answers EIO
//! fs.fail_fsync(false)?; // and works again
//! # Ok(()) }
//! ```
//!
//! Dropping it unmounts (SIGTERM to the server; `umount -l` when that did not do it) and stops
//! the server. Drop it before whatever still has files open in it, and before the [`Scratch`]
//! it lives in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{unique_tag, workspace_bin, Scratch, Service};

/// The line the server prints once the file system answers.
const READY: &str = "faultfs ready";
/// The control file the server looks for at each sync.
const FAIL_FSYNC: &str = "fail-fsync";

/// A mounted `tollgate-faultfs`.
pub struct FaultFs {
    service: Option<Service>,
    mountpoint: PathBuf,
    backing: PathBuf,
    control: PathBuf,
}

impl FaultFs {
    /// The server binary (built with the workspace's binaries).
    pub fn bin() -> PathBuf {
        workspace_bin("tollgate-faultfs")
    }

    /// Mounts a fresh, empty file system under `scratch` and waits until it answers.
    pub fn mount(scratch: &Scratch) -> Result<Self> {
        let base = scratch.join(&format!("faultfs-{}", unique_tag()));
        let backing = base.join("backing");
        let mountpoint = base.join("mnt");
        let control = base.join("control");
        for d in [&backing, &mountpoint, &control] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // As /proc/mounts will name it.
        let mountpoint = mountpoint.canonicalize()?;
        let mut cmd = Command::new(Self::bin());
        cmd.arg("--control")
            .arg(&control)
            .arg(&backing)
            .arg(&mountpoint);
        let service = Service::spawn(cmd, &base.join("faultfs.log")).with_context(|| {
            format!(
                "starting {} (built by `cargo build -p tollgate-e2e --bins`)",
                Self::bin().display()
            )
        })?;
        // From here on Drop cleans up, whatever fails.
        let mut fs = FaultFs {
            service: Some(service),
            mountpoint,
            backing,
            control,
        };
        fs.service
            .as_mut()
            .expect("just set")
            .wait_line(Duration::from_secs(30), |l| l == READY)
            .context("waiting for faultfs to mount")?;
        anyhow::ensure!(
            fs.is_mounted(),
            "faultfs said it is ready, but nothing is mounted on {}",
            fs.mountpoint.display()
        );
        Ok(fs)
    }

    /// The mount point: what is written here goes through the fault-injecting file system.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory it serves (what the file system holds, seen without it).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Makes every later `fsync`, `fdatasync` and directory `fsync` answer EIO (true), or
    /// sync for real again (false). Takes effect at the next sync.
    pub fn fail_fsync(&self, fail: bool) -> Result<()> {
        let flag = self.control.join(FAIL_FSYNC);
        if fail {
            fs::write(&flag, b"").with_context(|| format!("creating {}", flag.display()))
        } else {
            match fs::remove_file(&flag) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", flag.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Whether a FUSE file system is mounted on [`Self::path`].
    pub fn is_mounted(&self) -> bool {
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next(), f.next(), f.next().unwrap_or_default());
            path.map(Path::new) == Some(self.mountpoint.as_path()) && fstype.starts_with("fuse")
        })
    }

    /// The server's stderr so far (its last lines).
    pub fn log_tail(&self) -> String {
        self.service
            .as_ref()
            .map(Service::log_tail)
            .unwrap_or_default()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            s.signal(libc::SIGTERM);
            if !matches!(s.wait_exit(Duration::from_secs(10)), Ok(Some(_))) {
                eprintln!(
                    "faultfs did not exit on SIGTERM; its log:\n{}",
                    s.log_tail()
                );
            }
            if self.is_mounted() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
            // Killed here if it is still running.
            drop(s);
        }
        if self.is_mounted() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
