//! Making DST read as zeros where SRC has holes: DST's own map walked forward, holes
//! punched, zeros written where punching is not supported, a device's ranges zeroed.

use std::io::{self, IoSlice};
use std::ops::Range;

use blockmap_core::DataRanges;
use blockmap_core::fs::is_unsupported_errno;
use blockmap_core::ranges::round_in;
use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use tracing::{debug, trace};

use crate::error::{Error, Result};

use super::Engine;

/// Zeros for filling where a hole cannot be punched.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A forward walk over DST's data ranges, answering "which parts of this range hold data"
/// for ranges asked in ascending order.
pub(super) struct DstCursor<'m> {
    ranges: Option<DataRanges<'m>>,
    /// The data range under the cursor, kept while it may overlap later questions.
    current: Option<Range<u64>>,
    /// Everything before it has been answered.
    pos: u64,
    /// The start of the last range asked about (questions come in ascending order).
    asked: u64,
}

impl<'m> DstCursor<'m> {
    /// A destination with no data to care about.
    pub(super) fn empty() -> Self {
        DstCursor {
            ranges: None,
            current: None,
            pos: 0,
            asked: 0,
        }
    }

    pub(super) fn new(ranges: DataRanges<'m>) -> Self {
        DstCursor {
            ranges: Some(ranges),
            current: None,
            pos: 0,
            asked: 0,
        }
    }

    /// The next piece of DST's data inside `range`, or `None` when there is no more. Call it
    /// until `None`; later calls must ask about later ranges.
    fn next_data(&mut self, range: &Range<u64>) -> Result<Option<Range<u64>>> {
        debug_assert!(range.start >= self.asked, "DST map asked out of order");
        self.asked = range.start;
        let start = range.start.max(self.pos);
        if start >= range.end {
            return Ok(None);
        }
        loop {
            let current = match self.current.take() {
                Some(c) => c,
                None => match self.ranges.as_mut().and_then(Iterator::next) {
                    None => {
                        self.ranges = None;
                        return Ok(None);
                    }
                    Some(r) => r?,
                },
            };
            if current.end <= start {
                continue;
            }
            if current.start >= range.end {
                self.current = Some(current);
                return Ok(None);
            }
            let piece = current.start.max(start)..current.end.min(range.end);
            self.pos = piece.end;
            self.current = Some(current);
            return Ok(Some(piece));
        }
    }
}

impl Engine<'_, '_> {
    /// Writes zeros over a DST range (`pwritev` of a static zero buffer, 1 MiB a call).
    fn write_zeros(&mut self, dst: Range<u64>) -> Result<()> {
        self.touch(dst.clone());
        let mut at = dst.start;
        while at < dst.end {
            self.check_stop()?;
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            let mut left = dst.end - at;
            while left > 0 && count < slices.len() {
                let n = left.min(ZEROS.len() as u64) as usize;
                slices[count] = IoSlice::new(&ZEROS[..n]);
                count += 1;
                left -= n as u64;
            }
            self.report.syscalls.pwrite += 1;
            match rustix::io::pwritev(self.dst, &slices[..count], at) {
                Ok(0) => return Err(self.write_error(at, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    at += n as u64;
                    self.report.zeroed_bytes += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.write_error(at, e.into())),
            }
        }
        Ok(())
    }

    /// Makes a DST range read as zeros where it must: in a regular file, wherever DST holds
    /// data; on a block device, only with [`Options::zero_holes`](crate::Options::zero_holes).
    pub(super) fn clear(&mut self, dst: Range<u64>) -> Result<()> {
        if self.block_device {
            if self.options.zero_holes {
                self.zero_device(dst)?;
            }
            return Ok(());
        }
        while let Some(piece) = self.cursor.next_data(&dst)? {
            self.punch(piece)?;
        }
        Ok(())
    }

    /// `fallocate(mode)` over a DST range: `Ok(true)` when done, `Ok(false)` when the mode is
    /// not supported here.
    pub(super) fn fallocate(&mut self, mode: FallocateFlags, dst: &Range<u64>) -> Result<bool> {
        self.touch(dst.clone());
        loop {
            self.report.syscalls.fallocate += 1;
            match rustix::fs::fallocate(self.dst, mode, dst.start, dst.end - dst.start) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => {}
                Err(e) if is_unsupported_errno(e) => {
                    debug!(errno = %e, ?mode, "fallocate mode not supported here");
                    return Ok(false);
                }
                Err(e) => {
                    return Err(Error::Clear {
                        path: self.dst_path.to_owned(),
                        offset: dst.start,
                        len: dst.end - dst.start,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Punches a hole where a regular DST holds data (partial blocks at the ends are zeroed
    /// by the kernel, as `fallocate(2)` specifies), or writes zeros where it cannot.
    pub(super) fn punch(&mut self, dst: Range<u64>) -> Result<()> {
        trace!(?dst, "punch");
        if self.working.punch {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if self.fallocate(mode, &dst)? {
                self.report.punched_bytes += dst.end - dst.start;
                return Ok(());
            }
            self.working.punch = false;
        }
        self.write_zeros(dst)
    }

    /// Zeroes a range of a block device: its page-aligned middle by `fallocate` (punch,
    /// which guarantees zeros and may unmap, else zero-range), the edges and whatever the
    /// device refuses by written zeros. Never a discard, which need not read back as zeros.
    fn zero_device(&mut self, dst: Range<u64>) -> Result<()> {
        trace!(?dst, "zero device range");
        let middle = round_in(dst.clone(), self.bs.max(4096));
        if middle.is_empty() {
            return self.write_zeros(dst);
        }
        self.write_zeros(dst.start..middle.start)?;
        let len = middle.end - middle.start;
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        if self.working.device_punch {
            if self.fallocate(punch, &middle)? {
                self.report.punched_bytes += len;
                return self.write_zeros(middle.end..dst.end);
            }
            self.working.device_punch = false;
        }
        if self.working.device_zero {
            if self.fallocate(zero, &middle)? {
                self.report.zeroed_bytes += len;
                return self.write_zeros(middle.end..dst.end);
            }
            self.working.device_zero = false;
        }
        self.write_zeros(middle.start..dst.end)
    }
}
