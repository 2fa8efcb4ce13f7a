//! The progress display as a user meets it: plain lines with `--progress` when stderr is not a
//! terminal (a pipe here), counting data against the data total of the kernel's own SEEK_DATA
//! walk; nothing by default; and on a terminal (a pseudo-terminal made by `script`), no bar
//! before there is something to show, and no colours in `-v` logs under `NO_COLOR`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{BLOCKMAP, assert_ok, blockmap, kernel_walk, s, stderr, tool};

/// A 64 MiB image: 6 MiB of data in three places, the rest holes.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let f = File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    for (i, at) in [0u64, 20 << 20, 50 << 20].into_iter().enumerate() {
        f.write_all_at(&testkit::noise(i as u64, 2 << 20), at)
            .unwrap();
    }
    f.sync_all().unwrap();
    path
}

/// `blockmap ARGS` with stderr a pipe and a progress line at every report.
fn run_piped(args: &[&str]) -> Output {
    Command::new(BLOCKMAP)
        .args(args)
        .env_remove("RUST_LOG")
        .env("BLOCKMAP_PROGRESS_INTERVAL_MS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// With the real interval (seconds), a copy shorter than it still logs one progress line, at
/// once, before its summary: a CI log says what the copy is doing however short it is.
#[test]
fn a_short_copy_logs_one_line_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let dst = dir.path().join("copy.img");
    let out = Command::new(BLOCKMAP)
        .args(["copy", "--progress", s(&img), s(&dst)])
        .env_remove("RUST_LOG")
        .env_remove("BLOCKMAP_PROGRESS_INTERVAL_MS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out);
    let text = stderr(&out);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("blockmap: copied ")
            && first.contains(" data (")
            && !first.ends_with("/s"),
        "{text:?}"
    );
    assert!(text.lines().count() >= 2, "{text:?}");
}

/// The plain progress lines of `out` (all but the summary, its last line), checked: each
/// `blockmap: copied D of T data (P%), H holes skipped, R/s` with T the `data` total, P never
/// going down, the first without a rate; no carriage return or escape code anywhere.
fn progress_lines(out: &Output, data: u64) -> Vec<String> {
    assert_ok(out);
    let text = stderr(out);
    assert!(!text.contains(['\r', '\x1b']), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    let (_summary, progress) = lines.split_last().expect("a summary line");
    let total = format!(" of {} data (", sparsecopy::human_size(data));
    let mut last = 0;
    for (i, line) in progress.iter().enumerate() {
        let rest = line.strip_prefix("blockmap: copied ").expect(line);
        let (_, rest) = rest
            .split_once(&total)
            .unwrap_or_else(|| panic!("{total:?}: {line}"));
        let (percent, rest) = rest.split_once("%)").expect(line);
        let percent: u64 = percent.parse().expect(line);
        assert!(last <= percent && percent <= 100, "{line}");
        last = percent;
        assert_eq!(rest.ends_with("/s"), i > 0, "{line}");
    }
    progress.iter().map(|l| l.to_string()).collect()
}

#[test]
fn progress_off_a_terminal_is_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let data: u64 = kernel_walk(&File::open(&img).unwrap())
        .unwrap()
        .expect("SEEK_DATA on $TMPDIR")
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    let dst = dir.path().join("copy.img");

    let out = run_piped(&["copy", "--progress", s(&img), s(&dst)]);
    let lines = progress_lines(&out, data);
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(" holes skipped")),
        "{lines:?}"
    );
    // Without --progress, off a terminal: the summary alone.
    let out = run_piped(&["copy", s(&img), s(&dst)]);
    assert_eq!(progress_lines(&out, data), Vec::<String>::new());
    // --no-progress wins.
    let out = run_piped(&["copy", "--progress", "--no-progress", s(&img), s(&dst)]);
    assert_eq!(progress_lines(&out, data), Vec::<String>::new());

    // bmap copy, the gzipped image streamed: its total is the bmap's mapped bytes.
    let bmap = dir.path().join("disk.img.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&img)]));
    let gz = dir.path().join("disk.img.gz");
    let gzip = Command::new(tool("gzip", "gzip"))
        .args(["-k", "-1", s(&img)])
        .status()
        .unwrap();
    assert!(gzip.success());
    let bmap_copy = |image: &Path| {
        run_piped(&[
            "bmap",
            "copy",
            "--progress",
            "--bmap",
            s(&bmap),
            s(image),
            s(&dst),
        ])
    };
    let lines = progress_lines(&bmap_copy(&gz), data);
    assert!(lines.len() >= 2, "{lines:?}");
    let lines = progress_lines(&bmap_copy(&img), data);
    assert!(
        lines.last().is_some_and(|l| l.contains("(100%)")),
        "{lines:?}"
    );
}

/// `blockmap ARGS` on a pseudo-terminal (`script`), `env` set: what the terminal showed.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let line = std::iter::once(BLOCKMAP)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(tool("script", "bsdutils"));
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_turns_colours_off() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let args = ["-v", "map", s(&img)];
    // Coloured on a terminal, which this test is on…
    assert!(on_terminal(&args, &[]).contains('\x1b'));
    assert!(on_terminal(&args, &[("NO_COLOR", "")]).contains('\x1b'));
    // …and not with NO_COLOR set.
    let shown = on_terminal(&args, &[("NO_COLOR", "1")]);
    assert!(shown.contains("DEBUG"), "{shown:?}");
    assert!(!shown.contains('\x1b'), "{shown:?}");
}

/// A copy of nothing but holes shows no bar at all, not even `0 B/0 B`.
#[test]
fn no_bar_before_there_is_something_to_show() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("holes.img");
    File::create(&src).unwrap().set_len(64 << 20).unwrap();
    let dst = dir.path().join("copy.img");
    let shown = on_terminal(&["copy", s(&src), s(&dst)], &[]);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 1, "{shown:?}");
    assert!(
        lines[0].starts_with("blockmap: copied 0 B of data"),
        "{shown:?}"
    );
    assert!(!shown.contains('\x1b'), "{shown:?}");
}

/// `-q` drops the summary line but keeps the progress lines `--progress` asks for.
#[test]
fn quiet_keeps_the_progress_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let dst = dir.path().join("copy.img");
    for command in [&["copy"][..], &["bmap", "copy", "--nobmap"]] {
        let args: Vec<&str> = ["-q"]
            .into_iter()
            .chain(command.iter().copied())
            .chain(["--progress", s(&img), s(&dst)])
            .collect();
        let out = run_piped(&args);
        assert_ok(&out);
        let text = stderr(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines.is_empty(), "{args:?}: {text:?}");
        // Progress lines only (the first without a rate): no summary.
        for (i, line) in lines.into_iter().enumerate() {
            assert!(
                line.starts_with("blockmap: copied ")
                    && line.contains(" data (")
                    && line.ends_with("/s") == (i > 0),
                "{args:?}: not a progress line: {line:?}"
            );
        }
    }
}

/// The bar's first draw already has the data total: no `0 B/0 B` flashes by, for `copy` nor
/// for `bmap copy` (whose first report has a total and no data done).
#[test]
fn the_first_bar_has_its_total() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let bmap = dir.path().join("disk.img.bmap");
    assert_ok(&blockmap(&["bmap", "create", "-o", s(&bmap), s(&img)]));
    let dst = dir.path().join("copy.img");
    for args in [
        &["copy", s(&img), s(&dst)][..],
        &["bmap", "copy", "--bmap", s(&bmap), s(&img), s(&dst)],
    ] {
        let shown = on_terminal(args, &[]);
        assert!(shown.contains(" data ("), "{args:?}: no bar: {shown:?}");
        assert!(!shown.contains("0 B/0 B"), "{args:?}: {shown:?}");
    }
}
