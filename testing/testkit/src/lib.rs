//! The test kit of blockmap's integration tests (a dev-dependency only): files of known layout
//! built by random operations with a byte model beside them ([`model`]), the one seeded
//! generator of test bytes ([`noise`]), range helpers ([`ranges`]), the library's and the
//! CLI's maps and their checks ([`maps`]), the JSON Schemas of the CLI's `--json` output
//! ([`schema`]), the directories to test in ([`files`]), and the environment `cargo xtask
//! fs-test` sets up: its mounts and report ([`env`](mod@env)), faultfs
//! ([`faultfs`](mod@faultfs)) and the HTTP servers ([`http`](mod@http)).
//!
//! # The contract with `cargo xtask fs-test`
//! - `BLOCKMAP_FS_TEST_MOUNTS=name=/mountpoint,…`: the filesystems to test, by name (`ext4`,
//!   `ext4-1k`, `ext4-inline`, `xfs`, `btrfs`, `btrfs-zstd`, `tmpfs`). The tests that need
//!   them are `#[ignore]`d, so `cargo test --workspace` runs anywhere without root, and fail
//!   when run without them.
//! - `BLOCKMAP_FS_TEST_TINY`: a 4 MiB tmpfs (to fill up); `BLOCKMAP_FS_TEST_BLOCKDEV`: a spare
//!   64 MiB block device (may be overwritten by copy tests).
//! - `BLOCKMAP_FS_TEST_REPORT`: a file to which every test appends one line per filesystem,
//!   `fs=<name> test=<test fn> cases=<n>`, so a harness can prove that nothing was skipped.
//! - `BLOCKMAP_FS_TEST_FAULTFS`: the mount point of faultfs (the fault-injecting FUSE
//!   filesystem, `testing/faultfs`), `BLOCKMAP_FS_TEST_FAULTFS_BACKING` its backing directory;
//!   see [`faultfs`](mod@faultfs). Its tests report as `fs=faultfs`.
//! - `BLOCKMAP_FS_TEST_HTTP` (`name=URL,…`), `BLOCKMAP_FS_TEST_HTTP_ROOT`,
//!   `BLOCKMAP_FS_TEST_HTTP_LOG`, `BLOCKMAP_FS_TEST_HTTP_PROXY_LOG`: the HTTP servers (nginx,
//!   tinyproxy) fs-test starts; see [`http`](mod@http). Their tests report as `fs=http`.
//! - `BLOCKMAP_TEST_DIRS`: more directories (comma separated) for the tests that run in
//!   `$TMPDIR` and `/dev/shm` anyway ([`files::test_dirs`]); fs-test sets it to its mounts.
//!
//! # Order of observations
//! Reading a preallocated range puts zero pages in the page cache, and SEEK_DATA then calls it
//! data. So every check here first takes all the maps (each right after a kernel walk, to
//! compare with), and only then reads the file.

#![allow(clippy::print_stderr)] // tests say on stderr what they ran and where

pub mod env;
pub mod faultfs;
pub mod files;
pub mod http;
pub mod maps;
pub mod model;
pub mod ranges;
pub mod schema;

pub use env::*;
pub use faultfs::*;
pub use files::*;
pub use http::*;
pub use maps::*;
pub use model::*;
pub use ranges::*;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// The unit in which the page cache, and so SEEK_DATA, sees data.
pub const PAGE: u64 = 4096;

/// `Err(message)` unless `cond`: the checks return their findings instead of panicking, so
/// proptest can shrink and the caller can name the filesystem.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// `program`, after checking that it runs (`--version`); a test that needs a tool fails
/// without it, naming the Debian `package` to install (`.ci/run` installs them all).
pub fn tool(program: &'static str, package: &str) -> &'static str {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "{program} is not installed (apt-get install {package}): this test needs it"
    );
    program
}

/// `len` pseudo-random bytes from `seed` (the same for the same seed), some of them zero: the
/// one generator of the tests' data.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
}

/// [`noise`] without zeros, so that data never looks like a hole.
pub fn nonzero_noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = noise(seed, len);
    for b in &mut out {
        *b = *b % 255 + 1;
    }
    out
}
