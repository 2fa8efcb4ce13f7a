//! `cachestat(2)`: the page-cache state of a byte range of a file (Linux 6.5).
//!
//! What tells whether FIEMAP's `UNWRITTEN` flags can be taken at their word: data written into
//! an unwritten extent sits in dirty or under-writeback pages until writeback has converted
//! the extent (the kernel converts before it ends the pages' writeback), so a range without
//! such pages has no unwritten extent holding data.
#![allow(
    unsafe_code,
    reason = "rustix has no cachestat: this module is its one raw syscall"
)]

use std::ffi::{c_int, c_long, c_uint};
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use linux_raw_sys::general::{__NR_cachestat, cachestat, cachestat_range};

/// The page-cache state of a byte range, as `cachestat(2)` counts it (in pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStat {
    /// Pages of the range in the page cache.
    pub cached: u64,
    /// Of those, dirty (written, not yet written back).
    pub dirty: u64,
    /// Of those, being written back.
    pub writeback: u64,
}

/// `cachestat(fd, {offset, len}, &out, 0)`: counts the range's pages in the page cache, dirty
/// and under writeback. `len` 0 means up to the end of the file. Kernels before 6.5 answer
/// `ENOSYS`; a seccomp filter may answer `EPERM` or `ENOSYS`. Retried on `EINTR`.
///
/// # References
/// - [cachestat(2)](https://man7.org/linux/man-pages/man2/cachestat.2.html)
/// - `mm/filemap.c` (`filemap_cachestat`)
pub fn cachestat_range<Fd: AsFd>(fd: Fd, offset: u64, len: u64) -> io::Result<CacheStat> {
    let range = cachestat_range { off: offset, len };
    let mut out = cachestat {
        nr_cache: 0,
        nr_dirty: 0,
        nr_writeback: 0,
        nr_evicted: 0,
        nr_recently_evicted: 0,
    };
    let fd: c_int = fd.as_fd().as_raw_fd();
    loop {
        // SAFETY: `cachestat(2)` reads one `struct cachestat_range` through its second argument
        // and writes one `struct cachestat` through its third; both point to live values of
        // the `#[repr(C)]` kernel layouts linux-raw-sys generates from the kernel's headers,
        // borrowed for the whole call. The fd is borrowed, so open for the call; flags are 0.
        let ret = unsafe {
            libc::syscall(
                c_long::from(__NR_cachestat as c_uint as i32),
                fd,
                &raw const range,
                &raw mut out,
                0 as c_uint,
            )
        };
        if ret == 0 {
            return Ok(CacheStat {
                cached: out.nr_cache,
                dirty: out.nr_dirty,
                writeback: out.nr_writeback,
            });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// Dirty pages are counted until fsync writes them back; where the kernel has no
    /// cachestat, it says ENOSYS.
    #[test]
    fn dirty_until_fsync() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[7; 8192], 1 << 20).unwrap();
        let before = match cachestat_range(&file, 0, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return,
            other => other.unwrap(),
        };
        assert_eq!(before.cached, 2, "{before:?}");
        assert_eq!(before.dirty + before.writeback, 2, "{before:?}");
        // A range beside the written pages holds none of them.
        let beside = cachestat_range(&file, 0, 1 << 20).unwrap();
        assert_eq!(beside, CacheStat::default());
        file.sync_all().unwrap();
        let after = cachestat_range(&file, 0, 0).unwrap();
        assert_eq!((after.cached, after.dirty, after.writeback), (2, 0, 0));
    }
}
