//! Shared machinery of the loop-mounted filesystem tests (`tests/fs_*.rs`, run by
//! `cargo xtask fs-test`): the environment contract with the harness, the report of cases run,
//! a sparse model of a file's bytes with the random operations that build files, the kernel's
//! own SEEK_DATA walk, and the checks of a block map (library and CLI) against both.
//!
//! # The contract with `cargo xtask fs-test`
//! - `BLOCKMAP_FS_TEST_MOUNTS=name=/mountpoint,…`: the filesystems to test, by name (`ext4`,
//!   `ext4-1k`, `ext4-inline`, `xfs`, `btrfs`, `btrfs-zstd`, `tmpfs`). Unset: every test says
//!   it is skipped and passes, so `cargo test --workspace` runs anywhere without root.
//! - `BLOCKMAP_FS_TEST_TINY`: a 4 MiB tmpfs (to fill up); `BLOCKMAP_FS_TEST_BLOCKDEV`: a spare
//!   64 MiB block device (may be overwritten by copy tests).
//! - `BLOCKMAP_FS_TEST_REPORT`: a file to which every test appends one line per filesystem,
//!   `fs=<name> test=<test fn> cases=<n>`, so a harness can prove that nothing was skipped.
//! - `BLOCKMAP_FS_TEST_FAULTFS`: the mount point of faults (the fault-injecting FUSE
//!   filesystem, `testing/faultfs`), `BLOCKMAP_FS_TEST_FAULTFS_BACKING` its backing directory;
//!   see [`faultfs`]. Its tests report as `fs=faultfs`.
//! - `BLOCKMAP_FS_TEST_HTTP` (`name=URL,…`), `BLOCKMAP_FS_TEST_HTTP_ROOT`,
//!   `BLOCKMAP_FS_TEST_HTTP_LOG`, `BLOCKMAP_FS_TEST_HTTP_PROXY_LOG`: the HTTP servers (nginx,
//!   tinyproxy) fs-test starts; see [`http`]. Their tests report as `fs=http`.
//!
//! # Order of observations
//! Reading a preallocated range puts zero pages in the page cache, and SEEK_DATA then calls it
//! data. So every check here first takes all the maps (each right after a kernel walk, to
//! compare with), and only then reads the file.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blockmap_core::{Backend, BackendChoice, BlockMap, Error, Extent, MapOptions};
use proptest::prelude::*;
use rustix::fs::FallocateFlags;
use rustix::io::Errno;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// The unit in which the page cache, and so SEEK_DATA, sees data.
pub const PAGE: u64 = 4096;

/// The path of the `blockmap` binary under test.
pub const BLOCKMAP: &str = env!("CARGO_BIN_EXE_blockmap");

// ---------------------------------------------------------------------------------------------
// The environment contract and the report.

/// What the filesystem of a mount really is (by `statfs`), to catch a harness that forgot to
/// mount and left us testing the root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    Btrfs,
    Tmpfs,
}

impl FsKind {
    const ALL: [(FsKind, &'static str, u64); 4] = [
        (FsKind::Ext4, "ext4", 0xEF53),
        (FsKind::Xfs, "xfs", 0x5846_5342),
        (FsKind::Btrfs, "btrfs", 0x9123_683E),
        (FsKind::Tmpfs, "tmpfs", 0x0102_1994),
    ];

    fn of(path: &Path) -> Option<FsKind> {
        let st = rustix::fs::statfs(path).unwrap_or_else(|e| panic!("statfs {path:?}: {e}"));
        let magic = st.f_type as u64;
        FsKind::ALL
            .iter()
            .find(|(_, _, m)| *m == magic)
            .map(|(k, _, _)| *k)
    }

    fn prefix(self) -> &'static str {
        FsKind::ALL.iter().find(|(k, ..)| *k == self).unwrap().1
    }
}

/// One mounted filesystem of the matrix.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The harness's name for it (`ext4-1k`…).
    pub name: String,
    pub path: PathBuf,
    pub kind: FsKind,
}

impl Mount {
    /// A fresh directory on this filesystem, removed when dropped.
    pub fn scratch(&self, test: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("{test}."))
            .tempdir_in(&self.path)
            .unwrap_or_else(|e| panic!("{}: cannot make a scratch directory: {e}", self.name))
    }

    /// The block size the filesystem itself states (`statvfs.f_bsize`).
    pub fn fs_block_size(&self) -> u64 {
        rustix::fs::statvfs(&self.path)
            .unwrap_or_else(|e| panic!("statvfs {:?}: {e}", self.path))
            .f_bsize
    }
}

/// Two mounted filesystems, for a test that reads from one and writes to the other (or to
/// the same one: then both are the same mount).
#[derive(Debug, Clone)]
pub struct Pair {
    pub src: Mount,
    pub dst: Mount,
}

impl Pair {
    /// `<src>-><dst>`, as the report names a pair.
    pub fn name(&self) -> String {
        format!("{}->{}", self.src.name, self.dst.name)
    }

    /// Whether both sides are one filesystem.
    pub fn same_fs(&self) -> bool {
        self.src.path == self.dst.path
    }
}

/// The environment the harness set up.
#[derive(Debug)]
pub struct FsEnv {
    pub mounts: Vec<Mount>,
    /// A 4 MiB tmpfs, to run out of space on.
    pub tiny: Option<PathBuf>,
    /// A spare block device.
    pub blockdev: Option<PathBuf>,
    report: Option<PathBuf>,
    test: &'static str,
}

/// The harness's environment for test `test` (the test function's name), or `None` after
/// saying that the test is skipped because there is none.
pub fn fs_env(test: &'static str) -> Option<FsEnv> {
    let Some(mounts) = std::env::var_os("BLOCKMAP_FS_TEST_MOUNTS") else {
        eprintln!(
            "{test}: skipped: BLOCKMAP_FS_TEST_MOUNTS is not set (run `cargo xtask fs-test`)"
        );
        return None;
    };
    let mounts = mounts
        .to_str()
        .expect("BLOCKMAP_FS_TEST_MOUNTS is not UTF-8");
    let path_var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    Some(FsEnv {
        mounts: parse_mounts(mounts),
        tiny: path_var("BLOCKMAP_FS_TEST_TINY"),
        blockdev: path_var("BLOCKMAP_FS_TEST_BLOCKDEV"),
        report: path_var("BLOCKMAP_FS_TEST_REPORT"),
        test,
    })
}

/// Parses `name=/path,name=/path`, checking that each mount is the filesystem its name says.
fn parse_mounts(list: &str) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, path) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("BLOCKMAP_FS_TEST_MOUNTS: {item:?} is not name=path"));
        let path = PathBuf::from(path);
        assert!(
            path.is_dir(),
            "BLOCKMAP_FS_TEST_MOUNTS: {name}={path:?} is not a directory"
        );
        assert!(
            mounts.iter().all(|m| m.name != name),
            "BLOCKMAP_FS_TEST_MOUNTS: {name} given twice"
        );
        let kind = FsKind::of(&path).unwrap_or_else(|| {
            panic!("BLOCKMAP_FS_TEST_MOUNTS: {name}={path:?} is none of ext4, xfs, btrfs, tmpfs")
        });
        assert!(
            name.starts_with(kind.prefix()),
            "BLOCKMAP_FS_TEST_MOUNTS: {name}={path:?} is mounted {} (is it mounted at all?)",
            kind.prefix()
        );
        mounts.push(Mount {
            name: name.to_owned(),
            path,
            kind,
        });
    }
    assert!(!mounts.is_empty(), "BLOCKMAP_FS_TEST_MOUNTS is empty");
    mounts
}

impl FsEnv {
    /// The mounts whose names pass `select`; says so when there is none.
    pub fn mounts_where(&self, select: impl Fn(&Mount) -> bool) -> Vec<Mount> {
        let v: Vec<Mount> = self.mounts.iter().filter(|m| select(m)).cloned().collect();
        if v.is_empty() {
            eprintln!("{}: no filesystem of that kind is mounted", self.test);
        }
        v
    }

    /// Appends `fs=<fs> test=<test> cases=<cases>` to the report (one `write` of one line on
    /// an `O_APPEND` file, so concurrent tests do not interleave), and says it on stderr.
    pub fn report(&self, fs: &str, cases: u32) {
        self.report_as(self.test, fs, cases);
    }

    /// [`FsEnv::report`] under another test name: for something a test saw and counts apart
    /// (a known defect met by random cases), so that it shows in the harness's table.
    pub fn report_as(&self, test: &str, fs: &str, cases: u32) {
        append_to_report(self.report.as_deref(), test, fs, u64::from(cases));
    }

    /// Runs `body` on each mount in `mounts`, reports the cases it counted on each (also when
    /// it failed), and panics at the end with every failure, each named by its filesystem.
    #[track_caller]
    pub fn run_on(&self, mounts: &[Mount], body: impl Fn(&Mount, &mut u32) -> Result<(), String>) {
        self.run_each(mounts, |m| m.name.clone(), body);
    }

    /// Runs `body` on each pair of `pairs` (source filesystem, destination filesystem),
    /// reported as `fs=<src>-><dst>`, as [`FsEnv::run_on`] does for single filesystems.
    #[track_caller]
    pub fn run_on_pairs(
        &self,
        pairs: &[Pair],
        body: impl Fn(&Pair, &mut u32) -> Result<(), String>,
    ) {
        self.run_each(pairs, Pair::name, body);
    }

    /// Runs `body` on each item, reports the cases it counted on each under the name `name`
    /// gives it (also when it failed), and panics at the end with every failure, each named.
    #[track_caller]
    pub fn run_each<T>(
        &self,
        items: &[T],
        name: impl Fn(&T) -> String,
        body: impl Fn(&T, &mut u32) -> Result<(), String>,
    ) {
        let mut failures = Vec::new();
        for item in items {
            let name = name(item);
            let started = std::time::Instant::now();
            let mut cases = 0;
            let outcome = catch_unwind(AssertUnwindSafe(|| body(item, &mut cases)));
            self.report(&name, cases);
            eprintln!("{}: {name} took {:.1?}", self.test, started.elapsed());
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("fs={name}: {e}")),
                Err(panic) => failures.push(format!("fs={name}: panicked: {}", panic_text(&panic))),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    /// The pairs `(source, destination)` named in `names` whose filesystems are both mounted,
    /// in that order; says which are left out.
    pub fn pairs(&self, names: &[(&str, &str)]) -> Vec<Pair> {
        let find = |n: &str| self.mounts.iter().find(|m| m.name == n).cloned();
        let mut out = Vec::new();
        for &(a, b) in names {
            match (find(a), find(b)) {
                (Some(src), Some(dst)) => out.push(Pair { src, dst }),
                _ => eprintln!("{}: {a}->{b} left out: not both mounted", self.test),
            }
        }
        if out.is_empty() {
            eprintln!("{}: no pair of filesystems is mounted", self.test);
        }
        out
    }
}

/// Appends `fs=<fs> test=<test> cases=<cases>` to the report, if there is one (one `write` of
/// one line on an `O_APPEND` file, so concurrent tests do not interleave), and says it on
/// stderr.
fn append_to_report(report: Option<&Path>, test: &str, fs: &str, cases: u64) {
    let line = format!("fs={fs} test={test} cases={cases}\n");
    eprint!("{line}");
    if let Some(path) = report {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open the report {path:?}: {e}"));
        f.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write the report {path:?}: {e}"));
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(not a string)".to_owned())
}

/// `Err(message)` unless `cond`: the checks return their findings instead of panicking, so
/// proptest can shrink and the caller can name the filesystem.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
#[allow(unused_imports)] // not every test binary uses it
pub(crate) use ensure;

// ---------------------------------------------------------------------------------------------
// faultfs: the fault-injecting FUSE filesystem (its crate docs list the fault tokens).

/// `statfs` `f_type` of a FUSE filesystem.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// The faultfs mount that fs-test started, for one test.
#[derive(Debug)]
pub struct FaultFs {
    mount: PathBuf,
    backing: PathBuf,
    report: Option<PathBuf>,
    test: String,
    /// What to undo when dropped: the directories made, the paths given faults.
    made: std::sync::Mutex<(Vec<PathBuf>, Vec<PathBuf>)>,
}

/// faultfs for test `test`, or `None` after saying that the test is skipped because fs-test
/// did not start it (`BLOCKMAP_FS_TEST_FAULTFS` unset).
pub fn faultfs(test: &str) -> Option<FaultFs> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let Some(mount) = var("BLOCKMAP_FS_TEST_FAULTFS") else {
        eprintln!(
            "{test}: skipped: BLOCKMAP_FS_TEST_FAULTFS is not set (run `cargo xtask fs-test`)"
        );
        return None;
    };
    let backing = var("BLOCKMAP_FS_TEST_FAULTFS_BACKING")
        .expect("BLOCKMAP_FS_TEST_FAULTFS is set but BLOCKMAP_FS_TEST_FAULTFS_BACKING is not");
    let st = rustix::fs::statfs(&mount).unwrap_or_else(|e| panic!("statfs {mount:?}: {e}"));
    assert_eq!(
        st.f_type as u64, FUSE_SUPER_MAGIC,
        "BLOCKMAP_FS_TEST_FAULTFS={mount:?} is not a FUSE mount"
    );
    assert!(
        backing.is_dir(),
        "BLOCKMAP_FS_TEST_FAULTFS_BACKING={backing:?} is not a directory"
    );
    Some(FaultFs {
        mount,
        backing,
        report: var("BLOCKMAP_FS_TEST_REPORT"),
        test: test.to_owned(),
        made: std::sync::Mutex::new((Vec::new(), Vec::new())),
    })
}

impl FaultFs {
    /// A fresh directory for this test inside the mount (removed, with its faults cleared, when
    /// the `FaultFs` is dropped).
    pub fn dir(&self) -> PathBuf {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.", self.test))
            .tempdir_in(&self.mount)
            .unwrap_or_else(|e| panic!("faultfs: cannot make a directory in {:?}: {e}", self.mount))
            .keep();
        self.made.lock().unwrap().0.push(dir.clone());
        dir
    }

    /// Gives `path` (a path inside the mount) exactly the faults `faults` (space-separated
    /// tokens, e.g. `"read-eio=4096 short-read=100"`). Panics if faultfs refuses them.
    pub fn set(&self, path: &Path, faults: &str) {
        self.control(&format!("set {} {faults}\n", self.relative(path).display()));
        self.made.lock().unwrap().1.push(path.to_owned());
    }

    /// Removes every fault of `path` (a path inside the mount).
    pub fn clear(&self, path: &Path) {
        self.control(&format!("clear {}\n", self.relative(path).display()));
    }

    /// The same file in the backing directory, where no fault applies.
    pub fn backing(&self, path: &Path) -> PathBuf {
        self.backing.join(self.relative(path))
    }

    /// Appends `fs=faultfs test=<test> cases=<cases>` to fs-test's report.
    pub fn report(&self, test: &str, cases: u64) {
        append_to_report(self.report.as_deref(), test, "faultfs", cases);
    }

    fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        let relative = path.strip_prefix(&self.mount).unwrap_or_else(|_| {
            panic!("{path:?} is not inside the faultfs mount {:?}", self.mount)
        });
        assert!(
            !relative.as_os_str().is_empty()
                && !relative.to_string_lossy().contains(char::is_whitespace),
            "faultfs: {path:?} must be a file below the mount, without spaces"
        );
        relative
    }

    fn control(&self, line: &str) {
        let control = self.mount.join(".faultfs");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&control)
            .unwrap_or_else(|e| panic!("faultfs: cannot open {control:?}: {e}"));
        // One write(2) for the line: faultfs takes whole lines per write.
        f.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("faultfs refused {line:?}: {e}"));
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let (dirs, faulted) =
            std::mem::take(&mut *self.made.lock().unwrap_or_else(|p| p.into_inner()));
        for path in faulted {
            let line = format!("clear {}\n", self.relative(&path).display());
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(self.mount.join(".faultfs"))
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges.

/// Sorts and merges touching or overlapping ranges, dropping empty ones.
pub fn merged(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Whether `inner` lies inside one range of `outer` (sorted and merged).
pub fn covered(outer: &[Range<u64>], inner: &Range<u64>) -> bool {
    let i = outer.partition_point(|r| r.start <= inner.start);
    i > 0 && outer[i - 1].end >= inner.end
}

/// The first range of `inner` that is not inside `outer` (both sorted; `outer` merged).
pub fn first_uncovered<'a>(
    outer: &[Range<u64>],
    inner: &'a [Range<u64>],
) -> Option<&'a Range<u64>> {
    inner.iter().find(|r| !covered(outer, r))
}

/// A list of ranges for a message: the first few and how many there are.
pub fn short(v: &[Range<u64>]) -> String {
    const SHOWN: usize = 8;
    if v.len() <= SHOWN {
        format!("{v:?}")
    } else {
        format!("{:?} … ({} ranges)", &v[..SHOWN], v.len())
    }
}

/// Total length.
pub fn total(v: &[Range<u64>]) -> u64 {
    v.iter().map(|r| r.end - r.start).sum()
}

/// `r` widened to multiples of `unit`.
pub fn round_out(r: &Range<u64>, unit: u64) -> Range<u64> {
    r.start / unit * unit..r.end.div_ceil(unit) * unit
}

/// Checks the shape SPEC section 3 promises: data and holes sorted, non-empty, merged (no two
/// of a kind touch), and together tiling `window` exactly.
pub fn check_tiling(
    data: &[Range<u64>],
    holes: &[Range<u64>],
    window: Range<u64>,
) -> Result<(), String> {
    for (kind, v) in [("data", data), ("holes", holes)] {
        for r in v {
            ensure!(
                r.start < r.end,
                "{kind}: empty or reversed range {r:?} in {}",
                short(v)
            );
        }
        for w in v.windows(2) {
            ensure!(
                w[0].end < w[1].start,
                "{kind}: {:?} and {:?} unsorted or not merged",
                w[0],
                w[1]
            );
        }
    }
    let mut all: Vec<&Range<u64>> = data.iter().chain(holes).collect();
    all.sort_by_key(|r| r.start);
    let mut at = window.start;
    for r in all {
        ensure!(
            r.start == at,
            "data {} and holes {} do not tile {window:?}: at {at} comes {r:?}",
            short(data),
            short(holes)
        );
        at = r.end;
    }
    ensure!(
        at == window.end,
        "data {} and holes {} end at {at}, not at the end of {window:?}",
        short(data),
        short(holes)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The model of a file.

const CHUNK: u64 = 64 * KIB;
static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// What a file holds, byte for byte: a length and chunks of 64 KiB, absent chunks being zeros,
/// so a model of a sparse file of any size costs only its data.
#[derive(Debug, Clone, Default)]
pub struct Model {
    len: u64,
    /// Chunk index → its bytes; bytes at or past `len` are always zero.
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl Model {
    pub fn new() -> Self {
        Model::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// `pwrite(data, at)`: the file grows to cover it.
    pub fn write(&mut self, at: u64, data: &[u8]) {
        let end = at + data.len() as u64;
        let mut pos = at;
        while pos < end {
            let (idx, off) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = ((CHUNK - off as u64).min(end - pos)) as usize;
            let src = &data[(pos - at) as usize..][..n];
            if let Some(c) = self.chunks.get_mut(&idx) {
                c[off..off + n].copy_from_slice(src);
            } else if src != &ZEROS[..n] {
                let mut c = vec![0u8; CHUNK as usize].into_boxed_slice();
                c[off..off + n].copy_from_slice(src);
                self.chunks.insert(idx, c);
            }
            pos += n as u64;
        }
        self.len = self.len.max(end);
    }

    /// Zeros `range` (clipped to the length), as a punched hole does; the length is unchanged.
    pub fn zero(&mut self, range: Range<u64>) {
        let end = range.end.min(self.len);
        let mut pos = range.start;
        while pos < end {
            let (idx, off) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = ((CHUNK - off as u64).min(end - pos)) as usize;
            if n as u64 == CHUNK {
                self.chunks.remove(&idx);
            } else if let Some(c) = self.chunks.get_mut(&idx) {
                c[off..off + n].fill(0);
            }
            pos += n as u64;
        }
    }

    /// `ftruncate(len)`.
    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            let old = self.len;
            self.zero(len..old);
            self.chunks.retain(|&idx, _| idx * CHUNK < len);
        }
        self.len = len;
    }

    /// The bytes at `[at, at + buf.len())`; zeros past the end.
    pub fn read(&self, at: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = at + buf.len() as u64;
        for (&idx, c) in self.chunks.range(at / CHUNK..end.div_ceil(CHUNK)) {
            let cstart = idx * CHUNK;
            let from = at.max(cstart);
            let to = end.min(cstart + CHUNK);
            buf[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&c[(from - cstart) as usize..(to - cstart) as usize]);
        }
    }

    /// The maximal runs of non-zero bytes (the bytes a hole must never cover), merged where
    /// they touch.
    pub fn nonzero_runs(&self) -> Vec<Range<u64>> {
        const PIECE: usize = 512;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut push = |r: Range<u64>| match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        };
        for (&idx, c) in &self.chunks {
            let base = idx * CHUNK;
            for (p, piece) in c.chunks(PIECE).enumerate() {
                // Whole zero pieces are skipped with one memcmp; only the others are scanned.
                if piece == &ZEROS[..piece.len()] {
                    continue;
                }
                let pbase = base + (p * PIECE) as u64;
                let mut i = 0;
                while i < piece.len() {
                    if piece[i] == 0 {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < piece.len() && piece[i] != 0 {
                        i += 1;
                    }
                    push(pbase + start as u64..pbase + i as u64);
                }
            }
        }
        out
    }

    /// Compares the file's bytes with the model's; the first difference is the error.
    pub fn compare_with(&self, file: &File) -> Result<(), String> {
        let size = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
        ensure!(
            size == self.len,
            "the file has {size} bytes, the model {}",
            self.len
        );
        let mut got = vec![0u8; MIB as usize];
        let mut want = vec![0u8; MIB as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(MIB) as usize;
            file.read_exact_at(&mut got[..n], at)
                .map_err(|e| format!("reading the file at {at}: {e}"))?;
            self.read(at, &mut want[..n]);
            if got[..n] != want[..n] {
                let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
                return Err(format!(
                    "the file differs from the model at offset {}: {:#04x}, expected {:#04x}",
                    at + i as u64,
                    got[i],
                    want[i]
                ));
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// The bytes a write puts down.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes, none of them zero, from a seed.
    Random(u64),
    /// One non-zero byte repeated (compresses well).
    Byte(u8),
    /// Zeros: a write of zeros is data or a hole, as the filesystem likes.
    Zeros,
}

impl Fill {
    pub fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Fill::Zeros => vec![0; len],
            Fill::Byte(b) => {
                assert_ne!(b, 0);
                vec![b; len]
            }
            Fill::Random(seed) => {
                // xorshift64*: cheap, deterministic, and good enough to defeat compression.
                let mut x = seed | 1;
                let mut out = Vec::with_capacity(len + 8);
                while out.len() < len {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
                    out.extend(v.to_le_bytes().map(|b| b % 255 + 1));
                }
                out.truncate(len);
                out
            }
        }
    }
}

impl fmt::Debug for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fill::Random(seed) => write!(f, "random#{seed}"),
            Fill::Byte(b) => write!(f, "byte {b:#04x}"),
            Fill::Zeros => f.write_str("zeros"),
        }
    }
}

/// One operation on a file under test, applied to the file and to its model alike.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `pwrite` of `len` bytes at `at`.
    Write { at: u64, len: u64, fill: Fill },
    /// `fallocate(mode 0)`: may grow the file.
    Fallocate { at: u64, len: u64 },
    /// `fallocate(KEEP_SIZE)`: may allocate past the end of the file.
    FallocateKeepSize { at: u64, len: u64 },
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    PunchHole { at: u64, len: u64 },
    /// `ftruncate`, up or down.
    Truncate { len: u64 },
    /// `fsync`.
    Fsync,
    /// The trap: `fallocate(mode 0)` of `[at, at + len)`, then a write inside it, no fsync.
    PreallocThenWrite {
        at: u64,
        len: u64,
        write_at: u64,
        write_len: u64,
        fill: Fill,
    },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Write { at, len, fill } => write!(f, "write {at}+{len} {fill:?}"),
            Op::Fallocate { at, len } => write!(f, "fallocate {at}+{len}"),
            Op::FallocateKeepSize { at, len } => write!(f, "fallocate --keep-size {at}+{len}"),
            Op::PunchHole { at, len } => write!(f, "punch-hole {at}+{len}"),
            Op::Truncate { len } => write!(f, "truncate {len}"),
            Op::Fsync => f.write_str("fsync"),
            Op::PreallocThenWrite {
                at,
                len,
                write_at,
                write_len,
                fill,
            } => write!(
                f,
                "fallocate {at}+{len} then write {write_at}+{write_len} {fill:?} (no fsync)"
            ),
        }
    }
}

/// A list of ops, printed one per line (for failure messages).
pub struct OpList<'a>(pub &'a [Op]);

impl fmt::Display for OpList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.0.iter().enumerate() {
            writeln!(f, "  {i:>2}. {op:?}")?;
        }
        Ok(())
    }
}

/// Offsets below 4 MiB: page-aligned, 1 KiB-aligned (the blocks of ext4-1k) or anywhere; half
/// of them in the first 256 KiB, so that ops overlap (a write into a preallocation, a punch
/// through data) as often as they do not.
pub fn offset() -> impl Strategy<Value = u64> + Clone {
    const HOT: u64 = 256 * KIB;
    prop_oneof![
        (0..4 * MIB / PAGE).prop_map(|p| p * PAGE),
        (0..4 * MIB / KIB).prop_map(|b| b * KIB),
        0..4 * MIB,
        (0..HOT / PAGE).prop_map(|p| p * PAGE),
        (0..HOT / KIB).prop_map(|b| b * KIB),
        0..HOT,
    ]
}

/// Lengths: whole pages, whole KiB, anything, or big (up to 1 MiB).
pub fn length() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        3 => (1..=64u64).prop_map(|p| p * PAGE),
        2 => (1..=16u64).prop_map(|b| b * KIB),
        3 => 1..20_000u64,
        1 => (1..=8u64).prop_map(|n| n * 128 * KIB),
    ]
}

/// Non-zero fills, random or compressible.
pub fn fill() -> impl Strategy<Value = Fill> + Clone {
    prop_oneof![
        any::<u64>().prop_map(Fill::Random),
        (1..=255u8).prop_map(Fill::Byte)
    ]
}

/// One random op, weighted towards writes and holes.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (offset(), length(), fill()).prop_map(|(at, len, fill)| Op::Write { at, len, fill }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::Write { at, len, fill: Fill::Zeros }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::Fallocate { at, len }),
        2 => (offset(), length()).prop_map(|(at, len)| Op::FallocateKeepSize { at, len }),
        3 => (offset(), length()).prop_map(|(at, len)| Op::PunchHole { at, len }),
        2 => prop_oneof![offset(), 4 * MIB..6 * MIB].prop_map(|len| Op::Truncate { len }),
        2 => Just(Op::Fsync),
        2 => (offset(), length(), any::<u64>(), length(), fill()).prop_map(
            |(at, len, w, write_len, fill)| {
                let write_at = at + w % len;
                let write_len = write_len.min(at + len - write_at);
                Op::PreallocThenWrite { at, len, write_at, write_len, fill }
            }
        ),
    ]
}

/// What became of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The filesystem does not do that (`EOPNOTSUPP`): skipped in file and model alike.
    Unsupported(Errno),
}

/// `fallocate`, with "not supported here" told apart from real failures. Only EOPNOTSUPP
/// (and ENOSYS) mean unsupported: an EINVAL would be a bug in the op, not a missing feature.
pub fn fallocate(file: &File, flags: FallocateFlags, at: u64, len: u64) -> Result<Applied, String> {
    match rustix::fs::fallocate(file, flags, at, len) {
        Ok(()) => Ok(Applied::Done),
        Err(e @ (Errno::OPNOTSUPP | Errno::NOSYS)) => Ok(Applied::Unsupported(e)),
        Err(e) => Err(format!("fallocate({flags:?}, {at}, {len}): {e}")),
    }
}

/// Applies `op` to the file and to its model.
pub fn apply(file: &File, model: &mut Model, op: Op) -> Result<Applied, String> {
    let write = |model: &mut Model, at: u64, len: u64, fill: Fill| -> Result<(), String> {
        let bytes = fill.bytes(len as usize);
        file.write_all_at(&bytes, at)
            .map_err(|e| format!("pwrite {at}+{len}: {e}"))?;
        model.write(at, &bytes);
        Ok(())
    };
    Ok(match op {
        Op::Write { at, len, fill } => {
            write(model, at, len, fill)?;
            Applied::Done
        }
        Op::Fallocate { at, len } => {
            let r = fallocate(file, FallocateFlags::empty(), at, len)?;
            if r == Applied::Done && at + len > model.len() {
                model.set_len(at + len);
            }
            r
        }
        Op::FallocateKeepSize { at, len } => fallocate(file, FallocateFlags::KEEP_SIZE, at, len)?,
        Op::PunchHole { at, len } => {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let r = fallocate(file, flags, at, len)?;
            if r == Applied::Done {
                model.zero(at..at + len);
            }
            r
        }
        Op::Truncate { len } => {
            file.set_len(len)
                .map_err(|e| format!("ftruncate {len}: {e}"))?;
            model.set_len(len);
            Applied::Done
        }
        Op::Fsync => {
            file.sync_all().map_err(|e| format!("fsync: {e}"))?;
            Applied::Done
        }
        Op::PreallocThenWrite {
            at,
            len,
            write_at,
            write_len,
            fill,
        } => {
            // Without fallocate the write still happens: only the preallocation is skipped.
            let r = apply(file, model, Op::Fallocate { at, len })?;
            write(model, write_at, write_len, fill)?;
            r
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The kernel walk and the maps.

/// The kernel's own SEEK_DATA/SEEK_HOLE walk of the whole file, merged; `None` when this
/// filesystem has no SEEK_DATA (then it has no opinion and everything may be data).
pub fn kernel_walk(file: &File) -> Result<Option<Vec<Range<u64>>>, String> {
    let size = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
    match seekmap::DataSegments::new(file, 0..size).collect::<Result<Vec<_>, _>>() {
        Ok(v) => Ok(Some(merged(v))),
        Err(e) if e.is_unsupported() => Ok(None),
        Err(e) => Err(format!("kernel walk: {e}")),
    }
}

/// How a map was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub backend: BackendChoice,
    pub batch: u32,
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {} (batch {})", self.backend, self.batch)
    }
}

/// Every way the library is asked: auto, each backend, and FIEMAP with one extent per call
/// (every call ends full and without LAST) and with many.
pub const ASKS: [Ask; 5] = [
    Ask {
        backend: BackendChoice::Auto,
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Fiemap),
        batch: 1,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Fiemap),
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Seek),
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::None),
        batch: 4096,
    },
];

/// One map taken by the library (of the whole file or of a window), with the kernel walk taken
/// just before it.
#[derive(Debug, Clone)]
pub struct LibMap {
    pub ask: Ask,
    /// The window asked (`0..u64::MAX` for the whole file).
    pub window: Range<u64>,
    pub backend: Backend,
    pub size: u64,
    pub block_size: u32,
    pub data: Vec<Range<u64>>,
    pub holes: Vec<Range<u64>>,
    /// The raw FIEMAP extents (empty for the other backends).
    pub extents: Vec<Extent>,
    pub kernel: Option<Vec<Range<u64>>>,
}

/// Maps `file` as `ask` says; `Ok(None)` when that backend is not supported on it.
pub fn lib_map(path: &Path, file: &File, ask: Ask) -> Result<Option<LibMap>, String> {
    lib_map_window(path, file, ask, 0..u64::MAX)
}

/// Maps `window` of `file` as `ask` says; `Ok(None)` when that backend is not supported.
pub fn lib_map_window(
    path: &Path,
    file: &File,
    ask: Ask,
    window: Range<u64>,
) -> Result<Option<LibMap>, String> {
    let kernel = kernel_walk(file)?;
    let options = MapOptions {
        backend: ask.backend,
        sync: false,
        fiemap_batch: ask.batch,
    };
    let map = match BlockMap::with_path(file, path, options) {
        Ok(map) => map,
        Err(Error::Unsupported { .. }) if ask.backend != BackendChoice::Auto => return Ok(None),
        Err(e) => return Err(format!("{ask}: {e}")),
    };
    let data = map.data(window.clone()).collect::<Result<Vec<_>, _>>();
    let holes = map.holes(window.clone()).collect::<Result<Vec<_>, _>>();
    let extents = map.extents(window.clone()).collect::<Result<Vec<_>, _>>();
    let fail = |what: &str, e: Error| format!("{ask}, window {window:?}: {what}: {e}");
    Ok(Some(LibMap {
        ask,
        window: window.clone(),
        backend: map.backend(),
        size: map.size(),
        block_size: map.block_size(),
        data: data.map_err(|e| fail("data", e))?,
        holes: holes.map_err(|e| fail("holes", e))?,
        extents: extents.map_err(|e| fail("extents", e))?,
        kernel,
    }))
}

impl LibMap {
    /// The logical ranges of the raw extents.
    pub fn extent_ranges(&self) -> Vec<Range<u64>> {
        self.extents.iter().map(|e| e.logical.clone()).collect()
    }
}

/// One raw extent of `map --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliExtent {
    pub start: u64,
    pub end: u64,
    pub physical: u64,
    pub flags: Vec<String>,
}

/// The parsed output of `blockmap map --json`, with the kernel walk taken just before it.
#[derive(Debug, Clone)]
pub struct CliMap {
    pub path: String,
    pub size: u64,
    pub block_size: u64,
    pub backend: String,
    pub data: Vec<Range<u64>>,
    pub holes: Vec<Range<u64>>,
    pub extents: Vec<CliExtent>,
    pub kernel: Option<Vec<Range<u64>>>,
}

impl CliMap {
    /// The logical ranges of the raw extents.
    pub fn extent_ranges(&self) -> Vec<Range<u64>> {
        self.extents.iter().map(|e| e.start..e.end).collect()
    }
}

/// Runs `blockmap` with `args`.
pub fn run_cli<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(BLOCKMAP)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the blockmap binary")
}

/// `blockmap map --json [extra…] PATH`, checked for its exact shape and parsed. `file`, if
/// given, is walked by the kernel just before.
pub fn cli_map(path: &Path, file: Option<&File>, extra: &[&str]) -> Result<CliMap, String> {
    let kernel = match file {
        Some(f) => kernel_walk(f)?,
        None => None,
    };
    let mut args: Vec<&std::ffi::OsStr> = vec!["map".as_ref(), "--json".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    let out = run_cli(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "`blockmap map --json {extra:?} {path:?}` failed ({}): {stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("map --json printed no JSON object ({e}): {stdout:.400}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("map --json: not an object: {stdout:.400}"))?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    ensure!(
        keys == [
            "backend",
            "block_size",
            "data",
            "extents",
            "holes",
            "path",
            "size"
        ],
        "map --json: keys {keys:?}"
    );
    let u = |v: &serde_json::Value, what: &str| {
        v.as_u64()
            .ok_or_else(|| format!("map --json: {what} is not a u64: {v}"))
    };
    let ranges = |key: &str| -> Result<Vec<Range<u64>>, String> {
        let list = obj[key]
            .as_array()
            .ok_or_else(|| format!("map --json: {key} is not a list"))?;
        list.iter()
            .map(|r| match r.as_array().map(Vec::as_slice) {
                Some([a, b]) => Ok(u(a, key)?..u(b, key)?),
                _ => Err(format!("map --json: {key} holds {r}, not [start, end]")),
            })
            .collect()
    };
    let known: Vec<&str> = fiemap_sys::EXTENT_FLAG_NAMES
        .iter()
        .map(|(_, n)| *n)
        .collect();
    let mut extents = Vec::new();
    for e in obj["extents"]
        .as_array()
        .ok_or("map --json: extents is not a list")?
    {
        let e = e
            .as_object()
            .ok_or_else(|| format!("map --json: extent {e} is not an object"))?;
        let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
        keys.sort_unstable();
        ensure!(
            keys == ["end", "flags", "physical", "start"],
            "map --json: extent keys {keys:?}"
        );
        let flags = e["flags"]
            .as_array()
            .ok_or("map --json: extent flags is not a list")?
            .iter()
            .map(|f| {
                f.as_str()
                    .filter(|f| known.contains(f))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("map --json: unknown extent flag {f}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        extents.push(CliExtent {
            start: u(&e["start"], "extent start")?,
            end: u(&e["end"], "extent end")?,
            physical: u(&e["physical"], "extent physical")?,
            flags,
        });
    }
    Ok(CliMap {
        path: obj["path"]
            .as_str()
            .ok_or("map --json: path is not a string")?
            .to_owned(),
        size: u(&obj["size"], "size")?,
        block_size: u(&obj["block_size"], "block_size")?,
        backend: obj["backend"]
            .as_str()
            .ok_or("map --json: backend is not a string")?
            .to_owned(),
        data: ranges("data")?,
        holes: ranges("holes")?,
        extents,
        kernel,
    })
}

/// Checks one map's data against the model and the kernel: every non-zero byte inside data,
/// and (except for the none backend, which calls everything data) no data where the kernel
/// walk taken just before saw none.
fn check_data(
    what: &str,
    backend: &str,
    data: &[Range<u64>],
    kernel: Option<&Vec<Range<u64>>>,
    nonzero: &[Range<u64>],
) -> Result<(), String> {
    if let Some(r) = first_uncovered(data, nonzero) {
        return Err(format!(
            "{what}: non-zero bytes {r:?} are not inside a data range; data {}",
            short(data)
        ));
    }
    if backend != "none"
        && let Some(kernel) = kernel
        && let Some(r) = first_uncovered(kernel, data)
    {
        return Err(format!(
            "{what}: data {r:?} is more than the kernel's SEEK_DATA walk {}; data {}",
            short(kernel),
            short(data)
        ));
    }
    Ok(())
}

/// Checks a FIEMAP map's raw extents as SPEC section 3 describes them ("the raw detail"):
/// each non-empty, in file order without overlaps or repeats, and together covering every data
/// range (a FIEMAP map's data comes from its extents). Says every kind of fault it finds.
pub fn check_extents(
    what: &str,
    extents: &[Range<u64>],
    data: &[Range<u64>],
) -> Result<(), String> {
    let mut faults = Vec::new();
    if let Some((i, e)) = extents.iter().enumerate().find(|(_, e)| e.start >= e.end) {
        faults.push(format!("extent {i} is empty: {e:?}"));
    }
    if let Some(i) = (1..extents.len()).find(|&i| extents[i].start < extents[i - 1].end) {
        faults.push(format!(
            "extent {i} {:?} overlaps or repeats extent {} {:?}",
            extents[i],
            i - 1,
            extents[i - 1]
        ));
    }
    let union = merged(extents.to_vec());
    if let Some(r) = first_uncovered(&union, data) {
        faults.push(format!(
            "data {r:?} is in no extent (they end at {:?})",
            union.last().map(|e| e.end)
        ));
    }
    ensure!(
        faults.is_empty(),
        "{what}: {} ({} extents)",
        faults.join("; "),
        extents.len()
    );
    Ok(())
}

/// Everything [`check_against_model`] saw, for the callers' own checks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The library's maps, [`ASKS`] order, those not supported left out.
    pub maps: Vec<LibMap>,
    /// The library's maps of windows, the same way.
    pub windowed: Vec<LibMap>,
    pub cli: CliMap,
    /// The library's `auto` data taken again after the CLI ran.
    pub auto_after: Vec<Range<u64>>,
}

impl Checked {
    pub fn auto(&self) -> &LibMap {
        &self.maps[0]
    }

    /// The map taken with `backend` and FIEMAP batch `batch`, if it was supported.
    pub fn only(&self, backend: Backend, batch: u32) -> Option<&LibMap> {
        self.maps
            .iter()
            .find(|m| m.ask.backend == BackendChoice::Only(backend) && m.ask.batch == batch)
    }
}

/// Checks one library map (of the whole file or of a window) against the model's size and
/// non-zero runs and against the kernel walk taken before it.
fn check_lib_map(m: &LibMap, size: u64, nonzero: &[Range<u64>]) -> Result<(), String> {
    let what = if m.window == (0..u64::MAX) {
        m.ask.to_string()
    } else {
        format!("{}, window {:?}", m.ask, m.window)
    };
    ensure!(
        m.size == size,
        "{what}: size {} but the file has {size} bytes",
        m.size
    );
    let window = m.window.start.min(size)..m.window.end.min(size);
    check_tiling(&m.data, &m.holes, window.clone()).map_err(|e| format!("{what}: {e}"))?;
    let nonzero: Vec<Range<u64>> = nonzero
        .iter()
        .map(|r| r.start.max(window.start)..r.end.min(window.end))
        .filter(|r| r.start < r.end)
        .collect();
    check_data(
        &what,
        m.backend.name(),
        &m.data,
        m.kernel.as_ref(),
        &nonzero,
    )?;
    // (A FIEMAP map's data need not lie inside its extents: see [`check_extents`], which is
    // not part of this check.)
    if m.backend != Backend::Fiemap {
        ensure!(
            m.extents.is_empty(),
            "{what}: extents from backend {}",
            m.backend
        );
    }
    Ok(())
}

/// The check of a file against its model: maps it through the library (every [`ASKS`] that
/// works, of the whole file and of each of `windows`) and through `blockmap map --json`, each
/// right after a kernel walk; then reads the file and checks that
/// - the file's bytes are the model's;
/// - every map has the model's size, tiles its window clipped to `[0, size)` with sorted,
///   merged, non-empty data and holes, has every non-zero byte of it inside data, and (but for
///   the none backend) no more data than the kernel walk taken just before it;
/// - `auto` chose the first of FIEMAP and SEEK that works, and only FIEMAP has extents;
/// - the CLI says what the library says (size, block size, backend), and its data equals the
///   library's `auto` data when that did not change around the CLI's run.
pub fn check_against_model(path: &Path, file: &File, model: &Model) -> Result<Checked, String> {
    check_against_model_in(path, file, model, &[])
}

/// [`check_against_model`], with windowed maps of `windows` too.
pub fn check_against_model_in(
    path: &Path,
    file: &File,
    model: &Model,
    windows: &[Range<u64>],
) -> Result<Checked, String> {
    let mut maps = Vec::new();
    let mut windowed = Vec::new();
    for ask in ASKS {
        if let Some(m) = lib_map(path, file, ask)? {
            maps.push(m);
        }
        for w in windows {
            if let Some(m) = lib_map_window(path, file, ask, w.clone())? {
                windowed.push(m);
            }
        }
    }
    let cli = cli_map(path, Some(file), &[])?;
    let auto_after = lib_map(path, file, ASKS[0])?
        .expect("auto always maps")
        .data;

    // Only now read anything.
    model.compare_with(file)?;
    let nonzero = model.nonzero_runs();
    let size = model.len();
    for m in maps.iter().chain(&windowed) {
        check_lib_map(m, size, &nonzero)?;
    }
    let auto = &maps[0];
    let works = |b| maps.iter().any(|m| m.ask.backend == BackendChoice::Only(b));
    let best = [Backend::Fiemap, Backend::Seek]
        .into_iter()
        .find(|&b| works(b))
        .unwrap_or(Backend::None);
    ensure!(
        auto.backend == best,
        "auto chose {} but the best backend that works is {best}",
        auto.backend
    );
    for m in &maps[1..] {
        if let BackendChoice::Only(b) = m.ask.backend {
            ensure!(m.backend == b, "{}: got backend {}", m.ask, m.backend);
        }
    }

    ensure!(
        cli.path == path.to_string_lossy(),
        "map --json: path {:?}, expected {path:?}",
        cli.path
    );
    ensure!(
        cli.size == size,
        "map --json: size {}, the file has {size} bytes",
        cli.size
    );
    ensure!(
        cli.block_size == u64::from(auto.block_size),
        "map --json: block_size {}, the library says {}",
        cli.block_size,
        auto.block_size
    );
    ensure!(
        cli.backend == auto.backend.name(),
        "map --json: backend {}, the library's auto chose {}",
        cli.backend,
        auto.backend
    );
    check_tiling(&cli.data, &cli.holes, 0..size).map_err(|e| format!("map --json: {e}"))?;
    check_data(
        "map --json",
        &cli.backend,
        &cli.data,
        cli.kernel.as_ref(),
        &nonzero,
    )?;
    if cli.backend == "fiemap" {
        ensure!(
            cli.data.is_empty() || !cli.extents.is_empty(),
            "map --json: data {} but no extents",
            short(&cli.data)
        );
    } else {
        ensure!(
            cli.extents.is_empty(),
            "map --json: extents from backend {}",
            cli.backend
        );
    }
    for e in &cli.extents {
        ensure!(e.start < e.end, "map --json: empty extent {e:?}");
    }
    if auto.data == auto_after {
        ensure!(
            cli.data == auto.data,
            "map --json data {} differ from the library's auto data {}",
            short(&cli.data),
            short(&auto.data)
        );
    }
    Ok(Checked {
        maps,
        windowed,
        cli,
        auto_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// The number of proptest cases per filesystem: `PROPTEST_CASES`, else `default`.
pub fn cases_per_fs(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh file in `dir`, open for reading and writing.
pub fn fresh_file(dir: &Path, name: &str) -> (PathBuf, File) {
    let path = dir.join(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create {path:?}: {e}"));
    (path, file)
}

/// The HTTP servers of fs-test (`xtask/src/http_servers.rs`): nginx serving [`Http::root`] as
/// `plain` (Range honoured), `norange` (Range ignored), `auth` (basic authentication, the
/// credentials in its URL) and `redirect` (302 to `plain`), and `proxy` (tinyproxy).
#[derive(Debug)]
pub struct Http {
    /// The served directory (mode 1777).
    pub root: PathBuf,
    /// nginx's access log: `port "request" status bytes_sent "range"` a line.
    pub log: PathBuf,
    /// tinyproxy's log.
    pub proxy_log: PathBuf,
    servers: BTreeMap<String, String>,
    report: Option<PathBuf>,
}

/// The HTTP servers for test `test`, or `None` after saying that the test is skipped because
/// fs-test did not start them. Under fs-test (`BLOCKMAP_FS_TEST_MOUNTS` set) missing servers
/// fail the test.
pub fn http(test: &str) -> Option<Http> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(servers) = var("BLOCKMAP_FS_TEST_HTTP") else {
        assert!(
            var("BLOCKMAP_FS_TEST_MOUNTS").is_none(),
            "{test}: under fs-test but BLOCKMAP_FS_TEST_HTTP is not set: the HTTP servers are missing"
        );
        eprintln!("{test}: skipped: BLOCKMAP_FS_TEST_HTTP is not set (run `cargo xtask fs-test`)");
        return None;
    };
    let path = |name: &str| {
        PathBuf::from(
            var(name).unwrap_or_else(|| panic!("BLOCKMAP_FS_TEST_HTTP is set but {name} is not")),
        )
    };
    let servers: BTreeMap<String, String> = servers
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for name in ["plain", "norange", "auth", "redirect", "proxy"] {
        let url = servers
            .get(name)
            .unwrap_or_else(|| panic!("BLOCKMAP_FS_TEST_HTTP has no {name} server"));
        let authority = url.trim_start_matches("http://");
        let address = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        std::net::TcpStream::connect(address)
            .unwrap_or_else(|e| panic!("the {name} server at {address} does not answer: {e}"));
    }
    let root = path("BLOCKMAP_FS_TEST_HTTP_ROOT");
    assert!(
        root.is_dir(),
        "BLOCKMAP_FS_TEST_HTTP_ROOT={root:?} is not a directory"
    );
    Some(Http {
        root,
        log: path("BLOCKMAP_FS_TEST_HTTP_LOG"),
        proxy_log: path("BLOCKMAP_FS_TEST_HTTP_PROXY_LOG"),
        servers,
        report: var("BLOCKMAP_FS_TEST_REPORT").map(PathBuf::from),
    })
}

impl Http {
    /// The base URL of server `name` (no trailing slash; `auth`'s has its credentials).
    pub fn url(&self, name: &str) -> &str {
        &self.servers[name]
    }

    /// The port of server `name`.
    pub fn port(&self, name: &str) -> u16 {
        let url = self.url(name);
        url.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"))
    }

    /// Appends `fs=http test=<test> cases=<cases>` to fs-test's report.
    pub fn report(&self, test: &str, cases: u64) {
        append_to_report(self.report.as_deref(), test, "http", cases);
    }
}
