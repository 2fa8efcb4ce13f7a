//! Compressed images of independent blocks decoded in parallel (issue #11 item 6), made by the
//! real `xz -T2` and `pbzip2`, under `$TMPDIR` (no root): the copy equals the image and what the streaming
//! path (the same file through a FIFO) writes; a block wholly in an unmapped range is never
//! decoded (a byte corrupted in it goes unnoticed, where the stream fails); a corrupt byte in
//! a mapped block or in the index fails with one line; an image of one block still streams.

use crate::common::{assert_ok, blockmap, s, stderr};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use testkit::noise;

/// One error line naming the image as corrupt, exit status 1, DEST gone.
fn assert_corrupt(out: &Output, image: &Path, dest: &Path) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.contains(s(image)) && err.contains("corrupt"), "{err:?}");
    assert!(!dest.exists(), "DEST left behind");
}

/// A 10 MiB image: data at [0, 1 MiB) (text, compressible) and [6 MiB, 7 MiB + 5000) (noise),
/// holes elsewhere; and its bmap.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    let text: Vec<u8> = (0..1u32 << 20)
        .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ (i >> 14) as u8)
        .collect();
    f.write_all_at(&text, 0).unwrap();
    f.write_all_at(&noise(7, (1 << 20) + 5000), 6 << 20)
        .unwrap();
    f.set_len(10 << 20).unwrap();
    f.sync_all().unwrap();
    let bmap = dir.join("disk.img.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&path)]));
    (path, bmap)
}

/// `xz ARGS -c image` into `out`.
fn xz(image: &Path, args: &[&str], out: &Path) {
    let made = Command::new("xz")
        .args(args)
        .arg("-c")
        .stdin(File::open(image).unwrap())
        .stdout(File::create(out).unwrap())
        .status()
        .unwrap();
    assert!(made.success());
}

/// The blocks of an xz file as `xz --robot --list -vv` tells them: (where the block's
/// compressed data is in the file, where its bytes are in the image).
fn xz_blocks(path: &Path) -> Vec<(std::ops::Range<u64>, std::ops::Range<u64>)> {
    let out = Command::new("xz")
        .args(["--robot", "--list", "-vv"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(|l| {
            let f: Vec<u64> = l.split('\t').map(|x| x.parse().unwrap_or(0)).collect();
            // block, stream, block in stream, block in file, compressed offset, uncompressed
            // offset, total size, uncompressed size, ratio, check, check value, header size,
            // flags, compressed data size, …
            let data = f[4] + f[11]..f[4] + f[11] + f[13];
            (data, f[5]..f[5] + f[7])
        })
        .collect()
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
}

/// Copies `packed` through a FIFO of the same suffix: the streaming path.
fn copy_streamed(dir: &Path, packed: &Path, bmap: &Path, dest: &Path, ext: &str) -> Output {
    let fifo = dir.join(format!("fifo.img.{ext}"));
    let _ = std::fs::remove_file(&fifo);
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut feeder = Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > '{}' 2>/dev/null", s(packed), s(&fifo)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = blockmap(&["bmap", "copy", "--bmap", s(bmap), s(&fifo), s(dest)]);
    // The writer ends with the reader (EPIPE once blockmap exits).
    feeder.wait().unwrap();
    out
}

#[test]
fn xz_blocks_are_decoded_in_parallel_where_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let original = std::fs::read(&img).unwrap();
    let packed = dir.path().join("disk.img.xz");
    xz(&img, &["-T2", "--block-size=256KiB"], &packed);
    let blocks = xz_blocks(&packed);
    assert_eq!(blocks.len(), 40, "{blocks:?}");
    let dest = dir.path().join("copy.img");

    // Parallel (a file) and streamed (a FIFO): both the image.
    let out = blockmap(&[
        "-vv",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&packed),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("decoding in parallel units=40 decoded=9"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "parallel copy differs"
    );
    std::fs::remove_file(&dest).unwrap();
    assert_ok(&copy_streamed(dir.path(), &packed, &bmap, &dest, "xz"));
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "streamed copy differs"
    );
    std::fs::remove_file(&dest).unwrap();

    // A block wholly in the hole [1 MiB, 6 MiB): corrupt, never decoded, the copy is right;
    // the stream decodes it and fails.
    let (hole_block, _) = blocks
        .iter()
        .find(|(_, out)| out.start >= 2 << 20 && out.end <= 5 << 20)
        .unwrap()
        .clone();
    let corrupt_hole = dir.path().join("hole.img.xz");
    std::fs::copy(&packed, &corrupt_hole).unwrap();
    flip(&corrupt_hole, (hole_block.start + hole_block.end) / 2);
    let out = blockmap(&[
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&corrupt_hole),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(std::fs::read(&dest).unwrap() == original, "copy differs");
    std::fs::remove_file(&dest).unwrap();
    let out = copy_streamed(dir.path(), &corrupt_hole, &bmap, &dest, "xz");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the stream must fail: {}",
        stderr(&out)
    );

    // A byte of a mapped block (text, and noise stored as it is), with and without
    // --no-verify: the block's own check fails it.
    for (i, image_at) in [(0, 300_000u64), (1, (6 << 20) + 500_000)] {
        let (data, _) = blocks
            .iter()
            .find(|(_, out)| out.contains(&image_at))
            .unwrap()
            .clone();
        let bad = dir.path().join(format!("bad{i}.img.xz"));
        std::fs::copy(&packed, &bad).unwrap();
        flip(&bad, (data.start + data.end) / 2);
        for args in [vec![], vec!["--no-verify"]] {
            let mut a = vec!["bmap", "copy"];
            a.extend(args);
            a.extend(["--bmap", s(&bmap), s(&bad), s(&dest)]);
            assert_corrupt(&blockmap(&a), &bad, &dest);
        }
    }

    // The index (just before the 12-byte stream footer), and the footer itself.
    let len = std::fs::metadata(&packed).unwrap().len();
    for (i, at) in [(0, len - 20), (1, len - 6)] {
        let bad = dir.path().join(format!("index{i}.img.xz"));
        std::fs::copy(&packed, &bad).unwrap();
        flip(&bad, at);
        assert_corrupt(
            &blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&bad), s(&dest)]),
            &bad,
            &dest,
        );
    }
}

/// `xz` without -T writes one block: the streaming path, which reads it all.
#[test]
fn single_block_xz_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let packed = dir.path().join("disk.img.xz");
    xz(&img, &["-T1"], &packed);
    assert_eq!(xz_blocks(&packed).len(), 1);
    let dest = dir.path().join("copy.img");
    let out = blockmap(&[
        "-vv",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&packed),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(
        !stderr(&out).contains("decoding in parallel"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&img).unwrap());
}

/// `TOOL ARGS` with the image on stdin, into `out`.
fn pack(tool: &str, args: &[&str], image: &Path, out: &Path) {
    let made = Command::new(tool)
        .args(args)
        .stdin(File::open(image).unwrap())
        .stdout(File::create(out).unwrap())
        .status()
        .unwrap();
    assert!(made.success(), "{tool} failed");
}

/// `pbzip2` writes one stream per 900 kB: all decoded (their sizes are known only then), in
/// parallel, placed one after the other; the copy equals the image and the streaming path's
/// copy. A corrupt byte anywhere in a stream fails, holes included. `bzip2` (one stream) streams.
#[test]
fn pbzip2_streams_are_decoded_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let original = std::fs::read(&img).unwrap();
    let packed = dir.path().join("disk.img.bz2");
    pack("pbzip2", &["-p2", "-c"], &img, &packed);
    let dest = dir.path().join("copy.img");
    let out = blockmap(&[
        "-vv",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&packed),
        s(&dest),
    ]);
    assert_ok(&out);
    // 10 MiB in streams of 900 000 bytes: 12 streams, every one decoded.
    assert!(
        stderr(&out).contains("decoding in parallel units=12 decoded=12"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "parallel copy differs"
    );
    std::fs::remove_file(&dest).unwrap();
    assert_ok(&copy_streamed(dir.path(), &packed, &bmap, &dest, "bz2"));
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "streamed copy differs"
    );
    std::fs::remove_file(&dest).unwrap();

    // A byte in the middle of the file: in a stream of the hole [1 MiB, 6 MiB).
    let bad = dir.path().join("bad.img.bz2");
    let mut bytes = std::fs::read(&packed).unwrap();
    let stream_starts: Vec<usize> = bytes
        .windows(10)
        .enumerate()
        .filter(|(_, w)| w.starts_with(b"BZh9") && w[4..] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stream_starts.len(), 12);
    // The fourth stream holds [2.7 MB, 3.6 MB) of the image: a hole.
    let at = (stream_starts[3] + stream_starts[4]) / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&bad, &bytes).unwrap();
    assert_corrupt(
        &blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&bad), s(&dest)]),
        &bad,
        &dest,
    );

    let single = dir.path().join("single.img.bz2");
    pack("bzip2", &["-c"], &img, &single);
    let out = blockmap(&[
        "-vv",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&single),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(
        !stderr(&out).contains("decoding in parallel"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&dest).unwrap() == original);
}

/// The image cut in 1 MiB pieces, each compressed by `zstd` (from a file: the frame tells its
/// content size; from stdin: it does not), the frames concatenated as zstd's format allows.
fn zstd_frames(img: &Path, dir: &Path, sizes: bool, out: &Path) {
    let data = std::fs::read(img).unwrap();
    let mut packed = Vec::new();
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        let raw = dir.join(format!("piece{i}"));
        std::fs::write(&raw, piece).unwrap();
        let mut c = Command::new("zstd");
        c.args(["-q", "-c"]);
        if sizes {
            c.arg(&raw);
        } else {
            c.stdin(File::open(&raw).unwrap());
        }
        let o = c.output().unwrap();
        assert!(o.status.success());
        packed.extend(o.stdout);
        std::fs::remove_file(&raw).unwrap();
    }
    std::fs::write(out, packed).unwrap();
}

/// Frames that tell their content size: only those holding mapped bytes are decoded (a corrupt
/// frame in a hole goes unnoticed, the stream fails on it); without sizes, all are decoded.
/// Both copies equal the image and the streaming path's; a corrupt mapped frame fails; one
/// frame (`zstd -T2`'s output here) streams.
#[test]
fn zstd_frames_are_decoded_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let original = std::fs::read(&img).unwrap();
    let dest = dir.path().join("copy.img");
    for (sizes, line) in [
        (true, "decoding in parallel units=10 decoded=3"),
        (false, "decoding in parallel units=10 decoded=10"),
    ] {
        let packed = dir.path().join("disk.img.zst");
        zstd_frames(&img, dir.path(), sizes, &packed);
        let out = blockmap(&[
            "-vv",
            "bmap",
            "copy",
            "--bmap",
            s(&bmap),
            s(&packed),
            s(&dest),
        ]);
        assert_ok(&out);
        assert!(stderr(&out).contains(line), "{}", stderr(&out));
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "parallel copy differs"
        );
        std::fs::remove_file(&dest).unwrap();
        assert_ok(&copy_streamed(dir.path(), &packed, &bmap, &dest, "zst"));
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "streamed copy differs"
        );
        std::fs::remove_file(&dest).unwrap();

        // Frame 3 ([3 MiB, 4 MiB), a hole) and frame 6 ([6 MiB, 7 MiB), noise) corrupted.
        let bytes = std::fs::read(&packed).unwrap();
        let starts: Vec<usize> = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == [0x28, 0xB5, 0x2F, 0xFD])
            .map(|(i, _)| i)
            .collect();
        assert_eq!(starts.len(), 10);
        for frame in [3, 6] {
            let mut bad = bytes.clone();
            // The frame's content checksum, its last 4 bytes.
            bad[starts[frame + 1] - 2] ^= 0x55;
            let bad_path = dir.path().join("bad.img.zst");
            std::fs::write(&bad_path, &bad).unwrap();
            let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&bad_path), s(&dest)]);
            if frame == 3 && sizes {
                assert_ok(&out);
                assert!(std::fs::read(&dest).unwrap() == original);
                std::fs::remove_file(&dest).unwrap();
                let out = copy_streamed(dir.path(), &bad_path, &bmap, &dest, "zst");
                assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
                let _ = std::fs::remove_file(&dest);
            } else {
                assert_corrupt(&out, &bad_path, &dest);
            }
        }
    }

    let single = dir.path().join("single.img.zst");
    pack("zstd", &["-T2", "-q", "-c"], &img, &single);
    let out = blockmap(&[
        "-vv",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&single),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(
        !stderr(&out).contains("decoding in parallel"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&dest).unwrap() == original);
}
