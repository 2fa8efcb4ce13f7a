//! `blockmap copy` at the edges (issue #10), through the binary: a block device in use (a
//! mounted filesystem) refused by `copy` and `bmap copy`, a missing `/dev` path refused, a
//! failing `close`, SIGINT/SIGTERM/SIGHUP midway, sources whose size lies (procfs, sysfs,
//! faultfs `size=`), a source changed midway. Faults are real: the FUSE filesystem
//! `faultfs` that `cargo xtask fs-test` mounts (`BLOCKMAP_FS_TEST_FAULTFS`), the spare loop
//! device (`BLOCKMAP_FS_TEST_BLOCKDEV`). Without them those tests say they are skipped; the
//! procfs, sysfs and `/dev` cases run anywhere.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use sparsecopy::{Options, Window};

/// Asserts a failure: status `code`, one line on stderr starting `blockmap: ` with every
/// needle, and no success line.
#[track_caller]
fn assert_fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("blockmap: "), "{stderr:?}");
    assert!(
        !stderr.contains("copied"),
        "a success line after a failure: {stderr:?}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from {stderr:?}");
    }
    assert!(out.stdout.is_empty());
    stderr
}

// ---------------------------------------------------------------------------------------------
// Item 1 and 10: block devices in use, and /dev paths that do not exist.

/// The spare device, with an ext4 on it mounted on a temporary directory; unmounted when
/// dropped, also when the test fails.
struct Mounted {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Mounted {
    fn new(dev: &Path) -> Self {
        // No lazy initialisation: nothing may write to the device behind the test's back.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(dev)
            .output()
            .expect("mkfs.ext4");
        assert!(mkfs.status.success(), "{mkfs:?}");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .arg(dev)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Mounted { dir, mounted: true }
    }

    fn unmount(&mut self) {
        if self.mounted {
            let out = Command::new("umount")
                .arg(self.dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "umount: {out:?}");
            self.mounted = false;
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// The device's bytes, as the kernel has them once every writer (the mounted filesystem's
/// journal too) has synced.
fn device_bytes(dev: &Path) -> Vec<u8> {
    rustix::fs::sync();
    File::open(dev).unwrap().sync_all().unwrap();
    std::fs::read(dev).unwrap()
}

#[test]
#[ignore = "needs the filesystems of fs-test: run by cargo xtask fs-test"]
fn edges_copy_mounted_device_refused() {
    let env = fs_env("edges_copy_mounted_device_refused");
    let Some(dev) = env.blockdev.clone() else {
        eprintln!("skipped: BLOCKMAP_FS_TEST_BLOCKDEV is not set");
        return;
    };
    let _spare = hold_blockdev(); // the one spare device, shared by the tests
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("image.img");
    let data = nonzero_noise(1, 3 << 20);
    std::fs::write(&src, &data).unwrap();
    let mut cases = 0;
    let mut mounted = Mounted::new(&dev);
    let before = device_bytes(&dev);
    let commands: [&[&str]; 2] = [&["copy"], &["bmap", "copy", "--nobmap"]];
    for command in commands {
        let out = run_cli(command.iter().copied().chain([s(&src), s(&dev)]));
        assert_fails(&out, 1, &[s(&dev), "in use"]);
        cases += 1;
    }
    // The mounted ext4 may still write its own metadata (a journal commit of what mounting
    // changed): a sector that changed is ours only if it now holds the image's bytes, which
    // both commands would have written at the same offsets.
    let after = device_bytes(&dev);
    let ours: Vec<usize> = (0..data.len())
        .step_by(512)
        .filter(|&i| {
            before[i..i + 512] != after[i..i + 512] && after[i..i + 512] == data[i..i + 512]
        })
        .collect();
    assert!(
        ours.is_empty(),
        "a refused copy wrote to the mounted device: sectors at {ours:?}"
    );
    mounted.unmount();
    // Unmounted, the same device takes both copies.
    for command in commands {
        std::fs::write(&dev, vec![0u8; 4 << 20]).unwrap();
        let out = run_cli(command.iter().copied().chain([s(&src), s(&dev)]));
        assert_ok(&out);
        let mut head = vec![0u8; data.len()];
        File::open(&dev)
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert!(
            head == data,
            "{command:?}: the device does not hold the image"
        );
        cases += 1;
    }
    env.report("blockdev", cases);
}

#[test]
fn edges_copy_missing_dev_path_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("image.img");
    std::fs::write(&src, nonzero_noise(2, 100_000)).unwrap();
    let missing = PathBuf::from(format!(
        "/dev/blockmap-no-such-device-{}",
        std::process::id()
    ));
    let commands: [&[&str]; 2] = [&["copy"], &["bmap", "copy", "--nobmap"]];
    for command in commands {
        let out = run_cli(command.iter().copied().chain([s(&src), s(&missing)]));
        let created = missing.exists();
        let _ = std::fs::remove_file(&missing);
        assert_fails(&out, 1, &[s(&missing), "no such device"]);
        assert!(!created, "{command:?} created {missing:?}");
    }
    // /dev/shm is a tmpfs of its own: files are made there as anywhere.
    if Path::new("/dev/shm").is_dir() {
        let shm = PathBuf::from(format!("/dev/shm/blockmap-edges-{}", std::process::id()));
        for command in commands {
            let out = run_cli(command.iter().copied().chain([s(&src), s(&shm)]));
            let copied = std::fs::read(&shm);
            let _ = std::fs::remove_file(&shm);
            assert_ok(&out);
            assert_eq!(copied.unwrap(), std::fs::read(&src).unwrap(), "{command:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 4: sources whose size lies.

/// procfs says 0, sysfs 4096: the copy holds what reading gives, as `cp` copies it.
#[test]
fn edges_copy_procfs_sysfs_to_their_end() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = [
        "/proc/version",
        "/proc/cmdline",
        "/proc/filesystems",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/class/net/lo/address",
    ];
    let mut lied = 0;
    for src in sources.iter().map(Path::new).filter(|p| p.exists()) {
        let want = std::fs::read(src).unwrap();
        lied += usize::from(std::fs::metadata(src).unwrap().len() != want.len() as u64);
        let dst = tmp.path().join("dst");
        let out = run_cli(["copy", s(src), s(&dst)]);
        assert_ok(&out);
        assert_eq!(std::fs::read(&dst).unwrap(), want, "{}", src.display());
        // A window of it, into an existing file longer than the copy.
        std::fs::write(&dst, vec![b'.'; 4096]).unwrap();
        let out = run_cli([
            "copy",
            "--skip",
            "2",
            "--seek",
            "10",
            "--length",
            "5",
            s(src),
            s(&dst),
        ]);
        assert_ok(&out);
        let mut expect = vec![b'.'; 4096];
        let part = &want[2..want.len().min(7)];
        expect[10..10 + part.len()].copy_from_slice(part);
        assert_eq!(std::fs::read(&dst).unwrap(), expect, "{}", src.display());
        std::fs::remove_file(&dst).unwrap();
    }
    assert!(
        lied >= 2,
        "fewer than two sources whose size lies: nothing tested"
    );
}

/// faultfs states a size of 0, a smaller and a bigger one than the file holds; the copy
/// holds what reading gives, whatever the window.
#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn edges_copy_lying_sizes_read_to_the_end() {
    let ff = faultfs("edges_copy_lying_sizes_read_to_the_end");
    let dir = ff.dir();
    let tmp = tempfile::tempdir().unwrap();
    let len = 300_000usize;
    // Zeros in the middle: holes in a new DST, cleared in an existing one.
    let mut content = nonzero_noise(3, len);
    content[100_000..200_000].fill(0);
    let mut cases = 0;
    for size in [0, 1000, 262_144, len as u64 + 5000, 4 << 20] {
        let src = dir.join(format!("lies-{size}"));
        std::fs::write(ff.backing(&src), &content).unwrap();
        ff.set(&src, &format!("size={size}"));
        assert_eq!(
            std::fs::metadata(&src).unwrap().len(),
            size,
            "faultfs does not lie"
        );
        let dst = tmp.path().join("dst");
        let out = run_cli(["copy", s(&src), s(&dst)]);
        assert_ok(&out);
        assert!(
            std::fs::read(&dst).unwrap() == content,
            "size={size}: not what reading gives"
        );
        std::fs::remove_file(&dst).unwrap();
        // The library, as the CLI.
        let report = sparsecopy::copy(&src, &dst, Window::new(), &Options::new()).unwrap();
        assert_eq!(report.length, len as u64, "size={size}");
        assert!(
            std::fs::read(&dst).unwrap() == content,
            "size={size}: library"
        );
        std::fs::remove_file(&dst).unwrap();
        // Over an existing, longer DST: its old bytes under the zeros are cleared, those past
        // the copy kept.
        let old = nonzero_noise(8, len + 50_000);
        std::fs::write(&dst, &old).unwrap();
        assert_ok(&run_cli(["copy", s(&src), s(&dst)]));
        let now = std::fs::read(&dst).unwrap();
        assert!(
            now[..len] == content[..] && now[len..] == old[len..],
            "size={size}: existing DST"
        );
        std::fs::remove_file(&dst).unwrap();
        // A window past the stated size, cut where reading ends.
        let out = run_cli(["copy", "--skip", "5000", "--length", "1G", s(&src), s(&dst)]);
        assert_ok(&out);
        assert!(
            std::fs::read(&dst).unwrap() == content[5000..],
            "size={size}: window"
        );
        std::fs::remove_file(&dst).unwrap();
        // Past what reading gives: refused, nothing created.
        let out = run_cli(["copy", "--skip", &(len + 1).to_string(), s(&src), s(&dst)]);
        assert_fails(&out, 1, &["skip"]);
        assert!(!dst.exists());
        ff.clear(&src);
        cases += 4;
    }
    ff.report("edges_copy_lying_sizes_read_to_the_end", cases);
}

// ---------------------------------------------------------------------------------------------
// Item 2: close(2) fails.

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn edges_copy_close_eio_fails() {
    let ff = faultfs("edges_copy_close_eio_fails");
    let dir = ff.dir();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    let data = nonzero_noise(4, 2 << 20);
    std::fs::write(&src, &data).unwrap();
    let mut cases = 0;
    for sync in [false, true] {
        let flags: &[&str] = if sync { &["copy", "--sync"] } else { &["copy"] };
        // Created: the error, and the file removed again.
        let dst = dir.join(format!("created-{sync}"));
        ff.set(&dst, "flush-eio");
        let out = run_cli(flags.iter().copied().chain([s(&src), s(&dst)]));
        assert_fails(&out, 1, &[s(&dst), "close"]);
        assert!(!dst.exists(), "--sync {sync}: the created DST was left");
        // The library, as the CLI.
        let err =
            sparsecopy::copy(&src, &dst, Window::new(), &Options::new().sync(sync)).unwrap_err();
        assert!(matches!(err, sparsecopy::Error::Close { .. }), "{err}");
        assert!(
            !dst.exists(),
            "--sync {sync}: the library left the created DST"
        );
        // Existing: the error only (the data is written; the file stays).
        let dst = dir.join(format!("existing-{sync}"));
        std::fs::write(ff.backing(&dst), b"old").unwrap();
        ff.set(&dst, "flush-eio");
        let out = run_cli(flags.iter().copied().chain([s(&src), s(&dst)]));
        assert_fails(&out, 1, &[s(&dst), "close"]);
        assert!(std::fs::read(ff.backing(&dst)).unwrap() == data);
        cases += 2;
    }
    ff.report("edges_copy_close_eio_fails", cases);
}

// ---------------------------------------------------------------------------------------------
// Items 3 and 5: signals midway, SRC changed midway. SRC reads slowly (faultfs
// `read-delay-ms`), so that the copy takes seconds and the event lands inside it.

/// SRC size for the slow copies, and the delay of each read.
const SLOW_LEN: usize = 12 << 20;
const SLOW_DELAY: &str = "read-delay-ms=150";

/// Waits for `child` at most `limit`; kills it and panics if it takes longer.
fn wait_for(child: Child, limit: Duration) -> (ExitStatus, String) {
    let started = Instant::now();
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("blockmap did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BLOCKMAP)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls `ready` every 10 ms for up to 10 s.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A slow SRC on faultfs (its bytes, its path).
fn slow_source(ff: &FaultFs, dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let src = dir.join(name);
    let data = nonzero_noise(5, SLOW_LEN);
    std::fs::write(ff.backing(&src), &data).unwrap();
    ff.set(&src, SLOW_DELAY);
    (data, src)
}

/// Parses `[a, b)` out of an error line.
fn range_in(line: &str) -> std::ops::Range<u64> {
    let open = line.find('[').expect("no range in the message");
    let close = line[open..].find(')').expect("no range in the message") + open;
    let (a, b) = line[open + 1..close].split_once(", ").unwrap();
    a.parse().unwrap()..b.parse().unwrap()
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn edges_copy_signal_stops_and_says_what_it_left() {
    let ff = faultfs("edges_copy_signal_stops_and_says_what_it_left");
    let dir = ff.dir();
    let tmp = tempfile::tempdir().unwrap();
    let (data, src) = slow_source(&ff, &dir, "slow.img");
    let signals = [
        (rustix::process::Signal::INT, "SIGINT", 130),
        (rustix::process::Signal::TERM, "SIGTERM", 143),
        (rustix::process::Signal::HUP, "SIGHUP", 129),
    ];
    let mut cases = 0;
    for (signal, name, status) in signals {
        // A DST this run creates: removed.
        let dst = tmp.path().join(format!("created-{name}"));
        let child = spawn(&["copy", s(&src), s(&dst)]);
        let pid = rustix::process::Pid::from_child(&child);
        wait_until("DST to appear", || dst.exists());
        std::thread::sleep(Duration::from_millis(400));
        rustix::process::kill_process(pid, signal).unwrap();
        let (code, err) = wait_for(child, Duration::from_secs(10));
        assert_eq!(code.code(), Some(status), "{name}: {err}");
        assert_eq!(
            err,
            format!(
                "blockmap: interrupted by {name}: removed the partial copy {}\n",
                dst.display()
            )
        );
        assert!(!dst.exists(), "{name}: the partial copy is still there");

        // An existing DST: untouched outside the range named, which holds every change.
        let dst = tmp.path().join(format!("existing-{name}"));
        let old = nonzero_noise(6, SLOW_LEN + (3 << 20));
        std::fs::write(&dst, &old).unwrap();
        let seek = (1 << 20) + 512;
        let child = spawn(&["copy", "--seek", &seek.to_string(), s(&src), s(&dst)]);
        let pid = rustix::process::Pid::from_child(&child);
        let f = File::open(&dst).unwrap();
        wait_until("the first bytes copied", || {
            let mut b = [0u8; 4096];
            f.read_exact_at(&mut b, seek).unwrap();
            b[..] != old[seek as usize..seek as usize + 4096]
        });
        rustix::process::kill_process(pid, signal).unwrap();
        let (code, err) = wait_for(child, Duration::from_secs(10));
        assert_eq!(code.code(), Some(status), "{name}: {err}");
        assert!(
            err.starts_with(&format!(
                "blockmap: interrupted by {name}: {} bytes [",
                dst.display()
            )) && err.ends_with(") may be partly written\n")
                && err.lines().count() == 1,
            "{name}: {err:?}"
        );
        let range = range_in(&err);
        let now = std::fs::read(&dst).unwrap();
        assert_eq!(now.len(), old.len(), "{name}: DST's size changed");
        let end = seek + SLOW_LEN as u64;
        assert!(
            range.start >= seek && range.end <= end,
            "{name}: {range:?} outside the window"
        );
        assert!(
            range.end < end,
            "{name}: the whole window was written: not interrupted"
        );
        for (i, (a, b)) in now.iter().zip(&old).enumerate() {
            let i = i as u64;
            if a != b {
                assert!(
                    range.contains(&i),
                    "{name}: byte {i} changed outside {range:?}"
                );
                assert_eq!(
                    *a,
                    data[(i - seek) as usize],
                    "{name}: byte {i} is not SRC's"
                );
            }
        }
        cases += 2;
    }
    ff.report("edges_copy_signal_stops_and_says_what_it_left", cases);
}

/// Something done to SRC (through the mount) midway.
type Change = fn(&Path);

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn edges_copy_src_changed_midway_fails() {
    let ff = faultfs("edges_copy_src_changed_midway_fails");
    let dir = ff.dir();
    let tmp = tempfile::tempdir().unwrap();
    let changes: [(&str, Change); 2] = [
        ("truncated", |p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
        }),
        ("written", |p| {
            let mut f = File::options().write(true).open(p).unwrap();
            f.write_all_at(b"changed", (SLOW_LEN - 100) as u64).unwrap();
            f.flush().unwrap();
        }),
    ];
    let mut cases = 0;
    for (what, change) in changes {
        let (_, src) = slow_source(&ff, &dir, &format!("{what}.img"));
        let dst = tmp.path().join(format!("dst-{what}"));
        let child = spawn(&["copy", s(&src), s(&dst)]);
        wait_until("DST to appear", || dst.exists());
        std::thread::sleep(Duration::from_millis(300));
        change(&src);
        let (code, err) = wait_for(child, Duration::from_secs(60));
        assert_eq!(code.code(), Some(1), "{what}: {err}");
        assert!(
            err.starts_with(&format!(
                "blockmap: {} changed during the copy",
                src.display()
            )) && err.ends_with(&format!("removed the partial copy {}\n", dst.display())),
            "{what}: {err:?}"
        );
        assert!(!dst.exists(), "{what}: the partial copy is still there");

        // An existing DST: the line names the range that may be partly written.
        let (_, src) = slow_source(&ff, &dir, &format!("{what}-2.img"));
        let old = nonzero_noise(7, 1 << 20);
        std::fs::write(&dst, &old).unwrap();
        let child = spawn(&["copy", s(&src), s(&dst)]);
        let f = File::open(&dst).unwrap();
        wait_until("the first bytes copied", || {
            let mut b = [0u8; 4096];
            f.read_exact_at(&mut b, 0).unwrap();
            b[..] != old[..4096]
        });
        change(&src);
        let (code, err) = wait_for(child, Duration::from_secs(60));
        assert_eq!(code.code(), Some(1), "{what}: {err}");
        assert!(
            err.starts_with(&format!(
                "blockmap: {} changed during the copy",
                src.display()
            )) && err.ends_with(") may be partly written\n"),
            "{what}: {err:?}"
        );
        let range = range_in(&err);
        assert!(
            range.start == 0 && range.end <= SLOW_LEN as u64,
            "{what}: {range:?}"
        );
        cases += 2;
    }
    ff.report("edges_copy_src_changed_midway_fails", cases);
}
