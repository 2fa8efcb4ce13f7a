//! The edges of a copy through the library: sources whose size lies (procfs, sysfs), a copy
//! stopped by its interrupt flag, and a source that changes while it is copied. Every
//! expectation is worked out from what the kernel gives (`fs::read` of the same file, the
//! bytes before the copy), never taken from the copy itself.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sparsecopy::{Copier, DstState, Error, Method, Options, Reflink, Window};
use testkit::noise;

const MIB: u64 = 1 << 20;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::temp_dir()).unwrap()
}

/// Files whose stated size is not what reading gives: procfs says 0 (or a guess), sysfs
/// says 4096. Those absent here are left out, but at least one of each kind must be there.
fn lying_sources() -> Vec<PathBuf> {
    let proc = ["/proc/version", "/proc/cmdline", "/proc/filesystems"];
    let sys = [
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/class/net/lo/address",
        "/sys/kernel/address_bits",
    ];
    let present = |list: &[&str]| -> Vec<PathBuf> {
        list.iter()
            .map(PathBuf::from)
            .filter(|p| std::fs::read(p).is_ok_and(|b| !b.is_empty()))
            .collect()
    };
    let (proc, sys) = (present(&proc), present(&sys));
    assert!(!proc.is_empty(), "no readable procfs file");
    assert!(!sys.is_empty(), "no readable sysfs file");
    let lies =
        |p: &PathBuf| std::fs::metadata(p).unwrap().len() != std::fs::read(p).unwrap().len() as u64;
    assert!(
        proc.iter().chain(&sys).any(lies),
        "no size that lies: nothing to test"
    );
    proc.into_iter().chain(sys).collect()
}

#[test]
fn sizes_that_lie_are_read_to_their_end() {
    let tmp = tempdir();
    for src in lying_sources() {
        let content = std::fs::read(&src).unwrap();
        let dst = tmp.path().join("new");
        let report = sparsecopy::copy(&src, &dst, Window::new(), &Options::new())
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert_eq!(std::fs::read(&dst).unwrap(), content, "{}", src.display());
        assert_eq!(report.length, content.len() as u64, "{}", src.display());
        std::fs::remove_file(&dst).unwrap();

        // A window into an existing file: dd's semantics, the length cut where reading ends.
        let old: Vec<u8> = noise(7, 64);
        for (skip, seek, length) in [(3, 5, Some(7)), (1, 60, None), (0, 0, Some(1 << 40))] {
            std::fs::write(&dst, &old).unwrap();
            let window = Window::new().skip(skip).seek(seek);
            let window = match length {
                Some(l) => window.length(l),
                None => window,
            };
            sparsecopy::copy(&src, &dst, window, &Options::new()).unwrap();
            let part = &content[skip as usize..];
            let part = &part[..part.len().min(length.unwrap_or(u64::MAX) as usize)];
            let mut want = old.clone();
            let end = seek as usize + part.len();
            want.resize(want.len().max(end), 0);
            want[seek as usize..end].copy_from_slice(part);
            assert_eq!(
                std::fs::read(&dst).unwrap(),
                want,
                "{} {window:?}",
                src.display()
            );
        }
        std::fs::remove_file(&dst).unwrap();

        // Past the end of what reading gives: refused, nothing created.
        let skip = content.len() as u64 + 1;
        let err =
            sparsecopy::copy(&src, &dst, Window::new().skip(skip), &Options::new()).unwrap_err();
        assert!(
            matches!(err, Error::SkipPastEnd { size, .. } if size == content.len() as u64),
            "{err}"
        );
        assert!(!dst.exists());
    }
}

/// A dense SRC of `len` bytes.
fn dense(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join("src");
    std::fs::write(&path, noise(3, len as usize)).unwrap();
    path
}

/// Copies `src` to `dst` through user space, raising the interrupt flag at the first
/// progress report (after the first MiB).
fn interrupted_copy(src: &Path, dst: &Path, window: Window) -> Error {
    let stop = Arc::new(AtomicBool::new(false));
    let raise = Arc::clone(&stop);
    let mut progress = |p: sparsecopy::Progress| {
        if p.data_done > 0 {
            raise.store(true, Ordering::Relaxed);
        }
    };
    let options = Options::new()
        .reflink(Reflink::Never)
        .method(Method::ReadWrite);
    Copier::new(window, options)
        .progress(&mut progress)
        .interrupt(stop)
        .copy_paths(src, dst)
        .unwrap_err()
}

#[test]
fn an_interrupted_copy_removes_the_destination_it_created() {
    let tmp = tempdir();
    let src = dense(tmp.path(), 16 * MIB);
    let dst = tmp.path().join("dst");
    let err = interrupted_copy(&src, &dst, Window::new());
    assert!(
        matches!(&err, Error::Interrupted { dst: DstState::Removed { path } } if *path == dst),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("interrupted: removed the partial copy {}", dst.display())
    );
    assert!(!dst.exists());
}

#[test]
fn an_interrupted_copy_names_what_it_may_have_written() {
    let tmp = tempdir();
    let src = dense(tmp.path(), 16 * MIB);
    let dst = tmp.path().join("dst");
    let old = noise(9, (20 * MIB) as usize);
    std::fs::write(&dst, &old).unwrap();
    let seek = MIB + 123;
    let err = interrupted_copy(&src, &dst, Window::new().seek(seek));
    let Error::Interrupted {
        dst: DstState::PartlyWritten { path, range },
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*path, dst);
    assert!(
        err.to_string().ends_with(&format!(
            "bytes [{}, {}) may be partly written",
            range.start, range.end
        )),
        "{err}"
    );
    // Every change is inside the range, the range inside the window, and the copy stopped
    // within a few buffers of the flag (raised after the first MiB).
    let now = std::fs::read(&dst).unwrap();
    assert_eq!(now.len(), old.len());
    let src_bytes = std::fs::read(&src).unwrap();
    let changed: Vec<usize> = (0..now.len()).filter(|&i| now[i] != old[i]).collect();
    assert!(!changed.is_empty(), "nothing was copied before the flag");
    let (first, last) = (changed[0] as u64, *changed.last().unwrap() as u64);
    assert!(
        range.start <= first && last < range.end,
        "{range:?} misses [{first}, {last}]"
    );
    assert!(
        range.start >= seek && range.end <= seek + 16 * MIB,
        "{range:?}"
    );
    assert!(
        range.end - seek <= 4 * MIB,
        "{range:?}: did not stop promptly"
    );
    // What was written is SRC's.
    for i in changed {
        assert_eq!(now[i], src_bytes[i - seek as usize]);
    }
}

#[test]
fn a_flag_raised_before_the_copy_writes_nothing() {
    let tmp = tempdir();
    let src = dense(tmp.path(), MIB);
    let dst = tmp.path().join("dst");
    let err = Copier::new(Window::new(), Options::new())
        .interrupt(Arc::new(AtomicBool::new(true)))
        .copy_paths(&src, &dst)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Interrupted {
                dst: DstState::Untouched { .. }
            }
        ),
        "{err}"
    );
    assert!(!dst.exists());
}

/// Copies `src` to `dst` through user space, calling `change` on SRC at the first progress
/// report.
fn copy_changing(src: &Path, dst: &Path, change: impl Fn(&File)) -> sparsecopy::Result<()> {
    let file = File::options().write(true).open(src).unwrap();
    let mut once = Some(file);
    let mut progress = |p: sparsecopy::Progress| {
        if p.data_done > 0
            && let Some(f) = once.take()
        {
            change(&f);
        }
    };
    let options = Options::new()
        .reflink(Reflink::Never)
        .method(Method::ReadWrite);
    Copier::new(Window::new(), options)
        .progress(&mut progress)
        .copy_paths(src, dst)
        .map(|_| ())
}

/// Something done to SRC midway.
type Change = dyn Fn(&File);

#[test]
fn a_source_that_changes_during_the_copy_fails_it() {
    let tmp = tempdir();
    let cases: [(&str, &Change); 3] = [
        ("truncated", &|f: &File| f.set_len(2 * MIB).unwrap()),
        ("written", &|f: &File| {
            f.write_all_at(b"new", 12 * MIB).unwrap()
        }),
        ("grown", &|f: &File| f.set_len(40 * MIB).unwrap()),
    ];
    for (what, change) in cases {
        let src = dense(tmp.path(), 16 * MIB);
        let dst = tmp.path().join("dst");
        let err = copy_changing(&src, &dst, change).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::SourceChanged {
                    dst: DstState::Removed { .. },
                    ..
                }
            ),
            "{what}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{} changed during the copy", src.display())),
            "{what}: {text}"
        );
        assert!(
            text.ends_with(&format!("removed the partial copy {}", dst.display())),
            "{text}"
        );
        assert!(!dst.exists(), "{what}");

        // An existing DST: the range that may be partly written is named.
        let src = dense(tmp.path(), 16 * MIB);
        std::fs::write(&dst, b"old").unwrap();
        let err = copy_changing(&src, &dst, change).unwrap_err();
        assert!(
            matches!(&err, Error::SourceChanged { dst: DstState::PartlyWritten { range, .. }, .. } if range.start == 0),
            "{what}: {err}"
        );
        std::fs::remove_file(&dst).unwrap();
    }
}

/// Copies that change nothing in SRC never trip the check (reading moves no time but atime).
#[test]
fn an_unchanged_source_is_not_a_changed_one() {
    let tmp = tempdir();
    let src = dense(tmp.path(), 3 * MIB);
    for options in [
        Options::new(),
        Options::new().method(Method::ReadWrite),
        Options::new().detect_zeros(true),
    ] {
        let dst = tmp.path().join("dst");
        sparsecopy::copy(&src, &dst, Window::new(), &options).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        std::fs::remove_file(&dst).unwrap();
    }
}
