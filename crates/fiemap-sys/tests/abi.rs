//! Pins the ABI to the kernel's: sizes, alignments, field offsets and opcodes.

use std::mem::{align_of, offset_of, size_of};

use fiemap_sys::*;

#[test]
fn struct_fiemap_layout() {
    assert_eq!(size_of::<fiemap>(), 32);
    assert_eq!(align_of::<fiemap>(), 8);
    assert_eq!(offset_of!(fiemap, fm_start), 0);
    assert_eq!(offset_of!(fiemap, fm_length), 8);
    assert_eq!(offset_of!(fiemap, fm_flags), 16);
    assert_eq!(offset_of!(fiemap, fm_mapped_extents), 20);
    assert_eq!(offset_of!(fiemap, fm_extent_count), 24);
    assert_eq!(offset_of!(fiemap, fm_reserved), 28);
}

#[test]
fn struct_fiemap_extent_layout() {
    assert_eq!(size_of::<fiemap_extent>(), 56);
    assert_eq!(align_of::<fiemap_extent>(), 8);
    assert_eq!(offset_of!(fiemap_extent, fe_logical), 0);
    assert_eq!(offset_of!(fiemap_extent, fe_physical), 8);
    assert_eq!(offset_of!(fiemap_extent, fe_length), 16);
    assert_eq!(offset_of!(fiemap_extent, fe_reserved64), 24);
    assert_eq!(offset_of!(fiemap_extent, fe_flags), 40);
    assert_eq!(offset_of!(fiemap_extent, fe_reserved), 44);
}

#[test]
fn opcodes_match_the_kernel_headers() {
    assert_eq!(FS_IOC_FIEMAP, linux_raw_sys::ioctl::FS_IOC_FIEMAP as _);
    assert_eq!(FIGETBSZ, linux_raw_sys::ioctl::FIGETBSZ as _);
    // The value the reference module hard-codes, derived here rather than trusted.
    assert_eq!(FS_IOC_FIEMAP as u64, 0xC020_660B);
}

#[test]
fn flag_values_match_fiemap_h() {
    // Values from include/uapi/linux/fiemap.h.
    let expected: [(u32, u32); 11] = [
        (FIEMAP_EXTENT_LAST, 0x1),
        (FIEMAP_EXTENT_UNKNOWN, 0x2),
        (FIEMAP_EXTENT_DELALLOC, 0x4),
        (FIEMAP_EXTENT_ENCODED, 0x8),
        (FIEMAP_EXTENT_DATA_ENCRYPTED, 0x80),
        (FIEMAP_EXTENT_NOT_ALIGNED, 0x100),
        (FIEMAP_EXTENT_DATA_INLINE, 0x200),
        (FIEMAP_EXTENT_DATA_TAIL, 0x400),
        (FIEMAP_EXTENT_UNWRITTEN, 0x800),
        (FIEMAP_EXTENT_MERGED, 0x1000),
        (FIEMAP_EXTENT_SHARED, 0x2000),
    ];
    for ((value, want), (named, _)) in expected.iter().zip(EXTENT_FLAG_NAMES) {
        assert_eq!(value, want);
        assert_eq!(*value, named, "EXTENT_FLAG_NAMES is in bit order");
    }
    assert_eq!(FIEMAP_FLAG_SYNC, 1);
    assert_eq!(FIEMAP_FLAG_XATTR, 2);
    assert_eq!(FIEMAP_FLAG_CACHE, 4);
    assert_eq!(FIEMAP_FLAGS_COMPAT, 3);
}

#[test]
fn buffer_request_round_trips() {
    let mut buf = FiemapBuffer::new(7);
    assert_eq!(buf.capacity(), 7);
    buf.set_request(4096, 8192, FIEMAP_FLAG_SYNC);
    let h = buf.header();
    assert_eq!(
        (h.fm_start, h.fm_length, h.fm_flags),
        (4096, 8192, FIEMAP_FLAG_SYNC)
    );
    assert_eq!((h.fm_extent_count, h.fm_mapped_extents), (7, 0));
    assert!(buf.extents().is_empty());
}
