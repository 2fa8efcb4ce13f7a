//! What to copy ([`Window`]) and how ([`Options`], [`Reflink`], [`Method`]), and what the
//! progress callback is told ([`Progress`]).

use blockmap_core::BackendChoice;

use crate::error::{Error, Result};

/// The byte window of a copy, as `dd bs=1 skip=S seek=K count=L`: `SRC[skip, skip + length)`
/// lands at `DST[seek, seek + length)`.
///
/// `length` defaults to the rest of SRC and is cut at SRC's end. The default window copies
/// the whole of SRC to offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Window {
    /// Offset in SRC where the window starts.
    pub skip: u64,
    /// Offset in DST where the window lands.
    pub seek: u64,
    /// Bytes to copy; `None` for the rest of SRC.
    pub length: Option<u64>,
}

impl Window {
    /// The whole of SRC, at offset 0 of DST.
    pub fn new() -> Self {
        Window::default()
    }

    /// Starts the window at `skip` in SRC.
    #[must_use]
    pub fn skip(mut self, skip: u64) -> Self {
        self.skip = skip;
        self
    }

    /// Lands the window at `seek` in DST.
    #[must_use]
    pub fn seek(mut self, seek: u64) -> Self {
        self.seek = seek;
        self
    }

    /// Copies at most `length` bytes.
    #[must_use]
    pub fn length(mut self, length: u64) -> Self {
        self.length = Some(length);
        self
    }

    /// The window for a source of `src_size` bytes: checks the offsets and cuts the length at
    /// SRC's end.
    ///
    /// `skip == src_size` is an empty copy (as dd, which copies nothing there); `skip` past
    /// the end is an error (dd only warns). Every offset of either window, once the length
    /// is cut, must fit in an `loff_t` (`i64`), the kernel's file offset.
    pub(crate) fn resolve(self, src_size: u64, src: &std::path::Path) -> Result<Resolved> {
        if self.skip > src_size {
            return Err(Error::SkipPastEnd {
                path: src.to_owned(),
                skip: self.skip,
                size: src_size,
            });
        }
        // Cut first: a length beyond SRC's end means "to the end", however large.
        let length = (src_size - self.skip).min(self.length.unwrap_or(u64::MAX));
        check_end("skip + length", self.skip, length)?;
        check_end("seek + length", self.seek, length)?;
        Ok(Resolved {
            skip: self.skip,
            seek: self.seek,
            length,
        })
    }

    /// The window for a SRC whose size lies ([`crate::source`]): read to its end, so the
    /// length is only a cap (as large as file offsets allow); `skip` was checked by reading.
    pub(crate) fn resolve_stream(self) -> Result<Resolved> {
        const MAX: u64 = i64::MAX as u64;
        check_end("skip + length", self.skip, 0)?;
        check_end("seek + length", self.seek, 0)?;
        let length = self
            .length
            .unwrap_or(u64::MAX)
            .min(MAX - self.skip)
            .min(MAX - self.seek);
        Ok(Resolved {
            skip: self.skip,
            seek: self.seek,
            length,
        })
    }
}

/// `a + b` must fit in a file offset (`i64`).
fn check_end(what: &'static str, a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .filter(|end| *end <= i64::MAX as u64)
        .ok_or(Error::Overflow { what, a, b })
}

/// A window checked against SRC: both ends fit in a file offset, `length` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub skip: u64,
    pub seek: u64,
    pub length: u64,
}

impl Resolved {
    /// The window in SRC.
    pub fn src(&self) -> std::ops::Range<u64> {
        self.skip..self.skip + self.length
    }

    /// Where SRC offset `src` (inside the window) lands in DST.
    pub fn dst_offset(self, src: u64) -> u64 {
        debug_assert!(src >= self.skip && src <= self.skip + self.length);
        src - self.skip + self.seek
    }
}

/// Whether data may be shared with SRC instead of copied (`FICLONERANGE`, as `cp --reflink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflink {
    /// Reflink where it works and pays off: data ranges of at least
    /// [`Options::reflink_min`] bytes whose whole blocks line up in SRC and DST (`skip - seek`
    /// a multiple of the block size), on a filesystem that shares extents (xfs, btrfs…).
    /// Falls back to copying, silently (a `debug` event), when the filesystem says no.
    #[default]
    Auto,
    /// Reflink every whole aligned block of data, or fail before writing anything: on a
    /// filesystem without reflink, across filesystems, to a block device, or when
    /// `skip - seek` is not a multiple of the block size. Partial blocks at the unaligned
    /// edges of a data range (and data ranges smaller than a block) are copied.
    Always,
    /// Never reflink. On filesystems whose `copy_file_range` shares extents itself (xfs,
    /// btrfs, bcachefs, ocfs2, NFS, SMB) [`Method::Auto`] then copies through user space, so
    /// DST gets blocks of its own.
    Never,
}

/// How the bytes that are not reflinked are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `copy_file_range` where it works and pays off (where the filesystem shares extents or
    /// copies server-side), read/write otherwise (see the crate documentation for the rules);
    /// falls back silently on EXDEV, EOPNOTSUPP, EINVAL, ENOSYS.
    #[default]
    Auto,
    /// `copy_file_range` only; an error if the kernel refuses it for these files (e.g. a block
    /// device, or two filesystems it will not copy between). For tests and benchmarks.
    CopyFileRange,
    /// `pread`/`pwrite` through a reused buffer only.
    ReadWrite,
}

/// How a copy is made. `Options::default()` is what `blockmap copy` does without flags;
/// setters chain: `Options::new().reflink(Reflink::Never).detect_zeros(true)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The block-map backend for SRC (DST, when its holes matter, is always mapped with
    /// [`BackendChoice::Auto`]). A backend asked for by name that does not work on SRC is an
    /// error.
    pub backend: BackendChoice,
    /// Whether to share data with SRC.
    pub reflink: Reflink,
    /// How to copy what is not shared.
    pub method: Method,
    /// Inside data ranges, leave all-zero blocks (blocks of DST's filesystem) unwritten, as
    /// `cp --sparse=always`: they become holes in DST, and are punched where DST had data.
    /// Needs the bytes in user space, so it implies read/write for the bytes it scans;
    /// reflinked ranges are not scanned (sharing allocates nothing). On a block device a
    /// zero block is treated as a hole: left alone unless [`Options::zero_holes`].
    pub detect_zeros: bool,
    /// DST a block device: make SRC's holes zero on the device too (`fallocate` punch or
    /// zero-range, or written zeros; never a discard, which need not read back as zeros).
    /// Without it a device's bytes under SRC's holes are left as they were. A regular-file
    /// DST ignores it: its holes are always made to read as zeros.
    pub zero_holes: bool,
    /// `fsync` DST when done, so the report is only returned once the data is on disk.
    pub sync: bool,
    /// Data ranges at least this long are reflinked under [`Reflink::Auto`] (default
    /// 64 KiB). Reflinking costs a metadata update per range: on xfs, sharing the small
    /// extents of a fragmented file takes longer than copying them (benches/RESULTS.md,
    /// "Measurements behind design choices"). Under
    /// [`Method::Auto`] on a filesystem whose `copy_file_range` shares extents, shorter ranges
    /// go through read/write for the same reason. 0 reflinks every range that can be.
    pub reflink_min: u64,
    /// The read/write buffer, allocated once per copy when first needed (default 1 MiB,
    /// rounded up to a whole number of DST blocks).
    pub buffer_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: BackendChoice::Auto,
            reflink: Reflink::Auto,
            method: Method::Auto,
            detect_zeros: false,
            zero_holes: false,
            sync: false,
            reflink_min: 64 << 10,
            buffer_size: 1 << 20,
        }
    }
}

impl Options {
    /// The defaults.
    pub fn new() -> Self {
        Options::default()
    }

    /// Sets [`Options::backend`].
    #[must_use]
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Sets [`Options::reflink`].
    #[must_use]
    pub fn reflink(mut self, reflink: Reflink) -> Self {
        self.reflink = reflink;
        self
    }

    /// Sets [`Options::method`].
    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Sets [`Options::detect_zeros`].
    #[must_use]
    pub fn detect_zeros(mut self, on: bool) -> Self {
        self.detect_zeros = on;
        self
    }

    /// Sets [`Options::zero_holes`].
    #[must_use]
    pub fn zero_holes(mut self, on: bool) -> Self {
        self.zero_holes = on;
        self
    }

    /// Sets [`Options::sync`].
    #[must_use]
    pub fn sync(mut self, on: bool) -> Self {
        self.sync = on;
        self
    }

    /// Sets [`Options::reflink_min`].
    #[must_use]
    pub fn reflink_min(mut self, bytes: u64) -> Self {
        self.reflink_min = bytes;
        self
    }

    /// Sets [`Options::buffer_size`].
    #[must_use]
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// Refuses combinations that cannot be honoured.
    pub(crate) fn check(&self) -> Result<()> {
        if self.detect_zeros && self.method == Method::CopyFileRange {
            return Err(Error::Conflict(
                "detect_zeros reads the data, so it cannot be combined with copy_file_range only",
            ));
        }
        Ok(())
    }
}

/// How far a copy has got, given to the progress callback: the window's data done against
/// the data there is, the holes passed apart (they cost nothing, and counting them as work
/// made a mostly empty image look copied at tens of GiB/s).
///
/// Over one copy `data_done` and `skipped` never go down; the last call has
/// `data_total == Some(data_done)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of data done: copied, reflinked, or read and found to be zeros (left out).
    pub data_done: u64,
    /// Bytes of data in the window, once known: SRC's map is walked as the copy goes, and its
    /// total is known when the walk ends (at the start unless SRC has many thousands of
    /// extents). `None` until then, and for a SRC whose size lies (it is read to its end).
    pub data_total: Option<u64>,
    /// Bytes of holes passed over: nothing read or written for them (in an existing DST, old
    /// data under them punched out).
    pub skipped: u64,
}
