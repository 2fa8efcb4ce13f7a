//! The FIEMAP walk: batched, streaming, clipped, and honest about doubtful extents.
//!
//! The walk asks for a whole window in calls of up to [`crate::MapOptions::fiemap_batch`]
//! extents. After each call it continues from the end of the last extent returned, so a
//! full buffer without the LAST flag just means "ask again"; LAST (which some filesystems set
//! on the last extent of the range asked, not of the file) or an empty answer ends it. If a
//! filesystem ever answers without moving forward, the rest of the window is settled with
//! SEEK_DATA instead of looping or guessing.
//!
//! Kernels do not always answer in order: btrfs, asked from the end of the last extent it
//! returned while delayed allocations sit inside a preallocation, answers again with extents
//! that lie before the start. Extents that end at or before the furthest end already handed
//! out are dropped and one that overlaps it is trimmed, so the walk yields extents in file
//! order, without repeats. When a call makes no forward progress at all, the data walk settles
//! the rest of the window with SEEK_DATA; the raw extent listing ([`crate::BlockMap::extents`])
//! asks once more with `FIEMAP_FLAG_SYNC`, which writes the file's dirty pages back so that
//! the kernel can describe them, and only then gives up.
//!
//! Extents may start before the window and run past it and past the end of the file (XFS
//! speculative preallocation, `fallocate --keep-size`, btrfs inline extents of a whole block
//! for a 5-byte file): everything is clipped to the window, which the caller clipped to the
//! file's size. Nothing assumes block alignment.
//!
//! It keeps [the one rule](crate#the-one-rule): only `UNWRITTEN` extents are doubtful;
//! `DELALLOC`, `UNKNOWN`, `ENCODED`, inline and ordinary extents are data as they stand.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::Path;

use fiemap_sys::{
    FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN,
    FIEMAP_EXTENT_UNWRITTEN, FIEMAP_FLAG_SYNC, FIEMAP_MAX_OFFSET, FiemapBuffer, fiemap_ioctl,
};
use rustix::io::Errno;
use tracing::{debug, trace};

use crate::Extent;
use crate::error::{Error, Result};
use crate::ranges::clip;

mod kernel;
#[cfg(test)]
mod tests;

use kernel::{FileKernel, Kernel};

/// Checks that FIEMAP works on `fd` with the cheapest request there is: count the extents of
/// the first byte.
pub(crate) fn probe(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut buf = FiemapBuffer::new(0);
    buf.set_request(0, 1, 0);
    fiemap_ioctl(fd, &mut buf)
}

/// What the raw walk yields: an extent the kernel returned, or a stretch the kernel would not
/// describe (no forward progress) that must be settled another way.
#[derive(Debug)]
pub(crate) enum Piece {
    Extent(Extent),
    Unsettled(Range<u64>),
}

/// The raw extents overlapping `[next, end)`, in the kernel's order, batch by batch.
#[derive(Debug)]
pub(crate) struct ExtentWalk<'a, K = FileKernel<'a>> {
    kernel: K,
    path: &'a Path,
    /// Where the next call starts.
    next: u64,
    end: u64,
    /// Index of the next extent of the current batch to hand out.
    idx: usize,
    /// No more calls to make.
    exhausted: bool,
    /// The furthest extent end handed out: extents ending before it are repeats.
    furthest: Option<u64>,
    /// On a call without forward progress, retry with `FIEMAP_FLAG_SYNC` before giving up.
    sync_on_stall: bool,
    /// `FIEMAP_FLAG_SYNC` or 0, for the calls to come.
    flags: u32,
    /// Every extent handed out, when the caller wants them as well as what is made of them.
    kept: Option<Vec<Extent>>,
}

impl<'a> ExtentWalk<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>, path: &'a Path, window: Range<u64>, batch: u32) -> Self {
        ExtentWalk::with_kernel(FileKernel::new(fd, batch), path, window)
    }
}

impl<'a, K: Kernel> ExtentWalk<'a, K> {
    /// The walk of `window` asking `kernel`; `path` names the file in errors.
    pub(crate) fn with_kernel(kernel: K, path: &'a Path, window: Range<u64>) -> Self {
        ExtentWalk {
            kernel,
            path,
            next: window.start,
            end: window.end,
            idx: 0,
            exhausted: window.start >= window.end,
            furthest: None,
            sync_on_stall: false,
            flags: 0,
            kept: None,
        }
    }

    /// Keeps a copy of every extent handed out, for [`ExtentWalk::take_kept`].
    pub(crate) fn keeping_extents(mut self) -> Self {
        self.kept = Some(Vec::new());
        self
    }

    /// The extents kept so far.
    pub(crate) fn take_kept(&mut self) -> Vec<Extent> {
        self.kept.take().unwrap_or_default()
    }

    /// Makes a stalled walk ask once more with `FIEMAP_FLAG_SYNC` instead of giving up: for
    /// the raw extent listing, which has no other way to describe the rest.
    pub(crate) fn sync_on_stall(mut self) -> Self {
        self.sync_on_stall = true;
        self
    }

    /// Runs the next FIEMAP call; `Ok(false)` when the walk is over.
    fn refill(&mut self) -> Result<bool> {
        if self.exhausted || self.next >= self.end {
            self.exhausted = true;
            return Ok(false);
        }
        let length = if self.end == u64::MAX {
            FIEMAP_MAX_OFFSET
        } else {
            self.end - self.next
        };
        self.kernel
            .fiemap(self.next, length, self.flags)
            .map_err(|e| Error::Fiemap {
                path: self.path.to_owned(),
                offset: self.next,
                source: e.into(),
            })?;
        self.idx = 0;
        let extents = self.kernel.extents();
        trace!(
            start = self.next,
            length,
            mapped = extents.len(),
            "FIEMAP call"
        );
        let Some(last) = extents.last() else {
            self.exhausted = true;
            return Ok(false);
        };
        let last_end = last.fe_logical.saturating_add(last.fe_length);
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 || last_end >= self.end {
            self.exhausted = true;
        } else if last_end <= self.next {
            if self.sync_on_stall && self.flags & FIEMAP_FLAG_SYNC == 0 {
                debug!(
                    next = self.next,
                    last_end, "FIEMAP made no progress; asking again with SYNC"
                );
                self.flags |= FIEMAP_FLAG_SYNC;
            } else {
                // No forward progress: never loop, never guess. Hand the batch out, then the
                // rest of the window as unsettled.
                debug!(
                    next = self.next,
                    last_end, "FIEMAP made no progress; settling the rest by SEEK"
                );
                self.exhausted = true;
            }
        } else {
            self.next = last_end;
        }
        Ok(true)
    }

    pub(crate) fn next_piece(&mut self) -> Option<Result<Piece>> {
        loop {
            if let Some(e) = self.kernel.extents().get(self.idx) {
                self.idx += 1;
                let mut e = Extent::from_raw(e);
                if let Some(furthest) = self.furthest {
                    if e.logical.end <= furthest {
                        trace!(?e, furthest, "FIEMAP repeated an extent; dropped");
                        continue;
                    }
                    if e.logical.start < furthest {
                        trim_start(&mut e, furthest);
                    }
                }
                self.furthest = Some(e.logical.end);
                if let Some(kept) = &mut self.kept {
                    kept.push(e.clone());
                }
                return Some(Ok(Piece::Extent(e)));
            }
            if self.exhausted {
                // A walk that stopped short without the kernel saying so leaves the rest to SEEK.
                let rest = self.next..self.end;
                self.next = self.end;
                return self.stopped_short(rest).map(|r| Ok(Piece::Unsettled(r)));
            }
            match self.refill() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.exhausted = true;
                    self.next = self.end;
                    return Some(Err(e));
                }
            }
        }
    }

    /// After the last batch: the stretch the kernel never described, if the walk ended for
    /// lack of progress rather than by LAST, an empty answer or reaching the end.
    fn stopped_short(&self, rest: Range<u64>) -> Option<Range<u64>> {
        let last_end = self
            .kernel
            .extents()
            .last()
            .map(|e| e.fe_logical.saturating_add(e.fe_length));
        let ended_cleanly = match (self.kernel.extents().last(), last_end) {
            (None, _) => true,
            (Some(e), Some(end)) => e.fe_flags & FIEMAP_EXTENT_LAST != 0 || end >= self.end,
            _ => true,
        };
        let rest = last_end.map_or(rest.start, |e| e.max(rest.start))..rest.end;
        (!ended_cleanly && rest.start < rest.end).then_some(rest)
    }
}

/// Cuts the part of `e` before `start`, moving its physical offset along where that offset
/// maps bytes one to one (not for encoded, inline or unknown extents).
fn trim_start(e: &mut Extent, start: u64) {
    let cut = start - e.logical.start;
    e.logical.start = start;
    if e.flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_UNKNOWN) == 0 {
        e.physical = e.physical.saturating_add(cut);
    }
}

/// Whether to ask the page cache before settling doubtful spans on the filesystem of `fd`:
/// not on btrfs, whose SEEK_DATA answers from its own records of dirty ranges, cheaply and
/// exactly, where cachestat would count every cached page of the span (figures in
/// `benches/RESULTS.md`). On ext4 and xfs,
/// SEEK_DATA over unwritten extents looks at the cached pages one by one as well, and a walk
/// costs two calls per data segment besides.
pub(crate) fn trust_clean_unwritten(fd: BorrowedFd<'_>) -> bool {
    crate::fs::FsKind::of(fd).is_some_and(|kind| kind != crate::fs::FsKind::Btrfs)
}

/// Whether no page of `range` is dirty or under writeback (`cachestat(2)`): then FIEMAP's
/// unwritten extents there read as zeros, data written into an unwritten extent staying in
/// such pages until writeback has converted the extent. Without cachestat (kernels before
/// 6.5), false: SEEK_DATA settles the span.
fn page_cache_clean(kernel: &mut impl Kernel, range: &Range<u64>) -> bool {
    match kernel.cachestat(range) {
        Ok(stat) => stat.dirty == 0 && stat.writeback == 0,
        Err(e) => {
            trace!(error = %e, "no cachestat");
            false
        }
    }
}

/// Written extents held back behind a doubtful span, waiting to see whether another doubtful
/// extent follows (then they join the span) or not (then they go out after it).
const MAX_HELD: usize = 32;
/// At most this many written extents inside one doubtful span (1 MiB of ranges: memory stays
/// bounded); a span that would hold more is settled and the next one begun. Each span costs
/// the kernel a walk to the next hole, which may be the end of the file: few and long spans.
const MAX_INSIDE: usize = 1 << 16;

/// The data ranges of a window by FIEMAP, unmerged, with doubtful extents settled.
///
/// Doubtful extents close to each other are settled together: one SEEK walk over the span
/// from the first to the last, written extents between them included (SEEK calls those data
/// too). Settling each alone costs the kernel a walk from it to the next hole, which on a
/// file whose unwritten extents are all in the page cache is the rest of the file: quadratic
/// in the number of extents (figures in `benches/RESULTS.md`).
#[derive(Debug)]
pub(crate) struct FiemapData<'a, K: Kernel = FileKernel<'a>> {
    walk: ExtentWalk<'a, K>,
    window: Range<u64>,
    granule: u64,
    /// Ask the page cache before settling a span (see [`page_cache_clean`]).
    trust_clean_unwritten: bool,
    /// The SEEK walk over a doubtful span, when one is under way.
    settling: Option<K::Segments>,
    settling_end: u64,
    /// The doubtful span being gathered.
    doubt: Option<Range<u64>>,
    /// A stretch FIEMAP never described is in it (only SEEK can tell).
    doubt_undescribed: bool,
    /// The written extents inside it: data for sure, whatever the SEEK walk over the span.
    inside: Vec<Range<u64>>,
    /// Those of the span being settled, not yet passed.
    settling_inside: VecDeque<Range<u64>>,
    /// The rest of a settled segment still to be split against `settling_inside`.
    segment: Option<Range<u64>>,
    /// Written extents after `doubt`, not yet passed on.
    held: VecDeque<Range<u64>>,
    /// Written extents to pass on once the settling walk is done.
    ready: VecDeque<Range<u64>>,
}

impl<'a, K: Kernel> FiemapData<'a, K> {
    pub(crate) fn new(
        walk: ExtentWalk<'a, K>,
        window: Range<u64>,
        granule: u64,
        trust_clean_unwritten: bool,
    ) -> Self {
        FiemapData {
            walk,
            window,
            granule,
            trust_clean_unwritten,
            settling: None,
            settling_end: 0,
            doubt: None,
            doubt_undescribed: false,
            inside: Vec::new(),
            settling_inside: VecDeque::new(),
            segment: None,
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Adds a doubtful range to the span: the written extents held since its end join it.
    fn doubt(&mut self, range: Range<u64>) {
        if self.doubt.is_some() && self.inside.len() + self.held.len() > MAX_INSIDE {
            self.settle();
        }
        self.inside.extend(self.held.drain(..));
        match &mut self.doubt {
            Some(d) => d.end = d.end.max(range.end),
            None => self.doubt = Some(range),
        }
    }

    /// Starts settling the gathered span; the extents held after it follow.
    fn settle(&mut self) {
        let Some(range) = self.doubt.take() else {
            return;
        };
        let undescribed = std::mem::take(&mut self.doubt_undescribed);
        if self.trust_clean_unwritten
            && !undescribed
            && page_cache_clean(&mut self.walk.kernel, &range)
        {
            // No page there is dirty or being written back: the unwritten extents hold no
            // data, and the written ones inside are all the data of the span.
            trace!(?range, "doubtful extents without dirty pages: holes");
            self.ready = std::mem::take(&mut self.inside).into();
            self.ready.extend(self.held.drain(..));
            return;
        }
        trace!(?range, "settling doubtful extents with SEEK_DATA");
        self.settling_end = range.end;
        self.settling = Some(self.walk.kernel.data_segments(range, self.granule));
        self.ready = std::mem::take(&mut self.held);
        self.settling_inside = std::mem::take(&mut self.inside).into();
    }

    /// The next piece of a settled segment: parts under a written extent are certain data,
    /// the rest settled.
    fn split_segment(&mut self) -> Option<(Range<u64>, bool)> {
        let seg = self.segment.take()?;
        while self
            .settling_inside
            .front()
            .is_some_and(|w| w.end <= seg.start)
        {
            self.settling_inside.pop_front();
        }
        let (piece, certain) = match self.settling_inside.front() {
            Some(w) if w.start < seg.end => {
                if w.start > seg.start {
                    (seg.start..w.start, false)
                } else {
                    (seg.start..w.end.min(seg.end), true)
                }
            }
            _ => (seg.clone(), false),
        };
        if piece.end < seg.end {
            self.segment = Some(piece.end..seg.end);
        }
        Some((piece, !certain))
    }
}

impl<K: Kernel> FiemapData<'_, K> {
    /// The extents its walk kept (see [`ExtentWalk::keeping_extents`]).
    pub(crate) fn take_kept(&mut self) -> Vec<Extent> {
        self.walk.take_kept()
    }
}

impl<K: Kernel> Iterator for FiemapData<'_, K> {
    type Item = Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_marked().map(|r| r.map(|(r, _)| r))
    }
}

impl<K: Kernel> FiemapData<'_, K> {
    /// The next data range, and whether SEEK_DATA found it while settling (it may be pages of
    /// zeros in the page cache over a preallocated extent).
    pub(crate) fn next_marked(&mut self) -> Option<Result<(Range<u64>, bool)>> {
        loop {
            if let Some(piece) = self.split_segment() {
                return Some(Ok(piece));
            }
            if let Some(segments) = &mut self.settling {
                match segments.next() {
                    Some(Ok(r)) => {
                        self.segment = Some(r);
                        continue;
                    }
                    None => self.settling = None,
                    Some(Err(seekmap::Error::Unsupported { offset, .. })) => {
                        // No SEEK_DATA to tell: the doubtful rest counts as data.
                        debug!(
                            offset,
                            "SEEK_DATA unsupported while settling; counting as data"
                        );
                        self.settling = None;
                        return Some(Ok((offset..self.settling_end, true)));
                    }
                    Some(Err(source)) => {
                        self.settling = None;
                        return Some(Err(Error::Seek {
                            path: self.walk.path.to_owned(),
                            source,
                        }));
                    }
                }
            }
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok((r, false)));
            }
            match self.walk.next_piece() {
                None if self.doubt.is_some() => self.settle(),
                None => return None,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(Piece::Unsettled(r))) => {
                    self.doubt(r);
                    self.doubt_undescribed = true;
                    self.settle();
                }
                Some(Ok(Piece::Extent(e))) => {
                    let Some(r) = clip(e.logical.clone(), &self.window) else {
                        continue;
                    };
                    trace!(?r, flags = e.flags, "extent");
                    if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
                        self.doubt(r);
                    } else if self.doubt.is_some() {
                        self.held.push_back(r);
                        if self.held.len() > MAX_HELD {
                            self.settle();
                        }
                    } else {
                        return Some(Ok((r, false)));
                    }
                }
            }
        }
    }
}
