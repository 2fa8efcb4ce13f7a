//! Block maps on real filesystems, loop-mounted by `cargo xtask fs-test` (see `common` for the
//! environment contract; without it every test here says it is skipped and passes).
//!
//! - [`random_scenarios_on_every_fs`]: proptest-driven lists of writes, zero writes,
//!   fallocate (plain and `--keep-size`), hole punches, truncates up and down, fsyncs and
//!   "preallocate then write without fsync", on a fresh file per case on every filesystem.
//!   Each result is mapped through the library (every backend that works, FIEMAP with one and
//!   with 4096 extents per call, the whole file and a window) and through
//!   `blockmap map --json`, and checked against a model of the file's bytes and against the
//!   kernel's own SEEK_DATA walk (`crate::common::check_against_model`).
//! - One test per trap of ARCHITECTURE.md's "The one rule": ext4 inline data, btrfs inline
//!   and zstd-encoded extents, ext4 with 1 KiB blocks and its empty SEEK segments, xfs
//!   speculative preallocation, preallocate-then-write without fsync, tmpfs without FIEMAP,
//!   a block device, files of more extents than one FIEMAP call returns, and 20000 extents.
//! - [`btrfs_extent_items_agree_with_fiemap`]: btrfs's extent items (the tree search the copy
//!   engine asks after its clone there) against FIEMAP on random files, before and after an
//!   fsync.
//!
//! Every test appends `fs=… test=… cases=…` to `$BLOCKMAP_FS_TEST_REPORT` for each
//! filesystem.

// Tests say on stderr what they ran, skipped and timed.

use std::cell::Cell;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::{
    Applied, Checked, Fill, FsKind, KIB, MIB, Model, Mount, Op, OpList, PAGE, apply,
    check_against_model, check_against_model_in, check_extents, cli_map, covered, ensure,
    fallocate, fresh_file, fs_env, hold_blockdev, kernel_walk, merged, round_out, run_cli,
};
use blockmap_core::{Backend, BackendChoice, BlockMap};
use fiemap_sys::{
    FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_NOT_ALIGNED,
    FIEMAP_EXTENT_UNWRITTEN,
};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use rustix::fs::FallocateFlags;

// ---------------------------------------------------------------------------------------------
// Random scenarios.

/// Where a scenario's windowed maps look, in thousandths of the file, so that it scales with
/// whatever size the ops made: from `start`‰ of the size, `len`‰ of the rest (at least one
/// byte), or to `u64::MAX` if `to_end`.
#[derive(Debug, Clone, Copy)]
struct WindowPick {
    start: u64,
    len: u64,
    to_end: bool,
}

impl WindowPick {
    fn window(self, size: u64) -> Range<u64> {
        let start = size * self.start / 1000;
        let end = if self.to_end {
            u64::MAX
        } else {
            start + (size - start) * self.len / 1000 + 1
        };
        start..end
    }
}

/// Applies `ops` to a fresh file `name` in `dir` and to its model, then checks every map, of
/// the whole file and of `window`. Ops the filesystem does not support are skipped in both.
fn run_scenario(dir: &Path, name: &str, ops: &[Op], window: WindowPick) -> Result<(), String> {
    let (path, file) = fresh_file(dir, name);
    let mut model = Model::new();
    let mut skipped = Vec::new();
    for (i, &op) in ops.iter().enumerate() {
        if let Applied::Unsupported(e) = apply(&file, &mut model, op)? {
            skipped.push(format!("op {i} ({op:?}): {e}"));
        }
    }
    let windows = [window.window(model.len())];
    let result = check_against_model_in(&path, &file, &model, &windows);
    drop(file);
    let _ = std::fs::remove_file(&path);
    result.map(drop).map_err(|e| {
        if skipped.is_empty() {
            e
        } else {
            format!("{e}\n(not supported here, skipped: {})", skipped.join("; "))
        }
    })
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn random_scenarios_on_every_fs() {
    const TEST: &str = "random_scenarios_on_every_fs";
    let env = fs_env(TEST);
    random_ops_on(&env, &env.mounts, TEST, 0.2, run_scenario);
}

/// Runs `case` on random op lists and windows (`to_end` the weight of windows that reach
/// the end of the file), on a fresh file per case on each of `mounts`; a failure is shrunk
/// and reported with its minimal ops.
fn random_ops_on(
    env: &crate::common::FsEnv,
    mounts: &[Mount],
    test: &'static str,
    to_end: f64,
    case: impl Fn(&Path, &str, &[Op], WindowPick) -> Result<(), String>,
) {
    let cases = crate::common::cases_per_fs(48);
    let window = (0..=1000u64, 0..=1000u64, proptest::bool::weighted(to_end))
        .prop_map(|(start, len, to_end)| WindowPick { start, len, to_end });
    let strategy = (
        proptest::collection::vec(crate::common::op(), 1..=12),
        window,
    );
    env.run_on(mounts, |m, count| {
        let dir = m.scratch(test);
        let config = Config {
            cases,
            failure_persistence: None,
            // A case costs a few milliseconds; shrinking is bounded so that a failure is
            // reported in seconds, not minutes.
            max_shrink_iters: 512,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let n = Cell::new(0u32);
        let result = runner.run(&strategy, |(ops, window)| {
            n.set(n.get() + 1);
            case(dir.path(), &format!("case{}", n.get()), &ops, window).map_err(TestCaseError::fail)
        });
        *count = n.get();
        match result {
            Ok(()) => Ok(()),
            Err(TestError::Fail(reason, (ops, window))) => Err(format!(
                "{reason}\nminimal failing ops on a fresh file on {} (then {window:?}):\n{}",
                m.name,
                OpList(&ops)
            )),
            Err(TestError::Abort(reason)) => Err(format!("proptest aborted: {reason}")),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The traps, one test each.

/// Runs `ops` on a fresh file `name` in `dir` and checks it against its model.
fn scenario(dir: &Path, name: &str, ops: &[Op]) -> Result<Checked, String> {
    let (path, file) = fresh_file(dir, name);
    let mut model = Model::new();
    for &op in ops {
        apply(&file, &mut model, op)?;
    }
    check_against_model(&path, &file, &model)
        .map_err(|e| format!("{name}, after\n{}{e}", OpList(ops)))
}

/// `[write 0+len, fsync if sync]`.
fn small_file(len: u64, fill: Fill, sync: bool) -> Vec<Op> {
    let mut ops = vec![Op::Write { at: 0, len, fill }];
    if sync {
        ops.push(Op::Fsync);
    }
    ops
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn ext4_inline_data_is_mapped_whole() {
    const TEST: &str = "ext4_inline_data_is_mapped_whole";
    let env = fs_env(TEST);
    env.run_on(
        &env.mounts_where(|m| m.name == "ext4-inline"),
        |m, cases| {
            let dir = m.scratch(TEST);
            for len in [5, 60] {
                for sync in [false, true] {
                    let ops = small_file(len, Fill::Byte(b'x'), sync);
                    let c = scenario(dir.path(), &format!("inline{len}-{sync}"), &ops)?;
                    *cases += 1;
                    ext4_inline_checks(&c, len)
                        .map_err(|e| format!("{len} bytes, fsync {sync}: {e}"))?;
                }
            }
            Ok(())
        },
    );
}

fn ext4_inline_checks(c: &Checked, len: u64) -> Result<(), String> {
    ensure!(c.auto().data == [0..len], "data {:?}", c.auto().data);
    // The trap: one extent of `len` bytes, not block-aligned, inside the inode.
    let fiemap = c.only(Backend::Fiemap, 4096).ok_or("no FIEMAP")?;
    let inline = FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED;
    let ext = &fiemap.extents;
    ensure!(
        ext.len() == 1 && ext[0].logical == (0..len) && ext[0].flags & inline == inline,
        "expected one inline, unaligned extent of {len} bytes, got {ext:?}"
    );
    let cli = &c.cli.extents;
    ensure!(
        cli.len() == 1
            && ["data_inline", "not_aligned"]
                .iter()
                .all(|f| cli[0].flags.iter().any(|g| g == f)),
        "map --json extents {cli:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn btrfs_inline_extent_is_clipped_to_the_size() {
    const TEST: &str = "btrfs_inline_extent_is_clipped_to_the_size";
    let env = fs_env(TEST);
    let btrfs = env.mounts_where(|m| m.kind == FsKind::Btrfs);
    env.run_on(&btrfs, |m, cases| {
        let dir = m.scratch(TEST);
        for len in [5, 60, 2000] {
            for sync in [false, true] {
                let ops = small_file(len, Fill::Random(len), sync);
                let c = scenario(dir.path(), &format!("inline{len}-{sync}"), &ops)?;
                *cases += 1;
                btrfs_inline_checks(&c, len, sync)
                    .map_err(|e| format!("{len} bytes, fsync {sync}: {e}"))?;
            }
        }
        Ok(())
    });
}

fn btrfs_inline_checks(c: &Checked, len: u64, sync: bool) -> Result<(), String> {
    ensure!(c.auto().data == [0..len], "data {:?}", c.auto().data);
    ensure!(c.auto().holes.is_empty(), "holes {:?}", c.auto().holes);
    if sync {
        // The trap: FIEMAP says one inline extent of a whole block, SEEK_HOLE says `len`.
        let ext = &c.only(Backend::Fiemap, 4096).ok_or("no FIEMAP")?.extents;
        ensure!(
            ext.len() == 1
                && ext[0].flags & FIEMAP_EXTENT_DATA_INLINE != 0
                && ext[0].logical.start == 0
                && ext[0].logical.end > len,
            "expected one inline extent running past the size, got {ext:?}"
        );
        ensure!(
            c.cli.extent_ranges() == [ext[0].logical.clone()],
            "map --json extents {:?}",
            c.cli.extents
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn btrfs_zstd_encoded_extents_are_data() {
    const TEST: &str = "btrfs_zstd_encoded_extents_are_data";
    let env = fs_env(TEST);
    env.run_on(&env.mounts_where(|m| m.name == "btrfs-zstd"), |m, cases| {
        let dir = m.scratch(TEST);
        // Compressible and non-zero: btrfs compresses it in extents of at most 128 KiB.
        for (len, sync) in [(MIB, true), (MIB + 777, true), (3 * MIB, false)] {
            let ops = small_file(len, Fill::Byte(0x5A), sync);
            let c = scenario(dir.path(), &format!("zstd{len}"), &ops)?;
            *cases += 1;
            zstd_checks(&c, len, sync).map_err(|e| format!("{len} bytes, fsync {sync}: {e}"))?;
        }
        Ok(())
    });
}

fn zstd_checks(c: &Checked, len: u64, sync: bool) -> Result<(), String> {
    ensure!(c.auto().data == [0..len], "data {:?}", c.auto().data);
    if sync {
        let ext = &c.only(Backend::Fiemap, 4096).ok_or("no FIEMAP")?.extents;
        let encoded: Vec<_> = ext
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_ENCODED != 0)
            .collect();
        ensure!(
            encoded.len() as u64 >= len / (128 * KIB)
                && encoded
                    .iter()
                    .all(|e| e.logical.end - e.logical.start <= 128 * KIB),
            "expected encoded extents of at most 128 KiB, got {ext:?}"
        );
        let one_by_one = &c.only(Backend::Fiemap, 1).ok_or("no FIEMAP")?.extents;
        ensure!(
            one_by_one == ext,
            "one extent per call: {one_by_one:?}, 4096 per call: {ext:?}"
        );
    }
    Ok(())
}

/// The offsets `x` in `[0, size)` where the kernel gives an empty data segment,
/// `SEEK_HOLE(SEEK_DATA(x)) == SEEK_DATA(x)`, walking as the SEEK backend does.
fn empty_seek_segments(file: &File, size: u64) -> Vec<u64> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(Some(data)) = seekmap::seek_data(file, pos) else {
            break;
        };
        let Ok(Some(hole)) = seekmap::seek_hole(file, data) else {
            break;
        };
        if hole <= data {
            found.push(data);
            pos = (data / PAGE + 1) * PAGE;
        } else {
            pos = hole;
        }
    }
    found
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn ext4_1k_blocks_and_empty_seek_segments() {
    const TEST: &str = "ext4_1k_blocks_and_empty_seek_segments";
    let env = fs_env(TEST);
    env.run_on(&env.mounts_where(|m| m.name == "ext4-1k"), ext4_1k_on);
}

fn ext4_1k_on(m: &Mount, cases: &mut u32) -> Result<(), String> {
    const TEST: &str = "ext4_1k_blocks_and_empty_seek_segments";
    let bs = m.fs_block_size();
    ensure!(bs == KIB, "ext4-1k has blocks of {bs} bytes");
    let dir = m.scratch(TEST);
    let w = |at, len, seed| Op::Write {
        at,
        len,
        fill: Fill::Random(seed),
    };
    let fa = |at, len| Op::Fallocate { at, len };
    let scattered = |n: u64| (0..n).map(move |i| w(i * 3 * KIB + (i % 5) * 100, 100 + i, i));
    let scenarios: Vec<Vec<Op>> = vec![
        // One page of unwritten, hole and dirty blocks: this kernel answers
        // SEEK_DATA(0) = 14336 and SEEK_HOLE(14336) = 14336, while block 15 holds data.
        vec![fa(13 * KIB, KIB), w(15 * KIB, KIB, 1)],
        vec![fa(12 * KIB, 2 * KIB), w(15 * KIB, 2 * KIB, 2)],
        vec![fa(12 * KIB, KIB), w(14 * KIB, KIB, 3), Op::Fsync],
        vec![w(15 * KIB, KIB, 4), fa(12 * KIB, 2 * KIB)],
        // Small scattered writes, some in the same page, with and without fsync.
        scattered(40).collect(),
        scattered(40)
            .chain([
                Op::Fsync,
                Op::PunchHole {
                    at: 10 * KIB,
                    len: 50 * KIB,
                },
            ])
            .collect(),
        (0..64)
            .map(|i| w(i * 2 * KIB, 10, i + 100))
            .chain([Op::Truncate { len: 200 * KIB }])
            .collect(),
    ];
    let mut tripped = Vec::new();
    for (i, ops) in scenarios.iter().enumerate() {
        let (path, file) = fresh_file(dir.path(), &format!("k{i}"));
        let mut model = Model::new();
        for &op in ops {
            apply(&file, &mut model, op)?;
        }
        // Before anything reads the file (lseek does not).
        if !empty_seek_segments(&file, model.len()).is_empty() {
            tripped.push(i);
        }
        let c = check_against_model(&path, &file, &model)
            .map_err(|e| format!("after\n{}{e}", OpList(ops)))?;
        *cases += 1;
        ensure!(
            c.auto().block_size == 1024,
            "block size {}",
            c.auto().block_size
        );
        ensure!(
            c.cli.block_size == 1024,
            "map --json block_size {}",
            c.cli.block_size
        );
    }
    eprintln!("{TEST}: empty SEEK segments in scenarios {tripped:?}");
    // Proof that the trap was there (it is, on the kernel this was written on). Should a
    // kernel stop giving empty segments, find a layout that still does, or drop this check.
    ensure!(
        !tripped.is_empty(),
        "no scenario made the kernel give an empty SEEK segment"
    );
    Ok(())
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn xfs_speculative_preallocation_is_clipped() {
    const TEST: &str = "xfs_speculative_preallocation_is_clipped";
    let env = fs_env(TEST);
    env.run_on(&env.mounts_where(|m| m.name == "xfs"), |m, cases| {
        let dir = m.scratch(TEST);
        for (len, chunk) in [
            (3 * MIB, 64 * KIB),
            (5 * MIB + 1234, 256 * KIB),
            (2 * MIB + 1, 4 * KIB),
        ] {
            appends_on_xfs(dir.path(), len, chunk, cases)
                .map_err(|e| format!("appending {len} bytes in chunks of {chunk}: {e}"))?;
        }
        Ok(())
    });
}

/// Appends `len` bytes in `chunk`s without fsync, fsyncs, appends 10000 bytes more, and checks
/// the file after each step.
fn appends_on_xfs(dir: &Path, len: u64, chunk: u64, cases: &mut u32) -> Result<(), String> {
    let (path, file) = fresh_file(dir, &format!("append{len}"));
    let mut model = Model::new();
    let append = |model: &mut Model, len: u64, seed: u64| -> Result<(), String> {
        let end = model.len() + len;
        while model.len() < end {
            let at = model.len();
            let fill = Fill::Random(seed + at);
            apply(
                &file,
                model,
                Op::Write {
                    at,
                    len: chunk.min(end - at),
                    fill,
                },
            )?;
        }
        Ok(())
    };
    // Delayed allocation, with more reserved past the end of the file.
    append(&mut model, len, 1)?;
    let c = check_against_model(&path, &file, &model)?;
    *cases += 1;
    ensure!(c.auto().data == [0..len], "data {:?}", c.auto().data);
    // Write-back turns the reservation past the end into an unwritten extent.
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let c = check_against_model(&path, &file, &model).map_err(|e| format!("fsync: {e}"))?;
    *cases += 1;
    ensure!(c.auto().data == [0..len], "fsync: data {:?}", c.auto().data);
    // The trap: a little more, not synced, lands in that unwritten extent, which now runs
    // past the end of the file.
    append(&mut model, 10_000, 2)?;
    let size = model.len();
    let what = "fsync, 10000 more";
    let c = check_against_model(&path, &file, &model).map_err(|e| format!("{what}: {e}"))?;
    *cases += 1;
    ensure!(
        c.auto().data == [0..size],
        "{what}: data {:?}",
        c.auto().data
    );
    ensure!(
        c.cli.data == [0..size],
        "{what}: map --json data {:?}",
        c.cli.data
    );
    // Proof that the trap was there.
    let ext = &c.only(Backend::Fiemap, 4096).ok_or("no FIEMAP")?.extents;
    ensure!(
        ext.iter().any(|e| e.logical.end > size),
        "{what}: no speculative preallocation past the size {size} to clip: {ext:?}"
    );
    Ok(())
}

/// A preallocation and the writes into it (no fsync).
struct Prealloc {
    range: Range<u64>,
    /// `fallocate --keep-size` past the end of a 100-byte file, rather than a plain one.
    keep_size: bool,
    writes: Vec<Range<u64>>,
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn preallocated_then_written_without_fsync() {
    const TEST: &str = "preallocated_then_written_without_fsync";
    let env = fs_env(TEST);
    let layouts = [
        // The one rule's trap (ARCHITECTURE.md): 1 MiB, then 4 KiB inside.
        Prealloc {
            range: 0..MIB,
            keep_size: false,
            writes: vec![256 * KIB..260 * KIB],
        },
        Prealloc {
            range: 0..MIB,
            keep_size: false,
            writes: vec![300_000..300_100],
        },
        Prealloc {
            range: 0..4 * MIB,
            keep_size: false,
            writes: vec![4096..8192, 3 * MIB + 5..3 * MIB + 70_000],
        },
        Prealloc {
            range: 0..2 * MIB,
            keep_size: true,
            writes: vec![0..10_000, MIB..MIB + 4096],
        },
    ];
    env.run_on(&env.mounts, |m, cases| {
        let dir = m.scratch(TEST);
        for (i, p) in layouts.iter().enumerate() {
            let what = format!(
                "preallocated {:?} (keep size {}), wrote {:?}",
                p.range, p.keep_size, p.writes
            );
            prealloc_then_write(dir.path(), &format!("prealloc{i}"), p)
                .map_err(|e| format!("{what}: {e}"))?;
            *cases += 1;
        }
        Ok(())
    });
}

fn prealloc_then_write(dir: &Path, name: &str, p: &Prealloc) -> Result<(), String> {
    let (path, file) = fresh_file(dir, name);
    let mut model = Model::new();
    let mut written = p.writes.clone();
    let flags = if p.keep_size {
        apply(
            &file,
            &mut model,
            Op::Write {
                at: 0,
                len: 100,
                fill: Fill::Byte(1),
            },
        )?;
        written.push(0..100);
        FallocateFlags::KEEP_SIZE
    } else {
        FallocateFlags::empty()
    };
    let supported = fallocate(&file, flags, p.range.start, p.range.end - p.range.start)?;
    if supported == Applied::Done && !p.keep_size {
        model.set_len(p.range.end);
    }
    for (j, w) in p.writes.iter().enumerate() {
        let fill = Fill::Random(j as u64 + 7);
        apply(
            &file,
            &mut model,
            Op::Write {
                at: w.start,
                len: w.end - w.start,
                fill,
            },
        )?;
    }
    // Whether FIEMAP calls the preallocation unwritten (ext4, xfs, btrfs), asked at its first
    // page that no write touched. FIEMAP reads nothing, so SEEK's answers stay as they are.
    let untouched = (p.range.start..p.range.end.min(model.len()))
        .step_by(PAGE as usize)
        .find(|&at| !written.iter().any(|w| round_out(w, PAGE).contains(&at)));
    let unwritten = match untouched {
        Some(at) => fiemap_unwritten(&file, at)?,
        None => false,
    };
    let c = check_against_model(&path, &file, &model)?;
    if supported != Applied::Done {
        eprintln!("{name}: fallocate not supported here; only the writes were checked");
        return Ok(());
    }
    if unwritten {
        // The written bytes are data (checked above); the unwritten rest is holes: no more data
        // than the writes widened to whole pages (or blocks, if larger).
        let unit = PAGE.max(u64::from(c.auto().block_size));
        let allowed = merged(written.iter().map(|w| round_out(w, unit)).collect());
        for map in c.maps.iter().filter(|m| m.backend != Backend::None) {
            if let Some(r) = map.data.iter().find(|r| !covered(&allowed, r)) {
                return Err(format!(
                    "{}: unwritten range counted as data: {r:?} in {:?}",
                    map.ask, map.data
                ));
            }
        }
    }
    Ok(())
}

/// Whether FIEMAP reports the byte at `offset` of `file` as inside an unwritten extent (false
/// where FIEMAP does not work).
fn fiemap_unwritten(file: &File, offset: u64) -> Result<bool, String> {
    let map = match BlockMap::new(file, BackendChoice::Only(Backend::Fiemap)) {
        Ok(map) => map,
        Err(blockmap_core::Error::Unsupported { .. }) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let ext = map
        .extents(offset..offset + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(!ext.is_empty() && ext.iter().all(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0))
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn tmpfs_has_no_fiemap_but_seek_works() {
    const TEST: &str = "tmpfs_has_no_fiemap_but_seek_works";
    let env = fs_env(TEST);
    env.run_on(
        &env.mounts_where(|m| m.kind == FsKind::Tmpfs),
        |m, cases| {
            let dir = m.scratch(TEST);
            let (path, file) = fresh_file(dir.path(), "f");
            let mut model = Model::new();
            let ops = [
                Op::Write {
                    at: MIB,
                    len: 5000,
                    fill: Fill::Random(9),
                },
                Op::Truncate { len: 3 * MIB },
            ];
            for op in ops {
                apply(&file, &mut model, op)?;
            }
            let out = run_cli(["map", "--backend", "fiemap", &*path.to_string_lossy()]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = "map --backend fiemap on tmpfs";
            ensure!(
                out.status.code() == Some(1),
                "{what}: {}, stderr {stderr:?}",
                out.status
            );
            ensure!(stdout.is_empty(), "{what} printed {stdout:?}");
            ensure!(
                stderr.lines().count() == 1
                    && stderr.starts_with("blockmap: ")
                    && stderr.contains(&*path.to_string_lossy())
                    && stderr.contains("fiemap")
                    && stderr.contains("not supported"),
                "{what}: expected one line naming the file and the backend, got {stderr:?}"
            );
            *cases += 1;
            let seek = cli_map(&path, Some(&file), &["--backend", "seek"])?;
            let c = check_against_model(&path, &file, &model)?;
            ensure!(
                seek.backend == "seek",
                "map --backend seek: backend {}",
                seek.backend
            );
            ensure!(
                c.auto().backend == Backend::Seek,
                "auto chose {}",
                c.auto().backend
            );
            ensure!(
                seek.data == c.auto().data,
                "map --backend seek data {:?}, auto {:?}",
                seek.data,
                c.auto().data
            );
            *cases += 1;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn block_device_maps_as_all_data() {
    const TEST: &str = "block_device_maps_as_all_data";
    let env = fs_env(TEST);
    let dev = env
        .blockdev
        .clone()
        .expect("BLOCKMAP_FS_TEST_MOUNTS is set but BLOCKMAP_FS_TEST_BLOCKDEV is not");
    let _spare = hold_blockdev(); // the one spare device, shared by the tests
    let started = std::time::Instant::now();
    let size = {
        use std::io::{Seek, SeekFrom};
        File::open(&dev).and_then(|mut f| f.seek(SeekFrom::End(0)))
    }
    .unwrap_or_else(|e| panic!("{dev:?}: {e}"));
    assert!(size > 0, "{dev:?} has size 0");
    let c = cli_map(&dev, None, &[]).unwrap_or_else(|e| panic!("{dev:?}: {e}"));
    assert_eq!(c.backend, "none", "{dev:?}");
    assert_eq!(c.size, size, "{dev:?}");
    assert_eq!(c.data, [0..size], "{dev:?}");
    assert_eq!(c.holes, [], "{dev:?}");
    assert_eq!(c.extents, [], "{dev:?}");
    let map = BlockMap::open(&dev, BackendChoice::Auto).unwrap();
    assert_eq!((map.backend(), map.size()), (Backend::None, size));
    env.report("blockdev", 1);
    eprintln!("{TEST}: took {:.1?}", started.elapsed());
}

/// Writes of 4 KiB at 8 KiB + 4 KiB, 16 KiB + 4 KiB, …: `n` extents with holes between.
fn spaced_writes(n: u64) -> impl Iterator<Item = Op> {
    (0..n).map(|i| Op::Write {
        at: i * 8192 + 4096,
        len: 4096,
        fill: Fill::Byte(1 + (i % 255) as u8),
    })
}

/// The raw extents of the library (one and 4096 extents per FIEMAP call) and of
/// `map --json`, checked with [`check_extents`], on files where FIEMAP is asked again and
/// again: a preallocation with writes inside and no fsync, and more extents than one call of
/// `map --json` returns.
#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn fiemap_extents_are_complete_and_in_order() {
    const TEST: &str = "fiemap_extents_are_complete_and_in_order";
    let env = fs_env(TEST);
    let prealloc = |n: u64| Op::Fallocate {
        at: 0,
        len: n * 8192,
    };
    let one_write = Op::Write {
        at: 4096,
        len: 4096,
        fill: Fill::Byte(7),
    };
    let scenarios: Vec<(&str, Vec<Op>)> = vec![
        (
            "preallocation, one write, no fsync",
            vec![prealloc(128), one_write],
        ),
        (
            "preallocation, 64 writes, no fsync",
            [prealloc(64)]
                .into_iter()
                .chain(spaced_writes(64))
                .collect(),
        ),
        // More extents than one call of `map --json` asks for (4096).
        ("4200 writes, no fsync", spaced_writes(4200).collect()),
        // Each write splits the preallocation: 4400 extents.
        (
            "preallocation, 2200 writes, fsync",
            [prealloc(2200)]
                .into_iter()
                .chain(spaced_writes(2200))
                .chain([Op::Fsync])
                .collect(),
        ),
        (
            "preallocation, 2200 writes, no fsync",
            [prealloc(2200)]
                .into_iter()
                .chain(spaced_writes(2200))
                .collect(),
        ),
    ];
    env.run_on(&env.mounts, |m, cases| {
        let dir = m.scratch(TEST);
        let mut failures = Vec::new();
        for (i, (name, ops)) in scenarios.iter().enumerate() {
            let c =
                scenario(dir.path(), &format!("x{i}"), ops).map_err(|e| format!("{name}: {e}"))?;
            *cases += 1;
            for map in c.maps.iter().filter(|m| m.backend == Backend::Fiemap) {
                let what = map.ask.to_string();
                if let Err(e) = check_extents(&what, &map.extent_ranges(), &map.data) {
                    failures.push(format!("{name}: {e}"));
                }
            }
            let cli = &c.cli;
            if cli.backend == "fiemap"
                && let Err(e) = check_extents("map --json", &cli.extent_ranges(), &cli.data)
            {
                failures.push(format!("{name}: {e}"));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    });
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn many_extents_cli_equals_kernel_walk() {
    const TEST: &str = "many_extents_cli_equals_kernel_walk";
    let env = fs_env(TEST);
    let mounts = env.mounts_where(|m| m.name == "ext4" || m.name == "xfs");
    env.run_on(&mounts, |m, cases| {
        many_extents_on(m)?;
        *cases += 1;
        Ok(())
    });
}

fn many_extents_on(m: &Mount) -> Result<(), String> {
    const EXTENTS: u64 = 20_000;
    let dir = m.scratch("many_extents_cli_equals_kernel_walk");
    let (path, file) = fresh_file(dir.path(), "many");
    let mut model = Model::new();
    let block = Fill::Random(42).bytes(4096);
    for i in 0..EXTENTS {
        file.write_all_at(&block, i * 8192)
            .map_err(|e| format!("pwrite: {e}"))?;
        model.write(i * 8192, &block);
    }
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let started = std::time::Instant::now();
    let cli = cli_map(&path, Some(&file), &[])?;
    let elapsed = started.elapsed();
    let kernel = kernel_walk(&file)?.ok_or("no SEEK_DATA")?;
    ensure!(
        cli.kernel.as_ref() == Some(&kernel),
        "the kernel walk changed while mapping"
    );
    // Whole pages written and synced: the kernel sees exactly the model's data.
    let written = model.nonzero_runs();
    ensure!(
        kernel == written,
        "the kernel walk has {} ranges, the model {}",
        kernel.len(),
        written.len()
    );
    ensure!(
        cli.data == kernel,
        "map --json data ({} ranges) differ from the kernel walk",
        cli.data.len()
    );
    if cli.backend == "fiemap" {
        check_extents("map --json", &cli.extent_ranges(), &cli.data)?;
    }
    // And the whole check, every backend (FIEMAP one extent per call: 20000 calls).
    check_against_model(&path, &file, &model)?;
    eprintln!(
        "{}: map --json of {EXTENTS} extents took {elapsed:.1?}",
        m.name
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// btrfs's extent items against FIEMAP.

/// FIEMAP's view of `span`: (written extents, unwritten extents, both merged and clipped;
/// whether an inline extent is there).
type FiemapView = (Vec<Range<u64>>, Vec<Range<u64>>, bool);

fn fiemap_view(file: &File, span: &Range<u64>) -> Result<FiemapView, String> {
    let map = BlockMap::new(file, BackendChoice::Only(Backend::Fiemap))
        .map_err(|e| format!("FIEMAP: {e}"))?;
    let extents = map
        .extents(span.clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("FIEMAP: {e}"))?;
    let clipped = |unwritten: bool| {
        merged(
            extents
                .iter()
                .filter(|e| e.is_unwritten() == unwritten)
                .map(|e| e.logical.start.max(span.start)..e.logical.end.min(span.end))
                .filter(|r| !r.is_empty())
                .collect(),
        )
    };
    let inline = extents
        .iter()
        .any(|e| e.flags & FIEMAP_EXTENT_DATA_INLINE != 0);
    Ok((clipped(false), clipped(true), inline))
}

/// `blockmap_core::fs::btrfs_extent_items` (the tree search the copy engine asks after its
/// whole-window clone on btrfs: what it shared as data, and what preallocated space it must
/// punch out again) against FIEMAP, on random files on every btrfs. Before any write-back the
/// items may lack data still in dirty pages, but never name as written what is not data
/// afterwards; after an fsync (the clone writes SRC back the same way) they must equal
/// FIEMAP's written and unwritten extents exactly.
#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn btrfs_extent_items_agree_with_fiemap() {
    const TEST: &str = "btrfs_extent_items_agree_with_fiemap";
    let env = fs_env(TEST);
    let btrfs = env.mounts_where(|m| m.kind == FsKind::Btrfs);
    random_ops_on(&env, &btrfs, TEST, 0.3, btrfs_items_case);
}

/// One case of [`btrfs_extent_items_agree_with_fiemap`].
fn btrfs_items_case(dir: &Path, name: &str, ops: &[Op], window: WindowPick) -> Result<(), String> {
    let (path, file) = fresh_file(dir, name);
    let mut model = Model::new();
    for &op in ops {
        apply(&file, &mut model, op)?;
    }
    let size = model.len();
    // Within the file, as the engine asks (items past its end do not count), and in whole
    // blocks: an inline extent is one short item that FIEMAP rounds to a block.
    let w = window.window(size);
    let pick = round_out(&(w.start.min(size)..w.end.min(size)), PAGE);
    let pick = pick.start..pick.end.min(size);
    let checked = (|| -> Result<(), String> {
        for span in [0..size, pick].into_iter().filter(|s| !s.is_empty()) {
            let before = blockmap_core::fs::btrfs_extent_items(file.as_fd(), span.clone());
            file.sync_all().map_err(|e| format!("fsync: {e}"))?;
            let after = blockmap_core::fs::btrfs_extent_items(file.as_fd(), span.clone());
            let (written, unwritten, inline) = fiemap_view(&file, &span)?;
            if let Some(before) = &before {
                for r in &before.written {
                    ensure!(
                        covered(&written, r),
                        "{span:?}: item {r:?} before fsync is not data after it: {written:?}"
                    );
                }
            }
            let expected = (!inline).then_some(blockmap_core::fs::ExtentItems {
                written,
                preallocated: unwritten,
            });
            ensure!(
                after == expected,
                "{span:?} after fsync: items {after:?}, FIEMAP {expected:?}"
            );
        }
        Ok(())
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    checked
}
