//! The FIEMAP walk against scripted kernels: planned answers for each odd case that a real
//! filesystem gives only sometimes, and a model filesystem for a property test
//! (`tests/model.rs`).

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::path::Path;

use fiemap_sys::{
    CacheStat, FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNWRITTEN,
    FIEMAP_FLAG_SYNC, fiemap_extent,
};
use rustix::io::Errno;

use super::{ExtentWalk, FiemapData, Kernel, MAX_HELD, MAX_INSIDE, Piece};
use crate::Extent;
use crate::error::Error;
use crate::ranges::clip;

mod model;

const K4: u64 = 4096;
/// Extent flags: written (none), unwritten, last.
const W: u32 = 0;
const U: u32 = FIEMAP_EXTENT_UNWRITTEN;
const LAST: u32 = FIEMAP_EXTENT_LAST;
/// The scripted files' extents sit on the device at their logical offset plus this.
const PHYS: u64 = 1 << 40;

/// One extent as the kernel returns it, `k` 4 KiB pages long from page `page`.
fn ext(page: u64, pages: u64, flags: u32) -> fiemap_extent {
    fiemap_extent {
        fe_logical: page * K4,
        fe_physical: page * K4 + PHYS,
        fe_length: pages * K4,
        fe_flags: flags,
        ..Default::default()
    }
}

/// Pages `a..b` as bytes.
fn pages(r: Range<u64>) -> Range<u64> {
    r.start * K4..r.end * K4
}

/// A call the walk made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Fiemap { start: u64, length: u64, sync: bool },
    Seek(Range<u64>),
    Cachestat(Range<u64>),
}

/// `FIEMAP` from page `start` to the end of a window of `end` pages, without `SYNC`.
fn fiemap(start: u64, end: u64) -> Call {
    Call::Fiemap {
        start: start * K4,
        length: (end - start) * K4,
        sync: false,
    }
}

/// How a scripted kernel answers FIEMAP.
#[derive(Debug)]
enum Answers {
    /// These answers in order, then empty ones.
    Planned(VecDeque<Result<Vec<fiemap_extent>, Errno>>),
    /// A filesystem's answers for a file: see [`model::ModelFs`].
    Model(model::ModelFs),
}

/// A kernel whose answers a test plans; it records every call the walk makes.
#[derive(Debug)]
struct Script {
    answers: Answers,
    /// The extents of the last FIEMAP answer.
    batch: Vec<fiemap_extent>,
    /// What SEEK_DATA reports as data: written extents and pages in the page cache.
    seek_data: Vec<Range<u64>>,
    /// SEEK_DATA answers `EINVAL`.
    seek_unsupported: bool,
    /// Dirty pages and pages under writeback, as cachestat counts them.
    dirty: Vec<Range<u64>>,
    writeback: Vec<Range<u64>>,
    /// cachestat answers `ENOSYS` when false (kernels before 6.5).
    has_cachestat: bool,
    calls: Vec<Call>,
}

impl Script {
    fn new(answers: Answers) -> Self {
        Script {
            answers,
            batch: Vec::new(),
            seek_data: Vec::new(),
            seek_unsupported: false,
            dirty: Vec::new(),
            writeback: Vec::new(),
            has_cachestat: true,
            calls: Vec::new(),
        }
    }

    /// A kernel that gives these FIEMAP answers, in order.
    fn planned(batches: impl IntoIterator<Item = Vec<fiemap_extent>>) -> Self {
        Script::new(Answers::Planned(batches.into_iter().map(Ok).collect()))
    }

    fn seek(mut self, data: impl IntoIterator<Item = Range<u64>>) -> Self {
        self.seek_data = data.into_iter().collect();
        self
    }

    fn dirty(mut self, r: Range<u64>) -> Self {
        self.dirty.push(r);
        self
    }

    fn writeback(mut self, r: Range<u64>) -> Self {
        self.writeback.push(r);
        self
    }
}

/// The 4 KiB pages of `ranges` that overlap `range`.
fn pages_in(ranges: &[Range<u64>], range: &Range<u64>) -> u64 {
    ranges
        .iter()
        .filter_map(|r| clip(r.clone(), range))
        .map(|r| r.end.div_ceil(K4) - r.start / K4)
        .sum()
}

impl Kernel for Script {
    type Segments = std::vec::IntoIter<Result<Range<u64>, seekmap::Error>>;

    fn fiemap(&mut self, start: u64, length: u64, flags: u32) -> Result<(), Errno> {
        let sync = flags & FIEMAP_FLAG_SYNC != 0;
        self.calls.push(Call::Fiemap {
            start,
            length,
            sync,
        });
        self.batch.clear();
        self.batch = match &mut self.answers {
            Answers::Planned(answers) => answers.pop_front().unwrap_or(Ok(Vec::new()))?,
            Answers::Model(fs) => fs.answer(start, length, flags),
        };
        Ok(())
    }

    fn extents(&self) -> &[fiemap_extent] {
        &self.batch
    }

    fn data_segments(&mut self, span: Range<u64>, _granule: u64) -> Self::Segments {
        self.calls.push(Call::Seek(span.clone()));
        let segments: Vec<_> = if self.seek_unsupported {
            vec![Err(seekmap::Error::Unsupported {
                offset: span.start,
                source: Errno::INVAL,
            })]
        } else {
            self.seek_data
                .iter()
                .filter_map(|r| clip(r.clone(), &span))
                .map(Ok)
                .collect()
        };
        segments.into_iter()
    }

    fn cachestat(&mut self, range: &Range<u64>) -> io::Result<CacheStat> {
        self.calls.push(Call::Cachestat(range.clone()));
        if !self.has_cachestat {
            return Err(Errno::NOSYS.into());
        }
        Ok(CacheStat {
            cached: 0,
            dirty: pages_in(&self.dirty, range),
            writeback: pages_in(&self.writeback, range),
        })
    }
}

/// What the data walk of a window gave, and the calls it made.
#[derive(Debug)]
struct Run {
    /// The data ranges, each with whether SEEK found it while settling.
    data: Vec<(Range<u64>, bool)>,
    calls: Vec<Call>,
}

/// The data walk of `window` (pages) with `kernel`: `trust` is whether clean spans may stay
/// holes without SEEK (false on btrfs), `sync_on_stall` as for `BlockMap::data_and_extents`.
fn data(kernel: Script, window: Range<u64>, trust: bool, sync_on_stall: bool) -> Run {
    let window = pages(window);
    let mut walk = ExtentWalk::with_kernel(kernel, Path::new("f"), window.clone());
    if sync_on_stall {
        walk = walk.sync_on_stall();
    }
    let mut data = FiemapData::new(walk, window, K4, trust);
    let ranges = std::iter::from_fn(|| data.next_marked())
        .collect::<Result<_, _>>()
        .unwrap();
    Run {
        data: ranges,
        calls: std::mem::take(&mut data.walk.kernel.calls),
    }
}

/// Written (certain) data: pages `r`.
fn w(r: Range<u64>) -> (Range<u64>, bool) {
    (pages(r), false)
}

/// Data found by SEEK while settling: pages `r`.
fn s(r: Range<u64>) -> (Range<u64>, bool) {
    (pages(r), true)
}

/// The raw walk of `window` (pages): extents, or `Err` for an unsettled stretch.
fn pieces(
    kernel: Script,
    window: Range<u64>,
    sync_on_stall: bool,
) -> (Vec<Result<Extent, Range<u64>>>, Vec<Call>) {
    let mut walk = ExtentWalk::with_kernel(kernel, Path::new("f"), pages(window));
    if sync_on_stall {
        walk = walk.sync_on_stall();
    }
    let got = std::iter::from_fn(|| walk.next_piece())
        .map(|p| match p.unwrap() {
            Piece::Extent(e) => Ok(e),
            Piece::Unsettled(r) => Err(r),
        })
        .collect();
    (got, walk.kernel.calls)
}

/// An extent as the walk hands it out.
fn extent(page: u64, pages: u64, flags: u32) -> Extent {
    Extent::from_raw(&ext(page, pages, flags))
}

#[test]
fn a_full_batch_without_last_asks_again_from_its_end() {
    let k = Script::planned([vec![ext(0, 1, W), ext(2, 1, W)], vec![ext(4, 1, W | LAST)]]);
    let run = data(k, 0..256, true, false);
    assert_eq!(run.data, [w(0..1), w(2..3), w(4..5)]);
    assert_eq!(run.calls, [fiemap(0, 256), fiemap(3, 256)]);
}

#[test]
fn last_in_mid_window_ends_the_walk() {
    // LAST on an extent that ends well before the window: the walk believes it, asks no
    // more and leaves nothing to SEEK.
    let k = Script::planned([vec![ext(0, 1, W), ext(2, 1, W | LAST)]]).seek([pages(5..6)]);
    let run = data(k, 0..256, true, false);
    assert_eq!(run.data, [w(0..1), w(2..3)]);
    assert_eq!(run.calls, [fiemap(0, 256)]);
}

#[test]
fn an_empty_answer_ends_the_walk() {
    let k = Script::planned([vec![ext(0, 1, W)], vec![]]).seek([pages(5..6)]);
    let run = data(k, 0..256, true, false);
    assert_eq!(run.data, [w(0..1)]);
    assert_eq!(run.calls, [fiemap(0, 256), fiemap(1, 256)]);
}

#[test]
fn an_extent_reaching_the_window_end_ends_the_walk() {
    let k = Script::planned([vec![ext(0, 1, W), ext(2, 10, W)]]);
    let run = data(k, 1..8, true, false);
    assert_eq!(run.data, [w(2..8)]);
    assert_eq!(run.calls, [fiemap(1, 8)]);
}

#[test]
fn a_stall_settles_the_rest_by_seek() {
    // The second call, from page 1, answers page 0 again: no progress. The data walk hands
    // the rest of the window to SEEK at once, and asks cachestat nothing about a stretch
    // FIEMAP never described, even where it trusts clean page caches.
    let k =
        Script::planned([vec![ext(0, 1, W)], vec![ext(0, 1, W)]]).seek([pages(0..1), pages(9..10)]);
    let run = data(k, 0..256, true, false);
    assert_eq!(run.data, [w(0..1), s(9..10)]);
    assert_eq!(
        run.calls,
        [fiemap(0, 256), fiemap(1, 256), Call::Seek(pages(1..256))]
    );
}

#[test]
fn a_stall_asks_again_with_sync_then_settles_by_seek() {
    // With sync_on_stall (the raw listing, data_and_extents): one more call with SYNC, then,
    // still no progress, SEEK.
    let k = Script::planned([vec![ext(0, 1, W)], vec![ext(0, 1, W)], vec![ext(0, 1, W)]])
        .seek([pages(0..1), pages(9..10)]);
    let run = data(k, 0..256, true, true);
    assert_eq!(run.data, [w(0..1), s(9..10)]);
    let sync = Call::Fiemap {
        start: K4,
        length: 255 * K4,
        sync: true,
    };
    assert_eq!(
        run.calls,
        [
            fiemap(0, 256),
            fiemap(1, 256),
            sync,
            Call::Seek(pages(1..256))
        ]
    );
}

#[test]
fn a_sync_answer_that_progresses_goes_on_with_sync() {
    let k = Script::planned([
        vec![ext(0, 1, W)],
        vec![ext(0, 1, W)],
        vec![ext(0, 1, W), ext(3, 1, W)],
        vec![ext(6, 1, W | LAST)],
    ]);
    let run = data(k, 0..256, true, true);
    assert_eq!(run.data, [w(0..1), w(3..4), w(6..7)]);
    let sync = |start: u64| Call::Fiemap {
        start: start * K4,
        length: (256 - start) * K4,
        sync: true,
    };
    assert_eq!(
        run.calls,
        [fiemap(0, 256), fiemap(1, 256), sync(1), sync(4)]
    );
}

#[test]
fn the_raw_listing_leaves_a_stalled_rest_unsettled() {
    let k = Script::planned([vec![ext(0, 1, W)], vec![ext(0, 1, W)], vec![ext(0, 1, W)]]);
    let (got, calls) = pieces(k, 0..256, true);
    assert_eq!(got, [Ok(extent(0, 1, W)), Err(pages(1..256))]);
    assert_eq!(calls.len(), 3);
}

#[test]
fn btrfs_repeats_are_dropped_and_overlaps_trimmed() {
    // btrfs, asked from page 4, answers again with extents before it: page 0's is dropped,
    // the one over pages 2..6 is cut to 4..6 (its physical offset moving along), the
    // encoded one over 5..8 to 6..8 (an encoded extent's offset does not map one to one).
    let encoded = FIEMAP_EXTENT_ENCODED;
    let k = Script::planned([
        vec![ext(0, 2, W), ext(2, 2, U)],
        vec![ext(0, 2, W), ext(2, 4, W), ext(5, 3, encoded)],
        vec![ext(7, 2, W), ext(10, 1, W | LAST)],
    ]);
    let (got, calls) = pieces(k, 0..256, false);
    let mut trimmed = extent(4, 2, W);
    trimmed.physical = pages(4..4).start + PHYS;
    let mut encoded_trimmed = extent(6, 2, encoded);
    encoded_trimmed.physical = pages(5..5).start + PHYS;
    let want = [
        extent(0, 2, W),
        extent(2, 2, U),
        trimmed,
        encoded_trimmed,
        Extent {
            logical: pages(8..9),
            physical: pages(8..8).start + PHYS,
            flags: W,
        },
        extent(10, 1, W | LAST),
    ];
    assert_eq!(got, want.map(Ok));
    assert_eq!(calls, [fiemap(0, 256), fiemap(4, 256), fiemap(8, 256)]);
}

#[test]
fn a_fiemap_error_names_the_offset_and_ends_the_walk() {
    let answers = [Ok(vec![ext(0, 1, W)]), Err(Errno::IO)];
    let k = Script::new(Answers::Planned(answers.into()));
    let mut walk = ExtentWalk::with_kernel(k, Path::new("f"), pages(0..256));
    assert!(matches!(walk.next_piece(), Some(Ok(Piece::Extent(_)))));
    match walk.next_piece() {
        Some(Err(Error::Fiemap { offset, .. })) => assert_eq!(offset, K4),
        other => panic!("{other:?}"),
    }
    assert!(walk.next_piece().is_none());
    assert_eq!(walk.kernel.calls.len(), 2);
}

/// A file of pages: 0 written, 1..9 preallocated, 9 written, to its end at 10.
fn preallocated() -> Script {
    Script::planned([vec![ext(0, 1, W), ext(1, 8, U), ext(9, 1, W | LAST)]])
}

#[test]
fn clean_or_dirty_page_cache_decides_how_a_span_settles() {
    let span = pages(1..9);
    let clean = || Call::Cachestat(span.clone());
    // (trust clean spans, kernel, the calls after FIEMAP, the data)
    let cases = [
        // A clean span: its unwritten extents are holes as FIEMAP says, SEEK not asked
        // (though pages there are cached: zeros a read put there).
        (
            true,
            preallocated().seek([pages(0..10)]),
            vec![clean()],
            vec![w(0..1), w(9..10)],
        ),
        // A dirty page: SEEK settles the span.
        (
            true,
            preallocated()
                .seek([pages(0..1), pages(4..5), pages(9..10)])
                .dirty(pages(4..5)),
            vec![clean(), Call::Seek(span.clone())],
            vec![w(0..1), s(4..5), w(9..10)],
        ),
        // A page under writeback: the same.
        (
            true,
            preallocated()
                .seek([pages(0..1), pages(4..5), pages(9..10)])
                .writeback(pages(4..5)),
            vec![clean(), Call::Seek(span.clone())],
            vec![w(0..1), s(4..5), w(9..10)],
        ),
        // Dirty pages elsewhere in the file do not count.
        (
            true,
            preallocated()
                .seek([pages(0..10)])
                .dirty(pages(0..1))
                .dirty(pages(9..10)),
            vec![clean()],
            vec![w(0..1), w(9..10)],
        ),
        // No cachestat: SEEK.
        (
            true,
            Script {
                has_cachestat: false,
                ..preallocated().seek([pages(0..1), pages(9..10)])
            },
            vec![clean(), Call::Seek(span.clone())],
            vec![w(0..1), w(9..10)],
        ),
        // Not trusted (btrfs): SEEK without asking cachestat; cached zeros count as data.
        (
            false,
            preallocated().seek([pages(0..10)]),
            vec![Call::Seek(span.clone())],
            vec![w(0..1), s(1..9), w(9..10)],
        ),
    ];
    for (i, (trust, kernel, calls, want)) in cases.into_iter().enumerate() {
        let run = data(kernel, 0..10, trust, false);
        let mut want_calls = vec![fiemap(0, 10)];
        want_calls.extend(calls);
        assert_eq!(run.calls, want_calls, "case {i}");
        assert_eq!(run.data, want, "case {i}");
    }
}

#[test]
fn seek_unsupported_while_settling_counts_the_span_as_data() {
    let k = Script {
        seek_unsupported: true,
        ..preallocated()
    };
    let run = data(k, 0..10, false, false);
    assert_eq!(run.data, [w(0..1), s(1..9), w(9..10)]);
}

#[test]
fn written_extents_inside_a_span_are_certain_data() {
    // Two unwritten extents with a written one between: one span, one SEEK over it; where
    // SEEK says data, the written extent's part is certain and the rest settled.
    let k = Script::planned([vec![ext(0, 3, U), ext(3, 2, W), ext(5, 3, U | LAST)]])
        .seek([pages(2..7)]);
    let run = data(k, 0..8, false, false);
    assert_eq!(run.data, [s(2..3), w(3..5), s(5..7)]);
    assert_eq!(run.calls, [fiemap(0, 8), Call::Seek(pages(0..8))]);
}

/// A file of pages: an unwritten extent, `written` one-page written extents each after a
/// one-page hole, then another unwritten extent; SEEK finds only the written ones.
fn written_between(written: u64) -> (Script, Vec<(Range<u64>, bool)>, u64) {
    let mut extents = vec![ext(0, 1, U)];
    let mut want = Vec::new();
    for i in 0..written {
        extents.push(ext(2 + 2 * i, 1, W));
        want.push(w(2 + 2 * i..3 + 2 * i));
    }
    let last = 2 + 2 * written;
    extents.push(ext(last, 1, U | LAST));
    let seek = want.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    (Script::planned([extents]).seek(seek), want, last)
}

#[test]
fn up_to_max_held_written_extents_join_a_span() {
    let written = MAX_HELD as u64;
    let (k, want, last) = written_between(written);
    let run = data(k, 0..last + 1, false, false);
    assert_eq!(run.data, want);
    assert_eq!(
        run.calls,
        [fiemap(0, last + 1), Call::Seek(pages(0..last + 1))]
    );
}

#[test]
fn more_than_max_held_written_extents_end_a_span() {
    let written = MAX_HELD as u64 + 1;
    let (k, want, last) = written_between(written);
    let run = data(k, 0..last + 1, false, false);
    assert_eq!(run.data, want);
    assert_eq!(
        run.calls,
        [
            fiemap(0, last + 1),
            Call::Seek(pages(0..1)),
            Call::Seek(pages(last..last + 1))
        ]
    );
}

#[test]
fn a_span_holds_at_most_max_inside_written_extents() {
    // Unwritten and written pages alternate: the unwritten ones are never more than one
    // written extent apart, so they gather into one span until it holds MAX_INSIDE written
    // extents; the next begins a new span.
    let spans = MAX_INSIDE as u64 + 2;
    let mut extents = Vec::new();
    let mut want = Vec::new();
    for i in 0..spans {
        extents.push(ext(2 * i, 1, U));
        if i + 1 < spans {
            extents.push(ext(2 * i + 1, 1, W));
            want.push(w(2 * i + 1..2 * i + 2));
        }
    }
    let end = 2 * spans - 1;
    let seek = want.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    let run = data(Script::planned([extents]).seek(seek), 0..end, false, false);
    assert_eq!(run.data, want);
    let first_end = 2 * MAX_INSIDE as u64 + 1;
    assert_eq!(
        run.calls,
        [
            fiemap(0, end),
            Call::Seek(pages(0..first_end)),
            Call::Seek(pages(first_end + 1..end)),
        ]
    );
}
