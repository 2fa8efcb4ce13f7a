//! faultfs, the fault-injecting FUSE filesystem fs-test mounts (its crate docs list the fault
//! tokens): a directory per test, faults set and cleared through its control file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::env::append_to_report;

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

/// faultfs for test `test`. Panics when fs-test did not start it (`BLOCKMAP_FS_TEST_FAULTFS`
/// unset): the tests that need it are `#[ignore]`d, and run by `cargo xtask fs-test`.
pub fn faultfs(test: &str) -> FaultFs {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let Some(mount) = var("BLOCKMAP_FS_TEST_FAULTFS") else {
        panic!("{test}: BLOCKMAP_FS_TEST_FAULTFS is not set: run it by `cargo xtask fs-test`");
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
    FaultFs {
        mount,
        backing,
        report: var("BLOCKMAP_FS_TEST_REPORT"),
        test: test.to_owned(),
        made: std::sync::Mutex::new((Vec::new(), Vec::new())),
    }
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
