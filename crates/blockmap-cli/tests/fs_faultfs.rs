//! Self-tests of faultfs, the fault-injecting FUSE filesystem the fault tests rely on (run by
//! `cargo xtask fs-test`, which mounts it; skipped without it). Each fault token is used with
//! plain `std::fs`/rustix I/O through the mount and checked against the backing file, which
//! faultfs leaves alone: if faultfs injected a fault wrongly, or not at all, these fail.
//!
//! The one `unsafe` block closes a descriptor with `close(2)` to see its result (the flush
//! fault), which `File`'s drop ignores.

#![allow(unsafe_code)] // see the module docs

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::FaultFs;
use rustix::fs::{FallocateFlags, SeekFrom as RSeekFrom};
use testkit::noise;

const EIO: i32 = rustix::io::Errno::IO.raw_os_error();
const ENOSPC: i32 = rustix::io::Errno::NOSPC.raw_os_error();
const EDQUOT: i32 = rustix::io::Errno::DQUOT.raw_os_error();
const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();

/// Writes `data` to `name` in a fresh directory through the backing directory (no fault
/// applies there); returns the path in the mount.
fn backed_file(ffs: &FaultFs, dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(ffs.backing(&path), data).unwrap();
    path
}

fn raw_errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn expect_errno<T: std::fmt::Debug>(what: &str, result: io::Result<T>, errno: i32) {
    match result {
        Err(e) if raw_errno(&e) == Some(errno) => {}
        other => panic!(
            "{what}: expected {}, got {other:?}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// `close(2)` of `file`, with its result.
fn close(file: File) -> rustix::io::Result<()> {
    let raw = OwnedFd::from(file).into_raw_fd();
    // SAFETY: `raw` comes from `into_raw_fd` of an `OwnedFd` we owned, so it is open and
    // owned by no one else; nothing refers to it after this call.
    unsafe { rustix::io::try_close(raw) }
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_read_eio() {
    let ffs = crate::common::faultfs("faultfs_read_eio");
    let dir = ffs.dir();
    let mut cases = 0;
    for (len, off) in [(100_000usize, 50_001u64), (100_000, 4096), (100_000, 1)] {
        let data = noise(off, len);
        let path = backed_file(&ffs, &dir, &format!("f{off}"), &data);
        ffs.set(&path, &format!("read-eio={off}"));
        let mut file = File::open(&path).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0; 8192];
        let error = loop {
            match file.read(&mut buf) {
                Ok(0) => panic!("read-eio={off}: reached the end without an error"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(raw_errno(&error), Some(EIO), "read-eio={off}: {error}");
        assert_eq!(
            got.len() as u64,
            off,
            "read-eio={off}: bytes before the error"
        );
        assert_eq!(
            got,
            data[..off as usize],
            "read-eio={off}: the bytes differ"
        );
        // At and after OFF every read fails; before it, reads work.
        expect_errno("pread at OFF+100", file.read_at(&mut buf, off + 100), EIO);
        let mut one = [0u8; 1];
        assert_eq!(file.read_at(&mut one, off - 1).unwrap(), 1);
        assert_eq!(one[0], data[off as usize - 1]);
        ffs.clear(&path);
        assert_eq!(fs::read(&path).unwrap(), data, "after clear");
        cases += 1;
    }
    ffs.report("faultfs_read_eio", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_short_read() {
    let ffs = crate::common::faultfs("faultfs_short_read");
    let dir = ffs.dir();
    let mut cases = 0;
    for n in [1usize, 1000, 4096, 65_537] {
        let data = noise(n as u64, 200_000);
        let path = backed_file(&ffs, &dir, &format!("f{n}"), &data);
        ffs.set(&path, &format!("short-read={n}"));
        let mut file = File::open(&path).unwrap();
        let mut buf = vec![0; 300_000];
        let got = file.read(&mut buf).unwrap();
        assert_eq!(got, n.min(data.len()), "short-read={n}: first read");
        assert_eq!(buf[..got], data[..got]);
        if n <= 4096 {
            // Every read is short, also in the middle of the file.
            assert_eq!(file.read_at(&mut buf, 12_345).unwrap(), n);
            assert_eq!(buf[..n], data[12_345..12_345 + n]);
        }
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        file.read_to_end(&mut all).unwrap();
        assert!(all == data, "short-read={n}: read_to_end differs");
        cases += 1;
    }
    ffs.report("faultfs_short_read", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_read_delay_blocks_nothing_else() {
    let ffs = crate::common::faultfs("faultfs_read_delay_blocks_nothing_else");
    let dir = ffs.dir();
    let slow_data = noise(1, 10_000);
    let fast_data = noise(2, 10_000);
    let slow = backed_file(&ffs, &dir, "slow", &slow_data);
    let fast = backed_file(&ffs, &dir, "fast", &fast_data);
    let delay = Duration::from_millis(3000);
    ffs.set(&slow, &format!("read-delay-ms={}", delay.as_millis()));
    // A fault, so that its reads go to faultfs too rather than to the page cache.
    ffs.set(&fast, "short-read=1000000");

    let started = Instant::now();
    let reader = {
        let slow = slow.clone();
        std::thread::spawn(move || {
            let got = fs::read(&slow).unwrap();
            (got, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Another file, and the slow file's attributes, meanwhile.
    let fast_started = Instant::now();
    assert_eq!(fs::read(&fast).unwrap(), fast_data);
    assert_eq!(fs::metadata(&slow).unwrap().len(), slow_data.len() as u64);
    let fast_took = fast_started.elapsed();
    assert!(
        !reader.is_finished(),
        "the delayed read finished within {:?}",
        started.elapsed()
    );
    assert!(
        fast_took < Duration::from_millis(1500),
        "the other requests took {fast_took:?} while the delayed read waited"
    );
    let (got, slow_took) = reader.join().unwrap();
    assert!(got == slow_data, "the delayed read returned other bytes");
    assert!(
        slow_took >= delay,
        "the delayed read took only {slow_took:?}"
    );
    ffs.report("faultfs_read_delay_blocks_nothing_else", 1);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_write_errors_at_offset() {
    let ffs = crate::common::faultfs("faultfs_write_errors_at_offset");
    let dir = ffs.dir();
    let data = noise(7, 300_000);
    let mut cases = 0;
    for (token, errno) in [
        ("write-eio", EIO),
        ("write-enospc", ENOSPC),
        ("write-edquot", EDQUOT),
    ] {
        for off in [0u64, 4095, 131_073] {
            // Set on a path that does not exist yet: a copy's destination.
            let path = dir.join(format!("{token}-{off}"));
            ffs.set(&path, &format!("{token}={off}"));
            let mut file = File::create_new(&path).unwrap();
            expect_errno(
                &format!("{token}={off}: write_all"),
                file.write_all(&data),
                errno,
            );
            drop(file);
            let written = fs::read(ffs.backing(&path)).unwrap();
            assert_eq!(written.len() as u64, off, "{token}={off}: bytes written");
            assert!(
                written == data[..off as usize],
                "{token}={off}: bytes differ"
            );
            // One write(2) across OFF writes the part before it.
            if off > 0 {
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                assert_eq!(file.write_at(&data[..10], off - 3).unwrap(), 3);
                expect_errno("pwrite at OFF", file.write_at(&data[..10], off), errno);
            }
            cases += 1;
        }
    }
    ffs.report("faultfs_write_errors_at_offset", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_short_write() {
    let ffs = crate::common::faultfs("faultfs_short_write");
    let dir = ffs.dir();
    let data = noise(9, 100_000);
    let mut cases = 0;
    for n in [1usize, 777, 4096] {
        let path = dir.join(format!("f{n}"));
        ffs.set(&path, &format!("short-write={n}"));
        let mut file = File::create_new(&path).unwrap();
        assert_eq!(
            file.write(&data).unwrap(),
            n,
            "short-write={n}: first write"
        );
        if n > 1 {
            file.write_all(&data[n..]).unwrap();
        } else {
            // 100,000 one-byte requests would be slow; the rest at once, without the fault.
            ffs.clear(&path);
            file.write_all(&data[n..]).unwrap();
        }
        drop(file);
        assert!(
            fs::read(ffs.backing(&path)).unwrap() == data,
            "short-write={n}: the file differs"
        );
        cases += 1;
    }
    ffs.report("faultfs_short_write", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_flush_fsync_truncate_fallocate() {
    let ffs = crate::common::faultfs("faultfs_flush_fsync_truncate_fallocate");
    let dir = ffs.dir();
    let data = noise(11, 50_000);

    // flush-eio: close(2) fails, the data is there.
    let path = dir.join("flush");
    ffs.set(&path, "flush-eio");
    let mut file = File::create_new(&path).unwrap();
    file.write_all(&data).unwrap();
    assert_eq!(close(file), Err(rustix::io::Errno::IO), "flush-eio: close");
    assert!(fs::read(ffs.backing(&path)).unwrap() == data);
    ffs.clear(&path);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    assert_eq!(close(file), Ok(()), "close without flush-eio");

    // fsync-eio.
    let path = backed_file(&ffs, &dir, "fsync", &data);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.sync_all().unwrap();
    ffs.set(&path, "fsync-eio");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    expect_errno("fsync-eio: fsync", file.sync_all(), EIO);
    expect_errno("fsync-eio: fdatasync", file.sync_data(), EIO);

    // truncate-eio: ftruncate and truncate fail, the size stays.
    let path = backed_file(&ffs, &dir, "truncate", &data);
    ffs.set(&path, "truncate-eio");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    expect_errno("truncate-eio: ftruncate", file.set_len(10), EIO);
    expect_errno(
        "truncate-eio: open O_TRUNC",
        OpenOptions::new().write(true).truncate(true).open(&path),
        EIO,
    );
    assert_eq!(
        fs::metadata(ffs.backing(&path)).unwrap().len(),
        data.len() as u64
    );
    ffs.clear(&path);
    file.set_len(10).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 10);

    // fallocate-eopnotsupp, for every mode.
    let path = backed_file(&ffs, &dir, "fallocate", &data);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    rustix::fs::fallocate(&file, FallocateFlags::KEEP_SIZE, 0, 1 << 20).unwrap();
    ffs.set(&path, "fallocate-eopnotsupp");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for flags in [
        FallocateFlags::empty(),
        FallocateFlags::KEEP_SIZE,
        FallocateFlags::KEEP_SIZE | FallocateFlags::PUNCH_HOLE,
    ] {
        assert_eq!(
            rustix::fs::fallocate(&file, flags, 0, 4096),
            Err(rustix::io::Errno::OPNOTSUPP),
            "fallocate-eopnotsupp: {flags:?}"
        );
    }
    assert!(fs::read(ffs.backing(&path)).unwrap() == data);
    ffs.report("faultfs_flush_fsync_truncate_fallocate", 4);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_size_lies() {
    let ffs = crate::common::faultfs("faultfs_size_lies");
    let dir = ffs.dir();
    let data = noise(13, 70_000);
    let mut cases = 0;
    for lie in [0u64, 4096, 10_000_000] {
        let path = backed_file(&ffs, &dir, &format!("f{lie}"), &data);
        ffs.set(&path, &format!("size={lie}"));
        assert_eq!(fs::metadata(&path).unwrap().len(), lie, "size={lie}: stat");
        let file = File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), lie, "size={lie}: fstat");
        let mut got = Vec::new();
        (&file).read_to_end(&mut got).unwrap();
        assert!(got == data, "size={lie}: read {} bytes", got.len());
        cases += 1;
    }
    ffs.report("faultfs_size_lies", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_seek_data_and_no_seek() {
    let ffs = crate::common::faultfs("faultfs_seek_data_and_no_seek");
    let dir = ffs.dir();
    // Data at [1 MiB, 1 MiB + 8 KiB) in a 4 MiB sparse file.
    let path = dir.join("sparse");
    let backing = File::create_new(ffs.backing(&path)).unwrap();
    backing.set_len(4 << 20).unwrap();
    backing.write_all_at(&noise(5, 8192), 1 << 20).unwrap();
    backing.sync_all().unwrap();
    let expected: Vec<_> = [
        RSeekFrom::Data(0),
        RSeekFrom::Hole(0),
        RSeekFrom::Hole(1 << 20),
    ]
    .into_iter()
    .map(|whence| rustix::fs::seek(&backing, whence).unwrap())
    .collect();
    assert_eq!(expected[0], 1 << 20, "the backing file's own SEEK_DATA");

    let file = File::open(&path).unwrap();
    let got: Vec<_> = [
        RSeekFrom::Data(0),
        RSeekFrom::Hole(0),
        RSeekFrom::Hole(1 << 20),
    ]
    .into_iter()
    .map(|whence| rustix::fs::seek(&file, whence).unwrap())
    .collect();
    assert_eq!(got, expected, "SEEK_DATA/SEEK_HOLE through faultfs");

    ffs.set(&path, "no-seek");
    let file = File::open(&path).unwrap();
    for whence in [RSeekFrom::Data(0), RSeekFrom::Hole(0)] {
        assert_eq!(
            rustix::fs::seek(&file, whence),
            Err(rustix::io::Errno::INVAL),
            "no-seek: {whence:?}"
        );
    }
    assert_eq!(rustix::fs::seek(&file, RSeekFrom::End(0)), Ok(4 << 20));
    ffs.report("faultfs_seek_data_and_no_seek", 2);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_faults_follow_the_path_and_the_control_file_checks_lines() {
    let ffs =
        crate::common::faultfs("faultfs_faults_follow_the_path_and_the_control_file_checks_lines");
    let dir = ffs.dir();
    let path = dir.join("later");
    ffs.set(&path, "size=5");
    for round in 0..2 {
        fs::write(&path, b"0123456789").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 5, "round {round}");
        fs::remove_file(&path).unwrap();
    }
    fs::write(&path, b"0123456789").unwrap();
    ffs.clear(&path);
    assert_eq!(fs::metadata(&path).unwrap().len(), 10, "after clear");

    let control = dir.parent().unwrap().join(".faultfs");
    let write_line = |line: &str| {
        OpenOptions::new()
            .write(true)
            .open(&control)
            .and_then(|mut f| f.write_all(line.as_bytes()))
    };
    for bad in [
        "set x\n",
        "set x bogus\n",
        "set x read-eio\n",
        "set x short-read=0\n",
        "set ../x no-seek\n",
        "frob x\n",
    ] {
        expect_errno(&format!("control line {bad:?}"), write_line(bad), EINVAL);
    }
    let rel = path.strip_prefix(dir.parent().unwrap()).unwrap();
    write_line(&format!("set {} no-seek short-read=3\n", rel.display())).unwrap();
    let listing = fs::read_to_string(&control).unwrap();
    assert!(
        listing.contains(&format!("set {} short-read=3 no-seek\n", rel.display())),
        "the control file lists {listing:?}"
    );
    ffs.clear(&path);
    ffs.report(
        "faultfs_faults_follow_the_path_and_the_control_file_checks_lines",
        1,
    );
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_read_corrupt() {
    let ffs = crate::common::faultfs("faultfs_read_corrupt");
    let dir = ffs.dir();
    let mut cases = 0;
    for off in [0u64, 4095, 70_000] {
        let data = noise(off + 7, 100_000);
        let mut flipped = data.clone();
        flipped[off as usize] ^= 0xff;
        let whole = |path: &Path| {
            let mut got = vec![0; data.len()];
            let n = File::open(path).unwrap().read_at(&mut got, 0).unwrap();
            got.truncate(n);
            got
        };

        // Always: every read covering OFF has it flipped, one that does not is true.
        let path = backed_file(&ffs, &dir, &format!("always{off}"), &data);
        ffs.set(&path, &format!("read-corrupt={off}"));
        assert_eq!(whole(&path), flipped, "read-corrupt={off}: first read");
        assert_eq!(whole(&path), flipped, "read-corrupt={off}: second read");
        let mut one = [0u8; 1];
        File::open(&path).unwrap().read_at(&mut one, off).unwrap();
        assert_eq!(one[0], !data[off as usize], "read-corrupt={off}: one byte");
        if off > 0 {
            let mut before = vec![0; off as usize];
            File::open(&path)
                .unwrap()
                .read_exact_at(&mut before, 0)
                .unwrap();
            assert_eq!(
                before,
                data[..off as usize],
                "read-corrupt={off}: before OFF"
            );
        }
        assert_eq!(
            fs::read(ffs.backing(&path)).unwrap(),
            data,
            "backing file changed"
        );
        cases += 1;

        // Once: a read not covering OFF does not spend it; the first that does is flipped,
        // every later one true, and the fault is gone from the listing.
        let path = backed_file(&ffs, &dir, &format!("once{off}"), &data);
        ffs.set(&path, &format!("read-corrupt-once={off}"));
        let file = File::open(&path).unwrap();
        let mut after = vec![0; 1000];
        file.read_exact_at(&mut after, off + 1).unwrap();
        assert_eq!(after, data[off as usize + 1..off as usize + 1001]);
        assert_eq!(whole(&path), flipped, "read-corrupt-once={off}: first read");
        assert_eq!(whole(&path), data, "read-corrupt-once={off}: second read");
        let listing = fs::read_to_string(dir.parent().unwrap().join(".faultfs")).unwrap();
        assert!(
            !listing.contains(&format!("once{off}")),
            "a spent fault is still listed: {listing}"
        );
        assert_eq!(
            fs::read(ffs.backing(&path)).unwrap(),
            data,
            "backing file changed"
        );
        cases += 1;
    }
    ffs.report("faultfs_read_corrupt", cases);
}

#[test]
#[ignore = "needs faultfs: run by cargo xtask fs-test"]
fn faultfs_write_corrupt_once() {
    let ffs = crate::common::faultfs("faultfs_write_corrupt_once");
    let dir = ffs.dir();
    let mut cases = 0;
    for off in [0u64, 4095, 70_000] {
        let data = noise(off + 11, 100_000);
        let path = dir.join(format!("w{off}"));
        ffs.set(&path, &format!("write-corrupt-once={off}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        // A write not covering OFF does not spend it.
        if off > 0 {
            file.write_all_at(&data[..off as usize], 0).unwrap();
            assert_eq!(fs::read(ffs.backing(&path)).unwrap(), data[..off as usize]);
        }
        file.write_all_at(&data, 0).unwrap();
        let mut flipped = data.clone();
        flipped[off as usize] ^= 0xff;
        assert_eq!(
            fs::read(ffs.backing(&path)).unwrap(),
            flipped,
            "write-corrupt-once={off}: first write"
        );
        file.write_all_at(&data, 0).unwrap();
        assert_eq!(
            fs::read(ffs.backing(&path)).unwrap(),
            data,
            "write-corrupt-once={off}: second write"
        );
        cases += 1;
    }
    ffs.report("faultfs_write_corrupt_once", cases);
}
