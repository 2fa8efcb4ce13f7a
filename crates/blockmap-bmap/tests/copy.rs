//! `Copier` against a model: random sparse images made here (their data known byte for byte)
//! are copied by their bmaps, plain (one lane per core) and gzip-compressed (one stream), and
//! the copies compared with the images; corrupted bytes are caught and named by their range.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use blockmap_bmap::{Bmap, Copier, CopyOptions, CreateOptions, Error, Progress};
use proptest::prelude::*;

const BLOCK: u64 = 4096;

/// A sparse image of `size` bytes with `extents` (offset, length) of pseudo-random data.
fn make_image(path: &Path, size: u64, extents: &[(u64, u64)], seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut x = seed | 1;
    for &(at, len) in extents {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        file.write_all_at(&data, at).unwrap();
    }
    file.sync_all().unwrap();
}

/// Extents in block units: (first block, blocks), sorted, apart, inside `blocks`.
fn arb_layout() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
    // Lengths from one block to 4500 blocks (past the 16 MiB writeback window).
    let len = prop_oneof![6 => 1u64..4, 3 => 4u64..200, 1 => 200u64..4500];
    (prop::collection::vec((1u64..300, len), 1..24), 0u64..3).prop_map(|(gaps, tail)| {
        let mut at = 0;
        let mut extents = Vec::new();
        for (gap, len) in gaps {
            at += gap;
            extents.push((at, len));
            at += len;
        }
        (at + tail, extents)
    })
}

/// `image` gzipped beside it.
fn gzipped(image: &Path) -> std::path::PathBuf {
    let gz = image.with_extension("img.gz");
    let mut enc =
        flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&std::fs::read(image).unwrap()).unwrap();
    enc.finish().unwrap();
    gz
}

/// A copy's progress: data done and holes skipped never go down, the total is `data`
/// throughout, and the last report has all of it done and the rest of `size` skipped.
fn check_progress(seen: &[Progress], data: u64, size: u64) -> Result<(), TestCaseError> {
    prop_assert!(!seen.is_empty());
    for w in seen.windows(2) {
        prop_assert!(w[0].data_done <= w[1].data_done, "{:?}", w);
        prop_assert!(w[0].skipped <= w[1].skipped, "{:?}", w);
    }
    prop_assert!(
        seen.iter().all(|p| p.data_total == Some(data)),
        "{:?}",
        seen
    );
    let want = Progress {
        data_done: data,
        data_total: Some(data),
        skipped: size - data,
    };
    prop_assert_eq!(seen.last().copied(), Some(want));
    Ok(())
}

fn bytes_of(extents: &[(u64, u64)]) -> Vec<(u64, u64)> {
    extents
        .iter()
        .map(|&(b, n)| (b * BLOCK, n * BLOCK))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The copy is the image; every range is verified; the progress climbs to the mapped
    /// total, which is the data the image was made of, plain (lanes) or gzipped (a stream).
    #[test]
    fn copies_equal_the_image((blocks, extents) in arb_layout(), seed in any::<u64>(), sync in any::<bool>(),
                              gzip in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let (image, copy) = (dir.path().join("disk.img"), dir.path().join("copy.img"));
        let size = blocks * BLOCK + 123;
        make_image(&image, size, &bytes_of(&extents), seed);
        let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
        let source = if gzip { gzipped(&image) } else { image.clone() };
        let mut seen = Vec::new();
        let mut progress = |p: Progress| seen.push(p);
        let report = Copier::new(bmap.clone(), CopyOptions::new().sync(sync))
            .progress(&mut progress)
            .copy(&source, &copy)
            .unwrap();
        prop_assert!(std::fs::read(&image).unwrap() == std::fs::read(&copy).unwrap());
        prop_assert_eq!(report.ranges, bmap.ranges.len() as u64);
        prop_assert_eq!(report.verified_ranges, bmap.ranges.len() as u64);
        prop_assert_eq!(report.mapped_bytes, bmap.mapped_bytes());
        // The data written into the image, by its layout.
        let data: u64 = bytes_of(&extents).iter().map(|&(_, len)| len).sum();
        check_progress(&seen, data, size)?;
    }

    /// One corrupted byte per chosen range: the copy fails naming one of those ranges.
    #[test]
    fn corruption_is_named((blocks, extents) in arb_layout(), seed in any::<u64>(),
                           picks in prop::collection::vec(any::<prop::sample::Index>(), 1..3),
                           gzip in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        make_image(&image, blocks * BLOCK, &bytes_of(&extents), seed);
        let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
        let mut picked: Vec<usize> = picks.iter().map(|p| p.index(bmap.ranges.len())).collect();
        picked.sort_unstable();
        picked.dedup();
        let mut corrupted = Vec::new();
        for index in picked {
            let range = &bmap.ranges[index];
            let bytes = range.bytes(bmap.block_size, bmap.image_size);
            let at = bytes.start + (seed % (bytes.end - bytes.start));
            let mut b = [0u8];
            file.read_exact_at(&mut b, at).unwrap();
            file.write_all_at(&[!b[0]], at).unwrap();
            corrupted.push((range.first, range.last));
        }
        drop(file);
        let source = if gzip {
            let gz = dir.path().join("disk.img.gz");
            let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
            enc.write_all(&std::fs::read(&image).unwrap()).unwrap();
            enc.finish().unwrap();
            gz
        } else {
            image
        };
        let err = Copier::new(bmap, CopyOptions::new())
            .copy(&source, dir.path().join("copy.img"))
            .unwrap_err();
        match err {
            Error::RangeChecksum { first, last, .. } => {
                prop_assert!(corrupted.contains(&(first, last)), "{first}-{last} not in {corrupted:?}");
            }
            other => prop_assert!(false, "not a checksum error: {other}"),
        }
    }
}

/// A bmap without checksums copies without verifying; one with a wrong checksum in its last
/// range fails after the others were written.
#[test]
fn unverified_and_last_range_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (image, copy) = (dir.path().join("disk.img"), dir.path().join("copy.img"));
    let extents = [
        (0, 3 * BLOCK),
        (40 * BLOCK, 300 * BLOCK),
        (900 * BLOCK, BLOCK),
    ];
    make_image(&image, 1000 * BLOCK, &extents, 7);

    let options = CreateOptions {
        checksums: false,
        ..CreateOptions::default()
    };
    let bare = blockmap_bmap::create(&image, &options).unwrap();
    let report = Copier::new(bare, CopyOptions::new())
        .copy(&image, &copy)
        .unwrap();
    assert_eq!(report.verified_ranges, 0);
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&copy).unwrap()
    );

    let mut bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
    let last = bmap.ranges.len() - 1;
    bmap.ranges[last].checksum = Some("0".repeat(64));
    let xml = bmap.to_xml();
    let bmap = Bmap::from_bytes(&xml, "edited.bmap").unwrap();
    let err = Copier::new(bmap, CopyOptions::new())
        .copy(&image, &copy)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RangeChecksum {
                first: 900,
                last: 900,
                ..
            }
        ),
        "{err}"
    );
}

/// An `.lz4` image made of several frames one after another (`cat a.lz4 b.lz4`, or `lz4`
/// over a pipe in pieces): decoded across the frame ends, equal to the image.
#[test]
fn lz4_frames_one_after_another() {
    let dir = tempfile::tempdir().unwrap();
    let (image, copy) = (dir.path().join("disk.img"), dir.path().join("copy.img"));
    let extents = [
        (0, 3 * BLOCK),
        (700 * BLOCK, 300 * BLOCK),
        (1900 * BLOCK, BLOCK),
    ];
    make_image(&image, 2000 * BLOCK, &extents, 11);
    let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
    let bytes = std::fs::read(&image).unwrap();
    let packed = dir.path().join("disk.img.lz4");
    let mut out = File::create(&packed).unwrap();
    // Frame ends inside a mapped range, inside a hole, and at a block boundary.
    for part in [
        0..800 * 4096 + 100,
        800 * 4096 + 100..1500 * 4096,
        1500 * 4096..bytes.len(),
    ] {
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(&bytes[part]).unwrap();
        out.write_all(&enc.finish().unwrap()).unwrap();
    }
    drop(out);
    let report = Copier::new(bmap, CopyOptions::new())
        .copy(&packed, &copy)
        .unwrap();
    assert_eq!(report.compression, blockmap_bmap::Compression::Lz4);
    assert_eq!(bytes, std::fs::read(&copy).unwrap());
}
