//! [`blockmap_bmap::Input`] and the copies made from it: any reader (the seam for downloads), formats
//! told by their first bytes whatever the name, archives made by the real `tar`, `zip` and
//! compressors, every byte written by [`blockmap_bmap::Copier::whole_image`], and an archive without
//! an image refused as [`blockmap_bmap::Error::Archive`]. Every copy is compared with the image.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a shell command line in `dir` (the real tools), which must succeed.
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

/// `dir/src/disk.img` (9 MiB and a bit, data in three places) and its bmap.
fn image(dir: &Path) -> (PathBuf, blockmap_bmap::Bmap) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let path = dir.join("src/disk.img");
    let f = File::create(&path).unwrap();
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all_at(&noise, 4096).unwrap();
    f.write_all_at(&[0x5a; 100_000], 5 << 20).unwrap();
    f.write_all_at(b"last", (9 << 20) + 100).unwrap();
    drop(f);
    let bmap = blockmap_bmap::create(&path, &blockmap_bmap::CreateOptions::default()).unwrap();
    (path, bmap)
}

#[test]
fn any_reader_is_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let (img, map) = image(dir.path());
    sh(
        dir.path(),
        "tar -cf - -C src disk.img | zstd -q -T2 -c > a.tar.zst \
         && (cd src && zip -q ../a.zip disk.img) && xz -T2 -c src/disk.img > a.xz",
    );
    for (name, compression, container) in [
        (
            "a.tar.zst",
            blockmap_bmap::Compression::Zstd,
            blockmap_bmap::Container::Tar,
        ),
        (
            "a.zip",
            blockmap_bmap::Compression::None,
            blockmap_bmap::Container::Zip,
        ),
        (
            "a.xz",
            blockmap_bmap::Compression::Xz,
            blockmap_bmap::Container::None,
        ),
    ] {
        let reader = File::open(dir.path().join(name)).unwrap();
        // A reader, not a file: streamed, never seeked.
        let input =
            blockmap_bmap::Input::from_reader(std::io::BufReader::new(reader), name).unwrap();
        assert_eq!(input.compression(), compression, "{name}");
        assert_eq!(input.container(), container, "{name}");
        assert!(!input.is_seekable());
        let dest = dir.path().join("out.img");
        let report =
            blockmap_bmap::Copier::new(map.clone(), blockmap_bmap::CopyOptions::new().sync(false))
                .copy_input(input, &dest)
                .unwrap();
        assert_eq!(report.verified_ranges, map.ranges.len() as u64, "{name}");
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(&img).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn the_first_bytes_decide_not_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let (img, map) = image(dir.path());
    sh(
        dir.path(),
        "bzip2 -c src/disk.img > x.gz && cp src/disk.img y.tar.xz \
         && tar -cf - -C src disk.img | lz4 -q -c > z",
    );
    for (name, compression, container, plain) in [
        (
            "x.gz",
            blockmap_bmap::Compression::Bzip2,
            blockmap_bmap::Container::None,
            false,
        ),
        (
            "y.tar.xz",
            blockmap_bmap::Compression::None,
            blockmap_bmap::Container::None,
            true,
        ),
        (
            "z",
            blockmap_bmap::Compression::Lz4,
            blockmap_bmap::Container::Tar,
            false,
        ),
    ] {
        let path = dir.path().join(name);
        let input = blockmap_bmap::Input::open(&path).unwrap();
        assert_eq!(
            (
                input.compression(),
                input.container(),
                input.is_plain_file()
            ),
            (compression, container, plain),
            "{name}"
        );
        let dest = dir.path().join("out.img");
        blockmap_bmap::Copier::new(map.clone(), blockmap_bmap::CopyOptions::new().sync(false))
            .copy(&path, &dest)
            .unwrap();
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(&img).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn whole_image_writes_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    sh(dir.path(), "gzip -c src/disk.img > d.gz");
    let dest = dir.path().join("out.img");
    let report = blockmap_bmap::Copier::whole_image(blockmap_bmap::CopyOptions::new().sync(false))
        .copy(dir.path().join("d.gz"), &dest)
        .unwrap();
    let want = std::fs::read(&img).unwrap();
    assert_eq!(report.image_size, want.len() as u64);
    assert_eq!(report.mapped_bytes, want.len() as u64);
    assert_eq!(report.compression, blockmap_bmap::Compression::Gzip);
    assert!(std::fs::read(&dest).unwrap() == want);
}

#[test]
fn an_archive_without_an_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map) = image(dir.path());
    sh(
        dir.path(),
        "mkdir -p e/boot && tar -cf - -C e boot | gzip -c > e.tgz",
    );
    let dest = dir.path().join("out.img");
    let e = blockmap_bmap::Copier::new(map, blockmap_bmap::CopyOptions::new())
        .copy(dir.path().join("e.tgz"), &dest)
        .unwrap_err();
    assert!(
        matches!(&e, blockmap_bmap::Error::Archive { reason, .. } if reason.contains("no regular file")),
        "{e}"
    );
    assert!(!dest.exists());
}

/// The progress of every data path: plain (lanes), gzip (a stream), xz of many blocks
/// (parallel decoders), and `whole_image` of gzip. Data done and holes skipped never go
/// down; by a bmap, the total is its mapped bytes throughout and the holes the rest of the
/// image; without one, every byte is data and its total is unknown until the end.
#[test]
fn progress_of_every_data_path() {
    let dir = tempfile::tempdir().unwrap();
    let (img, map) = image(dir.path());
    sh(
        dir.path(),
        "gzip -c src/disk.img > d.gz && xz -T2 --block-size=1MiB -c src/disk.img > d.xz",
    );
    let size = std::fs::metadata(&img).unwrap().len();
    let mapped: u64 = map
        .ranges
        .iter()
        .map(|r| ((r.last + 1) * map.block_size).min(size) - r.first * map.block_size)
        .sum();
    assert!(0 < mapped && mapped < size);
    let dest = dir.path().join("out.img");
    let options = || blockmap_bmap::CopyOptions::new().sync(false);
    let copy = |copier: blockmap_bmap::Copier<'_>, name: &str| {
        copier.copy(dir.path().join(name), &dest).unwrap();
    };
    for name in ["src/disk.img", "d.gz", "d.xz", "whole d.gz"] {
        let mut seen: Vec<blockmap_bmap::Progress> = Vec::new();
        let mut record = |p| seen.push(p);
        let (data, skipped) = match name.strip_prefix("whole ") {
            None => {
                let copier = blockmap_bmap::Copier::new(map.clone(), options());
                copy(copier.progress(&mut record), name);
                assert!(seen.iter().all(|p| p.data_total == Some(mapped)), "{name}");
                (mapped, size - mapped)
            }
            Some(name) => {
                copy(
                    blockmap_bmap::Copier::whole_image(options()).progress(&mut record),
                    name,
                );
                let (last, before) = seen.split_last().unwrap();
                assert!(before.iter().all(|p| p.data_total.is_none()), "{name}");
                assert!(!before.is_empty() && last.data_total.is_some(), "{name}");
                (size, 0)
            }
        };
        for w in seen.windows(2) {
            assert!(w[0].data_done <= w[1].data_done, "{name}: {w:?}");
            assert!(w[0].skipped <= w[1].skipped, "{name}: {w:?}");
        }
        let want = blockmap_bmap::Progress {
            data_done: data,
            data_total: Some(data),
            skipped,
        };
        assert_eq!(seen.last(), Some(&want), "{name}");
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(&img).unwrap(),
            "{name}"
        );
    }
}
