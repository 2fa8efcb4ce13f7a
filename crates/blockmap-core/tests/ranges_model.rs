//! The range algebra against a deliberately naive oracle: a bitmap with one bool per unit.

use std::convert::Infallible;
use std::ops::Range;

use blockmap_core::ranges::*;
use proptest::prelude::*;

const UNITS: u64 = 256;

/// Marks each unit covered by any of `ranges`.
fn bitmap(ranges: &[Range<u64>]) -> Vec<bool> {
    let mut bits = vec![false; UNITS as usize];
    for r in ranges {
        for u in r.clone() {
            bits[u as usize] = true;
        }
    }
    bits
}

/// The maximal runs of `true` inside `window`: the model's merged ranges.
fn runs(bits: &[bool], window: Range<u64>, want: bool) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for u in window {
        if bits[u as usize] == want {
            match out.last_mut() {
                Some(last) if last.end == u => last.end = u + 1,
                _ => out.push(u..u + 1),
            }
        }
    }
    out
}

fn ok(v: &[Range<u64>]) -> impl Iterator<Item = Result<Range<u64>, Infallible>> + '_ {
    v.iter().cloned().map(Ok)
}

fn collect(i: impl Iterator<Item = Result<Range<u64>, Infallible>>) -> Vec<Range<u64>> {
    i.map(|r| r.unwrap()).collect()
}

/// Sorted (by start) ranges, possibly empty, overlapping or touching.
fn sorted_ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
    prop::collection::vec((0..UNITS, 0..40u64), 0..24).prop_map(|v| {
        let mut v: Vec<Range<u64>> = v.into_iter().map(|(s, l)| s..(s + l).min(UNITS)).collect();
        v.sort_by_key(|r| r.start);
        v
    })
}

fn window() -> impl Strategy<Value = Range<u64>> {
    (0..UNITS, 0..UNITS).prop_map(|(a, b)| a.min(b)..a.max(b))
}

proptest! {
    #[test]
    fn merge_matches_the_bitmap(v in sorted_ranges()) {
        let got = collect(ok(&v).merged());
        prop_assert_eq!(&got, &runs(&bitmap(&v), 0..UNITS, true));
        // Sorted, disjoint, never touching, never empty.
        for w in got.windows(2) {
            prop_assert!(w[0].end < w[1].start);
        }
    }

    #[test]
    fn invert_matches_the_bitmap(v in sorted_ranges(), w in window()) {
        let got = collect(ok(&v).inverted(w.clone()));
        prop_assert_eq!(got, runs(&bitmap(&v), w, false));
    }

    #[test]
    fn clip_then_merge_matches_the_bitmap(v in sorted_ranges(), w in window()) {
        let got = collect(ok(&v).clipped(w.clone()).merged());
        prop_assert_eq!(got, runs(&bitmap(&v), w, true));
    }

    #[test]
    fn data_and_holes_tile_the_window(v in sorted_ranges(), w in window()) {
        let data = collect(ok(&v).clipped(w.clone()).merged());
        let holes = collect(ok(&v).inverted(w.clone()));
        let mut all: Vec<Range<u64>> = data.iter().chain(&holes).cloned().collect();
        all.sort_by_key(|r| r.start);
        let mut cursor = w.start;
        for r in &all {
            prop_assert_eq!(r.start, cursor, "gap or overlap in {:?}", all);
            prop_assert!(r.start < r.end);
            cursor = r.end;
        }
        prop_assert_eq!(cursor, w.end);
    }

    #[test]
    fn rounding_matches_the_bitmap(v in sorted_ranges(), block in 1u64..20) {
        // Model: a block is data if any of its units is; units past UNITS round into it too.
        let bits = bitmap(&v);
        let blocks = UNITS.div_ceil(block);
        let mut want: Vec<Range<u64>> = Vec::new();
        for b in 0..blocks {
            let any = (b * block..((b + 1) * block).min(UNITS)).any(|u| bits[u as usize]);
            if any {
                match want.last_mut() {
                    Some(last) if last.end == b * block => last.end = (b + 1) * block,
                    _ => want.push(b * block..(b + 1) * block),
                }
            }
        }
        prop_assert_eq!(collect(ok(&v).rounded_out(block)), want);
    }

    #[test]
    fn round_in_and_out_bracket_the_range(s in 0..1u64 << 40, l in prop_oneof![Just(0u64), 0..1u64 << 20], block in 1u64..65536) {
        let r = s..s + l;
        let out = round_out(r.clone(), block);
        let inn = round_in(r.clone(), block);
        if l == 0 {
            prop_assert!(out.is_empty() && inn.is_empty());
            return Ok(());
        }
        prop_assert!(out.start <= r.start && out.end >= r.end);
        prop_assert!(out.start.is_multiple_of(block) && out.end.is_multiple_of(block));
        prop_assert!(out.end - out.start < l + 2 * block);
        prop_assert!(inn.start.is_multiple_of(block) && inn.end.is_multiple_of(block) && inn.start <= inn.end);
        if !inn.is_empty() {
            prop_assert!(inn.start >= r.start && inn.end <= r.end);
        }
        let blocks = to_blocks(r, block);
        prop_assert_eq!(from_blocks(blocks, block), out);
    }
}

#[test]
fn errors_pass_through_every_adapter() {
    let items = vec![Ok(0..4), Err("boom"), Ok(8..9)];
    let merged: Vec<_> = items.clone().into_iter().merged().collect();
    assert_eq!(merged, [Err("boom"), Ok(0..4), Ok(8..9)]);
    let inverted: Vec<_> = items.into_iter().inverted(0..10).collect();
    assert_eq!(inverted, [Err("boom"), Ok(4..8), Ok(9..10)]);
}

#[test]
fn extremes_do_not_overflow() {
    assert_eq!(
        round_out(u64::MAX - 3..u64::MAX, 4096),
        u64::MAX - 4095..u64::MAX
    );
    assert_eq!(round_in(u64::MAX - 3..u64::MAX, 4096), u64::MAX..u64::MAX);
    let holes: Vec<_> = collect(ok(&[]).inverted(0..u64::MAX));
    assert_eq!(holes, [0..u64::MAX]);
}
