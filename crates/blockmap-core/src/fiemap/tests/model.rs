//! A model filesystem behind FIEMAP, with the quirks of real ones, and a property test: for
//! random files, page caches and windows, the walk's data lies between what must be data and
//! what SEEK_DATA would call data.

use std::ops::Range;
use std::path::Path;

use fiemap_sys::{FIEMAP_EXTENT_LAST, FIEMAP_FLAG_SYNC, fiemap_extent};
use proptest::prelude::*;

use super::{Answers, Script, U, W};
use crate::fiemap::{ExtentWalk, FiemapData};

/// FIEMAP's answers for a file of extents, as a filesystem gives them.
#[derive(Debug)]
pub(super) struct ModelFs {
    /// The file's extents: sorted, disjoint.
    pub(super) extents: Vec<fiemap_extent>,
    /// Extents per answer.
    pub(super) capacity: usize,
    /// Each answer begins with the extent before the first asked for (btrfs).
    pub(super) repeat: bool,
    /// LAST is set on the last extent of the range asked, not only of the file.
    pub(super) last_of_range: bool,
    /// Asked without SYNC from here on, the answer is the extent before (no progress).
    pub(super) stall_from: Option<u64>,
}

fn end(e: &fiemap_extent) -> u64 {
    e.fe_logical + e.fe_length
}

impl ModelFs {
    pub(super) fn answer(&self, start: u64, length: u64, flags: u32) -> Vec<fiemap_extent> {
        let stop = start.saturating_add(length);
        let first = self.extents.partition_point(|e| end(e) <= start);
        let stalled = self.stall_from.is_some_and(|s| start >= s) && flags & FIEMAP_FLAG_SYNC == 0;
        if stalled && first > 0 {
            return vec![self.extents[first - 1]];
        }
        let mut out = Vec::new();
        if self.repeat && first > 0 {
            out.push(self.extents[first - 1]);
        }
        let asked = self.extents[first..]
            .iter()
            .take_while(|e| e.fe_logical < stop);
        let mut taken = 0;
        for e in asked.clone() {
            if out.len() == self.capacity {
                break;
            }
            out.push(*e);
            taken += 1;
        }
        let last_asked = taken > 0 && taken == asked.count();
        let last_of_file = first + taken == self.extents.len();
        if let Some(e) = out.last_mut().filter(|_| taken > 0)
            && (last_of_file || (self.last_of_range && last_asked))
        {
            e.fe_flags |= FIEMAP_EXTENT_LAST;
        }
        out
    }
}

/// Pages in the model are 512 bytes; the file is `PAGES` of them.
const PAGE: u64 = 512;
const PAGES: u64 = 64;

/// A random file: each page written, preallocated or a hole (runs of equal pages form
/// extents); for each preallocated page, whether it is cached, and if so dirty.
fn file() -> impl Strategy<Value = Vec<(u8, bool, bool)>> {
    proptest::collection::vec((0u8..3, any::<bool>(), any::<bool>()), PAGES as usize)
}

/// The runs of pages for which `f` holds, as byte ranges.
fn runs(pages: &[(u8, bool, bool)], f: impl Fn(&(u8, bool, bool)) -> bool) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, p) in (0u64..).zip(pages) {
        if !f(p) {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.end == i * PAGE => r.end += PAGE,
            _ => out.push(i * PAGE..(i + 1) * PAGE),
        }
    }
    out
}

/// Per page of the window: whether any byte of it is in `ranges`.
fn bitmap(ranges: &[Range<u64>], window: &Range<u64>) -> Vec<bool> {
    (window.start / PAGE..window.end / PAGE)
        .map(|p| {
            ranges
                .iter()
                .any(|r| r.start < (p + 1) * PAGE && p * PAGE < r.end)
        })
        .collect()
}

proptest! {
    #[test]
    fn data_lies_between_what_must_be_and_what_seek_sees(
        pages in file(),
        window in (0..=PAGES, 0..=PAGES),
        capacity in 1usize..5,
        repeat: bool,
        last_of_range: bool,
        stall_from in proptest::option::of(0..PAGES),
        trust: bool,
        sync_on_stall: bool,
        extent_pages in 1u64..4,
    ) {
        // Extents: the runs of written and of preallocated pages, cut every `extent_pages`
        // pages so that extents meet.
        let mut extents = Vec::new();
        for (kind, flags) in [(0, W), (1, U)] {
            for r in runs(&pages, |p| p.0 == kind) {
                for s in (r.start..r.end).step_by((extent_pages * PAGE) as usize) {
                    extents.push(fiemap_extent {
                        fe_logical: s,
                        fe_length: (extent_pages * PAGE).min(r.end - s),
                        fe_physical: s,
                        fe_flags: flags,
                        ..Default::default()
                    });
                }
            }
        }
        extents.sort_by_key(|e| e.fe_logical);
        let written = runs(&pages, |p| p.0 == 0);
        let cached = runs(&pages, |p| p.0 == 0 || (p.0 == 1 && p.1));
        let dirty = runs(&pages, |p| p.0 == 1 && p.1 && p.2);
        let window = window.0.min(window.1) * PAGE..window.0.max(window.1) * PAGE;

        let fs = ModelFs {
            extents,
            capacity,
            repeat,
            last_of_range,
            stall_from: stall_from.map(|p| p * PAGE),
        };
        let kernel = Script {
            seek_data: cached.clone(),
            dirty: dirty.clone(),
            ..Script::new(Answers::Model(fs))
        };
        let mut walk = ExtentWalk::with_kernel(kernel, Path::new("f"), window.clone());
        if sync_on_stall {
            walk = walk.sync_on_stall();
        }
        let got: Vec<Range<u64>> = FiemapData::new(walk, window.clone(), PAGE, trust)
            .collect::<Result<_, _>>()
            .unwrap();

        // In order, never empty, never overlapping, inside the window.
        for pair in got.windows(2) {
            prop_assert!(pair[0].end <= pair[1].start, "{got:?}");
        }
        for r in &got {
            prop_assert!(window.start <= r.start && r.start < r.end && r.end <= window.end);
        }
        let got = bitmap(&got, &window);
        let must: Vec<bool> = bitmap(&written, &window)
            .into_iter()
            .zip(bitmap(&dirty, &window))
            .map(|(w, d)| w || d)
            .collect();
        let seek = bitmap(&cached, &window);
        for (i, ((g, m), s)) in got.iter().zip(&must).zip(&seek).enumerate() {
            prop_assert!(!m || *g, "page {i} is data and was not reported");
            prop_assert!(!g || *s, "page {i} was reported but SEEK_DATA sees no data there");
        }
        if !trust {
            // Every doubtful span is settled by SEEK: exactly what SEEK_DATA sees.
            prop_assert_eq!(got, seek);
        }
    }
}
