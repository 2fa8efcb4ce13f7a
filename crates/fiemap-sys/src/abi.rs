//! The structures and constants of `<linux/fiemap.h>` and the opcodes of `<linux/fs.h>`.

use rustix::ioctl::{Opcode, opcode};

/// `struct fiemap`: the request header, followed in memory by `fm_extent_count` extents.
///
/// The kernel reads `fm_start`, `fm_length`, `fm_flags` and `fm_extent_count`, and writes
/// `fm_flags` (the flags it did not understand, on `EBADR`) and `fm_mapped_extents`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct fiemap {
    /// Logical offset, in bytes, where the mapping starts (inclusive).
    pub fm_start: u64,
    /// Logical length of the mapping, in bytes; [`FIEMAP_MAX_OFFSET`] means "to the end".
    pub fm_length: u64,
    /// `FIEMAP_FLAG_*` request flags in; incompatible flags out.
    pub fm_flags: u32,
    /// Number of extents the kernel mapped (out). With `fm_extent_count == 0`, the number of
    /// extents the range holds.
    pub fm_mapped_extents: u32,
    /// Size of the extent array that follows the header (in).
    pub fm_extent_count: u32,
    /// Reserved, must be zero.
    pub fm_reserved: u32,
    // The flexible array member `struct fiemap_extent fm_extents[]` follows.
}

/// `struct fiemap_extent`: one mapped extent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct fiemap_extent {
    /// Logical offset in bytes of the start of the extent in the file.
    pub fe_logical: u64,
    /// Physical offset in bytes of the start of the extent on the device.
    pub fe_physical: u64,
    /// Length of the extent in bytes.
    pub fe_length: u64,
    /// Reserved, zero.
    pub fe_reserved64: [u64; 2],
    /// `FIEMAP_EXTENT_*` flags of the extent.
    pub fe_flags: u32,
    /// Reserved, zero.
    pub fe_reserved: [u32; 3],
}

/// The largest logical offset a FIEMAP request can name (`~0ULL`).
pub const FIEMAP_MAX_OFFSET: u64 = u64::MAX;

/// Request flag: sync the file before mapping it.
pub const FIEMAP_FLAG_SYNC: u32 = 0x0000_0001;
/// Request flag: map the extended-attribute tree instead of the data.
pub const FIEMAP_FLAG_XATTR: u32 = 0x0000_0002;
/// Request flag: request caching of the extents (ext4).
pub const FIEMAP_FLAG_CACHE: u32 = 0x0000_0004;
/// The request flags every filesystem implementing FIEMAP must accept.
pub const FIEMAP_FLAGS_COMPAT: u32 = FIEMAP_FLAG_SYNC | FIEMAP_FLAG_XATTR;

/// Extent flag: the last extent in the file (or, on some filesystems, in the range asked).
pub const FIEMAP_EXTENT_LAST: u32 = 0x0000_0001;
/// Extent flag: data location unknown.
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0000_0002;
/// Extent flag: location still pending (delayed allocation); sets `UNKNOWN` too.
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x0000_0004;
/// Extent flag: data cannot be read while the filesystem is unmounted (compressed…).
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x0000_0008;
/// Extent flag: data is encrypted by the filesystem; sets `ENCODED` too.
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0000_0080;
/// Extent flag: offsets or length are not block-aligned.
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0000_0100;
/// Extent flag: data is stored inline in the metadata; sets `NOT_ALIGNED` too.
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0000_0200;
/// Extent flag: data is packed into a block with other files' tails; sets `NOT_ALIGNED` too.
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0000_0400;
/// Extent flag: space is allocated but not written (preallocated), reads as zeros on disk.
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0000_0800;
/// Extent flag: the filesystem does not track extents; this one was merged from blocks.
pub const FIEMAP_EXTENT_MERGED: u32 = 0x0000_1000;
/// Extent flag: space is shared with other files (reflinks, snapshots).
pub const FIEMAP_EXTENT_SHARED: u32 = 0x0000_2000;

/// Every `FIEMAP_EXTENT_*` flag with its lower-case name, in bit order.
///
/// ```
/// let names: Vec<&str> = fiemap_sys::EXTENT_FLAG_NAMES
///     .iter()
///     .filter(|(bit, _)| 0x801 & bit != 0)
///     .map(|(_, name)| *name)
///     .collect();
/// assert_eq!(names, ["last", "unwritten"]);
/// ```
pub const EXTENT_FLAG_NAMES: [(u32, &str); 11] = [
    (FIEMAP_EXTENT_LAST, "last"),
    (FIEMAP_EXTENT_UNKNOWN, "unknown"),
    (FIEMAP_EXTENT_DELALLOC, "delalloc"),
    (FIEMAP_EXTENT_ENCODED, "encoded"),
    (FIEMAP_EXTENT_DATA_ENCRYPTED, "data_encrypted"),
    (FIEMAP_EXTENT_NOT_ALIGNED, "not_aligned"),
    (FIEMAP_EXTENT_DATA_INLINE, "data_inline"),
    (FIEMAP_EXTENT_DATA_TAIL, "data_tail"),
    (FIEMAP_EXTENT_UNWRITTEN, "unwritten"),
    (FIEMAP_EXTENT_MERGED, "merged"),
    (FIEMAP_EXTENT_SHARED, "shared"),
];

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
pub const FS_IOC_FIEMAP: Opcode = opcode::read_write::<fiemap>(b'f', 11);

/// `FIGETBSZ`: `_IO(0x00, 2)`; writes the filesystem block size as an `int`.
pub const FIGETBSZ: Opcode = opcode::none(0x00, 2);
