//! The filesystem toolkit for crates built on this one: opening a file to map, its block size, its filesystem, btrfs's own extent items, and which
//! errnos mean "not supported here". The map itself is [`crate::BlockMap`].

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use tracing::debug;

use linux_raw_sys::general as k;

pub use crate::btrfs::{ExtentItems, btrfs_extent_items};
use crate::error::{Error, Result};
use crate::kind_of;

/// Opens `path` read-only, non-blocking (so a FIFO cannot hang us), close-on-exec, as a
/// [`File`], refusing what has no block map.
pub fn open_readable(path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| Error::Open {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let file = File::from(fd);
    kind_of(file.as_fd(), path)?;
    Ok(file)
}

/// The filesystem block size of the file behind `fd`: `FIGETBSZ`, or `st_blksize` where that
/// ioctl fails (some stacked filesystems, `O_PATH` descriptors), or 4096 as a last resort.
pub fn block_size_of(fd: impl AsFd) -> u32 {
    let fd = fd.as_fd();
    match fiemap_sys::figetbsz(fd) {
        Ok(bs) => bs,
        Err(e) => {
            let st_blksize = rustix::fs::fstat(fd).map(|st| st.st_blksize).unwrap_or(0);
            let bs = u32::try_from(st_blksize)
                .ok()
                .filter(|b| b.is_power_of_two() && *b >= 512)
                .unwrap_or(4096);
            debug!(error = %e, bs, "FIGETBSZ failed; using st_blksize");
            bs
        }
    }
}

/// A filesystem as `statfs(2)` tells it (`f_type`): the common local ones by name, any other
/// by its magic number (`<linux/magic.h>`, as `linux_raw_sys::general` spells
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// ext2, ext3 and ext4 (one magic number).
    Ext4,
    /// xfs.
    Xfs,
    /// btrfs.
    Btrfs,
    /// tmpfs.
    Tmpfs,
    /// Any other, by its magic number.
    Other(u32),
}

impl FsKind {
    /// The filesystem holding `fd`, `None` if `fstatfs` fails.
    pub fn of(fd: impl AsFd) -> Option<FsKind> {
        filesystem_magic(fd).map(FsKind::from_magic)
    }

    /// The kind of a magic number (`f_type`'s low 32 bits).
    pub fn from_magic(magic: u32) -> FsKind {
        match magic {
            k::EXT4_SUPER_MAGIC => FsKind::Ext4,
            k::XFS_SUPER_MAGIC => FsKind::Xfs,
            k::BTRFS_SUPER_MAGIC => FsKind::Btrfs,
            k::TMPFS_MAGIC => FsKind::Tmpfs,
            other => FsKind::Other(other),
        }
    }

    /// Its magic number, as `statfs(2)` gives it.
    pub fn magic(self) -> u32 {
        match self {
            FsKind::Ext4 => k::EXT4_SUPER_MAGIC,
            FsKind::Xfs => k::XFS_SUPER_MAGIC,
            FsKind::Btrfs => k::BTRFS_SUPER_MAGIC,
            FsKind::Tmpfs => k::TMPFS_MAGIC,
            FsKind::Other(magic) => magic,
        }
    }
}

/// The magic number of the filesystem holding `fd` (`statfs(2)`'s `f_type`, its low 32 bits),
/// `None` if `fstatfs` fails.
fn filesystem_magic(fd: impl AsFd) -> Option<u32> {
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, other widths elsewhere
    let magic = |s: rustix::fs::StatFs| (s.f_type as i64 & 0xffff_ffff) as u32;
    rustix::fs::fstatfs(fd.as_fd()).ok().map(magic)
}

/// True for the errnos that mean "this kernel or filesystem does not do that" rather than a
/// real failure: the signal to fall back to the next backend.
pub fn is_unsupported_errno(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::NOTTY | Errno::INVAL | Errno::NOSYS | Errno::NODEV
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_magic_numbers_go_both_ways() {
        // <linux/magic.h>, written out here so that a wrong constant fails.
        let named = [
            (FsKind::Ext4, 0xef53),
            (FsKind::Xfs, 0x5846_5342),
            (FsKind::Btrfs, 0x9123_683e),
            (FsKind::Tmpfs, 0x0102_1994),
        ];
        for (kind, magic) in named {
            assert_eq!(FsKind::from_magic(magic), kind);
            assert_eq!(kind.magic(), magic);
        }
        assert_eq!(FsKind::from_magic(0x6969), FsKind::Other(0x6969));
        assert_eq!(FsKind::Other(0x6969).magic(), 0x6969);
    }

    #[test]
    fn the_kind_of_a_file_is_its_filesystems() {
        let file = tempfile::tempfile().unwrap();
        let magic = rustix::fs::fstatfs(&file).unwrap().f_type;
        #[allow(clippy::unnecessary_cast)]
        let magic = (magic as i64 & 0xffff_ffff) as u32;
        assert_eq!(FsKind::of(&file).map(FsKind::magic), Some(magic));
    }
}
