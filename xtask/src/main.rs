//! `cargo xtask`: the workspace's own tasks, written in Rust so that they run wherever the
//! workspace builds.
//!
//! - `cargo xtask fs-test [--only ext4,xfs,…] [--keep-going] [-- TEST ARGS]`: as root, makes
//!   ext4 (4 KiB and 1 KiB blocks, inline data), xfs, btrfs (plain and `compress-force=zstd`)
//!   and tmpfs on loop devices in a temporary directory, mounts faultfs (the fault-injecting
//!   FUSE filesystem of `testing/faultfs`), runs the filesystem tests of blockmap-cli
//!   (`tests/fs_*.rs`) and sparsecopy against them, prints how many cases ran where, and undoes every mount and loop device it
//!   made. Without root it says so and skips. See [`fs_test`].
//! - `cargo xtask compare [--fs ext4,xfs,btrfs] [--workloads a,b,…] [--runs N] [--reference
//!   FILE]`: as root, times `blockmap copy` and `blockmap map` against cp, dd, bmaptool,
//!   filefrag, xfs_io and the reference module (when given) on loop-mounted filesystems, checks every copy, and writes the tables
//!   into `benches/RESULTS.md`. See [`compare`].
//! - `cargo xtask demo`: the main job on a sample it makes itself (see [`demo`]).
//! - `cargo xtask ci`: `cargo fmt --check`, `cargo machete`, `cargo clippy -D warnings`,
//!   `cargo test --workspace`, then `fs-test`; the command `.ci/run` runs and the README's "run every test".
//!   See [`ci`].
//!
//! The tidy checks (a `//!` header on every file, `unsafe` only where it belongs and always with
//! a `// SAFETY:` comment, no printing in libraries, library functions of at most 100 lines and
//! files of at most 700 (`tidy/size.rs`), every crate of `crates/` publishable with its licences
//! and README (`tidy/package.rs`)) are ordinary tests of this crate, so
//! `cargo test --workspace` runs them.

// xtask is a command-line tool for developers and CI: what it prints is its whole interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]
#![forbid(unsafe_code)]

mod ci;
mod cleanup;
mod cmd;
mod compare;
mod demo;
mod fs_test;
mod http_servers;
mod report;
mod test_build;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The workspace's own tasks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about,
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the filesystem tests of blockmap-cli and sparsecopy on loop-mounted ext4, xfs, btrfs
    /// and tmpfs, and on faultfs (always mounted). Needs root; without it, says so and skips.
    FsTest(fs_test::Args),
    /// Time blockmap against cp, dd, bmaptool, filefrag, xfs_io and the reference module on
    /// loop-mounted ext4, xfs and btrfs; write the tables into benches/RESULTS.md. Needs root;
    /// without it, says so and skips.
    Compare(compare::Args),
    /// The main job on a sample made on the spot: build blockmap, make a sparse 1 GiB image
    /// under target/demo/ and map it.
    Demo,
    /// Run every check in order and stop at the first failure: cargo fmt --check, cargo
    /// machete, cargo clippy -D warnings, cargo test --workspace, fs-test.
    Ci,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::FsTest(args) => fs_test::run(&args).map(|_| ()),
        Task::Compare(args) => compare::run(&args),
        Task::Ci => ci::run(),
        Task::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cleanup::Interrupted>().is_some() {
                // The shell's convention for "ended by SIGINT".
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn project_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Where cargo puts its build output: `$CARGO_TARGET_DIR`, else `target/` in the root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => project_root().join(dir),
        _ => project_root().join("target"),
    }
}

/// The cargo that runs us (cargo sets `$CARGO` for `cargo run`), else the one on `$PATH`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A `cargo` command run in the workspace root. `cargo xtask` runs this program with its own
/// package's variables set, which are not the workspace's: `CARGO_PKG_NAME` is removed
/// (cargo-machete takes it as the sign that it is not run as `cargo machete`, and then reads
/// its `machete` argument as a path; cargo sets it anew for each unit it builds).
fn cargo_command() -> std::process::Command {
    let mut command = std::process::Command::new(cargo());
    command
        .current_dir(project_root())
        .env_remove("CARGO_PKG_NAME");
    command
}
