//! The fs-test environment: the mounted filesystems (`BLOCKMAP_FS_TEST_MOUNTS`), the tiny
//! tmpfs and the spare block device, and the report of cases run on each.

use std::fs::File;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

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

    /// The filesystem `path` is on, if it is one of these.
    pub fn of(path: &Path) -> Option<FsKind> {
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

/// The harness's environment for test `test` (the test function's name). Panics without one:
/// a test that needs the filesystems is `#[ignore]`d, and run by `cargo xtask fs-test`.
pub fn fs_env(test: &'static str) -> FsEnv {
    let Some(mounts) = std::env::var_os("BLOCKMAP_FS_TEST_MOUNTS") else {
        panic!("{test}: BLOCKMAP_FS_TEST_MOUNTS is not set: run it by `cargo xtask fs-test`");
    };
    let mounts = mounts
        .to_str()
        .expect("BLOCKMAP_FS_TEST_MOUNTS is not UTF-8");
    let path_var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    FsEnv {
        mounts: parse_mounts(mounts),
        tiny: path_var("BLOCKMAP_FS_TEST_TINY"),
        blockdev: path_var("BLOCKMAP_FS_TEST_BLOCKDEV"),
        report: path_var("BLOCKMAP_FS_TEST_REPORT"),
        test,
    }
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
        append_to_report(self.report.as_deref(), self.test, fs, u64::from(cases));
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
pub(crate) fn append_to_report(report: Option<&Path>, test: &str, fs: &str, cases: u64) {
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

/// Holds fs-test's one spare block device (`BLOCKMAP_FS_TEST_BLOCKDEV`) for the caller: the
/// filesystem tests run as threads of one process, and each test that writes, mounts or
/// compares that device takes it for as long as it uses it.
pub fn hold_blockdev() -> std::sync::MutexGuard<'static, ()> {
    static SPARE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it left nothing to repair: each test fills it anew.
    SPARE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
