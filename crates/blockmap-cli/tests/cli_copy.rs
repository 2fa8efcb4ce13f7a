//! `blockmap copy` as a user meets it, on the filesystem under `$TMPDIR`: results checked
//! against GNU `dd … conv=notrunc` run on the same inputs (the semantics README.md's "Copy" names),
//! allocation checked against the source's data, and the bad inputs README.md's "Use" lists. The
//! filesystem matrix and random layouts are `tests/fs_copy.rs`.

use crate::common::{blockmap, s};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Asserts a failure: one line on stderr starting `blockmap: ` with every needle, the status
/// `code`, nothing on stdout.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("blockmap: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from {stderr:?}");
    }
    assert!(out.stdout.is_empty());
}

/// A 16 MiB source: data at unaligned places, a partial last block, mostly holes.
fn source(dir: &Path) -> PathBuf {
    let path = dir.join("src.img");
    let f = File::create(&path).unwrap();
    let bytes = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1)
            .collect()
    };
    f.write_all_at(&bytes(70_000, 1), 0).unwrap();
    f.write_all_at(&bytes(5000, 2), (3 << 20) + 123).unwrap();
    f.write_all_at(&bytes(1 << 20, 3), 9 << 20).unwrap();
    f.write_all_at(&bytes(333, 4), (16 << 20) - 333).unwrap();
    path
}

/// A destination pre-filled with a pattern, `len` bytes.
fn prefilled(path: &Path, len: u64) {
    let f = File::create(path).unwrap();
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8 + 2).collect();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(block.len() as u64) as usize;
        f.write_all_at(&block[..n], at).unwrap();
        at += n as u64;
    }
}

/// GNU dd with byte offsets: the reference result.
fn dd(src: &Path, dst: &Path, skip: u64, seek: u64, length: Option<u64>) {
    let mut cmd = Command::new("dd");
    cmd.arg(format!("if={}", s(src)))
        .arg(format!("of={}", s(dst)))
        .args([
            "bs=65536",
            "conv=notrunc",
            "status=none",
            "iflag=skip_bytes,count_bytes",
        ])
        .arg("oflag=seek_bytes")
        .arg(format!("skip={skip}"))
        .arg(format!("seek={seek}"));
    if let Some(l) = length {
        cmd.arg(format!("count={l}"));
    }
    assert!(cmd.status().unwrap().success());
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn windows_match_dd_on_new_and_prefilled_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let windows: [(u64, u64, Option<u64>); 6] = [
        (0, 0, None),
        (4096, 0, Some(5 << 20)),
        (100, 7, Some((9 << 20) + 50)),
        ((3 << 20) + 1000, 1 << 20, None),
        (16 << 20, 5, None), // skip == size: an empty copy
        (12345, 999_999, Some(0)),
    ];
    for (i, (skip, seek, length)) in windows.into_iter().enumerate() {
        for prefill in [None, Some(2 << 20), Some(20 << 20)] {
            let (ours, want) = (
                dir.path().join(format!("o{i}")),
                dir.path().join(format!("w{i}")),
            );
            let _ = std::fs::remove_file(&ours);
            let _ = std::fs::remove_file(&want);
            if let Some(len) = prefill {
                prefilled(&ours, len);
                prefilled(&want, len);
            }
            let (skip_s, seek_s) = (skip.to_string(), seek.to_string());
            let mut args = vec!["copy", "--skip", &skip_s, "--seek", &seek_s];
            let length_s = length.map(|l| l.to_string());
            if let Some(l) = &length_s {
                args.extend(["--length", l]);
            }
            args.extend([s(&src), s(&ours)]);
            let out = blockmap(&args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("blockmap: copied "), "{stderr}");
            dd(&src, &want, skip, seek, length);
            assert_eq!(
                std::fs::metadata(&ours).unwrap().len(),
                std::fs::metadata(&want).unwrap().len(),
                "size, window {skip} {seek} {length:?}, prefill {prefill:?}"
            );
            assert!(
                same_bytes(&ours, &want),
                "bytes, window {skip} {seek} {length:?}, prefill {prefill:?}"
            );
        }
    }
    // The source is never written.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    assert!(same_bytes(&src, &source(&again)));
}

#[test]
fn a_new_destination_gets_holes_where_the_source_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let dst = dir.path().join("dst.img");
    let out = blockmap(&["copy", "--json", "--reflink", "never", s(&src), s(&dst)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.stderr.is_empty(), "--json replaces the summary line");
    assert!(same_bytes(&src, &dst));
    let data = report["data_bytes"].as_u64().unwrap();
    let holes = report["hole_bytes"].as_u64().unwrap();
    assert_eq!(data + holes, 16 << 20);
    let by_method: u64 = [
        "reflinked_bytes",
        "copy_file_range_bytes",
        "read_write_bytes",
        "zero_skipped_bytes",
    ]
    .iter()
    .map(|k| report[k].as_u64().unwrap())
    .sum();
    assert_eq!(by_method, data);
    // Allocation: the source's data (per the kernel's walk) plus a block per range.
    let f = File::open(&src).unwrap();
    let kernel: Vec<_> = seekmap::DataSegments::new(&f, 0..16 << 20)
        .collect::<Result<_, _>>()
        .unwrap();
    let bs = std::fs::metadata(&dst).unwrap().blksize();
    let budget: u64 = kernel.iter().map(|r| r.end - r.start + 2 * bs).sum();
    let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(allocated <= budget, "allocated {allocated} > {budget}");
    assert!(
        allocated < 4 << 20,
        "a 16 MiB mostly-hole copy allocated {allocated}"
    );
}

#[test]
fn holes_of_the_source_clear_stale_data_in_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let dst = dir.path().join("dst.img");
    prefilled(&dst, 16 << 20);
    let out = blockmap(&["copy", "--json", s(&src), s(&dst)]);
    assert!(out.status.success());
    assert!(
        same_bytes(&src, &dst),
        "stale bytes left under a source hole"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["punched_bytes"].as_u64().unwrap() + report["zeroed_bytes"].as_u64().unwrap() > 0
    );
}

#[test]
fn detect_zeros_leaves_zero_blocks_unallocated() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dense.img");
    let f = File::create(&src).unwrap();
    f.write_all_at(&vec![0u8; 8 << 20], 0).unwrap(); // written zeros: data, not holes
    f.write_all_at(&[5; 4096], 4 << 20).unwrap();
    f.sync_all().unwrap();
    let dst = dir.path().join("dst.img");
    let out = blockmap(&[
        "copy",
        "--detect-zeros",
        "--reflink",
        "never",
        s(&src),
        s(&dst),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(same_bytes(&src, &dst));
    let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        allocated <= 64 << 10,
        "zeros were written: {allocated} bytes allocated"
    );
}

#[test]
fn bad_inputs_give_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let before = std::fs::read(&src).unwrap();
    let d = dir.path();

    // The same file, by name, through a symbolic link and through a hard link.
    let sym = d.join("sym.img");
    std::os::unix::fs::symlink(&src, &sym).unwrap();
    let hard = d.join("hard.img");
    std::fs::hard_link(&src, &hard).unwrap();
    for other in [&src, &sym, &hard] {
        assert_fails(&blockmap(&["copy", s(&src), s(other)]), 1, &["same file"]);
        assert_fails(
            &blockmap(&["copy", "--seek", "1M", s(other), s(&src)]),
            1,
            &["same file"],
        );
    }
    assert_eq!(std::fs::read(&src).unwrap(), before);

    let dst = d.join("dst.img");
    assert_fails(
        &blockmap(&["copy", "--skip", "17M", s(&src), s(&dst)]),
        1,
        &["src.img", "skip"],
    );
    assert!(
        !dst.exists(),
        "nothing is created when the window is refused"
    );
    assert_fails(
        &blockmap(&["copy", "--length", "99999999999T", s(&src), s(&dst)]),
        2,
        &["too large"],
    );
    assert_fails(
        &blockmap(&["copy", "--seek", "12Q", s(&src), s(&dst)]),
        2,
        &["12Q"],
    );
    for (flag, value) in [("--seek", "-1"), ("--skip", "-1"), ("--length", "-4K")] {
        assert_fails(
            &blockmap(&["copy", flag, value, s(&src), s(&dst)]),
            2,
            &[value, "negative sizes are not allowed"],
        );
    }
    assert_fails(
        &blockmap(&["copy", "--skip", "--seek", "1", s(&src), s(&dst)]),
        2,
        &["\"--seek\" is not a size"],
    );
    assert_fails(
        &blockmap(&["copy", "--seek", "9223372036854775807", s(&src), s(&dst)]),
        1,
        &["overflows"],
    );
    // Above the largest file offset is not a size, as for dd.
    assert_fails(
        &blockmap(&["copy", "--seek", "8E", s(&src), s(&dst)]),
        2,
        &["8E", "too large"],
    );
    assert_fails(
        &blockmap(&["copy", s(&d.join("missing")), s(&dst)]),
        1,
        &["missing", "No such file"],
    );
    assert_fails(&blockmap(&["copy", s(d), s(&dst)]), 1, &["is a directory"]);
    let fifo = d.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert_fails(&blockmap(&["copy", s(&fifo), s(&dst)]), 1, &["FIFO"]);
    assert_fails(
        &blockmap(&["copy", s(&src), s(&d.join("no/such/dir/x"))]),
        1,
        &["does not exist"],
    );
    assert_fails(
        &blockmap(&["copy", "--reflink", "sometimes", s(&src), s(&dst)]),
        2,
        &["sometimes"],
    );
    assert_fails(&blockmap(&["copy", s(&src)]), 2, &["DST"]);
    assert!(!dst.exists());
    assert_eq!(std::fs::read(&src).unwrap(), before);
}

/// A length past SRC's end is cut there, however large, up to 2^63-1 (dd's largest number,
/// and the largest file offset; above it is a usage error); an offset that does not fit once
/// cut is still refused.
#[test]
fn huge_lengths_are_cut_at_the_source_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = source(d);
    for length in ["8E", "15E", "18446744073709551615"] {
        let dst = d.join(format!("dst-{length}"));
        let out = blockmap(&["copy", "--length", length, s(&src), s(&dst)]);
        assert_fails(&out, 2, &[length, "too large"]);
    }
    for length in ["7E", "9223372036854775807"] {
        let dst = d.join(format!("dst-{length}"));
        let out = blockmap(&["copy", "--length", length, s(&src), s(&dst)]);
        assert!(
            out.status.success(),
            "{length}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(same_bytes(&src, &dst), "{length}");
    }
    let dst = d.join("dst");
    assert_fails(
        &blockmap(&[
            "copy",
            "--length",
            "7E",
            "--seek",
            "9223372036854775807",
            s(&src),
            s(&dst),
        ]),
        1,
        &["seek + length", "overflows"],
    );
    assert!(!dst.exists());
}
