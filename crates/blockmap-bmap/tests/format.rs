//! The bmap format against bmaptool itself (files it makes at test time, its own
//! `human_size`), against hand-made files of the older versions with checksums computed by
//! coreutils, round trips, and malformed files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blockmap_bmap::{BlockRange, Bmap, ChecksumType, CreateOptions, Error, Version};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// A sparse image with data written and synced at a few places, its size not a multiple of
/// the block size (a partial last block).
fn sample_image(path: &Path) {
    let f = File::create(path).unwrap();
    let mut pattern = vec![0u8; (3 * MIB) as usize];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    f.write_all_at(&pattern[..4096], 0).unwrap();
    f.write_all_at(&pattern, 5 * MIB).unwrap();
    f.write_all_at(&pattern[..12288], 20 * MIB + 8192).unwrap();
    f.write_all_at(b"tail", 40 * MIB + 1000).unwrap();
    f.set_len(40 * MIB + 1004).unwrap();
    f.sync_all().unwrap();
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn byte_identical_to_bmaptool_create() {
    let bmaptool = testkit::tool("bmaptool", "bmap-tools");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    sample_image(&image);
    for checksums in [true, false] {
        let theirs_path = dir.path().join("theirs.bmap");
        let mut cmd = Command::new(bmaptool);
        cmd.args(["create", "-o"]).arg(&theirs_path).arg(&image);
        if !checksums {
            cmd.arg("--no-checksum");
        }
        run(&mut cmd);
        let theirs = std::fs::read(&theirs_path).unwrap();
        let options = CreateOptions {
            checksums,
            ..CreateOptions::default()
        };
        let ours = blockmap_bmap::create(&image, &options).unwrap();
        let parsed = Bmap::from_bytes(&theirs, &theirs_path).unwrap();
        // The same map (the image was synced, so both see settled extents)…
        assert_eq!(parsed.ranges, ours.ranges, "checksums={checksums}");
        assert_eq!(parsed.ranges.len(), 4);
        // …gives the same bytes.
        let xml = ours.to_xml();
        assert_eq!(
            String::from_utf8_lossy(&xml),
            String::from_utf8_lossy(&theirs),
            "checksums={checksums}"
        );
    }
}

#[test]
fn reads_what_bmaptool_writes() {
    let bmaptool = testkit::tool("bmaptool", "bmap-tools");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    sample_image(&image);
    let path = dir.path().join("disk.img.bmap");
    run(Command::new(bmaptool)
        .args(["create", "-o"])
        .arg(&path)
        .arg(&image));
    let b = Bmap::read(&path).unwrap();
    let st_blksize = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&image).unwrap().blksize()
    };
    assert_eq!(b.version, Version::V2_0);
    assert_eq!(b.image_size, 40 * MIB + 1004);
    assert_eq!(b.block_size, st_blksize);
    assert_eq!(b.blocks_count, b.image_size.div_ceil(b.block_size));
    assert_eq!(b.checksum_type, Some(ChecksumType::Sha256));
    // Every range's checksum is sha256sum's answer for those bytes (the last range is cut
    // at the image's end).
    for r in &b.ranges {
        let bytes = r.bytes(b.block_size, b.image_size);
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "tail -c +{} '{}' | head -c {} | sha256sum",
            bytes.start + 1,
            image.display(),
            bytes.end - bytes.start
        )));
        let sum = String::from_utf8(out.stdout).unwrap();
        assert_eq!(Some(&sum[..64]), r.checksum.as_deref(), "{r:?}");
    }
    let last = b.ranges.last().unwrap();
    assert_eq!(last.last, b.blocks_count - 1);
}

/// The Python that runs bmaptool (its `#!` line), which has its modules.
fn bmaptool_python(bmaptool: &str) -> String {
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -n1 \"$(command -v {bmaptool})\"")));
    let line = String::from_utf8(out.stdout).unwrap();
    let interp = line
        .trim()
        .trim_start_matches("#!")
        .split_whitespace()
        .collect::<Vec<_>>();
    match interp.as_slice() {
        ["/usr/bin/env", name, ..] => (*name).to_owned(),
        [path, ..] => (*path).to_owned(),
        [] => "python3".to_owned(),
    }
}

/// Our sizes in words are Python's, digit for digit (the bmap header carries them).
#[test]
fn human_size_as_bmaptool() {
    let bmaptool = testkit::tool("bmaptool", "bmap-tools");
    let python = bmaptool_python(bmaptool);
    let sizes: Vec<u64> = vec![
        0,
        1,
        2,
        511,
        512,
        1023,
        1024,
        1536,
        4096,
        1_048_575,
        1_048_576,
        1_101_004,
        123_456_789,
        4 << 30,
        (1 << 40) + 7,
        1 << 50,
        u64::MAX / 3,
    ];
    let list = sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = run(Command::new(python).arg("-c").arg(format!(
        "from bmaptools.BmapHelpers import human_size\nfor s in [{list}]: print(human_size(s))"
    )));
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = sizes
        .iter()
        .map(|&s| blockmap_bmap::bmaptool_human_size(s))
        .collect();
    assert_eq!(ours, theirs);
}

/// A hand-made file of an older format, its checksum computed by the coreutils tool.
fn old_format(
    version: &str,
    tag_and_attr: Option<(&str, &str)>,
    ranges: &[(&str, &str)],
) -> Vec<u8> {
    let mut s = format!(
        "<?xml version=\"1.0\" ?>\n<!-- old -->\n<bmap version=\"{version}\">\n  <ImageSize> 40960 </ImageSize>\n  \
         <BlockSize> 4096 </BlockSize>\n  <BlocksCount> 10 </BlocksCount>\n  <MappedBlocksCount> 4 </MappedBlocksCount>\n"
    );
    if let Some((tag, _)) = tag_and_attr {
        s += &format!("  <{tag}> {} </{tag}>\n", "0".repeat(40));
    }
    s += "  <BlockMap>\n";
    for (text, sum) in ranges {
        match tag_and_attr {
            Some((_, attr)) => s += &format!("    <Range {attr}=\"{sum}\"> {text} </Range>\n"),
            None => s += &format!("    <Range> {text} </Range>\n"),
        }
    }
    s += "  </BlockMap>\n</bmap>\n";
    if tag_and_attr.is_some() {
        let out = run(Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' '{s}' | sha1sum")));
        let sum = String::from_utf8(out.stdout).unwrap()[..40].to_owned();
        s = s.replacen(&"0".repeat(40), &sum, 1);
    }
    s.into_bytes()
}

#[test]
fn reads_versions_1_0_to_1_3() {
    let v10 = old_format("1.0", None, &[("0-1", ""), ("5", ""), ("8", "")]);
    let b = Bmap::from_bytes(&v10, "v1.0.bmap").unwrap();
    assert_eq!(b.version, Version { major: 1, minor: 0 });
    assert_eq!(b.checksum_type, None);
    assert_eq!(
        b.ranges,
        vec![
            BlockRange {
                first: 0,
                last: 1,
                checksum: None
            },
            BlockRange {
                first: 5,
                last: 5,
                checksum: None
            },
            BlockRange {
                first: 8,
                last: 8,
                checksum: None
            },
        ]
    );

    let zeros = ChecksumType::Sha1.hex_digest(&[0; 8192]);
    let one = ChecksumType::Sha1.hex_digest(&[0; 4096]);
    let v13 = old_format(
        "1.3",
        Some(("BmapFileSHA1", "sha1")),
        &[("0-1", &zeros), ("5", &one), ("8", &one)],
    );
    let b = Bmap::from_bytes(&v13, "v1.3.bmap").unwrap();
    assert_eq!(b.checksum_type, Some(ChecksumType::Sha1));
    assert_eq!(b.ranges[0].checksum.as_deref(), Some(zeros.as_str()));
    assert_eq!(b.mapped_blocks_count, 4);

    // The same file with one digit of a range checksum changed: the file checksum catches it.
    let bad = String::from_utf8(v13).unwrap().replacen(&zeros, &one, 1);
    let e = Bmap::from_bytes(bad.as_bytes(), "v1.3.bmap").unwrap_err();
    assert!(matches!(e, Error::BmapChecksum { .. }), "{e}");
}

#[test]
fn writes_1_3_and_reads_it_back() {
    let mut b = Bmap::new(3 * 4096 + 10, 4096);
    b.version = Version::V1_3;
    b.checksum_type = Some(ChecksumType::Sha1);
    b.push(BlockRange {
        first: 1,
        last: 3,
        checksum: Some(ChecksumType::Sha1.hex_digest(b"x")),
    });
    let xml = b.to_xml();
    let text = String::from_utf8(xml.clone()).unwrap();
    assert!(
        text.contains("<BmapFileSHA1> ") && text.contains(" sha1=\""),
        "{text}"
    );
    assert!(!text.contains("ChecksumType"));
    let back = Bmap::from_bytes(&xml, "v13.bmap").unwrap();
    assert_eq!(back.ranges, b.ranges);
    assert_eq!(back.version, Version::V1_3);
}

/// A valid 2.0 file to break in the malformed tests.
fn valid() -> String {
    let mut b = Bmap::new(10 * 4096, 4096);
    b.push(BlockRange {
        first: 0,
        last: 1,
        checksum: Some(ChecksumType::Sha256.hex_digest(&[1; 8192])),
    });
    b.push(BlockRange {
        first: 5,
        last: 5,
        checksum: None,
    });
    String::from_utf8(b.to_xml()).unwrap()
}

/// Replaces `from` by `to` in `text` and recomputes the file checksum, so that the parser,
/// not the checksum, has to find the fault.
fn broken(from: &str, to: &str) -> Vec<u8> {
    let text = valid();
    assert!(text.contains(from), "{from}");
    let text = text.replacen(from, to, 1);
    let start = text.find("<BmapFileChecksum> ").unwrap() + "<BmapFileChecksum> ".len();
    let mut zeroed = text.clone();
    zeroed.replace_range(start..start + 64, &"0".repeat(64));
    let sum = ChecksumType::Sha256.hex_digest(zeroed.as_bytes());
    zeroed.replace_range(start..start + 64, &sum);
    zeroed.into_bytes()
}

fn format_error(raw: &[u8]) -> (u64, String) {
    match Bmap::from_bytes(raw, "x.bmap") {
        Err(Error::Format { line, message, .. }) => (line, message),
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn line_of(text: &str, needle: &str) -> u64 {
    let at = text.find(needle).unwrap();
    text[..at].matches('\n').count() as u64 + 1
}

#[test]
fn malformed_files_name_the_line() {
    let v = valid();
    assert!(Bmap::from_bytes(v.as_bytes(), "x.bmap").is_ok());

    let range_line = line_of(&v, "> 5 </Range>");
    let (line, m) = format_error(&broken("> 5 </Range>", "> 5-x </Range>"));
    assert_eq!(line, range_line, "{m}");
    assert!(m.contains("bad range"), "{m}");

    let (line, m) = format_error(&broken("> 5 </Range>", "> 7-6 </Range>"));
    assert_eq!(line, range_line);
    assert!(m.contains("first > last"), "{m}");

    let (line, m) = format_error(&broken("> 5 </Range>", "> 10 </Range>"));
    assert_eq!(line, range_line);
    assert!(m.contains("past the image"), "{m}");

    let (line, m) = format_error(&broken("> 5 </Range>", "> 1 </Range>"));
    assert_eq!(line, range_line);
    assert!(m.contains("overlaps"), "{m}");

    let (_, m) = format_error(&broken("> 5 </Range>", "> 5-6 </Range>"));
    assert!(m.contains("MappedBlocksCount"), "{m}");

    let (line, m) = format_error(&broken("<BlockSize> 4096 ", "<BlockSize> 4k "));
    assert_eq!(line, line_of(&v, "<BlockSize>"));
    assert!(m.contains("not a number"), "{m}");

    let (line, m) = format_error(&broken("<BlocksCount> 10 ", "<BlocksCount> 11 "));
    assert_eq!(line, line_of(&v, "<BlocksCount> 10"));
    assert!(m.contains("BlocksCount"), "{m}");

    let (line, m) = format_error(&broken("version=\"2.0\"", "version=\"3.0\""));
    assert_eq!(line, line_of(&v, "<bmap version"));
    assert!(m.contains("not supported"), "{m}");

    let (line, m) = format_error(&broken("<ChecksumType> sha256 ", "<ChecksumType> crc32 "));
    assert_eq!(line, line_of(&v, "<ChecksumType>"));
    assert!(m.contains("crc32"), "{m}");

    let (_, m) = format_error(&broken("<ImageSize> 40960 </ImageSize>", ""));
    assert!(m.contains("<ImageSize> is missing"), "{m}");

    // Not XML at all: the line of the fault.
    let cut = &v.as_bytes()[..v.find("</BlockMap>").unwrap()];
    let (_, m) = format_error(cut);
    assert!(m.contains("not closed") || m.contains("XML"), "{m}");
    let (line, m) = format_error(&broken("<BlockMap>", "<BlockMap><Range>"));
    assert_eq!(line, line_of(&v, "<BlockMap>") + 3, "{m}");
    assert!(m.contains("XML"), "{m}");

    // A checksum of the wrong length.
    let short = ChecksumType::Sha256.hex_digest(&[1; 8192]);
    let (line, m) = format_error(&broken(&short, &short[..40]));
    assert_eq!(line, line_of(&v, &short));
    assert!(m.contains("not a sha256 checksum"), "{m}");

    // A changed byte anywhere without a new file checksum.
    let tampered = v.replacen("> 5 </Range>", "> 6 </Range>", 1);
    match Bmap::from_bytes(tampered.as_bytes(), "x.bmap") {
        Err(Error::BmapChecksum {
            expected,
            calculated,
            ..
        }) => assert_ne!(expected, calculated),
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

fn arb_bmap() -> impl Strategy<Value = Bmap> {
    (
        1u64..1 << 40,
        prop::sample::select(vec![512u64, 1024, 4096, 65536]),
        prop::collection::vec((0u64..1000, 0u64..1000, any::<bool>()), 0..40),
        prop::sample::select(vec![
            ChecksumType::Sha256,
            ChecksumType::Sha1,
            ChecksumType::Md5,
        ]),
    )
        .prop_map(|(size, bs, gaps, kind)| {
            let mut b = Bmap::new(size, bs);
            b.checksum_type = Some(kind);
            let mut next = 0u64;
            for (gap, len, sum) in gaps {
                let first = next + gap;
                let last = first + len;
                if last >= b.blocks_count {
                    break;
                }
                let checksum = sum.then(|| kind.hex_digest(&first.to_le_bytes()));
                b.push(BlockRange {
                    first,
                    last,
                    checksum,
                });
                next = last + 1;
            }
            b
        })
}

proptest! {
    #[test]
    fn round_trip(b in arb_bmap()) {
        let xml = b.to_xml();
        let back = Bmap::from_bytes(&xml, "r.bmap").unwrap();
        prop_assert_eq!(&back.ranges, &b.ranges);
        prop_assert_eq!(back.image_size, b.image_size);
        prop_assert_eq!(back.block_size, b.block_size);
        prop_assert_eq!(back.mapped_blocks_count, b.mapped_blocks_count);
        prop_assert_eq!(back.checksum_type, b.checksum_type);
        // Writing what was read gives the same bytes.
        prop_assert_eq!(back.to_xml(), xml);
    }
}
