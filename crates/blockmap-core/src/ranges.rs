//! The range algebra: pure functions and streaming adapters over half-open `Range<u64>`s.
//!
//! Everything here works on sorted streams (ranges in ascending order of start), holds O(1)
//! state and never allocates, so it composes with iterators over millions of extents.
//!
//! ```text
//!  data in:    [0,4) [4,6)      [9,12)          merge:  [0,6)      [9,12)
//!  window:        [2 ................... 11)     clip:     [2,6)    [9,11)
//!                                                invert:       [6,9)
//! ```

use std::ops::Range;

/// `range ∩ window`, or `None` when they do not overlap (or `range` is empty).
///
/// ```
/// use blockmap_core::ranges::clip;
/// assert_eq!(clip(0..10, &(5..20)), Some(5..10));
/// assert_eq!(clip(0..5, &(5..20)), None);
/// ```
pub fn clip(range: Range<u64>, window: &Range<u64>) -> Option<Range<u64>> {
    let r = range.start.max(window.start)..range.end.min(window.end);
    (r.start < r.end).then_some(r)
}

/// Rounds a range outwards to whole `block`s: the smallest block-aligned range covering it
/// (the end saturates at `u64::MAX`). An empty range covers nothing and stays empty.
///
/// ```
/// use blockmap_core::ranges::round_out;
/// assert_eq!(round_out(5..4097, 4096), 0..8192);
/// assert!(round_out(5..5, 4096).is_empty());
/// ```
pub fn round_out(range: Range<u64>, block: u64) -> Range<u64> {
    debug_assert!(block > 0);
    let start = range.start - range.start % block;
    if range.is_empty() {
        return start..start;
    }
    let end = match range.end % block {
        0 => range.end,
        rem => range.end.saturating_add(block - rem),
    };
    start..end
}

/// Rounds a range inwards to whole `block`s: the largest block-aligned range inside it
/// (possibly empty).
///
/// ```
/// use blockmap_core::ranges::round_in;
/// assert_eq!(round_in(5..9000, 4096), 4096..8192);
/// assert!(round_in(5..4000, 4096).is_empty());
/// ```
pub fn round_in(range: Range<u64>, block: u64) -> Range<u64> {
    debug_assert!(block > 0);
    let start = match range.start % block {
        0 => range.start,
        rem => range.start.saturating_add(block - rem),
    };
    let end = range.end - range.end % block;
    start..end.max(start)
}

/// The block numbers a byte range touches (rounded outwards): `[first, last + 1)`.
///
/// ```
/// use blockmap_core::ranges::to_blocks;
/// assert_eq!(to_blocks(4096..8193, 4096), 1..3);
/// ```
pub fn to_blocks(range: Range<u64>, block: u64) -> Range<u64> {
    let r = round_out(range, block);
    r.start / block..r.end.div_ceil(block)
}

/// The byte range of a range of block numbers, saturating at `u64::MAX`.
pub fn from_blocks(blocks: Range<u64>, block: u64) -> Range<u64> {
    blocks.start.saturating_mul(block)..blocks.end.saturating_mul(block)
}

/// Merges a sorted stream of ranges into maximal disjoint ranges: overlapping or touching
/// ranges become one, empty ranges vanish. Item errors pass through at once.
///
/// The input must be sorted by start; a range that starts before the previous one ends is
/// simply absorbed, so the output is sorted, disjoint and never touching.
#[derive(Debug, Clone)]
pub struct Merge<I> {
    inner: I,
    pending: Option<Range<u64>>,
}

impl<I> Merge<I> {
    /// Merges `inner`.
    pub fn new(inner: I) -> Self {
        Merge {
            inner,
            pending: None,
        }
    }

    /// The iterator being merged.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

impl<I, E> Iterator for Merge<I>
where
    I: Iterator<Item = Result<Range<u64>, E>>,
{
    type Item = Result<Range<u64>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next() {
                None => return self.pending.take().map(Ok),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(r)) if r.start >= r.end => continue,
                Some(Ok(r)) => match &mut self.pending {
                    None => self.pending = Some(r),
                    Some(p) if r.start <= p.end => p.end = p.end.max(r.end),
                    Some(p) => {
                        let out = std::mem::replace(p, r);
                        return Some(Ok(out));
                    }
                },
            }
        }
    }
}

/// The complement of a sorted stream of ranges inside `window`: the gaps between them.
///
/// Input ranges may extend outside the window and may touch or overlap; the output is sorted,
/// disjoint, non-empty and clipped to the window. Item errors pass through at once.
#[derive(Debug, Clone)]
pub struct Invert<I> {
    inner: I,
    /// Start of the next gap; nothing before it is emitted.
    cursor: u64,
    end: u64,
    done: bool,
}

impl<I> Invert<I> {
    /// The gaps of `inner` inside `window`.
    pub fn new(inner: I, window: Range<u64>) -> Self {
        Invert {
            inner,
            cursor: window.start,
            end: window.end,
            done: false,
        }
    }
}

impl<I, E> Iterator for Invert<I>
where
    I: Iterator<Item = Result<Range<u64>, E>>,
{
    type Item = Result<Range<u64>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some(item) = self.inner.next() else {
                self.done = true;
                let gap = self.cursor..self.end;
                self.cursor = self.end;
                return (gap.start < gap.end).then_some(Ok(gap));
            };
            let r = match item {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if r.start >= r.end || r.end <= self.cursor {
                continue;
            }
            let gap = self.cursor..r.start.min(self.end);
            self.cursor = self.cursor.max(r.end).min(self.end);
            if self.cursor >= self.end {
                self.done = true;
            }
            if gap.start < gap.end {
                return Some(Ok(gap));
            }
        }
        None
    }
}

/// Extension methods to build the adapters from any iterator of `Result<Range<u64>, E>`.
pub trait RangeIterExt<E>: Iterator<Item = Result<Range<u64>, E>> + Sized {
    /// See [`Merge`].
    fn merged(self) -> Merge<Self> {
        Merge::new(self)
    }

    /// See [`Invert`].
    fn inverted(self, window: Range<u64>) -> Invert<Self> {
        Invert::new(self, window)
    }

    /// Clips every range to `window`, dropping those outside it.
    fn clipped(self, window: Range<u64>) -> impl Iterator<Item = Result<Range<u64>, E>> {
        self.filter_map(move |r| match r {
            Ok(r) => clip(r, &window).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// Rounds every range outwards to `block`s, then merges (rounding can make ranges touch).
    fn rounded_out(self, block: u64) -> Merge<impl Iterator<Item = Result<Range<u64>, E>>> {
        Merge::new(self.map(move |r| r.map(|r| round_out(r, block))))
    }
}

impl<E, I: Iterator<Item = Result<Range<u64>, E>>> RangeIterExt<E> for I {}
