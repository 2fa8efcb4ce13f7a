//! btrfs's file extent items, read with `BTRFS_IOC_TREE_SEARCH_V2` (root only).
//!
//! FIEMAP on btrfs resolves, for every extent, whether it is shared, which is slow for files of
//! many extents. A caller that only needs each extent's kind and file range (is any of it
//! preallocated?) gets it from the items themselves, far cheaper (benches/RESULTS.md,
//! "Measurements behind design choices"), when it may search the tree: the ioctl needs
//! `CAP_SYS_ADMIN` and answers `EPERM` otherwise, when the caller falls back to FIEMAP.
#![allow(
    unsafe_code,
    reason = "rustix has no btrfs tree search: this module is its one raw ioctl"
)]

use std::ffi::c_void;
use std::mem::size_of;
use std::ops::Range;
use std::os::fd::AsFd;

use linux_raw_sys::btrfs::{
    BTRFS_EXTENT_DATA_KEY, btrfs_file_extent_item, btrfs_ioctl_search_args_v2,
    btrfs_ioctl_search_header, btrfs_ioctl_search_key,
};
use linux_raw_sys::ioctl::BTRFS_IOC_TREE_SEARCH_V2;
use rustix::io::{Errno, Result};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, ioctl};

/// How a file extent item stores its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtrfsExtentKind {
    /// Data stored in the item itself (small files and tails).
    Inline,
    /// Data in an extent on disk (possibly compressed or shared).
    Regular,
    /// Allocated, never written: reads as zeros.
    Prealloc,
}

/// One file extent item: a range of the file and how it is stored. Explicit hole items
/// (filesystems made without `no-holes`) are not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsExtent {
    /// File offsets, `[start, end)`.
    pub logical: Range<u64>,
    /// How the range is stored.
    pub kind: BtrfsExtentKind,
}

/// Bytes of item data read at once (the kernel's limit is 16 MiB): about 3000 extents a call.
const BUF_BYTES: usize = 256 << 10;
const HEADER_BYTES: usize = size_of::<btrfs_ioctl_search_args_v2>();
const ITEM_HEADER_BYTES: usize = size_of::<btrfs_ioctl_search_header>();
const _: () = assert!(HEADER_BYTES.is_multiple_of(8) && HEADER_BYTES == 112);
const _: () = assert!(ITEM_HEADER_BYTES == 32 && size_of::<btrfs_file_extent_item>() == 53);

/// Offsets in a `btrfs_file_extent_item` (packed, little-endian; `linux/btrfs_tree.h`).
const ITEM_RAM_BYTES: usize = 8;
const ITEM_TYPE: usize = 20;
const ITEM_DISK_BYTENR: usize = 21;
const ITEM_NUM_BYTES: usize = 45;
/// `BTRFS_FILE_EXTENT_INLINE`, `_REG`, `_PREALLOC`.
const TYPE_INLINE: u8 = 0;
const TYPE_REG: u8 = 1;
const TYPE_PREALLOC: u8 = 2;

/// The `Ioctl` pattern for the tree search: a read-write pointer to a search header followed
/// by `buf_size` bytes of room.
struct TreeSearch<'a>(&'a mut [u64]);

// SAFETY: the opcode is `_IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2)` from
// linux-raw-sys, and the pointer is to a `btrfs_ioctl_search_args_v2` whose `buf_size` (set by
// `search_items` to the bytes after the header) matches the room the slice has, so the kernel
// never writes out of bounds. The kernel writes the key and the items, hence `IS_MUTATING`.
unsafe impl Ioctl for TreeSearch<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        BTRFS_IOC_TREE_SEARCH_V2 as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> Result<()> {
        Ok(())
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Calls `each` with the file extent items of the open btrfs file `fd` that overlap `range`,
/// in file order, clipped to it: the items as they are in the tree now (data still in dirty
/// pages has none yet; a caller that needs it checks the page cache first).
///
/// Fails with `EPERM` without `CAP_SYS_ADMIN`, `ENOTTY` off btrfs, and `EIO` on an item it
/// cannot parse; retried on `EINTR`.
///
/// # References
/// - `fs/btrfs/ioctl.c` (`btrfs_ioctl_tree_search_v2`), `include/uapi/linux/btrfs_tree.h`
#[doc(alias = "BTRFS_IOC_TREE_SEARCH_V2")]
pub fn btrfs_file_extents<Fd: AsFd>(
    fd: Fd,
    range: Range<u64>,
    mut each: impl FnMut(BtrfsExtent),
) -> Result<()> {
    let fd = fd.as_fd();
    if range.is_empty() {
        return Ok(());
    }
    let ino = rustix::fs::fstat(fd)?.st_ino;
    let mut words = vec![0u64; (HEADER_BYTES + BUF_BYTES) / 8];
    // Items are keyed by the file offset where they start: one starting before `range` may
    // reach into it, so the search starts at 0 and skips those that end before.
    let mut from = 0u64;
    loop {
        let key = btrfs_ioctl_search_key {
            tree_id: 0, // the subvolume of `fd`
            min_objectid: ino,
            max_objectid: ino,
            min_offset: from,
            max_offset: range.end - 1,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: BTRFS_EXTENT_DATA_KEY,
            max_type: BTRFS_EXTENT_DATA_KEY,
            nr_items: u32::MAX,
            unused: 0,
            unused1: 0,
            unused2: 0,
            unused3: 0,
            unused4: 0,
        };
        // SAFETY: `words` holds `HEADER_BYTES` (112, checked above) bytes and more, 8-byte
        // aligned, so the key (104 bytes, of u64s and u32s) and `buf_size` right after it are
        // in bounds and aligned; both are plain data.
        unsafe {
            let header = words.as_mut_ptr().cast::<btrfs_ioctl_search_key>();
            header.write(key);
            words
                .as_mut_ptr()
                .add(size_of::<btrfs_ioctl_search_key>() / 8)
                .write(BUF_BYTES as u64);
        }
        loop {
            // SAFETY: `TreeSearch` upholds the `Ioctl` contract (see its impl).
            match unsafe { ioctl(fd, TreeSearch(&mut words)) } {
                Err(Errno::INTR) => continue,
                other => break other?,
            }
        }
        // SAFETY: as above; the kernel wrote back a key of the same plain layout.
        let found = unsafe { words.as_ptr().cast::<btrfs_ioctl_search_key>().read() }.nr_items;
        if found == 0 {
            return Ok(());
        }
        // SAFETY: `words` is initialised memory of `HEADER_BYTES + BUF_BYTES` bytes; viewing
        // it as bytes is always valid, and the borrow ends before `words` is written again.
        let all: &[u8] = unsafe {
            std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), HEADER_BYTES + BUF_BYTES)
        };
        let mut items = &all[HEADER_BYTES..];
        for _ in 0..found {
            // The search header: transid, objectid, offset (u64), type, len (u32).
            let (offset, kind, len) =
                match (u64_at(items, 16), u32_at(items, 24), u32_at(items, 28)) {
                    (Some(o), Some(t), Some(l)) => (o, t, l as usize),
                    _ => return Err(Errno::IO),
                };
            let item = items
                .get(ITEM_HEADER_BYTES..ITEM_HEADER_BYTES + len)
                .ok_or(Errno::IO)?;
            items = &items[ITEM_HEADER_BYTES + len..];
            from = offset.saturating_add(1);
            if kind != BTRFS_EXTENT_DATA_KEY {
                continue;
            }
            let kind = match item.get(ITEM_TYPE).copied() {
                Some(TYPE_INLINE) => BtrfsExtentKind::Inline,
                Some(TYPE_REG) => BtrfsExtentKind::Regular,
                Some(TYPE_PREALLOC) => BtrfsExtentKind::Prealloc,
                _ => return Err(Errno::IO),
            };
            let length = match kind {
                BtrfsExtentKind::Inline => u64_at(item, ITEM_RAM_BYTES),
                _ => u64_at(item, ITEM_NUM_BYTES),
            }
            .ok_or(Errno::IO)?;
            if kind == BtrfsExtentKind::Regular && u64_at(item, ITEM_DISK_BYTENR) == Some(0) {
                continue; // an explicit hole
            }
            let logical = offset.max(range.start)..offset.saturating_add(length).min(range.end);
            if !logical.is_empty() {
                each(BtrfsExtent { logical, kind });
            }
        }
        if from > range.end - 1 {
            return Ok(());
        }
    }
}
