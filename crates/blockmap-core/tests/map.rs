//! Block maps of files with known layouts on the filesystem under `$TMPDIR` (the loop-mounted
//! matrix of filesystems is `cargo xtask fs-test`). Every answer is checked against a model of
//! the file's bytes and against the kernel's own SEEK_DATA walk taken before anything reads
//! the file.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use blockmap_core::fs::block_size_of;
use blockmap_core::{Backend, BackendChoice, BlockMap, MapOptions};
use rustix::fs::FallocateFlags;

const MIB: u64 = 1 << 20;

fn collect(it: impl Iterator<Item = blockmap_core::Result<Range<u64>>>) -> Vec<Range<u64>> {
    it.collect::<Result<_, _>>().unwrap()
}

/// The kernel's SEEK_DATA walk of the whole file, as plain lseek calls.
fn kernel_walk(file: &File) -> Vec<Range<u64>> {
    let size = file.metadata().unwrap().len();
    seekmap::DataSegments::new(file, 0..size)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Maps the file with one backend and checks the shape of the answer and that it claims no
/// more data than the kernel's SEEK walk taken at the same moment. Returns (data, holes); the
/// holes are read back by [`check_all`] only after every map was taken, because reading a
/// preallocated range fills the page cache and changes what SEEK_DATA says.
fn map_and_check(
    file: &File,
    backend: BackendChoice,
    batch: u32,
) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
    let kernel = kernel_walk(file);
    let map = BlockMap::new(
        file,
        MapOptions {
            backend,
            fiemap_batch: batch,
            ..Default::default()
        },
    )
    .unwrap();
    let size = map.size();
    let data = collect(map.data(0..size));
    let holes = collect(map.holes(0..size));
    // One walk for both gives what the two walks give.
    let (one_walk, extents) = map.data_and_extents(0..size).unwrap();
    assert_eq!(
        one_walk, data,
        "{backend}, batch {batch}: data_and_extents' data"
    );
    let raw: Vec<_> = map.extents(0..size).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        extents, raw,
        "{backend}, batch {batch}: data_and_extents' extents"
    );
    // Data and holes tile [0, size) exactly; neither is empty, no two of a kind touch.
    let mut all: Vec<_> = data.iter().chain(&holes).cloned().collect();
    all.sort_by_key(|r| r.start);
    let mut at = 0;
    for r in &all {
        assert_eq!(r.start, at, "tiling broken: {all:?}");
        assert!(r.start < r.end);
        at = r.end;
    }
    assert_eq!(at, size);
    for w in data.windows(2).chain(holes.windows(2)) {
        assert!(w[0].end < w[1].start, "unmerged: {w:?}");
    }
    // No more data than the kernel's own walk (the none backend calls everything data).
    if map.backend() != Backend::None {
        for r in &data {
            assert!(
                kernel.iter().any(|k| k.start <= r.start && r.end <= k.end),
                "{backend}: data {r:?} is not data to SEEK_DATA {kernel:?}"
            );
        }
    }
    (data, holes)
}

/// Asserts that every hole reads back as zeros.
fn assert_holes_read_zero(file: &File, backend: BackendChoice, holes: &[Range<u64>]) {
    let mut buf = vec![0u8; 1 << 16];
    for h in holes {
        let mut at = h.start;
        while at < h.end {
            let n = ((h.end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at).unwrap();
            assert!(
                buf[..n].iter().all(|&b| b == 0),
                "{backend}: hole {h:?} holds data near {at}"
            );
            at += n as u64;
        }
    }
}

fn choices(file: &File) -> Vec<BackendChoice> {
    let mut v = vec![BackendChoice::Auto, BackendChoice::Only(Backend::None)];
    for b in [Backend::Fiemap, Backend::Seek] {
        if BlockMap::new(file, BackendChoice::Only(b)).is_ok() {
            v.push(BackendChoice::Only(b));
        } else {
            eprintln!("backend {b} not supported under $TMPDIR; not tested here");
        }
    }
    v
}

/// Maps the file with every backend that works and several FIEMAP batch sizes, checks each
/// map, then reads every hole back; returns the data ranges `auto` found.
fn check_all(file: &File) -> Vec<Range<u64>> {
    let mut maps = Vec::new();
    for c in choices(file) {
        for batch in [1, 3, 4096] {
            maps.push((c, map_and_check(file, c, batch)));
        }
    }
    for (c, (_, holes)) in &maps {
        assert_holes_read_zero(file, *c, holes);
    }
    maps.into_iter()
        .find(|(c, _)| *c == BackendChoice::Auto)
        .map(|(_, (d, _))| d)
        .unwrap()
}

fn fallocate(file: &File, flags: FallocateFlags, at: u64, len: u64) -> bool {
    match rustix::fs::fallocate(file, flags, at, len) {
        Ok(()) => true,
        Err(e) if blockmap_core::fs::is_unsupported_errno(e) => {
            eprintln!("fallocate({flags:?}) not supported under $TMPDIR: {e}");
            false
        }
        Err(e) => panic!("fallocate: {e}"),
    }
}

#[test]
fn preallocated_then_written_without_fsync_is_data() {
    // The trap: FIEMAP without SYNC reports the whole 1 MiB as one unwritten extent.
    let file = tempfile::tempfile().unwrap();
    if !fallocate(&file, FallocateFlags::empty(), 0, MIB) {
        return;
    }
    file.write_all_at(&[0xEE; 4096], 256 * 1024).unwrap();
    let data = check_all(&file);
    assert!(
        data.iter()
            .any(|r| r.start <= 256 * 1024 && r.end >= 260 * 1024),
        "{data:?}"
    );
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    if map.backend() != Backend::None && kernel_walk(&file) != [0..MIB] {
        // Preallocated, never written: holes, not data.
        let total: u64 = data.iter().map(|r| r.end - r.start).sum();
        assert!(
            total < MIB,
            "unwritten preallocation counted as data: {data:?}"
        );
    }
}

#[test]
fn written_blocks_between_unwritten_extents_are_settled_together() {
    // Every other block of a preallocation written and synced: written and unwritten extents
    // alternate (xfs makes such files by itself, from speculative preallocation), so the
    // doubtful extents are settled as spans, with written extents inside. Some unwritten
    // blocks are then read (page cache, zeros) and some written again without fsync.
    let file = tempfile::tempfile().unwrap();
    if !fallocate(&file, FallocateFlags::empty(), 0, 4 * MIB) {
        return;
    }
    for block in (0..1024).step_by(2) {
        file.write_all_at(&[0x5A; 4096], block * 4096).unwrap();
    }
    file.sync_all().unwrap();
    let mut buf = vec![0; 64 * 1024];
    file.read_exact_at(&mut buf, MIB).unwrap();
    for block in [301, 303, 777] {
        file.write_all_at(&[0xA5; 4096], block * 4096).unwrap();
    }
    // More written extents in a row than are held back behind a doubtful span, then
    // another preallocation with a block written in it.
    let far: Vec<u64> = (0..80).map(|i| 1200 + 2 * i).collect();
    for &block in &far {
        file.write_all_at(&[0x3C; 4096], block * 4096).unwrap();
    }
    file.sync_all().unwrap();
    if fallocate(&file, FallocateFlags::empty(), 6 * MIB, MIB) {
        file.write_all_at(&[0xC3; 4096], 6 * MIB + 8192).unwrap();
    }
    let data = check_all(&file);
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    let marked: Vec<_> = map.data_marked(0..u64::MAX).map(Result::unwrap).collect();
    let plain: Vec<Range<u64>> = marked.iter().map(|d| d.range.clone()).collect();
    assert_eq!(
        collect(blockmap_core::ranges::Merge::new(plain.into_iter().map(Ok))),
        collect(map.data(0..u64::MAX)),
        "the marked ranges are the data ranges"
    );
    if map.backend() == Backend::Fiemap {
        // The blocks written past the preallocation never needed settling.
        for &block in &far {
            let at = block * 4096;
            let d = marked
                .iter()
                .find(|d| d.range.start <= at && d.range.end > at)
                .unwrap();
            assert!(
                !d.settled,
                "block {block} written outside any preallocation: {d:?}"
            );
        }
        // Inside the span settled with SEEK, the written extents stay certain.
        let mark = |block: u64| {
            let at = block * 4096;
            marked
                .iter()
                .find(|d| d.range.start <= at && d.range.end >= at + 4096)
                .map(|d| (d.range.clone(), d.settled))
        };
        for block in [0, 2, 500, 1022] {
            let found = mark(block);
            assert!(
                matches!(found, Some((_, false))),
                "synced block {block}: {found:?}"
            );
        }
        // The block written into the second preallocation without fsync was settled.
        let at = 6 * MIB + 8192;
        if let Some(d) = marked
            .iter()
            .find(|d| d.range.start <= at && d.range.end > at)
        {
            assert!(d.settled, "{d:?}");
        }
    }
    for block in (0..1024)
        .step_by(2)
        .chain([301, 303, 777])
        .chain(far.iter().copied())
    {
        let at = block * 4096;
        assert!(
            data.iter().any(|r| r.start <= at && r.end >= at + 4096),
            "block {block} written but not data: {data:?}"
        );
    }
}

#[test]
fn preallocated_never_written_is_a_hole() {
    let file = tempfile::tempfile().unwrap();
    if !fallocate(&file, FallocateFlags::empty(), 0, 4 * MIB) {
        return;
    }
    let data = check_all(&file);
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    if map.backend() == Backend::Fiemap {
        assert_eq!(data, [], "a fresh preallocation reads as zeros");
    }
}

#[test]
fn preallocated_and_read_is_a_hole_until_written() {
    // A preallocation read through (its pages in the cache, clean, zeros) with one block
    // written and synced: with no dirty page, FIEMAP's unwritten extents are holes (SEEK_DATA
    // would call the cached zeros data). One more block written without fsync: dirty, so the
    // span is settled by SEEK and that block is data.
    let file = tempfile::tempfile().unwrap();
    if !fallocate(&file, FallocateFlags::empty(), 0, 4 * MIB) {
        return;
    }
    file.write_all_at(&[0x42; 4096], MIB).unwrap();
    file.sync_all().unwrap();
    let mut buf = vec![0; 4 * MIB as usize];
    file.read_exact_at(&mut buf, 0).unwrap();
    let has_cachestat = fiemap_sys::cachestat_range(&file, 0, 0).is_ok();
    let data = check_all(&file);
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    if map.backend() == Backend::Fiemap && has_cachestat {
        assert_eq!(data, [MIB..MIB + 4096], "clean cached zeros are holes");
    }
    file.write_all_at(&[0x43; 4096], 3 * MIB).unwrap();
    let data = check_all(&file);
    for at in [MIB, 3 * MIB] {
        assert!(
            data.iter().any(|r| r.start <= at && r.end >= at + 4096),
            "block at {at} written but not data: {data:?}"
        );
    }
}

#[test]
fn fiemap_batches_of_one_extent_walk_the_whole_file() {
    // Many extents, small buffers: every call ends full and without LAST.
    let file = tempfile::tempfile().unwrap();
    for i in 0..64u64 {
        file.write_all_at(&[i as u8 + 1; 4096], i * 16384).unwrap();
    }
    file.sync_all().unwrap();
    let data = check_all(&file);
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    if map.backend() != Backend::None {
        let want: Vec<_> = (0..64u64).map(|i| i * 16384..i * 16384 + 4096).collect();
        assert_eq!(data, want);
    }
}

#[test]
fn windows_clip_extents_that_straddle_them() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&[5; 65536], MIB).unwrap();
    file.set_len(4 * MIB).unwrap();
    let kernel = kernel_walk(&file);
    for c in choices(&file) {
        for batch in [1, 4096] {
            let map = BlockMap::new(
                &file,
                MapOptions {
                    backend: c,
                    fiemap_batch: batch,
                    sync: false,
                },
            )
            .unwrap();
            let w = MIB + 1000..MIB + 5000;
            assert_eq!(collect(map.data(w.clone())), vec![w.clone()], "{c}");
            assert_eq!(collect(map.holes(w)), [], "{c}");
            let w = MIB - 10..MIB + 10;
            let data = collect(map.data(w.clone()));
            let holes = collect(map.holes(w.clone()));
            let backend = map.backend();
            if backend != Backend::None && kernel == [MIB..MIB + 65536] {
                assert_eq!(data, [MIB..MIB + 10], "{c}");
                assert_eq!(holes, [MIB - 10..MIB], "{c}");
            } else if backend == Backend::None {
                assert_eq!(data, [w], "{c}");
            }
            // Windows past the end are empty, whatever they ask.
            assert_eq!(collect(map.data(10 * MIB..u64::MAX)), []);
            assert_eq!(collect(map.holes(10 * MIB..u64::MAX)), []);
            assert!(map.is_data(MIB + 65535).unwrap());
            if backend != Backend::None {
                assert!(!map.is_data(2 * MIB).unwrap());
            }
            assert!(!map.is_data(4 * MIB).unwrap(), "past the end is never data");
        }
    }
}

#[test]
fn keep_size_preallocation_past_eof_is_clipped() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&[3; 10000], 0).unwrap();
    file.sync_all().unwrap();
    if !fallocate(&file, FallocateFlags::KEEP_SIZE, 0, 8 * MIB) {
        return;
    }
    file.write_all_at(&[4; 100], 5000).unwrap();
    let data = check_all(&file);
    assert_eq!(
        data.last().map(|r| r.end),
        Some(10000),
        "clipped to the size: {data:?}"
    );
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    // The raw extents are still visible, unclipped, for those who want them.
    if map.backend() == Backend::Fiemap {
        let ext: Vec<_> = map.extents(0..u64::MAX).collect::<Result<_, _>>().unwrap();
        assert!(ext.iter().any(|e| e.logical.end > 10000), "{ext:?}");
    }
}

#[test]
fn unaligned_tail_and_tiny_files() {
    for len in [1u64, 5, 4095, 4097, 12345] {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&vec![9; len as usize], 0).unwrap();
        assert_eq!(check_all(&file), [0..len]);
        let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
        let bs = u64::from(map.block_size());
        assert_eq!(map.block_count(), len.div_ceil(bs));
        assert_eq!(
            collect(map.mapped_blocks(0..u64::MAX)),
            [0..len.div_ceil(bs)]
        );
        assert_eq!(collect(map.unmapped_blocks(0..u64::MAX)), []);
    }
}

#[test]
fn empty_and_all_hole_files() {
    let file = tempfile::tempfile().unwrap();
    assert_eq!(check_all(&file), []);
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    assert_eq!(map.block_count(), 0);
    assert_eq!(collect(map.holes(0..u64::MAX)), []);
    file.set_len(1 << 40).unwrap();
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    if map.backend() != Backend::None {
        // 1 TiB of hole: checked against the kernel walk, not read back byte by byte.
        for c in choices(&file)
            .into_iter()
            .filter(|c| *c != BackendChoice::Only(Backend::None))
        {
            assert_eq!(
                map_and_check(&file, c, 3),
                (vec![], vec![0..1 << 40]),
                "{c}"
            );
        }
    }
}

#[test]
fn block_helpers_round_data_out_and_holes_in() {
    let file = tempfile::tempfile().unwrap();
    let map0 = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    let bs = u64::from(map0.block_size());
    file.write_all_at(&[1; 10], 3 * bs + 7).unwrap(); // inside block 3
    file.write_all_at(&[1; 10], 10 * bs - 5).unwrap(); // straddles blocks 9 and 10
    file.set_len(20 * bs + 1).unwrap();
    let map = BlockMap::new(&file, BackendChoice::Auto).unwrap();
    assert_eq!(map.block_count(), 21);
    let mapped = collect(map.mapped_blocks(0..u64::MAX));
    if map.backend() != Backend::None {
        assert_eq!(mapped, [3..4, 9..11]);
        assert_eq!(
            collect(map.unmapped_blocks(0..u64::MAX)),
            [0..3, 4..9, 11..21]
        );
        assert_eq!(collect(map.mapped_blocks(10..12)), [10..11]);
        assert_eq!(collect(map.unmapped_blocks(10..100)), [11..21]);
    }
}

#[test]
fn figetbsz_failure_falls_back_to_st_blksize() {
    // An O_PATH descriptor answers fstat but no ioctl: FIGETBSZ fails with EBADF.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let opath =
        rustix::fs::open(&path, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    assert!(
        fiemap_sys::figetbsz(&opath).is_err(),
        "O_PATH should make FIGETBSZ fail"
    );
    let real = File::open(&path).unwrap();
    let st_blksize = real
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::blksize(&m))
        .unwrap();
    assert_eq!(u64::from(block_size_of(&opath)), st_blksize);
}

#[test]
fn open_refuses_what_has_no_block_map() {
    let dir = tempfile::tempdir().unwrap();
    let err = BlockMap::open(dir.path(), BackendChoice::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a directory"), "{err}");
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let err = BlockMap::open(&fifo, BackendChoice::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a FIFO"), "{err}");
    let err = BlockMap::open(dir.path().join("missing"), BackendChoice::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot open") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn sync_option_does_not_change_the_answer() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&[1; 8192], 3 * MIB).unwrap();
    file.set_len(5 * MIB).unwrap();
    let (before, holes) = map_and_check(&file, BackendChoice::Auto, 4096);
    assert_holes_read_zero(&file, BackendChoice::Auto, &holes);
    let map = BlockMap::new(
        &file,
        MapOptions {
            sync: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(collect(map.data(0..u64::MAX)), before);
}
