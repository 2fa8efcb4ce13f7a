//! What SRC really holds: sizes that lie (procfs, sysfs, FUSE), and SRC changing under the
//! copy.
//!
//! A size that lies is found before anything is written where it is cheap to ask: a regular
//! SRC on a filesystem of generated files (procfs, sysfs, debugfs…), one that still reads
//! bytes at its stated end (as a FUSE file of stated size 0 may), and on FUSE and network filesystems one whose
//! last stated byte cannot be read. Such a SRC is copied as a stream, read to its end. A
//! lie found only while copying (a read ends early and SRC's stat has not moved) makes the
//! engine stream on from there; a stat that moved is a SRC that changed.

use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::filesystem::{SizeTrust, size_trust};

/// Whether SRC's stated size cannot be trusted, so it must be read to its end: see the
/// module documentation. Only regular files are asked; each question is at most two
/// one-byte reads at the stated end, which never touch a local file's page cache.
pub(crate) fn size_lies(fd: BorrowedFd<'_>, stat: &Stat) -> bool {
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return false;
    }
    let size = stat.st_size as u64;
    let trust = size_trust(fd);
    // A size of 0 is asked like any other: the read at offset 0 gives bytes where it lies.
    let lies = trust == SizeTrust::Generated
        || reads_at(fd, size) == Some(true)
        || (trust == SizeTrust::Remote && size > 0 && reads_at(fd, size - 1) == Some(false));
    if lies {
        tracing::debug!(
            size,
            ?trust,
            "SRC's size is not what it reads: streaming it"
        );
    }
    lies
}

/// Whether one byte can be read at `offset`: `Some(false)` at the end of the file, `None`
/// when the read fails (which proves nothing about the size; the copy meets the error if it
/// reads there).
fn reads_at(fd: BorrowedFd<'_>, offset: u64) -> Option<bool> {
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::pread(fd, &mut byte, offset) {
            Ok(n) => return Some(n > 0),
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// For a streamed SRC: `skip` must not lie past what reading gives (as for any SRC). Reads
/// the byte before `skip`; when there is none, counts what there is, for the message.
pub(crate) fn check_skip(fd: BorrowedFd<'_>, path: &Path, skip: u64) -> Result<()> {
    if skip == 0 || reads_at(fd, skip - 1) != Some(false) {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    while size < skip {
        match rustix::io::pread(fd, &mut buf, size) {
            Ok(0) => break,
            Ok(n) => size += n as u64,
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    offset: size,
                    source: e.into(),
                });
            }
        }
    }
    Err(Error::SkipPastEnd {
        path: path.to_owned(),
        skip,
        size,
    })
}

/// What moved between two stats of SRC: size, mtime, ctime; `None` when nothing did.
/// Reading does not move them, nor does sharing SRC's extents (FICLONERANGE).
pub(crate) fn changed(before: &Stat, after: &Stat) -> Option<String> {
    let mut moved = Vec::new();
    if before.st_size != after.st_size {
        moved.push("size");
    }
    if (before.st_mtime, before.st_mtime_nsec) != (after.st_mtime, after.st_mtime_nsec) {
        moved.push("mtime");
    }
    if (before.st_ctime, before.st_ctime_nsec) != (after.st_ctime, after.st_ctime_nsec) {
        moved.push("ctime");
    }
    (!moved.is_empty()).then(|| moved.join(", "))
}

/// SRC's stat now.
pub(crate) fn stat(fd: BorrowedFd<'_>, path: &Path) -> Result<Stat> {
    rustix::fs::fstat(fd).map_err(|e| {
        Error::Map(blockmap_core::Error::Stat {
            path: path.to_owned(),
            source: e.into(),
        })
    })
}
