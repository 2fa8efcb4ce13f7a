//! faultfs's own life: it mounts, serves the backing directory, and ends cleanly (exit 0, the
//! mount gone) on `umount`, on SIGTERM and on SIGINT, also while a file on it is held open.
//! Needs root and `/dev/fuse`; elsewhere each test says it is skipped. (The faults themselves
//! are checked by `crates/blockmap-cli/tests/fs_faultfs.rs` under `cargo xtask fs-test`.)

#![allow(clippy::print_stderr)] // a test that cannot run here says why

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

fn can_mount(test: &str) -> bool {
    let ok = rustix::process::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("{test}: skipped: needs root and /dev/fuse");
    }
    ok
}

fn is_fuse(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == FUSE_SUPER_MAGIC)
}

fn listed_in_mountinfo(path: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_str().unwrap();
    text.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted))
}

/// A faultfs serving a fresh backing directory; unmounted and killed when dropped, whatever
/// the test did.
struct Mounted {
    child: Child,
    backing: PathBuf,
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn start() -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (backing, mount) = (root.join("backing"), root.join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mount).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_faultfs"))
            .arg(&backing)
            .arg(&mount)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut mounted = Mounted {
            child,
            backing,
            mount,
            _dir: dir,
        };
        let started = Instant::now();
        while !is_fuse(&mounted.mount) {
            assert!(
                mounted.child.try_wait().unwrap().is_none(),
                "faultfs exited without mounting"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "faultfs did not mount"
            );
            thread::sleep(Duration::from_millis(20));
        }
        mounted
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    /// Waits up to 3 s for faultfs to exit.
    fn exit_status(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "faultfs did not exit within 3 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_gone(&mut self, what: &str) {
        let status = self.exit_status();
        assert!(status.success(), "{what}: faultfs ended with {status}");
        assert!(!listed_in_mountinfo(&self.mount), "{what}: still mounted");
        assert!(
            !is_fuse(&self.mount),
            "{what}: the mount point is still FUSE"
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if listed_in_mountinfo(&self.mount) {
            let _ = rustix::mount::unmount(&self.mount, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_the_backing_directory_and_stops_on_umount() {
    if !can_mount("serves_the_backing_directory_and_stops_on_umount") {
        return;
    }
    let mut m = Mounted::start();
    fs::create_dir(m.mount.join("d")).unwrap();
    fs::write(m.mount.join("d/f"), b"through the mount").unwrap();
    assert_eq!(
        fs::read(m.backing.join("d/f")).unwrap(),
        b"through the mount"
    );
    fs::write(m.backing.join("g"), b"in the backing dir").unwrap();
    assert_eq!(fs::read(m.mount.join("g")).unwrap(), b"in the backing dir");
    fs::rename(m.mount.join("g"), m.mount.join("d/h")).unwrap();
    assert_eq!(
        fs::read(m.backing.join("d/h")).unwrap(),
        b"in the backing dir"
    );
    let mut names: Vec<_> = fs::read_dir(m.mount.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["f", "h"]);
    // fstat of an open file is that file's, after its path was renamed over and unlinked.
    fs::write(m.mount.join("s"), [1u8; 100]).unwrap();
    let open = File::open(m.mount.join("s")).unwrap();
    fs::write(m.mount.join("t"), [2u8; 7]).unwrap();
    fs::rename(m.mount.join("t"), m.mount.join("s")).unwrap();
    assert_eq!(
        open.metadata().unwrap().len(),
        100,
        "fstat after a rename over it"
    );
    assert_eq!(fs::metadata(m.mount.join("s")).unwrap().len(), 7);
    fs::remove_file(m.mount.join("s")).unwrap();
    assert_eq!(open.metadata().unwrap().len(), 100, "fstat after unlink");
    drop(open);
    let status = Command::new("umount").arg(&m.mount).status().unwrap();
    assert!(status.success(), "umount: {status}");
    m.assert_gone("umount");
}

#[test]
fn stops_on_sigterm_and_sigint() {
    if !can_mount("stops_on_sigterm_and_sigint") {
        return;
    }
    for signal in [Signal::TERM, Signal::INT] {
        let mut m = Mounted::start();
        m.signal(signal);
        m.assert_gone(&format!("{signal:?}"));
    }
}

#[test]
fn stops_on_sigterm_while_a_file_is_held_open() {
    if !can_mount("stops_on_sigterm_while_a_file_is_held_open") {
        return;
    }
    let mut m = Mounted::start();
    fs::write(m.backing.join("held"), b"data").unwrap();
    let mut held = File::open(m.mount.join("held")).unwrap();
    m.signal(Signal::TERM);
    m.assert_gone("SIGTERM with an open file");
    // The filesystem is gone for good: its open file fails, it does not hang.
    let mut buf = [0; 4];
    let error = held.read(&mut buf).unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error()),
        "{error}"
    );
}
