//! A block device as DST (and as SRC): a loop device on a 16 MiB backing file, made by each
//! test and detached when it ends, even on panic. Root only: ignored by a plain `cargo test`,
//! run by `cargo xtask fs-test`.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sparsecopy::{Error, Method, Options, Reflink, Window};
use testkit::*;

const DEVICE: u64 = 16 << 20;
const FILL: u8 = 0xaa;

/// A loop device over a backing file filled with [`FILL`], detached on drop.
struct Loop {
    dev: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new() -> Self {
        assert!(is_root(), "not root: cannot make a loop device");
        let dir = tempdir_in(&std::env::temp_dir());
        let backing = dir.path().join("backing");
        std::fs::write(&backing, vec![FILL; DEVICE as usize]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            other => panic!("losetup failed: {other:?}"),
        };
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop {
            dev,
            backing,
            _dir: dir,
        }
    }

    fn contents(&self) -> Vec<u8> {
        read(&self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A 4 MiB source: data at 0 (unaligned end), a zero block, data at 1 MiB + 100, holes.
fn source(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("src");
    let f = File::create(&path).unwrap();
    let mut model = vec![0u8; 4 << 20];
    let a = noise(1, 10_000);
    f.write_all_at(&a, 0).unwrap();
    model[..a.len()].copy_from_slice(&a);
    f.write_all_at(&[0; 8192], 16384).unwrap(); // zeros that are data
    let b = noise(2, 70_000);
    f.write_all_at(&b, (1 << 20) + 100).unwrap();
    model[(1 << 20) + 100..(1 << 20) + 100 + b.len()].copy_from_slice(&b);
    f.set_len(4 << 20).unwrap();
    (path, model)
}

/// A device that was all [`FILL`] after SRC's data ranges were written at `seek`.
fn expect(model: &[u8], seek: usize, data: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut want = vec![FILL; DEVICE as usize];
    for r in data {
        want[seek + r.start..seek + r.end].copy_from_slice(&model[r.clone()]);
    }
    want
}

/// SRC's data ranges, as the copy will see them.
fn data_ranges(src: &Path) -> Vec<std::ops::Range<usize>> {
    let map = blockmap_core::BlockMap::open(src, blockmap_core::BackendChoice::Auto).unwrap();
    map.data(0..map.size())
        .map(|r| {
            let r = r.unwrap();
            r.start as usize..r.end as usize
        })
        .collect()
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn data_is_written_holes_are_left_and_the_size_never_changes() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let (src, model) = source(tmp.path());
    let seek = 4096 * 3 + 7;
    let opts = Options::new().sync(true);
    let r = sparsecopy::copy(&src, &lo.dev, Window::new().seek(seek as u64), &opts).unwrap();
    assert!(r.block_device && !r.created);
    assert_eq!(r.punched_bytes + r.zeroed_bytes, 0);
    assert_eq!(
        r.copy_file_range_bytes, 0,
        "copy_file_range cannot write to a device"
    );
    let want = expect(&model, seek, &data_ranges(&src));
    assert_same(&lo.contents(), &want, "device");
    // Synced through to the backing file.
    assert_same(&read(&lo.backing), &want, "backing file");
    assert_eq!(std::fs::metadata(&lo.backing).unwrap().len(), DEVICE);
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn zero_holes_makes_the_whole_window_equal_to_src() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let (src, model) = source(tmp.path());
    for (seek, detect_zeros) in [(0usize, false), (512 * 3 + 1, false), (8192, true)] {
        let opts = Options::new()
            .zero_holes(true)
            .detect_zeros(detect_zeros)
            .sync(true);
        let mut want = lo.contents();
        let r = sparsecopy::copy(&src, &lo.dev, Window::new().seek(seek as u64), &opts).unwrap();
        assert!(r.punched_bytes + r.zeroed_bytes >= r.hole_bytes);
        want[seek..seek + model.len()].copy_from_slice(&model);
        assert_same(&lo.contents(), &want, "device");
        assert_same(&read(&lo.backing), &want, "backing file");
        eprintln!("zero_holes, seek {seek}: {r}");
    }
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn detected_zeros_on_a_device_are_holes() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let (src, model) = source(tmp.path());
    let opts = Options::new().detect_zeros(true);
    let r = sparsecopy::copy(&src, &lo.dev, Window::new(), &opts).unwrap();
    assert!(r.zero_skipped_bytes >= 8192, "{r:?}");
    let dev = lo.contents();
    // The zero blocks inside the first data range were left alone, like holes.
    assert!(dev[16384..16384 + 8192].iter().all(|&b| b == FILL));
    assert_eq!(&dev[..10_000], &model[..10_000]);
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn windows_that_do_not_fit_are_refused_before_writing() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let (src, _) = source(tmp.path());
    let before = lo.contents();
    let seek = DEVICE - (4 << 20) + 1;
    let err =
        sparsecopy::copy(&src, &lo.dev, Window::new().seek(seek), &Options::new()).unwrap_err();
    assert!(
        matches!(err, Error::DeviceTooSmall { size: DEVICE, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("the device holds 16777216 bytes"),
        "{err}"
    );
    assert_same(&lo.contents(), &before, "device changed by a refused copy");
    // Exactly fitting is fine.
    sparsecopy::copy(&src, &lo.dev, Window::new().seek(seek - 1), &Options::new()).unwrap();
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn devices_refuse_reflink_and_copy_file_range_when_forced() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let (src, _) = source(tmp.path());
    let before = lo.contents();
    let always = Options::new().reflink(Reflink::Always);
    let err = sparsecopy::copy(&src, &lo.dev, Window::new(), &always).unwrap_err();
    assert!(matches!(err, Error::ReflinkToDevice { .. }), "{err}");
    assert_same(&lo.contents(), &before, "device changed by a refused copy");
    let cfr = Options::new().method(Method::CopyFileRange);
    let err = sparsecopy::copy(&src, &lo.dev, Window::new(), &cfr).unwrap_err();
    assert!(matches!(err, Error::MethodUnsupported { .. }), "{err}");
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn the_same_device_through_another_node_is_the_same_file() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    let rdev = std::fs::metadata(&lo.dev).unwrap().rdev();
    assert!(
        std::fs::metadata(&lo.dev)
            .unwrap()
            .file_type()
            .is_block_device()
    );
    let node = tmp.path().join("node");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rdev,
    )
    .unwrap();
    let err =
        sparsecopy::copy(&node, &lo.dev, Window::new().seek(4096), &Options::new()).unwrap_err();
    assert!(matches!(err, Error::SameFile { .. }), "{err}");
}

#[test]
#[ignore = "needs root (loop devices): run by cargo xtask fs-test"]
fn a_device_as_source_copies_into_a_sparse_file() {
    let lo = Loop::new();
    let tmp = tempdir_in(&std::env::temp_dir());
    // Zeros on most of the device, a little data.
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&lo.dev)
        .unwrap();
    dev.write_all_at(&vec![0; DEVICE as usize], 0).unwrap();
    dev.write_all_at(&noise(5, 5000), 3 << 20).unwrap();
    dev.sync_all().unwrap();
    let dst = tmp.path().join("image");
    let opts = Options::new().detect_zeros(true);
    let r = sparsecopy::copy(&lo.dev, &dst, Window::new(), &opts).unwrap();
    assert_eq!(r.backend, blockmap_core::Backend::None);
    assert_eq!(r.data_bytes, DEVICE);
    assert_same(&read(&dst), &lo.contents(), "image of the device");
    assert!(
        allocated(&dst) <= 3 * 4096,
        "{} bytes allocated",
        allocated(&dst)
    );
}
