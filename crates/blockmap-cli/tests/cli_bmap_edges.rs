//! `blockmap bmap` at the edges (issue #10), as a user meets them, under `$TMPDIR` (no root):
//! an image or a bmap given through a pipe, `--bmap /dev/zero`, nothing written before
//! everything knowable was checked, compressed images made by the real tools and corrupted
//! after their last mapped byte, a copy stopped by SIGINT/SIGTERM/SIGHUP, and the peak memory
//! of the binary for a bmap of a million ranges and a create of many extents.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BLOCKMAP, assert_ok, blockmap, s, stderr};
use blockmap_bmap::{BlockRange, Bmap, ChecksumType};
use testkit::noise;

/// Spawns `blockmap args`, its stdin a pipe that the caller feeds.
fn spawn_piped(args: &[&str]) -> Child {
    Command::new(BLOCKMAP)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child`, at most `secs` seconds (then kills it and fails).
fn finish(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("blockmap did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// One error line with every needle, exit status `code`.
fn assert_fails(status: ExitStatus, err: &str, code: i32, needles: &[&str]) {
    assert_eq!(status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("blockmap: "), "{err:?}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from {err:?}");
    }
}

/// A 12 MiB sparse image with three data ranges and a partial last block, and its bmap.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    f.write_all_at(&noise(1, 5000), 0).unwrap();
    f.write_all_at(&noise(2, 4 << 20), 3 << 20).unwrap();
    f.write_all_at(b"end", (12 << 20) - 3 + 77).unwrap();
    f.sync_all().unwrap();
    let bmap = dir.join("disk.img.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&path)]));
    (path, bmap)
}

/// `cat img | blockmap bmap copy --bmap B /dev/stdin DEST` copies the image read as a
/// stream; a bmap on stdin is read too. Failures knowable before writing leave an existing
/// DEST untouched: an empty pipe, a pipe of bytes that are not the image's size (found before
/// DEST is truncated when the pipe is empty, else at the end), a bmap that does not parse.
#[test]
fn pipes_and_checks_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let data = std::fs::read(&img).unwrap();
    let good = dir.path().join("good.img");
    let old = noise(9, 1 << 20);

    // The image through a pipe, into an existing file.
    std::fs::write(&good, &old).unwrap();
    let mut child = spawn_piped(&["bmap", "copy", "--bmap", s(&bmap), "/dev/stdin", s(&good)]);
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = finish(child, 120);
    assert_ok(&out);
    assert!(
        std::fs::read(&good).unwrap() == data,
        "the copy is not the image"
    );
    assert!(
        stderr(&out).contains("3 ranges verified"),
        "{}",
        stderr(&out)
    );

    // The bmap through a pipe.
    let dest = dir.path().join("from-bmap-pipe.img");
    let mut child = spawn_piped(&["bmap", "copy", "--bmap", "/dev/stdin", s(&img), s(&dest)]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&bmap).unwrap())
        .unwrap();
    assert_ok(&finish(child, 120));
    assert!(std::fs::read(&dest).unwrap() == data);

    // Early failures: DEST untouched.
    let junk = dir.path().join("junk.bmap");
    std::fs::write(
        &junk,
        "<bmap version=\"2.0\">\n<ImageSize> 1 </Imagesize>\n",
    )
    .unwrap();
    for (what, bmap_arg, feed) in [
        ("empty pipe", s(&bmap), Vec::new()),
        ("bad bmap", s(&junk), data.clone()),
    ] {
        std::fs::write(&good, &old).unwrap();
        let mut child = spawn_piped(&["bmap", "copy", "--bmap", bmap_arg, "/dev/stdin", s(&good)]);
        // The child may stop reading before all is written.
        let _ = child.stdin.take().unwrap().write_all(&feed);
        let out = finish(child, 120);
        assert_fails(out.status, &stderr(&out), 1, &[]);
        assert!(std::fs::read(&good).unwrap() == old, "{what}: DEST touched");
    }
    // A short stream: found at its end (after writing), named.
    let mut child = spawn_piped(&["bmap", "copy", "--bmap", s(&bmap), "/dev/stdin", s(&dest)]);
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(&data[..data.len() - 1000]);
    let out = finish(child, 120);
    assert_fails(out.status, &stderr(&out), 1, &["/dev/stdin"]);
}

/// `--bmap /dev/zero` is refused at once as not a bmap, one line; `/dev/zero` as the image
/// stops once it has given more than the bmap's image size.
#[test]
fn not_a_bmap_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let dest = dir.path().join("d.img");
    let child = Command::new(BLOCKMAP)
        .args(["bmap", "copy", "--bmap", "/dev/zero", s(&img), s(&dest)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, 30);
    assert_fails(
        out.status,
        &stderr(&out),
        1,
        &["/dev/zero", "not a bmap file"],
    );
    assert!(!dest.exists());
    // /dev/zero as the image: read as a stream, and not to its (absent) end.
    let bmap = dir.path().join("disk.img.bmap");
    let child = Command::new(BLOCKMAP)
        .args([
            "bmap",
            "copy",
            "--no-verify",
            "--bmap",
            s(&bmap),
            "/dev/zero",
            s(&dest),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, 30);
    assert_fails(
        out.status,
        &stderr(&out),
        1,
        &["/dev/zero", "do not belong together"],
    );
    assert!(!dest.exists());
}

/// Compress `image` with `tool` (keeping it) into `image.ext`.
fn compress(image: &Path, tool: &str, ext: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}.{ext}", image.display()));
    let data = Command::new(tool)
        .args(["-c"])
        .stdin(File::open(image).unwrap())
        .output()
        .unwrap();
    assert!(data.status.success(), "{tool}: {}", stderr(&data));
    std::fs::write(&out, data.stdout).unwrap();
    out
}

/// Images compressed by gzip, xz, zstd, bzip2 and lz4 (each that is installed; `.ci/run`
/// installs them all), a byte flipped well after the last mapped range's data (in 2 MiB of
/// noise no range covers, which compresses to itself): every range verifies, the format's own
/// check at the end of the stream does not. With and without `--no-verify`: one line naming
/// the image as corrupt, exit 1, no DEST left. Sound, the same copies succeed.
#[test]
fn corrupt_compressed_images_fail() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut data = noise(5, 256 << 10);
    data.extend(noise(6, 2 << 20));
    std::fs::write(&img, &data).unwrap();
    let mut b = Bmap::new(data.len() as u64, 4096);
    b.push(BlockRange {
        first: 0,
        last: 63,
        checksum: Some(ChecksumType::Sha256.hex_digest(&data[..256 << 10])),
    });
    let bmap = dir.path().join("head.bmap");
    std::fs::write(&bmap, b.to_xml()).unwrap();
    let dest = dir.path().join("copy.img");
    for (tool, package, ext) in [
        ("gzip", "gzip", "gz"),
        ("xz", "xz-utils", "xz"),
        ("zstd", "zstd", "zst"),
        ("bzip2", "bzip2", "bz2"),
        ("lz4", "lz4", "lz4"),
    ] {
        testkit::tool(tool, package);
        let packed = compress(&img, tool, ext);
        let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&packed), s(&dest)]);
        assert_ok(&out);
        let mut bytes = std::fs::read(&packed).unwrap();
        let at = bytes.len() * 3 / 4;
        bytes[at] ^= 0x55;
        std::fs::write(&packed, &bytes).unwrap();
        for no_verify in [false, true] {
            std::fs::remove_file(&dest).ok();
            let mut args = vec!["bmap", "copy", "--bmap", s(&bmap), s(&packed), s(&dest)];
            if no_verify {
                args.insert(2, "--no-verify");
            }
            let out = blockmap(&args);
            assert_fails(out.status, &stderr(&out), 1, &[s(&packed), "corrupt"]);
            assert!(!dest.exists(), "{tool}: DEST left");
        }
    }
}

/// Sends `signal` to `child`.
fn kill(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, signal).unwrap();
}

/// A copy whose image comes through a FIFO (plain, and named `.gz`: decompressed), stopped
/// midway by SIGINT, SIGTERM and SIGHUP: the first half of the stream is fed, the signal sent,
/// the rest fed. Exit status 128+signal, one line saying it was interrupted by that signal;
/// a DEST it created is removed, an existing one is named with the bytes that may be partly
/// written.
#[test]
fn signals_stop_a_streamed_copy() {
    use rustix::process::Signal;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = noise(3, 16 << 20);
    std::fs::write(&img, &data).unwrap();
    let bmap = dir.path().join("disk.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&img)]));
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    };
    let mut cases = 0;
    for (signal, name, code) in [
        (Signal::INT, "SIGINT", 130),
        (Signal::TERM, "SIGTERM", 143),
        (Signal::HUP, "SIGHUP", 129),
    ] {
        for (stream, fifo_name) in [(&data, "pipe.img"), (&gz, "pipe.img.gz")] {
            for existing in [false, true] {
                let fifo = dir.path().join(fifo_name);
                let _ = std::fs::remove_file(&fifo);
                assert!(
                    Command::new("mkfifo")
                        .arg(&fifo)
                        .status()
                        .unwrap()
                        .success()
                );
                let dest = dir.path().join("dest.img");
                let _ = std::fs::remove_file(&dest);
                if existing {
                    std::fs::write(&dest, b"old").unwrap();
                }
                let child = Command::new(BLOCKMAP)
                    .args(["bmap", "copy", "--bmap", s(&bmap), s(&fifo), s(&dest)])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut pipe = File::create(&fifo).unwrap();
                let half = stream.len() / 2;
                pipe.write_all(&stream[..half]).unwrap();
                kill(&child, signal);
                std::thread::sleep(Duration::from_millis(100));
                let _ = pipe.write_all(&stream[half..]);
                drop(pipe);
                let mut child = child;
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                let status = child.wait().unwrap();
                let case = format!("{name} {fifo_name} existing={existing}");
                assert_fails(status, &err, code, &[&format!("interrupted by {name}")]);
                if existing {
                    assert!(dest.exists(), "{case}");
                    assert!(err.contains("may be partly written"), "{case}: {err}");
                } else {
                    assert!(!dest.exists(), "{case}: a DEST it created is left");
                    assert!(err.contains("removed"), "{case}: {err}");
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 12);
}

/// The peak resident memory (VmHWM) of `child`, sampled every 2 ms until it exits.
fn peak_rss(mut child: Child) -> (u64, Output) {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb << 10);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (peak, child.wait_with_output().unwrap())
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BLOCKMAP)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

const MIB: u64 = 1 << 20;

/// `bmap copy` by a bmap of a million ranges (block size 1, every other byte of a 2 MB image)
/// stays under 64 MiB of resident memory, as every other command does (it took 180 MiB when
/// the ranges were all parsed into memory); and `bmap create` of a file of 131072 extents
/// takes no more memory than that of a file of one extent, give or take 16 MiB (it took 48
/// MiB more when the bmap was built in memory).
#[test]
fn memory_is_bounded_for_big_bmaps() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = 1_000_000u64;
    let mut b = Bmap::new(2 * ranges, 1);
    for i in 0..ranges {
        b.push(BlockRange {
            first: 2 * i,
            last: 2 * i,
            checksum: None,
        });
    }
    let bmap = dir.path().join("big.bmap");
    std::fs::write(&bmap, b.to_xml()).unwrap();
    drop(b);
    let img = dir.path().join("big.img");
    let data = noise(7, 2 * ranges as usize);
    std::fs::write(&img, &data).unwrap();
    let dest = dir.path().join("big-copy.img");
    let (peak, out) = peak_rss(spawn(&[
        "bmap",
        "copy",
        "--no-sync",
        "--bmap",
        s(&bmap),
        s(&img),
        s(&dest),
    ]));
    assert_ok(&out);
    let copy = std::fs::read(&dest).unwrap();
    assert!(
        copy.iter().step_by(2).eq(data.iter().step_by(2)),
        "mapped bytes differ"
    );
    assert!(
        copy.iter().skip(1).step_by(2).all(|&c| c == 0),
        "unmapped bytes not zero"
    );
    eprintln!("bmap copy of {ranges} ranges: peak RSS {} MiB", peak / MIB);
    assert!(peak > 0 && peak < 64 * MIB, "peak RSS {} MiB", peak / MIB);

    // create: one extent, then 131072 (a block of data every other block).
    let block = 4096u64;
    let small = dir.path().join("small.img");
    let f = File::create(&small).unwrap();
    f.set_len(262144 * block).unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();
    drop(f);
    let many = dir.path().join("many.img");
    let f = File::create(&many).unwrap();
    f.set_len(262144 * block).unwrap();
    let chunk = noise(1, 4096);
    for i in 0..131072u64 {
        f.write_all_at(&chunk, 2 * i * block).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let mut peaks = Vec::new();
    for image in [&small, &many] {
        let out_path = dir.path().join("out.bmap");
        let (peak, out) = peak_rss(spawn(&["bmap", "create", "-o", s(&out_path), s(image)]));
        assert_ok(&out);
        peaks.push(peak);
        if image == &many {
            let back = Bmap::read(&out_path).unwrap();
            assert_eq!(back.ranges.len(), 131072);
        }
    }
    eprintln!(
        "bmap create: peak RSS {} MiB for 1 extent, {} MiB for 131072",
        peaks[0] / MIB,
        peaks[1] / MIB
    );
    assert!(
        peaks[1] < peaks[0] + 16 * MIB,
        "create of 131072 extents: {} MiB, of one: {} MiB",
        peaks[1] / MIB,
        peaks[0] / MIB
    );
}

/// `bmap create` writes as it hashes, through a temporary file for a stream: `-o /dev/stdout`
/// into a pipe gives what stdout gives; `-o FILE` of a missing image leaves no FILE, and an
/// existing FILE untouched.
#[test]
fn create_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bmap) = image(dir.path());
    let to_stdout = blockmap(&["bmap", "create", s(&img)]);
    assert_ok(&to_stdout);
    assert_eq!(to_stdout.stdout, std::fs::read(&bmap).unwrap());
    let via_dev = blockmap(&["bmap", "create", "-o", "/dev/stdout", s(&img)]);
    assert_ok(&via_dev);
    assert_eq!(via_dev.stdout, to_stdout.stdout);

    let missing = dir.path().join("missing.img");
    let out_file = dir.path().join("new.bmap");
    let out = blockmap(&["bmap", "create", "-o", s(&out_file), s(&missing)]);
    assert_fails(
        out.status,
        &stderr(&out),
        1,
        &["missing.img", "No such file"],
    );
    assert!(!out_file.exists(), "created for a missing image");
    std::fs::write(&out_file, b"keep").unwrap();
    let out = blockmap(&["bmap", "create", "-o", s(&out_file), s(&missing)]);
    assert_fails(out.status, &stderr(&out), 1, &["missing.img"]);
    assert_eq!(std::fs::read(&out_file).unwrap(), b"keep");
}

/// Issue #10 item 8: the summaries of `bmap create` and `bmap copy` size a 2 PiB image in
/// PiB (bmaptool's own formatter, kept for the bmap file's comments, says "2048.0 EiB").
/// On tmpfs (`/dev/shm`), whose files may be that large.
#[test]
fn summaries_of_a_2_pib_image() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let image = dir.path().join("huge.img");
    let f = File::create(&image).unwrap();
    let size = 2u64 << 50;
    f.set_len(size).unwrap();
    f.write_all_at(&noise(7, 4096), 0).unwrap();
    f.write_all_at(&noise(8, 4096), size - 4096).unwrap();
    drop(f);
    let bmap = dir.path().join("huge.bmap");
    let out = blockmap(&["bmap", "create", "-o", s(&bmap), s(&image)]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("(8.0 KiB of 2.0 PiB"), "{err}");
    assert!(!err.contains("EiB"), "{err}");

    let dest = dir.path().join("dest.img");
    let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&image), s(&dest)]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("copied 8.0 KiB of mapped data in 2 ranges of a 2.0 PiB image"),
        "{err}"
    );
    let d = File::open(&dest).unwrap();
    assert_eq!(d.metadata().unwrap().len(), size);
    let mut buf = vec![0; 4096];
    d.read_exact_at(&mut buf, size - 4096).unwrap();
    assert_eq!(buf, noise(8, 4096));
}
