//! Opening, creating and validating the destination, and telling whether two descriptors
//! are the same file.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, SeekFrom, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// What DST is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    BlockDevice,
}

/// DST as found before anything is written to it.
#[derive(Debug)]
pub(crate) struct Dest {
    pub kind: Kind,
    /// `st_size`, or the device's capacity.
    pub size: u64,
    pub stat: Stat,
}

/// The name of a file type in messages.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::BlockDevice => "block device",
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::Symlink => "symbolic link",
        FileType::Unknown => "file of unknown type",
    }
}

/// Opens DST for writing, never truncating it, or creates it (mode `0644` less the umask, as
/// `cp` creates files) when it does not exist. Returns the descriptor and whether it was
/// created.
///
/// The open is non-blocking, so a FIFO without a reader fails at once instead of hanging; it
/// and every other kind that is neither a regular file nor a block device is refused by
/// [`inspect`] or here, by name. It is exclusive (`O_EXCL`, which Linux honours without
/// `O_CREAT` for block devices only): a device that is mounted or held by LVM, md or another
/// exclusive opener is refused ([`Error::DeviceBusy`]), and none can claim it while we write.
/// A missing path under `/dev` is refused ([`Error::NoSuchDevice`]), never created.
pub(crate) fn open_or_create(path: &Path) -> Result<(OwnedFd, bool)> {
    let flags = OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::EXCL;
    // Two rounds: the file may appear between our two opens (another creator); a path that
    // is still neither openable nor creatable after that is a dangling symbolic link.
    for _ in 0..2 {
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => return Ok((fd, false)),
            Err(Errno::NOENT) if under_dev(path) => {
                return Err(Error::NoSuchDevice {
                    path: path.to_owned(),
                });
            }
            Err(Errno::NOENT) => {}
            Err(Errno::BUSY) if is_block_device(path) => {
                return Err(Error::DeviceBusy {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(open_error(path, e)),
        }
        let mode = Mode::from_raw_mode(0o644);
        match rustix::fs::open(path, flags | OFlags::CREATE | OFlags::EXCL, mode) {
            Ok(fd) => {
                tracing::debug!(path = %path.display(), "destination created");
                return Ok((fd, true));
            }
            Err(Errno::EXIST) => continue,
            Err(Errno::NOENT) => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                if !dir.is_dir() {
                    return Err(Error::DestDirMissing {
                        path: path.to_owned(),
                        dir: dir.to_owned(),
                    });
                }
                return Err(open_error(path, Errno::NOENT));
            }
            Err(e) => return Err(open_error(path, e)),
        }
    }
    Err(Error::OpenDest {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "a dangling symbolic link (not written through)",
        ),
    })
}

/// Whether `path` would be created in `/dev`'s own filesystem (devtmpfs: `/dev`,
/// `/dev/disk/by-id`, `/dev/mapper`…), where only the kernel makes files. Other mounts below
/// it, such as the tmpfs `/dev/shm`, take regular files as anywhere else.
fn under_dev(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let same_fs = |a: &Path, b: &Path| match (rustix::fs::stat(a), rustix::fs::stat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev,
        _ => false,
    };
    std::fs::canonicalize(dir)
        .is_ok_and(|d| d.starts_with("/dev") && same_fs(&d, Path::new("/dev")))
}

fn is_block_device(path: &Path) -> bool {
    rustix::fs::stat(path)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice)
}

/// An open failure, named by the kind of file when that is the real reason (a directory
/// answers EISDIR, a FIFO without reader or a socket ENXIO).
fn open_error(path: &Path, e: Errno) -> Error {
    if let Ok(st) = rustix::fs::stat(path) {
        let kind = FileType::from_raw_mode(st.st_mode);
        if !matches!(kind, FileType::RegularFile | FileType::BlockDevice) {
            return Error::DestKind {
                path: path.to_owned(),
                kind: kind_name(kind),
            };
        }
    }
    Error::OpenDest {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Checks that DST is a regular file or a block device open for positioned writes, and reads
/// its size.
pub(crate) fn inspect(fd: BorrowedFd<'_>, path: &Path) -> Result<Dest> {
    let stat_err = |e: Errno| Error::StatDest {
        path: path.to_owned(),
        source: e.into(),
    };
    let stat = rustix::fs::fstat(fd).map_err(stat_err)?;
    let (kind, size) = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => (Kind::Regular, stat.st_size as u64),
        FileType::BlockDevice => {
            let size = rustix::fs::seek(fd, SeekFrom::End(0)).map_err(stat_err)?;
            (Kind::BlockDevice, size)
        }
        other => {
            return Err(Error::DestKind {
                path: path.to_owned(),
                kind: kind_name(other),
            });
        }
    };
    let flags = rustix::fs::fcntl_getfl(fd).map_err(stat_err)?;
    if flags.contains(OFlags::APPEND) {
        return Err(Error::OpenDest {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "open in append mode, where every write lands at the end",
            ),
        });
    }
    if flags & OFlags::RWMODE == OFlags::RDONLY {
        return Err(Error::OpenDest {
            path: path.to_owned(),
            source: Errno::BADF.into(),
        });
    }
    Ok(Dest { kind, size, stat })
}

/// Whether two stats are of one file: the same inode on the same device, or two device nodes
/// of the same block device.
pub(crate) fn same_file(a: &Stat, b: &Stat) -> bool {
    let is_block = |s: &Stat| FileType::from_raw_mode(s.st_mode) == FileType::BlockDevice;
    (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        || (is_block(a) && is_block(b) && a.st_rdev == b.st_rdev)
}

/// Removes a DST that this copy created and then failed to fill: a half-made copy must not
/// pass for a whole one. `created` is the file's stat taken when it was open; only that file
/// is removed (the path may have been replaced meanwhile); a failure to remove is logged, and
/// the copy's own error stands. Returns whether it was removed.
pub(crate) fn remove_created(created: &Stat, path: &Path) -> bool {
    let ours = rustix::fs::lstat(path)
        .is_ok_and(|b| created.st_dev == b.st_dev && created.st_ino == b.st_ino);
    if !ours {
        tracing::debug!(path = %path.display(), "not removing: no longer the file created");
        return false;
    }
    match rustix::fs::unlink(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed the destination created");
            true
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove");
            false
        }
    }
}

/// Grows a regular DST to `size` bytes (a hole at the end; nothing is allocated).
pub(crate) fn grow(fd: BorrowedFd<'_>, path: &Path, size: u64) -> Result<()> {
    rustix::fs::ftruncate(fd, size).map_err(|e| Error::Resize {
        path: path.to_owned(),
        size,
        source: e.into(),
    })
}
