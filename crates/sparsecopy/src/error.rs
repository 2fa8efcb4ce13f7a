//! The one error type of the crate: what failed, on which path, at which offset.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

/// What went wrong in a copy. Every variant names the operation and the file; I/O failures
/// carry the kernel's answer as their `source` (ENOSPC reads "No space left on device").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening, stat-ing or mapping a file failed (the message names the file), or SRC is of
    /// a kind that cannot be copied (directory, FIFO, socket, character device).
    #[error(transparent)]
    Map(#[from] blockmap_core::Error),
    /// `skip` is past SRC's end.
    #[error("{}: cannot skip to offset {skip}: the file holds {size} bytes", path.display())]
    SkipPastEnd {
        /// SRC.
        path: PathBuf,
        /// The offset asked.
        skip: u64,
        /// SRC's size.
        size: u64,
    },
    /// An end of the window does not fit in a file offset (`i64`).
    #[error("{what} = {a} + {b} overflows a file offset")]
    Overflow {
        /// `"skip + length"` or `"seek + length"`.
        what: &'static str,
        /// The offset.
        a: u64,
        /// The length.
        b: u64,
    },
    /// SRC and DST are the same file (same device and inode, or the same block device).
    #[error("{} and {} are the same file", src.display(), dst.display())]
    SameFile {
        /// SRC.
        src: PathBuf,
        /// DST.
        dst: PathBuf,
    },
    /// DST does not exist and its directory does not either.
    #[error("cannot create {}: directory {} does not exist", path.display(), dir.display())]
    DestDirMissing {
        /// DST.
        path: PathBuf,
        /// The missing directory.
        dir: PathBuf,
    },
    /// DST could not be opened or created.
    #[error("cannot open {} for writing: {source}", path.display())]
    OpenDest {
        /// DST.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// DST is neither a regular file nor a block device.
    #[error("{}: is a {kind}, not a regular file or block device", path.display())]
    DestKind {
        /// DST.
        path: PathBuf,
        /// `"directory"`, `"FIFO"`, `"socket"`, `"character device"`…
        kind: &'static str,
    },
    /// DST is a block device that another holder has open exclusively: a mounted
    /// filesystem, LVM, md, or another program (`EBUSY` of an `O_EXCL` open).
    #[error(
        "{}: the block device is in use (mounted, or held by LVM, md or another program); not writing to it",
        path.display()
    )]
    DeviceBusy {
        /// DST.
        path: PathBuf,
    },
    /// DST is a path under `/dev` that does not exist: a misspelt device name, which would
    /// otherwise become a regular file in the RAM-backed `/dev`.
    #[error("{}: no such device (not creating a regular file under /dev)", path.display())]
    NoSuchDevice {
        /// DST.
        path: PathBuf,
    },
    /// `fstat` of DST failed.
    #[error("cannot stat {}: {source}", path.display())]
    StatDest {
        /// DST.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The window does not fit on the block device DST.
    #[error("{}: the window ends at byte {end} but the device holds {size} bytes", path.display())]
    DeviceTooSmall {
        /// DST.
        path: PathBuf,
        /// `seek + length`.
        end: u64,
        /// The device's size.
        size: u64,
    },
    /// Options that cannot be honoured together.
    #[error("conflicting options: {0}")]
    Conflict(&'static str),
    /// [`crate::Reflink::Always`], and the kernel cannot share these files' data.
    #[error("cannot reflink {} to {}: {source}", src.display(), dst.display())]
    ReflinkUnsupported {
        /// SRC.
        src: PathBuf,
        /// DST.
        dst: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// [`crate::Reflink::Always`], and the blocks of SRC and DST do not line up.
    #[error(
        "cannot reflink into {}: skip ({skip}) and seek ({seek}) do not differ by a multiple \
         of its block size ({block_size})",
        path.display()
    )]
    ReflinkMisaligned {
        /// DST.
        path: PathBuf,
        /// The window's skip.
        skip: u64,
        /// The window's seek.
        seek: u64,
        /// DST's block size.
        block_size: u64,
    },
    /// [`crate::Reflink::Always`] to a block device, which cannot share data.
    #[error("cannot reflink to {}: it is a block device", path.display())]
    ReflinkToDevice {
        /// DST.
        path: PathBuf,
    },
    /// A method forced by [`crate::Options::method`] is refused by the kernel for these
    /// files.
    #[error("{method} from {} to {} is not supported here: {source}", src.display(), dst.display())]
    MethodUnsupported {
        /// `"copy_file_range"`.
        method: &'static str,
        /// SRC.
        src: PathBuf,
        /// DST.
        dst: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Reading SRC failed.
    #[error("cannot read {} at offset {offset}: {source}", path.display())]
    Read {
        /// SRC.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// SRC's size, modification or change time moved while it was copied: what was copied
    /// may mix old and new contents (or zeros where it was cut short).
    #[error("{} changed during the copy ({what} moved); {dst}", path.display())]
    SourceChanged {
        /// SRC.
        path: PathBuf,
        /// What moved: `"size"`, `"size, mtime"`…
        what: String,
        /// What became of DST.
        dst: DstState,
    },
    /// The copy was stopped from outside ([`crate::Copier::interrupt`]) before it finished.
    #[error("interrupted: {dst}")]
    Interrupted {
        /// What became of DST.
        dst: DstState,
    },
    /// A read of SRC ended before a data range it had a moment ago. Not returned by a copy:
    /// it becomes [`Error::SourceChanged`] when SRC's stat moved, else the copy goes on to
    /// where reading ends (a size that lies).
    #[error("{}: the file ended at offset {offset}, inside its data", path.display())]
    SourceShrank {
        /// SRC.
        path: PathBuf,
        /// Where SRC ended.
        offset: u64,
    },
    /// Writing DST failed.
    #[error("cannot write to {} at offset {offset}: {source}", path.display())]
    Write {
        /// DST.
        path: PathBuf,
        /// Where the write started.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// `copy_file_range` failed with a real error.
    #[error(
        "cannot copy {} to {} at offset {offset} (copy_file_range): {source}",
        src.display(),
        dst.display()
    )]
    CopyFileRange {
        /// SRC.
        src: PathBuf,
        /// DST.
        dst: PathBuf,
        /// The DST offset of the range.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// `FICLONERANGE` failed with a real error.
    #[error("cannot reflink {} to {} at offset {offset}: {source}", src.display(), dst.display())]
    Reflink {
        /// SRC.
        src: PathBuf,
        /// DST.
        dst: PathBuf,
        /// The DST offset of the range.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// Clearing a range of DST (punching a hole, zeroing a device range) failed.
    #[error("cannot clear {} at offset {offset} ({len} bytes): {source}", path.display())]
    Clear {
        /// DST.
        path: PathBuf,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The cause.
        source: io::Error,
    },
    /// Growing DST to the end of the window failed.
    #[error("cannot extend {} to {size} bytes: {source}", path.display())]
    Resize {
        /// DST.
        path: PathBuf,
        /// The size asked.
        size: u64,
        /// The cause.
        source: io::Error,
    },
    /// Closing DST failed: the filesystem reported there that earlier writes did not reach
    /// it (NFS, FUSE's flush, upload-on-close filesystems).
    #[error("cannot close {}: {source}", path.display())]
    Close {
        /// DST.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `fsync` of DST failed ([`crate::Options::sync`]).
    #[error("cannot sync {}: {source}", path.display())]
    Sync {
        /// DST.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl Error {
    /// Says in an interrupted or changed-SRC error what became of DST.
    pub(crate) fn with_dst(self, state: DstState) -> Self {
        match self {
            Error::Interrupted { .. } => Error::Interrupted { dst: state },
            Error::SourceChanged { path, what, .. } => Error::SourceChanged {
                path,
                what,
                dst: state,
            },
            other => other,
        }
    }
}

/// What a copy that stopped halfway ([`Error::Interrupted`], [`Error::SourceChanged`])
/// left of DST.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DstState {
    /// Nothing was written to DST.
    Untouched {
        /// DST.
        path: PathBuf,
    },
    /// DST was created by this copy and is removed again.
    Removed {
        /// DST.
        path: PathBuf,
    },
    /// DST was created by this copy and could not be removed: it holds part of the data.
    Left {
        /// DST.
        path: PathBuf,
    },
    /// DST existed (a file or a device, which cannot be undone): the DST bytes of `range`
    /// may be partly written (also where a file was grown); outside it DST is untouched.
    PartlyWritten {
        /// DST.
        path: PathBuf,
        /// DST offsets.
        range: Range<u64>,
    },
}

impl fmt::Display for DstState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DstState::Untouched { path } => write!(f, "nothing was written to {}", path.display()),
            DstState::Removed { path } => {
                write!(f, "removed the partial copy {}", path.display())
            }
            DstState::Left { path } => write!(
                f,
                "could not remove the partial copy {}: do not use it",
                path.display()
            ),
            DstState::PartlyWritten { path, range } => write!(
                f,
                "{} bytes [{}, {}) may be partly written",
                path.display(),
                range.start,
                range.end
            ),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
