//! Copies between files of random layout, checked byte for byte against a `dd` model, on
//! real filesystems: `$TMPDIR`, `/dev/shm` (tmpfs), across the two, and (run by `cargo xtask
//! fs-test`) each filesystem it mounts.
//!
//! Each case draws a source layout (random writes, zero writes, preallocation, punched holes,
//! truncation, mostly without fsync), a destination (absent, dense random bytes, or a sparse
//! layout of its own), a window (skip/seek/length, aligned or not, up to and past SRC's end)
//! and options (detect_zeros, every reflink mode, every method, backends, small buffers that
//! force batching and streaming). The expected DST is the model's `dd`; SRC must be
//! unchanged; a new DST must hold no more blocks than the data copied into it; refusals
//! (reflink impossible, forced method unsupported, conflicting options) must leave an
//! existing DST untouched where the crate promises so. `SPARSECOPY_CASES` sets the number of
//! cases per directory (default 96).

use std::path::Path;

use blockmap_core::{Backend, BackendChoice, BlockMap};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparsecopy::{Error, Method, Options, Reflink, Window};
use testkit::*;

#[derive(Debug, Clone)]
enum DstSetup {
    Absent,
    Dense { len: u64, seed: u64 },
    Sparse(Vec<Op>),
}

#[derive(Debug, Clone)]
struct Case {
    src: Vec<Op>,
    dst: DstSetup,
    /// Where the skip falls in SRC, in thousandths of its size (1000: at the end).
    skip_per_mille: u64,
    skip_aligned: bool,
    seek: u64,
    length: Option<u64>,
    detect_zeros: bool,
    reflink: Reflink,
    method: Method,
    backend: BackendChoice,
    buffer_size: usize,
    reflink_min: u64,
}

fn case(fiemap: bool) -> impl Strategy<Value = Case> {
    let dst = prop_oneof![
        2 => Just(DstSetup::Absent),
        1 => (0..(2u64 << 20), any::<u64>()).prop_map(|(len, seed)| DstSetup::Dense { len, seed }),
        2 => small_layout().prop_map(DstSetup::Sparse),
    ];
    let window = (
        prop_oneof![Just(0u64), Just(1000), 0..=1000u64],
        any::<bool>(),
        prop_oneof![Just(0u64), offset()],
        prop_oneof![
            Just(None),
            length().prop_map(Some),
            Just(Some(0)),
            Just(Some(3 << 20))
        ],
    );
    let mut backends = vec![
        BackendChoice::Auto,
        BackendChoice::Only(Backend::Seek),
        BackendChoice::Only(Backend::None),
    ];
    if fiemap {
        backends.push(BackendChoice::Only(Backend::Fiemap));
    }
    let options = (
        any::<bool>(),
        prop_oneof![
            Just(Reflink::Auto),
            Just(Reflink::Always),
            Just(Reflink::Never)
        ],
        prop_oneof![
            2 => Just(Method::Auto),
            1 => Just(Method::CopyFileRange),
            1 => Just(Method::ReadWrite)
        ],
        prop::sample::select(backends),
        prop_oneof![Just(1usize << 20), Just(4096), Just(12288), Just(65536)],
        prop_oneof![Just(64u64 << 10), Just(0)],
    );
    (small_layout(), dst, window, options).prop_map(
        |(src, dst, (skip_per_mille, skip_aligned, seek, length), options)| {
            let (detect_zeros, reflink, method, backend, buffer_size, reflink_min) = options;
            Case {
                src,
                dst,
                skip_per_mille,
                skip_aligned,
                seek,
                length,
                detect_zeros,
                reflink,
                method,
                backend,
                buffer_size,
                reflink_min,
            }
        },
    )
}

/// What a test directory can do.
#[derive(Debug, Clone, Copy)]
struct Caps {
    reflink: bool,
    fiemap: bool,
}

fn caps(dir: &Path) -> Caps {
    let tmp = tempdir_in(dir);
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let file = std::fs::File::open(&probe).unwrap();
    Caps {
        reflink: reflink_works(dir),
        fiemap: BlockMap::new(&file, BackendChoice::Only(Backend::Fiemap)).is_ok(),
    }
}

/// Runs one case with SRC in `src_dir` and DST in `dst_dir`.
fn check(src_dir: &Path, dst_dir: &Path, c: &Case, reflink_ok: bool) {
    let src_tmp = tempdir_in(src_dir);
    let dst_tmp = tempdir_in(dst_dir);
    let src = src_tmp.path().join("src");
    let dst = dst_tmp.path().join("dst");
    let src_model = build(&src, &c.src);
    let old = match &c.dst {
        DstSetup::Absent => None,
        DstSetup::Dense { len, seed } => {
            let b = noise(*seed, *len as usize);
            std::fs::write(&dst, &b).unwrap();
            Some(b)
        }
        DstSetup::Sparse(ops) => Some(build(&dst, ops)),
    };
    let size = src_model.len() as u64;
    let mut skip = size * c.skip_per_mille / 1000;
    if c.skip_aligned {
        skip -= skip % 4096;
    }
    let window = Window {
        skip,
        seek: c.seek,
        length: c.length,
    };
    let options = Options::new()
        .backend(c.backend)
        .reflink(c.reflink)
        .method(c.method)
        .detect_zeros(c.detect_zeros)
        .buffer_size(c.buffer_size)
        .reflink_min(c.reflink_min);
    let result = sparsecopy::copy(&src, &dst, window, &options);

    assert_same(&read(&src), &src_model, "SRC changed");
    let len = (size - skip).min(c.length.unwrap_or(u64::MAX));
    let unchanged = || match &old {
        Some(old) => assert_same(&read(&dst), old, "refused, yet DST changed"),
        None => assert!(
            !dst.exists() || read(&dst).is_empty(),
            "refused, yet DST written"
        ),
    };
    let report = match result {
        Ok(report) => report,
        Err(Error::Conflict(_)) => {
            assert!(c.detect_zeros && c.method == Method::CopyFileRange);
            return unchanged();
        }
        Err(Error::ReflinkMisaligned { .. }) => {
            assert!(c.reflink == Reflink::Always && len > 0 && skip % 4096 != c.seek % 4096);
            return unchanged();
        }
        Err(e @ Error::ReflinkUnsupported { .. }) => {
            assert!(c.reflink == Reflink::Always && !reflink_ok, "{e}");
            return unchanged();
        }
        Err(e @ Error::MethodUnsupported { .. }) => {
            // copy_file_range between two filesystems of different types (EXDEV).
            assert!(
                c.method == Method::CopyFileRange && src_dir != dst_dir,
                "{e}"
            );
            return;
        }
        Err(e) => panic!("copy failed: {e}"),
    };

    let want = dd(&src_model, old.as_deref(), skip, c.seek, c.length);
    assert_same(&read(&dst), &want, "DST differs from dd");

    // The report adds up.
    assert_eq!(report.length, len);
    assert_eq!(report.data_bytes + report.hole_bytes, len);
    assert_eq!(
        report.reflinked_bytes
            + report.copy_file_range_bytes
            + report.read_write_bytes
            + report.zero_skipped_bytes,
        report.data_bytes
    );
    assert_eq!(report.created, old.is_none());
    match c.method {
        Method::ReadWrite => assert_eq!(report.syscalls.copy_file_range, 0),
        Method::CopyFileRange => assert_eq!(report.read_write_bytes, 0),
        Method::Auto => {}
    }
    if c.reflink == Reflink::Never {
        assert_eq!(report.syscalls.ficlonerange, 0);
    }
    if !c.detect_zeros {
        // Zeros are left out only inside data settled in preallocated extents: zero bytes.
        let window = &src_model[skip as usize..(skip + len) as usize];
        let zero_bytes = window.iter().filter(|&&b| b == 0).count() as u64;
        assert!(
            report.zero_skipped_bytes <= zero_bytes,
            "{} zero bytes skipped without --detect-zeros, where SRC has {zero_bytes}",
            report.zero_skipped_bytes
        );
    }
    if c.backend == BackendChoice::Only(Backend::None) {
        assert_eq!(report.hole_bytes, 0);
    }
    // Where reflink works and is wanted for every range, only the partial blocks at the
    // edges of data ranges are copied.
    let lines_up = skip % report.block_size == c.seek % report.block_size;
    let reflink_everything = c.reflink == Reflink::Always
        || (c.reflink == Reflink::Auto && c.reflink_min == 0 && lines_up);
    if reflink_ok && reflink_everything {
        let copied = report.copy_file_range_bytes + report.read_write_bytes;
        assert!(
            copied <= 2 * report.block_size * report.data_ranges,
            "reflink works here, yet {copied} bytes were copied: {report:?}"
        );
    }

    // A new DST holds no more blocks than the data written into it: each data range may
    // straddle a block at either end; a little room for the filesystem's extent tree.
    if old.is_none() {
        let bs = report.block_size;
        let written = report.data_bytes - report.zero_skipped_bytes;
        let bound = written + 2 * bs * report.data_ranges + 2 * bs + bs * (report.data_ranges / 64);
        let got = allocated(&dst);
        assert!(
            got <= bound,
            "new DST allocates {got} bytes for {written} bytes of data in {} ranges",
            report.data_ranges
        );
    }
}

fn cases() -> u32 {
    std::env::var("SPARSECOPY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

fn run(src_dir: &Path, dst_dir: &Path) {
    let caps = caps(src_dir);
    let reflink_ok = src_dir == dst_dir && caps.reflink;
    eprintln!(
        "model: SRC in {}, DST in {} ({caps:?})",
        src_dir.display(),
        dst_dir.display()
    );
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(caps.fiemap), |c| {
        check(src_dir, dst_dir, &c, reflink_ok);
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "SRC in {}, DST in {}: {e}",
            src_dir.display(),
            dst_dir.display()
        );
    }
}

#[test]
fn model_in_tmpdir() {
    let dir = std::env::temp_dir();
    run(&dir, &dir);
}

#[test]
fn model_in_dev_shm() {
    let dir = Path::new("/dev/shm");
    if !dir.is_dir() {
        eprintln!("no /dev/shm here: tmpfs not tested");
        return;
    }
    run(dir, dir);
}

#[test]
fn model_across_filesystems() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here: copies across filesystems not tested");
        return;
    }
    let tmp = std::env::temp_dir();
    run(shm, &tmp);
    run(&tmp, shm);
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn model_on_each_mounted_filesystem() {
    let env = fs_env("model_on_each_mounted_filesystem");
    env.run_on(&env.mounts, |m, n| {
        run(&m.path, &m.path);
        *n += cases();
        Ok(())
    });
}
