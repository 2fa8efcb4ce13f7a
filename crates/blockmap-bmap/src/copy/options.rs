//! How a [`Copier`](super::Copier) copies: [`CopyOptions`].

/// How a [`Copier`](crate::Copier) copies, as `sparsecopy::Options` for `sparsecopy`'s copier:
/// `CopyOptions::default()` is what `blockmap bmap copy` does without flags; setters chain:
/// `CopyOptions::new().sync(false).checksum_retry(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Verify each range's checksum (on by default; ranges without one are not verified).
    /// A compressed image's own checksums are checked either way.
    pub verify: bool,
    /// fsync the destination before returning (on by default, as bmaptool).
    pub sync: bool,
    /// After the copy is written and synced, read every range back from the destination
    /// (past the page cache) and compare it with its checksum; a range that differs is
    /// written again from the image and read back again, up to this many times, and the copy
    /// fails with [`Error::ReadBack`](crate::Error::ReadBack) naming those that never
    /// matched. Needs a bmap with checksums, and for retries an image that can be read again
    /// (not a pipe): else [`Error::ReadBackUnavailable`](crate::Error::ReadBackUnavailable),
    /// before anything is written. Off (`None`) by default.
    pub checksum_retry: Option<u32>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            verify: true,
            sync: true,
            checksum_retry: None,
        }
    }
}

impl CopyOptions {
    /// The defaults.
    pub fn new() -> Self {
        CopyOptions::default()
    }

    /// Sets [`CopyOptions::verify`].
    #[must_use]
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Sets [`CopyOptions::sync`].
    #[must_use]
    pub fn sync(mut self, on: bool) -> Self {
        self.sync = on;
        self
    }

    /// Sets [`CopyOptions::checksum_retry`] to `retries`.
    #[must_use]
    pub fn checksum_retry(mut self, retries: u32) -> Self {
        self.checksum_retry = Some(retries);
        self
    }
}
