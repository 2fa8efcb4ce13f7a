//! `blockmap bmap copy --checksum-retry N` (read-back verification) against a destination
//! that reads back wrong for real: faultfs's `read-corrupt-once=OFF` (a card that returned one
//! byte wrong once), `write-corrupt-once=OFF` (one that stored a byte wrong, until it is
//! rewritten) and `read-corrupt=OFF` (one that always reads it wrong). Run by `cargo xtask
//! fs-test`, which mounts faultfs (see `crate::common::faultfs`; skipped without it); reports as
//! `fs=faultfs`.
//!
//! The expected answers come from the image itself: the range that must be named is the
//! bmap range holding the corrupted byte, and a copy that succeeds must hold the image's bytes
//! (read from the backing directory, where no fault applies).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{BLOCKMAP, FaultFs, MIB, ensure, hold_blockdev, run_cli};
use blockmap_bmap::{Bmap, CreateOptions};
use testkit::noise;

const TEST: &str = "bmap_checksum_retry_reads_back";

/// An image of 24 MiB + 1000 bytes (its last block partial) with data in three places, the
/// last one reaching its end; its bmap (with checksums), a bmap without, and its gzip.
struct Image {
    plain: PathBuf,
    gz: PathBuf,
    bmap: PathBuf,
    bmap_unsummed: PathBuf,
    map: Bmap,
    bytes: Vec<u8>,
}

fn make_image(ffs: &FaultFs, dir: &Path) -> Image {
    let size = 24 * MIB + 1000;
    let plain = dir.join("disk.img");
    let file = File::create(ffs.backing(&plain)).unwrap();
    file.set_len(size).unwrap();
    for (at, len, seed) in [
        (MIB, 300 << 10, 1),
        (5 * MIB, 600 << 10, 2),
        (size - 9000, 9000, 3),
    ] {
        file.write_all_at(&noise(seed, len as usize), at).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let map = blockmap_bmap::create(ffs.backing(&plain), &CreateOptions::default()).unwrap();
    assert!(
        map.ranges.len() >= 3,
        "the image has {} ranges",
        map.ranges.len()
    );
    let bmap = dir.join("disk.img.bmap");
    std::fs::write(ffs.backing(&bmap), map.to_xml()).unwrap();
    let unsummed = blockmap_bmap::create(
        ffs.backing(&plain),
        &CreateOptions {
            checksums: false,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let bmap_unsummed = dir.join("unsummed.bmap");
    std::fs::write(ffs.backing(&bmap_unsummed), unsummed.to_xml()).unwrap();
    let bytes = std::fs::read(ffs.backing(&plain)).unwrap();
    let gz = dir.join("disk.img.gz");
    let mut e = flate2::write::GzEncoder::new(
        File::create(ffs.backing(&gz)).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(&bytes).unwrap();
    e.finish().unwrap();
    Image {
        plain,
        gz,
        bmap,
        bmap_unsummed,
        map,
        bytes,
    }
}

impl Image {
    /// How the error names the bmap range that holds byte `off`.
    fn range_of(&self, off: u64) -> String {
        let r = self
            .map
            .ranges
            .iter()
            .find(|r| {
                r.bytes(self.map.block_size, self.map.image_size)
                    .contains(&off)
            })
            .unwrap_or_else(|| panic!("byte {off} is in no range"));
        let b = r.bytes(self.map.block_size, self.map.image_size);
        format!(
            "blocks {}-{} (bytes {}-{})",
            r.first,
            r.last,
            b.start,
            b.end - 1
        )
    }
}

/// `bmap copy --no-progress [extra…] --bmap BMAP IMAGE DEST`, IMAGE fed through a pipe as
/// `/dev/stdin` when `piped`: `Ok(summary)` or `Err(error line)`.
fn copy(
    extra: &[&str],
    image: &Path,
    bmap: &Path,
    dest: &Path,
    piped: bool,
) -> Result<String, String> {
    let mut args = vec!["bmap", "copy", "--no-progress"];
    args.extend(extra);
    let (b, d) = (bmap.to_str().unwrap(), dest.to_str().unwrap());
    args.extend(["--bmap", b]);
    let out = if piped {
        let mut child = Command::new(BLOCKMAP)
            .args(&args)
            .args(["/dev/stdin", d])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = std::fs::read(image).unwrap();
        let feeder = std::thread::spawn(move || {
            // The copy may refuse before it reads everything.
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    } else {
        args.extend([image.to_str().unwrap(), d]);
        run_cli(&args)
    };
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(err),
        Some(1) if out.stdout.is_empty() => Err(err.trim_end().to_owned()),
        other => Err(format!("UNCLEAN: status {other:?}: {err}")),
    }
}

/// A failure: one line with every needle, and the DEST the copy created gone.
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

/// A success: DEST holds the image, and the summary says every needle.
fn expect_success(
    what: &str,
    ffs: &FaultFs,
    outcome: Result<String, String>,
    dest: &Path,
    image: &Image,
    needles: &[&str],
) -> Result<(), String> {
    let summary = outcome.map_err(|e| format!("{what}: failed: {e}"))?;
    let got = std::fs::read(ffs.backing(dest)).map_err(|e| format!("{what}: {e}"))?;
    let _ = std::fs::remove_file(dest);
    ensure!(got == image.bytes, "{what}: DEST is not the image");
    for needle in needles {
        ensure!(
            summary.contains(needle),
            "{what}: the summary does not say {needle:?}: {summary:?}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn bmap_checksum_retry_reads_back() {
    let ffs = crate::common::faultfs(TEST);
    let dir = ffs.dir();
    let image = make_image(&ffs, &dir);
    let ranges = image.map.ranges.len();
    let read_back = format!("{ranges} ranges read back");
    let mut cases = 0;
    let result = (|| -> Result<(), String> {
        // Bytes in the first, the middle (not at a chunk's start) and the last, partial block.
        for off in [MIB, 5 * MIB + 12345, image.map.image_size - 1] {
            let named = image.range_of(off);
            let dest = dir.join(format!("dest{off}"));
            for (source, piped) in [(&image.plain, false), (&image.gz, false)] {
                let what = |case: &str| format!("{} byte {off} {case}", source.display());
                // Clean: read back, nothing rewritten.
                ffs.clear(&dest);
                let out = copy(
                    &["--checksum-retry", "3"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_success(&what("clean"), &ffs, out, &dest, &image, &[&read_back])?;
                cases += 1;
                // Read wrong once, no retry: named, DEST removed.
                ffs.set(&dest, &format!("read-corrupt-once={off}"));
                let out = copy(
                    &["--checksum-retry", "0"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_failure(
                    &what("once, N=0"),
                    out,
                    &dest,
                    &[
                        dest.to_str().unwrap(),
                        "read back wrong",
                        &named,
                        "do not trust it",
                    ],
                )?;
                cases += 1;
                // Read wrong once, one retry: that range rewritten, the copy is the image.
                ffs.set(&dest, &format!("read-corrupt-once={off}"));
                let out = copy(
                    &["--checksum-retry", "1"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_success(
                    &what("once, N=1"),
                    &ffs,
                    out,
                    &dest,
                    &image,
                    &[&read_back, "(1 rewritten and verified again)"],
                )?;
                cases += 1;
                // Written wrong once (the media holds a wrong byte until it is rewritten):
                // named without a retry; with one, that range alone rewritten.
                ffs.set(&dest, &format!("write-corrupt-once={off}"));
                let out = copy(
                    &["--checksum-retry", "0"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_failure(
                    &what("written wrong, N=0"),
                    out,
                    &dest,
                    &["read back wrong after writing", &named],
                )?;
                ffs.set(&dest, &format!("write-corrupt-once={off}"));
                let out = copy(
                    &["--checksum-retry", "1"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_success(
                    &what("written wrong, N=1"),
                    &ffs,
                    out,
                    &dest,
                    &image,
                    &[&read_back, "(1 rewritten and verified again)"],
                )?;
                cases += 2;
                // Always wrong: named after N rewrites.
                ffs.set(&dest, &format!("read-corrupt={off}"));
                let out = copy(
                    &["--checksum-retry", "2"],
                    source,
                    &image.bmap,
                    &dest,
                    piped,
                );
                expect_failure(
                    &what("always, N=2"),
                    out,
                    &dest,
                    &["read back wrong after 2 rewrites", &named],
                )?;
                cases += 1;
            }
            ffs.clear(&dest);
        }

        let dest = dir.join("dest");
        // A stream: verified without rewriting; a rewrite is refused before anything is written.
        ffs.set(&dest, &format!("read-corrupt-once={}", 5 * MIB));
        let out = copy(
            &["--checksum-retry", "0"],
            &ffs.backing(&image.plain),
            &image.bmap,
            &dest,
            true,
        );
        expect_failure(
            "pipe, N=0",
            out,
            &dest,
            &["read back wrong", &image.range_of(5 * MIB)],
        )?;
        let out = copy(
            &["--checksum-retry", "1"],
            &ffs.backing(&image.plain),
            &image.bmap,
            &dest,
            true,
        );
        expect_failure(
            "pipe, N=1",
            out,
            &dest,
            &[
                "/dev/stdin",
                "cannot verify by reading back",
                "--checksum-retry 0",
            ],
        )?;
        ffs.clear(&dest);
        let out = copy(
            &["--checksum-retry", "0"],
            &ffs.backing(&image.plain),
            &image.bmap,
            &dest,
            true,
        );
        expect_success("pipe, clean", &ffs, out, &dest, &image, &[&read_back])?;
        cases += 3;

        // No checksums in the bmap: refused before DEST exists.
        let out = copy(
            &["--checksum-retry", "1"],
            &image.plain,
            &image.bmap_unsummed,
            &dest,
            false,
        );
        expect_failure(
            "no checksums",
            out,
            &dest,
            &["unsummed.bmap", "needs a bmap with checksums"],
        )?;
        cases += 1;

        // A block device: read back with O_DIRECT (the summary does not say otherwise).
        if let Some(dev) = std::env::var_os("BLOCKMAP_FS_TEST_BLOCKDEV").filter(|d| !d.is_empty()) {
            let _spare = hold_blockdev(); // the one spare device, shared by the tests
            let dev = PathBuf::from(dev);
            let summary = copy(
                &["--checksum-retry", "1"],
                &image.plain,
                &image.bmap,
                &dev,
                false,
            )
            .map_err(|e| format!("block device: {e}"))?;
            ensure!(
                summary.contains(&read_back) && !summary.contains("no O_DIRECT"),
                "block device: {summary:?}"
            );
            let device = File::open(&dev).unwrap();
            for r in &image.map.ranges {
                let b = r.bytes(image.map.block_size, image.map.image_size);
                let mut got = vec![0; (b.end - b.start) as usize];
                device.read_exact_at(&mut got, b.start).unwrap();
                ensure!(
                    got == image.bytes[b.start as usize..b.end as usize],
                    "block device: {b:?} differs"
                );
            }
            cases += 1;
        } else {
            return Err(
                "fs-test gave no spare block device (BLOCKMAP_FS_TEST_BLOCKDEV)".to_owned(),
            );
        }
        Ok(())
    })();
    ffs.report(TEST, cases);
    if let Err(e) = result {
        panic!("{TEST}: {e}");
    }
}

/// Deletes the partitions of the loop device it names and detaches it when dropped (a
/// detach leaves partitions added with BLKPG behind).
struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("--delete").arg(&self.0).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// `--removable-device` and loop devices, which are not removable (this kernel has no way to
/// make a removable device: no scsi_debug, no modules): fs-test's spare loop device is refused
/// by its own sysfs attribute, and a partition of a loop device made here by its disk's.
#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn bmap_removable_device_refuses_loop_devices() {
    const TEST: &str = "bmap_removable_device_refuses_loop_devices";
    let ffs = crate::common::faultfs(TEST);
    let mut cases = 0;
    let result = (|| -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let f = File::create(&img).unwrap();
        f.write_all_at(&noise(9, 64 << 10), 4096).unwrap();
        f.set_len(MIB).unwrap();
        drop(f);
        let map = blockmap_bmap::create(&img, &CreateOptions::default()).unwrap();
        std::fs::write(dir.path().join("disk.img.bmap"), map.to_xml()).unwrap();
        let refused = |dev: &Path, disk: &str| -> Result<(), String> {
            let before = std::fs::read(dev).map_err(|e| e.to_string())?;
            let out = run_cli([
                "bmap",
                "copy",
                "--no-progress",
                "--removable-device",
                img.to_str().unwrap(),
                dev.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(1) && err.lines().count() == 1,
                "{dev:?}: {err:?}"
            );
            let says = format!(
                "{}: not a removable device (/sys/devices/virtual/block/{disk}/removable says 0)",
                dev.display()
            );
            ensure!(err.contains(&says), "{dev:?}: expected {says:?}: {err:?}");
            ensure!(
                std::fs::read(dev).map_err(|e| e.to_string())? == before,
                "{dev:?} was written"
            );
            Ok(())
        };
        let spare = std::env::var_os("BLOCKMAP_FS_TEST_BLOCKDEV")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .ok_or("fs-test gave no spare block device (BLOCKMAP_FS_TEST_BLOCKDEV)")?;
        let _spare = hold_blockdev(); // the one spare device, shared by the tests
        let name = std::fs::canonicalize(&spare)
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        refused(&spare, &name)?;
        cases += 1;

        // A loop device with a partition table (one partition, sectors 2048-10239).
        let backing = dir.path().join("parted.img");
        let f = File::create(&backing).unwrap();
        f.set_len(8 * MIB).unwrap();
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&8192u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        f.write_all_at(&mbr, 0).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .unwrap();
        ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = Loop(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()));
        // partx reads the table itself and adds the partition with BLKPG (this kernel reads
        // no partition table on its own). A partition some earlier user of this loop device
        // left behind (it outlives the detach) is deleted first, or the add fails with EBUSY.
        let _ = Command::new("partx").arg("--delete").arg(&dev.0).output();
        let out = Command::new("partx")
            .arg("--add")
            .arg(&dev.0)
            .output()
            .unwrap();
        ensure!(
            out.status.success(),
            "partx --add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let disk = dev.0.file_name().unwrap().to_str().unwrap().to_owned();
        let part = PathBuf::from(format!("{}p1", dev.0.display()));
        let appeared = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            part.exists()
        });
        ensure!(appeared, "{part:?} did not appear");
        refused(&part, &disk)?;
        cases += 1;
        Ok(())
    })();
    ffs.report(TEST, cases);
    if let Err(e) = result {
        panic!("{TEST}: {e}");
    }
}
