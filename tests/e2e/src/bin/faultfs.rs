//! `tollgate-faultfs`: a passthrough FUSE file system whose `fsync` fails on demand.
//!
//! The audit spool promises that an event is durable before the step it describes goes on, and
//! that a failed `fdatasync` refuses every later step until Tollgate restarts (the kernel may have
//! dropped what the sync covered; a later sync that succeeds proves nothing about it). Testing
//! that needs a real file system whose sync fails. The usual tools are missing on this kernel:
//! no device-mapper (so no dm-flakey or dm-error) and no fault injection
//! (`CONFIG_FAULT_INJECTION` unset). FUSE is there, so this program serves a backing directory's
//! tree and answers EIO to syncs while it is told to.
//!
//! ```text
//! tollgate-faultfs --control CONTROL_DIR BACKING_DIR MOUNTPOINT
//! ```
//!
//! - Every operation the spool uses is passed through to `BACKING_DIR`: lookup, getattr,
//!   setattr (mode, owner, size, times), mkdir, create, open, read, write (an `O_APPEND` file
//!   appends), flush, release, fsync, opendir, readdir, releasedir, fsyncdir, rename, unlink,
//!   rmdir, statfs. Writes reach the backing file at once; a sync that is let through syncs it.
//! - While a file named `fail-fsync` exists in `CONTROL_DIR` (keep it outside the mount), every
//!   `fsync`/`fdatasync` of a file and every `fsync` of a directory answers EIO, and nothing is
//!   synced. What was written stays readable, as after a disk's failed cache flush.
//! - `faultfs ready` is printed on stdout once the file system is mounted and answering.
//! - SIGTERM or SIGINT unmounts it (lazily when it is busy) and exits.
//!
//! The mount is fuser's pure-Rust one: as root it calls mount(2) on `/dev/fuse` itself, so
//! neither libfuse nor `fusermount` is needed (fuser's `AutoUnmount` would need `fusermount`:
//! it is not used; the signal handler unmounts instead). Only root may use the mount (FUSE's
//! default: the mounting user), which is who runs Tollgate in the end-to-end suites.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    TimeOrNow, WriteFlags,
};

/// The control file: while it exists, syncs fail.
const FAIL_FSYNC: &str = "fail-fsync";
/// Attributes and entries are not cached: every access asks the backing directory, so what a
/// test changes there directly is seen at once.
const TTL: Duration = Duration::ZERO;

#[derive(Parser)]
#[command(
    about = "A passthrough FUSE file system whose fsync fails while CONTROL/fail-fsync exists"
)]
struct Args {
    /// Directory watched for `fail-fsync` (outside the mount).
    #[arg(long, value_name = "DIR")]
    control: PathBuf,
    /// The directory whose tree is served.
    backing: PathBuf,
    /// Where it is mounted.
    mountpoint: PathBuf,
}

/// Inode numbers of the paths handed to the kernel (1 is the root).
struct Inodes {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    fn new(root: PathBuf) -> Self {
        Inodes {
            paths: HashMap::from([(INodeNo::ROOT.0, root.clone())]),
            inos: HashMap::from([(root, INodeNo::ROOT.0)]),
            next: INodeNo::ROOT.0 + 1,
        }
    }

    fn ino(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_path_buf());
        self.inos.insert(path.to_path_buf(), ino);
        ino
    }

    /// `path` and everything under it is gone.
    fn remove(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .inos
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.inos.remove(&p) {
                self.paths.remove(&ino);
            }
        }
    }

    /// `from` (and everything under it) is now at `to`; what was at `to` is gone.
    fn rename(&mut self, from: &Path, to: &Path) {
        self.remove(to);
        let moved: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }
}

/// A directory listing taken at opendir, served by readdir.
type Listing = Vec<(u64, FileType, OsString)>;

struct FaultFs {
    fail_flag: PathBuf,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = nanos.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

fn cpath(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// open(2) with the caller's flags, as they are (O_APPEND included): a thin wrapper, so that
/// every flag the kernel passes reaches the backing file.
fn open_raw(path: &Path, flags: i32, mode: u32) -> Result<File, Errno> {
    let c = cpath(path)?;
    let flags = (flags & !(libc::O_NOCTTY | libc::O_DIRECT)) | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid NUL-terminated path; the returned fd is owned by the File.
    let fd = unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl FaultFs {
    fn failing(&self) -> bool {
        self.fail_flag.symlink_metadata().is_ok()
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn handle(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The attributes of `path`, with its inode number (assigned on first sight).
    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let m = path.symlink_metadata().map_err(errno)?;
        let ino = lock(&self.inodes).ino(path);
        Ok(attr(ino, &m))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr_inner(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let path = self.path(ino)?;
        let open = fh.map(|h| self.file(h)).transpose()?;
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
        }
        if let Some(size) = size {
            let cut = match &open {
                Some(f) => f.set_len(size),
                None => fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(size)),
            };
            cut.map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(at(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(at(t));
            }
            File::open(&path)
                .and_then(|f| f.set_times(times))
                .map_err(errno)?;
        }
        let m = match &open {
            Some(f) => f.metadata(),
            None => path.symlink_metadata(),
        }
        .map_err(errno)?;
        Ok(attr(ino.0, &m))
    }

    fn opendir_inner(&self, ino: INodeNo) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let parent = path.parent().filter(|_| ino != INodeNo::ROOT);
        let mut listing: Listing = Vec::new();
        {
            let mut inodes = lock(&self.inodes);
            let up = parent.map_or(ino.0, |p| inodes.ino(p));
            listing.push((ino.0, FileType::Directory, ".".into()));
            listing.push((up, FileType::Directory, "..".into()));
            for e in fs::read_dir(&path).map_err(errno)? {
                let e = e.map_err(errno)?;
                let kind = e
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                listing.push((inodes.ino(&e.path()), kind, e.file_name()));
            }
        }
        let fh = self.handle();
        lock(&self.dirs).insert(fh, Arc::new(listing));
        Ok(fh)
    }

    fn read_inner(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let f = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn statfs_inner(&self) -> Result<libc::statvfs, Errno> {
        let c = cpath(&self.path(INodeNo::ROOT)?)?;
        // SAFETY: statvfs fills the zeroed struct it is given; `c` is a valid path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn answer_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn answer_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer_entry(reply, self.child(parent, name).and_then(|p| self.entry(&p)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open file is asked through its handle: it may have been unlinked meanwhile.
        let m = match fh.map(|h| self.file(h)) {
            Some(Ok(f)) => f.metadata().map_err(errno),
            _ => self
                .path(ino)
                .and_then(|p| p.symlink_metadata().map_err(errno)),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.setattr_inner(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        // The kernel has applied the caller's umask to `mode` already (and ours is 0).
        let r = self.child(parent, name).and_then(|p| {
            fs::DirBuilder::new()
                .mode(mode & 0o7777)
                .create(&p)
                .map_err(errno)?;
            self.entry(&p)
        });
        answer_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            fs::remove_file(&p).map_err(errno)?;
            lock(&self.inodes).remove(&p);
            Ok(())
        });
        answer_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            fs::remove_dir(&p).map_err(errno)?;
            lock(&self.inodes).remove(&p);
            Ok(())
        });
        answer_empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE / EXCHANGE / WHITEOUT: nothing here needs them.
            return reply.error(Errno::EINVAL);
        }
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::rename(&from, &to).map_err(errno)?;
            lock(&self.inodes).rename(&from, &to);
            Ok(())
        });
        answer_empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let f = open_raw(&p, flags.0 & !(libc::O_CREAT | libc::O_EXCL), 0)?;
            let fh = self.handle();
            lock(&self.files).insert(fh, Arc::new(f));
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.child(parent, name).and_then(|p| {
            let f = open_raw(&p, flags | libc::O_CREAT, mode & 0o7777)?;
            let a = self.entry(&p)?;
            let fh = self.handle();
            lock(&self.files).insert(fh, Arc::new(f));
            Ok((a, fh))
        });
        match r {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_inner(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // pwrite on an O_APPEND file appends whatever the offset (Linux): the backing file
        // was opened with the caller's flags, so appends stay appends.
        let r = self
            .file(fh)
            .and_then(|f| f.write_all_at(data, offset).map_err(errno));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the backing file as they come: nothing is buffered here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.failing() {
            return reply.error(Errno::EIO);
        }
        let r = self.file(fh).and_then(|f| {
            let synced = if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            };
            synced.map_err(errno)
        });
        answer_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.opendir_inner(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // Each entry's offset is the position after it: the kernel resumes from there.
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.failing() {
            return reply.error(Errno::EIO);
        }
        let r = self
            .path(ino)
            .and_then(|p| File::open(p).and_then(|d| d.sync_all()).map_err(errno));
        answer_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs_inner() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread and in every thread started after (fuser's), so
/// that [`wait_for`] receives them.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain signal-mask calls on a set built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc)).context("blocking SIGTERM and SIGINT");
        }
        Ok(set)
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: sigwait on a set of signals blocked in every thread.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Unmounts `mnt`; when it is busy (a process still has a file open in it), detaches it: it
/// goes once the last file closes, which our exit forces (its requests then fail ENOTCONN).
fn unmount(mnt: &Path) -> Result<()> {
    let c = CString::new(mnt.as_os_str().as_bytes())?;
    // SAFETY: umount2 on a valid path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        eprintln!("faultfs: {} was busy ({first}): detached", mnt.display());
        return Ok(());
    }
    Err(io::Error::last_os_error()).with_context(|| format!("unmounting {}", mnt.display()))
}

fn run(args: Args) -> Result<()> {
    fs::create_dir_all(&args.control)
        .with_context(|| format!("creating {}", args.control.display()))?;
    let backing = args
        .backing
        .canonicalize()
        .with_context(|| format!("backing directory {}", args.backing.display()))?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    let control = args.control.canonicalize()?;
    // Modes arrive with the caller's umask applied by the kernel: ours must not mask again.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe { libc::umask(0) };
    let signals = block_signals()?;
    let fs = FaultFs {
        fail_flag: control.join(FAIL_FSYNC),
        inodes: Mutex::new(Inodes::new(backing)),
        files: Mutex::new(HashMap::new()),
        dirs: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".into()),
        MountOption::Subtype("faultfs".into()),
    ];
    // Mounts (mount(2) on /dev/fuse, as root) and completes the FUSE handshake.
    let session = Session::new(fs, &mountpoint, &config).with_context(|| {
        format!(
            "mounting on {} (root and /dev/fuse are needed)",
            mountpoint.display()
        )
    })?;
    let background = session.spawn().context("starting the FUSE session")?;
    println!("faultfs ready");
    let sig = wait_for(&signals);
    eprintln!("faultfs: signal {sig}: unmounting {}", mountpoint.display());
    unmount(&mountpoint)?;
    // Not joined: after a detach the session runs until the last file closes, and our exit
    // (which closes /dev/fuse) is what ends it.
    std::mem::forget(background);
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("faultfs: {e:#}");
        std::process::exit(1);
    }
}
