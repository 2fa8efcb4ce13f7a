//! Sharing SRC's extents: the whole-window clone, the reflink probe and its undoing, and the
//! range-by-range reflinks.

use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;

use blockmap_core::BlockMap;
use blockmap_core::fs::btrfs_extent_items;
use blockmap_core::ranges::clip;
use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use tracing::{debug, trace};

use crate::clone::ficlonerange;
use crate::error::{Error, Result};
use crate::options::Reflink;
use crate::plan::cut;
use crate::report::Transfer;

use super::{Engine, unsupported_between};

/// `FICLONERANGE` calls of the range-by-range copy are cut to this size, so progress moves.
const KERNEL_CHUNK: u64 = 1 << 30;
/// A whole window is reflinked in pieces of this size: mostly holes, as a disk image is, each
/// call costs next to nothing, and one per GiB made a 1 TiB image cost a thousand calls.
const CLONE_CHUNK: u64 = 1 << 40;

/// FIEMAP's extents of `span` once a clone has written SRC's dirty pages back (then no
/// unwritten extent holds data): the written ones counted, the unwritten ones listed,
/// clipped to the span.
fn settled_extents(
    src_map: &BlockMap<BorrowedFd<'_>>,
    span: &Range<u64>,
    block: u64,
) -> Result<(Tally, Vec<Range<u64>>)> {
    let mut tally = Tally::new(span.clone(), block);
    let mut unwritten = Vec::new();
    for e in src_map.extents(span.clone()) {
        let e = e?;
        let Some(r) = clip(e.logical.clone(), span) else {
            continue;
        };
        if e.is_unwritten() {
            unwritten.push(r);
        } else {
            tally.add(r);
        }
    }
    Ok((tally, unwritten))
}

/// Data and holes of a span counted from its data ranges, given in order: bytes of data,
/// data ranges (touching ones counted as one), hole ranges; and whether a data range holds a
/// whole block (something to share).
struct Tally {
    span: Range<u64>,
    block: u64,
    /// Everything before it has been counted.
    pos: u64,
    /// Where the data range ending at `pos` began.
    run_start: u64,
    data: u64,
    data_ranges: u64,
    hole_ranges: u64,
    whole_block: bool,
}

impl Tally {
    fn new(span: Range<u64>, block: u64) -> Self {
        Tally {
            pos: span.start,
            run_start: span.start,
            span,
            block,
            data: 0,
            data_ranges: 0,
            hole_ranges: 0,
            whole_block: false,
        }
    }

    fn add(&mut self, r: Range<u64>) {
        let r = r.start.max(self.pos)..r.end.min(self.span.end);
        if r.is_empty() {
            return;
        }
        self.data += r.end - r.start;
        if r.start > self.pos || self.data_ranges == 0 {
            self.data_ranges += 1;
            self.run_start = r.start;
        }
        self.hole_ranges += u64::from(r.start > self.pos);
        self.pos = r.end;
        self.whole_block |= !cut(self.run_start..self.pos, self.block).blocks.is_empty();
    }

    fn finish(self) -> (u64, u64, u64) {
        let trailing = u64::from(self.pos < self.span.end);
        (self.data, self.data_ranges, self.hole_ranges + trailing)
    }
}

impl Engine<'_, '_> {
    /// Reflinks the first whole blocks of data before anything else is written: the probe of
    /// whether this filesystem shares extents at all. With [`Reflink::Always`] a filesystem
    /// that cannot share fails the copy with DST untouched; with [`Reflink::Auto`] reflinking
    /// is given up for the whole copy.
    pub(super) fn prelink(&mut self, src_map: &BlockMap<BorrowedFd<'_>>) -> Result<()> {
        for r in src_map.data(self.window.src()) {
            let blocks = cut(r?, self.bs).blocks;
            if !blocks.is_empty() {
                let blocks = blocks.start..blocks.end.min(blocks.start + KERNEL_CHUNK);
                if self.ficlonerange(&blocks)? {
                    debug!(?blocks, "reflink works here");
                    self.prelinked = Some(blocks);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reflinks all the window's whole blocks (`span`) with a few `FICLONERANGE` calls (one
    /// per TiB), holes and all, as `cp --reflink` does: the kernel walks the extents, not us.
    /// SRC's extents are walked first. Returns the SRC range cloned, or `None` when the window
    /// is left to range-by-range copying: SRC holding preallocated extents there (a clone
    /// would share them as allocated space where DST must have holes) unless DST is on
    /// `xfs`, or nothing whole to share.
    pub(super) fn clone_window(
        &mut self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        span: Range<u64>,
        xfs: bool,
    ) -> Result<Option<Range<u64>>> {
        // What is cloned, counted as a copy would: data and holes, bytes and ranges.
        let mut tally = Tally::new(span.clone(), self.bs);
        let mut unwritten = false;
        for e in src_map.extents(span.clone()) {
            let e = e?;
            if e.is_unwritten() {
                // xfs shares only written blocks: an unwritten extent lands as a hole, its
                // data in the page cache written back first. btrfs would share it as
                // allocated space that SEEK_DATA calls data.
                if !xfs {
                    debug!(extent = ?e.logical, "preallocated extent in SRC: reflinking range by range");
                    return Ok(None);
                }
                unwritten = true;
                continue;
            }
            tally.add(e.logical);
        }
        let Tally {
            data,
            data_ranges,
            whole_block,
            ..
        } = tally;
        if !whole_block {
            // Nothing to share, and nothing to prove (the probe would not try either; with
            // Reflink::Always a refusal here would fail a copy that shares nothing).
            return Ok(None);
        }
        if self.options.reflink == Reflink::Auto
            && data < data_ranges.saturating_mul(self.options.reflink_min)
            && xfs
        {
            debug!(
                data,
                data_ranges, "many small extents on xfs: copying them beats reflinking them"
            );
            return Ok(None);
        }
        if !self.clone_span(&span)? {
            return Ok(None);
        }
        if unwritten {
            // Counted again now that the clone has written back SRC's dirty pages: FIEMAP's
            // unwritten extents are now exactly the unwritten space (zeros, cloned as holes),
            // and need no settling.
            (tally, _) = settled_extents(src_map, &span, self.bs)?;
        }
        self.cloned(span, tally)
    }

    /// The whole-window clone within one btrfs subvolume: cloned first, then settled. The
    /// clone writes SRC's dirty pages back before it shares anything, so afterwards SRC's
    /// extents are final: the written ones are what was shared as data, and the
    /// preallocated ones, which btrfs shares as allocated space that reads as zeros, are
    /// punched out of DST again (holes, as everywhere else). One extent walk, after the
    /// clone: btrfs's own extent items as root (much cheaper than FIEMAP there, which
    /// resolves every extent's sharing: benches/RESULTS.md, "Measurements behind design choices"), else FIEMAP.
    pub(super) fn clone_then_settle(
        &mut self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        span: Range<u64>,
    ) -> Result<Option<Range<u64>>> {
        if !self.clone_span(&span)? {
            return Ok(None);
        }
        let (tally, preallocated) = match btrfs_extent_items(self.src, span.clone()) {
            Some(items) => {
                let mut tally = Tally::new(span.clone(), self.bs);
                items.written.into_iter().for_each(|r| tally.add(r));
                (tally, items.preallocated)
            }
            None => settled_extents(src_map, &span, self.bs)?,
        };
        for r in preallocated {
            debug!(extent = ?r, "preallocated extent shared by the clone: punched out of DST");
            self.punch(self.dst_range(&r))?;
        }
        self.cloned(span, tally)
    }

    /// FICLONERANGE over the whole `span`, 1 TiB a call: `Ok(false)` when the filesystem
    /// does not share (nothing was cloned), an error when it stops midway.
    fn clone_span(&mut self, span: &Range<u64>) -> Result<bool> {
        let mut at = span.start;
        while at < span.end {
            let piece = at..span.end.min(at + CLONE_CHUNK);
            if !self.ficlonerange(&piece)? {
                if at == span.start {
                    return Ok(false);
                }
                // It cloned the first piece of these same two files.
                return Err(Error::Reflink {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    offset: self.window.dst_offset(at),
                    source: io::Error::other("the filesystem stopped sharing extents midway"),
                });
            }
            at = piece.end;
        }
        Ok(true)
    }

    /// Reports the cloned `span` as counted by `tally`.
    fn cloned(&mut self, span: Range<u64>, tally: Tally) -> Result<Option<Range<u64>>> {
        let (data, data_ranges, hole_ranges) = tally.finish();
        let holes = (span.end - span.start) - data;
        debug!(?span, data, data_ranges, "window reflinked whole");
        self.report.data_bytes += data;
        self.report.data_ranges += data_ranges;
        self.report.hole_bytes += holes;
        self.report.hole_ranges += hole_ranges;
        self.meter.found(data);
        self.transferred(Transfer::Reflink, data);
        self.meter.hole(holes);
        Ok(Some(span))
    }

    /// Undoes the probe's reflink when the window is copied range by range under
    /// [`Reflink::Auto`]: that range may be too small to reflink, and writing over shared
    /// blocks would cost copy-on-write allocations beyond the data. The blocks become a hole
    /// again, to be filled by the copy like any other.
    pub(super) fn unprobe(&mut self) -> Result<()> {
        if let Some(blocks) = self.prelinked.take() {
            let dst = self.dst_range(&blocks);
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if !self.fallocate(mode, &dst)? {
                // The copy writes over it all the same; only the allocation is less tidy.
                debug!(?dst, "cannot punch the probe's reflink");
            }
        }
        Ok(())
    }

    /// One `FICLONERANGE`; "not supported" is an error under [`Reflink::Always`] and
    /// `Ok(false)` otherwise.
    fn ficlonerange(&mut self, src: &Range<u64>) -> Result<bool> {
        let dst = self.dst_range(src);
        self.check_stop()?;
        self.touch(dst.clone());
        loop {
            self.report.syscalls.ficlonerange += 1;
            let e = match ficlonerange(
                self.src,
                src.start,
                self.dst,
                dst.start,
                src.end - src.start,
            ) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => e,
            };
            if !unsupported_between(e) {
                return Err(Error::Reflink {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    offset: dst.start,
                    source: e.into(),
                });
            }
            if self.options.reflink == Reflink::Always {
                return Err(Error::ReflinkUnsupported {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    source: e.into(),
                });
            }
            debug!(errno = %e, "FICLONERANGE not supported here; copying instead");
            self.working.reflink = false;
            return Ok(false);
        }
    }

    /// Reflinks whole blocks (SRC offsets, aligned), copying whatever cannot be shared.
    pub(super) fn reflink_blocks(&mut self, src: Range<u64>) -> Result<()> {
        let mut at = src.start;
        while at < src.end {
            let piece = at..src.end.min(at + KERNEL_CHUNK);
            if self.prelinked.as_ref() == Some(&piece) {
                self.prelinked = None;
            } else if !self.working.reflink || !self.ficlonerange(&piece)? {
                return self.copy(at..src.end);
            }
            trace!(?piece, "reflinked");
            self.transferred(Transfer::Reflink, piece.end - piece.start);
            at = piece.end;
        }
        Ok(())
    }
}
