//! The filesystem toolkit of the sibling crates (`sparsecopy`, `bmap`, the CLI): opening a
//! file to map, its block size, its filesystem, btrfs's own extent items, and which errnos
//! mean "not supported here". The map itself is [`crate::BlockMap`].

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use tracing::debug;

pub use crate::btrfs::{BTRFS_SUPER_MAGIC, ExtentItems, btrfs_extent_items};
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

/// The magic number of the filesystem holding `fd` (`statfs(2)`'s `f_type`, its low 32 bits,
/// as `<linux/magic.h>` spells them: `0x58465342` xfs, `0x9123683e` btrfs…), `None` if
/// `fstatfs` fails.
pub fn filesystem_magic(fd: impl AsFd) -> Option<u32> {
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
