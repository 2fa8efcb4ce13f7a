//! `cargo xtask compare`: `blockmap copy` and `blockmap map` side by side with the tools people
//! use instead, on real loop-mounted filesystems, in one interleaved run.
//!
//! As root, for each filesystem (`--fs`, default ext4,xfs,btrfs): a 16 GiB sparse image in a
//! fresh directory under `$TMPDIR` (else `/var/tmp`), a loop device, `mkfs`, a mount. On it the
//! workloads (`--workloads`, see [`workloads`]) are made, and for each workload:
//!
//! 1. a bmap is made with `bmaptool create` (untimed);
//! 2. a warm-up: every tool once, in table order, each copy checked (blockmap's also with
//!    `cmp` of the whole files when they are of at most 1 GiB);
//! 3. `--runs` timed rounds, each running every tool once in its own shuffled order (seeded:
//!    the same orders every time), so that no tool always follows the same neighbour: what
//!    one command leaves behind (the VM's free page reporting hands memory that a command
//!    freed back to the host, and the next command to touch it pays for getting it back)
//!    falls on every tool alike. A plain rotation kept the cyclic order, and `blockmap copy`
//!    always ran right after `blockmap bmap copy`. A tool whose warm-up took longer than
//!    `--slow` seconds gets only `--slow-runs` runs; one that hits `--timeout` is not run
//!    again and is reported as such.
//!
//! Copies go to a new file on the same filesystem, checked after every run (outside the
//! timing: see [`tools::check_copy`]), then removed, and the filesystem (then the loop device's
//! backing file) is synced before the
//! next command so that no command pays for another's write-back. Nothing is dropped from
//! the page cache: warm-cache numbers, as benches/RESULTS.md says above its tables.
//!
//! The result is a Markdown table per filesystem (median, min and max wall seconds, the ratio
//! of the median to blockmap's, allocated MiB of the copy, peak RSS, check), printed, written
//! to `target/compare-report.md` and into `benches/RESULTS.md` between its `compare` markers
//! (unless `--no-results`), with the command, the machine and the date. Every mount and loop
//! device is undone by [`crate::cleanup`], also on failure or Ctrl-C.

mod tools;
mod workloads;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::builder::PossibleValuesParser;

use crate::cleanup::{self, Undo};
use crate::cmd::{self, Interruptible, find_program};
use crate::fs_test;
use tools::{Measured, Op, Setup, TOOLS, Tool};
use workloads::Source;

/// The filesystems compare knows: name, mkfs, its arguments.
const FILESYSTEMS: &[(&str, &str, &[&str])] = &[
    // No lazy inode-table init: its background zeroing competes with the timed commands.
    (
        "ext4",
        "mkfs.ext4",
        &["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    ),
    ("xfs", "mkfs.xfs", &["-f", "-q"]),
    ("btrfs", "mkfs.btrfs", &["-f", "-q"]),
];
/// The size of each filesystem's sparse image: the workloads take about 4 GiB plus one copy.
const IMAGE_SIZE: u64 = 16 << 30;
/// The prefix of compare's temporary directories.
const DIR_PREFIX: &str = "blockmap-compare-";
/// Markers of the generated section of `benches/RESULTS.md`.
const BEGIN: &str = "<!-- compare:begin (written by `cargo xtask compare`) -->";
const END: &str = "<!-- compare:end -->";

/// Arguments of `cargo xtask compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Filesystems to compare on (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FS,...",
        default_value = "ext4,xfs,btrfs",
        value_parser = PossibleValuesParser::new(FILESYSTEMS.iter().map(|f| f.0)),
    )]
    pub fs: Vec<String>,
    /// Workloads (comma separated; default all).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAME,...",
        value_parser = PossibleValuesParser::new(workloads::NAMES),
    )]
    pub workloads: Vec<String>,
    /// Timed runs per tool and workload, after one warm-up run.
    /// (3 keeps the default run within 15 minutes on a 2-core VM.)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// A tool whose warm-up took longer than this (seconds) gets only `--slow-runs` runs.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub slow: f64,
    /// Timed runs of a slow tool.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub slow_runs: u32,
    /// Kill a command after this many seconds (and run it no more on that workload).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// The reference module: bmaptool's Python mapping module (`bmaptools/Filemap.py` of a
    /// bmap-tools release that still defines `sparse_copy`), whose `sparse_copy` and
    /// `get_mapped_ranges` blockmap re-implements. When given, it is copied into the temporary
    /// directory at run time (never vendored) and timed beside the other tools; without it,
    /// its rows are skipped.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Do not rewrite the compare section of benches/RESULTS.md.
    #[arg(long)]
    pub no_results: bool,
}

/// The programs compare runs and the Debian packages that ship them.
const PROGRAMS: &[(&str, &str)] = &[
    ("losetup", "mount"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
    ("filefrag", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("xfs_io", "xfsprogs"),
    ("mkfs.btrfs", "btrfs-progs"),
    ("bmaptool", "bmap-tools"),
    ("time", "time"),
    ("python3", "python3"),
    ("cmp", "diffutils"),
    ("cp", "coreutils"),
    ("dd", "coreutils"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    // bmaptool decodes .gz with pigz when it is installed: its fastest, so the one compared.
    ("pigz", "pigz"),
    ("pbzip2", "pbzip2"),
    ("nginx", "nginx"),
    ("tinyproxy", "tinyproxy"),
];

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Seconds since the start, for the progress lines.
fn at() -> String {
    format!(
        "[{:4.0} s]",
        STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
    )
}

/// Runs `cargo xtask compare`.
pub fn run(args: &Args) -> Result<()> {
    let started = *STARTED.get_or_init(Instant::now);
    if !rustix::process::geteuid().is_root() {
        println!("compare: needs root to create loop devices and mount; skipped");
        return Ok(());
    }
    install_missing_programs()?;
    let workloads: Vec<&'static str> = workloads::NAMES
        .iter()
        .copied()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|a| a == w))
        .collect();
    cleanup::install_signal_handler()?;

    let (mut build, blockmap) = release_build()?;
    println!(
        "compare: {} building blockmap: {}",
        at(),
        cmd::describe(&build)
    );
    let status = cmd::run_inherited(&mut build)?;
    cleanup::check_interrupted()?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmd::describe(&build));
    }
    // What was built, taken now: the tree may change while the run goes on.
    let commit = commit();

    let guard = cleanup::Guard::new();
    let result = compare_all(args, &workloads, &blockmap);
    let problems = guard.finish();
    for p in &problems {
        eprintln!("compare: cleanup: {p}");
    }
    cleanup::check_interrupted()?;
    let results = result?;
    if !problems.is_empty() {
        bail!("cleanup failed: {}", problems.join("; "));
    }

    let total = started.elapsed();
    let report = render(args, &results, total, &commit);
    println!("\n{report}");
    let path = crate::target_dir().join("compare-report.md");
    fs::create_dir_all(crate::target_dir())?;
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    println!("compare: report written to {}", path.display());
    if !args.no_results {
        let results_md = crate::project_root().join("benches/RESULTS.md");
        write_results(&results_md, &report)?;
        println!("compare: section replaced in {}", results_md.display());
    }
    println!("compare: total {:.0} s", total.as_secs_f64());
    Ok(())
}

/// apt-get installs whatever is missing (`apt-get update` once, first).
/// The release build that is measured, and where it puts the binary: on a `*-linux-gnu` host,
/// statically linked (`crt-static`, glibc's static-pie), as the README's install command
/// builds it: dynamic loading of libc, libm and libgcc_s is most of the difference on the
/// millisecond rows (benches/RESULTS.md, the compare section's notes). `--target` keeps the flag off build scripts and
/// proc-macros, which cannot be static.
fn release_build() -> Result<(Command, PathBuf)> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .context("cannot run `rustc -vV`")?;
    let host = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("`rustc -vV` names no host")?;
    let mut build = crate::cargo_command();
    build.args(["build", "--release", "-p", "blockmap-cli"]);
    if host.ends_with("-linux-gnu") {
        build.args(["--target", &host, "--config"]).arg(format!(
            "target.{host}.rustflags=[\"-C\", \"target-feature=+crt-static\"]"
        ));
        Ok((
            build,
            crate::target_dir().join(&host).join("release/blockmap"),
        ))
    } else {
        Ok((build, crate::target_dir().join("release/blockmap")))
    }
}

fn install_missing_programs() -> Result<()> {
    let mut packages: Vec<&str> = PROGRAMS
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    println!("compare: {} installing {}", at(), packages.join(" "));
    let mut update = Command::new(cmd::program("apt-get"));
    update.args(["update", "-q"]);
    cmd::run_captured(&mut update, Interruptible::Yes)?;
    let mut install = Command::new(cmd::program("apt-get"));
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run_captured(&mut install, Interruptible::Yes)?;
    let still: Vec<&str> = PROGRAMS
        .iter()
        .map(|(program, _)| *program)
        .filter(|program| find_program(program).is_none())
        .collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    Ok(())
}

/// Everything measured on one filesystem.
#[derive(Debug)]
struct FsResult {
    fs: String,
    sources: Vec<SourceInfo>,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct SourceInfo {
    name: &'static str,
    size: u64,
    data_bytes: u64,
    segments: usize,
    allocated: u64,
    made_secs: f64,
}

/// One line of a table: a tool on a workload.
#[derive(Debug)]
struct Row {
    workload: &'static str,
    tool: Tool,
    /// Wall seconds of the timed runs.
    secs: Vec<f64>,
    rss_kib: u64,
    /// Allocated bytes of the copies (the largest seen).
    allocated: Option<u64>,
    /// Check failures and command failures, first of each kind.
    failures: Vec<String>,
    /// Why the tool was not run at all, or stopped.
    note: Option<String>,
}

fn compare_all(args: &Args, workloads: &[&'static str], blockmap: &Path) -> Result<Vec<FsResult>> {
    let base = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    let dir = tmp.path().canonicalize()?;
    cleanup::push(Undo::RemoveDir(tmp));
    let reference = if let Some(path) = &args.reference {
        let copy = dir.join("reference").join("filemap.py");
        fs::create_dir_all(copy.parent().expect("a file in a directory"))?;
        fs::copy(path, &copy).with_context(|| format!("cannot copy {}", path.display()))?;
        Some(copy)
    } else {
        eprintln!("compare: no --reference; the reference module's rows are skipped");
        None
    };
    // The root-fs image is made once, here (see `workloads::make_rootfs`), and copied onto
    // each filesystem: the same data and holes everywhere, and one slow `cp -a` instead of three.
    let rootfs = if workloads.contains(&"rootfs") {
        let made = Instant::now();
        let image = dir.join("rootfs.img");
        workloads::make_rootfs(&image, &dir)?;
        println!(
            "compare: {} root-fs image made in {:.1} s",
            at(),
            made.elapsed().as_secs_f64()
        );
        Some(image)
    } else {
        None
    };
    let http = if workloads.contains(&"rootfs") {
        http_server(&dir)
    } else {
        None
    };
    let runs_log = crate::target_dir().join("compare-runs.tsv");
    fs::write(&runs_log, "at_s\tfs\tworkload\ttool\twarm_up\tsecs\n")
        .with_context(|| format!("cannot write {}", runs_log.display()))?;
    let mut results = Vec::new();
    for (fs_name, mkfs, mkfs_args) in FILESYSTEMS
        .iter()
        .filter(|f| args.fs.iter().any(|a| a == f.0))
    {
        cleanup::check_interrupted()?;
        let mark = cleanup::depth();
        let scratch = dir.join(fs_name);
        fs::create_dir_all(&scratch)?;
        let mountpoint = dir.join("mnt").join(fs_name);
        fs::create_dir_all(&mountpoint)?;
        let image = scratch.join("fs.img");
        let device = fs_test::attach_loop(&image, IMAGE_SIZE)?;
        let mut make = Command::new(cmd::program(mkfs));
        make.args(*mkfs_args).arg(&device);
        cmd::run_captured(&mut make, Interruptible::Yes)?;
        let mut mount = Command::new(cmd::program("mount"));
        mount.args(["-t", fs_name]).arg(&device).arg(&mountpoint);
        fs_test::mount_with(&mut mount, &mountpoint)?;
        println!(
            "compare: {} {fs_name} on {} at {}",
            at(),
            device.display(),
            mountpoint.display()
        );
        let setup = Setup {
            blockmap: blockmap.to_owned(),
            time: cmd::program("time"),
            reference: reference.clone(),
            scratch: scratch.clone(),
            fs: fs_name.to_string(),
            timeout: Duration::from_secs(args.timeout),
            runs_log: runs_log.clone(),
            backing: image.clone(),
            http: http.clone(),
        };
        let result = compare_on(args, &setup, workloads, &mountpoint, rootfs.as_deref());
        // Unmount and detach now: the next filesystem gets the space and the memory.
        let problems = cleanup::unwind_to(mark);
        let _ = fs::remove_file(&image);
        println!("compare: {} {fs_name} unmounted and detached", at());
        let result = result?;
        if !problems.is_empty() {
            bail!("cleanup of {fs_name} failed: {}", problems.join("; "));
        }
        results.push(result);
    }
    Ok(results)
}

/// The `plain` server of [`crate::http_servers`] (nginx, stopped by the clean-up stack) for
/// the URL rows: its base URL and served directory; `None`, said once, if it cannot start.
fn http_server(dir: &Path) -> Option<(String, PathBuf)> {
    let env = match crate::http_servers::start(dir) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("compare: no HTTP server, the URL rows are skipped: {e:#}");
            return None;
        }
    };
    let value = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let base = value("BLOCKMAP_FS_TEST_HTTP")?
        .split(',')
        .find_map(|s| s.strip_prefix("plain=").map(str::to_owned))?;
    Some((base, PathBuf::from(value("BLOCKMAP_FS_TEST_HTTP_ROOT")?)))
}

fn compare_on(
    args: &Args,
    setup: &Setup,
    workloads: &[&'static str],
    mountpoint: &Path,
    rootfs: Option<&Path>,
) -> Result<FsResult> {
    let mut result = FsResult {
        fs: setup.fs.clone(),
        sources: Vec::new(),
        rows: Vec::new(),
    };
    let dst = mountpoint.join("copy.img");
    for &name in workloads {
        cleanup::check_interrupted()?;
        let made = Instant::now();
        let mut src = workloads::make(name, mountpoint, rootfs)
            .with_context(|| format!("cannot make the {name} workload on {}", setup.fs))?;
        let made_secs = made.elapsed().as_secs_f64();
        println!(
            "compare: {} {}/{name}: {} data segments, {} MiB data of {} MiB, made in {made_secs:.1} s",
            at(),
            setup.fs,
            src.data.len(),
            src.data_bytes() >> 20,
            src.size >> 20
        );
        result.sources.push(SourceInfo {
            name,
            size: src.size,
            data_bytes: src.data_bytes(),
            segments: src.data.len(),
            allocated: src.allocated,
            made_secs,
        });
        let mut bmap = Command::new(cmd::program("bmaptool"));
        bmap.args(["--quiet", "create", "-o"])
            .arg(setup.bmap_of(&src))
            .arg(&src.path);
        let bmap_started = Instant::now();
        cmd::run_captured(&mut bmap, Interruptible::Yes)?;
        println!(
            "compare: {} {}/{name}: bmaptool create took {:.1} s (untimed)",
            at(),
            setup.fs,
            bmap_started.elapsed().as_secs_f64()
        );
        if name == tools::BMAP_WORKLOAD {
            if let Some(link) = setup.served(&src) {
                std::os::unix::fs::symlink(&src.path, &link)
                    .with_context(|| format!("cannot link {}", link.display()))?;
            }
            for (ext, argv) in tools::COMPRESSORS {
                let packed = setup.compressed(&src, ext);
                let started = Instant::now();
                // run_captured takes stdin and stdout: the shell redirects.
                let mut c = Command::new(cmd::program("sh"));
                c.arg("-c")
                    .arg(format!("{} < \"$1\" > \"$2\"", argv.join(" ")))
                    .arg("sh")
                    .arg(&src.path)
                    .arg(&packed);
                cmd::run_captured(&mut c, Interruptible::Yes)
                    .with_context(|| format!("cannot make {}", packed.display()))?;
                println!(
                    "compare: {} {}/{name}: {} made in {:.1} s ({} MiB, untimed)",
                    at(),
                    setup.fs,
                    packed.display(),
                    started.elapsed().as_secs_f64(),
                    fs::metadata(&packed)?.len() >> 20
                );
            }
        }
        src.refresh()?;
        result
            .rows
            .extend(measure_workload(args, setup, &mut src, &dst, mountpoint)?);
        // The source is done with: free its space for the next one.
        fs::remove_file(&src.path)?;
        for (ext, _) in tools::COMPRESSORS {
            let _ = fs::remove_file(setup.compressed(&src, ext));
        }
        if let Some(link) = setup.served(&src) {
            let _ = fs::remove_file(link);
        }
        sync(setup, mountpoint)?;
    }
    Ok(result)
}

/// The warm-up and the interleaved runs of every tool on one workload.
fn measure_workload(
    args: &Args,
    setup: &Setup,
    src: &mut Source,
    dst: &Path,
    mountpoint: &Path,
) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = TOOLS
        .iter()
        .map(|&tool| Row {
            workload: src.name,
            tool,
            secs: Vec::new(),
            rss_kib: 0,
            allocated: None,
            failures: Vec::new(),
            note: tool.skip_reason(src.name, setup),
        })
        .collect();
    let mut wanted = vec![0u32; rows.len()];
    // The warm-up, with the extra checks of `run_one`.
    for (i, row) in rows.iter_mut().enumerate() {
        if row.note.is_some() {
            continue;
        }
        let m = run_one(setup, row, src, dst, mountpoint, true)?;
        wanted[i] = if m.timed_out {
            row.note = Some(format!("skipped: >{} s (warm-up timed out)", args.timeout));
            0
        } else if m.secs > args.slow {
            args.runs.min(args.slow_runs)
        } else {
            args.runs
        };
        // The warm-up's time is not a sample; what it found wrong stays.
        row.secs.clear();
    }
    src.refresh()?;
    let n = rows.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..args.runs.max(1) {
        rng.shuffle(&mut order);
        for &i in &order {
            let row = &mut rows[i];
            if row.note.is_some() || row.secs.len() >= wanted[i] as usize {
                continue;
            }
            let m = run_one(setup, row, src, dst, mountpoint, false)?;
            if m.timed_out {
                row.note = Some(format!("stopped: a run took >{} s", args.timeout));
            }
        }
    }
    for row in &rows {
        println!(
            "compare: {} {}/{}: {:<28} {}",
            at(),
            setup.fs,
            src.name,
            row.tool.name,
            row.note.clone().unwrap_or_else(|| format!(
                "median {:.3} s of {}{}",
                median(&row.secs),
                row.secs.len(),
                if row.failures.is_empty() {
                    ""
                } else {
                    "  FAIL"
                }
            ))
        );
    }
    Ok(rows)
}

/// Times one run of `row.tool`, checks a copy, removes it and syncs the filesystem.
fn run_one(
    setup: &Setup,
    row: &mut Row,
    src: &Source,
    dst: &Path,
    mountpoint: &Path,
    warm_up: bool,
) -> Result<Measured> {
    cleanup::check_interrupted()?;
    let command = row.tool.command(setup, src, dst);
    let m = tools::measure(setup, &command)?;
    log_run(setup, row, src, warm_up, m.secs)?;
    row.secs.push(m.secs);
    row.rss_kib = row.rss_kib.max(m.rss_kib.unwrap_or(0));
    let mut failure = m.failure.clone();
    if row.tool.op == Op::BmapCreate {
        let created = setup.created_bmap();
        if failure.is_none() {
            failure = tools::check_bmap(&created, src)?;
        }
        let _ = fs::remove_file(&created);
    }
    if matches!(
        row.tool.op,
        Op::Copy | Op::BmapCopy | Op::BmapCopyOf(_) | Op::BmapCopyUrl
    ) {
        if failure.is_none() {
            // `cmp` of the whole files, an oracle independent of `check_copy`'s own
            // comparison, on blockmap's warm-up copy of files of at most 1 GiB (not the 4 GiB
            // root-fs image nor the 1 TiB file: reading their holes costs more than all the
            // timed runs).
            let full_cmp = warm_up && row.tool.name == "blockmap copy" && src.size <= 1 << 30;
            let checked = tools::check_copy(src, dst, full_cmp)
                .with_context(|| format!("cannot check the copy of {}", row.tool.name))?;
            row.allocated = Some(row.allocated.unwrap_or(0).max(checked.allocated));
            failure = checked.failure;
        }
        match fs::remove_file(dst) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", dst.display()));
            }
            _ => {}
        }
    }
    if warm_up && failure.is_none() && row.tool.name == "blockmap map --json" {
        failure = tools::check_map(setup, src)?;
    }
    if let Some(f) = failure
        && !m.timed_out
        && !row.failures.contains(&f)
    {
        eprintln!(
            "compare: {} {}/{}: {}: {f}",
            at(),
            setup.fs,
            src.name,
            row.tool.name
        );
        row.failures.push(f);
    }
    sync(setup, mountpoint)?;
    Ok(m)
}

/// One line of `target/compare-runs.tsv`.
fn log_run(setup: &Setup, row: &Row, src: &Source, warm_up: bool, secs: f64) -> Result<()> {
    use std::io::Write as _;
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(&setup.runs_log)
        .with_context(|| format!("cannot append to {}", setup.runs_log.display()))?;
    let at = STARTED.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
    writeln!(
        log,
        "{at:.1}\t{}\t{}\t{}\t{warm_up}\t{secs:.4}",
        setup.fs, src.name, row.tool.name
    )?;
    Ok(())
}

/// `syncfs` on the filesystem under test, then `fdatasync` of the loop device's backing
/// file: syncfs only moves the data into the backing file's page cache, whose write-back to
/// the disk then overlapped the next timed command (a flusher thread on one of two cores,
/// which cost two-threaded commands most; figures in benches/RESULTS.md, "Measurements behind
/// design choices").
fn sync(setup: &Setup, mountpoint: &Path) -> Result<()> {
    let dir = fs::File::open(mountpoint)?;
    rustix::fs::syncfs(&dir).with_context(|| format!("cannot sync {}", mountpoint.display()))?;
    let backing = fs::File::open(&setup.backing)?;
    backing
        .sync_data()
        .with_context(|| format!("cannot sync {}", setup.backing.display()))?;
    Ok(())
}

fn median(secs: &[f64]) -> f64 {
    let mut v = secs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// The report: command, machine, date, then per filesystem its workloads and its table.
fn render(args: &Args, results: &[FsResult], total: Duration, commit: &str) -> String {
    let mut out = String::new();
    let command: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(out, "Command: `cargo xtask {}`  ", command.join(" "));
    let _ = writeln!(out, "Machine: {}  ", machine());
    let _ = writeln!(out, "Date: {}  ", date());
    let _ = writeln!(out, "Commit: {commit}  ");
    let _ = writeln!(
        out,
        "Runs: {} timed per tool after one warm-up ({} for a tool whose warm-up took >{} s), \
         each round in its own shuffled order of the tools (seeded); per-command timeout {} s. Total runtime: {:.0} s.",
        args.runs,
        args.runs.min(args.slow_runs),
        args.slow,
        args.timeout,
        total.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "\nWall seconds, warm cache, destination a new file on the same filesystem. Ratio = the \
         tool's median / blockmap's (copy rows: `blockmap copy`; map rows: \
         `blockmap map --json`; bmap rows: `blockmap bmap create`/`copy`); above 1 means \
         blockmap is faster. Allocated = the copy's \
         `st_blocks * 512`. Check: the copy equals SRC (every data range of either compared, \
         plus `cmp` of the whole files on blockmap's warm-up copy of the 1 GiB files) and has no data where \
         SRC has holes (by `SEEK_DATA`), else FAIL; `blockmap map --json`'s data ranges equal \
         the kernel's `SEEK_DATA` walk, or leave out only ranges that read as zeros (on the \
         warm-up run); the other maps: exit status 0; a made bmap file parses, its own \
         checksum holds, it has SRC's size and a checksum per range, and what it leaves \
         unmapped reads as zeros. Peak RSS from GNU `time -f %M`."
    );
    for r in results {
        let _ = writeln!(out, "\n### {}\n", r.fs);
        for s in &r.sources {
            let _ = writeln!(
                out,
                "- `{}`: {}; {:.0} MiB of data in {} segments, {:.0} MiB allocated, size {} MiB \
                 (made in {:.1} s)",
                s.name,
                workloads::describe(s.name),
                s.data_bytes as f64 / MIB,
                s.segments,
                s.allocated as f64 / MIB,
                s.size >> 20,
                s.made_secs
            );
        }
        let _ = writeln!(
            out,
            "\n| workload | op | tool | runs | median s | min s | max s | ratio vs blockmap | \
             allocated MiB | peak RSS MiB | check |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        // Each op's first tool (blockmap's) is its baseline.
        let baselines: BTreeMap<(&str, &str), f64> = r
            .rows
            .iter()
            .filter(|row| TOOLS.iter().find(|t| t.op == row.tool.op) == Some(&row.tool))
            .filter(|row| !row.secs.is_empty())
            .map(|row| ((row.workload, row.tool.op.name()), median(&row.secs)))
            .collect();
        for row in &r.rows {
            let _ = write!(
                out,
                "| {} | {} | {} |",
                row.workload,
                row.tool.op.name(),
                row.tool.name
            );
            if row.secs.is_empty() {
                let note = row.note.as_deref().unwrap_or("not run");
                let _ = writeln!(out, " 0 | — | — | — | — | — | — | {note} |");
                continue;
            }
            let med = median(&row.secs);
            let min = row.secs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = row.secs.iter().copied().fold(0.0, f64::max);
            let ratio = baselines
                .get(&(row.workload, row.tool.op.name()))
                .map_or("—".to_string(), |b| format!("{:.2}", med / b));
            let allocated = row
                .allocated
                .map_or("—".to_string(), |a| format!("{:.1}", a as f64 / MIB));
            let check = match (row.failures.is_empty(), &row.note) {
                (true, None) => "OK".to_string(),
                (true, Some(note)) => note.clone(),
                (false, _) => format!("**FAIL**: {}", row.failures.join("; ")),
            };
            let _ = writeln!(
                out,
                " {} | {} | {} | {} | {ratio} | {allocated} | {:.1} | {check} |",
                row.secs.len(),
                secs(med),
                secs(min),
                secs(max),
                row.rss_kib as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\nNotes: `blockmap` is the release build linked statically on a `*-linux-gnu` host \
         (`crt-static`, as the README's install command builds it; 0.4 ms less start-up than \
         the dynamic build). `bmaptool copy` is given the bmap made by `bmaptool create` beforehand \
         (untimed), and so is `blockmap bmap copy`; both `bmap copy` rows verify every range's \
         checksum and end with an fsync (bmaptool's defaults), as the `copy` row of `bmaptool \
         copy` does; the other copy rows do neither. The bmap rows run on the root-fs image \
         only. `bmaptool copy --nobmap` would copy every byte, holes included, and is not \
         measured. The reference module is the `filemap.py` given by `--reference`, copied at run \
         time and imported by `python3` with `os.errno` patched back in; its rows include \
         Python's start-up. `xfs_io` runs with `-r` (read-only) on every filesystem. \
         `prealloc`: a read of an unwritten extent (`bmaptool create` reads every extent FIEMAP \
         reports, unwritten ones included, before anything is timed) leaves zero pages in the \
         page cache, and from then on the kernel's `SEEK_DATA` reports those ranges as data; \
         so the segments listed above are the file as made, the tools that follow \
         `SEEK_DATA` copy the whole GiB (zeros included), and the check compares against \
         SRC's map at check time."
    );
    out
}

/// Three significant figures, at least three decimals below 1 s.
fn secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.1}")
    } else if s >= 1.0 {
        format!("{s:.2}")
    } else {
        format!("{s:.3}")
    }
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(String::new(), |kib| format!(", {} GiB RAM", kib >> 20));
    format!("nproc {nproc}, {cpu}, Linux {kernel}{mem}")
}

/// The workspace's commit, `+dirty` when the tree has changes (the measured binary is built
/// from the tree).
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(crate::project_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}+dirty") } else { head }
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces the text between the compare markers of `path` (or appends the section).
fn write_results(path: &Path, report: &str) -> Result<()> {
    let old = fs::read_to_string(path)
        .unwrap_or_else(|_| "# Benchmark results\n\n## `cargo xtask compare`\n\n".to_string());
    let section = format!("{BEGIN}\n{report}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!("{}{section}\n", old),
    };
    fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}
