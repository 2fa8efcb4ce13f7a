//! Walks the data segments of a file with `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)`.
//!
//! [`DataSegments`] yields, in order, the byte ranges of a window that the kernel says hold
//! data. It streams: one `SEEK_DATA` and one `SEEK_HOLE` per segment, nothing stored, so a file
//! with a million segments costs no more memory than one with a single segment.
//!
//! SEEK_DATA consults the page cache, so data that was written but not yet written back (dirty
//! pages, writes into preallocated extents, delayed allocation) is reported as data. That makes
//! this walk the authority on "does this range read back as zeros right now".
//!
//! # Support
//! A kernel or filesystem without SEEK_DATA answers `EINVAL`: the walk then fails with
//! [`Error::Unsupported`], which callers use to fall back. Many filesystems have only the
//! generic stub (everything up to the end of the file is data): that is still correct, only
//! not sparse, so it is not an error. Nothing here needs write access to anything.
//!
//! # Kernel quirks handled
//! - An empty segment (`SEEK_DATA(x) = d` then `SEEK_HOLE(d) = d`, seen on ext4 with 1 KiB
//!   blocks on 4 KiB pages) is never emitted: the walk counts one granule from `d` as data
//!   (over-reporting data is safe, losing it is not) and goes on from there.
//! - An answer behind the position asked is treated as the position itself, so the walk always
//!   moves forward.
//!
//! # Side effect
//! `lseek` moves the file offset of the open file description. Use positioned I/O
//! (`pread`/`pwrite`, [`std::os::unix::fs::FileExt`]) on a file you walk.
//!
//! # Example
//! ```
//! use std::os::unix::fs::FileExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = tempfile::tempfile()?;
//! file.write_all_at(b"hello", 1 << 20)?; // data at 1 MiB, a hole before it
//! file.set_len(4 << 20)?;
//! let size = file.metadata()?.len();
//! for segment in seekmap::DataSegments::new(&file, 0..size) {
//!     let segment = segment?;
//!     // The segment contains the data; filesystems report whole blocks.
//!     assert!(segment.start <= 1 << 20 && segment.end >= (1 << 20) + 5);
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

// README.md, the crate's page on crates.io: its example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

mod walk;

pub use walk::{DEFAULT_GRANULE, DataSegments, seek_data, seek_hole};

/// What went wrong while walking a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel or the filesystem does not implement SEEK_DATA/SEEK_HOLE (`EINVAL`).
    #[error("SEEK_DATA/SEEK_HOLE is not supported here (lseek at offset {offset}: {source})")]
    Unsupported {
        /// The offset that was asked.
        offset: u64,
        /// The kernel's answer.
        source: rustix::io::Errno,
    },
    /// `lseek` failed for another reason (`EIO`, `EBADF`…).
    #[error("lseek({whence}) at offset {offset} failed: {source}")]
    Seek {
        /// `"SEEK_DATA"` or `"SEEK_HOLE"`.
        whence: &'static str,
        /// The offset that was asked.
        offset: u64,
        /// The kernel's answer.
        source: rustix::io::Errno,
    },
}

impl Error {
    /// True when the error means "this kernel or filesystem has no SEEK_DATA/SEEK_HOLE",
    /// as opposed to a real failure.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}
