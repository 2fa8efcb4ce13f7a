//! Sizes (`copy --skip/--seek/--length`) are dd's: for a table of words, every suffix, the
//! `x` product, the limits near 2^63 and what dd refuses, the size parser of the binary
//! (`src/size.rs`, compiled in here) accepts what GNU dd accepts, with dd's byte value, and
//! refuses what dd refuses. dd is asked by `seek=WORD bs=1 count=0` on an empty file, which
//! sets the file's size to WORD bytes without writing any: its size is dd's value, or, for a
//! size the filesystem cannot hold, dd's own message names it.

use std::path::Path;
use std::process::Command;

use crate::cli_defs::size::parse_size;
use crate::common::{blockmap, s, stderr, tool};

/// What dd makes of `word`: `Some(bytes)`, or `None` when it refuses it as a number.
fn dd_value(dd: &str, dir: &Path, word: &str) -> Option<u64> {
    let file = dir.join("sized");
    let _ = std::fs::remove_file(&file);
    let out = Command::new(dd)
        .args([
            "if=/dev/null",
            &format!("of={}", s(&file)),
            "bs=1",
            "count=0",
        ])
        .arg(format!("seek={word}"))
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let err = stderr(&out);
    if out.status.success() {
        return Some(std::fs::metadata(&file).unwrap().len());
    }
    if err.contains("invalid number") {
        return None;
    }
    // "dd: failed to truncate to 1125899906842624 bytes in output file …": File too large.
    let bytes = err
        .split_once("failed to truncate to ")
        .and_then(|(_, rest)| rest.split_once(" bytes"))
        .and_then(|(n, _)| n.parse().ok());
    assert!(
        bytes.is_some(),
        "dd seek={word:?}: unexpected failure: {err}"
    );
    bytes
}

/// Words where we refuse what dd accepts, on purpose: dd reads `0x…` as zero times a
/// number, and warns that it is likely a mistake (a hexadecimal number meant).
fn refused_on_purpose(word: &str) -> bool {
    word.starts_with("0x")
}

const WORDS: &[&str] = &[
    // plain numbers, signs and space
    "0",
    "1",
    "4096",
    "007",
    "+1",
    " 1",
    "\t12",
    "1 ",
    "-1",
    "-0",
    "+",
    "1.5",
    "",
    "12 34",
    // every suffix dd knows, alone, with B, D and iB, in both cases
    "1c",
    "3w",
    "1b",
    "2B",
    "4096B",
    "1bB",
    "1cB",
    "1wB",
    "1biB",
    "1bD",
    "1k",
    "1K",
    "1kB",
    "1KB",
    "1kiB",
    "1KiB",
    "1kD",
    "1KD",
    "1KDB",
    "1Ki",
    "1KiD",
    "1m",
    "1M",
    "3MB",
    "1MiB",
    "1mB",
    "1g",
    "1G",
    "2GB",
    "2GiB",
    "1t",
    "1T",
    "1TB",
    "1TiB",
    "1p",
    "1P",
    "1PB",
    "1PiB",
    "1e",
    "1E",
    "7E",
    "1EB",
    "9EB",
    "1EiB",
    "8E",
    "1Z",
    "0Z",
    "1ZB",
    "1Y",
    "0Y",
    "1R",
    "1Q",
    "1X",
    "1D",
    "1MiBB",
    "1BB",
    "1bb",
    "1Kk",
    "1K0",
    // a bare suffix is one of it
    "K",
    "M",
    "b",
    "kB",
    "B",
    "x",
    " K",
    "+K",
    // products
    "2x512",
    "1Kx4",
    "2xK",
    "2x3K",
    "1xM",
    "2xkB",
    "1MBx2",
    "1KiBx2",
    "1bx1b",
    "1Bx2",
    "2x1B",
    "1KBx1B",
    "1x2x3",
    "1x",
    "x1",
    "1x 1",
    "1 x1",
    "1x+1",
    "1x-1",
    "1Kx0",
    "8Ex0",
    "00x10",
    "0x10",
    "0xK",
    "0x0",
    "4Ex2",
    "1Ex8",
    "99999999999999999999x0",
    // near the limits
    "9223372036854775807",
    "9223372036854775807c",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999T",
    "8191P",
    "8192P",
];

#[test]
fn sizes_are_what_dd_makes_of_them() {
    let dd = tool("dd", "coreutils");
    let tmp = tempfile::tempdir().unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for &word in WORDS {
        let ours = parse_size(word);
        match dd_value(dd, tmp.path(), word) {
            Some(bytes) if refused_on_purpose(word) => {
                assert_eq!(bytes, 0, "dd {word:?}");
                assert!(ours.is_err(), "{word:?}: {ours:?}");
            }
            Some(bytes) => {
                assert_eq!(ours, Ok(bytes), "{word:?}: dd says {bytes}");
                accepted += 1;
            }
            None => {
                assert!(ours.is_err(), "{word:?}: dd refuses it, we read {ours:?}");
                refused += 1;
            }
        }
    }
    eprintln!("{accepted} words read as dd reads them, {refused} refused as dd refuses them");
    // Both sides of the table are exercised.
    assert!(accepted > 40 && refused > 40, "{accepted} {refused}");
}

/// The words as `blockmap copy` takes them: `--length 1b` copies 512 bytes (dd's block), a
/// refused word is a usage error naming it, and `--help` says what the words mean.
#[test]
fn copy_takes_dd_words_and_says_so_in_its_help() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    std::fs::write(&src, vec![7u8; 5000]).unwrap();
    for (word, expected) in [("1b", 512), ("1kB", 1000), ("2x1K", 2048), ("4096B", 4096)] {
        let dst = d.join(format!("dst-{word}"));
        let out = blockmap(&["copy", "--length", word, s(&src), s(&dst)]);
        assert!(out.status.success(), "{word}: {}", stderr(&out));
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), expected, "{word}");
    }
    let out = blockmap(&["copy", "--seek", "1m", s(&src), s(&d.join("x"))]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown size suffix \"m\""),
        "{}",
        stderr(&out)
    );
    let help = blockmap(&["copy", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for says in [
        "b = 512",
        "kB = 1000",
        "K = KiB = 1024",
        "MB = 1000^2",
        "2x512 = 1024",
        "2^63-1",
    ] {
        assert!(help.contains(says), "--help lacks {says:?}: {help}");
    }
}
