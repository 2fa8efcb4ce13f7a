//! Where a file's data lives and where its holes are.
//!
//! A [`BlockMap`] answers, for any byte window of a file: which ranges hold data
//! ([`BlockMap::data`]), which are holes ([`BlockMap::holes`]), whether one offset is data
//! ([`BlockMap::is_data`]), and the same in whole blocks for callers who think in blocks
//! ([`BlockMap::mapped_blocks`], [`BlockMap::unmapped_blocks`]). Ranges are half-open
//! `Range<u64>`s of bytes, sorted, merged and clipped to the window and the file size; data
//! and holes tile the window exactly. Iteration streams with a bounded buffer, whatever the
//! number of extents.
//!
//! Three backends compute it ([`Backend`]): the FIEMAP ioctl (thousands of extents per call),
//! `lseek(SEEK_DATA/SEEK_HOLE)`, and "none" (everything is data). [`BackendChoice::Auto`]
//! picks the best that works for the file and [`BlockMap::backend`] says which.
//!
//! # The one rule
//! A range reported as a hole reads back as zeros, right now: dirty page-cache data, data
//! written into preallocated extents and not yet converted, and delayed allocations are data.
//! Preallocated ranges never written are holes. No backend syncs the file to keep this rule
//! (unless asked: [`MapOptions::sync`]). This is the rule's one full statement; how the FIEMAP
//! backend keeps it at FIEMAP's speed is ARCHITECTURE.md's "The one rule, and why settling
//! beats syncing".
//!
//! The [`ranges`] module holds the pure range algebra (merge, clip, invert, block rounding).
//!
//! # Example
//! ```
//! use std::os::unix::fs::FileExt;
//! use blockmap_core::{BlockMap, BackendChoice};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = tempfile::tempfile()?;
//! file.write_all_at(&[1; 4096], 1 << 20)?; // no fsync: still data
//! file.set_len(4 << 20)?;
//!
//! let map = BlockMap::new(&file, BackendChoice::Auto)?;
//! println!("{} bytes, blocks of {}, by {}", map.size(), map.block_size(), map.backend());
//! let data: Vec<_> = map.data(0..map.size()).collect::<Result<_, _>>()?;
//! let holes: Vec<_> = map.holes(0..map.size()).collect::<Result<_, _>>()?;
//! assert!(map.is_data(1 << 20)?);
//! assert!(data.iter().any(|r| r.contains(&(1 << 20))));
//! # let _ = holes;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

// README.md, the crate's page on crates.io: its example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

mod backend;
mod btrfs;
mod error;
mod fiemap;
pub mod fs;
pub mod ranges;

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, SeekFrom};
use tracing::debug;

pub use backend::{
    Backend, BackendChoice, DataRange, DataRanges, MarkedDataRanges, UnknownBackend,
};
pub use error::{Error, Result};
use fs::{block_size_of, open_readable};
use ranges::{Invert, Merge, RangeIterExt, from_blocks, to_blocks};

/// How a [`BlockMap`] is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapOptions {
    /// Which backend; [`BackendChoice::Auto`] by default.
    pub backend: BackendChoice,
    /// Sync the file before mapping (`fsync`), as the reference module always does. Never
    /// needed for correctness; useful to see settled, allocated extents.
    pub sync: bool,
    /// Extents per FIEMAP call (4096 by default: 224 KiB of buffer).
    pub fiemap_batch: u32,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            backend: BackendChoice::Auto,
            sync: false,
            fiemap_batch: 4096,
        }
    }
}

impl From<BackendChoice> for MapOptions {
    fn from(backend: BackendChoice) -> Self {
        MapOptions {
            backend,
            ..MapOptions::default()
        }
    }
}

/// One extent as FIEMAP reports it, unclipped: the raw detail behind a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Logical byte range in the file.
    pub logical: Range<u64>,
    /// Physical byte offset on the device.
    pub physical: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

impl Extent {
    pub(crate) fn from_raw(e: &fiemap_sys::fiemap_extent) -> Self {
        Extent {
            logical: e.fe_logical..e.fe_logical.saturating_add(e.fe_length),
            physical: e.fe_physical,
            flags: e.fe_flags,
        }
    }

    /// Whether the extent is allocated but unwritten (preallocated): it reads as zeros.
    pub fn is_unwritten(&self) -> bool {
        self.flags & fiemap_sys::FIEMAP_EXTENT_UNWRITTEN != 0
    }

    /// The lower-case names of the extent's flags (`"last"`, `"unwritten"`, `"shared"`…), in
    /// bit order; unknown bits are left out.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        fiemap_sys::EXTENT_FLAG_NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| *name)
    }
}

/// The block map of one open file (or block device).
#[derive(Debug)]
pub struct BlockMap<F> {
    file: F,
    path: PathBuf,
    size: u64,
    block_size: u32,
    backend: Backend,
    is_regular: bool,
    fiemap_batch: u32,
    /// Whether a doubtful span with no dirty page may keep its unwritten extents as holes
    /// without SEEK (see `fiemap::page_cache_clean`).
    trust_clean_unwritten: bool,
}

impl BlockMap<File> {
    /// Opens `path` read-only and maps it.
    ///
    /// The file is opened without blocking (a FIFO is refused rather than waited on) and must
    /// be a regular file or a block device.
    pub fn open(path: impl AsRef<Path>, options: impl Into<MapOptions>) -> Result<Self> {
        let path = path.as_ref();
        let file = open_readable(path)?;
        BlockMap::with_path(file, path, options.into())
    }
}

/// The type of the file behind `fd`: `Ok(true)` for a regular file, `Ok(false)` for a block
/// device, an error for anything else.
fn kind_of(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::Stat {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => return Ok(true),
        FileType::BlockDevice => return Ok(false),
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::Symlink => "symbolic link",
        FileType::Unknown => "file of unknown type",
    };
    Err(Error::NotMappable {
        path: path.to_owned(),
        kind,
    })
}

/// The size of the file behind `fd`: `st_size`, or the device size for a block device.
fn size_of(fd: BorrowedFd<'_>, is_regular: bool, path: &Path) -> Result<u64> {
    let stat_err = |e: rustix::io::Errno| Error::Stat {
        path: path.to_owned(),
        source: e.into(),
    };
    if is_regular {
        let st = rustix::fs::fstat(fd).map_err(stat_err)?;
        Ok(st.st_size as u64)
    } else {
        rustix::fs::seek(fd, SeekFrom::End(0)).map_err(stat_err)
    }
}

impl<F: AsFd> BlockMap<F> {
    /// Maps an open file. Errors name it `<fd N>`; use [`BlockMap::with_path`] to name it.
    pub fn new(file: F, options: impl Into<MapOptions>) -> Result<Self> {
        let path = PathBuf::from(format!("<fd {}>", file.as_fd().as_raw_fd()));
        Self::with_path(file, path, options.into())
    }

    /// Maps an open file whose path is known, for error messages.
    pub fn with_path(file: F, path: impl Into<PathBuf>, options: MapOptions) -> Result<Self> {
        let path = path.into();
        let fd = file.as_fd();
        let is_regular = kind_of(fd, &path)?;
        if options.sync {
            rustix::fs::fsync(fd).map_err(|e| Error::Sync {
                path: path.clone(),
                source: e.into(),
            })?;
        }
        let size = size_of(fd, is_regular, &path)?;
        let block_size = block_size_of(fd);
        let backend = backend::select(fd, options.backend, is_regular, &path)?;
        let trust_clean_unwritten = fiemap::trust_clean_unwritten(fd);
        debug!(path = %path.display(), size, block_size, %backend, "block map ready");
        Ok(BlockMap {
            file,
            path,
            size,
            block_size,
            backend,
            is_regular,
            fiemap_batch: options.fiemap_batch,
            trust_clean_unwritten,
        })
    }

    /// The file's size in bytes (a block device's capacity), as read when the map was made.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The filesystem block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The backend in use (the one `Auto` chose).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The path given when the map was made (`<fd N>` if none was).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for a regular file, false for a block device.
    pub fn is_regular(&self) -> bool {
        self.is_regular
    }

    /// The open file.
    pub fn file(&self) -> &F {
        &self.file
    }

    /// The number of blocks, the last one possibly partial.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size))
    }

    fn clip(&self, window: Range<u64>) -> Range<u64> {
        let end = window.end.min(self.size);
        window.start.min(end)..end
    }

    /// The data ranges of `window` (clipped to the file size).
    ///
    /// Every byte that does not read back as zero is inside one of them; they may include
    /// zeros (whole blocks, preallocated pages already read into the cache).
    pub fn data(&self, window: Range<u64>) -> DataRanges<'_> {
        DataRanges {
            inner: Merge::new(self.source(self.clip(window), false)),
        }
    }

    /// The backend's walk of a clipped window; `keep_extents`: FIEMAP's walk keeps a copy of
    /// every extent (and retries a stall with `FIEMAP_FLAG_SYNC`, as the raw listing does).
    fn source(&self, window: Range<u64>, keep_extents: bool) -> backend::Source<'_> {
        let fd = self.file.as_fd();
        let granule = u64::from(self.block_size).max(seekmap::DEFAULT_GRANULE);
        match self.backend {
            Backend::Fiemap => {
                let mut walk =
                    fiemap::ExtentWalk::new(fd, &self.path, window.clone(), self.fiemap_batch);
                if keep_extents {
                    walk = walk.sync_on_stall().keeping_extents();
                }
                backend::Source::Fiemap(Box::new(fiemap::FiemapData::new(
                    walk,
                    window,
                    granule,
                    self.trust_clean_unwritten,
                )))
            }
            Backend::Seek => backend::Source::Seek {
                segments: seekmap::DataSegments::with_granule(fd, window, granule),
                path: &self.path,
            },
            Backend::None => backend::Source::None((!window.is_empty()).then_some(window)),
        }
    }

    /// The data ranges of `window` as [`BlockMap::data`] finds them, each marked with whether
    /// it was settled by `SEEK_DATA` inside a preallocated extent (and so may be zeros in the
    /// page cache). Touching ranges with different marks are not merged.
    pub fn data_marked(&self, window: Range<u64>) -> MarkedDataRanges<'_> {
        let DataRanges { inner } = self.data(window);
        MarkedDataRanges {
            source: inner.into_inner(),
            pending: None,
            done: false,
        }
    }

    /// The hole ranges of `window` (clipped to the file size): exactly the complement of
    /// [`BlockMap::data`] in the window.
    pub fn holes(&self, window: Range<u64>) -> Invert<DataRanges<'_>> {
        let window = self.clip(window);
        self.data(window.clone()).inverted(window)
    }

    /// Whether the byte at `offset` is inside data (false past the end of the file).
    pub fn is_data(&self, offset: u64) -> Result<bool> {
        Ok(self
            .data(offset..offset.saturating_add(1))
            .next()
            .transpose()?
            .is_some())
    }

    /// [`BlockMap::data`] and [`BlockMap::extents`] of `window` from one walk of the file:
    /// the data ranges (merged), and the raw FIEMAP extents the walk met on the way (none for
    /// other backends), for callers that want both without asking the kernel twice. A walk
    /// that stalls is retried with `FIEMAP_FLAG_SYNC`, as [`BlockMap::extents`] does.
    pub fn data_and_extents(&self, window: Range<u64>) -> Result<(Vec<Range<u64>>, Vec<Extent>)> {
        let mut ranges = Merge::new(self.source(self.clip(window), true));
        let data = ranges.by_ref().collect::<Result<_>>()?;
        let extents = match ranges.into_inner() {
            backend::Source::Fiemap(mut walk) => walk.take_kept(),
            _ => Vec::new(),
        };
        Ok((data, extents))
    }

    /// The raw FIEMAP extents overlapping `window`, unclipped; none for other backends.
    pub fn extents(&self, window: Range<u64>) -> impl Iterator<Item = Result<Extent>> + '_ {
        let window = self.clip(window);
        let mut walk = (self.backend == Backend::Fiemap).then(|| {
            fiemap::ExtentWalk::new(self.file.as_fd(), &self.path, window, self.fiemap_batch)
                .sync_on_stall()
        });
        std::iter::from_fn(move || {
            loop {
                match walk.as_mut()?.next_piece()? {
                    Ok(fiemap::Piece::Extent(e)) => return Some(Ok(e)),
                    Ok(fiemap::Piece::Unsettled(_)) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
        })
    }

    /// The mapped blocks among `blocks` (block numbers), as merged ranges of block numbers: a
    /// block is mapped when any of its bytes is data. The last block may be partial.
    pub fn mapped_blocks(
        &self,
        blocks: Range<u64>,
    ) -> impl Iterator<Item = Result<Range<u64>>> + '_ {
        let bs = u64::from(self.block_size);
        self.data(from_blocks(blocks, bs))
            .map(move |r| r.map(|r| to_blocks(r, bs)))
            .merged()
    }

    /// The unmapped blocks among `blocks` (block numbers, clipped to [`BlockMap::block_count`]):
    /// exactly the complement of [`BlockMap::mapped_blocks`].
    pub fn unmapped_blocks(
        &self,
        blocks: Range<u64>,
    ) -> impl Iterator<Item = Result<Range<u64>>> + '_ {
        let end = blocks.end.min(self.block_count());
        let blocks = blocks.start.min(end)..end;
        self.mapped_blocks(blocks.clone()).inverted(blocks)
    }
}
