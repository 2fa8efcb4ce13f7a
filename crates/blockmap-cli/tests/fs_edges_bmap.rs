//! `blockmap bmap` (the CLI and the `bmap` library) against faults injected for real by
//! faultfs (mounted by `cargo xtask fs-test`; see `crate::common::faultfs`; skipped without it).
//! Each case runs through the CLI and the library and reports as `fs=faultfs`.
//!
//! - `bmap_close_write_and_fsync_faults`: DEST's close (FUSE flush) fails with EIO, its
//!   writes with ENOSPC midway, its fsync with EIO; plain and gzip images, with and without
//!   `--no-sync`: one error line naming DEST and the errno, no success line, the DEST the copy
//!   created removed (fsync-eio under `--no-sync` is never met: the copy succeeds). `bmap
//!   create -o` whose output fails at close or with ENOSPC: the same.
//! - `bmap_signals_stop_the_copy`: the image read slowly (`read-delay-ms`), plain (one lane per
//!   core) and gzip (one stream); SIGINT, SIGTERM and SIGHUP midway: the copy stops within a
//!   chunk, exit status 128+signal, one line saying so; a DEST it created is removed, an
//!   existing one (a file, or fs-test's spare block device) is named with the bytes that may
//!   be partly written. The library's interrupt flag raised midway: the same.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{BLOCKMAP, FaultFs, MIB, ensure, hold_blockdev, run_cli};
use blockmap_bmap::{BmapFile, Copier, CopyOptions, CreateOptions};
use testkit::noise;

/// Runs `body`, reports its cases as `fs=faultfs`, and panics with its error.
fn run(ffs: &FaultFs, test: &str, body: impl FnOnce(&mut u64) -> Result<(), String>) {
    let mut cases = 0;
    let result = body(&mut cases);
    ffs.report(test, cases);
    if let Err(e) = result {
        panic!("{test}: {e}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Cli,
    Library,
}

/// A sparse image in the faultfs directory (written through the backing directory, so that
/// its faults do not apply): `data` at 1 MiB of a 24 MiB image; its bmap; its gzip.
struct Image {
    plain: PathBuf,
    gz: PathBuf,
    bmap: PathBuf,
}

fn make_image(ffs: &FaultFs, dir: &Path, data_len: usize) -> Image {
    let plain = dir.join("disk.img");
    let file = File::create(ffs.backing(&plain)).unwrap();
    file.set_len(24 * MIB).unwrap();
    let data = noise(1, data_len);
    std::os::unix::fs::FileExt::write_all_at(&file, &data, MIB).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let bmap = dir.join("disk.img.bmap");
    let b = blockmap_bmap::create(ffs.backing(&plain), &CreateOptions::default()).unwrap();
    std::fs::write(ffs.backing(&bmap), b.to_xml()).unwrap();
    let gz = dir.join("disk.img.gz");
    let mut e = flate2::write::GzEncoder::new(
        File::create(ffs.backing(&gz)).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(&std::fs::read(ffs.backing(&plain)).unwrap())
        .unwrap();
    e.finish().unwrap();
    Image { plain, gz, bmap }
}

/// `bmap copy` through the CLI or the library: `Ok(summary)` or `Err(error line)`.
fn copy(via: Via, image: &Path, bmap: &Path, dest: &Path, sync: bool) -> Result<String, String> {
    match via {
        Via::Cli => {
            let mut args = vec!["bmap", "copy", "--no-progress"];
            if !sync {
                args.push("--no-sync");
            }
            let (b, i, d) = (
                bmap.to_str().unwrap(),
                image.to_str().unwrap(),
                dest.to_str().unwrap(),
            );
            args.extend(["--bmap", b, i, d]);
            let out = run_cli(&args);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            match out.status.code() {
                Some(0) => Ok(err),
                Some(1) if out.stdout.is_empty() => Err(err.trim_end().to_owned()),
                other => Err(format!("UNCLEAN: status {other:?}: {err}")),
            }
        }
        Via::Library => BmapFile::open(bmap)
            .and_then(|f| Copier::from_file(f, CopyOptions::new().sync(sync)).copy(image, dest))
            .map(|r| r.to_string())
            .map_err(|e| e.to_string()),
    }
}

/// A failure: one line with every needle, and `dest` gone.
fn expect_failure(
    what: &str,
    outcome: Result<String, String>,
    dest: &Path,
    needles: &[&str],
) -> Result<(), String> {
    let left = std::fs::symlink_metadata(dest).map(|m| m.len());
    let _ = std::fs::remove_file(dest);
    let message = match outcome {
        Ok(summary) => return Err(format!("{what}: succeeded: {summary}")),
        Err(message) => message,
    };
    ensure!(
        left.is_err(),
        "{what}: the failed copy left its DEST behind ({left:?} bytes): {message}"
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

fn same(ffs: &FaultFs, a: &Path, b: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(ffs.backing(p)).map_err(|e| format!("{p:?}: {e}"));
    ensure!(read(a)? == read(b)?, "{b:?} is not a copy of {a:?}");
    Ok(())
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn bmap_close_write_and_fsync_faults() {
    const TEST: &str = "bmap_close_write_and_fsync_faults";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let img = make_image(&ffs, &dir, 3 * MIB as usize);
        for via in [Via::Cli, Via::Library] {
            for (kind, image) in [("plain", &img.plain), ("gz", &img.gz)] {
                for sync in [true, false] {
                    let what = |fault: &str| format!("{via:?} {kind} sync={sync} {fault}");
                    let dest = dir.join(format!("d-{via:?}-{kind}-{sync}-flush"));
                    ffs.set(&dest, "flush-eio");
                    let outcome = copy(via, image, &img.bmap, &dest, sync);
                    expect_failure(
                        &what("flush-eio"),
                        outcome,
                        &dest,
                        &[dest.to_str().unwrap(), "Input/output error"],
                    )?;
                    *cases += 1;

                    let dest = dir.join(format!("d-{via:?}-{kind}-{sync}-enospc"));
                    ffs.set(&dest, &format!("write-enospc={}", 2 * MIB));
                    let outcome = copy(via, image, &img.bmap, &dest, sync);
                    expect_failure(
                        &what("write-enospc"),
                        outcome,
                        &dest,
                        &[dest.to_str().unwrap(), "No space left on device"],
                    )?;
                    *cases += 1;

                    let dest = dir.join(format!("d-{via:?}-{kind}-{sync}-fsync"));
                    ffs.set(&dest, "fsync-eio");
                    let outcome = copy(via, image, &img.bmap, &dest, sync);
                    if sync {
                        expect_failure(
                            &what("fsync-eio"),
                            outcome,
                            &dest,
                            &[dest.to_str().unwrap(), "Input/output error"],
                        )?;
                    } else {
                        outcome.map_err(|e| format!("{}: {e}", what("fsync-eio")))?;
                        same(&ffs, &img.plain, &dest)?;
                    }
                    *cases += 1;
                }
            }
        }
        // bmap create -o: its output's close and writes are checked too.
        for (fault, errno) in [
            ("flush-eio".to_owned(), "Input/output error"),
            ("write-enospc=2000".to_owned(), "No space left on device"),
        ] {
            let out_path = dir.join(format!("out-{}.bmap", fault.replace('=', "-")));
            ffs.set(&out_path, &fault);
            let out = run_cli([
                "bmap",
                "create",
                "-o",
                out_path.to_str().unwrap(),
                img.plain.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            ensure!(
                out.status.code() == Some(1) && err.lines().count() == 1,
                "create -o with {fault}: {:?}: {err}",
                out.status
            );
            ensure!(
                err.contains(out_path.to_str().unwrap()) && err.contains(errno),
                "create -o with {fault}: {err}"
            );
            ensure!(
                !out_path.exists(),
                "create -o with {fault}: the output is left"
            );
            *cases += 1;
        }
        Ok(())
    });
}

/// Sends `signal` to the process `pid`.
fn kill(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn bmap_signals_stop_the_copy() {
    use rustix::process::Signal;
    const TEST: &str = "bmap_signals_stop_the_copy";
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    run(&ffs, TEST, |cases| {
        let img = make_image(&ffs, &dir, 16 * MIB as usize);
        // 16 MiB at 40 ms a read of at most 256 KiB: over a second, whatever the lanes.
        for image in [&img.plain, &img.gz] {
            ffs.set(image, "read-delay-ms=40");
        }
        let dest_dir = tempfile::tempdir().unwrap();
        for (signal, name, code) in [
            (Signal::INT, "SIGINT", 130),
            (Signal::TERM, "SIGTERM", 143),
            (Signal::HUP, "SIGHUP", 129),
        ] {
            for image in [&img.plain, &img.gz] {
                for existing in [false, true] {
                    let case = format!("{name} {image:?} existing={existing}");
                    let dest = dest_dir.path().join("dest.img");
                    let _ = std::fs::remove_file(&dest);
                    if existing {
                        std::fs::write(&dest, b"old").unwrap();
                    }
                    let mut child = Command::new(BLOCKMAP)
                        .args(["bmap", "copy", "--bmap"])
                        .args([&img.bmap, image, &dest])
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                    ensure!(
                        child.try_wait().unwrap().is_none(),
                        "{case}: finished before the signal"
                    );
                    kill(child.id(), signal);
                    let sent = Instant::now();
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    let status = child.wait().unwrap();
                    let took = sent.elapsed();
                    ensure!(
                        took < Duration::from_secs(3),
                        "{case}: stopped after {took:?}"
                    );
                    ensure!(
                        status.code() == Some(code),
                        "{case}: status {status:?}, expected {code}: {err}"
                    );
                    ensure!(
                        err.lines().count() == 1 && err.contains(&format!("interrupted by {name}")),
                        "{case}: {err:?}"
                    );
                    if existing {
                        ensure!(dest.exists(), "{case}: the existing DEST is gone");
                        ensure!(err.contains("may be partly written"), "{case}: {err}");
                    } else {
                        ensure!(!dest.exists(), "{case}: the DEST it created is left");
                        ensure!(err.contains("removed"), "{case}: {err}");
                    }
                    *cases += 1;
                }
            }
        }
        // A block device (fs-test's spare one), which cannot be undone: the line names the
        // bytes that may be partly written, inside the image's data.
        if let Some(dev) = std::env::var_os("BLOCKMAP_FS_TEST_BLOCKDEV").filter(|d| !d.is_empty()) {
            let _spare = hold_blockdev(); // the one spare device, shared by the tests
            let mut child = Command::new(BLOCKMAP)
                .args(["bmap", "copy", "--bmap"])
                .args([img.bmap.as_os_str(), img.plain.as_os_str(), &dev])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            kill(child.id(), Signal::TERM);
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let status = child.wait().unwrap();
            ensure!(
                status.code() == Some(143),
                "block device: {status:?}: {err}"
            );
            let span = err
                .split_once("interrupted by SIGTERM: bytes ")
                .and_then(|(_, rest)| rest.split_once(" may be partly written"))
                .and_then(|(span, _)| span.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            let Some((first, last)) = span else {
                return Err(format!("block device: no span of bytes in {err:?}"));
            };
            ensure!(
                MIB <= first && first <= last && last < 17 * MIB,
                "block device: bytes {first}-{last} outside the image's data: {err}"
            );
            *cases += 1;
        }

        // The library: the flag raised midway by another thread.
        for image in [&img.plain, &img.gz] {
            let dest = dest_dir.path().join("lib.img");
            let flag = Arc::new(AtomicBool::new(false));
            let raise = Arc::clone(&flag);
            let raiser = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                raise.store(true, Ordering::Relaxed);
            });
            let started = Instant::now();
            let outcome = BmapFile::open(&img.bmap).and_then(|f| {
                Copier::from_file(f, CopyOptions::new())
                    .interrupt(flag)
                    .copy(image, &dest)
            });
            raiser.join().unwrap();
            let took = started.elapsed();
            match outcome {
                Err(blockmap_bmap::Error::Interrupted { removed: true, .. }) => {}
                other => return Err(format!("library {image:?}: {other:?}")),
            }
            ensure!(
                !dest.exists(),
                "library {image:?}: the DEST it created is left"
            );
            ensure!(
                took < Duration::from_secs(3),
                "library {image:?}: took {took:?}"
            );
            *cases += 1;
        }
        Ok(())
    });
}
