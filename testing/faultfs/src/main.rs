//! `faultfs`: a FUSE passthrough filesystem that injects faults into chosen files, so that
//! blockmap's tests meet real I/O errors, short reads and writes, lying sizes and slow reads
//! through the kernel, exactly as a program would on a failing disk or a network filesystem.
//! It is the single place that documents the fault tokens.
//!
//! # Running it
//! `faultfs BACKING_DIR MOUNTPOINT` mounts a passthrough of `BACKING_DIR` at `MOUNTPOINT` and
//! serves until the filesystem is unmounted (`umount MOUNTPOINT`; it then exits 0), or until
//! SIGINT, SIGTERM or SIGHUP, on which it unmounts (lazily if the mount is busy) and exits 0.
//! It needs root (it mounts through `/dev/fuse` itself; no `fusermount3` is involved), and
//! mounts with `allow_other,default_permissions`, so every user may use the mount under the
//! usual permission checks; files a user creates belong to that user. `cargo xtask fs-test`
//! starts it for the filesystem tests (`BLOCKMAP_FS_TEST_FAULTFS`).
//!
//! The passthrough supports what a copy tool needs: lookup, stat, chmod/chown/utimens,
//! truncate, open/create, read, write, flush (close), fsync, fallocate, lseek SEEK_DATA and
//! SEEK_HOLE (answered by the backing file, so holes are visible), mkdir, mknod (FIFOs),
//! symlink/readlink, unlink, rmdir, rename, readdir and statfs. No hard links, no xattrs, and
//! FIEMAP never works (FUSE does not pass it on). Attributes and entries are never cached by
//! the kernel (TTL 0), so `stat` reflects a change at once.
//!
//! # The control file
//! Faults are set by writing lines to `MOUNTPOINT/.faultfs`, a file that exists only at the
//! root of the mount (not in the backing directory). Each `write(2)` must hold whole lines;
//! it applies all of its lines or, if one is bad, none, and fails with EINVAL (the reason goes
//! to faultfs's stderr). Reading the file lists the faults set now, as `set` lines.
//!
//! - `set RELPATH FAULT [FAULT...]`: the faults of `RELPATH` become exactly these.
//! - `clear RELPATH`: `RELPATH` has no fault any more.
//! - `clear-all`: no path has a fault.
//! - Blank lines and lines starting with `#` are ignored.
//!
//! `RELPATH` is relative to the mount root (a leading `/` is ignored, `..` is refused, no
//! spaces). Faults belong to the path, not to a file: they apply to whatever is at that path
//! now, also to a file created there later (a copy's destination) and after an unlink and a
//! new create; a rename does not carry them along. They are looked up on every operation, but
//! a file gets direct I/O only if it had a fault when it was opened.
//!
//! # Faults
//! `OFF` and `N` are decimal byte counts (milliseconds for the delay).
//!
//! | token | effect |
//! | --- | --- |
//! | `read-eio=OFF` | a read starting before OFF returns at most the bytes before OFF; a read starting at or after OFF fails with EIO |
//! | `short-read=N` | each read returns at most N bytes (N ≥ 1) |
//! | `read-delay-ms=N` | each read is answered N ms late, from a thread of its own: other requests, on this file or another, go on meanwhile. A signal does not cut the read short (faultfs does not take FUSE interrupts): a handled signal that arrives meanwhile is seen when the read returns, a fatal one ends the program at once |
//! | `write-eio=OFF` | a write starting before OFF writes only the bytes before OFF and returns that count; a write starting at or after OFF fails with EIO |
//! | `write-enospc=OFF` | the same with ENOSPC |
//! | `write-edquot=OFF` | the same with EDQUOT (when several `write-*` are set, the lowest OFF counts) |
//! | `short-write=N` | each write accepts at most N bytes (N ≥ 1) |
//! | `flush-eio` | every close(2) fails with EIO (FUSE flush); the data is written all the same |
//! | `fsync-eio` | fsync(2) and fdatasync(2) fail with EIO |
//! | `truncate-eio` | truncate(2) and ftruncate(2) fail with EIO (so does `open` with `O_TRUNC` of an existing file) |
//! | `fallocate-eopnotsupp` | fallocate(2) fails with EOPNOTSUPP, whatever its mode |
//! | `size=N` | stat reports size N whatever the backing file holds; reads still return the backing file's bytes, up to its real end |
//! | `no-seek` | lseek SEEK_DATA and SEEK_HOLE fail with EINVAL (the other whences work) |
//! | `read-corrupt=OFF` | every read covering byte OFF returns that byte with its bits flipped (the backing file keeps it true): a disk that always reads one byte wrong |
//! | `read-corrupt-once=OFF` | the first read covering byte OFF returns it flipped, later reads are true: the fault is spent, and gone from the listing (a card that read one byte wrong once) |
//! | `write-corrupt-once=OFF` | the first write covering byte OFF stores it flipped in the backing file (and succeeds): a write that did not land right, which a rewrite mends; the fault is then spent |
//!
//! A file with any fault is opened with direct I/O (`FOPEN_DIRECT_IO`): the page cache is
//! bypassed, every read and write reaches faultfs at the offset and (up to FUSE's request
//! size, 1 MiB here) the length the program used, the program sees each short count as it
//! was answered, and reads are not cut at the (possibly lying) size. Files without faults go
//! through the page cache like on any FUSE filesystem.

// A command-line program: stderr is its log.
#![allow(clippy::print_stderr)]

mod faults;
mod fs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use rustix::mount::UnmountFlags;

use crate::faults::FaultTable;
use crate::fs::FaultFs;

/// Threads serving requests, so that one slow request does not hold up the others.
const THREADS: usize = 4;
/// How long to wait for the session to end after unmounting on a signal.
const STOP_GRACE: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: faultfs BACKING_DIR MOUNTPOINT\n\
    Mounts a fault-injecting passthrough of BACKING_DIR at MOUNTPOINT; faults are set by \
    writing to MOUNTPOINT/.faultfs (see the crate documentation).";

enum Event {
    Signal,
    Ended(std::io::Result<()>),
}

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(Path::new(backing), Path::new(mountpoint)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(backing: &Path, mountpoint: &Path) -> Result<(), String> {
    // Modes of created files are the caller's, already masked by the kernel.
    rustix::process::umask(rustix::fs::Mode::empty());
    let backing = backing
        .canonicalize()
        .map_err(|e| format!("{}: {e}", backing.display()))?;
    let mountpoint: PathBuf = mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let filesystem = FaultFs::new(backing.clone(), Arc::new(FaultTable::default()))
        .map_err(|e| format!("{}: {e}", backing.display()))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".to_owned()),
        MountOption::Subtype("faultfs".to_owned()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(THREADS);
    // Signals are caught before the mount appears: whoever sees it mounted may stop it at once.
    let (events, event) = mpsc::channel();
    let ended = events.clone();
    ctrlc::set_handler(move || {
        let _ = events.send(Event::Signal);
    })
    .map_err(|e| format!("cannot handle signals: {e}"))?;
    let session = Session::new(filesystem, &mountpoint, &config)
        .map_err(|e| format!("cannot mount on {}: {e}", mountpoint.display()))?;
    let serving = thread::spawn(move || {
        let _ = ended.send(Event::Ended(session.run()));
    });
    eprintln!(
        "faultfs: serving {} at {}",
        backing.display(),
        mountpoint.display()
    );

    match event.recv() {
        Ok(Event::Ended(result)) => {
            let _ = serving.join();
            result.map_err(|e| format!("the session failed: {e}"))
        }
        Ok(Event::Signal) | Err(_) => {
            // The session ends once the kernel lets go of the mount. A lazily detached one is
            // held by its open files as long as they are open: exiting closes /dev/fuse, which
            // ends it for good (those files then fail with ENOTCONN).
            if unmount(&mountpoint) {
                loop {
                    match event.recv_timeout(STOP_GRACE) {
                        Ok(Event::Ended(_)) | Err(_) => break,
                        Ok(Event::Signal) => {}
                    }
                }
            }
            Ok(())
        }
    }
}

/// Unmounts, lazily if the mount is busy; true if it is gone for good.
fn unmount(mountpoint: &Path) -> bool {
    match rustix::mount::unmount(mountpoint, UnmountFlags::empty()) {
        Ok(()) => {
            eprintln!("faultfs: unmounted {}", mountpoint.display());
            true
        }
        // Not mounted any more: someone else detached it lazily.
        Err(rustix::io::Errno::INVAL) => false,
        Err(e) => {
            match rustix::mount::unmount(mountpoint, UnmountFlags::DETACH) {
                Ok(()) => eprintln!(
                    "faultfs: {} was busy ({e}); detached it lazily",
                    mountpoint.display()
                ),
                Err(e2) => {
                    eprintln!(
                        "faultfs: cannot unmount {}: {e}; {e2}",
                        mountpoint.display()
                    );
                }
            }
            false
        }
    }
}
