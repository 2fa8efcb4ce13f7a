//! Undoing what fs-test did to the machine, whatever happens: success, failed tests, an error,
//! a panic, Ctrl-C or SIGTERM.
//!
//! Every mount, loop device, temporary directory and the faultfs process is pushed on one
//! process-wide stack the moment it exists. [`Guard`] unwinds the stack in reverse order when it is dropped (so also
//! while a panic unwinds), and [`Guard::finish`] does the same and returns what went wrong.
//! The stack is global rather than owned by the guard so that the signal handler can reach it
//! too: on Ctrl-C or SIGTERM the handler stops the running child (the tests, or a mkfs), the
//! main thread sees [`Interrupted`] at its next step, returns, and the guard cleans up as
//! usual. Should the main thread not finish within a grace period (a child stuck in the
//! kernel), the handler unwinds the stack itself and exits. A mutex around the stack makes
//! the two paths exclusive, and each undo step is taken off the stack before it runs, so
//! nothing is undone twice.
//!
//! Undo steps are careful about what is not theirs: a loop device is detached only if its
//! backing file is still the one fs-test attached, and a directory is removed only when
//! nothing is mounted below it any more.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use tempfile::TempDir;

use crate::cmd::{self, Interruptible};

/// One thing to undo.
#[derive(Debug)]
pub enum Undo {
    /// Remove a temporary directory (after everything below it is unmounted).
    RemoveDir(TempDir),
    /// Detach a loop device that we attached to `backing`.
    Detach { device: PathBuf, backing: PathBuf },
    /// Unmount a filesystem that we mounted there.
    Unmount(PathBuf),
    /// Unmount the faultfs FUSE filesystem served by `child`, and reap the process.
    StopFaultfs { child: Child, mountpoint: PathBuf },
    /// Stop a server (nginx, tinyproxy) that runs in the foreground: SIGTERM, then SIGKILL.
    StopServer { name: &'static str, child: Child },
}

static STACK: Mutex<Vec<Undo>> = Mutex::new(Vec::new());

fn stack() -> MutexGuard<'static, Vec<Undo>> {
    // A panic while the lock was held leaves the stack as consistent as ever: each entry is
    // popped before it is undone.
    STACK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records something to undo; the last one pushed is undone first.
pub fn push(undo: Undo) {
    stack().push(undo);
}

/// How many steps are recorded now: a mark for [`unwind_to`].
pub fn depth() -> usize {
    stack().len()
}

/// Undoes the steps recorded since `mark` was taken with [`depth`], last first, and leaves the
/// older ones for later: a task that sets up and tears down one filesystem after another
/// (`cargo xtask compare`). Returns one line per step that did not go cleanly.
pub fn unwind_to(mark: usize) -> Vec<String> {
    let mut stack = stack();
    let mut problems = Vec::new();
    while stack.len() > mark {
        let Some(undo) = stack.pop() else { break };
        if let Err(e) = undo.run() {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}

/// Unwinds the stack when dropped. Create it before the first [`push`].
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    pub fn new() -> Self {
        Guard(())
    }

    /// Undoes everything now; returns one line per step that did not go cleanly.
    pub fn finish(self) -> Vec<String> {
        unwind()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // After `finish` the stack is empty and this does nothing; after a panic or an early
        // return it is the whole clean-up.
        for problem in unwind() {
            eprintln!("fs-test: cleanup: {problem}");
        }
    }
}

/// Undoes every step on the stack, last first, going on past failures.
fn unwind() -> Vec<String> {
    let mut stack = stack();
    let mut problems = Vec::new();
    while let Some(undo) = stack.pop() {
        if let Err(e) = undo.run() {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}

impl Undo {
    fn run(self) -> Result<()> {
        match self {
            Undo::Unmount(mountpoint) => unmount(&mountpoint),
            Undo::Detach { device, backing } => detach(&device, &backing),
            Undo::RemoveDir(dir) => remove_dir(dir),
            Undo::StopFaultfs {
                mut child,
                mountpoint,
            } => stop_faultfs(&mut child, &mountpoint),
            Undo::StopServer { name, mut child } => stop_server(name, &mut child),
        }
    }
}

/// `umount`, retried for a few seconds while the filesystem is busy (a test process that is
/// still exiting), then `umount --lazy` so that at least the mount point is gone.
fn unmount(mountpoint: &Path) -> Result<()> {
    let mut last_error = String::new();
    for attempt in 1..=8 {
        let mut umount = Command::new(cmd::program("umount"));
        umount.arg(mountpoint);
        match cmd::output(&mut umount, Interruptible::No) {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => last_error = cmd::failure_message(&umount, &out),
            Err(e) => last_error = format!("{e:#}"),
        }
        if !is_mounted(mountpoint) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100 * attempt));
    }
    let mut lazy = Command::new(cmd::program("umount"));
    lazy.arg("--lazy").arg(mountpoint);
    cmd::run_captured(&mut lazy, Interruptible::No).map_err(|e| {
        anyhow!(
            "cannot unmount {}: {last_error}; {e:#}",
            mountpoint.display()
        )
    })?;
    eprintln!(
        "fs-test: cleanup: {} was busy ({last_error}); detached it lazily",
        mountpoint.display()
    );
    Ok(())
}

/// Unmounts faultfs (see [`unmount`]) and waits for its process, which exits once the kernel
/// lets go of the filesystem. A lazily detached mount is held as long as a process (one that
/// outlived the tests) keeps a file open there: then SIGTERM, on which faultfs exits at once,
/// which ends the filesystem for good; SIGKILL as the last resort. Exit status 0 either way
/// is a clean stop (the lazy unmount has said what held it).
fn stop_faultfs(child: &mut Child, mountpoint: &Path) -> Result<()> {
    let unmounted = if is_mounted(mountpoint) {
        unmount(mountpoint)
    } else {
        Ok(())
    };
    let pid = Pid::from_child(child);
    let mut stopped = None;
    for (signal, grace) in [
        (None, Duration::from_secs(2)),
        (Some(Signal::TERM), Duration::from_secs(5)),
        (Some(Signal::KILL), Duration::from_secs(5)),
    ] {
        if let Some(signal) = signal {
            let _ = kill_process(pid, signal);
        }
        if let Some(status) = wait_with_timeout(child, grace)? {
            stopped = Some((signal, status));
            break;
        }
    }
    unmounted?;
    match stopped {
        None => Err(anyhow!(
            "faultfs (pid {}) did not exit, even on SIGKILL",
            child.id()
        )),
        Some((signal, status)) if status.success() && signal != Some(Signal::KILL) => Ok(()),
        Some((signal, status)) => Err(anyhow!(
            "faultfs (pid {}) ended badly: {status}{}",
            child.id(),
            signal.map_or(String::new(), |s| format!(" after {s:?}"))
        )),
    }
}

/// Stops a server we started: SIGTERM, on which nginx and tinyproxy exit at once; SIGKILL
/// after a grace period.
fn stop_server(name: &str, child: &mut Child) -> Result<()> {
    let pid = Pid::from_child(child);
    for (signal, grace) in [
        (Signal::TERM, Duration::from_secs(5)),
        (Signal::KILL, Duration::from_secs(5)),
    ] {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill_process(pid, signal);
        if wait_with_timeout(child, grace)?.is_some() {
            return Ok(());
        }
    }
    Err(anyhow!(
        "{name} (pid {}) did not exit, even on SIGKILL",
        child.id()
    ))
}

/// Waits up to `timeout` for `child`; its status if it exited.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `losetup -d`, only if the device still serves our backing file.
fn detach(device: &Path, backing: &Path) -> Result<()> {
    match loop_backing_file(device) {
        None => return Ok(()), // Already detached (autoclear, or someone else did it).
        Some(current) if current != backing => {
            return Err(anyhow!(
                "{} now backs {} instead of {}; left alone",
                device.display(),
                current.display(),
                backing.display()
            ));
        }
        Some(_) => {}
    }
    let mut last_error = anyhow!("not tried");
    for attempt in 1..=5 {
        let mut losetup = Command::new(cmd::program("losetup"));
        losetup.arg("--detach").arg(device);
        match cmd::run_captured(&mut losetup, Interruptible::No) {
            Ok(_) => break,
            Err(e) => last_error = e,
        }
        if attempt == 5 {
            return Err(last_error.context(format!("cannot detach {}", device.display())));
        }
        thread::sleep(Duration::from_millis(100 * attempt));
    }
    if loop_backing_file(device).is_some_and(|b| b == backing) {
        // The kernel detaches a device that is still open (a lazily unmounted filesystem)
        // once its last user closes it: `losetup -d` then only sets the autoclear flag.
        eprintln!(
            "fs-test: cleanup: {} is still in use; the kernel detaches it when released",
            device.display()
        );
    }
    Ok(())
}

/// The backing file of a loop device as the kernel reports it, `None` if it has none.
pub fn loop_backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let text = text.trim_end_matches('\n');
    // The kernel appends " (deleted)" once the file is unlinked.
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// Removes the temporary directory, unless something is still mounted below it: then it is
/// kept, because a recursive delete would walk into that filesystem.
fn remove_dir(dir: TempDir) -> Result<()> {
    let still_mounted = mounts_below(dir.path());
    if !still_mounted.is_empty() {
        let kept = dir.keep();
        return Err(anyhow!(
            "kept {} because {} still mounted below it",
            kept.display(),
            still_mounted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let path = dir.path().to_owned();
    dir.close()
        .map_err(|e| anyhow!("cannot remove {}: {e}", path.display()))
}

/// The mount points listed in `/proc/self/mounts`, unescaped.
pub fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Mount points strictly below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|p| p != dir && p.starts_with(dir))
        .collect()
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..=i + 3]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..=i + 3]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returned (inside an `anyhow::Error`) when a step stops because of Ctrl-C or SIGTERM.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted by a signal")
    }
}

impl std::error::Error for Interrupted {}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The process group of the one interruptible child running now, 0 if none.
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// How long the handler waits for the children to stop before it kills them.
const CHILD_GRACE: Duration = Duration::from_secs(5);
/// How long the handler waits for the main thread to clean up before it does so itself.
const MAIN_GRACE: Duration = Duration::from_secs(60);

/// `Err(Interrupted)` once Ctrl-C or SIGTERM has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler (once per process).
pub fn install_signal_handler() -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| ctrlc::set_handler(on_signal).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| anyhow!("cannot install the Ctrl-C handler: {e}"))
}

fn on_signal() {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second signal: no more patience with the children.
        eprintln!("fs-test: second signal; killing the running command");
        signal_child(Signal::KILL);
        return;
    }
    eprintln!("fs-test: interrupted; stopping the running command and cleaning up");
    signal_child(Signal::INT);
    // The handler thread must stay free for a second signal: wait in another thread.
    thread::spawn(|| {
        thread::sleep(CHILD_GRACE);
        signal_child(Signal::KILL);
        thread::sleep(MAIN_GRACE);
        eprintln!("fs-test: the main thread did not finish; cleaning up from the signal handler");
        for problem in unwind() {
            eprintln!("fs-test: cleanup: {problem}");
        }
        std::process::exit(130);
    });
}

fn signal_child(signal: Signal) {
    if let Some(group) = Pid::from_raw(CHILD_GROUP.load(Ordering::SeqCst)) {
        // ESRCH (the group is gone already) is the only likely failure and is fine.
        let _ = kill_process_group(group, signal);
    }
}

/// Makes `child` (the leader of its own process group) the one the signal handler stops,
/// until the returned value is dropped.
pub fn track_child(child: &Child) -> TrackedChild {
    let pid = Pid::from_child(child);
    CHILD_GROUP.store(pid.as_raw_nonzero().get(), Ordering::SeqCst);
    // The signal may have come between spawn and now.
    if INTERRUPTED.load(Ordering::SeqCst) {
        let _ = kill_process_group(pid, Signal::INT);
    }
    TrackedChild(())
}

/// See [`track_child`].
#[derive(Debug)]
pub struct TrackedChild(());

impl Drop for TrackedChild {
    fn drop(&mut self) {
        CHILD_GROUP.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_field("/tmp/x\\134y\\011"), "/tmp/x\\y\t");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
        assert_eq!(unescape_mount_field("/odd\\04"), "/odd\\04");
    }

    #[test]
    fn mounts_below_excludes_the_directory_itself() {
        // `/` is always mounted and nothing is strictly below a fresh temp dir.
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_below(dir.path()).is_empty());
        assert!(mount_points().iter().any(|p| p == Path::new("/")));
    }
}
