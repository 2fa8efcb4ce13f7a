//! Running external programs (mkfs, losetup, mount, cargo) with errors that name the command.
//!
//! Every child gets its own process group and no stdin. The group keeps a terminal's Ctrl-C
//! away from the children, so that fs-test decides what to stop and in which order: the
//! signal handler in [`crate::cleanup`] forwards the signal to the one interruptible child
//! there is at a time, while clean-up commands (umount, `losetup -d`) are never interrupted.
//! No stdin means no child can ever stop the run waiting for input.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::cleanup;

/// The command line as a person would type it, for messages (the program without its
/// directory: `cargo`, not `/root/.rustup/toolchains/…/bin/cargo`).
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut s = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "*?'\"$".contains(c)) {
            let _ = write!(s, " '{arg}'");
        } else {
            let _ = write!(s, " {arg}");
        }
    }
    s
}

/// Whether the child may be stopped by Ctrl-C/SIGTERM (setup and tests) or must run to its end
/// (clean-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruptible {
    Yes,
    No,
}

/// Runs `cmd` with its output captured; fails, showing that output, unless it exits 0.
/// Returns stdout.
pub fn run_captured(cmd: &mut Command, interruptible: Interruptible) -> Result<String> {
    let output = output(cmd, interruptible)?;
    if !output.status.success() {
        bail!("{}", failure_message(cmd, &output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with output captured and returns it whatever the exit status.
pub fn output(cmd: &mut Command, interruptible: Interruptible) -> Result<Output> {
    cmd.stderr(Stdio::piped());
    wait_with_stdout(cmd, interruptible)
}

/// Runs `cmd` in its own process group with stdin empty and stdout captured (stderr as the
/// caller set it), tracked for Ctrl-C if `interruptible`, and waits for it.
fn wait_with_stdout(cmd: &mut Command, interruptible: Interruptible) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let _tracked = (interruptible == Interruptible::Yes).then(|| cleanup::track_child(&child));
    child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))
}

/// `"`cmd` failed (exit status: 1): <its stderr and stdout>"`.
pub fn failure_message(cmd: &Command, output: &Output) -> String {
    let mut msg = format!("`{}` failed ({})", describe(cmd), output.status);
    for stream in [&output.stderr, &output.stdout] {
        let text = String::from_utf8_lossy(stream);
        let text = text.trim();
        if !text.is_empty() {
            let _ = write!(msg, ": {text}");
        }
    }
    msg
}

/// Runs `cmd` with the terminal's stdout and stderr, interruptibly, and returns its status.
pub fn run_inherited(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.stdin(Stdio::null()).process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let _tracked = cleanup::track_child(&child);
    child
        .wait()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))
}

/// Runs `cmd` interruptibly with its stdout captured and its stderr on the terminal (cargo's
/// progress), and returns its status and stdout.
pub fn run_stdout_captured(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let output = wait_with_stdout(cmd, Interruptible::Yes)?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// Finds an executable on `$PATH` or in the sbin directories, which a non-login root shell
/// (or CI) does not always have on its `$PATH` but where mkfs and losetup live.
pub fn find_program(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// [`find_program`], else the bare name (and the error of running it).
pub fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| PathBuf::from(name))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
