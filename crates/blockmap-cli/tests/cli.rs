//! The `blockmap` command as a user meets it, on the filesystem under `$TMPDIR`: the JSON
//! contract of README.md's "Map" checked against the kernel's own SEEK walk, the table, and the
//! bad inputs README.md's "Use" lists (one line on stderr, exit 2 for usage errors and 1 for the
//! rest, nothing on stdout). The loop-mounted filesystem matrix is `tests/fs_*.rs`.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{BLOCKMAP, CliMap, blockmap};

/// `map --json`'s output, with exactly the documented keys (the kit's parser).
fn parsed(out: &Output) -> CliMap {
    CliMap::parse(&String::from_utf8_lossy(&out.stdout), None).unwrap()
}

/// Asserts a failure: exactly one line on stderr starting `blockmap: ` and holding every
/// `needle`, the exit status `code`, nothing on stdout.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("blockmap: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from {stderr:?}");
    }
    assert!(
        out.stdout.is_empty(),
        "stdout after a failure: {:?}",
        out.stdout
    );
}

/// A sparse file with data at known places, fsynced or not.
fn sample(dir: &Path) -> (std::path::PathBuf, File) {
    let path = dir.join("sample.img");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&[0xAB; 8192], 1 << 20).unwrap();
    file.write_all_at(b"tail", (5 << 20) + 3).unwrap();
    file.set_len(8 << 20).unwrap();
    (path, file)
}

#[test]
fn json_has_exactly_the_documented_keys_and_agrees_with_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = sample(dir.path());
    let kernel: Vec<_> = seekmap::DataSegments::new(&file, 0..8 << 20)
        .collect::<Result<_, _>>()
        .unwrap();
    for backend in ["auto", "fiemap", "seek", "none"] {
        let out = blockmap(&[
            "map",
            "--json",
            "--backend",
            backend,
            path.to_str().unwrap(),
        ]);
        if !out.status.success() {
            // A backend this filesystem lacks must say so clearly.
            assert_fails(&out, 1, &["not supported here", "sample.img"]);
            assert_ne!(backend, "auto");
            continue;
        }
        let v = parsed(&out);
        assert_eq!(v.path, path.to_str().unwrap());
        assert_eq!(v.size, 8 << 20);
        let bs = v.block_size;
        assert!(bs.is_power_of_two() && bs >= 512, "{bs}");
        let (data, holes) = (&v.data, &v.holes);
        let mut all: Vec<_> = data.iter().chain(holes).cloned().collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(all.first().map(|r| r.start), Some(0));
        assert_eq!(all.last().map(|r| r.end), Some(8 << 20));
        assert!(
            all.windows(2).all(|w| w[0].end == w[1].start),
            "no tiling: {all:?}"
        );
        match v.backend.as_str() {
            "none" => assert_eq!(*data, [0..8 << 20]),
            name => {
                if backend != "auto" {
                    assert_eq!(name, backend);
                }
                // Exactly the kernel's answer: the written bytes are covered, nothing more.
                assert_eq!(*data, kernel, "{name}");
            }
        }
        if v.backend == "fiemap" {
            assert!(!v.extents.is_empty());
            for e in &v.extents {
                assert!(e.flags.iter().all(|f| *f == f.to_lowercase()), "{e:?}");
            }
        } else {
            assert!(v.extents.is_empty());
        }
    }
}

#[test]
fn table_names_size_block_size_and_backend_and_lists_holes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = sample(dir.path());
    let kernel: Vec<_> = seekmap::DataSegments::new(&file, 0..8 << 20)
        .collect::<Result<_, _>>()
        .unwrap();
    let out = blockmap(&["map", "--backend", "seek", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("size 8388608") && header.contains("block size"),
        "{header}"
    );
    assert!(header.contains("backend seek"), "{header}");
    let rows = |text: &str, kind: &str| -> Vec<Range<u64>> {
        text.lines()
            .filter(|l| l.starts_with(kind))
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap())
                    .collect();
                assert_eq!(f[2], f[1] - f[0], "length column: {l}");
                f[0]..f[1]
            })
            .collect()
    };
    assert_eq!(rows(&text, "data "), kernel);

    let out = blockmap(&[
        "map",
        "--holes",
        "--backend",
        "seek",
        path.to_str().unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    let holes = rows(&text, "hole ");
    assert!(rows(&text, "data ").is_empty());
    let mut want = Vec::new();
    let mut at = 0;
    for k in &kernel {
        if k.start > at {
            want.push(at..k.start);
        }
        at = k.end;
    }
    if at < 8 << 20 {
        want.push(at..8 << 20);
    }
    assert_eq!(holes, want);
}

#[test]
fn data_written_without_fsync_is_mapped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh");
    let file = File::create(&path).unwrap();
    file.set_len(4 << 20).unwrap();
    file.write_all_at(&[7; 100], 3 << 20).unwrap();
    let out = blockmap(&["map", "--json", path.to_str().unwrap()]);
    let data = parsed(&out).data;
    assert!(
        data.iter()
            .any(|r| r.start <= 3 << 20 && r.end >= (3 << 20) + 100),
        "{data:?}"
    );
}

#[test]
fn bad_inputs_give_one_line_and_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let missing = format!("{d}/missing.img");
    assert_fails(
        &blockmap(&["map", &missing]),
        1,
        &["missing.img", "No such file"],
    );
    assert_fails(&blockmap(&["map", d]), 1, &["is a directory"]);

    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert_fails(
        &blockmap(&["map", fifo.to_str().unwrap()]),
        1,
        &["fifo", "FIFO"],
    );

    let (path, _file) = sample(dir.path());
    let p = path.to_str().unwrap();
    assert_fails(
        &blockmap(&["map", "--backend", "fiemap2", p]),
        2,
        &["fiemap2", "backend"],
    );
    assert_fails(&blockmap(&["map"]), 2, &["FILE"]);
    assert_fails(&blockmap(&["map", "--jsn", p]), 2, &["--jsn"]);
    assert_fails(&blockmap(&["frobnicate"]), 2, &["frobnicate"]);
}

#[test]
fn permission_denied_is_one_clear_line() {
    // Root reads everything: run the binary as nobody where that is possible.
    if !rustix::process::geteuid().is_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        assert_fails(
            &blockmap(&["map", path.to_str().unwrap()]),
            1,
            &["secret", "Permission denied"],
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, b"x").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BLOCKMAP)
        .args(["map", path.to_str().unwrap()])
        .output();
    match out {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).starts_with("setpriv") => {
            assert_fails(&out, 1, &["secret", "Permission denied"]);
        }
        other => eprintln!("cannot run as nobody here ({other:?}); permission case not tested"),
    }
}

#[test]
fn broken_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many");
    let file = File::create(&path).unwrap();
    for i in 0..2000u64 {
        file.write_all_at(&[1; 512], i * 8192).unwrap();
    }
    let mut child = Command::new(BLOCKMAP)
        .args(["map", "--backend", "seek", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
