//! `cargo xtask fs-test`: the filesystem tests of blockmap-cli and sparsecopy on real,
//! loop-mounted filesystems.
//!
//! As root, in a fresh temporary directory (under `$TMPDIR`, else `/tmp`):
//!
//! | name | what |
//! | --- | --- |
//! | `ext4` | `mkfs.ext4 -b 4096`, 256 MiB |
//! | `ext4-1k` | `mkfs.ext4 -b 1024`, 256 MiB |
//! | `ext4-inline` | `mkfs.ext4 -O inline_data`, 256 MiB, 4 KiB blocks |
//! | `xfs` | `mkfs.xfs`, 512 MiB |
//! | `btrfs` | `mkfs.btrfs`, 512 MiB |
//! | `btrfs-zstd` | `mkfs.btrfs`, 512 MiB, mounted `-o compress-force=zstd` |
//! | `tmpfs` | `mount -t tmpfs -o size=512M` |
//!
//! plus a 4 MiB tmpfs to fill up (ENOSPC tests), a spare 64 MiB loop device without a
//! filesystem (block-device destinations), and `faultfs` (the fault-injecting FUSE
//! filesystem of `testing/faultfs`, built with the tests) serving `<dir>/faultfs-backing` at
//! `<dir>/mnt/faultfs`. Each image is a sparse file on its own loop device
//! (`losetup --find --show`). `--only` chooses among the filesystems of the table; faultfs is
//! always mounted. Then it runs the tests `#[ignore]`d in a plain `cargo test`: blockmap-cli's
//! `main` test executable with `--ignored` (the `fs_*` modules), and sparsecopy's with
//! `--include-ignored` (all its tests: the `$TMPDIR` ones run in the mounts). They are built,
//! before anything is mounted, by `cargo test --workspace --no-run`, the build of `cargo test
//! --workspace` (why: [`crate::test_build`]), and run with:
//!
//! - `BLOCKMAP_FS_TEST_MOUNTS`: `name=mountpoint` pairs, comma separated, in the order above;
//! - `BLOCKMAP_TEST_DIRS`: the same mount points, comma separated (sparsecopy's tests);
//! - `BLOCKMAP_FS_TEST_TINY`: the mount point of the 4 MiB tmpfs;
//! - `BLOCKMAP_FS_TEST_BLOCKDEV`: the spare loop device, e.g. `/dev/loop7`;
//! - `BLOCKMAP_FS_TEST_FAULTFS`: faultfs's mount point; `BLOCKMAP_FS_TEST_FAULTFS_BACKING`:
//!   its backing directory (the same files, without faults);
//! - `BLOCKMAP_FS_TEST_HTTP`, `BLOCKMAP_FS_TEST_HTTP_ROOT`, `BLOCKMAP_FS_TEST_HTTP_LOG`,
//!   `BLOCKMAP_FS_TEST_HTTP_PROXY_LOG`: the HTTP servers (nginx, tinyproxy) of
//!   [`crate::http_servers`], whose tests report as `http`;
//! - `BLOCKMAP_FS_TEST_REPORT`: a file to which the tests append `fs=<name> test=<test>
//!   cases=<n>` lines (`fs=<a>-><b>` for a test on a pair; `tiny` and `blockdev` are names
//!   too), see [`crate::report`].
//!
//! Afterwards it prints the cases per filesystem and test, writes the same table to
//! `target/fs-test-report.txt`, and fails if the tests failed or if any mounted filesystem ran
//! no case at all (faultfs too; with a test name filter in the test arguments that is only
//! noted, since a filter for faultfs's tests runs nothing on ext4). Mounts, loop devices and the directory are undone in every case (see
//! [`crate::cleanup`]). The mount points are mode 1777, so that tests may run a command as an
//! unprivileged user there.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::builder::PossibleValuesParser;

use crate::cleanup::{self, Undo};
use crate::cmd::{self, Interruptible, find_program};
use crate::report;
use crate::test_build;

/// The filesystems to test, in the order of `BLOCKMAP_FS_TEST_MOUNTS`.
const FILESYSTEMS: &[Fs] = &[
    // 4 KiB blocks said explicitly: for an image this small mkfs.ext4 would pick 1 KiB.
    Fs::ext4("ext4", &["-b", "4096"]),
    Fs::ext4("ext4-1k", &["-b", "1024"]),
    Fs::ext4("ext4-inline", &["-b", "4096", "-O", "inline_data"]),
    Fs::on_loop("xfs", 512, "mkfs.xfs", &["-f", "-q"], "xfsprogs", None),
    Fs::on_loop(
        "btrfs",
        512,
        "mkfs.btrfs",
        &["-f", "-q"],
        "btrfs-progs",
        None,
    ),
    Fs::on_loop(
        "btrfs-zstd",
        512,
        "mkfs.btrfs",
        &["-f", "-q"],
        "btrfs-progs",
        Some("compress-force=zstd"),
    ),
    Fs {
        name: "tmpfs",
        kind: Kind::Tmpfs { size: "512M" },
    },
];

/// The small tmpfs for ENOSPC tests.
const TINY_SIZE: &str = "4M";
/// The size of the spare loop device.
const BLOCKDEV_MIB: u64 = 64;
/// The package that ships losetup, mount and umount on Debian.
const MOUNT_PACKAGE: &str = "mount";
/// The test runs of fs-test: a package (its one test binary, [`TEST_TARGET`], whose tests that
/// need fs-test are `#[ignore]`d) and which of its tests: see the module docs.
const TEST_RUNS: [(&str, &str); 2] = [
    ("blockmap-cli", "--ignored"),
    ("sparsecopy", "--include-ignored"),
];
/// The integration test target of every package.
const TEST_TARGET: &str = "main";
/// The report's name for the faultfs mount, and its directory under `mnt/`.
const FAULTFS: &str = "faultfs";
/// The report's name for the HTTP tests (`crate::http_servers`).
const HTTP: &str = "http";
/// `statfs` `f_type` of a FUSE filesystem.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;
/// How long faultfs may take to mount.
const FAULTFS_MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of fs-test's temporary directories, also used to spot leftovers of a killed run.
const DIR_PREFIX: &str = "blockmap-fs-test-";

#[derive(Debug)]
struct Fs {
    name: &'static str,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A sparse image on a loop device, made by `mkfs`.
    Loop {
        size_mib: u64,
        mkfs: &'static str,
        mkfs_args: &'static [&'static str],
        /// The Debian package that ships `mkfs`.
        package: &'static str,
        fstype: &'static str,
        mount_options: Option<&'static str>,
    },
    /// A tmpfs of that size.
    Tmpfs { size: &'static str },
}

impl Fs {
    const fn ext4(name: &'static str, extra: &'static [&'static str]) -> Fs {
        // `set_up` puts `-F -q` (no questions, no chatter) before these.
        Fs::on_loop(name, 256, "mkfs.ext4", extra, "e2fsprogs", None)
    }

    const fn on_loop(
        name: &'static str,
        size_mib: u64,
        mkfs: &'static str,
        mkfs_args: &'static [&'static str],
        package: &'static str,
        mount_options: Option<&'static str>,
    ) -> Fs {
        let fstype = match mkfs.as_bytes() {
            b"mkfs.ext4" => "ext4",
            b"mkfs.xfs" => "xfs",
            _ => "btrfs",
        };
        Fs {
            name,
            kind: Kind::Loop {
                size_mib,
                mkfs,
                mkfs_args,
                package,
                fstype,
                mount_options,
            },
        }
    }
}

/// Arguments of `cargo xtask fs-test`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Test only these filesystems (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FS,...",
        value_parser = PossibleValuesParser::new(FILESYSTEMS.iter().map(|fs| fs.name)),
    )]
    pub only: Vec<String>,
    /// Go on past a filesystem that cannot be set up (a missing mkfs, a failed mount) and test
    /// the others, and run sparsecopy's tests even when blockmap-cli's failed; still exits
    /// non-zero at the end if anything failed.
    #[arg(long)]
    pub keep_going: bool,
    /// Arguments for the test binaries, after `--` (a test name filter, `--nocapture`, …).
    #[arg(last = true, value_name = "TEST ARGS")]
    pub test_args: Vec<String>,
}

/// How fs-test ended when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not root: nothing was run.
    Skipped,
    Passed,
}

/// Runs `cargo xtask fs-test`.
pub fn run(args: &Args) -> Result<Outcome> {
    if !rustix::process::geteuid().is_root() {
        println!("fs-test: needs root to create loop devices and mount; skipped");
        return Ok(Outcome::Skipped);
    }
    let selected: Vec<&Fs> = FILESYSTEMS
        .iter()
        .filter(|fs| args.only.is_empty() || args.only.iter().any(|n| n == fs.name))
        .collect();
    let mut problems = Vec::new();
    let usable = check_tools(&selected, args.keep_going, &mut problems)?;
    warn_about_leftovers();

    cleanup::install_signal_handler()?;
    println!("fs-test: building the tests (cargo test --workspace --no-run)");
    let built = test_build::build()?;

    let guard = cleanup::Guard::new();
    let mut dir = None;
    let result = set_up_and_test(&usable, args, &built, &mut problems, &mut dir);
    let started = Instant::now();
    let cleanup_problems = guard.finish();
    println!(
        "fs-test: cleaned up in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for problem in &cleanup_problems {
        eprintln!("fs-test: cleanup: {problem}");
    }
    if let Some(dir) = &dir {
        problems.extend(leftovers(dir));
    }
    problems.extend(
        cleanup_problems
            .into_iter()
            .map(|p| format!("cleanup: {p}")),
    );
    // A command stopped by the signal fails in its own way; say what really happened.
    cleanup::check_interrupted()?;
    result?;
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("fs-test: FAILED: {problem}");
        }
        bail!("fs-test failed: {}", problems.join("; "));
    }
    println!("fs-test: passed");
    Ok(Outcome::Passed)
}

/// Finds every program fs-test needs. A missing mkfs is an error naming its package, or with
/// `--keep-going` a problem reported at the end while the other filesystems are tested.
fn check_tools<'a>(
    selected: &[&'a Fs],
    keep_going: bool,
    problems: &mut Vec<String>,
) -> Result<Vec<&'a Fs>> {
    let missing_base: Vec<&str> = ["losetup", "mount", "umount"]
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !missing_base.is_empty() {
        bail!(
            "{} not found: install the {MOUNT_PACKAGE} and util-linux packages \
             (apt-get install {MOUNT_PACKAGE} util-linux)",
            missing_base.join(", ")
        );
    }
    let mut usable = Vec::new();
    let mut missing = Vec::new();
    for fs in selected {
        match fs.kind {
            Kind::Loop { mkfs, package, .. } if find_program(mkfs).is_none() => {
                missing.push(format!(
                    "{}: {mkfs} not found: install the {package} package (apt-get install {package})",
                    fs.name
                ));
            }
            _ => usable.push(*fs),
        }
    }
    if !missing.is_empty() {
        if !keep_going {
            bail!("{}", missing.join("; "));
        }
        for m in &missing {
            eprintln!("fs-test: skipping {m}");
        }
        problems.extend(missing);
    }
    Ok(usable)
}

/// Starts faultfs over `<dir>/faultfs-backing` at `<dir>/mnt/faultfs` (both mode 1777: the
/// mount's root has the backing directory's mode) and waits until it is mounted. The process
/// and its mount are recorded for clean-up. Returns the mount point and the backing directory.
fn start_faultfs(dir: &Path, program: &Path) -> Result<(PathBuf, PathBuf)> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the fuse module (modprobe fuse)");
    }
    let backing = dir.join("faultfs-backing");
    let mountpoint = dir.join("mnt").join(FAULTFS);
    for d in [&backing, &mountpoint] {
        fs::create_dir(d)?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o1777))?;
    }
    let mut command = Command::new(program);
    // Its own process group: a Ctrl-C is for fs-test to handle, which unmounts it last.
    command
        .arg(&backing)
        .arg(&mountpoint)
        .stdin(std::process::Stdio::null())
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot run `{}`", cmd::describe(&command)))?;
    let pid = child.id();
    cleanup::push(Undo::StopFaultfs {
        child,
        mountpoint: mountpoint.clone(),
    });
    let started = Instant::now();
    loop {
        cleanup::check_interrupted()?;
        let is_fuse =
            rustix::fs::statfs(&mountpoint).is_ok_and(|st| st.f_type as u64 == FUSE_SUPER_MAGIC);
        if is_fuse && cleanup::is_mounted(&mountpoint) {
            return Ok((mountpoint, backing));
        }
        // Gone or a zombie: it failed to mount (its stderr says why).
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some(Some('Z'))) {
            bail!("`{}` exited without mounting", cmd::describe(&command));
        }
        if started.elapsed() > FAULTFS_MOUNT_TIMEOUT {
            bail!(
                "`{}` did not mount within {} s",
                cmd::describe(&command),
                FAULTFS_MOUNT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes the temporary directory, the filesystems, the tiny tmpfs and the spare device, runs
/// the tests and reads their report. Everything made is on the clean-up stack; the caller
/// unwinds it. Sets `dir_out` to the temporary directory (to look for leftovers afterwards).
fn set_up_and_test(
    fss: &[&Fs],
    args: &Args,
    built: &test_build::Built,
    problems: &mut Vec<String>,
    dir_out: &mut Option<PathBuf>,
) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir()
        .context("cannot create a temporary directory")?;
    // Canonical, because the kernel reports mount points and backing files that way.
    let dir = tmp.path().canonicalize()?;
    cleanup::push(Undo::RemoveDir(tmp));
    *dir_out = Some(dir.clone());
    // Traversable by everyone, like the mount points below it.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    fs::create_dir(dir.join("img"))?;
    fs::create_dir(dir.join("mnt"))?;

    let mut mounted: Vec<(&str, PathBuf)> = Vec::new();
    for fs in fss {
        cleanup::check_interrupted()?;
        match set_up(fs, &dir).with_context(|| format!("cannot set up {}", fs.name)) {
            Ok(mountpoint) => mounted.push((fs.name, mountpoint)),
            Err(e) if args.keep_going && e.downcast_ref::<cleanup::Interrupted>().is_none() => {
                eprintln!("fs-test: {e:#}; going on without it");
                problems.push(format!("{e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    cleanup::check_interrupted()?;
    let tiny = dir.join("mnt").join("tiny");
    fs::create_dir(&tiny)?;
    mount_tmpfs(&tiny, TINY_SIZE).context("cannot set up the tiny tmpfs")?;
    fs::set_permissions(&tiny, fs::Permissions::from_mode(0o1777))?;
    let blockdev = attach_loop(&dir.join("img").join("blockdev.img"), BLOCKDEV_MIB << 20)
        .context("cannot set up the spare loop device")?;
    cleanup::check_interrupted()?;
    let (faultfs, faultfs_backing) =
        start_faultfs(&dir, built.bin("faultfs")?).context("cannot start faultfs")?;
    let http = crate::http_servers::start(&dir).context("cannot start the HTTP servers")?;
    let report_path = dir.join("report.txt");
    File::create(&report_path)?;
    if mounted.is_empty() {
        bail!("no filesystem could be set up");
    }

    let mounts = mounted
        .iter()
        .map(|(name, path)| format!("{name}={}", path.display()))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "fs-test: set up {} filesystems, a {TINY_SIZE} tmpfs, a spare loop device and faultfs \
         in {:.2} s",
        mounted.len(),
        started.elapsed().as_secs_f64()
    );
    for (name, path) in &mounted {
        println!("fs-test:   {name:<12} {}", path.display());
    }
    println!("fs-test:   {:<12} {}", "tiny", tiny.display());
    println!("fs-test:   {:<12} {}", "blockdev", blockdev.display());
    println!(
        "fs-test:   {:<12} {} (backing {})",
        FAULTFS,
        faultfs.display(),
        faultfs_backing.display()
    );
    if let Some((_, servers)) = http.first() {
        println!("fs-test:   {HTTP:<12} {}", ::blockmap_bmap::redact(servers));
    }

    let dirs: Vec<String> = mounted
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    let mut runs = Vec::new();
    let started = Instant::now();
    for (package, select) in TEST_RUNS {
        let exe = built.test(package, TEST_TARGET)?;
        let mut test = Command::new(&exe.path);
        test.current_dir(&exe.package_dir)
            .arg(select)
            .args(&args.test_args)
            .env("BLOCKMAP_FS_TEST_MOUNTS", &mounts)
            .env("BLOCKMAP_TEST_DIRS", dirs.join(","))
            .env("BLOCKMAP_FS_TEST_TINY", &tiny)
            .env("BLOCKMAP_FS_TEST_BLOCKDEV", &blockdev)
            .env("BLOCKMAP_FS_TEST_FAULTFS", &faultfs)
            .env("BLOCKMAP_FS_TEST_FAULTFS_BACKING", &faultfs_backing)
            .env("BLOCKMAP_FS_TEST_REPORT", &report_path)
            .envs(http.iter().map(|(k, v)| (k, v)));
        println!(
            "fs-test: running {package}'s tests: `{}`",
            cmd::describe(&test)
        );
        let status = cmd::run_inherited(&mut test)?;
        cleanup::check_interrupted()?;
        runs.push((package, test, status));
        if !status.success() {
            problems.push(format!("the tests of {package} failed ({status})"));
            if !args.keep_going {
                break;
            }
        }
    }
    let test_secs = started.elapsed().as_secs_f64();
    let passed = runs.len() == TEST_RUNS.len() && runs.iter().all(|(_, _, s)| s.success());

    let text = fs::read_to_string(&report_path)
        .with_context(|| format!("cannot read {}", report_path.display()))?;
    let report = report::parse(&text);
    let names: Vec<&str> = mounted
        .iter()
        .map(|(name, _)| *name)
        .chain([FAULTFS, HTTP])
        .collect();
    // A test name filter may leave out every test of a filesystem (a filter for faultfs's
    // tests runs nothing on ext4): then that is only noted.
    let filtered = args.test_args.iter().any(|a| !a.starts_with('-'));
    let mut out = String::new();
    for (package, test, status) in &runs {
        let _ = writeln!(
            out,
            "fs-test: {package}: `{}` ({status})",
            cmd::describe(test)
        );
    }
    let _ = writeln!(
        out,
        "tests: {} in {test_secs:.1} s; filesystems: {}",
        if passed { "passed" } else { "FAILED" },
        names.join(", ")
    );
    out.push_str(&report.render(&names));
    for line in &report.malformed {
        problems.push(format!("malformed report line: {line:?}"));
    }
    for name in report.unknown_filesystems(&names) {
        let _ = writeln!(
            out,
            "note: the report names {name}, which fs-test did not mount"
        );
    }
    for name in report.unexercised(&names) {
        if filtered {
            let _ = writeln!(
                out,
                "note: no test case ran on {name} (the test name filter)"
            );
            continue;
        }
        let problem = format!("no test case ran on {name}: the tests skipped a mounted filesystem");
        let _ = writeln!(out, "FAILED: {problem}");
        problems.push(problem);
    }
    let path = crate::target_dir().join("fs-test-report.txt");
    println!();
    print!("{out}");
    println!();
    fs::create_dir_all(crate::target_dir())?;
    fs::write(&path, &out).with_context(|| format!("cannot write {}", path.display()))?;
    println!("fs-test: report written to {}", path.display());
    Ok(())
}

/// Makes one filesystem and mounts it at `<dir>/mnt/<name>`.
fn set_up(fs: &Fs, dir: &Path) -> Result<PathBuf> {
    let mountpoint = dir.join("mnt").join(fs.name);
    fs::create_dir(&mountpoint)?;
    match fs.kind {
        Kind::Loop {
            size_mib,
            mkfs,
            mkfs_args,
            fstype,
            mount_options,
            ..
        } => {
            let image = dir.join("img").join(format!("{}.img", fs.name));
            let device = attach_loop(&image, size_mib << 20)?;
            let mut make = Command::new(cmd::program(mkfs));
            if fstype == "ext4" {
                make.args(["-F", "-q"]);
            }
            make.args(mkfs_args).arg(&device);
            cmd::run_captured(&mut make, Interruptible::Yes)?;
            let mut mount = Command::new(cmd::program("mount"));
            mount.args(["-t", fstype]);
            if let Some(options) = mount_options {
                mount.args(["-o", options]);
            }
            mount.arg(&device).arg(&mountpoint);
            mount_with(&mut mount, &mountpoint)?;
        }
        Kind::Tmpfs { size } => mount_tmpfs(&mountpoint, size)?,
    }
    fs::set_permissions(&mountpoint, fs::Permissions::from_mode(0o1777))?;
    Ok(mountpoint)
}

fn mount_tmpfs(mountpoint: &Path, size: &str) -> Result<()> {
    let mut mount = Command::new(cmd::program("mount"));
    mount
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size}"))
        .arg("tmpfs")
        .arg(mountpoint);
    mount_with(&mut mount, mountpoint)
}

/// Runs a mount command and, if the mount point is now mounted (even when the command was
/// interrupted after mounting), records it for clean-up.
pub(crate) fn mount_with(mount: &mut Command, mountpoint: &Path) -> Result<()> {
    let result = cmd::run_captured(mount, Interruptible::Yes);
    if cleanup::mount_points().iter().any(|p| p == mountpoint) {
        cleanup::push(Undo::Unmount(mountpoint.to_owned()));
    }
    result.map(drop)
}

/// Creates a sparse image of `size` bytes and attaches it to a free loop device, which is
/// recorded for clean-up. Returns the device.
pub(crate) fn attach_loop(image: &Path, size: u64) -> Result<PathBuf> {
    File::create_new(image)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("cannot create {}", image.display()))?;
    let mut losetup = Command::new(cmd::program("losetup"));
    losetup.args(["--find", "--show"]).arg(image);
    let result = cmd::run_captured(&mut losetup, Interruptible::Yes);
    // Whatever losetup said (it may have been interrupted after attaching), every device
    // that now serves our image is ours to detach.
    let attached = loops_backed_by(|backing| backing == image);
    for device in &attached {
        cleanup::push(Undo::Detach {
            device: device.clone(),
            backing: image.to_owned(),
        });
    }
    let out = result?;
    let device = PathBuf::from(out.trim());
    if !attached.contains(&device) {
        return Err(anyhow!(
            "`{}` answered {:?}, which is not a loop device serving {}",
            cmd::describe(&losetup),
            out.trim(),
            image.display()
        ));
    }
    Ok(device)
}

/// The loop devices whose backing file passes `filter`.
fn loops_backed_by(filter: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut devices: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("loop"))
        .map(|name| Path::new("/dev").join(name))
        .filter(|dev| cleanup::loop_backing_file(dev).is_some_and(|b| filter(&b)))
        .collect();
    devices.sort();
    devices
}

/// Mounts or loop devices of this run that survived the clean-up.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut left: Vec<String> = cleanup::mounts_below(dir)
        .iter()
        .map(|m| format!("{} is still mounted", m.display()))
        .collect();
    left.extend(
        loops_backed_by(|b| b.starts_with(dir))
            .iter()
            .map(|d| format!("{} is still attached{}", d.display(), autoclear_note(d))),
    );
    left
}

/// Explains a loop device that is detached only when its last user lets go of it.
fn autoclear_note(device: &Path) -> &'static str {
    let flag = device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| fs::read_to_string(format!("/sys/block/{n}/loop/autoclear")).ok());
    if flag.is_some_and(|f| f.trim() == "1") {
        " (a process that outlived the tests still uses it; the kernel detaches it when that \
         process lets go)"
    } else {
        ""
    }
}

/// Warns about loop devices and mounts left by an earlier run that was killed outright
/// (SIGKILL leaves no chance to clean up). They are not touched: they may be in use.
fn warn_about_leftovers() {
    let is_ours = |p: &Path| {
        p.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|s| s.starts_with(DIR_PREFIX))
        })
    };
    for device in loops_backed_by(is_ours) {
        eprintln!(
            "fs-test: warning: {} is left from an earlier fs-test run; `losetup -d {}` \
             detaches it once unmounted",
            device.display(),
            device.display()
        );
    }
    for mountpoint in cleanup::mount_points().iter().filter(|p| is_ours(p)) {
        eprintln!(
            "fs-test: warning: {} is left mounted by an earlier fs-test run; `umount {}` \
             removes it",
            mountpoint.display(),
            mountpoint.display()
        );
    }
}
