//! A small public face of [`crate::dest`] for other writers of whole images (the
//! `blockmap-bmap` crate): open or create a destination with the same checks and messages as
//! the copy engine.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::dest::{self, Kind};
use crate::error::{Error, Result};

/// A destination opened for writing, as the copy engine opens it: a regular file (created
/// with mode `0644` less the umask if absent, never truncated here) or a block device;
/// anything else (directory, FIFO, socket, character device, dangling symbolic link) is
/// refused by name.
///
/// # Example
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let dest = sparsecopy::Destination::open(dir.path().join("out.img"))?;
/// assert!(dest.created() && !dest.is_block_device());
/// assert_eq!(dest.size(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Destination {
    file: File,
    path: PathBuf,
    info: dest::Dest,
    created: bool,
}

impl Destination {
    /// Opens `path` write-only (non-blocking, close-on-exec), or creates it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (fd, created): (OwnedFd, bool) = dest::open_or_create(path)?;
        let info = dest::inspect(fd.as_fd(), path)?;
        Ok(Destination {
            file: File::from(fd),
            path: path.to_owned(),
            info,
            created,
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether it is a block device (else a regular file).
    pub fn is_block_device(&self) -> bool {
        self.info.kind == Kind::BlockDevice
    }

    /// Its size when opened: `st_size`, or a block device's capacity.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Whether [`Destination::open`] created it.
    pub fn created(&self) -> bool {
        self.info.kind == Kind::Regular && self.created
    }

    /// Closes the destination and reports what `close(2)` says: NFS, FUSE (its `flush`) and
    /// upload-on-close filesystems report failed writes there ([`Error::Close`]). Call it
    /// after the last write; dropping a `Destination` closes it without a word. When close
    /// fails, a file that [`Destination::open`] created is removed, as after any failed write.
    pub fn close(self) -> Result<()> {
        let Destination {
            file,
            path,
            info,
            created,
        } = self;
        let closed = crate::close::close(OwnedFd::from(file), &path);
        if closed.is_err() && created && info.kind == Kind::Regular {
            dest::remove_created(&info.stat, &path);
        }
        closed
    }

    /// Removes the file if [`Destination::open`] created it and the path still names it (a
    /// failed write must not leave a file that passes for a whole image). Returns whether it
    /// was removed.
    pub fn remove_if_created(&self) -> bool {
        self.created() && dest::remove_created(&self.info.stat, &self.path)
    }

    /// Whether `other` is the same file (same inode, or the same block device through another
    /// node): writing would destroy what is read.
    pub fn is_same_file(&self, other: impl AsFd, other_path: &Path) -> Result<bool> {
        let st = rustix::fs::fstat(other.as_fd()).map_err(|e| Error::StatDest {
            path: other_path.to_owned(),
            source: e.into(),
        })?;
        Ok(dest::same_file(&self.info.stat, &st))
    }
}
