//! The kernel calls the FIEMAP walk makes, behind a trait so that tests can script the odd
//! answers real filesystems give only sometimes (as `seekmap` does for its walk).

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;

use fiemap_sys::{CacheStat, FiemapBuffer, fiemap_extent, fiemap_ioctl};
use rustix::io::Errno;
use seekmap::DataSegments;

/// The kernel as the walk sees it: FIEMAP calls and the extents each returned, the SEEK_DATA
/// walk that settles doubtful spans, and the page cache's state of a range.
pub(crate) trait Kernel: fmt::Debug {
    /// The data segments of a span by SEEK_DATA/SEEK_HOLE, in order.
    type Segments: Iterator<Item = Result<Range<u64>, seekmap::Error>> + fmt::Debug;

    /// `FS_IOC_FIEMAP` over `length` bytes from `start`, with the `FIEMAP_FLAG_*` `flags`.
    fn fiemap(&mut self, start: u64, length: u64, flags: u32) -> Result<(), Errno>;

    /// The extents the last call returned: none before the first call or after a failed one.
    fn extents(&self) -> &[fiemap_extent];

    /// The SEEK_DATA walk over `span`, stepping over empty segments by `granule` bytes.
    fn data_segments(&mut self, span: Range<u64>, granule: u64) -> Self::Segments;

    /// `cachestat(2)` over `range`.
    fn cachestat(&mut self, range: &Range<u64>) -> io::Result<CacheStat>;
}

/// The real kernel: the calls on an open file, with one FIEMAP buffer reused by every call.
#[derive(Debug)]
pub(crate) struct FileKernel<'a> {
    fd: BorrowedFd<'a>,
    buf: FiemapBuffer,
}

impl<'a> FileKernel<'a> {
    /// Calls on `fd`, up to `batch` extents a FIEMAP call (at least one).
    pub(crate) fn new(fd: BorrowedFd<'a>, batch: u32) -> Self {
        FileKernel {
            fd,
            buf: FiemapBuffer::new(batch.max(1)),
        }
    }
}

impl<'a> Kernel for FileKernel<'a> {
    type Segments = DataSegments<BorrowedFd<'a>>;

    fn fiemap(&mut self, start: u64, length: u64, flags: u32) -> Result<(), Errno> {
        self.buf.set_request(start, length, flags);
        fiemap_ioctl(self.fd, &mut self.buf)
    }

    fn extents(&self) -> &[fiemap_extent] {
        self.buf.extents()
    }

    fn data_segments(&mut self, span: Range<u64>, granule: u64) -> Self::Segments {
        DataSegments::with_granule(self.fd, span, granule)
    }

    fn cachestat(&mut self, range: &Range<u64>) -> io::Result<CacheStat> {
        fiemap_sys::cachestat_range(self.fd, range.start, range.end - range.start)
    }
}
