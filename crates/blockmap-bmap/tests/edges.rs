//! The edges of `bmap` (issue #10), through the library: bmap files that are streams or not
//! bmaps at all, `create_to` against `to_xml`, a compressed image's own checksum checked to the
//! end of the stream with or without range verification, an interrupted copy, a pipe as the
//! image, and nothing written before everything knowable was checked.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockmap_bmap::{
    BlockRange, Bmap, BmapFile, ChecksumType, Copier, CopyOptions, CreateOptions, Error, Progress,
};
use proptest::prelude::*;
use testkit::noise;

const BLOCK: u64 = 4096;

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {path:?}");
}

/// Runs `f` on another thread, failing the test if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("did not finish in time")
}

/// A bmap file given as a FIFO is read (once, as a stream); `/dev/zero` and a binary file are
/// refused as "not a bmap file" within their first kilobytes, not read to their end.
#[test]
fn bmap_streams_and_non_bmaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut bmap = Bmap::new(64 << 20, BLOCK);
    for i in 0..2000 {
        bmap.push(BlockRange {
            first: i * 3,
            last: i * 3 + 1,
            checksum: Some(ChecksumType::Sha256.hex_digest(&i.to_le_bytes())),
        });
    }
    let xml = bmap.to_xml();
    let fifo = dir.path().join("b.bmap");
    mkfifo(&fifo);
    let writer = {
        let (fifo, xml) = (fifo.clone(), xml.clone());
        std::thread::spawn(move || std::fs::write(fifo, xml).unwrap())
    };
    let read = within(30, move || BmapFile::open(&fifo).map(|f| f.to_bmap()));
    writer.join().unwrap();
    assert_eq!(read.unwrap().unwrap(), Bmap::from_bytes(&xml, "x").unwrap());

    for not_a_bmap in ["/dev/zero", "/dev/urandom"] {
        let err = within(30, move || BmapFile::open(not_a_bmap).unwrap_err());
        match err {
            Error::Format { line, message, .. } => {
                assert!(
                    message.contains("not a bmap file"),
                    "{not_a_bmap}: {message}"
                );
                assert_eq!(line, 1, "{not_a_bmap}: {message}");
            }
            other => panic!("{not_a_bmap}: {other}"),
        }
    }
    // A regular file of one endless comment, and one of binary bytes.
    let comment = dir.path().join("comment.bmap");
    let mut text = b"<?xml version=\"1.0\" ?>\n<!--".to_vec();
    text.resize(8 << 20, b'x');
    std::fs::write(&comment, &text).unwrap();
    let err = BmapFile::open(&comment).unwrap_err().to_string();
    assert!(err.contains("not a bmap file"), "{err}");
    let binary = dir.path().join("binary.bmap");
    std::fs::write(&binary, noise(3, 1 << 20)).unwrap();
    let err = BmapFile::open(&binary).unwrap_err().to_string();
    assert!(err.contains("binary.bmap"), "{err}");
}

/// Extents in block units: (first block, blocks), sorted, apart, inside `blocks`.
fn arb_layout() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
    let len = prop_oneof![6 => 1u64..4, 3 => 4u64..200, 1 => 200u64..600];
    (prop::collection::vec((1u64..300, len), 1..40), 0u64..3).prop_map(|(gaps, tail)| {
        let mut at = 0;
        let mut extents = Vec::new();
        for (gap, len) in gaps {
            at += gap;
            extents.push((at, len));
            at += len;
        }
        (at + tail, extents)
    })
}

fn make_image(path: &Path, size: u64, extents: &[(u64, u64)], seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (i, &(at, len)) in extents.iter().enumerate() {
        file.write_all_at(&noise(seed + i as u64, (len * BLOCK) as usize), at * BLOCK)
            .unwrap();
    }
    file.sync_all().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// `create_to` writes, range by range, exactly what `create` and `to_xml` make in memory;
    /// `BmapFile` reads it back to the same bmap.
    #[test]
    fn create_to_is_to_xml((blocks, extents) in arb_layout(), seed in any::<u64>(),
                           checksums in any::<bool>(), tail in 0u64..4096) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        make_image(&image, blocks * BLOCK + tail, &extents, seed);
        let options = CreateOptions { checksums, threads: 3, ..CreateOptions::default() };
        let in_memory = blockmap_bmap::create(&image, &options).unwrap();
        let out_path = dir.path().join("out.bmap");
        // Stale bytes in the output, longer than the bmap: truncated first.
        std::fs::write(&out_path, vec![b'x'; 1 << 20]).unwrap();
        let out = std::fs::OpenOptions::new().write(true).open(&out_path).unwrap();
        let info = blockmap_bmap::create_to(&image, &options, &out, &out_path).unwrap();
        drop(out);
        let written = std::fs::read(&out_path).unwrap();
        prop_assert!(written == in_memory.to_xml());
        prop_assert_eq!(&info, &in_memory.info());
        let file = BmapFile::open(&out_path).unwrap();
        prop_assert_eq!(file.info(), &info);
        prop_assert_eq!(file.to_bmap().unwrap(), Bmap::from_bytes(&written, "x").unwrap());
    }
}

/// An image whose bmap maps its first 64 KiB only, followed by 1 MiB of noise that no range
/// covers: what a decoder that stops at the last mapped byte never reads.
fn head_and_unmapped_tail(dir: &Path) -> (Vec<u8>, Bmap) {
    let mut bytes = noise(1, 64 << 10);
    bytes.extend(noise(2, 1 << 20));
    let mut bmap = Bmap::new(bytes.len() as u64, BLOCK);
    bmap.push(BlockRange {
        first: 0,
        last: 15,
        checksum: Some(ChecksumType::Sha256.hex_digest(&bytes[..64 << 10])),
    });
    std::fs::write(dir.join("disk.img"), &bytes).unwrap();
    (bytes, bmap)
}

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zst" => {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            e.include_checksum(true).unwrap();
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "lz4" => {
            let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        other => panic!("{other}"),
    }
}

/// A byte of the compressed stream flipped well after the last mapped range's data (inside
/// the unmapped noise, which compresses to itself): every range still verifies, but the
/// format's own checksum at the end of the stream does not. The copy fails, with or without
/// verification of the ranges, naming the image as corrupt; the destination it created is
/// removed. The whole stream read and sound is a success.
#[test]
fn compressed_stream_checked_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, bmap) = head_and_unmapped_tail(dir.path());
    for kind in ["gz", "xz", "zst", "bz2", "lz4"] {
        let packed = compress(kind, &bytes);
        let image = dir.path().join(format!("disk.img.{kind}"));
        let dest = dir.path().join(format!("copy-{kind}.img"));
        std::fs::write(&image, &packed).unwrap();
        let report = Copier::new(bmap.clone(), CopyOptions::new())
            .copy(&image, &dest)
            .unwrap();
        assert_eq!(report.verified_ranges, 1, "{kind}");
        assert_eq!(report.skipped_bytes, 1 << 20, "{kind}: read to the end");
        std::fs::remove_file(&dest).unwrap();

        let mut bad = packed.clone();
        let at = bad.len() * 3 / 4;
        bad[at] ^= 0x55;
        std::fs::write(&image, &bad).unwrap();
        for verify in [true, false] {
            let err = Copier::new(bmap.clone(), CopyOptions::new().verify(verify))
                .copy(&image, &dest)
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, Error::Corrupt { .. }),
                "{kind} verify={verify}: {text}"
            );
            assert!(
                text.contains(&format!("disk.img.{kind}")) && text.contains("corrupt"),
                "{text}"
            );
            assert!(!dest.exists(), "{kind}: the destination created is left");
        }
    }
}

/// A gzip image's trailer (CRC32 and size) damaged, and cut off: both caught.
#[test]
fn gzip_trailer_damaged_or_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, bmap) = head_and_unmapped_tail(dir.path());
    let packed = compress("gz", &bytes);
    let image = dir.path().join("disk.img.gz");
    let dest = dir.path().join("copy.img");
    let n = packed.len();
    let mut crc = packed.clone();
    crc[n - 8] ^= 1;
    for (what, data) in [("crc", crc), ("cut", packed[..n - 6].to_vec())] {
        std::fs::write(&image, &data).unwrap();
        let err = Copier::new(bmap.clone(), CopyOptions::new().verify(false))
            .copy(&image, &dest)
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        assert!(!dest.exists(), "{what}");
    }
}

/// The interrupt flag, raised midway (from the progress callback, after the first chunk):
/// the copy stops at the next chunk with `Interrupted`; a destination it created is removed,
/// an existing one is named with the bytes that may be partly written. Raised before the
/// copy, nothing is opened or written.
#[test]
fn interrupted_copies() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let data = noise(9, 8 << 20);
    std::fs::write(&image, &data).unwrap();
    let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
    let gz = dir.path().join("disk.img.gz");
    std::fs::write(&gz, compress("gz", &data)).unwrap();
    let dest = dir.path().join("copy.img");

    for existing in [false, true] {
        if existing {
            std::fs::write(&dest, b"old").unwrap();
        }
        let flag = Arc::new(AtomicBool::new(false));
        let raise = Arc::clone(&flag);
        let mut last = 0;
        let mut progress = |Progress {
                                data_done: done, ..
                            }: Progress| {
            last = done;
            if done > 0 {
                raise.store(true, Ordering::Relaxed);
            }
        };
        let err = Copier::new(bmap.clone(), CopyOptions::new())
            .interrupt(Arc::clone(&flag))
            .progress(&mut progress)
            .copy(&gz, &dest)
            .unwrap_err();
        assert!(last < data.len() as u64, "stopped promptly: {last}");
        match err {
            Error::Interrupted {
                removed, written, ..
            } => {
                assert_eq!(removed, !existing);
                assert_eq!(dest.exists(), existing);
                if existing {
                    // Truncated and resized to the image: all of it is suspect.
                    assert_eq!(written, Some(0..data.len() as u64));
                }
            }
            other => panic!("{other}"),
        }
    }

    // Raised before: the existing destination is untouched.
    std::fs::write(&dest, b"old").unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let err = Copier::new(bmap.clone(), CopyOptions::new())
        .interrupt(flag)
        .copy(&image, &dest)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Interrupted {
                written: None,
                removed: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
}

/// A plain image that cannot seek (a FIFO) is read as a stream, to the same copy.
#[test]
fn fifo_image_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    make_image(
        &image,
        3000 * BLOCK + 77,
        &[(0, 3), (700, 300), (2999, 1)],
        5,
    );
    let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let writer = {
        let (fifo, image) = (fifo.clone(), image.clone());
        std::thread::spawn(move || {
            let mut out = File::create(fifo).unwrap();
            out.write_all(&std::fs::read(image).unwrap()).unwrap();
        })
    };
    let dest = dir.path().join("copy.img");
    let dest2 = dest.clone();
    let report = within(60, move || {
        Copier::new(bmap, CopyOptions::new()).copy(&fifo, &dest2)
    })
    .unwrap();
    writer.join().unwrap();
    assert_eq!(report.verified_ranges, report.ranges);
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&dest).unwrap()
    );
}

/// Failures knowable before writing leave an existing destination untouched: an image that is
/// missing, of the wrong size, not the compression its name says, an empty stream.
#[test]
fn early_failures_leave_the_destination_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 100 * BLOCK, &[(0, 3), (50, 10)], 5);
    let bmap = blockmap_bmap::create(&image, &CreateOptions::default()).unwrap();
    let dest = dir.path().join("good.img");
    let old = noise(77, 300 << 10);
    let check = |image: PathBuf, what: &str| {
        std::fs::write(&dest, &old).unwrap();
        let dest2 = dest.clone();
        let bmap = bmap.clone();
        let err = within(30, move || {
            Copier::new(bmap, CopyOptions::new())
                .copy(&image, &dest2)
                .unwrap_err()
        });
        assert!(std::fs::read(&dest).unwrap() == old, "{what}: {err}");
    };
    check(dir.path().join("missing.img"), "missing");
    let short = dir.path().join("short.img");
    std::fs::write(&short, b"short").unwrap();
    check(short, "wrong size");
    for kind in ["gz", "xz", "zst", "bz2", "lz4"] {
        let fake = dir.path().join(format!("fake.img.{kind}"));
        std::fs::write(&fake, noise(4, 10000)).unwrap();
        check(fake, kind);
    }
    let fifo = dir.path().join("empty-pipe");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || drop(File::create(fifo).unwrap()))
    };
    check(fifo, "empty stream");
    writer.join().unwrap();
}

/// Header fields after the `<BlockMap>` (legal XML, never what bmaptool writes): the first
/// pass reads on to find them, and the file reads as the same bmap.
#[test]
fn header_fields_after_the_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let mut bmap = Bmap::new(40 << 20, BLOCK);
    for i in 0..50 {
        bmap.push(BlockRange {
            first: i * 10,
            last: i * 10 + 4,
            checksum: Some(ChecksumType::Sha256.hex_digest(&i.to_le_bytes())),
        });
    }
    let xml = String::from_utf8(bmap.to_xml()).unwrap();
    let sum = Bmap::from_bytes(xml.as_bytes(), "x")
        .unwrap()
        .file_checksum
        .unwrap();
    let line = xml
        .lines()
        .find(|l| l.contains("<ImageSize>"))
        .unwrap()
        .to_owned();
    let moved = xml
        .replacen(&format!("{line}\n"), "", 1)
        .replacen("</bmap>", &format!("{line}\n</bmap>"), 1)
        .replacen(&sum, &"0".repeat(64), 1);
    let fixed = moved.replacen(
        &"0".repeat(64),
        &ChecksumType::Sha256.hex_digest(moved.as_bytes()),
        1,
    );
    let path = dir.path().join("moved.bmap");
    std::fs::write(&path, &fixed).unwrap();
    let read = BmapFile::open(&path).unwrap().to_bmap().unwrap();
    assert_eq!(read.ranges, bmap.ranges);
    assert_eq!(read.image_size, bmap.image_size);
    assert_eq!(read, Bmap::from_bytes(fixed.as_bytes(), "x").unwrap());
}

/// A bmap file changed after it was checked (a range rewritten in place, still well-formed):
/// its ranges, read again for the copy, end in a checksum error instead of passing for the
/// file that was checked.
#[test]
fn a_bmap_file_changed_after_its_check_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut bmap = Bmap::new(40 << 20, BLOCK);
    for i in 0..20 {
        bmap.push(BlockRange {
            first: i * 10,
            last: i * 10 + 4,
            checksum: None,
        });
    }
    let xml = bmap.to_xml();
    let path = dir.path().join("x.bmap");
    std::fs::write(&path, &xml).unwrap();
    let file = BmapFile::open(&path).unwrap();
    assert_eq!(file.to_bmap().unwrap().ranges, bmap.ranges);
    let at = memchr_find(&xml, b"> 50-54 <").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"> 51-55 <", at as u64)
        .unwrap();
    let read: Vec<_> = file.ranges().collect();
    match read.last() {
        Some(Err(Error::BmapChecksum { .. })) => {}
        other => panic!("{other:?}"),
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
