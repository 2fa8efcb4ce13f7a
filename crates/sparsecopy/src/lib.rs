//! Copies a byte window of one file into another, touching only the data.
//!
//! The semantics are those of `dd bs=1 skip=S seek=K count=L conv=notrunc`, done sparsely:
//! the window `SRC[skip, skip + length)` lands at `DST[seek, seek + length)`
//! ([`Window`]); inside it DST ends up equal to SRC byte for byte, outside it DST is not
//! touched. SRC's holes are never read nor written; its data goes by the fastest way that
//! works ([`Options`]); a [`Report`] says what was done and how.
//!
//! # The window
//! - `length` defaults to the rest of SRC and is cut at SRC's end. `skip` past SRC's end is
//!   an error ([`Error::SkipPastEnd`]; dd only warns), `skip` at SRC's end is an empty copy.
//!   An end of either window beyond `i64::MAX` (a file offset), once the length is cut, is
//!   [`Error::Overflow`].
//! - An empty window writes nothing and, as dd, does not extend DST (it is still created if
//!   absent: a file of size 0).
//!
//! # The destination
//! - **Absent**: created (mode `0644` less the umask), `seek + length` bytes long, with holes
//!   wherever SRC has holes: it never gets more blocks than the data copied into it.
//! - **A regular file**: never truncated; grown to `seek + length` if shorter. Where SRC has
//!   a hole and DST had data, a hole is punched (`fallocate(PUNCH_HOLE)`, only over DST's own
//!   data ranges, found by mapping DST), or zeros are written where punching is not
//!   supported. A file given open ([`Copier::copy_files`]) is treated as existing.
//! - **A block device**: data is written; holes are left as they are unless
//!   [`Options::zero_holes`]; its size never changes, and a window that does not fit is an
//!   error before anything is written ([`Error::DeviceTooSmall`]).
//! - SRC and DST the same file (by device and inode, through any symbolic or hard link, or
//!   two nodes of one block device) is an error before anything is written. SRC is opened
//!   read-only and never written.
//!
//! # How data moves
//! Per data range, best first:
//! 1. **Reflink** (`FICLONERANGE`): the whole blocks of the range are shared with SRC when
//!    both are regular files, `skip - seek` is a multiple of DST's block size, and the range
//!    holds at least [`Options::reflink_min`] bytes of whole blocks (64 KiB by default:
//!    sharing many small extents costs more than copying them, on xfs above all). Partial
//!    blocks at the edges are copied.
//! 2. **`copy_file_range`**, looping on short copies, on filesystems where it shares extents
//!    or copies server-side (xfs, btrfs, bcachefs, ocfs2, NFS, SMB): skipped there for small
//!    ranges (and for all ranges under [`Reflink::Never`]), for the same reasons. Elsewhere
//!    (ext4, tmpfs…) the kernel's copy is a splice through a pipe, slower than read/write, and
//!    [`Method::Auto`] does not use it.
//! 3. **read/write** through one reused buffer ([`Options::buffer_size`], 1 MiB): small
//!    ranges close to each other share one `pread` (the holes between them are read, never
//!    written), each range gets its own `pwrite`.
//!
//! **The whole window at once.** Where reflinks may be made (as in 1.), DST's filesystem
//! shares extents (xfs, btrfs, bcachefs, ocfs2, NFS, SMB), SRC is mapped by FIEMAP and the
//! window holds whole blocks of data, all the window's whole blocks are cloned by a few `FICLONERANGE` calls (one per
//! TiB), holes and all, as `cp --reflink` does: one extent walk and one clone instead of a
//! reflink per range; only the partial blocks at the window's ends are copied range by range.
//! Not where SRC has preallocated extents in the window (the clone would share them as
//! allocated space where DST must have holes), except on xfs, which shares only written
//! blocks, and within one btrfs subvolume, where the clone comes first and the preallocated
//! extents are punched out of DST after it; on xfs not when SRC's data ranges are shorter
//! than [`Options::reflink_min`] on average. A filesystem that refuses the clone turns
//! reflinks off for the copy ([`Reflink::Auto`]) or fails it untouched ([`Reflink::Always`]).
//!
//! A method that the kernel refuses with EXDEV, EOPNOTSUPP, EINVAL, ENOSYS (and, for the
//! kernel copies, EBADF or ETXTBSY) is dropped for the rest of the copy, with a `debug`
//! event; a real I/O error (EIO, ENOSPC, …) is never a reason to fall back and ends the copy.
//! [`Reflink::Always`] and [`Method`] force a path and turn a refusal into an error.
//!
//! # The edges
//! - **A size that lies** (procfs and sysfs files, some FUSE and network files): SRC is read
//!   to its end, as `cp` reads it, and the window ends where reading does (also when a read
//!   ends early while SRC's stat has not moved).
//! - **SRC changing**: its size, mtime and ctime are compared before and after the copy (and
//!   when a read ends early); where they moved the copy fails ([`Error::SourceChanged`]).
//! - **Stopping**: [`Copier::interrupt`] stops a copy from another thread or a signal
//!   handler ([`Error::Interrupted`]).
//! - **A failed `close`** of DST fails the copy ([`Error::Close`]).
//!
//! A failed copy removes a DST it created; otherwise [`DstState`] in the error says which
//! DST bytes may be partly written.
//!
//! Memory is bounded whatever the number of extents: one buffer and a bounded batch of
//! pending ranges; the block maps stream.
//!
//! # Example
//! ```
//! use std::os::unix::fs::FileExt;
//! use sparsecopy::{Copier, Options, Window};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (src, dst) = (dir.path().join("disk.img"), dir.path().join("copy.img"));
//! let file = std::fs::File::create(&src)?;
//! file.write_all_at(b"boot", 0)?;
//! file.write_all_at(b"root", 8 << 20)?;
//! file.set_len(64 << 20)?; // 64 MiB, nearly all holes
//!
//! // Copy everything after the first MiB to offset 4096 of a new file.
//! let mut calls = 0;
//! let mut progress = |_: sparsecopy::Progress| calls += 1;
//! let report = Copier::new(Window::new().skip(1 << 20).seek(4096), Options::new())
//!     .progress(&mut progress)
//!     .copy_paths(&src, &dst)?;
//! assert_eq!(report.length, 63 << 20);
//! assert!(report.data_bytes < 1 << 20 && report.hole_bytes > 62 << 20);
//!
//! let copy = std::fs::File::open(&dst)?;
//! assert_eq!(copy.metadata()?.len(), 4096 + (63 << 20));
//! let mut buf = [0; 4];
//! copy.read_exact_at(&mut buf, 4096 + (7 << 20))?;
//! assert_eq!(&buf, b"root");
//! println!("{report}"); // copied 4.0 KiB of data, skipped 63.0 MiB of holes (…) in …
//! # assert!(calls > 0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

// README.md, the crate's page on crates.io: its example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

mod clone;
mod close;
mod dest;
mod destination;
mod engine;
mod error;
mod feed;
mod filesystem;
mod human;
mod options;
mod plan;
mod report;
mod source;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use blockmap_core::{BlockMap, MapOptions};
use tracing::debug_span;

pub use destination::Destination;
pub use error::{DstState, Error, Result};
pub use human::human_size;
pub use options::{Method, Options, Progress, Reflink, Window};
pub use report::{Report, Syscalls, Transfer};

/// One copy to make: the window, the options, and an optional progress callback.
///
/// ```no_run
/// # use sparsecopy::{Copier, Options, Reflink, Window};
/// # fn main() -> sparsecopy::Result<()> {
/// let report = Copier::new(Window::new().seek(1 << 20), Options::new().reflink(Reflink::Never))
///     .copy_paths("disk.img", "/dev/sdX")?;
/// # Ok(()) }
/// ```
pub struct Copier<'p> {
    window: Window,
    options: Options,
    progress: Option<&'p mut dyn FnMut(Progress)>,
    stop: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for Copier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("window", &self.window)
            .field("options", &self.options)
            .field("progress", &self.progress.is_some())
            .field("stop", &self.stop)
            .finish()
    }
}

impl<'p> Copier<'p> {
    /// A copy of `window` made with `options`.
    pub fn new(window: Window, options: Options) -> Self {
        Copier {
            window,
            options,
            progress: None,
            stop: None,
        }
    }

    /// Stops the copy soon after `flag` is raised (by another thread or a signal handler):
    /// it is looked at before every step of the copy and between the reads and writes of
    /// long ranges, so at most about one MiB more is copied (or one kernel copy of up to
    /// 16 MiB, or one clone). The copy then fails with [`Error::Interrupted`], which says
    /// what became of DST: a DST this copy created is removed; an existing file or device
    /// cannot be undone, and the error names the DST byte range that may be partly written.
    #[must_use]
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Calls `f` as the copy advances ([`Progress`]: data done, data total, holes skipped):
    /// at most once per MiB of the window, when the data total becomes known, and once at
    /// the end with `data_total == Some(data_done)`.
    #[must_use]
    pub fn progress(mut self, f: &'p mut dyn FnMut(Progress)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Copies between two paths: SRC is opened read-only, DST is opened for writing without
    /// truncation, or created. A DST created here is removed again if the copy fails, so a
    /// failed copy never leaves a partial file that looks like a whole one.
    pub fn copy_paths(self, src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<Report> {
        self.copy_paths_inner(src.as_ref(), dst.as_ref())
    }

    fn copy_paths_inner(self, src: &Path, dst: &Path) -> Result<Report> {
        let _span = debug_span!("copy", src = %src.display(), dst = %dst.display()).entered();
        let started = Instant::now();
        self.options.check()?;
        let src_file = blockmap_core::fs::open_readable(src)?;
        let prepared = self.prepare(started, src_file.as_fd(), src, dst)?;
        let (dst_fd, created) = dest::open_or_create(dst)?;
        let result = self.execute(prepared, dst_fd.as_fd(), dst, created);
        // Taken while DST is open, to recognise the file created if it must go again.
        let identity = rustix::fs::fstat(&dst_fd);
        // A failed close is a failed write (NFS, FUSE's flush report them there).
        let result = result.and_then(|report| close::close(dst_fd, dst).map(|()| report));
        match result {
            Err(e) if created => {
                let removed = identity.is_ok_and(|id| dest::remove_created(&id, dst));
                let path = dst.to_owned();
                Err(e.with_dst(if removed {
                    DstState::Removed { path }
                } else {
                    DstState::Left { path }
                }))
            }
            result => result,
        }
    }

    /// What every entry point finds out before DST is touched: SRC's status and map, the
    /// window against it; an interrupt raised by now stops the copy with DST untouched.
    fn prepare<'a>(
        &self,
        started: Instant,
        src: BorrowedFd<'a>,
        src_path: &Path,
        dst_path: &Path,
    ) -> Result<Prepared<'a>> {
        let src_stat = source::stat(src, src_path)?;
        let src_map = BlockMap::with_path(src, src_path, self.map_options())?;
        let (window, stream) = self.resolve(&src_map, &src_stat)?;
        if self
            .stop
            .as_deref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(Error::Interrupted {
                dst: DstState::Untouched {
                    path: dst_path.to_owned(),
                },
            });
        }
        Ok(Prepared {
            started,
            src_stat,
            src_map,
            window,
            stream,
        })
    }

    /// Runs the engine from SRC, as prepared, into DST.
    fn execute(
        self,
        prepared: Prepared<'_>,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
        created: bool,
    ) -> Result<Report> {
        engine::run(engine::Job {
            src_map: &prepared.src_map,
            src_stat: &prepared.src_stat,
            dst,
            dst_path,
            created,
            window: prepared.window,
            stream: prepared.stream,
            options: &self.options,
            progress: self.progress,
            stop: self.stop.as_deref(),
            started: prepared.started,
        })
    }

    /// The window against SRC, and whether SRC is streamed (its size lies).
    fn resolve(
        &self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        src_stat: &rustix::fs::Stat,
    ) -> Result<(options::Resolved, bool)> {
        let src = *src_map.file();
        if source::size_lies(src, src_stat) {
            source::check_skip(src, src_map.path(), self.window.skip)?;
            return Ok((self.window.resolve_stream()?, true));
        }
        Ok((self.window.resolve(src_map.size(), src_map.path())?, false))
    }

    /// Copies between two open files, named `<fd N>` in errors. SRC needs read access, DST
    /// write access without `O_APPEND`; DST is treated as an existing file.
    pub fn copy_files(self, src: impl AsFd, dst: impl AsFd) -> Result<Report> {
        let (src, dst) = (src.as_fd(), dst.as_fd());
        let src_name = fd_name(src);
        let dst_name = fd_name(dst);
        self.copy_named_inner(src, &src_name, dst, &dst_name)
    }

    /// As [`Copier::copy_files`], naming the files in errors.
    pub fn copy_named(
        self,
        src: impl AsFd,
        src_path: impl AsRef<Path>,
        dst: impl AsFd,
        dst_path: impl AsRef<Path>,
    ) -> Result<Report> {
        self.copy_named_inner(
            src.as_fd(),
            src_path.as_ref(),
            dst.as_fd(),
            dst_path.as_ref(),
        )
    }

    fn copy_named_inner(
        self,
        src: BorrowedFd<'_>,
        src_path: &Path,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
    ) -> Result<Report> {
        let _span =
            debug_span!("copy", src = %src_path.display(), dst = %dst_path.display()).entered();
        let started = Instant::now();
        self.options.check()?;
        let prepared = self.prepare(started, src, src_path, dst_path)?;
        self.execute(prepared, dst, dst_path, false)
    }

    fn map_options(&self) -> MapOptions {
        MapOptions {
            backend: self.options.backend,
            ..MapOptions::default()
        }
    }
}

/// SRC as [`Copier::prepare`] found it, before DST is touched.
struct Prepared<'a> {
    started: Instant,
    src_stat: rustix::fs::Stat,
    src_map: BlockMap<BorrowedFd<'a>>,
    window: options::Resolved,
    stream: bool,
}

fn fd_name(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("<fd {}>", fd.as_raw_fd()))
}

/// Copies `window` of `src` into `dst` with `options`, without progress reports: short for
/// `Copier::new(window, options.clone()).copy_paths(src, dst)`.
pub fn copy(
    src: impl AsRef<Path>,
    dst: impl AsRef<Path>,
    window: Window,
    options: &Options,
) -> Result<Report> {
    Copier::new(window, options.clone()).copy_paths(src, dst)
}
