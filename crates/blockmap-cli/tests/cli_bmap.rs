//! `blockmap bmap` as a user meets it, on the filesystem under `$TMPDIR` (no root needed):
//! create to stdout and to a file, copies checked with `cmp` semantics against the image, the
//! bmap found beside a compressed image, usage and input errors. The interop with bmaptool on
//! every filesystem is `tests/fs_bmap.rs`.

use crate::common::{assert_ok, blockmap, s};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Asserts a failure: one line on stderr starting `blockmap: ` with every needle, the status
/// `code`.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("blockmap: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from {stderr:?}");
    }
}

/// A 12 MiB image with three data ranges and a partial last block.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    f.write_all_at(&[0x11; 5000], 0).unwrap();
    f.write_all_at(&[0x22; 70000], 3 << 20).unwrap();
    f.write_all_at(b"end", (12 << 20) - 3 + 77).unwrap();
    f.sync_all().unwrap();
    path
}

#[test]
fn create_to_stdout_and_file_agree() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let to_stdout = blockmap(&["bmap", "create", s(&img)]);
    assert_ok(&to_stdout);
    let file = dir.path().join("x.bmap");
    let out = blockmap(&["bmap", "create", "-o", s(&file), s(&img)]);
    assert_ok(&out);
    assert!(out.stdout.is_empty());
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.starts_with("blockmap: bmap of "), "{summary}");
    assert_eq!(std::fs::read(&file).unwrap(), to_stdout.stdout);
    let b = blockmap_bmap::Bmap::read(&file).unwrap();
    assert_eq!(b.image_size, (12 << 20) + 77);
    assert!(b.ranges.iter().all(|r| r.checksum.is_some()));
    let bare = blockmap(&["bmap", "create", "--no-checksum", s(&img)]);
    assert_ok(&bare);
    let b = blockmap_bmap::Bmap::from_bytes(&bare.stdout, "stdout").unwrap();
    assert!(b.ranges.iter().all(|r| r.checksum.is_none()));
}

#[test]
fn copy_finds_the_bmap_and_equals_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    assert_ok(&blockmap(&[
        "bmap",
        "create",
        "-o",
        s(&dir.path().join("disk.img.bmap")),
        s(&img),
    ]));
    // An existing destination with stale data everywhere: it becomes the image.
    let dest = dir.path().join("dest.img");
    std::fs::write(&dest, vec![0xee; 20 << 20]).unwrap();
    let out = blockmap(&["bmap", "copy", s(&img), s(&dest)]);
    assert_ok(&out);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("3 ranges verified (sha256)"), "{summary}");
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&dest).unwrap());

    // A gzip image (made by the gzip tool, when there is one) finds disk.img.bmap by dropping
    // ".gz".
    if Command::new("gzip").arg("--version").output().is_ok() {
        let status = Command::new("gzip")
            .args(["-k", "-f", s(&img)])
            .status()
            .unwrap();
        assert!(status.success());
        let dest2 = dir.path().join("dest2.img");
        let out = blockmap(&["bmap", "copy", &format!("{}.gz", s(&img)), s(&dest2)]);
        assert_ok(&out);
        assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&dest2).unwrap());
    }
}

#[test]
fn nobmap_copies_by_the_image_block_map() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let dest = dir.path().join("d.img");
    let out = blockmap(&["bmap", "copy", "--nobmap", s(&img), s(&dest)]);
    assert_ok(&out);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("not verified") && summary.contains("no bmap"),
        "{summary}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&dest).unwrap());
    // Not with --bmap. (A compressed image is written whole: tests/cli_bmap_inputs.rs.)
    assert_fails(
        &blockmap(&["bmap", "copy", "--nobmap", "--bmap", "x", s(&img), s(&dest)]),
        2,
        &["--bmap"],
    );
}

#[test]
fn bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let dest = dir.path().join("d.img");
    // Usage errors: exit 2.
    assert_fails(&blockmap(&["bmap"]), 2, &["blockmap --help"]);
    assert_fails(&blockmap(&["bmap", "copy", s(&img)]), 2, &[]);
    // No bmap beside the image.
    assert_fails(
        &blockmap(&["bmap", "copy", s(&img), s(&dest)]),
        1,
        &["no bmap file found", "disk.img.bmap", "disk.bmap"],
    );
    assert!(!dest.exists(), "created before the bmap was found");
    // Missing image, directory as image, empty image.
    let missing = dir.path().join("missing.img");
    assert_fails(
        &blockmap(&["bmap", "create", s(&missing)]),
        1,
        &["missing.img"],
    );
    assert_fails(
        &blockmap(&["bmap", "create", s(dir.path())]),
        1,
        &["directory"],
    );
    let empty = dir.path().join("empty.img");
    File::create(&empty).unwrap();
    assert_fails(
        &blockmap(&["bmap", "create", s(&empty)]),
        1,
        &["empty image"],
    );
    // A bmap that is not XML, with its line.
    let junk = dir.path().join("junk.bmap");
    std::fs::write(
        &junk,
        "<bmap version=\"2.0\">\n<ImageSize> 1 </Imagesize>\n",
    )
    .unwrap();
    assert_fails(
        &blockmap(&["bmap", "copy", "--bmap", s(&junk), s(&img), s(&dest)]),
        1,
        &["junk.bmap:2:"],
    );
    // The bmap given as the image.
    assert_fails(
        &blockmap(&["bmap", "copy", "--bmap", s(&junk), s(&junk), s(&dest)]),
        1,
        &["both the image and its bmap"],
    );
    // An unsupported compression, by its magic bytes (lzop's).
    let lzo = dir.path().join("disk.img.lzo");
    std::fs::write(&lzo, b"\x89LZO\0\r\n\x1a\n\x10\x30").unwrap();
    let b = dir.path().join("b.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&b), s(&img)]));
    assert_fails(
        &blockmap(&["bmap", "copy", "--bmap", s(&b), s(&lzo), s(&dest)]),
        1,
        &["lzop images are not supported"],
    );
    // A supported one whose frame is broken after its magic bytes.
    let lz4 = dir.path().join("disk.img.lz4");
    std::fs::write(&lz4, b"\x04\x22\x4d\x18 not an lz4 frame").unwrap();
    assert_fails(
        &blockmap(&["bmap", "copy", "--bmap", s(&b), s(&lz4), s(&dest)]),
        1,
        &["disk.img.lz4: the lz4 image is corrupt"],
    );
}
