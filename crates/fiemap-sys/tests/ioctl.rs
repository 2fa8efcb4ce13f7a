//! Runs the ioctls on real files in the test's temporary directory.
//!
//! The filesystem under `$TMPDIR` may lack FIEMAP (tmpfs answers `EOPNOTSUPP`); the tests say
//! so and check that the error is the documented one instead of failing or passing silently.

use std::io::Write;
use std::os::unix::fs::FileExt;

use fiemap_sys::*;
use rustix::io::Errno;

fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::OPNOTSUPP | Errno::NOTTY)
}

#[test]
fn maps_written_blocks_of_a_sparse_file() {
    let mut file = tempfile::tempfile().unwrap();
    // 64 KiB of data at 1 MiB, then a hole up to 4 MiB, fsynced so the extent is settled.
    file.write_all_at(&[0xA5; 65536], 1 << 20).unwrap();
    file.set_len(4 << 20).unwrap();
    file.flush().unwrap();
    file.sync_all().unwrap();

    let mut buf = FiemapBuffer::new(16);
    buf.set_request(0, FIEMAP_MAX_OFFSET, 0);
    match fiemap_ioctl(&file, &mut buf) {
        Err(e) if unsupported(e) => {
            eprintln!("FIEMAP not supported by the filesystem of $TMPDIR ({e}); nothing to map");
            return;
        }
        Err(e) => panic!("FIEMAP failed: {e}"),
        Ok(()) => {}
    }
    let extents = buf.extents();
    assert!(
        !extents.is_empty(),
        "a file with 64 KiB of synced data has extents"
    );
    let covered: u64 = extents.iter().map(|e| e.fe_length).sum();
    assert!(covered >= 65536, "extents cover the data: {extents:?}");
    for e in extents {
        assert!(e.fe_logical + e.fe_length > 1 << 20 && e.fe_logical < (1 << 20) + 65536);
    }
    assert_ne!(extents.last().unwrap().fe_flags & FIEMAP_EXTENT_LAST, 0);
}

#[test]
fn count_only_request_counts_extents() {
    let file = tempfile::tempfile().unwrap();
    for i in 0..4u64 {
        file.write_all_at(&[1; 4096], i * 65536).unwrap();
    }
    file.sync_all().unwrap();
    let mut buf = FiemapBuffer::new(0);
    buf.set_request(0, FIEMAP_MAX_OFFSET, 0);
    match fiemap_ioctl(&file, &mut buf) {
        Err(e) if unsupported(e) => eprintln!("FIEMAP not supported here ({e})"),
        Err(e) => panic!("FIEMAP failed: {e}"),
        Ok(()) => {
            assert_eq!(buf.header().fm_mapped_extents, 4);
            assert!(
                buf.extents().is_empty(),
                "a count-only buffer returns no extent"
            );
        }
    }
}

#[test]
fn figetbsz_is_a_power_of_two() {
    let file = tempfile::tempfile().unwrap();
    let bsz = figetbsz(&file).unwrap();
    assert!(bsz.is_power_of_two() && bsz >= 512, "block size {bsz}");
}

#[test]
fn ioctls_on_an_o_path_descriptor_fail_cleanly() {
    use rustix::fs::{Mode, OFlags, open};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let fd = open(&path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap();
    assert_eq!(figetbsz(&fd), Err(Errno::BADF));
    let mut buf = FiemapBuffer::new(4);
    buf.set_request(0, FIEMAP_MAX_OFFSET, 0);
    assert_eq!(fiemap_ioctl(&fd, &mut buf), Err(Errno::BADF));
}

/// Off btrfs the tree search is refused (`ENOTTY`) and nothing is reported; an empty range
/// asks the kernel nothing. (On btrfs it is checked against FIEMAP by blockmap-cli's
/// filesystem tests.)
#[test]
fn btrfs_tree_search_is_refused_off_btrfs() {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&[1; 4096], 0).unwrap();
    let mut seen = Vec::new();
    btrfs_file_extents(&file, 0..0, |e| seen.push(e)).unwrap();
    assert!(seen.is_empty());
    #[allow(clippy::unnecessary_cast)]
    let on_btrfs = rustix::fs::fstatfs(&file).unwrap().f_type as i64 == BTRFS_SUPER_MAGIC;
    if on_btrfs {
        eprintln!("skipped: $TMPDIR is on btrfs");
        return;
    }
    let got = btrfs_file_extents(&file, 0..4096, |e| seen.push(e));
    assert_eq!(got, Err(Errno::NOTTY), "{seen:?}");
    assert!(seen.is_empty());
}
