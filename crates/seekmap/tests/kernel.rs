//! The walk against the kernel: files with known layouts in `$TMPDIR`, whatever filesystem
//! that is. Where it only has the SEEK_DATA stub (everything is data), the test says so.

#![allow(clippy::print_stderr)] // skipped cases say why on the test output

use std::os::unix::fs::FileExt;

use seekmap::{DataSegments, seek_data, seek_hole};

fn segments(file: &std::fs::File, window: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
    DataSegments::new(file, window)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// True when the filesystem reports holes at all (not only the generic stub).
fn has_holes(file: &std::fs::File) -> bool {
    seek_hole(file, 0).unwrap() != Some(file.metadata().unwrap().len())
}

#[test]
fn walks_written_ranges_and_skips_holes() {
    let file = tempfile::tempfile().unwrap();
    let mib = 1u64 << 20;
    file.write_all_at(&[7; 4096], mib).unwrap(); // dirty, never synced
    file.write_all_at(&[9; 8192], 3 * mib).unwrap();
    file.set_len(8 * mib).unwrap();
    let got = segments(&file, 0..8 * mib);
    if !has_holes(&file) {
        eprintln!("the filesystem of $TMPDIR has only the SEEK_HOLE stub: {got:?}");
        assert_eq!(got, [0..8 * mib]);
        return;
    }
    // Dirty page-cache data is reported even without fsync.
    assert_eq!(got, [mib..mib + 4096, 3 * mib..3 * mib + 8192]);
    assert_eq!(
        segments(&file, mib + 100..3 * mib + 1),
        [mib + 100..mib + 4096, 3 * mib..3 * mib + 1]
    );
}

#[test]
fn empty_and_all_hole_files_have_no_segments() {
    let file = tempfile::tempfile().unwrap();
    assert_eq!(segments(&file, 0..u64::MAX), []);
    assert_eq!(seek_data(&file, 0).unwrap(), None);
    file.set_len(1 << 30).unwrap();
    if has_holes(&file) {
        assert_eq!(segments(&file, 0..1 << 30), []);
    }
}

#[test]
fn unaligned_tail_ends_at_the_file_size() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(b"hello", 0).unwrap();
    assert_eq!(segments(&file, 0..u64::MAX), [0..5]);
    assert_eq!(seek_hole(&file, 0).unwrap(), Some(5));
    assert_eq!(seek_hole(&file, 5).unwrap(), None);
}

#[test]
fn read_only_descriptor_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"data").unwrap();
    let ro = std::fs::File::open(&path).unwrap();
    assert_eq!(segments(&ro, 0..4), [0..4]);
}
