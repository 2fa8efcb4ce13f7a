//! Files in the directories the tests run in: where they are, files built from a layout, the
//! `dd` model of a copy, and byte checks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::model::{Model, Op, apply};

/// Where to run the filesystem-touching tests that need no harness: `$TMPDIR`, `/dev/shm`
/// (tmpfs), and every directory of `BLOCKMAP_TEST_DIRS` (comma separated; fs-test sets it to
/// its loop-mounted filesystems).
pub fn test_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    if Path::new("/dev/shm").is_dir() {
        dirs.push("/dev/shm".into());
    }
    dirs.extend(env_dirs());
    dirs
}

/// The directories of `BLOCKMAP_TEST_DIRS`.
fn env_dirs() -> Vec<PathBuf> {
    std::env::var("BLOCKMAP_TEST_DIRS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Creates `path` with `ops` applied; returns its bytes as the model has them.
pub fn build(path: &Path, ops: &[Op]) -> Vec<u8> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let mut model = Model::new();
    for op in ops {
        apply(&file, &mut model, *op).unwrap_or_else(|e| panic!("{path:?}: {op:?}: {e}"));
    }
    assert_eq!(file.metadata().unwrap().len(), model.len());
    let mut bytes = vec![0; model.len() as usize];
    model.read(0, &mut bytes);
    bytes
}

/// What `dd bs=1 skip=S seek=K count=L conv=notrunc` leaves in DST: the old contents (if
/// any), grown with zeros to the end of the window when the window is not empty, with the
/// window replaced.
pub fn dd(
    src: &[u8],
    old_dst: Option<&[u8]>,
    skip: u64,
    seek: u64,
    length: Option<u64>,
) -> Vec<u8> {
    let mut dst = old_dst.map(<[u8]>::to_vec).unwrap_or_default();
    let skip = skip as usize;
    assert!(skip <= src.len());
    let len = (src.len() - skip).min(length.map_or(usize::MAX, |l| l as usize));
    if len == 0 {
        return dst;
    }
    let end = seek as usize + len;
    if dst.len() < end {
        dst.resize(end, 0);
    }
    dst[seek as usize..end].copy_from_slice(&src[skip..skip + len]);
    dst
}

/// The whole content of a file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Bytes allocated to a file (`st_blocks * 512`).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Where two byte strings first differ, for readable failures.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: differs at byte {first} (got {} bytes, want {}): got {:?}, want {:?}",
            got.len(),
            want.len(),
            &got[first..(first + 16).min(got.len())],
            &want[first..(first + 16).min(want.len())]
        );
    }
}

/// Whether files in `dir` can share extents (FICLONE of a one-block file works).
pub fn reflink_works(dir: &Path) -> bool {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::write(&a, vec![7u8; 4096]).unwrap();
    let src = File::open(&a).unwrap();
    let dst = File::create(&b).unwrap();
    rustix::fs::ioctl_ficlone(&dst, &src).is_ok()
}

/// A fresh temporary directory under `dir`.
pub fn tempdir_in(dir: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blockmap-test-")
        .tempdir_in(dir)
        .unwrap()
}

/// Whether the tests run as root (the owner of `/proc/self` is the effective user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
