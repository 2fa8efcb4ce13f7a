//! What this crate makes of the filesystems SRC and DST live on: which share extents, where
//! the whole-window clone goes first, which make up their files' sizes. The one place that
//! names filesystems.

use std::os::fd::BorrowedFd;

/// Filesystems whose `copy_file_range` shares extents (it calls `remap_file_range` first):
/// a "copy" there is a reflink in disguise.
pub(crate) fn copy_may_share(fd: BorrowedFd<'_>) -> bool {
    const BCACHEFS: u32 = 0xca45_1a4e;
    const OCFS2: u32 = 0x7461_636f;
    const NFS: u32 = 0x6969;
    const SMB2: u32 = 0xfe53_4d42;
    const CIFS: u32 = 0xff53_4d42;
    blockmap_core::fs::filesystem_magic(fd).is_some_and(|m| {
        [
            XFS_MAGIC,
            blockmap_core::fs::BTRFS_SUPER_MAGIC,
            BCACHEFS,
            OCFS2,
            NFS,
            SMB2,
            CIFS,
        ]
        .contains(&m)
    })
}

/// xfs's `f_type`.
pub(crate) const XFS_MAGIC: u32 = 0x5846_5342;

/// SRC and DST in one btrfs subvolume (one `st_dev`): where the whole-window clone is made
/// first and settled after ([`Engine::clone_then_settle`]). Elsewhere, as across two btrfs
/// filesystems, the extents are looked at first: a clone that cannot share must not be
/// tried when nothing whole is there to share.
pub(crate) fn same_btrfs_subvolume(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> bool {
    blockmap_core::fs::filesystem_magic(src) == Some(blockmap_core::fs::BTRFS_SUPER_MAGIC)
        && matches!(
            (rustix::fs::fstat(src), rustix::fs::fstat(dst)),
            (Ok(a), Ok(b)) if a.st_dev == b.st_dev
        )
}

/// Whether DST is on xfs. xfs reflinks small extents more slowly than it copies them
/// (131072 extents of 4 KiB: about twice the kernel time of writing them, four times the wall
/// time, SPEC section 7; btrfs is the other way round), and it shares only written blocks.
pub(crate) fn is_xfs(dst: BorrowedFd<'_>) -> bool {
    blockmap_core::fs::filesystem_magic(dst) == Some(XFS_MAGIC)
}

/// Filesystems whose files are made up as they are read: their sizes say nothing (procfs
/// and most of sysfs say 0, sysfs attributes say 4096).
pub(crate) const GENERATED: [u32; 10] = [
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x7363_6673, // securityfs
    0x6265_6570, // configfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0xde5e_81e4, // efivarfs
    0x6165_676c, // pstore
];

/// Filesystems that report sizes from elsewhere (a daemon, a server), which may be stale.
pub(crate) const REMOTE: [u32; 6] = [
    0x6573_5546, // fuse
    0x6969,      // nfs
    0xfe53_4d42, // smb2
    0xff53_4d42, // cifs
    0x0102_1997, // 9p
    0x00c3_6400, // ceph
];
