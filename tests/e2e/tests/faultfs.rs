//! The fault-injecting file system the audit suite puts a spool on (`tollgate-faultfs`,
//! `src/bin/faultfs.rs`): it passes through every operation the spool uses, its syncs fail with
//! EIO while told to and work again after, and the real spool on it breaks as documented.
//! Needs root and /dev/fuse.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use tollgate_audit::{spool, Event, EventKind, HostKey, Spool, SpoolOptions};
use tollgate_e2e::faultfs::FaultFs;
use tollgate_e2e::Scratch;

fn eio(r: std::io::Result<()>, what: &str) {
    match r {
        Ok(()) => panic!("{what} succeeded while fsync is failing"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
    }
}

#[test]
fn fsync_fails_with_eio_while_told_to_and_works_again_after() -> Result<()> {
    let scratch = Scratch::new("faultfs")?;
    let ffs = FaultFs::mount(&scratch)?;
    let dir = ffs.path().join("d");
    fs::create_dir(&dir)?;
    let path = dir.join("f.log");
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(b"hello ")?;
    f.sync_data()?;
    f.sync_all()?;
    File::open(&dir)?.sync_all()?;
    assert_eq!(fs::read(ffs.backing().join("d/f.log"))?, b"hello ");

    ffs.fail_fsync(true)?;
    // Writes still work; only making them durable fails.
    f.write_all(b"world")?;
    eio(f.sync_data(), "fdatasync");
    eio(f.sync_all(), "fsync");
    eio(File::open(&dir)?.sync_all(), "a directory's fsync");
    assert_eq!(fs::read(&path)?, b"hello world", "what was written stays");

    ffs.fail_fsync(false)?;
    f.sync_data()?;
    f.sync_all()?;
    File::open(&dir)?.sync_all()?;
    Ok(())
}

/// What the audit spool does to its directory, through the mount.
#[test]
fn what_the_spool_does_passes_through() -> Result<()> {
    let scratch = Scratch::new("faultfs-ops")?;
    let ffs = FaultFs::mount(&scratch)?;
    let dir = ffs.path().join("spool/quarantine");
    fs::create_dir_all(&dir)?;
    let dir = ffs.path().join("spool");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        fs::metadata(ffs.backing().join("spool"))?
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );

    // A segment appended to, reopened for appending (O_APPEND honoured), read back, cut back.
    let seg = dir.join("seg-0.log");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&seg)?
        .write_all(b"0123456789")?;
    let mut f = OpenOptions::new().append(true).open(&seg)?;
    f.write_all(b"abc")?;
    f.sync_data()?;
    assert_eq!(f.metadata()?.len(), 13);
    f.set_len(10)?;
    f.sync_data()?;
    assert_eq!(fs::metadata(&seg)?.len(), 10);
    f.write_all(b"XY")?;
    let mut back = String::new();
    File::open(&seg)?.read_to_string(&mut back)?;
    assert_eq!(back, "0123456789XY");
    assert_eq!(
        fs::read(ffs.backing().join("spool/seg-0.log"))?,
        b"0123456789XY"
    );

    // A file replaced atomically: a tmp file written and synced, renamed, the directory synced.
    for content in ["one", "two"] {
        let tmp = dir.join(".heads.tmp");
        let mut t = File::create(&tmp)?;
        t.write_all(content.as_bytes())?;
        t.sync_all()?;
        fs::rename(&tmp, dir.join("seg-0.heads"))?;
        File::open(&dir)?.sync_all()?;
        assert_eq!(fs::read_to_string(dir.join("seg-0.heads"))?, content);
        assert!(!tmp.exists());
    }

    // The listing.
    let mut names: Vec<String> = fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(names, ["quarantine", "seg-0.heads", "seg-0.log"]);
    // Many entries: readdir resumes where it stopped.
    for i in 0..300 {
        fs::write(dir.join("quarantine").join(format!("q-{i:04}.json")), b"{}")?;
    }
    assert_eq!(fs::read_dir(dir.join("quarantine"))?.count(), 300);

    // Removals, and a statfs with real numbers.
    fs::remove_file(dir.join("seg-0.heads"))?;
    assert!(!ffs.backing().join("spool/seg-0.heads").exists());
    fs::remove_dir_all(dir.join("quarantine"))?;
    assert!(!ffs.backing().join("spool/quarantine").exists());
    let c = std::ffi::CString::new(ffs.path().as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct; `c` is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(
        st.f_blocks > 0 && st.f_bsize > 0,
        "statfs: {} blocks",
        st.f_blocks
    );
    Ok(())
}

/// Chain and kind of each event.
fn kinds(events: &[Event]) -> Vec<(&str, EventKind)> {
    events
        .iter()
        .map(|e| (e.session_id.as_str(), e.kind))
        .collect()
}

/// The real spool on a file system whose `fdatasync` fails: the append whose sync failed is
/// refused, and so is every later one even once syncs work again (a later sync proves nothing
/// about what the failed one covered), until the spool is opened again, which reads what the
/// file system holds and carries on.
#[tokio::test]
async fn a_failed_fdatasync_breaks_the_spool_until_it_is_reopened() -> Result<()> {
    let scratch = Scratch::new("faultfs-spool")?;
    let ffs = FaultFs::mount(&scratch)?;
    let dir = ffs.path().join("spool");
    let key = scratch.join("audit.key");
    let open = || -> Result<(Spool, tollgate_audit::Recovery)> {
        let key = HostKey::load_or_create(&key)?;
        Ok(Spool::open(SpoolOptions::new(&dir, "host-a"), key)?)
    };
    let (spool, _) = open()?;
    spool.append(Event::new(EventKind::Login, "s1")).await?;

    ffs.fail_fsync(true)?;
    let err = spool
        .append(Event::new(EventKind::Query, "s1"))
        .await
        .expect_err("an append whose fdatasync failed");
    eprintln!("with fsync failing: {err}");
    assert!(err.to_string().contains("fdatasync failed"), "{err}");

    ffs.fail_fsync(false)?;
    let err = spool
        .append(Event::new(EventKind::Query, "s1"))
        .await
        .expect_err("the spool stays broken");
    eprintln!("with fsync working again: {err}");
    assert!(err.to_string().contains("fdatasync failed"), "{err}");
    assert!(spool.broken().is_some());
    // The broken spool wrote nothing more: the login, and the query whose sync failed (it was
    // written; whether it would have survived a power loss is what nobody knows).
    let before = spool::read_all(&dir)?;
    assert_eq!(
        kinds(&before),
        [("s1", EventKind::Login), ("s1", EventKind::Query)]
    );
    drop(spool);

    // Opened again (Tollgate restarted): it recovers and appends.
    let (spool, recovery) = open()?;
    assert_eq!(recovery.closed_chains, 1, "{recovery:?}");
    spool.append(Event::new(EventKind::Login, "s2")).await?;
    let all = spool::read_all(&dir)?;
    assert_eq!(
        kinds(&all),
        [
            ("s1", EventKind::Login),
            ("s1", EventKind::Query),
            ("s1", EventKind::SessionEnd),
            ("s2", EventKind::Login),
        ]
    );
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.host_seq, i as u64, "{e:?}");
    }
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert_eq!(
        all[2].prev_hash, all[1].hash,
        "the chain goes on after the break"
    );
    Ok(())
}
