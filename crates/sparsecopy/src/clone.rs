//! `ioctl(FICLONERANGE)`: the one call of this crate that rustix does not wrap safely (it has
//! `FICLONE` for whole files, not ranges). The only `unsafe` of the crate lives here.
#![allow(unsafe_code)] // FICLONERANGE through rustix's typed ioctl; each block proves its contract

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;
use rustix::ioctl::{Setter, ioctl, opcode};

/// `struct file_clone_range` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)] // the kernel's name, so it can be grepped for
pub(crate) struct file_clone_range {
    pub src_fd: i64,
    pub src_offset: u64,
    pub src_length: u64,
    pub dest_offset: u64,
}

/// `FICLONERANGE = _IOW(0x94, 13, struct file_clone_range)`.
pub(crate) const FICLONERANGE: rustix::ioctl::Opcode = opcode::write::<file_clone_range>(0x94, 13);

/// `ioctl(dst, FICLONERANGE, {src, src_offset, len, dst_offset})`: makes `len` bytes of DST
/// at `dst_offset` share SRC's extents at `src_offset`, all or nothing.
///
/// Both offsets and `len` must be multiples of the filesystem block size (the kernel also
/// accepts a tail ending at SRC's end of file; this crate never asks for one). `len` must
/// not be 0, which the kernel reads as "to the end of SRC".
///
/// # References
///  - [Linux `ioctl_ficlonerange`](https://man7.org/linux/man-pages/man2/ioctl_ficlonerange.2.html)
#[doc(alias = "FICLONERANGE")]
pub(crate) fn ficlonerange(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> Result<(), Errno> {
    assert!(
        len > 0,
        "FICLONERANGE with length 0 would clone to SRC's end"
    );
    let range = file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: FICLONERANGE is `_IOW(0x94, 13, struct file_clone_range)`: the kernel reads one
    // `file_clone_range` through the pointer and writes nothing back. `file_clone_range` above
    // is `#[repr(C)]` with the kernel's fields, sizes and order (pinned by the layout test
    // below against linux-raw-sys), and the opcode is derived from that very type.
    let setter = unsafe { Setter::<FICLONERANGE, file_clone_range>::new(range) };
    // SAFETY: `setter` owns the argument for the whole call; `src_fd` is a descriptor borrowed
    // for the duration of the call, so the kernel cannot see it closed under it. The ioctl's
    // only effects are on the two files' contents, which Rust does not track.
    unsafe { ioctl(dst, setter) }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        use linux_raw_sys::general as k;
        assert_eq!(size_of::<file_clone_range>(), 32);
        assert_eq!(
            size_of::<file_clone_range>(),
            size_of::<k::file_clone_range>()
        );
        assert_eq!(
            offset_of!(file_clone_range, src_fd),
            offset_of!(k::file_clone_range, src_fd)
        );
        assert_eq!(
            offset_of!(file_clone_range, src_offset),
            offset_of!(k::file_clone_range, src_offset)
        );
        assert_eq!(
            offset_of!(file_clone_range, src_length),
            offset_of!(k::file_clone_range, src_length)
        );
        assert_eq!(
            offset_of!(file_clone_range, dest_offset),
            offset_of!(k::file_clone_range, dest_offset)
        );
        assert_eq!(
            FICLONERANGE as u64,
            u64::from(linux_raw_sys::ioctl::FICLONERANGE)
        );
    }
}
