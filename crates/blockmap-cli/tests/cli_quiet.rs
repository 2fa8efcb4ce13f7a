//! `-q`/`--quiet` on every command: nothing on stderr on success (no summary line), the same
//! output on stdout, and still the one error line on failure; `-v`'s logs still show.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{blockmap, s, stderr};

/// A sparse 4 MiB image with data at two places.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let file = File::create(&path).unwrap();
    file.write_all_at(&[0x5A; 8192], 0).unwrap();
    file.write_all_at(&[0xA5; 4096], 3 << 20).unwrap();
    file.set_len(4 << 20).unwrap();
    path
}

fn assert_silent_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
    assert!(out.stderr.is_empty(), "{what}: stderr {:?}", stderr(out));
}

/// One line, `blockmap: ` first, status 1, nothing on stdout.
fn assert_one_error_line(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
    assert!(err.starts_with("blockmap: "), "{what}: {err:?}");
    assert!(out.stdout.is_empty(), "{what}");
}

/// The JSON report without its timing, which differs from run to run.
fn untimed(stdout: &[u8]) -> serde_json::Value {
    let mut report: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    report.as_object_mut().unwrap().remove("elapsed");
    report
}

/// Each command, run as given and with `-q` before and after the command's name (each run
/// to a new DST): the plain run says something on stderr (so that silence means something),
/// the quiet ones nothing, and all three print the same on stdout.
#[test]
fn quiet_commands_print_nothing_on_stderr_and_the_same_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = image(d);
    let bmap = d.join("disk.bmap");
    assert_silent_success(
        &blockmap(&["-q", "bmap", "create", "-o", s(&bmap), s(&img)]),
        "bmap create -o",
    );
    assert!(std::fs::metadata(&bmap).unwrap().len() > 0);
    // (command, its arguments before SRC…, whether a plain run says something on stderr)
    let commands: [(&[&str], &[&str], bool); 5] = [
        (&["copy"], &[], true),
        (&["copy"], &["--json"], false),
        (&["bmap", "create"], &[], true),
        (&["bmap", "copy"], &["--bmap", s(&bmap)], true),
        (&["map"], &[], false),
    ];
    for (run, (command, options, says_something)) in commands.into_iter().enumerate() {
        let with_dst = |tag: &str| -> Vec<String> {
            let mut args: Vec<String> = [command, options]
                .concat()
                .iter()
                .map(|a| a.to_string())
                .collect();
            args.push(s(&img).to_owned());
            if command.last().is_some_and(|c| *c == "copy") {
                args.push(s(&d.join(format!("dst-{run}-{tag}"))).to_owned());
            }
            args
        };
        let plain = with_dst("plain");
        let plain = blockmap(&plain.iter().map(String::as_str).collect::<Vec<_>>());
        let what = [command, options].concat().join(" ");
        assert!(plain.status.success(), "{what}: {}", stderr(&plain));
        assert_eq!(
            !plain.stderr.is_empty(),
            says_something,
            "{what}: {}",
            stderr(&plain)
        );
        for (tag, at) in [("q-first", 0), ("q-after", command.len())] {
            let mut args = with_dst(tag);
            args.insert(at, if at == 0 { "-q" } else { "--quiet" }.to_owned());
            let out = blockmap(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_silent_success(&out, &args.join(" "));
            if options.contains(&"--json") {
                assert_eq!(untimed(&out.stdout), untimed(&plain.stdout), "{what}");
            } else {
                // The same image gives the same table and the same bmap, byte for byte.
                assert_eq!(out.stdout, plain.stdout, "{}", args.join(" "));
            }
        }
    }
}

#[test]
fn quiet_failures_still_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let missing = d.join("missing.img");
    let dst = d.join("dst");
    for args in [
        vec!["-q", "map", s(&missing)],
        vec!["-q", "copy", s(&missing), s(&dst)],
        vec!["-q", "bmap", "create", s(&missing)],
        vec!["-q", "bmap", "copy", "--nobmap", s(&missing), s(&dst)],
    ] {
        let out = blockmap(&args);
        assert_one_error_line(&out, &args.join(" "));
        assert!(stderr(&out).contains("missing.img"), "{}", stderr(&out));
    }
}

/// `-q -v`: the logs asked for show; the summary line does not.
#[test]
fn quiet_and_verbose_together_log_without_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = image(d);
    let out = blockmap(&["-q", "-v", "copy", s(&img), s(&d.join("c"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "{err:?}");
    assert!(!err.lines().any(|l| l.starts_with("blockmap: ")), "{err:?}");
}
