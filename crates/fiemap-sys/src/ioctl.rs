//! The FIEMAP request buffer and the FIEMAP and FIGETBSZ calls.
#![allow(
    unsafe_code,
    reason = "this module wraps the FIEMAP and FIGETBSZ ioctls"
)]

use std::ffi::{c_int, c_void};
use std::fmt;
use std::mem::{align_of, size_of};
use std::os::fd::AsFd;

use rustix::io::{Errno, Result};
use rustix::ioctl::{Getter, Ioctl, IoctlOutput, Opcode, ioctl};

use crate::abi::{FIGETBSZ, FS_IOC_FIEMAP, fiemap, fiemap_extent};

const WORD: usize = size_of::<u64>();
const HEADER_WORDS: usize = size_of::<fiemap>() / WORD;
const EXTENT_WORDS: usize = size_of::<fiemap_extent>() / WORD;

// The buffer is a `Vec<u64>`: both structures must be a whole number of 8-byte words and need
// no more than 8-byte alignment for the casts in `header`/`extents` to be sound.
const _: () = assert!(
    size_of::<fiemap>().is_multiple_of(WORD) && size_of::<fiemap_extent>().is_multiple_of(WORD)
);
const _: () = assert!(align_of::<fiemap>() <= WORD && align_of::<fiemap_extent>() <= WORD);

/// An owned FIEMAP request: a [`fiemap`] header followed by room for a fixed number of
/// [`fiemap_extent`]s, laid out and aligned as the kernel expects.
///
/// Allocate it once and reuse it for every call of a walk: a buffer for 4096 extents is
/// 224 KiB, whatever the size of the file.
pub struct FiemapBuffer {
    /// Header words followed by `capacity` extents' words. Never resized after `new`.
    words: Vec<u64>,
    capacity: u32,
}

impl FiemapBuffer {
    /// A zeroed buffer with room for `extent_capacity` extents.
    ///
    /// A capacity of 0 makes a "count only" request: the kernel then reports in
    /// `fm_mapped_extents` how many extents the range holds, without describing them.
    pub fn new(extent_capacity: u32) -> Self {
        let words = HEADER_WORDS + EXTENT_WORDS * extent_capacity as usize;
        let mut buf = Self {
            words: vec![0; words],
            capacity: extent_capacity,
        };
        buf.set_request(0, 0, 0);
        buf
    }

    /// How many extents one call can return.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Prepares the next call: map `[start, start + length)` with the `FIEMAP_FLAG_*` `flags`.
    ///
    /// Resets `fm_mapped_extents` to 0 so that a failed call never shows stale extents.
    pub fn set_request(&mut self, start: u64, length: u64, flags: u32) {
        let header = fiemap {
            fm_start: start,
            fm_length: length,
            fm_flags: flags,
            fm_mapped_extents: 0,
            fm_extent_count: self.capacity,
            fm_reserved: 0,
        };
        // SAFETY: `words` holds at least `HEADER_WORDS` u64s, so the first
        // `size_of::<fiemap>()` bytes are in bounds and 8-byte aligned (checked above), and
        // `fiemap` is plain old data with no invalid bit patterns.
        unsafe { self.words.as_mut_ptr().cast::<fiemap>().write(header) };
    }

    /// The header as the last call left it.
    pub fn header(&self) -> &fiemap {
        // SAFETY: as in `set_request`: in bounds, aligned, every bit pattern is a valid
        // `fiemap`; the shared borrow of `self` keeps the words alive and unchanged.
        unsafe { &*self.words.as_ptr().cast::<fiemap>() }
    }

    /// The extents the last call mapped: the first `fm_mapped_extents`, never more than the
    /// capacity (a filesystem that reported more is not trusted beyond the buffer).
    pub fn extents(&self) -> &[fiemap_extent] {
        let mapped = self.header().fm_mapped_extents.min(self.capacity) as usize;
        // SAFETY: the extents start right after the header, at word `HEADER_WORDS`; `mapped`
        // is at most `capacity`, and `words` has room for `capacity` extents, so the slice is
        // in bounds. The words are 8-byte aligned (checked above), zero-initialised by `new`
        // and only ever written by us or the kernel with plain data, and `fiemap_extent` has
        // no invalid bit patterns. The borrow of `self` keeps them alive and unchanged.
        unsafe {
            std::slice::from_raw_parts(
                self.words
                    .as_ptr()
                    .add(HEADER_WORDS)
                    .cast::<fiemap_extent>(),
                mapped,
            )
        }
    }
}

impl fmt::Debug for FiemapBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FiemapBuffer")
            .field("capacity", &self.capacity)
            .field("header", self.header())
            .field("extents", &self.extents().len())
            .finish()
    }
}

/// The `Ioctl` pattern for FIEMAP: a read-write pointer to a whole [`FiemapBuffer`].
struct FiemapRequest<'a>(&'a mut FiemapBuffer);

// SAFETY: the opcode is `_IOWR('f', 11, struct fiemap)`, the kernel's FS_IOC_FIEMAP (pinned by
// tests against linux-raw-sys), and the pointer is to a `struct fiemap` header whose
// `fm_extent_count` (set by `set_request` and never changed otherwise) matches the room the
// buffer has for extents after it, so the kernel never writes out of bounds. The kernel
// writes the header and extents, hence `IS_MUTATING`.
unsafe impl Ioctl for FiemapRequest<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        FS_IOC_FIEMAP
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.0.words.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> Result<()> {
        Ok(())
    }
}

/// `ioctl(fd, FS_IOC_FIEMAP, buf)`: gets part of a file's extent map.
///
/// Maps the range and flags set by [`FiemapBuffer::set_request`]; on success
/// [`FiemapBuffer::extents`] holds what the kernel returned. The call is retried on `EINTR`.
/// Filesystems without FIEMAP answer `EOPNOTSUPP`, objects that are not files `ENOTTY`, and
/// unknown request flags `EBADR` (the header's `fm_flags` then names them).
///
/// # References
/// - [Documentation/filesystems/fiemap.rst](https://docs.kernel.org/filesystems/fiemap.html)
/// - [ioctl_fiemap(2)](https://man7.org/linux/man-pages/man2/ioctl_fiemap.2.html)
#[doc(alias = "FS_IOC_FIEMAP")]
pub fn fiemap_ioctl<Fd: AsFd>(fd: Fd, buf: &mut FiemapBuffer) -> Result<()> {
    let fd = fd.as_fd();
    loop {
        // SAFETY: `FiemapRequest` upholds the `Ioctl` contract (see its impl).
        match unsafe { ioctl(fd, FiemapRequest(buf)) } {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// `ioctl(fd, FIGETBSZ, &int)`: gets the block size of the filesystem holding a file.
///
/// Some stacked filesystems do not answer it; callers usually fall back to `st_blksize`.
///
/// # References
/// - `fs/ioctl.c` (`ioctl_fibmap` and `FIGETBSZ` in `do_vfs_ioctl`)
#[doc(alias = "FIGETBSZ")]
pub fn figetbsz<Fd: AsFd>(fd: Fd) -> Result<u32> {
    // SAFETY: FIGETBSZ writes exactly one `int` through its pointer argument, which is the
    // `Output` type of this getter.
    let size = unsafe { ioctl(fd.as_fd(), Getter::<FIGETBSZ, c_int>::new())? };
    u32::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or(Errno::INVAL)
}
