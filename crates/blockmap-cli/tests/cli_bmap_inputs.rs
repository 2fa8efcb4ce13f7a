//! `blockmap bmap copy` from the inputs people have (issue #11): archives and compressed files
//! made by the real tools (`tar`, `zip`, `gzip`, `xz -T2`, `zstd`, `bzip2`, `lz4`, `lzop`),
//! standard input through a real pipe, a FIFO, names that lie, `--nobmap` on compressed
//! images, and `bmaptool copy` of the same archives. Every copy is compared byte for byte with
//! the image. No root needed: files under `$TMPDIR`.

use crate::common::{BLOCKMAP, assert_ok, s};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use testkit::noise;

fn blockmap(args: &[&str]) -> Output {
    Command::new(BLOCKMAP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `blockmap ARGS` with `input` written to its standard input, a real pipe, from a thread.
fn blockmap_fed(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(BLOCKMAP)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Written in pieces, so that the reader sees a pipe that delivers little at a time; a
    // refusal closes the pipe early (EPIPE), which is no error of the test.
    let feeder = std::thread::spawn(move || {
        for piece in input.chunks(4096 + 7) {
            if stdin.write_all(piece).is_err() {
                return;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Asserts a failure: one line on stderr starting `blockmap: ` with every needle, exit 1.
fn assert_fails(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("blockmap: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from {stderr:?}");
    }
}

/// Runs a shell command line (the real tools), which must succeed.
fn sh(dir: &Path, line: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `src/disk.img`, 12 MiB and a partial block, with data in four places, and its bmap
/// `disk.img.bmap` beside the archives in `dir`.
fn image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let path = dir.join("src/disk.img");
    let f = File::create(&path).unwrap();
    f.write_all_at(&noise(1, 70_000), 0).unwrap();
    f.write_all_at(&[0x22; 300_000], 3 << 20).unwrap();
    f.write_all_at(&noise(2, 1 << 20), 7 << 20).unwrap();
    f.write_all_at(b"end", (12 << 20) + 77 - 3).unwrap();
    drop(f);
    let bmap = dir.join("disk.img.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&path)]));
    path
}

/// The archives and compressed images of `src/disk.img`, made by the real tools, named as
/// bmaptool names them (the stem `disk.img`, so `disk.img.bmap` is found beside each).
const ARCHIVES: &[(&str, &str)] = &[
    ("disk.img.tar", "tar -cf disk.img.tar -C src disk.img"),
    (
        "disk.img.tar.gz",
        "tar -cf - -C src disk.img | gzip -c > disk.img.tar.gz",
    ),
    (
        "disk.img.tgz",
        "tar -cf - -C src disk.img | gzip -1 -c > disk.img.tgz",
    ),
    (
        "disk.img.tar.xz",
        "tar -cf - -C src disk.img | xz -T2 -c > disk.img.tar.xz",
    ),
    (
        "disk.img.txz",
        "tar -cf - -C src disk.img | xz -T2 -1 -c > disk.img.txz",
    ),
    (
        "disk.img.tar.zst",
        "tar -cf - -C src disk.img | zstd -q -c > disk.img.tar.zst",
    ),
    (
        "disk.img.tzst",
        "tar -cf - -C src disk.img | zstd -q -T2 -c > disk.img.tzst",
    ),
    (
        "disk.img.tar.bz2",
        "tar -cf - -C src disk.img | bzip2 -c > disk.img.tar.bz2",
    ),
    (
        "disk.img.tbz2",
        "tar -cf - -C src disk.img | bzip2 -1 -c > disk.img.tbz2",
    ),
    (
        "disk.img.tbz",
        "tar -cf - -C src disk.img | bzip2 -c > disk.img.tbz",
    ),
    (
        "disk.img.tb2",
        "tar -cf - -C src disk.img | bzip2 -c > disk.img.tb2",
    ),
    (
        "disk.img.tar.lz4",
        "tar -cf - -C src disk.img | lz4 -q -c > disk.img.tar.lz4",
    ),
    (
        "disk.img.tlz4",
        "tar -cf - -C src disk.img | lz4 -q -c > disk.img.tlz4",
    ),
    ("disk.img.zip", "cd src && zip -q ../disk.img.zip disk.img"),
    (
        "disk.img.stored.zip",
        "cd src && zip -q -0 ../disk.img.stored.zip disk.img",
    ),
    ("disk.img.gz", "gzip -c src/disk.img > disk.img.gz"),
    ("disk.img.xz", "xz -T2 -c src/disk.img > disk.img.xz"),
    ("disk.img.zst", "zstd -q -c src/disk.img > disk.img.zst"),
    ("disk.img.bz2", "bzip2 -c src/disk.img > disk.img.bz2"),
    ("disk.img.lz4", "lz4 -q -c src/disk.img > disk.img.lz4"),
];

#[test]
fn archives_and_compressed_images_by_the_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    for (name, make) in ARCHIVES {
        sh(dir.path(), make);
        let archive = dir.path().join(name);
        let dest = dir.path().join(format!("{name}.out"));
        // The bmap found beside the archive, as bmaptool finds it.
        let out = blockmap(&["bmap", "copy", s(&archive), s(&dest)]);
        assert_ok(&out);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("ranges verified"), "{name}: {summary}");
        assert!(summary.contains("disk.img.bmap"), "{name}: {summary}");
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "{name}: not the image"
        );
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn the_first_regular_member_is_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    let bmap = dir.path().join("disk.img.bmap");
    // A directory and a symlink before the image; another file after it.
    sh(
        dir.path(),
        "mkdir -p src/boot && ln -sf disk.img src/link && echo other > src/zz-other \
         && tar -cf - -C src boot link disk.img zz-other | gzip -c > first.tar.gz \
         && (cd src && zip -q -r --symlinks ../first.zip boot link disk.img zz-other)",
    );
    for name in ["first.tar.gz", "first.zip"] {
        let dest = dir.path().join(format!("{name}.out"));
        let archive = dir.path().join(name);
        let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&archive), s(&dest)]);
        assert_ok(&out);
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "{name}: not the image"
        );
    }
    // No regular file at all: one line, nothing created.
    sh(
        dir.path(),
        "tar -cf - -C src boot link | xz -T2 -c > none.tar.xz \
         && (cd src && zip -q -r --symlinks ../none.zip boot link)",
    );
    for (name, needle) in [
        (
            "none.tar.xz",
            "the tar archive (xz compressed) holds no regular file",
        ),
        ("none.zip", "the zip archive holds no file"),
    ] {
        let dest = dir.path().join(format!("{name}.out"));
        let archive = dir.path().join(name);
        let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&archive), s(&dest)]);
        assert_fails(&out, &[name, needle]);
        assert!(!dest.exists(), "{name}: a failed copy left its destination");
    }
}

#[test]
fn sparse_tars_gnu_and_pax() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    let bmap = dir.path().join("disk.img.bmap");
    // `tar -S`: GNU's sparse headers, and the three pax sparse formats.
    let made = [
        ("gnu.tar.gz", "--format=gnu"),
        ("pax00.tar.gz", "--format=posix --sparse-version=0.0"),
        ("pax01.tar.gz", "--format=posix --sparse-version=0.1"),
        ("pax10.tar.gz", "--format=posix --sparse-version=1.0"),
    ];
    for (name, format) in made {
        sh(
            dir.path(),
            &format!("tar -S {format} -cf - -C src disk.img | gzip -c > {name}"),
        );
        let archive = dir.path().join(name);
        // Sparse indeed: far smaller than the image's 12 MiB.
        assert!(std::fs::metadata(&archive).unwrap().len() < 4 << 20);
        let dest = dir.path().join("out.img");
        assert_ok(&blockmap(&[
            "bmap",
            "copy",
            "--bmap",
            s(&bmap),
            s(&archive),
            s(&dest),
        ]));
        assert!(std::fs::read(&dest).unwrap() == want, "{name}");
        std::fs::remove_file(&dest).unwrap();
        assert_ok(&blockmap(&[
            "bmap",
            "copy",
            "--nobmap",
            s(&archive),
            s(&dest),
        ]));
        assert!(std::fs::read(&dest).unwrap() == want, "{name} --nobmap");
        std::fs::remove_file(&dest).unwrap();
        let out = Command::new(testkit::tool("bmaptool", "bmap-tools"))
            .args(["copy", "--bmap", s(&bmap), s(&archive), s(&dest)])
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(std::fs::read(&dest).unwrap() == want, "{name} by bmaptool");
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn corrupt_archives_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let bmap = dir.path().join("disk.img.bmap");
    sh(
        dir.path(),
        "tar -cf - -C src disk.img | gzip -c > disk.img.tar.gz && (cd src && zip -q ../disk.img.zip disk.img) \
         && tar -cf disk.img.tar -C src disk.img",
    );
    let cut = |name: &str, keep: f64| {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let path = dir.path().join(format!("cut-{name}"));
        std::fs::write(&path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
        path
    };
    let mut flipped = std::fs::read(dir.path().join("disk.img.tar.gz")).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let flip = dir.path().join("flip-disk.img.tar.gz");
    std::fs::write(&flip, &flipped).unwrap();
    for (archive, needle) in [
        (cut("disk.img.tar.gz", 0.5), "gzip"),
        (cut("disk.img.tar", 0.5), "tar archive"),
        (cut("disk.img.zip", 0.9), "zip"),
        (flip, "gzip"),
    ] {
        let dest = dir.path().join("out.img");
        let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&archive), s(&dest)]);
        assert_fails(&out, &[s(&archive), needle]);
        assert!(!dest.exists(), "{}: destination left", archive.display());
    }
}

#[test]
fn standard_input_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    let bmap = dir.path().join("disk.img.bmap");
    for (name, make) in ARCHIVES {
        if ![
            "disk.img.tar.gz",
            "disk.img.xz",
            "disk.img.zip",
            "disk.img.tar.zst",
        ]
        .contains(name)
        {
            continue;
        }
        sh(dir.path(), make);
    }
    // zip reading its own stdin writes sizes after the data (a data descriptor).
    sh(
        dir.path(),
        "cat src/disk.img > plain.img && cat src/disk.img | zip -q > streamed.zip",
    );
    for name in [
        "plain.img",
        "disk.img.xz",
        "disk.img.tar.gz",
        "disk.img.tar.zst",
        "disk.img.zip",
        "streamed.zip",
    ] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let dest = dir.path().join("out.img");
        let out = blockmap_fed(&["bmap", "copy", "--bmap", s(&bmap), "-", s(&dest)], bytes);
        assert_ok(&out);
        assert!(std::fs::read(&dest).unwrap() == want, "{name} on stdin");
        std::fs::remove_file(&dest).unwrap();
    }
    // /dev/stdin names the same pipe.
    let bytes = std::fs::read(dir.path().join("disk.img.xz")).unwrap();
    let dest = dir.path().join("out.img");
    let out = blockmap_fed(
        &["bmap", "copy", "--bmap", s(&bmap), "/dev/stdin", s(&dest)],
        bytes,
    );
    assert_ok(&out);
    assert!(std::fs::read(&dest).unwrap() == want, "/dev/stdin");
}

#[test]
fn standard_input_needs_a_bmap() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let dest = dir.path().join("out.img");
    let out = blockmap_fed(
        &["bmap", "copy", "-", s(&dest)],
        std::fs::read(&img).unwrap(),
    );
    assert_fails(&out, &["standard input", "--bmap"]);
    assert!(!dest.exists());
}

#[test]
fn a_fifo_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    sh(
        dir.path(),
        "gzip -c src/disk.img > gz && mkfifo disk.img.gz",
    );
    let fifo = dir.path().join("disk.img.gz");
    let bytes = std::fs::read(dir.path().join("gz")).unwrap();
    let writer = {
        let fifo = fifo.clone();
        // Opening a FIFO for writing waits for its reader.
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            w.write_all(&bytes).unwrap();
        })
    };
    let dest = dir.path().join("out.img");
    // The bmap is found beside the FIFO by its name.
    let out = blockmap(&["bmap", "copy", s(&fifo), s(&dest)]);
    assert_ok(&out);
    writer.join().unwrap();
    assert!(std::fs::read(&dest).unwrap() == want, "FIFO");
}

#[test]
fn the_content_wins_over_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    let bmap = dir.path().join("disk.img.bmap");
    // xz named .gz, gzip with no extension, a plain image named .xz, a tar.bz2 named .zip,
    // a zip named .img.
    sh(
        dir.path(),
        "xz -T2 -c src/disk.img > lies.gz && gzip -c src/disk.img > noext \
         && cp src/disk.img plain.xz && tar -cf - -C src disk.img | bzip2 -c > tarbz2.zip \
         && (cd src && zip -q ../zip.img disk.img)",
    );
    for (name, compressed) in [
        ("lies.gz", Some("xz")),
        ("noext", Some("gzip")),
        ("plain.xz", None),
        ("tarbz2.zip", Some("bzip2")),
        ("zip.img", None),
    ] {
        let dest = dir.path().join("out.img");
        let image = dir.path().join(name);
        let out = blockmap(&["bmap", "copy", "--bmap", s(&bmap), s(&image), s(&dest)]);
        assert_ok(&out);
        let summary = String::from_utf8_lossy(&out.stderr);
        match compressed {
            Some(kind) => assert!(
                summary.contains(&format!("({kind} compressed)")),
                "{name}: {summary}"
            ),
            None => assert!(!summary.contains("compressed)"), "{name}: {summary}"),
        }
        assert!(std::fs::read(&dest).unwrap() == want, "{name}");
    }
    // The disagreement is told at debug level (-v), and only where there is one.
    let lies = dir.path().join("lies.gz");
    let dest = dir.path().join("out.img");
    let out = blockmap(&["-v", "bmap", "copy", "--bmap", s(&bmap), s(&lies), s(&dest)]);
    assert_ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("the name and the content disagree"), "{log}");
    let honest = dir.path().join("honest.xz");
    std::fs::rename(&lies, &honest).unwrap();
    let out = blockmap(&[
        "-v",
        "bmap",
        "copy",
        "--bmap",
        s(&bmap),
        s(&honest),
        s(&dest),
    ]);
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("disagree"));
}

#[test]
fn nobmap_writes_all_of_a_compressed_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    sh(
        dir.path(),
        "gzip -c src/disk.img > disk.img.gz && xz -T2 -c src/disk.img > disk.img.xz \
         && tar -cf - -C src disk.img | zstd -q -c > disk.img.tar.zst",
    );
    for name in ["disk.img.gz", "disk.img.xz", "disk.img.tar.zst"] {
        // An old destination, larger and full of bytes: it becomes the image exactly.
        let dest = dir.path().join("out.img");
        std::fs::write(&dest, vec![0xee; 20 << 20]).unwrap();
        let image = dir.path().join(name);
        let out = blockmap(&["bmap", "copy", "--nobmap", s(&image), s(&dest)]);
        assert_ok(&out);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("all of the image"), "{name}: {summary}");
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "{name}: not the whole image"
        );
        // Every byte written, the holes as zeros (as bmaptool): allocated all through.
        let meta = std::fs::metadata(&dest).unwrap();
        assert!(
            meta.blocks() * 512 >= meta.len() / 4096 * 4096,
            "{name}: {} bytes allocated of {}",
            meta.blocks() * 512,
            meta.len()
        );
        std::fs::remove_file(&dest).unwrap();
    }
    // From standard input too.
    let dest = dir.path().join("out.img");
    let out = blockmap_fed(
        &["bmap", "copy", "--nobmap", "-", s(&dest)],
        std::fs::read(dir.path().join("disk.img.xz")).unwrap(),
    );
    assert_ok(&out);
    assert!(std::fs::read(&dest).unwrap() == want, "stdin --nobmap");
    std::fs::remove_file(&dest).unwrap();
    // A plain image keeps being copied by its own block map: its holes stay holes.
    let out = blockmap(&["bmap", "copy", "--nobmap", s(&img), s(&dest)]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the image's own block map"));
    assert!(std::fs::read(&dest).unwrap() == want);
    let (copy, orig) = (
        std::fs::metadata(&dest).unwrap(),
        std::fs::metadata(&img).unwrap(),
    );
    assert!(
        copy.blocks() < orig.len() / 512 / 2,
        "the plain copy is not sparse"
    );
}

#[test]
fn lzop_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    sh(
        dir.path(),
        "lzop -c src/disk.img > disk.img.lzo && cp disk.img.lzo disk.img.raw",
    );
    for name in ["disk.img.lzo", "disk.img.raw"] {
        let dest = dir.path().join("out.img");
        let out = blockmap(&["bmap", "copy", s(&dir.path().join(name)), s(&dest)]);
        assert_fails(&out, &[name, "lzop images are not supported", "IMAGE -"]);
        assert!(!dest.exists());
    }
}

#[test]
fn bmaptool_copies_the_same_archives_to_the_same_bytes() {
    let bmaptool = testkit::tool("bmaptool", "bmap-tools");
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = std::fs::read(&img).unwrap();
    // bmaptool 3.6 reads all these (not a bare .tar, which 3.9 adds).
    for (name, make) in ARCHIVES {
        if *name == "disk.img.tar" {
            continue;
        }
        sh(dir.path(), make);
        let archive = dir.path().join(name);
        let (ours, theirs) = (dir.path().join("ours.img"), dir.path().join("theirs.img"));
        assert_ok(&blockmap(&["bmap", "copy", s(&archive), s(&ours)]));
        let out = Command::new(bmaptool)
            .args(["copy", s(&archive), s(&theirs)])
            .output()
            .unwrap();
        assert_ok(&out);
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert!(a == b, "{name}: bmaptool's copy differs from ours");
        assert!(a == want, "{name}: not the image");
        std::fs::remove_file(&ours).unwrap();
        std::fs::remove_file(&theirs).unwrap();
    }
}
