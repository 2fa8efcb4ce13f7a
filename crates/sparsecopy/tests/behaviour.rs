//! What a copy does beyond the bytes: holes kept and punched, zeros detected, many small
//! extents batched, the reflink policy, progress and the report.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::FallocateFlags;
use sparsecopy::{Copier, Method, Options, Progress, Reflink, Transfer, Window};
use testkit::*;

/// The data segments of a file by the kernel's own SEEK_DATA walk.
fn kernel_data(path: &Path) -> Vec<Range<u64>> {
    kernel_walk(&File::open(path).unwrap())
        .unwrap()
        .expect("SEEK_DATA")
}

/// A file of `n` data extents of 4 KiB, one every 8 KiB, after 1 MiB of hole.
///
/// The size is set first: writes that extend a file make xfs preallocate past its end, and
/// the gaps then are unwritten extents, which turn into data (zeros) for SEEK_DATA as soon
/// as anything reads them into the page cache (readahead does).
fn many_extents(path: &Path, n: u64) -> Vec<u8> {
    let f = File::create(path).unwrap();
    let mut model = vec![0u8; (MIB + n * 8 * KIB) as usize];
    f.set_len(model.len() as u64).unwrap();
    for i in 0..n {
        let at = MIB + i * 8 * KIB;
        let b = noise(i, 4096);
        f.write_all_at(&b, at).unwrap();
        model[at as usize..at as usize + 4096].copy_from_slice(&b);
    }
    model
}

#[test]
fn a_new_destination_has_holes_where_the_source_has() {
    for dir in test_dirs() {
        let tmp = tempdir_in(&dir);
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        let model = many_extents(&src, 64);
        let src_data = kernel_data(&src);
        for method in [Method::Auto, Method::ReadWrite] {
            let _ = std::fs::remove_file(&dst);
            let opts = Options::new().method(method).reflink(Reflink::Never);
            sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
            assert_same(&read(&dst), &model, "copy");
            let dst_data = kernel_data(&dst);
            assert_eq!(dst_data, src_data, "{}: {method:?}", dir.display());
        }
    }
}

#[test]
fn many_small_extents_share_reads() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let n = 4096;
    let model = many_extents(&src, n);
    let opts = Options::new().method(Method::ReadWrite);
    let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
    assert_same(&read(&dst), &model, "copy");
    assert_eq!(r.data_ranges, n);
    assert_eq!(r.syscalls.pwrite, n, "one write per extent");
    // 1 MiB buffer, 8 KiB stride: 128 extents per read.
    assert!(
        r.syscalls.pread <= n / 100,
        "{} reads for {n} extents",
        r.syscalls.pread
    );
    eprintln!("{n} extents: {r}; syscalls {:?}", r.syscalls);
}

#[test]
fn large_ranges_read_a_buffer_at_a_time_count_once() {
    // Ranges longer than the 1 MiB buffer, read ahead by the feed thread in pieces while the
    // engine writes the piece before: each counts as one data range, read with one pread per
    // MiB, written whole.
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let f = File::create(&src).unwrap();
    let layout = [
        (0, 5 * MIB),
        (8 * MIB, 2 * MIB + 12345),
        (16 * MIB, MIB + 1),
    ];
    let mut model = vec![0u8; (20 * MIB) as usize];
    f.set_len(model.len() as u64).unwrap();
    for (i, &(at, len)) in layout.iter().enumerate() {
        let b = noise(i as u64, len as usize);
        f.write_all_at(&b, at).unwrap();
        model[at as usize..(at + len) as usize].copy_from_slice(&b);
    }
    f.sync_all().unwrap();
    let opts = Options::new().method(Method::ReadWrite);
    let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
    assert_same(&read(&dst), &model, "copy");
    assert_eq!(r.data_ranges, 3, "{r:?}");
    // The map's ranges end on block boundaries.
    let src_data = kernel_data(&src);
    assert_eq!(src_data.len(), 3, "{src_data:?}");
    assert_eq!(
        r.data_bytes,
        src_data.iter().map(|d| d.end - d.start).sum::<u64>()
    );
    let pieces: u64 = src_data
        .iter()
        .map(|d| (d.end - d.start).div_ceil(MIB))
        .sum();
    assert_eq!(r.syscalls.pread, pieces, "one pread per MiB: {r:?}");
    assert_eq!(kernel_data(&dst), src_data);
}

#[test]
fn writes_are_at_most_128_kib() {
    // The page cache sizes a write's folios by the write's length; writes of at most 128 KiB,
    // as cp's, keep them small (ARCHITECTURE: why). Dense data read 1 MiB at a time must
    // still be written in pieces of at most 128 KiB: at least len / 128 KiB pwrites.
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let model = noise(9, (3 * MIB + 5000) as usize);
    std::fs::write(&src, &model).unwrap();
    for method in [Method::Auto, Method::ReadWrite] {
        let _ = std::fs::remove_file(&dst);
        let opts = Options::new().method(method).reflink(Reflink::Never);
        let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
        assert_same(&read(&dst), &model, "copy");
        if r.read_write_bytes == 0 {
            continue; // copied in the kernel (copy_file_range): no pwrite at all
        }
        let least = r.read_write_bytes.div_ceil(128 * KIB);
        assert!(
            r.syscalls.pwrite >= least,
            "{method:?}: {} pwrites for {} bytes: some wrote more than 128 KiB",
            r.syscalls.pwrite,
            r.read_write_bytes
        );
    }
}

#[test]
fn existing_data_under_source_holes_is_punched() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let f = File::create(&src).unwrap();
    f.write_all_at(b"data", 2 * MIB).unwrap();
    f.set_len(4 * MIB).unwrap();
    let old = noise(7, 5 * MIB as usize);
    std::fs::write(&dst, &old).unwrap();
    let before = allocated(&dst);
    let seek = 4096 + 17; // unaligned: partial blocks at the edges of every punch
    let r = sparsecopy::copy(&src, &dst, Window::new().seek(seek), &Options::new()).unwrap();
    let want = dd(&read(&src), Some(&old), 0, seek, None);
    assert_same(&read(&dst), &want, "copy");
    assert!(r.punched_bytes > 3 * MIB, "{r:?}");
    assert_eq!(r.zeroed_bytes, 0, "ext4 punches");
    assert!(allocated(&dst) < before - 3 * MIB, "punching freed nothing");
}

#[test]
fn only_destination_data_is_punched() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    File::create(&src).unwrap().set_len(64 * MIB).unwrap();
    let f = File::create(&dst).unwrap();
    f.write_all_at(&noise(1, 4096), 10 * MIB).unwrap();
    f.write_all_at(&noise(2, 4096), 50 * MIB).unwrap();
    f.set_len(64 * MIB).unwrap();
    let r = sparsecopy::copy(&src, &dst, Window::new(), &Options::new()).unwrap();
    assert_eq!(
        r.syscalls.fallocate, 2,
        "one punch per DST data range: {r:?}"
    );
    assert_eq!(r.punched_bytes, 8192);
    assert!(read(&dst).iter().all(|&b| b == 0));
}

#[test]
fn detected_zeros_stay_holes_and_are_punched_over_old_data() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let mut model = vec![0u8; 4 * MIB as usize];
    let b = noise(3, 5000);
    model[MIB as usize..MIB as usize + 5000].copy_from_slice(&b);
    std::fs::write(&src, &model).unwrap(); // dense: 4 MiB of written zeros and a little data
    let opts = Options::new().detect_zeros(true);

    let new = tmp.path().join("new");
    let r = sparsecopy::copy(&src, &new, Window::new(), &opts).unwrap();
    assert_same(&read(&new), &model, "new");
    assert_eq!(r.data_bytes, 4 * MIB);
    assert_eq!(r.zero_skipped_bytes, 4 * MIB - 8192);
    assert!(allocated(&new) <= 3 * 4096, "{} allocated", allocated(&new));

    let old = tmp.path().join("old");
    std::fs::write(&old, noise(4, 4 * MIB as usize)).unwrap();
    let r = sparsecopy::copy(&src, &old, Window::new(), &opts).unwrap();
    assert_same(&read(&old), &model, "old");
    assert_eq!(r.punched_bytes, 4 * MIB - 8192);
}

#[test]
fn written_but_unflushed_preallocated_data_is_copied() {
    for dir in test_dirs() {
        let tmp = tempdir_in(&dir);
        let src = tmp.path().join("src");
        let f = File::create(&src).unwrap();
        if rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, MIB).is_err() {
            eprintln!("{}: no fallocate", dir.display());
            continue;
        }
        f.write_all_at(&noise(8, 4096), 300 * KIB).unwrap(); // no fsync
        let dst = tmp.path().join("dst");
        sparsecopy::copy(&src, &dst, Window::new(), &Options::new()).unwrap();
        assert_same(&read(&dst), &read(&src), &dir.display().to_string());
    }
}

#[test]
fn preallocated_zeros_read_into_the_cache_stay_holes() {
    // Reading a preallocation puts pages of zeros in the page cache, and SEEK_DATA then calls
    // the whole extent data: the copy finds those zeros and leaves holes, without
    // --detect-zeros; the block written since (no fsync) is copied.
    for dir in test_dirs() {
        let tmp = tempdir_in(&dir);
        let src = tmp.path().join("src");
        let f = File::create(&src).unwrap();
        if rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 8 * MIB).is_err() {
            eprintln!("{}: no fallocate", dir.display());
            continue;
        }
        let mut whole = vec![0; 8 << 20];
        File::open(&src)
            .unwrap()
            .read_exact_at(&mut whole, 0)
            .unwrap();
        f.write_all_at(&noise(9, 4096), 5 * MIB).unwrap(); // no fsync
        let dst = tmp.path().join("dst");
        let r = sparsecopy::copy(&src, &dst, Window::new(), &Options::new()).unwrap();
        assert_same(&read(&dst), &read(&src), &dir.display().to_string());
        let map = blockmap_core::BlockMap::open(&src, blockmap_core::BackendChoice::Auto).unwrap();
        if map.backend() != blockmap_core::Backend::Fiemap {
            continue;
        }
        assert!(
            allocated(&dst) <= 64 * KIB,
            "{}: {} bytes allocated for one written block: {r}",
            dir.display(),
            allocated(&dst)
        );
        // Found as zeros and left out, unless the window was cloned (xfs, btrfs): then the
        // clone shared the preallocation as a hole, or it was punched out of DST afterwards.
        if r.syscalls.ficlonerange == 0 {
            assert!(r.zero_skipped_bytes >= 7 * MIB, "{r:?}");
        }
    }
}

/// Bytes of `ranges` inside `window`.
fn bytes_in(ranges: &[Range<u64>], window: Range<u64>) -> u64 {
    ranges
        .iter()
        .map(|r| {
            r.end
                .min(window.end)
                .saturating_sub(r.start.max(window.start))
        })
        .sum()
}

/// The progress a copy of `src` (its window from `skip`) reports, checked: data done and
/// holes skipped never go down, the data total once known stays, the last report has all
/// the data done, and that total is the data of the kernel's own SEEK_DATA walk of SRC.
fn checked_progress(src: &Path, dst: &Path, skip: u64) -> Vec<Progress> {
    let kernel = kernel_data(src);
    let size = std::fs::metadata(src).unwrap().len();
    let mut seen: Vec<Progress> = Vec::new();
    let mut record = |p: Progress| seen.push(p);
    let r = Copier::new(Window::new().skip(skip), Options::new())
        .progress(&mut record)
        .copy_paths(src, dst)
        .unwrap();
    let data = bytes_in(&kernel, skip..size);
    assert!(seen.len() > 2, "{seen:?}");
    for w in seen.windows(2) {
        assert!(w[0].data_done <= w[1].data_done, "{w:?}");
        assert!(w[0].skipped <= w[1].skipped, "{w:?}");
        assert!(
            w[0].data_total.is_none() || w[0].data_total == w[1].data_total,
            "{w:?}"
        );
        assert!(w[0] != w[1], "told twice: {w:?}");
    }
    assert!(
        seen.iter()
            .all(|p| p.data_total.is_none_or(|t| p.data_done <= t))
    );
    let last = *seen.last().unwrap();
    assert_eq!(
        last.data_total,
        Some(data),
        "the kernel's data in the window"
    );
    assert_eq!(last.data_done, data);
    assert_eq!(last.skipped, r.length - data);
    seen
}

#[test]
fn progress_counts_data_against_its_total() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    // Data far apart (further than the 32 MiB the copy's reads need the map ahead): the map
    // is walked whole before anything is copied, and the total known from the first byte on.
    let f = File::create(&src).unwrap();
    f.set_len(120 * MIB).unwrap();
    for (i, at) in [0, 40 * MIB, 100 * MIB].into_iter().enumerate() {
        f.write_all_at(&noise(i as u64, MIB as usize), at).unwrap();
    }
    let seen = checked_progress(&src, &dst, 100);
    assert!(
        seen.iter()
            .filter(|p| p.data_done > 0)
            .all(|p| p.data_total.is_some()),
        "{seen:?}"
    );

    // An empty window reports once, no data of none.
    let mut seen = Vec::new();
    let mut record = |p: Progress| seen.push(p);
    Copier::new(Window::new().length(0), Options::new())
        .progress(&mut record)
        .copy_paths(&src, &dst)
        .unwrap();
    assert_eq!(
        seen,
        [Progress {
            data_done: 0,
            data_total: Some(0),
            skipped: 0
        }]
    );
}

/// A map of more extents than are walked ahead: the total becomes known as the walk ends,
/// before the copy does, and is right.
#[test]
fn progress_of_many_extents_learns_its_total_on_the_way() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    many_extents(&src, 20_000);
    let seen = checked_progress(&src, &dst, 0);
    let first_known = seen.iter().position(|p| p.data_total.is_some()).unwrap();
    assert!(first_known > 0, "known at once: {:?}", &seen[..2]);
    assert!(
        first_known < seen.len() - 1,
        "known only at the end: {:?}",
        &seen[seen.len() - 2..]
    );
}

#[test]
fn the_report_serializes_to_json() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    many_extents(&src, 8);
    let opts = Options::new().method(Method::CopyFileRange);
    let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "skip",
        "seek",
        "length",
        "backend",
        "data_bytes",
        "hole_bytes",
        "reflinked_bytes",
        "copy_file_range_bytes",
        "read_write_bytes",
        "zero_skipped_bytes",
        "punched_bytes",
        "zeroed_bytes",
        "methods",
        "syscalls",
        "elapsed",
    ] {
        assert!(json.get(key).is_some(), "no {key} in {json}");
    }
    assert!(json["elapsed"].is_f64());
    assert!(json["backend"].is_string());
    assert_eq!(json["methods"], serde_json::json!(["copy_file_range"]));
    assert_eq!(r.methods, [Transfer::CopyFileRange]);
    let line = r.to_string();
    assert!(
        line.starts_with("copied 32.0 KiB of data, skipped"),
        "{line}"
    );
}

#[test]
#[ignore = "needs xfs or btrfs: run by cargo xtask fs-test"]
fn reflink_policy_on_filesystems_that_share() {
    let env = fs_env("reflink_policy_on_filesystems_that_share");
    let mounts = env.mounts_where(|m| reflink_works(&m.path));
    assert!(
        !mounts.is_empty(),
        "no mounted filesystem shares extents (fs-test mounts xfs and btrfs)"
    );
    env.run_on(&mounts, |m, n| {
        let dir = &m.path;
        let tmp = tempdir_in(dir);
        let src = tmp.path().join("src");
        // One big range (256 KiB) at 0, then 64 small ones (4 KiB) after 1 MiB.
        let mut model = many_extents(&src, 64);
        let big = noise(1, 256 * 1024);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .write_all_at(&big, 0)
            .unwrap();
        model[..big.len()].copy_from_slice(&big);
        let dst = tmp.path().join("dst");

        // Auto: on btrfs the whole window is reflinked; on xfs, which reflinks small extents
        // slowly, the big range is shared and the small ones copied by read/write (its
        // copy_file_range would share them too).
        let r = sparsecopy::copy(&src, &dst, Window::new(), &Options::new()).unwrap();
        assert_same(&read(&dst), &model, "auto");
        if m.kind == FsKind::Btrfs {
            assert_eq!(r.reflinked_bytes, r.data_bytes, "{}: {r:?}", dir.display());
        } else {
            assert_eq!(r.reflinked_bytes, 256 * KIB, "{}: {r:?}", dir.display());
            assert_eq!(r.read_write_bytes, 64 * 4 * KIB);
        }
        eprintln!("{}: {r}", dir.display());

        // Always: everything whole is shared.
        std::fs::remove_file(&dst).unwrap();
        let opts = Options::new().reflink(Reflink::Always);
        let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
        assert_same(&read(&dst), &model, "always");
        assert_eq!(r.reflinked_bytes, r.data_bytes, "{r:?}");

        // Never: nothing shared, not even by copy_file_range.
        std::fs::remove_file(&dst).unwrap();
        let opts = Options::new().reflink(Reflink::Never);
        let r = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap();
        assert_same(&read(&dst), &model, "never");
        assert_eq!(r.reflinked_bytes + r.copy_file_range_bytes, 0, "{r:?}");

        // Blocks that do not line up are copied, with or without Always.
        let r = sparsecopy::copy(&src, &dst, Window::new().seek(512), &Options::new()).unwrap();
        assert_eq!(r.syscalls.ficlonerange, 0);
        let opts = Options::new().reflink(Reflink::Always);
        assert!(sparsecopy::copy(&src, &dst, Window::new().seek(512), &opts).is_err());
        *n += 1;
        Ok(())
    });
}
