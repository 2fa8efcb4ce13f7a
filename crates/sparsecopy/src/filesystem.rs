//! What this crate makes of the filesystems SRC and DST live on: which share extents, where
//! the whole-window clone goes first, which make up their files' sizes. The one place that
//! names filesystems.

use std::os::fd::BorrowedFd;

use blockmap_core::fs::FsKind;
use linux_raw_sys::general as k;
use rustix::fs::Stat;

/// configfs's `f_type` (not in linux-raw-sys's `<linux/magic.h>`).
const CONFIGFS_MAGIC: u32 = 0x6265_6570;

/// DST's filesystem, asked once (one `fstatfs`) for the questions below.
pub(crate) fn of(dst: BorrowedFd<'_>) -> Option<FsKind> {
    FsKind::of(dst)
}

/// Filesystems whose `copy_file_range` shares extents (it calls `remap_file_range` first):
/// a "copy" there is a reflink in disguise.
pub(crate) fn copy_may_share(dst: Option<FsKind>) -> bool {
    dst.is_some_and(shares_in_copy)
}

/// [`copy_may_share`] of a kind.
fn shares_in_copy(kind: FsKind) -> bool {
    match kind {
        FsKind::Xfs | FsKind::Btrfs => true,
        FsKind::Ext4 | FsKind::Tmpfs => false,
        FsKind::Other(magic) => [
            k::BCACHEFS_SUPER_MAGIC,
            k::OCFS2_SUPER_MAGIC,
            k::NFS_SUPER_MAGIC,
            k::SMB2_SUPER_MAGIC,
            k::CIFS_SUPER_MAGIC,
        ]
        .contains(&magic),
    }
}

/// SRC and DST in one btrfs subvolume: DST on btrfs and one `st_dev` for both (each subvolume
/// has its own, so SRC is on it too). There the whole-window clone is made first and settled
/// after (`engine::reflink`). Elsewhere, as across two btrfs filesystems, the extents are
/// looked at first: a clone that cannot share must not be tried when nothing whole is there
/// to share.
pub(crate) fn same_btrfs_subvolume(dst: Option<FsKind>, src_stat: &Stat, dst_stat: &Stat) -> bool {
    dst == Some(FsKind::Btrfs) && src_stat.st_dev == dst_stat.st_dev
}

/// Whether DST is on xfs. xfs reflinks small extents more slowly than it copies them
/// (benches/RESULTS.md, "Measurements behind design choices"; btrfs is the other way round),
/// and it shares only written blocks.
pub(crate) fn is_xfs(dst: Option<FsKind>) -> bool {
    dst == Some(FsKind::Xfs)
}

/// Filesystems whose files are made up as they are read: their sizes say nothing (procfs
/// and most of sysfs say 0, sysfs attributes say 4096).
const GENERATED: [u32; 10] = [
    k::PROC_SUPER_MAGIC,
    k::SYSFS_MAGIC,
    k::DEBUGFS_MAGIC,
    k::TRACEFS_MAGIC,
    k::SECURITYFS_MAGIC,
    CONFIGFS_MAGIC,
    k::CGROUP_SUPER_MAGIC,
    k::CGROUP2_SUPER_MAGIC,
    k::EFIVARFS_MAGIC,
    k::PSTOREFS_MAGIC,
];

/// Filesystems that report sizes from elsewhere (a daemon, a server), which may be stale.
const REMOTE: [u32; 6] = [
    k::FUSE_SUPER_MAGIC,
    k::NFS_SUPER_MAGIC,
    k::SMB2_SUPER_MAGIC,
    k::CIFS_SUPER_MAGIC,
    k::V9FS_MAGIC,
    k::CEPH_SUPER_MAGIC,
];

/// How far SRC's stated size can be trusted, by its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeTrust {
    /// Files made up as they are read: the size says nothing.
    Generated,
    /// Sizes reported from elsewhere, which may be stale.
    Remote,
    /// A local filesystem's own size.
    Local,
}

/// [`SizeTrust`] of the filesystem holding `fd` (local where `fstatfs` fails).
pub(crate) fn size_trust(fd: BorrowedFd<'_>) -> SizeTrust {
    let magic = FsKind::of(fd).map_or(0, FsKind::magic);
    if GENERATED.contains(&magic) {
        SizeTrust::Generated
    } else if REMOTE.contains(&magic) {
        SizeTrust::Remote
    } else {
        SizeTrust::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filesystems_that_share_inside_copy_file_range() {
        // <linux/magic.h>, written out so that a wrong constant fails.
        let sharing = [0x5846_5342, 0x9123_683e, 0xca45_1a4e, 0x7461_636f, 0x6969];
        let sharing = sharing.into_iter().chain([0xfe53_4d42, 0xff53_4d42]);
        for magic in sharing {
            assert!(shares_in_copy(FsKind::from_magic(magic)), "{magic:#x}");
        }
        for magic in [0xef53, 0x0102_1994, 0x6573_5546, 0x9fa0] {
            assert!(!shares_in_copy(FsKind::from_magic(magic)), "{magic:#x}");
        }
    }

    #[test]
    fn generated_and_remote_magic_numbers() {
        let generated = [0x9fa0, 0x6265_6572, 0x6462_6720, 0x7472_6163, 0x7363_6673];
        let generated = generated.into_iter();
        let generated = generated.chain([0x6265_6570, 0x0027_e0eb, 0x6367_7270]);
        let generated = generated.chain([0xde5e_81e4, 0x6165_676c]);
        assert_eq!(GENERATED.to_vec(), generated.collect::<Vec<u32>>());
        let remote = [0x6573_5546, 0x6969, 0xfe53_4d42, 0xff53_4d42, 0x0102_1997];
        let remote = remote.into_iter().chain([0x00c3_6400]);
        assert_eq!(REMOTE.to_vec(), remote.collect::<Vec<u32>>());
    }
}
