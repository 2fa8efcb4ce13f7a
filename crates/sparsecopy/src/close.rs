//! Closing a written file and hearing what `close(2)` says: NFS, FUSE (its `flush`) and
//! upload-on-close filesystems report failed writes there, and `OwnedFd`'s drop ignores them.
#![allow(unsafe_code)] // close(2) takes a raw descriptor; the one block below proves its contract

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};

/// Closes `fd`, which was written to, and turns a failure into [`Error::Close`] naming `path`.
/// The descriptor is gone afterwards either way (Linux releases it even when close fails, so
/// it is never closed twice).
pub(crate) fn close(fd: OwnedFd, path: &Path) -> Result<()> {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` comes from `into_raw_fd` of an `OwnedFd` we owned, so it is open and no
    // one else owns it; after this call nothing refers to it (the `OwnedFd` was consumed).
    let closed = unsafe { rustix::io::try_close(raw) };
    closed.map_err(|e| Error::Close {
        path: path.to_owned(),
        source: e.into(),
    })
}
