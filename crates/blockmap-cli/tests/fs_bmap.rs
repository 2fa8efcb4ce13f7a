//! `blockmap bmap` against bmaptool on real filesystems (run by `cargo xtask fs-test`, see
//! `common` for the environment contract and the report).
//!
//! - `random_images_interop`: random sparse images on every filesystem; our bmap covers every
//!   non-zero byte of the model, `bmaptool copy` by our bmap and our copy by bmaptool's bmap
//!   both give files `cmp`-identical to the image, also from compressed images.
//! - `real_ext4_image`: an ext4 filesystem image (mkfs.ext4 on a sparse file, loop-mounted,
//!   files copied in, unmounted): our bmap is byte-identical to bmaptool's, and the copies in
//!   both directions, plain and compressed (gz, xz, zst, bz2), equal the image.
//! - `corruption_is_caught`: a changed byte inside a mapped range of the image, plain or
//!   compressed, a changed bmap checksum field, a changed range: each stops the copy with one
//!   error line naming the range or the bmap, exit status 1.
//! - `block_device_dest`: the spare block device as DEST: the device afterwards is the one
//!   bmaptool leaves (mapped blocks written, the rest as it was); an image larger than the
//!   device is refused before anything is written.
//!
//! Without bmaptool every test says so and skips (`.ci/run` installs it).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use blockmap_bmap::Bmap;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};

fn shell(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, which must succeed.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{}: {e}", shell(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        shell(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// Runs `cmd`, which must fail with status 1 and one line on stderr starting `blockmap: `
/// and holding `expect`, and claim nothing; returns that line.
fn run_fails(cmd: &mut Command, expect: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{}: {e}", shell(cmd)))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(1),
        "{}: exit {} (expected 1), stderr: {err}",
        shell(cmd),
        out.status
    );
    ensure!(
        err.lines().count() == 1 && err.starts_with("blockmap: ") && err.contains(expect),
        "{}: expected one error line with {expect:?}, got: {err}",
        shell(cmd)
    );
    ensure!(
        !err.contains("copied"),
        "{}: claims a copy: {err}",
        shell(cmd)
    );
    Ok(err.trim().to_owned())
}

fn blockmap() -> Command {
    Command::new(BLOCKMAP)
}

/// `cmp` says the two files are equal.
fn cmp(a: &Path, b: &Path) -> Result<(), String> {
    run(Command::new("cmp").arg(a).arg(b)).map(drop)
}

/// `tool -c image > image.ext`: a compressed copy by the compression tool itself.
fn compress(image: &Path, tool: &str, ext: &str) -> Result<PathBuf, String> {
    let out = PathBuf::from(format!("{}.{ext}", image.display()));
    let f = File::create(&out).map_err(|e| format!("{out:?}: {e}"))?;
    let status = Command::new(tool)
        .args(["-c", "-q"])
        .arg(image)
        .stdout(f)
        .status()
        .map_err(|e| format!("{tool}: {e}"))?;
    ensure!(status.success(), "{tool} -c {image:?}: {status}");
    Ok(out)
}

const COMPRESSORS: [(&str, &str); 5] = [
    ("gzip", "gz"),
    ("xz", "xz"),
    ("zstd", "zst"),
    ("bzip2", "bz2"),
    ("lz4", "lz4"),
];

/// The byte ranges a bmap maps.
fn mapped_bytes(b: &Bmap) -> Vec<Range<u64>> {
    b.ranges
        .iter()
        .map(|r| r.bytes(b.block_size, b.image_size))
        .collect()
}

fn read_bmap(path: &Path) -> Result<Bmap, String> {
    Bmap::read(path).map_err(|e| e.to_string())
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn random_images_interop() {
    const TEST: &str = "random_images_interop";
    let env = fs_env(TEST);
    let bmaptool = tool("bmaptool", "bmap-tools");
    env.run_on(&env.mounts, |m, cases| {
        let dir = m.scratch(TEST);
        let mut runner = TestRunner::new(Config {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0xb3a9 + m.name.len() as u64),
            ..Config::default()
        });
        let ops = proptest::collection::vec(op(), 1..14);
        for case in 0..8 {
            let list = ops
                .new_tree(&mut runner)
                .map_err(|e| e.to_string())?
                .current();
            let what = format!("{}: case {case}:\n{}", m.name, OpList(&list));
            random_case(bmaptool, dir.path(), case, &list).map_err(|e| format!("{what}{e}"))?;
            *cases += 1;
        }
        Ok(())
    });
}

fn random_case(bmaptool: &str, dir: &Path, case: usize, ops: &[Op]) -> Result<(), String> {
    let image = dir.join(format!("img{case}"));
    let file = File::create(&image).map_err(|e| e.to_string())?;
    let mut model = Model::new();
    for &op in ops {
        apply(&file, &mut model, op)?;
    }
    if model.is_empty() {
        // An empty image has no bmap (bmaptool refuses it too).
        apply(&file, &mut model, Op::Truncate { len: MIB })?;
    }
    let ours = dir.join(format!("img{case}.ours.bmap"));
    let theirs = dir.join(format!("img{case}.theirs.bmap"));
    // Both bmaps first: reading the image may turn preallocated ranges into cached data.
    run(blockmap()
        .args(["bmap", "create", "-o"])
        .arg(&ours)
        .arg(&image))?;
    run(Command::new(bmaptool)
        .args(["create", "-o"])
        .arg(&theirs)
        .arg(&image))?;

    // The one rule: every non-zero byte is inside a mapped range.
    let b = read_bmap(&ours)?;
    ensure!(
        b.image_size == model.len(),
        "ImageSize {} != {}",
        b.image_size,
        model.len()
    );
    let mapped = merged(mapped_bytes(&b));
    if let Some(r) = first_uncovered(&mapped, &model.nonzero_runs()) {
        return Err(format!(
            "non-zero bytes {r:?} outside our mapped ranges {}",
            short(&mapped)
        ));
    }

    let out = dir.join(format!("img{case}.out"));
    run(Command::new(bmaptool)
        .args(["copy", "--bmap"])
        .arg(&ours)
        .arg(&image)
        .arg(&out))?;
    cmp(&image, &out).map_err(|e| format!("bmaptool copy by our bmap: {e}"))?;
    run(blockmap()
        .args(["bmap", "copy", "--bmap"])
        .arg(&theirs)
        .arg(&image)
        .arg(&out))?;
    cmp(&image, &out).map_err(|e| format!("our copy by bmaptool's bmap: {e}"))?;
    model.compare_with(&File::open(&out).map_err(|e| e.to_string())?)?;

    // One compression per case, the bmap found beside it (img.gz → img.bmap).
    let (tool, ext) = COMPRESSORS[case % COMPRESSORS.len()];
    let packed = compress(&image, tool, ext)?;
    std::fs::copy(&theirs, dir.join(format!("img{case}.bmap"))).map_err(|e| e.to_string())?;
    let out2 = dir.join(format!("img{case}.out2"));
    run(blockmap().args(["bmap", "copy"]).arg(&packed).arg(&out2))?;
    cmp(&image, &out2).map_err(|e| format!("our copy of {ext}: {e}"))?;
    for f in [&packed, &out, &out2] {
        std::fs::remove_file(f).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The parts of `a` outside `b` (both sorted and merged).
fn subtract(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in a {
        let mut start = r.start;
        for h in b.iter().filter(|h| h.end > r.start && h.start < r.end) {
            if h.start > start {
                out.push(start..h.start);
            }
            start = start.max(h.end);
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

/// A loop mount of a filesystem image, unmounted when dropped (also on a panic); `mount -o
/// loop` sets up the loop device with autoclear, so unmounting frees it.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(image: &Path, at: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at))?;
        Ok(LoopMount(at.to_owned()))
    }

    fn unmount(self) -> Result<(), String> {
        let r = run(Command::new("umount").arg(&self.0)).map(drop);
        std::mem::forget(self);
        r
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A 128 MiB ext4 image with about 20 MiB of /usr/share/doc in it.
fn make_ext4_image(dir: &Path) -> Result<PathBuf, String> {
    let image = dir.join("rootfs.img");
    File::create(&image)
        .and_then(|f| f.set_len(128 * MIB))
        .map_err(|e| e.to_string())?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard"])
        .arg(&image))?;
    let mnt = LoopMount::new(&image, &dir.join("mnt"))?;
    run(Command::new("sh").arg("-c").arg(format!(
        "cd /usr/share/doc && ls | head -n 120 | tar -cf - -T - | tar -xf - -C '{}'",
        mnt.0.display()
    )))?;
    mnt.unmount()?;
    File::open(&image)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(image)
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn real_ext4_image() {
    const TEST: &str = "real_ext4_image";
    let env = fs_env(TEST);
    let bmaptool = tool("bmaptool", "bmap-tools");
    let mounts = env.mounts_where(|m| ["ext4", "xfs", "btrfs", "tmpfs"].contains(&m.name.as_str()));
    env.run_on(&mounts, |m, cases| {
        let dir = m.scratch(TEST);
        let image = make_ext4_image(dir.path())?;
        let ours = dir.path().join("ours.bmap");
        let theirs = dir.path().join("rootfs.img.bmap");
        run(blockmap()
            .args(["bmap", "create", "-o"])
            .arg(&ours)
            .arg(&image))?;
        run(Command::new(bmaptool)
            .args(["create", "-o"])
            .arg(&theirs)
            .arg(&image))?;
        let (a, b) = (read_bmap(&ours)?, read_bmap(&theirs)?);
        ensure!(
            a.ranges.len() > 10,
            "only {} ranges: no files copied?",
            a.ranges.len()
        );
        ensure!(
            a.mapped_bytes() > 10 * MIB,
            "only {} bytes mapped: no files copied?",
            a.mapped_bytes()
        );
        // mkfs leaves preallocated (unwritten) extents in the image file: bmaptool maps them,
        // we call them holes as they read as zeros. Every block only bmaptool maps must be
        // zeros, and every block we map bmaptool maps too.
        let (ours_b, theirs_b) = (merged(mapped_bytes(&a)), merged(mapped_bytes(&b)));
        if let Some(r) = first_uncovered(&theirs_b, &ours_b) {
            return Err(format!("we map {r:?}, bmaptool does not"));
        }
        let f = File::open(&image).map_err(|e| e.to_string())?;
        for r in subtract(&theirs_b, &ours_b) {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            f.read_exact_at(&mut buf, r.start)
                .map_err(|e| e.to_string())?;
            ensure!(
                buf.iter().all(|&x| x == 0),
                "bytes {r:?} are data but not in our bmap"
            );
        }
        // A copy without preallocation (zeros made holes): the same map, the same bytes.
        let plain = dir.path().join("plain.img");
        run(Command::new("cp")
            .args(["--sparse=always", "--reflink=never"])
            .arg(&image)
            .arg(&plain))?;
        File::open(&plain)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        let (po, pt) = (
            dir.path().join("plain.ours"),
            dir.path().join("plain.theirs"),
        );
        run(blockmap()
            .args(["bmap", "create", "-o"])
            .arg(&po)
            .arg(&plain))?;
        run(Command::new(bmaptool)
            .args(["create", "-o"])
            .arg(&pt)
            .arg(&plain))?;
        let (x, y) = (std::fs::read(&po).unwrap(), std::fs::read(&pt).unwrap());
        ensure!(
            read_bmap(&po)?.ranges == read_bmap(&pt)?.ranges,
            "the maps of the plain copy differ"
        );
        ensure!(x == y, "our bmap file differs from bmaptool's");
        std::fs::remove_file(&plain).map_err(|e| e.to_string())?;
        *cases += 1;

        let out = dir.path().join("out.img");
        run(Command::new(bmaptool)
            .args(["copy", "--bmap"])
            .arg(&ours)
            .arg(&image)
            .arg(&out))?;
        cmp(&image, &out)?;
        // Ours into the very file bmaptool wrote (truncated and rewritten), bmap found.
        run(blockmap().args(["bmap", "copy"]).arg(&image).arg(&out))?;
        cmp(&image, &out)?;
        *cases += 1;

        for (tool, ext) in COMPRESSORS {
            let packed = compress(&image, tool, ext)?;
            let out = dir.path().join(format!("out.{ext}.img"));
            run(blockmap().args(["bmap", "copy"]).arg(&packed).arg(&out))
                .map_err(|e| format!("{ext}: {e}"))?;
            cmp(&image, &out).map_err(|e| format!("{ext}: {e}"))?;
            std::fs::remove_file(&out).map_err(|e| e.to_string())?;
            if ext == "gz" {
                // bmaptool reads the compressed image by our bmap.
                run(Command::new(bmaptool)
                    .args(["copy", "--bmap"])
                    .arg(&ours)
                    .arg(&packed)
                    .arg(&out))?;
                cmp(&image, &out).map_err(|e| format!("bmaptool {ext}: {e}"))?;
                std::fs::remove_file(&out).map_err(|e| e.to_string())?;
            }
            std::fs::remove_file(&packed).map_err(|e| e.to_string())?;
            *cases += 1;
        }
        Ok(())
    });
}

/// A small image with three data ranges, synced.
fn small_image(dir: &Path, name: &str, size: u64) -> Result<(PathBuf, Model), String> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(|e| e.to_string())?;
    let mut model = Model::new();
    for op in [
        Op::Write {
            at: 0,
            len: 64 * KIB,
            fill: Fill::Random(1),
        },
        Op::Write {
            at: MIB,
            len: 300 * KIB,
            fill: Fill::Random(2),
        },
        Op::Write {
            at: 5 * MIB,
            len: 8 * KIB,
            fill: Fill::Random(3),
        },
        Op::Truncate { len: size },
        Op::Fsync,
    ] {
        apply(&file, &mut model, op)?;
    }
    Ok((path, model))
}

/// The file with one hex digit of its `BmapFileChecksum` changed.
fn with_checksum_digit_changed(text: &str) -> String {
    let tag = "<BmapFileChecksum> ";
    let at = text.find(tag).unwrap() + tag.len();
    let mut s = text.to_owned();
    let c = if &s[at..=at] == "0" { "1" } else { "0" };
    s.replace_range(at..=at, c);
    s
}

/// The file's checksum field recomputed by `sha256sum` (of the file with the field zeroed).
fn rechecksummed(text: &str) -> Result<String, String> {
    let tag = "<BmapFileChecksum> ";
    let at = text.find(tag).unwrap() + tag.len();
    let mut s = text.to_owned();
    s.replace_range(at..at + 64, &"0".repeat(64));
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(s.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let sum = String::from_utf8_lossy(&out.stdout)[..64].to_owned();
    s.replace_range(at..at + 64, &sum);
    Ok(s)
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn corruption_is_caught() {
    const TEST: &str = "corruption_is_caught";
    let env = fs_env(TEST);
    let bmaptool = tool("bmaptool", "bmap-tools");
    env.run_on(&env.mounts, |m, cases| {
        let dir = m.scratch(TEST);
        let d = dir.path();
        let (image, model) = small_image(d, "disk.img", 8 * MIB + 100)?;
        let bmap_path = d.join("disk.img.bmap");
        // bmaptool's bmap: an independent account of the ranges and their checksums.
        run(Command::new(bmaptool)
            .args(["create", "-o"])
            .arg(&bmap_path)
            .arg(&image))?;
        let b = read_bmap(&bmap_path)?;
        let out = d.join("out.img");
        run(blockmap().args(["bmap", "copy"]).arg(&image).arg(&out))?;
        cmp(&image, &out)?;

        // One byte changed inside the second mapped range.
        let r = b
            .ranges
            .get(1)
            .ok_or("bmaptool mapped fewer than 2 ranges")?
            .clone();
        let bytes = r.bytes(b.block_size, b.image_size);
        let at = bytes.start + (bytes.end - bytes.start) / 2;
        let f = File::options()
            .read(true)
            .write(true)
            .open(&image)
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).map_err(|e| e.to_string())?;
        f.write_all_at(&[byte[0] ^ 0x5a], at)
            .map_err(|e| e.to_string())?;
        let expect = format!(
            "checksum mismatch for blocks {}-{} (bytes {}-{})",
            r.first,
            r.last,
            bytes.start,
            bytes.end - 1
        );
        run_fails(
            blockmap().args(["bmap", "copy"]).arg(&image).arg(&out),
            &expect,
        )?;
        // bmaptool agrees that the image is bad.
        let theirs = Command::new(bmaptool)
            .args(["copy"])
            .arg(&image)
            .arg(&out)
            .output()
            .unwrap();
        ensure!(
            !theirs.status.success(),
            "bmaptool copied the corrupted image"
        );
        // --no-verify copies it all the same, byte for byte.
        run(blockmap()
            .args(["bmap", "copy", "--no-verify"])
            .arg(&image)
            .arg(&out))?;
        cmp(&image, &out)?;
        *cases += 1;

        // The same corruption inside a compressed image.
        let packed = compress(&image, "zstd", "zst")?;
        run_fails(
            blockmap().args(["bmap", "copy"]).arg(&packed).arg(&out),
            &expect,
        )?;
        f.write_all_at(&byte, at).map_err(|e| e.to_string())?;
        *cases += 1;

        let text = std::fs::read_to_string(&bmap_path).map_err(|e| e.to_string())?;
        let bad = d.join("bad.bmap");
        // The checksum field changed.
        std::fs::write(&bad, with_checksum_digit_changed(&text)).map_err(|e| e.to_string())?;
        run_fails(
            blockmap()
                .args(["bmap", "copy", "--bmap"])
                .arg(&bad)
                .arg(&image)
                .arg(&out),
            "checksum mismatch of the bmap file",
        )?;
        *cases += 1;
        // A range changed (one block shorter): the file checksum no longer matches…
        let old = format!("> {}-{} </Range>", r.first, r.last);
        let new = format!("> {}-{} </Range>", r.first, r.last - 1);
        ensure!(text.contains(&old), "no {old} in the bmap");
        let shorter = text.replacen(&old, &new, 1).replacen(
            &format!("<MappedBlocksCount> {} ", b.mapped_blocks_count),
            &format!("<MappedBlocksCount> {} ", b.mapped_blocks_count - 1),
            1,
        );
        std::fs::write(&bad, &shorter).map_err(|e| e.to_string())?;
        run_fails(
            blockmap()
                .args(["bmap", "copy", "--bmap"])
                .arg(&bad)
                .arg(&image)
                .arg(&out),
            "checksum mismatch of the bmap file",
        )?;
        // …and with the file checksum made right, the range's own checksum catches it.
        std::fs::write(&bad, rechecksummed(&shorter)?).map_err(|e| e.to_string())?;
        let expect = format!("checksum mismatch for blocks {}-{}", r.first, r.last - 1);
        run_fails(
            blockmap()
                .args(["bmap", "copy", "--bmap"])
                .arg(&bad)
                .arg(&image)
                .arg(&out),
            &expect,
        )?;
        *cases += 1;

        // A bmap of another image: sizes disagree.
        let (other, _) = small_image(d, "other.img", 8 * MIB + 4096)?;
        run_fails(
            blockmap()
                .args(["bmap", "copy", "--bmap"])
                .arg(&bmap_path)
                .arg(&other)
                .arg(&out),
            "do not belong together",
        )?;
        // No bmap beside the image.
        std::fs::remove_file(&bmap_path).map_err(|e| e.to_string())?;
        run_fails(
            blockmap().args(["bmap", "copy"]).arg(&image).arg(&out),
            "no bmap file found",
        )?;
        // The image as its own destination: refused before it is truncated.
        run(blockmap()
            .args(["bmap", "create", "-o"])
            .arg(&bmap_path)
            .arg(&image))?;
        run_fails(
            blockmap().args(["bmap", "copy"]).arg(&image).arg(&image),
            "same file",
        )?;
        model.compare_with(&File::open(&image).map_err(|e| e.to_string())?)?;
        *cases += 1;
        Ok(())
    });
}

fn device_size(dev: &Path) -> Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("{dev:?}: {e}"))
}

/// Fills the device with a pattern of period 1 MiB.
fn fill_device(dev: &Path, size: u64) -> Result<(), String> {
    let f = File::options()
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev:?}: {e}"))?;
    let pattern = Fill::Random(0xdead).bytes(MIB as usize);
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB) as usize;
        f.write_all_at(&pattern[..n], at)
            .map_err(|e| format!("{dev:?}: {e}"))?;
        at += n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())
}

fn read_device(dev: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(dev).map_err(|e| format!("{dev:?}: {e}"))
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn block_device_dest() {
    const TEST: &str = "block_device_dest";
    let env = fs_env(TEST);
    let bmaptool = tool("bmaptool", "bmap-tools");
    let dev = env
        .blockdev
        .clone()
        .expect("BLOCKMAP_FS_TEST_MOUNTS is set but BLOCKMAP_FS_TEST_BLOCKDEV is not");
    let _spare = hold_blockdev(); // the one spare device, shared by the tests
    let mounts: Vec<Mount> = env.mounts.iter().take(1).cloned().collect();
    env.run_each(
        &mounts,
        |m| format!("{}->blockdev", m.name),
        |m, cases| {
            let size = device_size(&dev)?;
            ensure!(size >= 16 * MIB, "{dev:?}: {size} bytes, too small to test");
            let dir = m.scratch(TEST);
            let (image, model) = small_image(dir.path(), "disk.img", size - 3 * MIB + 512)?;
            run(blockmap()
                .args(["bmap", "create"])
                .arg(&image)
                .arg("-o")
                .arg(dir.path().join("disk.img.bmap")))?;

            // bmaptool's result on the device is the oracle: mapped blocks written, the rest kept.
            fill_device(&dev, size)?;
            run(Command::new(bmaptool).args(["copy"]).arg(&image).arg(&dev))?;
            let theirs = read_device(&dev)?;
            fill_device(&dev, size)?;
            run(blockmap().args(["bmap", "copy"]).arg(&image).arg(&dev))?;
            let ours = read_device(&dev)?;
            ensure!(ours.len() as u64 == size, "the device changed size");
            if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
                return Err(format!("the device differs from bmaptool's at byte {i}"));
            }
            // And every non-zero byte of the image is there.
            let mut want = vec![0u8; size as usize];
            model.read(0, &mut want[..model.len() as usize]);
            for r in model.nonzero_runs() {
                let r = r.start as usize..r.end as usize;
                ensure!(
                    ours[r.clone()] == want[r.clone()],
                    "the image's data {r:?} is not on the device"
                );
            }
            *cases += 1;

            // Too big for the device: refused, not a byte written.
            let (big, _) = small_image(dir.path(), "big.img", size + 4096)?;
            run(blockmap()
                .args(["bmap", "create"])
                .arg(&big)
                .arg("-o")
                .arg(dir.path().join("big.img.bmap")))?;
            run_fails(
                blockmap().args(["bmap", "copy"]).arg(&big).arg(&dev),
                "nothing written",
            )?;
            ensure!(
                read_device(&dev)? == ours,
                "the refused copy changed the device"
            );
            *cases += 1;
            Ok(())
        },
    );
}
