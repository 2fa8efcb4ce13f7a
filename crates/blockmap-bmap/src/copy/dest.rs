//! The destination's side of a copy: positioned writes, the span written so far, and
//! writeback started as the copy goes.

use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::Advice;
use tracing::debug;

use crate::error::{Error, Result};
use crate::format::BlockRange;

/// The bytes of the destination written so far, as one span (for the message of an
/// interrupted copy).
pub(super) struct Written {
    start: AtomicU64,
    end: AtomicU64,
}

impl Written {
    pub(super) fn new() -> Self {
        Written {
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(0),
        }
    }

    pub(super) fn add(&self, bytes: Range<u64>) {
        self.start.fetch_min(bytes.start, Ordering::Relaxed);
        self.end.fetch_max(bytes.end, Ordering::Relaxed);
    }

    pub(super) fn span(&self) -> Option<Range<u64>> {
        let (start, end) = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        );
        (start < end).then_some(start..end)
    }
}

/// Writes `piece` of `range` at `pos` of the destination.
pub(super) fn write_piece(
    out: &File,
    dest: &Path,
    range: &BlockRange,
    pos: u64,
    piece: &[u8],
) -> Result<()> {
    out.write_all_at(piece, pos).map_err(|e| {
        let what = format!(
            "write blocks {}-{} (bytes {}-{})",
            range.first,
            range.last,
            pos,
            pos + piece.len() as u64
        );
        Error::io(what, dest, e)
    })
}

/// Writeback of the destination started as the copy goes, when it ends in an fsync: the disk
/// writes while the image is read and hashed, and the fsync waits only for the last window
/// (otherwise nothing reaches the disk before the fsync, a disk image's data being far below
/// the kernel's background writeback threshold).
pub(super) struct Writeback<'a> {
    out: &'a File,
    dest: &'a Path,
    /// Written and not yet handed to writeback.
    pending: Option<Range<u64>>,
    pending_bytes: u64,
}

/// Bytes written between two starts of writeback.
const WRITEBACK_WINDOW: u64 = 16 << 20;

impl<'a> Writeback<'a> {
    pub(super) fn new(out: &'a File, dest: &'a Path) -> Self {
        Writeback {
            out,
            dest,
            pending: None,
            pending_bytes: 0,
        }
    }

    /// `bytes` were written.
    pub(super) fn written(&mut self, bytes: Range<u64>) {
        self.pending_bytes += bytes.end - bytes.start;
        let pending = match self.pending.take() {
            Some(p) => p.start.min(bytes.start)..p.end.max(bytes.end),
            None => bytes,
        };
        if self.pending_bytes < WRITEBACK_WINDOW {
            self.pending = Some(pending);
            return;
        }
        self.pending_bytes = 0;
        // POSIX_FADV_DONTNEED starts writeback of the range's dirty pages without waiting for
        // it (WB_SYNC_NONE) and drops the range's clean pages, which the pages just written are
        // not yet: this is `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which rustix lacks, and
        // it keeps an image being flashed from crowding the page cache (`dd oflag=nocache`
        // does the same). Advice only: a failure costs speed, never data (the final fsync
        // reports write errors).
        let len = NonZeroU64::new(pending.end - pending.start);
        if let Err(e) = rustix::fs::fadvise(self.out, pending.start, len, Advice::DontNeed) {
            debug!(dest = %self.dest.display(), error = %e, "no early writeback");
        }
    }
}
