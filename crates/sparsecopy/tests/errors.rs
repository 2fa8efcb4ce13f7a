//! Bad input and refusals: each is one clear error naming the file, raised before DST is
//! touched where the crate promises so; and a full filesystem (ENOSPC) surfaces as such.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blockmap_core::{Backend, BackendChoice};
use sparsecopy::{Copier, Error, Method, Options, Reflink, Window};
use testkit::*;

/// A small sparse source: data at 0 and at 1 MiB, 2 MiB long.
fn source(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("src");
    let f = File::create(&path).unwrap();
    f.write_all_at(&noise(1, 8192), 0).unwrap();
    f.write_all_at(&noise(2, 8192), 1 << 20).unwrap();
    f.set_len(2 << 20).unwrap();
    path
}

fn copy(src: &Path, dst: &Path, window: Window) -> sparsecopy::Result<sparsecopy::Report> {
    sparsecopy::copy(src, dst, window, &Options::new())
}

#[test]
fn same_file_by_path_symlink_and_hardlink_is_refused_untouched() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let before = read(&src);
    let sym = tmp.path().join("sym");
    let hard = tmp.path().join("hard");
    std::os::unix::fs::symlink(&src, &sym).unwrap();
    std::fs::hard_link(&src, &hard).unwrap();
    for dst in [&src, &sym, &hard] {
        // A window that would change the file if it were written.
        let err = copy(&src, dst, Window::new().seek(4096)).unwrap_err();
        assert!(matches!(err, Error::SameFile { .. }), "{err}");
        assert!(err.to_string().contains("are the same file"), "{err}");
        assert_eq!(read(&src), before);
    }
    // Through a symbolic link as SRC too.
    let err = copy(&sym, &hard, Window::new()).unwrap_err();
    assert!(matches!(err, Error::SameFile { .. }), "{err}");
}

#[test]
fn skip_past_the_end_is_an_error_and_creates_nothing() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let dst = tmp.path().join("dst");
    let err = copy(&src, &dst, Window::new().skip((2 << 20) + 1)).unwrap_err();
    assert!(
        matches!(err, Error::SkipPastEnd { skip, size, .. } if skip == (2 << 20) + 1 && size == 2 << 20)
    );
    assert!(err.to_string().contains("src: cannot skip"), "{err}");
    assert!(!dst.exists());
}

#[test]
fn skip_at_the_end_is_an_empty_copy_that_grows_nothing() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    // New DST: created, empty (dd creates it and writes nothing).
    let dst = tmp.path().join("dst");
    let r = copy(&src, &dst, Window::new().skip(2 << 20).seek(1 << 20)).unwrap();
    assert_eq!((r.length, r.data_bytes, r.hole_bytes), (0, 0, 0));
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 0);
    // Existing DST: not grown by an empty window, whatever the seek.
    std::fs::write(&dst, b"abc").unwrap();
    copy(&src, &dst, Window::new().skip(2 << 20).seek(1 << 20)).unwrap();
    copy(&src, &dst, Window::new().length(0).seek(1 << 20)).unwrap();
    assert_eq!(read(&dst), b"abc");
}

#[test]
fn windows_that_overflow_a_file_offset_are_refused() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let dst = tmp.path().join("dst");
    // Refused once the length is cut at SRC's end (2 MiB): DST's end still overflows.
    for window in [
        Window::new().seek(u64::MAX - 10),
        Window::new().seek(i64::MAX as u64),
        Window::new().seek(i64::MAX as u64 - (1 << 20)),
        Window::new()
            .seek(i64::MAX as u64 - (1 << 20))
            .length(u64::MAX),
    ] {
        let err = copy(&src, &dst, window).unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{window:?}: {err}");
        assert!(err.to_string().contains("overflows a file offset"), "{err}");
    }
    assert!(!dst.exists());
    // A length past SRC's end is merely cut, however large (`--length 8E` as `7E`).
    for window in [
        Window::new().length(i64::MAX as u64),
        Window::new().length(8 << 60),
        Window::new().length(u64::MAX),
        Window::new().skip(1).length(u64::MAX),
        Window::new().seek(1).length(i64::MAX as u64),
    ] {
        let r = copy(&src, &dst, window).unwrap();
        assert_eq!(r.length, (2 << 20) - window.skip, "{window:?}");
        std::fs::remove_file(&dst).unwrap();
    }
}

#[test]
fn missing_destination_directory_is_named() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let dst = tmp.path().join("no/such/dir/dst");
    let err = copy(&src, &dst, Window::new()).unwrap_err();
    assert!(matches!(err, Error::DestDirMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("no/such/dir does not exist"),
        "{err}"
    );
}

#[test]
fn sources_and_destinations_of_the_wrong_kind_are_refused() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let fifo = tmp.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let dst = tmp.path().join("dst");

    for bad in [&dir, &fifo] {
        let err = copy(bad, &dst, Window::new()).unwrap_err();
        assert!(
            matches!(err, Error::Map(blockmap_core::Error::NotMappable { .. })),
            "{err}"
        );
        let err = copy(&src, bad, Window::new()).unwrap_err();
        assert!(matches!(err, Error::DestKind { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("not a regular file or block device")
        );
    }
    let err = copy(&tmp.path().join("missing"), &dst, Window::new()).unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
    assert!(!dst.exists());
}

#[test]
fn reflink_always_fails_before_writing_where_it_cannot_share() {
    let tmp = tempdir_in(&std::env::temp_dir());
    if reflink_works(tmp.path()) {
        eprintln!("$TMPDIR shares extents: the refusal is tested on /dev/shm only");
    }
    for dir in [std::env::temp_dir(), "/dev/shm".into()] {
        if !dir.is_dir() || reflink_works(&dir) {
            continue;
        }
        let tmp = tempdir_in(&dir);
        let src = source(tmp.path());
        let dst = tmp.path().join("dst");
        let old = noise(9, 3 << 20);
        std::fs::write(&dst, &old).unwrap();
        let always = Options::new().reflink(Reflink::Always);
        let err = sparsecopy::copy(&src, &dst, Window::new(), &always).unwrap_err();
        assert!(matches!(err, Error::ReflinkUnsupported { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot reflink"), "{err}");
        assert_eq!(read(&dst), old, "DST changed by a refused reflink");
        let err = sparsecopy::copy(&src, &dst, Window::new().seek(512), &always).unwrap_err();
        assert!(matches!(err, Error::ReflinkMisaligned { .. }), "{err}");
        assert_eq!(read(&dst), old);
        // A destination the refused copy created is not left behind, empty.
        let new = tmp.path().join("new");
        let err = sparsecopy::copy(&src, &new, Window::new(), &always).unwrap_err();
        assert!(matches!(err, Error::ReflinkUnsupported { .. }), "{err}");
        assert!(!new.exists(), "an empty destination was left behind");
        // Auto falls back and copies.
        let auto = Options::new().reflink(Reflink::Auto).reflink_min(0);
        let r = sparsecopy::copy(&src, &dst, Window::new(), &auto).unwrap();
        assert_eq!(r.reflinked_bytes, 0);
        assert_eq!(&read(&dst)[..2 << 20], &read(&src)[..]);
    }
}

#[test]
fn conflicting_options_and_unsupported_backends_are_refused() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = source(tmp.path());
    let dst = tmp.path().join("dst");
    let opts = Options::new()
        .detect_zeros(true)
        .method(Method::CopyFileRange);
    let err = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(!dst.exists());

    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        // tmpfs has no FIEMAP: asked for by name, that is an error, not a silent switch.
        let tmp = tempdir_in(shm);
        let src = source(tmp.path());
        let opts = Options::new().backend(BackendChoice::Only(Backend::Fiemap));
        let err = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap_err();
        assert!(
            matches!(err, Error::Map(blockmap_core::Error::Unsupported { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("not supported here"), "{err}");
    }
}

#[test]
fn open_destinations_must_be_writable_without_append() {
    let tmp = tempdir_in(&std::env::temp_dir());
    let src_path = source(tmp.path());
    let dst_path = tmp.path().join("dst");
    std::fs::write(&dst_path, b"x").unwrap();
    let src = File::open(&src_path).unwrap();
    let copier = || Copier::new(Window::new(), Options::new());

    let read_only = File::open(&dst_path).unwrap();
    let err = copier().copy_files(&src, &read_only).unwrap_err();
    assert!(matches!(err, Error::OpenDest { .. }), "{err}");
    assert!(err.to_string().contains("<fd "), "{err}");

    let append = OpenOptions::new().append(true).open(&dst_path).unwrap();
    let err = copier()
        .copy_named(&src, &src_path, &append, &dst_path)
        .unwrap_err();
    assert!(err.to_string().contains("append"), "{err}");
    assert_eq!(read(&dst_path), b"x");

    let dst = OpenOptions::new().write(true).open(&dst_path).unwrap();
    let r = copier().copy_files(&src, &dst).unwrap();
    assert!(!r.created);
    assert_same(&read(&dst_path), &read(&src_path), "copy_files");
}

/// A tmpfs of 1 MiB mounted on a temporary directory, unmounted on drop (even on panic).
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount() -> Self {
        assert!(is_root(), "not root: cannot mount a tmpfs");
        let dir = tempdir_in(&std::env::temp_dir());
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1M", "sparsecopy-enospc"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs");
        SmallTmpfs { dir }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
#[ignore = "needs root (a small tmpfs): run by cargo xtask fs-test"]
fn a_full_destination_is_an_error_that_says_so() {
    let small = SmallTmpfs::mount();
    let tmp = tempdir_in(&std::env::temp_dir());
    let src = tmp.path().join("src");
    std::fs::write(&src, noise(3, 4 << 20)).unwrap();
    for method in [Method::Auto, Method::ReadWrite, Method::CopyFileRange] {
        let dst = small.dir.path().join(format!("dst-{method:?}"));
        let opts = Options::new().method(method);
        let err = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap_err();
        let msg = err.to_string();
        eprintln!("{method:?}: {msg}");
        match method {
            // copy_file_range from ext4 to tmpfs is refused (EXDEV) on this kernel.
            Method::CopyFileRange if matches!(err, Error::MethodUnsupported { .. }) => {}
            _ => {
                assert!(msg.contains("No space left on device"), "{method:?}: {msg}");
                assert!(msg.contains(&dst.display().to_string()), "{msg}");
            }
        }
        assert!(
            !dst.exists(),
            "{method:?}: the half-made copy was left behind"
        );
    }
    // Inside the small tmpfs copy_file_range works, until the space runs out.
    let src = small.dir.path().join("src");
    std::fs::write(&src, noise(4, 700 << 10)).unwrap();
    let dst = small.dir.path().join("dst");
    let opts = Options::new().method(Method::CopyFileRange);
    let err = sparsecopy::copy(&src, &dst, Window::new(), &opts).unwrap_err();
    eprintln!("copy_file_range inside the tmpfs: {err}");
    assert!(matches!(err, Error::CopyFileRange { .. }), "{err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(!dst.exists(), "the half-made copy was left behind");
}
