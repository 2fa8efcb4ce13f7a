//! The pure part of a copy: the window walked as alternating data and hole steps, the block
//! arithmetic that decides what can be reflinked, and zero-block detection.
//!
//! ```text
//!  SRC data ranges:        [3,5)       [9,10)
//!  window [2, 12):   hole [2,3) data [3,5) hole [5,9) data [9,10) hole [10,12)
//! ```

use std::ops::Range;

use blockmap_core::ranges::round_in;

/// One step of the window, in SRC offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A data range of SRC: copy it.
    Data(Range<u64>),
    /// A hole of SRC: DST must read zeros there.
    Hole(Range<u64>),
    /// Data of SRC found by SEEK_DATA inside a preallocated extent: written since, or pages of
    /// zeros a read put in the page cache. Copied with its all-zero blocks left out.
    Settled(Range<u64>),
}

/// A data range as the map gives it: plain, or with [`blockmap_core::DataRange::settled`].
pub(crate) trait Marked {
    fn parts(self) -> (Range<u64>, bool);
}

impl Marked for Range<u64> {
    fn parts(self) -> (Range<u64>, bool) {
        (self, false)
    }
}

impl Marked for blockmap_core::DataRange {
    fn parts(self) -> (Range<u64>, bool) {
        (self.range, self.settled)
    }
}

fn data_step(range: Range<u64>, settled: bool) -> Step {
    if settled {
        Step::Settled(range)
    } else {
        Step::Data(range)
    }
}

impl Step {
    /// The SRC range of the step.
    pub(crate) fn range(&self) -> &Range<u64> {
        match self {
            Step::Data(r) | Step::Hole(r) | Step::Settled(r) => r,
        }
    }
}

/// Turns the data ranges of a window (sorted, disjoint, inside the window, as
/// [`blockmap_core::BlockMap::data`] yields them) into steps that tile the window exactly.
#[derive(Debug)]
pub(crate) struct Steps<I> {
    data: I,
    /// Everything before it has been stepped over.
    cursor: u64,
    end: u64,
    /// A data range found after a hole, yielded next.
    pending: Option<(Range<u64>, bool)>,
    failed: bool,
}

impl<I> Steps<I> {
    /// The steps of `window`, given its data ranges.
    pub(crate) fn new(data: I, window: Range<u64>) -> Self {
        Steps {
            data,
            cursor: window.start,
            end: window.end,
            pending: None,
            failed: false,
        }
    }
}

impl<I, D, E> Iterator for Steps<I>
where
    I: Iterator<Item = Result<D, E>>,
    D: Marked,
{
    type Item = Result<Step, E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some((d, settled)) = self.pending.take() {
            self.cursor = d.end;
            return Some(Ok(data_step(d, settled)));
        }
        loop {
            match self.data.next() {
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Some(Ok(d)) => {
                    let (d, settled) = d.parts();
                    // Defensive: never step backwards nor past the window.
                    let d = d.start.max(self.cursor)..d.end.min(self.end);
                    if d.is_empty() {
                        continue;
                    }
                    if d.start > self.cursor {
                        let hole = self.cursor..d.start;
                        self.cursor = d.start;
                        self.pending = Some((d, settled));
                        return Some(Ok(Step::Hole(hole)));
                    }
                    self.cursor = d.end;
                    return Some(Ok(data_step(d, settled)));
                }
                None if self.cursor < self.end => {
                    let hole = self.cursor..self.end;
                    self.cursor = self.end;
                    return Some(Ok(Step::Hole(hole)));
                }
                None => return None,
            }
        }
    }
}

/// A data range cut for reflinking: the whole blocks in the middle, and the partial blocks
/// before and after it (each possibly empty). Offsets are SRC's; they are valid for DST too
/// only when `skip - seek` is a multiple of the block size, which the caller checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub head: Range<u64>,
    pub blocks: Range<u64>,
    pub tail: Range<u64>,
}

/// Cuts `range` at `block` boundaries.
///
/// ```text
///  block 4:  |   .   .   |   .   .   |   .   .   |
///  range  [2 ................................ 10)
///  head   [2, 4)  blocks [4, 8)  tail [8, 10)
/// ```
pub(crate) fn cut(range: Range<u64>, block: u64) -> Cut {
    let blocks = round_in(range.clone(), block);
    if blocks.is_empty() {
        return Cut {
            head: range.clone(),
            blocks: range.end..range.end,
            tail: range.end..range.end,
        };
    }
    Cut {
        head: range.start..blocks.start,
        tail: blocks.end..range.end,
        blocks,
    }
}

/// Whether `(skip - seek)` is a multiple of `block`: SRC's block boundaries land on DST's.
pub(crate) fn blocks_line_up(skip: u64, seek: u64, block: u64) -> bool {
    skip % block == seek % block
}

/// True when every byte is zero.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed chunks (no early exit inside a chunk) lets the compiler vectorize.
    let mut chunks = bytes.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Splits a buffer bound for DST offset `dst_start` into maximal runs of all-zero and
/// not-all-zero pieces, cut on DST's `block` grid: a block (or the partial block at an end)
/// is zero only if every byte of it is.
///
/// ```text
///  block 4, dst_start 2:  |  . .|. . . .|. . . .|. .
///  bytes                  [0 0|0 0 0 0|0 1 0 0|0 0]
///  runs                   zero [0,6)   data [6,10)  zero [10,12)
/// ```
#[derive(Debug)]
pub(crate) struct ZeroRuns<'a> {
    buf: &'a [u8],
    dst_start: u64,
    block: u64,
    pos: usize,
}

impl<'a> ZeroRuns<'a> {
    pub(crate) fn new(buf: &'a [u8], dst_start: u64, block: u64) -> Self {
        debug_assert!(block > 0);
        ZeroRuns {
            buf,
            dst_start,
            block,
            pos: 0,
        }
    }
}

impl Iterator for ZeroRuns<'_> {
    /// The piece of the buffer, and whether it is all zeros.
    type Item = (Range<usize>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let mut zero = None;
        while self.pos < self.buf.len() {
            let offset = self.dst_start + self.pos as u64;
            let to_boundary = (self.block - offset % self.block) as usize;
            let end = self.buf.len().min(self.pos.saturating_add(to_boundary));
            let z = is_zero(&self.buf[self.pos..end]);
            match zero {
                None => zero = Some(z),
                Some(prev) if prev != z => break,
                Some(_) => {}
            }
            self.pos = end;
        }
        zero.map(|z| (start..self.pos, z))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(data: &[Range<u64>], window: Range<u64>) -> Vec<Step> {
        Steps::new(data.iter().cloned().map(Ok::<_, ()>), window)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn steps_tile_the_window() {
        use Step::*;
        assert_eq!(
            steps(&[3..5, 9..10], 2..12),
            [
                Hole(2..3),
                Data(3..5),
                Hole(5..9),
                Data(9..10),
                Hole(10..12)
            ]
        );
        assert_eq!(steps(&[2..12], 2..12), [Data(2..12)]);
        assert_eq!(steps(&[], 2..12), [Hole(2..12)]);
        assert_eq!(steps(&[], 5..5), []);
        assert_eq!(
            steps(&[0..4, 8..20], 2..12),
            [Data(2..4), Hole(4..8), Data(8..12)]
        );
    }

    #[test]
    fn steps_stop_after_an_error() {
        let it = [Ok(0..1), Err("boom"), Ok(5..6)].into_iter();
        let got: Vec<_> = Steps::new(it, 0..10).collect();
        assert_eq!(got, [Ok(Step::Data(0..1)), Err("boom")]);
    }

    #[test]
    fn cuts() {
        assert_eq!(
            cut(2..10, 4),
            Cut {
                head: 2..4,
                blocks: 4..8,
                tail: 8..10
            }
        );
        assert_eq!(
            cut(4..8, 4),
            Cut {
                head: 4..4,
                blocks: 4..8,
                tail: 8..8
            }
        );
        // No whole block: everything is head.
        assert_eq!(
            cut(5..7, 4),
            Cut {
                head: 5..7,
                blocks: 7..7,
                tail: 7..7
            }
        );
        assert!(blocks_line_up(4100, 4, 4096));
        assert!(!blocks_line_up(4100, 0, 4096));
    }

    #[test]
    fn zero_runs_follow_the_dst_grid() {
        let buf = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let runs: Vec<_> = ZeroRuns::new(&buf, 2, 4).collect();
        assert_eq!(runs, [(0..6, true), (6..10, false), (10..12, true)]);
        let runs: Vec<_> = ZeroRuns::new(&buf, 0, 4).collect();
        assert_eq!(runs, [(0..4, true), (4..8, false), (8..12, true)]);
        assert_eq!(ZeroRuns::new(&[], 0, 4).count(), 0);
        let ones = [1u8; 9];
        let runs: Vec<_> = ZeroRuns::new(&ones, 3, 4).collect();
        assert_eq!(runs, [(0..9, false)]);
    }

    #[test]
    fn is_zero_sees_every_byte() {
        let mut buf = vec![0u8; 200];
        assert!(is_zero(&buf));
        for i in [0, 63, 64, 127, 128, 199] {
            buf[i] = 1;
            assert!(!is_zero(&buf), "{i}");
            buf[i] = 0;
        }
    }
}
