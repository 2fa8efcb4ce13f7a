//! The backends, how one is chosen for a file, and the data-range iterator over each.

use std::fmt;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::str::FromStr;

use seekmap::DataSegments;
use tracing::debug;

use crate::error::{Error, Result};
use crate::fiemap::{self, FiemapData};
use crate::fs::is_unsupported_errno;
use crate::ranges::Merge;

/// How a block map is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The `FS_IOC_FIEMAP` ioctl, with doubtful (unwritten) extents settled by SEEK_DATA.
    Fiemap,
    /// `lseek(SEEK_DATA/SEEK_HOLE)`.
    Seek,
    /// Everything is data: block devices, or filesystems with neither FIEMAP nor SEEK_DATA.
    None,
}

impl Backend {
    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fiemap => "fiemap",
            Backend::Seek => "seek",
            Backend::None => "none",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backend to use: one by name (an error if it does not work on the file), or the best
/// that works ([`BackendChoice::Auto`]: FIEMAP, then SEEK_DATA, then none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// The best backend that works for the file.
    #[default]
    Auto,
    /// Exactly this backend.
    Only(Backend),
}

/// An unknown backend name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?} (expected auto, fiemap, seek or none)")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendChoice {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        Ok(match s {
            "auto" => BackendChoice::Auto,
            "fiemap" => BackendChoice::Only(Backend::Fiemap),
            "seek" => BackendChoice::Only(Backend::Seek),
            "none" => BackendChoice::Only(Backend::None),
            other => return Err(UnknownBackend(other.to_owned())),
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Only(b) => b.fmt(f),
        }
    }
}

/// Probes `backend` on `fd`: `Ok(Ok(()))` when it works, `Ok(Err(errno))` when the kernel or
/// filesystem does not support it, `Err` on a real failure.
fn probe(
    fd: BorrowedFd<'_>,
    backend: Backend,
    path: &std::path::Path,
) -> Result<Result<(), std::io::Error>> {
    match backend {
        Backend::Fiemap => match fiemap::probe(fd) {
            Ok(()) => Ok(Ok(())),
            Err(e) if is_unsupported_errno(e) => Ok(Err(e.into())),
            Err(e) => Err(Error::Fiemap {
                path: path.to_owned(),
                offset: 0,
                source: e.into(),
            }),
        },
        Backend::Seek => match seekmap::seek_data(fd, 0) {
            Ok(_) => Ok(Ok(())),
            Err(seekmap::Error::Unsupported { source, .. }) => Ok(Err(source.into())),
            Err(source) => Err(Error::Seek {
                path: path.to_owned(),
                source,
            }),
        },
        Backend::None => Ok(Ok(())),
    }
}

/// Resolves `choice` for a file: `is_regular` is false for block devices, which have no
/// extents of their own and always map as all data under `Auto`.
pub(crate) fn select(
    fd: BorrowedFd<'_>,
    choice: BackendChoice,
    is_regular: bool,
    path: &std::path::Path,
) -> Result<Backend> {
    match choice {
        BackendChoice::Only(backend) => match probe(fd, backend, path)? {
            Ok(()) => Ok(backend),
            Err(source) => Err(Error::Unsupported {
                path: path.to_owned(),
                backend,
                source,
            }),
        },
        BackendChoice::Auto if !is_regular => {
            debug!(path = %path.display(), "not a regular file: backend none");
            Ok(Backend::None)
        }
        BackendChoice::Auto => {
            for backend in [Backend::Fiemap, Backend::Seek] {
                match probe(fd, backend, path)? {
                    Ok(()) => {
                        debug!(path = %path.display(), %backend, "backend chosen");
                        return Ok(backend);
                    }
                    Err(e) => {
                        debug!(path = %path.display(), %backend, error = %e, "backend unsupported, falling back")
                    }
                }
            }
            debug!(path = %path.display(), "neither FIEMAP nor SEEK_DATA: backend none");
            Ok(Backend::None)
        }
    }
}

/// The unmerged data ranges of one backend, clipped to the window, in ascending order.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    Fiemap(Box<FiemapData<'a>>),
    Seek {
        segments: DataSegments<BorrowedFd<'a>>,
        path: &'a std::path::Path,
    },
    None(Option<Range<u64>>),
}

impl Iterator for Source<'_> {
    type Item = Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_marked().map(|r| r.map(|(r, _)| r))
    }
}

impl Source<'_> {
    /// The next range, and whether it was settled by SEEK_DATA inside a preallocated extent.
    fn next_marked(&mut self) -> Option<Result<(Range<u64>, bool)>> {
        match self {
            Source::Fiemap(f) => f.next_marked(),
            Source::Seek { segments, path } => segments.next().map(|r| {
                r.map(|r| (r, false)).map_err(|source| Error::Seek {
                    path: path.to_path_buf(),
                    source,
                })
            }),
            Source::None(window) => window.take().map(|r| Ok((r, false))),
        }
    }
}

/// A data range, and how sure the map is of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRange {
    /// The bytes.
    pub range: Range<u64>,
    /// Found by `SEEK_DATA` inside an unwritten (preallocated) extent: data written since the
    /// last writeback, or pages of zeros that a read put in the page cache. The kernel cannot
    /// tell the two apart, so it is data; a copier may look for all-zero blocks in it and
    /// leave holes there, as the rest of the extent reads as zeros too.
    pub settled: bool,
}

/// [`DataRanges`] with each range's [`DataRange::settled`] mark: sorted, disjoint, never
/// empty; touching ranges are merged when their marks agree. Made by
/// [`crate::BlockMap::data_marked`].
#[derive(Debug)]
pub struct MarkedDataRanges<'a> {
    pub(crate) source: Source<'a>,
    pub(crate) pending: Option<DataRange>,
    pub(crate) done: bool,
}

impl Iterator for MarkedDataRanges<'_> {
    type Item = Result<DataRange>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.source.next_marked() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok((r, settled))) => {
                    // Never backwards, never empty.
                    let start = self
                        .pending
                        .as_ref()
                        .map_or(r.start, |p| r.start.max(p.range.end));
                    if start >= r.end {
                        continue;
                    }
                    let r = start..r.end;
                    match &mut self.pending {
                        Some(p) if p.range.end == r.start && p.settled == settled => {
                            p.range.end = r.end;
                        }
                        pending => {
                            let next = DataRange { range: r, settled };
                            if let Some(out) = pending.replace(next) {
                                return Some(Ok(out));
                            }
                        }
                    }
                }
            }
        }
        self.pending.take().map(Ok)
    }
}

/// The data ranges of a window of a file: sorted, disjoint, never touching, never empty,
/// clipped to the window and to the file's size. Made by [`crate::BlockMap::data`].
#[derive(Debug)]
pub struct DataRanges<'a> {
    pub(crate) inner: Merge<Source<'a>>,
}

impl Iterator for DataRanges<'_> {
    type Item = Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl std::iter::FusedIterator for DataRanges<'_> {}
