//! btrfs's own record of a file's extents, where it answers more cheaply than FIEMAP.

use std::ops::Range;
use std::os::fd::BorrowedFd;

use fiemap_sys::{BtrfsExtentKind, btrfs_file_extents};
use tracing::debug;

use crate::fs::FsKind;

/// What btrfs's extent items say of a span of a file: its written and its preallocated
/// extents, each merged where they touch, in order, clipped to the span; everything else is
/// a hole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtentItems {
    /// Extents holding data (possibly compressed or shared).
    pub written: Vec<Range<u64>>,
    /// Extents allocated and never written: they read as zeros.
    pub preallocated: Vec<Range<u64>>,
}

/// The extent items of `span` of a file on btrfs, read from the filesystem tree
/// (`BTRFS_IOC_TREE_SEARCH_V2`): much cheaper than FIEMAP there, which resolves for every
/// extent whether it is shared (benches/RESULTS.md, "Measurements behind design choices").
///
/// The items are the tree as it is: data still in dirty pages has no item until it is
/// written back (`fsync`, or a `FICLONERANGE` of the range, which writes it back first), and a
/// preallocated extent being written into is listed as preallocated until then. After a
/// write-back they are exact.
///
/// `None` where the items cannot answer, and FIEMAP must: not btrfs; not root (the search
/// needs `CAP_SYS_ADMIN`); inline data (FIEMAP rounds it to a block).
///
/// # Example
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use blockmap_core::fs::{ExtentItems, btrfs_extent_items};
///
/// let file = std::fs::File::open("disk.img")?;
/// match btrfs_extent_items(file.as_fd(), 0..1 << 30) {
///     Some(ExtentItems { written, preallocated }) => {
///         println!("{} written, {} preallocated extents", written.len(), preallocated.len())
///     }
///     None => println!("ask FIEMAP"),
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn btrfs_extent_items(fd: BorrowedFd<'_>, span: Range<u64>) -> Option<ExtentItems> {
    if span.is_empty() || FsKind::of(fd) != Some(FsKind::Btrfs) {
        return None;
    }
    let mut items = ExtentItems::default();
    let mut inline = false;
    let push = |v: &mut Vec<Range<u64>>, r: Range<u64>| match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    };
    let searched = btrfs_file_extents(fd, span, |e| match e.kind {
        BtrfsExtentKind::Regular => push(&mut items.written, e.logical),
        BtrfsExtentKind::Prealloc => push(&mut items.preallocated, e.logical),
        BtrfsExtentKind::Inline => inline = true,
    });
    match searched {
        Err(e) => {
            debug!(error = %e, "no btrfs tree search");
            None
        }
        Ok(()) if inline => None,
        Ok(()) => Some(items),
    }
}
