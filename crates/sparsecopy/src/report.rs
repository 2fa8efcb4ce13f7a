//! What a copy did: bytes by method, holes, clears, syscalls, time.

use std::fmt;
use std::time::Duration;

use blockmap_core::Backend;
use serde::Serialize;

use crate::human::human_size as human;

/// A way data reached DST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transfer {
    /// Shared with SRC (`FICLONERANGE`).
    Reflink,
    /// Copied inside the kernel (`copy_file_range`; some filesystems share extents there).
    CopyFileRange,
    /// Copied through user space (`pread`/`pwrite`).
    ReadWrite,
}

impl Transfer {
    /// The name used in JSON and in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Transfer::Reflink => "reflink",
            Transfer::CopyFileRange => "copy_file_range",
            Transfer::ReadWrite => "read_write",
        }
    }
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// System calls made on the data path (the block maps' own FIEMAP and lseek calls are not
/// counted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Syscalls {
    /// `ioctl(FICLONERANGE)`, including refused attempts.
    pub ficlonerange: u64,
    /// `copy_file_range`, including refused attempts.
    pub copy_file_range: u64,
    /// `pread`.
    pub pread: u64,
    /// `pwrite` and `pwritev`.
    pub pwrite: u64,
    /// `fallocate` (punch hole, zero range), including refused attempts.
    pub fallocate: u64,
    /// `ftruncate` (growing DST).
    pub ftruncate: u64,
    /// `fsync`.
    pub fsync: u64,
}

/// The outcome of a copy. `--json` prints it as one object (durations in seconds).
///
/// The bytes of the window add up: `data_bytes + hole_bytes == length`, and
/// `reflinked_bytes + copy_file_range_bytes + read_write_bytes + zero_skipped_bytes ==
/// data_bytes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The window's start in SRC.
    pub skip: u64,
    /// The window's start in DST.
    pub seek: u64,
    /// The window's length, cut at SRC's end.
    pub length: u64,
    /// The backend that mapped SRC.
    #[serde(serialize_with = "serialize_backend")]
    pub backend: Backend,
    /// DST's block size: the unit of alignment for reflinks and of zero detection.
    pub block_size: u64,
    /// DST did not exist and was created.
    pub created: bool,
    /// DST is a block device.
    pub block_device: bool,
    /// Bytes of SRC's data ranges in the window.
    pub data_bytes: u64,
    /// Bytes of SRC's holes in the window (not read, not written).
    pub hole_bytes: u64,
    /// Data ranges in the window.
    pub data_ranges: u64,
    /// Hole ranges in the window.
    pub hole_ranges: u64,
    /// Data bytes shared with SRC.
    pub reflinked_bytes: u64,
    /// Data bytes copied by `copy_file_range`.
    pub copy_file_range_bytes: u64,
    /// Data bytes copied through user space.
    pub read_write_bytes: u64,
    /// Data bytes found to be all-zero blocks and not written ([`crate::Options::detect_zeros`]).
    pub zero_skipped_bytes: u64,
    /// Bytes of DST deallocated so that they read as zeros (holes punched where DST had data).
    pub punched_bytes: u64,
    /// Bytes of DST zeroed without deallocation: `fallocate` zero-range on a device, or
    /// zeros written where punching is not supported.
    pub zeroed_bytes: u64,
    /// The ways data reached DST, in a fixed order.
    pub methods: Vec<Transfer>,
    /// System calls on the data path.
    pub syscalls: Syscalls,
    /// Wall time of the whole copy, opening and mapping included.
    #[serde(serialize_with = "serialize_seconds")]
    pub elapsed: Duration,
}

fn serialize_backend<S: serde::Serializer>(b: &Backend, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(b.name())
}

fn serialize_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Report {
    pub(crate) fn new(backend: Backend) -> Self {
        Report {
            skip: 0,
            seek: 0,
            length: 0,
            backend,
            block_size: 0,
            created: false,
            block_device: false,
            data_bytes: 0,
            hole_bytes: 0,
            data_ranges: 0,
            hole_ranges: 0,
            reflinked_bytes: 0,
            copy_file_range_bytes: 0,
            read_write_bytes: 0,
            zero_skipped_bytes: 0,
            punched_bytes: 0,
            zeroed_bytes: 0,
            methods: Vec::new(),
            syscalls: Syscalls::default(),
            elapsed: Duration::ZERO,
        }
    }

    /// Records that `bytes` of data went by `how`.
    pub(crate) fn transferred(&mut self, how: Transfer, bytes: u64) {
        match how {
            Transfer::Reflink => self.reflinked_bytes += bytes,
            Transfer::CopyFileRange => self.copy_file_range_bytes += bytes,
            Transfer::ReadWrite => self.read_write_bytes += bytes,
        }
        // A method is listed when it moved data (a clone of nothing but holes moved none).
        if bytes > 0
            && let Err(at) = self.methods.binary_search(&how)
        {
            self.methods.insert(at, how);
        }
    }

    /// The methods as one word for a summary line: `"reflink+read_write"`, or `"none"` when
    /// no data was written.
    pub fn method_summary(&self) -> String {
        if self.methods.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<_> = self.methods.iter().map(|m| m.name()).collect();
        names.join("+")
    }
}

/// The one-line summary: data copied, holes skipped, method, time.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} of data, skipped {} of holes",
            human(self.data_bytes - self.zero_skipped_bytes),
            human(self.hole_bytes)
        )?;
        if self.zero_skipped_bytes > 0 {
            write!(f, " and {} of zeros", human(self.zero_skipped_bytes))?;
        }
        if self.punched_bytes + self.zeroed_bytes > 0 {
            write!(
                f,
                ", cleared {}",
                human(self.punched_bytes + self.zeroed_bytes)
            )?;
        }
        write!(
            f,
            " ({}) in {:.3} s",
            self.method_summary(),
            self.elapsed.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_stay_sorted_and_unique() {
        let mut r = Report::new(Backend::Seek);
        r.transferred(Transfer::ReadWrite, 1);
        r.transferred(Transfer::Reflink, 2);
        r.transferred(Transfer::ReadWrite, 3);
        assert_eq!(r.methods, [Transfer::Reflink, Transfer::ReadWrite]);
        assert_eq!(r.method_summary(), "reflink+read_write");
        assert_eq!(r.read_write_bytes, 4);
    }
}
