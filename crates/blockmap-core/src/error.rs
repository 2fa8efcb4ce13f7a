//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

use crate::Backend;

/// What failed, on which file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `fstat` (or the size of a block device) failed.
    #[error("cannot stat {}: {source}", path.display())]
    Stat {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is of a kind that has no block map (directory, FIFO, socket, character device).
    #[error("{}: is a {kind}, not a regular file or block device", path.display())]
    NotMappable {
        /// The file.
        path: PathBuf,
        /// `"directory"`, `"FIFO"`, `"socket"`, `"character device"`, `"symbolic link"`.
        kind: &'static str,
    },
    /// A backend asked for by name does not work on this file.
    #[error("{}: the {backend} backend is not supported here: {source}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The backend asked for.
        backend: Backend,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The FIEMAP ioctl failed with a real error.
    #[error("FIEMAP of {} at offset {offset} failed: {source}", path.display())]
    Fiemap {
        /// The file.
        path: PathBuf,
        /// The start of the range asked.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// The SEEK_DATA/SEEK_HOLE walk failed with a real error.
    #[error("seeking data in {}: {source}", path.display())]
    Seek {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: seekmap::Error,
    },
    /// Syncing the file before mapping it failed (`--sync`).
    #[error("cannot sync {}: {source}", path.display())]
    Sync {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
