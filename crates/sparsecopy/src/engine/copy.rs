//! Moving bytes: `copy_file_range`, and user space (`pread`/`pwrite`), with zero detection and
//! the streamed SRC whose size lies.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

use rustix::io::Errno;
use tracing::debug;

use crate::error::{Error, Result};
use crate::feed;
use crate::options::Method;
use crate::plan::ZeroRuns;
use crate::report::Transfer;

use super::decide::wants_copy_file_range;
use super::{Engine, unsupported_between};

/// `copy_file_range` calls are cut to this size: a copy stops within one of them when
/// interrupted (a clone moves no data and is left whole).
const COPY_CHUNK: u64 = 16 << 20;
/// A `pwrite` writes at most this much, as cp does. The page cache sizes the folios it
/// allocates for a write by the write's length; folios of a whole buffer come from the large
/// free blocks that a VM with free page reporting has handed back to its host, and stall on
/// the host at first touch, where smaller ones come from memory still at hand (ARCHITECTURE).
const WRITE_MAX: usize = 128 << 10;

impl Engine<'_, '_> {
    /// Reads SRC from `from` to where reading ends (or to the window's end, a cap here) and
    /// writes what it gives: SRC's size lies, so its map says nothing. One `pread` per
    /// buffer; in a regular DST all-zero blocks become holes (punched where DST had data).
    /// The window then ends where reading did, and a regular DST ends there too (never below
    /// its old size).
    pub(super) fn stream_to_end(&mut self, from: u64) -> Result<()> {
        let mut buf = self.take_buf();
        let end = self.window.skip + self.window.length;
        let mut at = from;
        let result = loop {
            if at >= end {
                break Ok(());
            }
            if let Err(e) = self.check_stop() {
                break Err(e);
            }
            let dst_at = self.window.dst_offset(at);
            let room = (self.buf_len - (dst_at % self.bs) as usize) as u64;
            let want = (end - at).min(room) as usize;
            let n = match self.read_some(at, &mut buf[..want]) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if self.block_device && dst_at + n as u64 > self.old_size {
                break Err(Error::DeviceTooSmall {
                    path: self.dst_path.to_owned(),
                    end: dst_at + n as u64,
                    size: self.old_size,
                });
            }
            self.report.data_bytes += n as u64;
            if let Err(e) = self.write_out(&buf[..n], dst_at, !self.block_device) {
                break Err(e);
            }
            at += n as u64;
        };
        self.buf = buf;
        result?;
        self.report.data_ranges += u64::from(at > from);
        self.window.length = at - self.window.skip;
        self.report.length = self.window.length;
        let new_end = self.window.dst_offset(at);
        if !self.block_device && self.window.length > 0 {
            let size = self.old_size.max(new_end);
            let now = rustix::fs::fstat(self.dst).map_err(|e| Error::StatDest {
                path: self.dst_path.to_owned(),
                source: e.into(),
            })?;
            if now.st_size as u64 != size {
                self.touch(size.min(now.st_size as u64)..size.max(now.st_size as u64));
                self.report.syscalls.ftruncate += 1;
                rustix::fs::ftruncate(self.dst, size).map_err(|e| Error::Resize {
                    path: self.dst_path.to_owned(),
                    size,
                    source: e.into(),
                })?;
            }
        }
        Ok(())
    }

    /// After a read of SRC ended before its stated size while SRC's stat did not move (a size
    /// that lies, as sysfs's 4096): what was done stands, and SRC is read on to its end.
    pub(super) fn resume_stream(&mut self) -> Result<()> {
        let from = self.window.skip + self.meter.passed();
        self.meter.unknown();
        let r = &mut self.report;
        // The step that met the end was counted whole; only what was written counts.
        r.data_bytes =
            r.reflinked_bytes + r.copy_file_range_bytes + r.read_write_bytes + r.zero_skipped_bytes;
        r.hole_bytes = self.meter.passed() - r.data_bytes;
        self.stream_to_end(from)
    }

    /// One `pread` (retried on EINTR): the bytes it gave, 0 at SRC's end.
    fn read_some(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        loop {
            self.report.syscalls.pread += 1;
            match rustix::io::pread(self.src, &mut *buf, offset) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Read {
                        path: self.src_path.to_owned(),
                        offset,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Copies a data range (SRC offsets) by `copy_file_range` where that is wanted and
    /// works, else through user space.
    pub(super) fn copy(&mut self, src: Range<u64>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let src = if self.working.copy_file_range
            && wants_copy_file_range(self.options, self.copy_shares, src.end - src.start)
        {
            match self.copy_file_range(src)? {
                None => return Ok(()),
                Some(rest) => rest,
            }
        } else {
            src
        };
        self.stream(src, false)
    }

    /// `copy_file_range` over a whole range, looping on short copies. Returns the part left
    /// to copy another way when the kernel refuses (and the method was not forced).
    fn copy_file_range(&mut self, src: Range<u64>) -> Result<Option<Range<u64>>> {
        let mut src_off = src.start;
        let mut dst_off = self.window.dst_offset(src.start);
        while src_off < src.end {
            self.check_stop()?;
            let want = (src.end - src_off).min(COPY_CHUNK) as usize;
            self.report.syscalls.copy_file_range += 1;
            let at = dst_off;
            self.touch(at..at + want as u64);
            match rustix::fs::copy_file_range(
                self.src,
                Some(&mut src_off),
                self.dst,
                Some(&mut dst_off),
                want,
            ) {
                Ok(0) => {
                    return Err(Error::SourceShrank {
                        path: self.src_path.to_owned(),
                        offset: src_off,
                    });
                }
                Ok(n) => self.transferred(Transfer::CopyFileRange, n as u64),
                Err(Errno::INTR) => {}
                Err(e) if unsupported_between(e) => {
                    if self.options.method == Method::CopyFileRange {
                        return Err(Error::MethodUnsupported {
                            method: "copy_file_range",
                            src: self.src_path.to_owned(),
                            dst: self.dst_path.to_owned(),
                            source: e.into(),
                        });
                    }
                    debug!(errno = %e, "copy_file_range not supported here; using read/write");
                    self.working.copy_file_range = false;
                    self.user_space.store(true, Ordering::Relaxed);
                    return Ok(Some(src_off..src.end));
                }
                Err(e) => {
                    return Err(Error::CopyFileRange {
                        src: self.src_path.to_owned(),
                        dst: self.dst_path.to_owned(),
                        offset: at,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(None)
    }

    fn take_buf(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![0; self.buf_len];
        }
        buf
    }

    /// Copies a range through user space, a buffer at a time; the pieces end on DST's block
    /// boundaries so zero detection sees whole blocks.
    pub(super) fn stream(&mut self, src: Range<u64>, zeros: bool) -> Result<()> {
        let mut buf = self.take_buf();
        let mut at = src.start;
        let result = loop {
            if at >= src.end {
                break Ok(());
            }
            let dst_at = self.window.dst_offset(at);
            let room = self.buf_len - (dst_at % self.bs) as usize;
            let n = ((src.end - at) as usize).min(room);
            let step = self
                .check_stop()
                .and_then(|()| self.read_exact(at, &mut buf[..n]))
                .and_then(|()| self.write_out(&buf[..n], dst_at, zeros));
            if let Err(e) = step {
                break Err(e);
            }
            at += n as u64;
        };
        self.buf = buf;
        result
    }

    /// Writes bytes read from SRC at DST offset `at`, leaving out all-zero blocks when
    /// detecting zeros or told to (`zeros`: settled data); they are cleared instead, as holes
    /// are.
    pub(super) fn write_out(&mut self, bytes: &[u8], at: u64, zeros: bool) -> Result<()> {
        if !self.options.detect_zeros && !zeros {
            self.write_all(bytes, at)?;
            self.transferred(Transfer::ReadWrite, bytes.len() as u64);
            return Ok(());
        }
        for (piece, zero) in ZeroRuns::new(bytes, at, self.bs) {
            let start = at + piece.start as u64;
            let len = (piece.end - piece.start) as u64;
            if zero {
                self.clear(start..start + len)?;
                self.report.zero_skipped_bytes += len;
                self.meter.data(len);
            } else {
                self.write_all(&bytes[piece], start)?;
                self.transferred(Transfer::ReadWrite, len);
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.report.syscalls.pread += feed::read_exact(self.src, self.src_path, offset, buf)?;
        Ok(())
    }

    /// `pwrite` until all of `bytes` is written, [`WRITE_MAX`] at most a call.
    fn write_all(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        self.touch(offset..offset + bytes.len() as u64);
        let mut put = 0;
        while put < bytes.len() {
            let at = offset + put as u64;
            let end = bytes.len().min(put + WRITE_MAX);
            self.report.syscalls.pwrite += 1;
            match rustix::io::pwrite(self.dst, &bytes[put..end], at) {
                Ok(0) => return Err(self.write_error(at, io::ErrorKind::WriteZero.into())),
                Ok(n) => put += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.write_error(at, e.into())),
            }
        }
        Ok(())
    }

    pub(super) fn write_error(&self, offset: u64, source: io::Error) -> Error {
        Error::Write {
            path: self.dst_path.to_owned(),
            offset,
            source,
        }
    }
}
