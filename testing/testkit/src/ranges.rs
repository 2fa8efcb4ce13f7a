//! Lists of half-open byte ranges: merged, covered, tiling.

use std::ops::Range;

use crate::ensure;

/// Sorts and merges touching or overlapping ranges, dropping empty ones.
pub fn merged(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Whether `inner` lies inside one range of `outer` (sorted and merged).
pub fn covered(outer: &[Range<u64>], inner: &Range<u64>) -> bool {
    let i = outer.partition_point(|r| r.start <= inner.start);
    i > 0 && outer[i - 1].end >= inner.end
}

/// The first range of `inner` that is not inside `outer` (both sorted; `outer` merged).
pub fn first_uncovered<'a>(
    outer: &[Range<u64>],
    inner: &'a [Range<u64>],
) -> Option<&'a Range<u64>> {
    inner.iter().find(|r| !covered(outer, r))
}

/// A list of ranges for a message: the first few and how many there are.
pub fn short(v: &[Range<u64>]) -> String {
    const SHOWN: usize = 8;
    if v.len() <= SHOWN {
        format!("{v:?}")
    } else {
        format!("{:?} … ({} ranges)", &v[..SHOWN], v.len())
    }
}

/// Total length.
pub fn total(v: &[Range<u64>]) -> u64 {
    v.iter().map(|r| r.end - r.start).sum()
}

/// `r` widened to multiples of `unit`.
pub fn round_out(r: &Range<u64>, unit: u64) -> Range<u64> {
    r.start / unit * unit..r.end.div_ceil(unit) * unit
}

/// Checks the shape README.md's "Map" promises: data and holes sorted, non-empty, merged (no two
/// of a kind touch), and together tiling `window` exactly.
pub fn check_tiling(
    data: &[Range<u64>],
    holes: &[Range<u64>],
    window: Range<u64>,
) -> Result<(), String> {
    for (kind, v) in [("data", data), ("holes", holes)] {
        for r in v {
            ensure!(
                r.start < r.end,
                "{kind}: empty or reversed range {r:?} in {}",
                short(v)
            );
        }
        for w in v.windows(2) {
            ensure!(
                w[0].end < w[1].start,
                "{kind}: {:?} and {:?} unsorted or not merged",
                w[0],
                w[1]
            );
        }
    }
    let mut all: Vec<&Range<u64>> = data.iter().chain(holes).collect();
    all.sort_by_key(|r| r.start);
    let mut at = window.start;
    for r in all {
        ensure!(
            r.start == at,
            "data {} and holes {} do not tile {window:?}: at {at} comes {r:?}",
            short(data),
            short(holes)
        );
        at = r.end;
    }
    ensure!(
        at == window.end,
        "data {} and holes {} end at {at}, not at the end of {window:?}",
        short(data),
        short(holes)
    );
    Ok(())
}
