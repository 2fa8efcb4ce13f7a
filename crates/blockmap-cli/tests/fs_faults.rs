//! `blockmap copy` (the CLI binary and the `sparsecopy` library) against faults injected for
//! real by faultfs (the FUSE filesystem `cargo xtask fs-test` mounts; see `crate::common::faultfs`;
//! skipped without it). These are the faults that already behave; each case runs through both
//! the CLI and the library and reports as `fs=faultfs`.
//!
//! - `faults_read_eio_names_src_and_offset`: SRC's read fails with EIO at an offset inside its
//!   data: exit 1, one error naming SRC and that offset, no success line, the created DST
//!   removed. The same fault inside one of SRC's holes is never met (holes are not read).
//! - `faults_full_or_over_quota_dst_removed`: DST's writes fail with ENOSPC or EDQUOT midway:
//!   the error names DST and the errno, no success line, the created DST removed.
//! - `faults_short_reads_and_writes_copy_exactly`: reads and writes that return short counts
//!   give an exact copy, holes kept.
//! - `faults_fsync_eio_fails_sync`: fsync fails with EIO: `copy --sync` fails naming DST and
//!   removes it; without `--sync` the copy succeeds.
//! - `faults_ftruncate_eio_fails_cleanly`: growing DST (SRC ends in a hole) fails with EIO:
//!   the error names DST, the created DST is removed.
//! - `faults_no_fiemap_maps_by_seek_and_no_seek_copies_all`: on faultfs (no FIEMAP) the auto
//!   backend maps SRC with SEEK_DATA, holes as the backing file's; with SEEK_DATA refused
//!   (`no-seek`) it falls back to `none` and still copies exactly.
//! - `faults_no_punch_zeroes_stale_data`: a DST full of old data whose `fallocate` is refused:
//!   the old data under SRC's holes is overwritten with zeros, so DST equals SRC.

use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::{FaultFs, KIB, MIB, ensure, kernel_walk, run_cli, total};
use blockmap_core::{Backend, BlockMap, MapOptions};
use sparsecopy::{Options, Window};
use testkit::nonzero_noise;

/// The size of every SRC here.
const SRC_SIZE: u64 = 4 * MIB;
/// SRC's data: unaligned at both ends of the second range; SRC ends in a hole.
const SRC_DATA: [Range<u64>; 2] = [MIB..2 * MIB + 100, 3_000_000..3_100_000];

/// How a copy is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Cli,
    Library,
}

const VIAS: [Via; 2] = [Via::Cli, Via::Library];

/// Makes the sparse SRC `name` in `dir` (through the backing directory), synced so that its
/// holes are settled; returns its path in the mount.
fn make_src(ffs: &FaultFs, dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let file = File::create_new(ffs.backing(&path)).unwrap();
    file.set_len(SRC_SIZE).unwrap();
    for (i, r) in SRC_DATA.iter().enumerate() {
        let bytes = nonzero_noise(seed + i as u64, (r.end - r.start) as usize);
        file.write_all_at(&bytes, r.start).unwrap();
    }
    file.sync_all().unwrap();
    path
}

/// The data ranges of a backing file by the kernel's own SEEK_DATA walk.
fn backing_data(ffs: &FaultFs, path: &Path) -> Result<Vec<Range<u64>>, String> {
    let file = File::open(ffs.backing(path)).map_err(|e| format!("open {path:?}: {e}"))?;
    kernel_walk(&file)?.ok_or_else(|| "the backing filesystem has no SEEK_DATA".to_owned())
}

/// DST equals SRC byte for byte (both read from the backing directory, where no fault
/// applies), and DST has data only where SRC has (holes kept).
fn same_and_sparse(ffs: &FaultFs, src: &Path, dst: &Path) -> Result<(), String> {
    let a = fs::read(ffs.backing(src)).map_err(|e| format!("read {src:?}: {e}"))?;
    let b = fs::read(ffs.backing(dst)).map_err(|e| format!("read {dst:?}: {e}"))?;
    ensure!(
        a.len() == b.len(),
        "DST holds {} bytes, SRC {}",
        b.len(),
        a.len()
    );
    if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
        return Err(format!("DST differs from SRC at byte {at}"));
    }
    let src_data = backing_data(ffs, src)?;
    for r in backing_data(ffs, dst)? {
        ensure!(
            src_data
                .iter()
                .any(|s| s.start <= r.start && r.end <= s.end),
            "DST has data at {r:?}, where SRC has a hole (SRC's data: {src_data:?})"
        );
    }
    Ok(())
}

/// A copy's outcome: the report as JSON, or the error's text.
fn copy(
    via: Via,
    src: &Path,
    dst: &Path,
    args: &[&str],
    options: Options,
) -> Result<serde_json::Value, String> {
    match via {
        Via::Cli => {
            let mut all = vec!["copy", "--json", "--no-progress"];
            all.extend(args);
            let out = run_cli(
                all.iter()
                    .map(std::ffi::OsStr::new)
                    .chain([src.as_os_str(), dst.as_os_str()]),
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                let stdout = String::from_utf8_lossy(&out.stdout);
                testkit::schema::parse(testkit::schema::Doc::CopyReport, &stdout)
                    .map_err(|e| format!("exit 0 but stdout is not a report ({e}): {stderr}"))
            } else {
                // A failure prints no report and exits 1.
                let extra = if out.status.code() != Some(1) {
                    format!(" UNCLEAN: exit status {:?}, not 1", out.status)
                } else if !out.stdout.is_empty() {
                    format!(" UNCLEAN: stdout: {}", String::from_utf8_lossy(&out.stdout))
                } else {
                    String::new()
                };
                Err(format!("{}{extra}", stderr.trim_end()))
            }
        }
        Via::Library => sparsecopy::copy(src, dst, Window::new(), &options)
            .map(|report| serde_json::to_value(&report).unwrap())
            .map_err(|e| e.to_string()),
    }
}

/// The copy must fail with one error line containing each of `needles`, and leave no DST.
fn expect_failure(
    what: &str,
    outcome: Result<serde_json::Value, String>,
    dst: &Path,
    needles: &[&str],
) -> Result<(), String> {
    let left = fs::symlink_metadata(dst).map(|m| m.len());
    let _ = fs::remove_file(dst);
    let message = match outcome {
        Ok(report) => return Err(format!("{what}: succeeded: {report}")),
        Err(message) => message,
    };
    ensure!(
        left.is_err(),
        "{what}: the failed copy left its DST behind ({left:?} bytes): {message}"
    );
    ensure!(
        message.lines().count() == 1 && !message.contains("UNCLEAN:"),
        "{what}: expected one error line, exit status 1, nothing on stdout: {message:?}"
    );
    for needle in needles {
        ensure!(
            message.contains(needle),
            "{what}: the error does not say {needle:?}: {message:?}"
        );
    }
    Ok(())
}

fn field(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("the report has no number {key}: {report}"))
}

/// Runs `body`, reports its cases as `fs=faultfs`, and panics with its error.
fn run(ffs: &FaultFs, test: &str, body: impl FnOnce(&mut u64) -> Result<(), String>) {
    let mut cases = 0;
    let result = body(&mut cases);
    ffs.report(test, cases);
    if let Err(e) = result {
        panic!("{test}: {e}");
    }
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_read_eio_names_src_and_offset() {
    const TEST: &str = "faults_read_eio_names_src_and_offset";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 1);
        for via in VIAS {
            // Inside each data range, and inside the first at a block boundary.
            for off in [MIB + 12_345, 3_000_000 + 50_001, MIB + 256 * KIB] {
                ffs.set(&src, &format!("read-eio={off}"));
                let dst = dir.join(format!("dst-{via:?}-{off}"));
                let outcome = copy(via, &src, &dst, &[], Options::new());
                let what = format!("{via:?}, read-eio={off}");
                expect_failure(
                    &what,
                    outcome,
                    &dst,
                    &[
                        &src.to_string_lossy(),
                        &format!("offset {off}"),
                        "Input/output error",
                    ],
                )?;
                *cases += 1;
            }
            // In the hole after the last data: never read, so the copy is whole.
            ffs.set(&src, "read-eio=3500000");
            let dst = dir.join(format!("dst-{via:?}-hole"));
            copy(via, &src, &dst, &[], Options::new())
                .map_err(|e| format!("{via:?}: read-eio in a hole: {e}"))?;
            same_and_sparse(&ffs, &src, &dst)?;
            *cases += 1;
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_full_or_over_quota_dst_removed() {
    const TEST: &str = "faults_full_or_over_quota_dst_removed";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 2);
        for via in VIAS {
            for (token, text) in [
                ("write-enospc", "No space left on device"),
                ("write-edquot", "Disk quota exceeded"),
            ] {
                // Midway through the first range, and in the second.
                for off in [MIB + 500_000, 3_000_000 + 4096] {
                    let dst = dir.join(format!("dst-{via:?}-{token}-{off}"));
                    ffs.set(&dst, &format!("{token}={off}"));
                    let outcome = copy(via, &src, &dst, &[], Options::new());
                    let what = format!("{via:?}, {token}={off}");
                    expect_failure(&what, outcome, &dst, &[&dst.to_string_lossy(), text])?;
                    *cases += 1;
                }
            }
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_short_reads_and_writes_copy_exactly() {
    const TEST: &str = "faults_short_reads_and_writes_copy_exactly";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 3);
        let data = total(&SRC_DATA);
        for via in VIAS {
            for (read, write) in [
                (Some(4097), None),
                (None, Some(999)),
                (Some(65_536 + 7), Some(4096)),
                (Some(777), Some(12_345)),
            ] {
                match read {
                    Some(n) => ffs.set(&src, &format!("short-read={n}")),
                    None => ffs.clear(&src),
                }
                let dst = dir.join(format!("dst-{via:?}-{read:?}-{write:?}"));
                if let Some(n) = write {
                    ffs.set(&dst, &format!("short-write={n}"));
                }
                let what = format!("{via:?}, short-read={read:?} short-write={write:?}");
                let report = copy(via, &src, &dst, &[], Options::new())
                    .map_err(|e| format!("{what}: {e}"))?;
                ensure!(
                    field(&report, "data_bytes") >= data,
                    "{what}: copied {} bytes of data, SRC has {data}",
                    field(&report, "data_bytes")
                );
                same_and_sparse(&ffs, &src, &dst).map_err(|e| format!("{what}: {e}"))?;
                *cases += 1;
            }
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_fsync_eio_fails_sync() {
    const TEST: &str = "faults_fsync_eio_fails_sync";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 4);
        for via in VIAS {
            let dst = dir.join(format!("dst-{via:?}-sync"));
            ffs.set(&dst, "fsync-eio");
            let outcome = copy(via, &src, &dst, &["--sync"], Options::new().sync(true));
            expect_failure(
                &format!("{via:?}, --sync, fsync-eio"),
                outcome,
                &dst,
                &[&dst.to_string_lossy(), "Input/output error"],
            )?;
            *cases += 1;
            // Without --sync nothing calls fsync: the fault is not met.
            let dst = dir.join(format!("dst-{via:?}-nosync"));
            ffs.set(&dst, "fsync-eio");
            copy(via, &src, &dst, &[], Options::new())
                .map_err(|e| format!("{via:?}: fsync-eio without --sync: {e}"))?;
            same_and_sparse(&ffs, &src, &dst)?;
            *cases += 1;
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_ftruncate_eio_fails_cleanly() {
    const TEST: &str = "faults_ftruncate_eio_fails_cleanly";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        // SRC ends in a hole: only ftruncate can give DST its size.
        let src = make_src(&ffs, &dir, "src", 5);
        for via in VIAS {
            let dst = dir.join(format!("dst-{via:?}"));
            ffs.set(&dst, "truncate-eio");
            let outcome = copy(via, &src, &dst, &[], Options::new());
            expect_failure(
                &format!("{via:?}, truncate-eio"),
                outcome,
                &dst,
                &[&dst.to_string_lossy(), "Input/output error"],
            )?;
            *cases += 1;
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_no_fiemap_maps_by_seek_and_no_seek_copies_all() {
    const TEST: &str = "faults_no_fiemap_maps_by_seek_and_no_seek_copies_all";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 6);
        let kernel = backing_data(&ffs, &src)?;
        ensure!(
            kernel.len() == SRC_DATA.len(),
            "the backing filesystem keeps SRC's holes otherwise: {kernel:?}"
        );
        for (no_seek, backend) in [(false, Backend::Seek), (true, Backend::None)] {
            if no_seek {
                ffs.set(&src, "no-seek");
            } else {
                ffs.clear(&src);
            }
            let map = BlockMap::open(&src, MapOptions::default())
                .map_err(|e| format!("mapping {src:?}: {e}"))?;
            ensure!(
                map.backend() == backend,
                "no-seek={no_seek}: the auto backend is {:?}, not {backend:?}",
                map.backend()
            );
            let ranges = map
                .data(0..SRC_SIZE)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("walking {src:?}: {e}"))?;
            let expected = if no_seek {
                vec![0..SRC_SIZE]
            } else {
                kernel.clone()
            };
            ensure!(
                ranges == expected,
                "no-seek={no_seek}: mapped {ranges:?}, expected {expected:?}"
            );
            *cases += 1;
            for via in VIAS {
                let dst = dir.join(format!("dst-{via:?}-{no_seek}"));
                let what = format!("{via:?}, no-seek={no_seek}");
                let report = copy(via, &src, &dst, &[], Options::new())
                    .map_err(|e| format!("{what}: {e}"))?;
                ensure!(
                    report["backend"] == backend.name(),
                    "{what}: the copy used backend {}",
                    report["backend"]
                );
                ensure!(
                    field(&report, "data_bytes") == total(&expected),
                    "{what}: {} bytes of data, expected {}",
                    field(&report, "data_bytes"),
                    total(&expected)
                );
                if no_seek {
                    // Everything was written, so only the bytes can be compared.
                    let a = fs::read(ffs.backing(&src)).unwrap();
                    let b = fs::read(ffs.backing(&dst)).unwrap();
                    ensure!(a == b, "{what}: DST differs from SRC");
                } else {
                    same_and_sparse(&ffs, &src, &dst).map_err(|e| format!("{what}: {e}"))?;
                }
                *cases += 1;
            }
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faults_no_punch_zeroes_stale_data() {
    const TEST: &str = "faults_no_punch_zeroes_stale_data";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let src = make_src(&ffs, &dir, "src", 7);
        let holes = SRC_SIZE - total(&backing_data(&ffs, &src)?);
        for via in VIAS {
            for refuse in [true, false] {
                // DST: old data everywhere, as long as SRC.
                let dst = dir.join(format!("dst-{via:?}-{refuse}"));
                fs::write(ffs.backing(&dst), nonzero_noise(99, SRC_SIZE as usize)).unwrap();
                if refuse {
                    ffs.set(&dst, "fallocate-eopnotsupp");
                }
                let what = format!("{via:?}, fallocate refused: {refuse}");
                let report = copy(via, &src, &dst, &[], Options::new())
                    .map_err(|e| format!("{what}: {e}"))?;
                let a = fs::read(ffs.backing(&src)).unwrap();
                let b = fs::read(ffs.backing(&dst)).unwrap();
                ensure!(a == b, "{what}: DST differs from SRC (stale data left?)");
                let (zeroed, punched) = (
                    field(&report, "zeroed_bytes"),
                    field(&report, "punched_bytes"),
                );
                let expected = if refuse { (holes, 0) } else { (0, holes) };
                ensure!(
                    (zeroed, punched) == expected,
                    "{what}: zeroed {zeroed} and punched {punched} bytes, expected {expected:?}"
                );
                *cases += 1;
            }
        }
        Ok(())
    });
}
