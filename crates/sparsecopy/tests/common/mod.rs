//! Shared by the integration tests: files of known layout with a byte model beside them, the
//! dd model of a copy, the directories to test in, and checks.

#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::print_stderr)] // skipped cases say why on the test output

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rustix::fs::FallocateFlags;

/// Where to run the filesystem-touching tests: `$TMPDIR` (ext4 on the test machine),
/// `/dev/shm` (tmpfs), and every directory of `BLOCKMAP_TEST_DIRS` (comma separated; the
/// loop-mounted filesystems of `cargo xtask fs-test`).
pub fn test_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    if Path::new("/dev/shm").is_dir() {
        dirs.push("/dev/shm".into());
    }
    dirs.extend(env_dirs());
    dirs
}

/// The directories of `BLOCKMAP_TEST_DIRS`.
pub fn env_dirs() -> Vec<PathBuf> {
    std::env::var("BLOCKMAP_TEST_DIRS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Deterministic pseudo-random bytes (splitmix64), some of them zero.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One operation on a file, mirrored on its model.
#[derive(Debug, Clone)]
pub enum Op {
    /// Random bytes.
    Write { at: u64, len: u64, seed: u64 },
    /// Zeros written: allocated data that reads as zeros.
    WriteZeros { at: u64, len: u64 },
    /// Preallocation (`keep_size`: past the end without growing it).
    Fallocate { at: u64, len: u64, keep_size: bool },
    /// A hole punched.
    Punch { at: u64, len: u64 },
    /// Size set.
    Truncate { size: u64 },
    /// `fsync` (most layouts are mapped with dirty, unflushed data).
    Sync,
}

const MAX_OFFSET: u64 = 1 << 20;

/// An offset: often block-aligned, sometimes not.
pub fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..MAX_OFFSET / 4096).prop_map(|b| b * 4096),
        0..MAX_OFFSET,
        (0..MAX_OFFSET / 1024).prop_map(|b| b * 1024),
    ]
}

/// A length: small or up to 256 KiB, aligned or not.
pub fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        1..64u64,
        (1..64u64).prop_map(|b| b * 4096),
        1..(256u64 << 10),
    ]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), length(), any::<u64>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        1 => (offset(), length()).prop_map(|(at, len)| Op::WriteZeros { at, len }),
        1 => (offset(), length(), any::<bool>())
            .prop_map(|(at, len, keep_size)| Op::Fallocate { at, len, keep_size }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::Punch { at, len }),
        1 => offset().prop_map(|size| Op::Truncate { size }),
        1 => Just(Op::Sync),
    ]
}

/// A layout: a few operations on an empty file.
pub fn layout() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..12)
}

/// Applies `ops` to `file` and to its model.
pub fn apply(file: &File, model: &mut Vec<u8>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write { at, len, seed } => {
                let data = bytes(seed, len as usize);
                file.write_all_at(&data, at).unwrap();
                let end = (at + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[at as usize..end].copy_from_slice(&data);
            }
            Op::WriteZeros { at, len } => {
                file.write_all_at(&vec![0; len as usize], at).unwrap();
                let end = (at + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[at as usize..end].fill(0);
            }
            Op::Fallocate { at, len, keep_size } => {
                let mode = if keep_size {
                    FallocateFlags::KEEP_SIZE
                } else {
                    FallocateFlags::empty()
                };
                if rustix::fs::fallocate(file, mode, at, len).is_ok() && !keep_size {
                    let end = (at + len) as usize;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                }
            }
            Op::Punch { at, len } => {
                let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
                if rustix::fs::fallocate(file, mode, at, len).is_ok() {
                    let end = ((at + len) as usize).min(model.len());
                    if (at as usize) < end {
                        model[at as usize..end].fill(0);
                    }
                }
            }
            Op::Truncate { size } => {
                file.set_len(size).unwrap();
                model.resize(size as usize, 0);
            }
            Op::Sync => file.sync_all().unwrap(),
        }
    }
}

/// Creates `path` with `ops` applied; returns its model.
pub fn build(path: &Path, ops: &[Op]) -> Vec<u8> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let mut model = Vec::new();
    apply(&file, &mut model, ops);
    assert_eq!(file.metadata().unwrap().len(), model.len() as u64);
    model
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
        .prefix("sparsecopy-test-")
        .tempdir_in(dir)
        .unwrap()
}

/// Whether the tests run as root (the owner of `/proc/self` is the effective user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
