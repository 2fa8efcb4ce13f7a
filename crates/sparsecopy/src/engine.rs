//! The copy itself: walks the window's steps in order and carries each out by the best method
//! that works, falling back (once, for the rest of the copy) when the kernel says a method is
//! not supported, never on a real I/O error.
//!
//! Order matters in one place: the destination's own map is read as one forward walk
//! ([`DstCursor`]) and every question asked of it ("where does DST hold data in this range
//! that must read as zeros?") comes in ascending order. Only ranges that the walk has not
//! written yet are asked about, so the answers stay true while the copy writes behind them.
//!
//! The engine is the writing half of a pipeline: SRC's map is walked and its small data
//! ranges are read on a second thread ([`crate::feed`]), so that on files of many small
//! extents the reads and the map overlap the writes.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use blockmap_core::fs::{btrfs_extent_items, is_unsupported_errno};
use blockmap_core::ranges::round_in;
use blockmap_core::{BlockMap, DataRanges};
use rustix::fs::{FallocateFlags, Stat};
use rustix::io::Errno;
use tracing::{debug, trace};

use crate::clone::ficlonerange;
use crate::dest::{self, Kind};
use crate::error::{DstState, Error, Result};
use crate::feed::{self, Batch, Feed, Item, Policy};
use crate::filesystem;
use crate::filesystem::{is_xfs, same_btrfs_subvolume};
use crate::options::{Method, Options, Progress, Reflink, Resolved};
use crate::plan::{Step, Steps, ZeroRuns, blocks_line_up, cut};
use crate::report::{Report, Transfer};

/// Data ranges up to this length are read ahead and written from user space even where
/// the kernel could copy them: one `pwrite` each from a shared read beats a
/// `copy_file_range` each.
const READ_AHEAD_MAX: u64 = 64 << 10;
/// `FICLONERANGE` calls of the range-by-range copy are cut to this size, so progress moves.
const KERNEL_CHUNK: u64 = 1 << 30;
/// `copy_file_range` calls are cut to this size: a copy stops within one of them when
/// interrupted (a clone moves no data and is left whole).
const COPY_CHUNK: u64 = 16 << 20;
/// A whole window is reflinked in pieces of this size: mostly holes, as a disk image is, each
/// call costs next to nothing, and one per GiB made a 1 TiB image cost a thousand calls.
const CLONE_CHUNK: u64 = 1 << 40;
/// A `pwrite` writes at most this much, as cp does. The page cache sizes the folios it
/// allocates for a write by the write's length; folios of a whole buffer come from the large
/// free blocks that a VM with free page reporting has handed back to its host, and stall on
/// the host at first touch, where smaller ones come from memory still at hand (ARCHITECTURE).
const WRITE_MAX: usize = 128 << 10;
/// The progress callback is called at most once per this many bytes (and at the end).
const PROGRESS_EVERY: u64 = 1 << 20;
/// Zeros for filling where a hole cannot be punched.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Everything a copy needs, opened and checked by the caller: SRC mapped, the window
/// resolved against SRC's size, DST open for writing.
pub(crate) struct Job<'a, 'p> {
    pub src_map: &'a BlockMap<BorrowedFd<'a>>,
    /// SRC's stat before it was mapped: what must not move while it is copied.
    pub src_stat: &'a Stat,
    pub dst: BorrowedFd<'a>,
    pub dst_path: &'a Path,
    pub created: bool,
    pub window: Resolved,
    /// SRC's size lies ([`crate::source`]): read it to its end, the window's length a cap.
    pub stream: bool,
    pub options: &'a Options,
    pub progress: Option<&'p mut dyn FnMut(Progress)>,
    /// Raised to stop the copy ([`crate::Copier::interrupt`]).
    pub stop: Option<&'a AtomicBool>,
    pub started: Instant,
}

/// Runs a copy. Nothing is written to DST before every check has passed: same file, device
/// size, reflink feasibility (with [`Reflink::Always`], the first reflink is made before
/// anything else, so a filesystem that cannot share fails the copy untouched).
///
/// An interrupted copy, or one whose SRC changed, fails saying which DST bytes may be
/// partly written ([`DstState`]; the caller removes a DST it created).
pub(crate) fn run(job: Job<'_, '_>) -> Result<Report> {
    let Job {
        src_map,
        src_stat,
        dst,
        dst_path,
        created,
        window,
        stream,
        options,
        progress,
        stop,
        started,
    } = job;
    let src = *src_map.file();
    let src_path = src_map.path();

    let dest = dest::inspect(dst, dst_path)?;
    if dest::same_file(src_stat, &dest.stat) {
        return Err(Error::SameFile {
            src: src_path.to_owned(),
            dst: dst_path.to_owned(),
        });
    }
    let block_device = dest.kind == Kind::BlockDevice;
    let end = window.seek + window.length;
    // A streamed SRC's length is known once read: the device must hold its start at least.
    let must_fit = if stream { window.seek } else { end };
    if block_device && must_fit > dest.size {
        return Err(Error::DeviceTooSmall {
            path: dst_path.to_owned(),
            end: must_fit,
            size: dest.size,
        });
    }
    let bs = u64::from(blockmap_core::fs::block_size_of(dst));
    let lines_up = blocks_line_up(window.skip, window.seek, bs);
    if options.reflink == Reflink::Always && window.length > 0 {
        if block_device {
            return Err(Error::ReflinkToDevice {
                path: dst_path.to_owned(),
            });
        }
        if !lines_up {
            return Err(Error::ReflinkMisaligned {
                path: dst_path.to_owned(),
                skip: window.skip,
                seek: window.seek,
                block_size: bs,
            });
        }
        if stream {
            return Err(Error::ReflinkUnsupported {
                src: src_path.to_owned(),
                dst: dst_path.to_owned(),
                source: io::Error::other(
                    "SRC's size is not what reading it gives (procfs, sysfs, FUSE…): it is read, not shared",
                ),
            });
        }
    }
    // SRC mapped at another size than it was stat-ed: it is being written.
    if !stream && src_map.is_regular() && src_map.size() != src_stat.st_size as u64 {
        return Err(Error::SourceChanged {
            path: src_path.to_owned(),
            what: "size".to_owned(),
            dst: DstState::Untouched {
                path: dst_path.to_owned(),
            },
        });
    }

    let mut report = Report::new(src_map.backend());
    report.skip = window.skip;
    report.seek = window.seek;
    report.length = window.length;
    report.block_size = bs;
    report.created = created;
    report.block_device = block_device;

    let both_regular = src_map.is_regular() && !block_device && !stream;
    let reflink = options.reflink != Reflink::Never && both_regular && lines_up;
    if options.reflink == Reflink::Auto && !reflink {
        debug!(
            both_regular,
            lines_up, "no reflink: needs two regular files whose blocks line up"
        );
    }
    // Where copy_file_range can neither share nor offload (ext4, tmpfs…), it is a splice
    // through a pipe in the kernel: 13 % slower than read/write through a 1 MiB buffer for
    // a 1 GiB file on ext4 (medians of 7, interleaved). Auto keeps it where it does more.
    let may_share = both_regular && filesystem::copy_may_share(dst);
    let cfr = match options.method {
        _ if stream => false,
        Method::ReadWrite => false,
        Method::CopyFileRange => true,
        Method::Auto => may_share,
    };
    let copy_shares = cfr && may_share;
    let buf_len = (options.buffer_size.max(1) as u64).div_ceil(bs) * bs;
    let user_space = AtomicBool::new(!cfr);

    // DST's data matters only where it existed before: inside the window (for a streamed
    // SRC, its length a cap), below its old size; a file just created has none. Mapped
    // now, walked once the copy gets there.
    let old_data = window.seek..end.min(dest.size);
    let dst_map = if !block_device && !created && !old_data.is_empty() {
        let map = BlockMap::with_path(dst, dst_path, blockmap_core::MapOptions::default())?;
        debug!(backend = %map.backend(), range = ?old_data, "destination mapped");
        Some(map)
    } else {
        None
    };

    let mut engine = Engine {
        src,
        src_path,
        dst,
        dst_path,
        window,
        block_device,
        bs,
        options,
        reflink,
        cfr,
        copy_shares,
        user_space: &user_space,
        punch: true,
        device_punch: true,
        device_zero: true,
        prelinked: None,
        cursor: DstCursor::empty(),
        buf: Vec::new(),
        buf_len: buf_len as usize,
        report,
        progress,
        total: if stream {
            (src_stat.st_size as u64).saturating_sub(window.skip)
        } else {
            window.length
        },
        done: 0,
        reported: None,
        stop,
        touched: None,
        old_size: dest.size,
    };
    let result = if stream {
        // All of DST's old data past `seek` may lie under what is read.
        if let Some(map) = &dst_map {
            engine.cursor = DstCursor::new(map.data(old_data));
        }
        engine.stream_to_end(window.skip)
    } else {
        engine.copy_window(
            src_map,
            dst_map.as_ref().map(|m| m.data(old_data)),
            may_share,
        )
    };
    // A read that ended early: SRC changed, or its size lies (sysfs says 4096), and it is
    // read on to its end from there.
    let unchanged = || source_unchanged(src, src_path, src_stat, dst_path);
    let result = match result {
        Err(Error::SourceShrank { offset, .. }) => unchanged().and_then(|()| {
            debug!(
                offset,
                "SRC ended before its stated size: read on to its end"
            );
            engine.resume_stream()
        }),
        result => result,
    };
    let result = result
        .and_then(|()| engine.check_stop())
        .and_then(|()| unchanged())
        .and_then(|()| {
            if options.sync {
                engine.report.syscalls.fsync += 1;
                rustix::fs::fsync(dst).map_err(|e| Error::Sync {
                    path: dst_path.to_owned(),
                    source: e.into(),
                })?;
            }
            Ok(())
        });
    if let Err(e) = result {
        let state = match engine.touched.clone() {
            None => DstState::Untouched {
                path: dst_path.to_owned(),
            },
            Some(range) => DstState::PartlyWritten {
                path: dst_path.to_owned(),
                range,
            },
        };
        return Err(e.with_dst(state));
    }
    engine.tell_progress(true);
    let mut report = engine.report;
    report.elapsed = started.elapsed();
    debug!(%report, "copy done");
    Ok(report)
}

impl<'a> Engine<'a, '_> {
    /// Copies the window by the map: the whole-window clone or the reflink probe first, DST
    /// grown to the window's end, then the pipeline over what is left. `dst_data` walks
    /// DST's old data in the window (none for a new file or a device).
    fn copy_window(
        &mut self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        dst_data: Option<DataRanges<'a>>,
        may_share: bool,
    ) -> Result<()> {
        let (window, options) = (self.window, self.options);
        let end = window.seek + window.length;
        let cloned = if self.reflink && window.length > 0 && may_share {
            self.clone_window(src_map)?
        } else {
            None
        };
        if cloned.is_none() && self.reflink && window.length > 0 {
            self.prelink(src_map)?;
        }
        if !self.block_device && window.length > 0 && self.old_size < end {
            self.grow(end)?;
        }
        if cloned.is_none() && options.reflink == Reflink::Auto {
            self.unprobe()?;
        }
        // Walked only now that the probe's reflink is gone again.
        if let Some(data) = dst_data {
            self.cursor = DstCursor::new(data);
        }

        let read_max = if options.method == Method::CopyFileRange {
            0
        } else if !self.cfr || options.detect_zeros || options.method == Method::ReadWrite {
            self.buf_len as u64
        } else {
            READ_AHEAD_MAX
        };
        // What may be reflinked is not read.
        let read_max = match options.reflink {
            _ if !self.reflink => read_max,
            Reflink::Always => 0,
            _ => read_max.min(options.reflink_min.saturating_sub(1)),
        };
        // What the clone left: the partial blocks at the window's ends.
        let whole = window.src();
        let parts = match cloned {
            Some(c) => [whole.start..c.start, c.end..whole.end],
            None => [whole, 0..0],
        };
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let policy = Policy {
                read_max,
                user_space: self.user_space,
                buf_len: self.buf_len,
                settled_zeros: options.method != Method::CopyFileRange
                    && options.reflink != Reflink::Always,
                large_reads: !self.reflink
                    && !options.detect_zeros
                    && options.method != Method::CopyFileRange,
                stop: self.stop,
            };
            pipeline(self, src_map, part, policy)?;
        }
        Ok(())
    }
}

/// `Err(SourceChanged)` when SRC's size, mtime or ctime moved since `before` (DST's state
/// is filled in by the caller).
fn source_unchanged(
    src: BorrowedFd<'_>,
    src_path: &Path,
    before: &Stat,
    dst_path: &Path,
) -> Result<()> {
    let now = crate::source::stat(src, src_path)?;
    match crate::source::changed(before, &now) {
        None => Ok(()),
        Some(what) => Err(Error::SourceChanged {
            path: src_path.to_owned(),
            what,
            dst: DstState::Untouched {
                path: dst_path.to_owned(),
            },
        }),
    }
}

/// Copies `part` of the window (SRC offsets): the feed walks SRC's map and reads ahead on a
/// second thread, the engine writes on this one.
fn pipeline(
    engine: &mut Engine<'_, '_>,
    src_map: &BlockMap<BorrowedFd<'_>>,
    part: Range<u64>,
    policy: Policy<'_>,
) -> Result<()> {
    let (src, src_path) = (engine.src, engine.src_path);
    std::thread::scope(|scope| {
        let (items_tx, items) = mpsc::sync_channel(feed::POOL);
        let (give_back, returned) = mpsc::channel();
        let span = tracing::Span::current();
        let feeder = scope.spawn(move || {
            let _span = span.entered();
            let steps = Steps::new(src_map.data_marked(part.clone()), part);
            Feed::new(src, src_path, policy, items_tx, returned).run(steps);
        });
        let written = engine.consume(items, give_back);
        // The feed stops once its channels close, which `consume` made sure of.
        if let Err(panic) = feeder.join() {
            std::panic::resume_unwind(panic);
        }
        written
    })
}

/// FIEMAP's extents of `span` once a clone has written SRC's dirty pages back (then no
/// unwritten extent holds data): the written ones counted, the unwritten ones listed,
/// clipped to the span.
fn settled_extents(
    src_map: &BlockMap<BorrowedFd<'_>>,
    span: &Range<u64>,
    block: u64,
) -> Result<(Tally, Vec<Range<u64>>)> {
    let mut tally = Tally::new(span.clone(), block);
    let mut unwritten = Vec::new();
    for e in src_map.extents(span.clone()) {
        let e = e?;
        let r = e.logical.start.max(span.start)..e.logical.end.min(span.end);
        if r.is_empty() {
            continue;
        }
        if e.is_unwritten() {
            unwritten.push(r);
        } else {
            tally.add(r);
        }
    }
    Ok((tally, unwritten))
}

/// Data and holes of a span counted from its data ranges, given in order: bytes of data,
/// data ranges (touching ones counted as one), hole ranges; and whether a data range holds a
/// whole block (something to share).
struct Tally {
    span: Range<u64>,
    block: u64,
    /// Everything before it has been counted.
    pos: u64,
    /// Where the data range ending at `pos` began.
    run_start: u64,
    data: u64,
    data_ranges: u64,
    hole_ranges: u64,
    whole_block: bool,
}

impl Tally {
    fn new(span: Range<u64>, block: u64) -> Self {
        Tally {
            pos: span.start,
            run_start: span.start,
            span,
            block,
            data: 0,
            data_ranges: 0,
            hole_ranges: 0,
            whole_block: false,
        }
    }

    fn add(&mut self, r: Range<u64>) {
        let r = r.start.max(self.pos)..r.end.min(self.span.end);
        if r.is_empty() {
            return;
        }
        self.data += r.end - r.start;
        if r.start > self.pos || self.data_ranges == 0 {
            self.data_ranges += 1;
            self.run_start = r.start;
        }
        self.hole_ranges += u64::from(r.start > self.pos);
        self.pos = r.end;
        self.whole_block |= !cut(self.run_start..self.pos, self.block).blocks.is_empty();
    }

    fn finish(self) -> (u64, u64, u64) {
        let trailing = u64::from(self.pos < self.span.end);
        (self.data, self.data_ranges, self.hole_ranges + trailing)
    }
}

/// A forward walk over DST's data ranges, answering "which parts of this range hold data"
/// for ranges asked in ascending order.
struct DstCursor<'m> {
    ranges: Option<DataRanges<'m>>,
    /// The data range under the cursor, kept while it may overlap later questions.
    current: Option<Range<u64>>,
    /// Everything before it has been answered.
    pos: u64,
    /// The start of the last range asked about (questions come in ascending order).
    asked: u64,
}

impl<'m> DstCursor<'m> {
    /// A destination with no data to care about.
    fn empty() -> Self {
        DstCursor {
            ranges: None,
            current: None,
            pos: 0,
            asked: 0,
        }
    }

    fn new(ranges: DataRanges<'m>) -> Self {
        DstCursor {
            ranges: Some(ranges),
            current: None,
            pos: 0,
            asked: 0,
        }
    }

    /// The next piece of DST's data inside `range`, or `None` when there is no more. Call it
    /// until `None`; later calls must ask about later ranges.
    fn next_data(&mut self, range: &Range<u64>) -> Result<Option<Range<u64>>> {
        debug_assert!(range.start >= self.asked, "DST map asked out of order");
        self.asked = range.start;
        let start = range.start.max(self.pos);
        if start >= range.end {
            return Ok(None);
        }
        loop {
            let current = match self.current.take() {
                Some(c) => c,
                None => match self.ranges.as_mut().and_then(Iterator::next) {
                    None => {
                        self.ranges = None;
                        return Ok(None);
                    }
                    Some(r) => r?,
                },
            };
            if current.end <= start {
                continue;
            }
            if current.start >= range.end {
                self.current = Some(current);
                return Ok(None);
            }
            let piece = current.start.max(start)..current.end.min(range.end);
            self.pos = piece.end;
            self.current = Some(current);
            return Ok(Some(piece));
        }
    }
}

/// Whether an errno from `FICLONERANGE` or `copy_file_range` means "not between these two
/// files" rather than an I/O error: the unsupported errnos of any call, and EXDEV (two
/// filesystems), EBADF (a filesystem that cannot share on older kernels, or a descriptor the
/// kernel will not copy with, e.g. O_APPEND), ETXTBSY (a swap file).
fn unsupported_between(e: Errno) -> bool {
    is_unsupported_errno(e) || matches!(e, Errno::XDEV | Errno::BADF | Errno::TXTBSY)
}

struct Engine<'a, 'p> {
    src: BorrowedFd<'a>,
    src_path: &'a Path,
    dst: BorrowedFd<'a>,
    dst_path: &'a Path,
    window: Resolved,
    block_device: bool,
    /// DST's block size: reflink alignment, zero detection granularity.
    bs: u64,
    options: &'a Options,
    /// Methods still worth trying; each turns off for good at its first "not supported".
    reflink: bool,
    cfr: bool,
    /// DST's filesystem shares extents inside `copy_file_range`.
    copy_shares: bool,
    /// Told to the feed when the kernel's copy turns out unusable.
    user_space: &'a AtomicBool,
    punch: bool,
    device_punch: bool,
    device_zero: bool,
    /// The blocks already reflinked by [`Engine::prelink`], in SRC offsets.
    prelinked: Option<Range<u64>>,
    cursor: DstCursor<'a>,
    /// The read/write buffer, allocated at first use.
    buf: Vec<u8>,
    buf_len: usize,
    report: Report,
    progress: Option<&'p mut dyn FnMut(Progress)>,
    /// What the progress callback is told the window holds.
    total: u64,
    /// Bytes of the window done.
    done: u64,
    /// What the callback was last told.
    reported: Option<u64>,
    /// Raised to stop the copy.
    stop: Option<&'a AtomicBool>,
    /// The DST bytes written, cleared, shared or grown so far (their hull).
    touched: Option<Range<u64>>,
    /// DST's size before the copy.
    old_size: u64,
}

impl Engine<'_, '_> {
    fn dst_range(&self, src: &Range<u64>) -> Range<u64> {
        self.window.dst_offset(src.start)..self.window.dst_offset(src.end)
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        self.tell_progress(false);
    }

    fn tell_progress(&mut self, last: bool) {
        let Some(f) = self.progress.as_mut() else {
            return;
        };
        let due = match self.reported {
            None => true,
            Some(r) => self.done >= r + PROGRESS_EVERY || (last && r != self.done),
        };
        if due {
            self.reported = Some(self.done);
            f(Progress {
                done: self.done,
                total: self.total.max(self.done),
            });
        }
    }

    fn transferred(&mut self, how: Transfer, bytes: u64) {
        self.report.transferred(how, bytes);
        self.advance(bytes);
    }

    /// `Err(Interrupted)` once the stop flag is raised.
    fn check_stop(&self) -> Result<()> {
        if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            debug!(done = self.done, "interrupted");
            return Err(Error::Interrupted {
                dst: DstState::Untouched {
                    path: self.dst_path.to_owned(),
                },
            });
        }
        Ok(())
    }

    /// Notes that DST's bytes `dst` are about to change.
    fn touch(&mut self, dst: Range<u64>) {
        if dst.is_empty() {
            return;
        }
        self.touched = Some(match self.touched.take() {
            None => dst,
            Some(t) => t.start.min(dst.start)..t.end.max(dst.end),
        });
    }

    /// Grows a regular DST to `size` (never shrinks it).
    fn grow(&mut self, size: u64) -> Result<()> {
        self.touch(self.old_size..size);
        self.report.syscalls.ftruncate += 1;
        dest::grow(self.dst, self.dst_path, size)
    }

    /// Reads SRC from `from` to where reading ends (or to the window's end, a cap here) and
    /// writes what it gives: SRC's size lies, so its map says nothing. One `pread` per
    /// buffer; in a regular DST all-zero blocks become holes (punched where DST had data).
    /// The window then ends where reading did, and a regular DST ends there too (never below
    /// its old size).
    fn stream_to_end(&mut self, from: u64) -> Result<()> {
        let mut buf = self.take_buf();
        let end = self.window.skip + self.window.length;
        let mut at = from;
        let result = loop {
            if at >= end {
                break Ok(());
            }
            if let Err(e) = self.check_stop() {
                break Err(e);
            }
            let dst_at = self.window.dst_offset(at);
            let room = (self.buf_len - (dst_at % self.bs) as usize) as u64;
            let want = (end - at).min(room) as usize;
            let n = match self.read_some(at, &mut buf[..want]) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if self.block_device && dst_at + n as u64 > self.old_size {
                break Err(Error::DeviceTooSmall {
                    path: self.dst_path.to_owned(),
                    end: dst_at + n as u64,
                    size: self.old_size,
                });
            }
            self.report.data_bytes += n as u64;
            if let Err(e) = self.write_out(&buf[..n], dst_at, !self.block_device) {
                break Err(e);
            }
            at += n as u64;
        };
        self.buf = buf;
        result?;
        self.report.data_ranges += u64::from(at > from);
        self.window.length = at - self.window.skip;
        self.report.length = self.window.length;
        self.total = self.done;
        let new_end = self.window.dst_offset(at);
        if !self.block_device && self.window.length > 0 {
            let size = self.old_size.max(new_end);
            let now = rustix::fs::fstat(self.dst).map_err(|e| Error::StatDest {
                path: self.dst_path.to_owned(),
                source: e.into(),
            })?;
            if now.st_size as u64 != size {
                self.touch(size.min(now.st_size as u64)..size.max(now.st_size as u64));
                self.report.syscalls.ftruncate += 1;
                rustix::fs::ftruncate(self.dst, size).map_err(|e| Error::Resize {
                    path: self.dst_path.to_owned(),
                    size,
                    source: e.into(),
                })?;
            }
        }
        Ok(())
    }

    /// After a read of SRC ended before its stated size while SRC's stat did not move (a size
    /// that lies, as sysfs's 4096): what was done stands, and SRC is read on to its end.
    fn resume_stream(&mut self) -> Result<()> {
        let from = self.window.skip + self.done;
        let r = &mut self.report;
        // The step that met the end was counted whole; only what was written counts.
        r.data_bytes =
            r.reflinked_bytes + r.copy_file_range_bytes + r.read_write_bytes + r.zero_skipped_bytes;
        r.hole_bytes = self.done - r.data_bytes;
        self.stream_to_end(from)
    }

    /// One `pread` (retried on EINTR): the bytes it gave, 0 at SRC's end.
    fn read_some(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        loop {
            self.report.syscalls.pread += 1;
            match rustix::io::pread(self.src, &mut *buf, offset) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Read {
                        path: self.src_path.to_owned(),
                        offset,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Carries out the feed's items in order; returns when they end or one fails, with both
    /// channels closed (so the feed stops too).
    fn consume(
        &mut self,
        items: mpsc::Receiver<Vec<Item>>,
        give_back: mpsc::Sender<Vec<u8>>,
    ) -> Result<()> {
        for item in items.into_iter().flatten() {
            self.check_stop()?;
            match item {
                Item::Hole(r) => self.hole(r)?,
                Item::Data(r) => self.data(r)?,
                Item::Settled(r) => {
                    self.report.data_bytes += r.end - r.start;
                    self.report.data_ranges += 1;
                    self.stream(r, true)?;
                }
                Item::Batch(batch) => {
                    self.batch(&batch)?;
                    // The feed may have stopped already; then the buffer is just dropped.
                    let _ = give_back.send(batch.buf);
                }
                Item::Failed(e) => return Err(e),
            }
        }
        // The feed also stops when told to: then the items end early.
        self.check_stop()
    }

    fn hole(&mut self, src: Range<u64>) -> Result<()> {
        trace!(?src, "hole");
        let len = src.end - src.start;
        self.report.hole_bytes += len;
        self.report.hole_ranges += 1;
        self.clear(self.dst_range(&src))?;
        self.advance(len);
        Ok(())
    }

    /// Writes a batch that the feed read: its data ranges from the buffer, its holes cleared.
    fn batch(&mut self, batch: &Batch) -> Result<()> {
        trace!(
            spans = batch.spans.len(),
            steps = batch.steps.len(),
            "batch"
        );
        self.report.syscalls.pread += batch.preads;
        for (i, step) in batch.steps.iter().enumerate() {
            match step {
                Step::Data(r) | Step::Settled(r) => {
                    self.report.data_bytes += r.end - r.start;
                    if !(i == 0 && batch.continues) {
                        self.report.data_ranges += 1;
                    }
                    let zeros = matches!(step, Step::Settled(_));
                    self.write_out(batch.bytes(r), self.window.dst_offset(r.start), zeros)?;
                }
                Step::Hole(r) => self.hole(r.clone())?,
            }
        }
        Ok(())
    }

    fn data(&mut self, src: Range<u64>) -> Result<()> {
        trace!(?src, "data");
        self.report.data_bytes += src.end - src.start;
        self.report.data_ranges += 1;
        if self.reflink {
            let cut = cut(src.clone(), self.bs);
            let blocks = cut.blocks.end - cut.blocks.start;
            if blocks > 0
                && (self.options.reflink == Reflink::Always || blocks >= self.options.reflink_min)
            {
                self.copy(cut.head)?;
                self.reflink_blocks(cut.blocks)?;
                return self.copy(cut.tail);
            }
        }
        self.copy(src)
    }

    /// Reflinks the first whole blocks of data before anything else is written: the probe of
    /// whether this filesystem shares extents at all. With [`Reflink::Always`] a filesystem
    /// that cannot share fails the copy with DST untouched; with [`Reflink::Auto`] reflinking
    /// is given up for the whole copy.
    fn prelink(&mut self, src_map: &BlockMap<BorrowedFd<'_>>) -> Result<()> {
        for r in src_map.data(self.window.src()) {
            let blocks = cut(r?, self.bs).blocks;
            if !blocks.is_empty() {
                let blocks = blocks.start..blocks.end.min(blocks.start + KERNEL_CHUNK);
                if self.ficlonerange(&blocks)? {
                    debug!(?blocks, "reflink works here");
                    self.prelinked = Some(blocks);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reflinks all the window's whole blocks with a few `FICLONERANGE` calls (one per TiB),
    /// holes and all, as `cp --reflink` does: the kernel walks the extents, not us. Returns
    /// the SRC range cloned, or `None` when the window is left to range-by-range copying:
    /// SRC mapped without FIEMAP, or holding preallocated extents there (a clone would share
    /// them as allocated space where DST must have holes).
    fn clone_window(&mut self, src_map: &BlockMap<BorrowedFd<'_>>) -> Result<Option<Range<u64>>> {
        let span = round_in(self.window.src(), self.bs);
        if span.is_empty() || src_map.backend() != blockmap_core::Backend::Fiemap {
            return Ok(None);
        }
        if same_btrfs_subvolume(self.src, self.dst) {
            return self.clone_then_settle(src_map, span);
        }
        let xfs = is_xfs(self.dst);
        // What is cloned, counted as a copy would: data and holes, bytes and ranges.
        let mut tally = Tally::new(span.clone(), self.bs);
        let mut unwritten = false;
        for e in src_map.extents(span.clone()) {
            let e = e?;
            if e.is_unwritten() {
                // xfs shares only written blocks: an unwritten extent lands as a hole, its
                // data in the page cache written back first. btrfs would share it as
                // allocated space that SEEK_DATA calls data.
                if !xfs {
                    debug!(extent = ?e.logical, "preallocated extent in SRC: reflinking range by range");
                    return Ok(None);
                }
                unwritten = true;
                continue;
            }
            tally.add(e.logical);
        }
        let Tally {
            data,
            data_ranges,
            whole_block,
            ..
        } = tally;
        if !whole_block {
            // Nothing to share, and nothing to prove (the probe would not try either; with
            // Reflink::Always a refusal here would fail a copy that shares nothing).
            return Ok(None);
        }
        if self.options.reflink == Reflink::Auto
            && data < data_ranges.saturating_mul(self.options.reflink_min)
            && xfs
        {
            debug!(
                data,
                data_ranges, "many small extents on xfs: copying them beats reflinking them"
            );
            return Ok(None);
        }
        if !self.clone_span(&span)? {
            return Ok(None);
        }
        if unwritten {
            // Counted again now that the clone has written back SRC's dirty pages: FIEMAP's
            // unwritten extents are now exactly the unwritten space (zeros, cloned as holes),
            // and need no settling.
            (tally, _) = settled_extents(src_map, &span, self.bs)?;
        }
        self.cloned(span, tally)
    }

    /// The whole-window clone within one btrfs subvolume: cloned first, then settled. The
    /// clone writes SRC's dirty pages back before it shares anything, so afterwards SRC's
    /// extents are final: the written ones are what was shared as data, and the
    /// preallocated ones, which btrfs shares as allocated space that reads as zeros, are
    /// punched out of DST again (holes, as everywhere else). One extent walk, after the
    /// clone: btrfs's own extent items as root (a tenth of FIEMAP's cost there, which
    /// resolves every extent's sharing), else FIEMAP.
    fn clone_then_settle(
        &mut self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        span: Range<u64>,
    ) -> Result<Option<Range<u64>>> {
        if !self.clone_span(&span)? {
            return Ok(None);
        }
        let (tally, preallocated) = match btrfs_extent_items(self.src, span.clone()) {
            Some(items) => {
                let mut tally = Tally::new(span.clone(), self.bs);
                items.written.into_iter().for_each(|r| tally.add(r));
                (tally, items.preallocated)
            }
            None => settled_extents(src_map, &span, self.bs)?,
        };
        for r in preallocated {
            debug!(extent = ?r, "preallocated extent shared by the clone: punched out of DST");
            self.punch(self.dst_range(&r))?;
        }
        self.cloned(span, tally)
    }

    /// FICLONERANGE over the whole `span`, 1 TiB a call: `Ok(false)` when the filesystem
    /// does not share (nothing was cloned), an error when it stops midway.
    fn clone_span(&mut self, span: &Range<u64>) -> Result<bool> {
        let mut at = span.start;
        while at < span.end {
            let piece = at..span.end.min(at + CLONE_CHUNK);
            if !self.ficlonerange(&piece)? {
                if at == span.start {
                    return Ok(false);
                }
                // It cloned the first piece of these same two files.
                return Err(Error::Reflink {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    offset: self.window.dst_offset(at),
                    source: io::Error::other("the filesystem stopped sharing extents midway"),
                });
            }
            at = piece.end;
        }
        Ok(true)
    }

    /// Reports the cloned `span` as counted by `tally`.
    fn cloned(&mut self, span: Range<u64>, tally: Tally) -> Result<Option<Range<u64>>> {
        let (data, data_ranges, hole_ranges) = tally.finish();
        let holes = (span.end - span.start) - data;
        debug!(?span, data, data_ranges, "window reflinked whole");
        self.report.data_bytes += data;
        self.report.data_ranges += data_ranges;
        self.report.hole_bytes += holes;
        self.report.hole_ranges += hole_ranges;
        self.transferred(Transfer::Reflink, data);
        self.advance(holes);
        Ok(Some(span))
    }

    /// Undoes the probe's reflink when the window is copied range by range under
    /// [`Reflink::Auto`]: that range may be too small to reflink, and writing over shared
    /// blocks would cost copy-on-write allocations beyond the data. The blocks become a hole
    /// again, to be filled by the copy like any other.
    fn unprobe(&mut self) -> Result<()> {
        if let Some(blocks) = self.prelinked.take() {
            let dst = self.dst_range(&blocks);
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if !self.fallocate(mode, &dst)? {
                // The copy writes over it all the same; only the allocation is less tidy.
                debug!(?dst, "cannot punch the probe's reflink");
            }
        }
        Ok(())
    }

    /// One `FICLONERANGE`; "not supported" is an error under [`Reflink::Always`] and
    /// `Ok(false)` otherwise.
    fn ficlonerange(&mut self, src: &Range<u64>) -> Result<bool> {
        let dst = self.dst_range(src);
        self.check_stop()?;
        self.touch(dst.clone());
        loop {
            self.report.syscalls.ficlonerange += 1;
            let e = match ficlonerange(
                self.src,
                src.start,
                self.dst,
                dst.start,
                src.end - src.start,
            ) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => e,
            };
            if !unsupported_between(e) {
                return Err(Error::Reflink {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    offset: dst.start,
                    source: e.into(),
                });
            }
            if self.options.reflink == Reflink::Always {
                return Err(Error::ReflinkUnsupported {
                    src: self.src_path.to_owned(),
                    dst: self.dst_path.to_owned(),
                    source: e.into(),
                });
            }
            debug!(errno = %e, "FICLONERANGE not supported here; copying instead");
            self.reflink = false;
            return Ok(false);
        }
    }

    /// Reflinks whole blocks (SRC offsets, aligned), copying whatever cannot be shared.
    fn reflink_blocks(&mut self, src: Range<u64>) -> Result<()> {
        let mut at = src.start;
        while at < src.end {
            let piece = at..src.end.min(at + KERNEL_CHUNK);
            if self.prelinked.as_ref() == Some(&piece) {
                self.prelinked = None;
            } else if !self.reflink || !self.ficlonerange(&piece)? {
                return self.copy(at..src.end);
            }
            trace!(?piece, "reflinked");
            self.transferred(Transfer::Reflink, piece.end - piece.start);
            at = piece.end;
        }
        Ok(())
    }

    /// Copies a data range (SRC offsets) by `copy_file_range` where that is wanted and
    /// works, else through user space.
    fn copy(&mut self, src: Range<u64>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let src = if self.cfr && self.wants_copy_file_range(src.end - src.start) {
            match self.copy_file_range(src)? {
                None => return Ok(()),
                Some(rest) => rest,
            }
        } else {
            src
        };
        self.stream(src, false)
    }

    /// The choice between the kernel's copy and user space, for a range of `len` bytes.
    fn wants_copy_file_range(&self, len: u64) -> bool {
        match self.options.method {
            Method::CopyFileRange => true,
            Method::ReadWrite => false,
            // Zero detection needs the bytes. Where copy_file_range shares extents, it is a
            // reflink: refused with Reflink::Never, and not worth it for small ranges.
            Method::Auto => {
                !self.options.detect_zeros
                    && !(self.copy_shares
                        && (self.options.reflink == Reflink::Never
                            || len < self.options.reflink_min))
            }
        }
    }

    /// `copy_file_range` over a whole range, looping on short copies. Returns the part left
    /// to copy another way when the kernel refuses (and the method was not forced).
    fn copy_file_range(&mut self, src: Range<u64>) -> Result<Option<Range<u64>>> {
        let mut src_off = src.start;
        let mut dst_off = self.window.dst_offset(src.start);
        while src_off < src.end {
            self.check_stop()?;
            let want = (src.end - src_off).min(COPY_CHUNK) as usize;
            self.report.syscalls.copy_file_range += 1;
            let at = dst_off;
            self.touch(at..at + want as u64);
            match rustix::fs::copy_file_range(
                self.src,
                Some(&mut src_off),
                self.dst,
                Some(&mut dst_off),
                want,
            ) {
                Ok(0) => {
                    return Err(Error::SourceShrank {
                        path: self.src_path.to_owned(),
                        offset: src_off,
                    });
                }
                Ok(n) => self.transferred(Transfer::CopyFileRange, n as u64),
                Err(Errno::INTR) => {}
                Err(e) if unsupported_between(e) => {
                    if self.options.method == Method::CopyFileRange {
                        return Err(Error::MethodUnsupported {
                            method: "copy_file_range",
                            src: self.src_path.to_owned(),
                            dst: self.dst_path.to_owned(),
                            source: e.into(),
                        });
                    }
                    debug!(errno = %e, "copy_file_range not supported here; using read/write");
                    self.cfr = false;
                    self.user_space.store(true, Ordering::Relaxed);
                    return Ok(Some(src_off..src.end));
                }
                Err(e) => {
                    return Err(Error::CopyFileRange {
                        src: self.src_path.to_owned(),
                        dst: self.dst_path.to_owned(),
                        offset: at,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(None)
    }

    fn take_buf(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![0; self.buf_len];
        }
        buf
    }

    /// Copies a range through user space, a buffer at a time; the pieces end on DST's block
    /// boundaries so zero detection sees whole blocks.
    fn stream(&mut self, src: Range<u64>, zeros: bool) -> Result<()> {
        let mut buf = self.take_buf();
        let mut at = src.start;
        let result = loop {
            if at >= src.end {
                break Ok(());
            }
            let dst_at = self.window.dst_offset(at);
            let room = self.buf_len - (dst_at % self.bs) as usize;
            let n = ((src.end - at) as usize).min(room);
            let step = self
                .check_stop()
                .and_then(|()| self.read_exact(at, &mut buf[..n]))
                .and_then(|()| self.write_out(&buf[..n], dst_at, zeros));
            if let Err(e) = step {
                break Err(e);
            }
            at += n as u64;
        };
        self.buf = buf;
        result
    }

    /// Writes bytes read from SRC at DST offset `at`, leaving out all-zero blocks when
    /// detecting zeros or told to (`zeros`: settled data); they are cleared instead, as holes
    /// are.
    fn write_out(&mut self, bytes: &[u8], at: u64, zeros: bool) -> Result<()> {
        if !self.options.detect_zeros && !zeros {
            self.write_all(bytes, at)?;
            self.transferred(Transfer::ReadWrite, bytes.len() as u64);
            return Ok(());
        }
        for (piece, zero) in ZeroRuns::new(bytes, at, self.bs) {
            let start = at + piece.start as u64;
            let len = (piece.end - piece.start) as u64;
            if zero {
                self.clear(start..start + len)?;
                self.report.zero_skipped_bytes += len;
                self.advance(len);
            } else {
                self.write_all(&bytes[piece], start)?;
                self.transferred(Transfer::ReadWrite, len);
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.report.syscalls.pread += feed::read_exact(self.src, self.src_path, offset, buf)?;
        Ok(())
    }

    /// `pwrite` until all of `bytes` is written, [`WRITE_MAX`] at most a call.
    fn write_all(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        self.touch(offset..offset + bytes.len() as u64);
        let mut put = 0;
        while put < bytes.len() {
            let at = offset + put as u64;
            let end = bytes.len().min(put + WRITE_MAX);
            self.report.syscalls.pwrite += 1;
            match rustix::io::pwrite(self.dst, &bytes[put..end], at) {
                Ok(0) => return Err(self.write_error(at, io::ErrorKind::WriteZero.into())),
                Ok(n) => put += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.write_error(at, e.into())),
            }
        }
        Ok(())
    }

    fn write_error(&self, offset: u64, source: io::Error) -> Error {
        Error::Write {
            path: self.dst_path.to_owned(),
            offset,
            source,
        }
    }

    /// Writes zeros over a DST range (`pwritev` of a static zero buffer, 1 MiB a call).
    fn write_zeros(&mut self, dst: Range<u64>) -> Result<()> {
        self.touch(dst.clone());
        let mut at = dst.start;
        while at < dst.end {
            self.check_stop()?;
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            let mut left = dst.end - at;
            while left > 0 && count < slices.len() {
                let n = left.min(ZEROS.len() as u64) as usize;
                slices[count] = IoSlice::new(&ZEROS[..n]);
                count += 1;
                left -= n as u64;
            }
            self.report.syscalls.pwrite += 1;
            match rustix::io::pwritev(self.dst, &slices[..count], at) {
                Ok(0) => return Err(self.write_error(at, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    at += n as u64;
                    self.report.zeroed_bytes += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.write_error(at, e.into())),
            }
        }
        Ok(())
    }

    /// Makes a DST range read as zeros where it must: in a regular file, wherever DST holds
    /// data; on a block device, only with [`Options::zero_holes`].
    fn clear(&mut self, dst: Range<u64>) -> Result<()> {
        if self.block_device {
            if self.options.zero_holes {
                self.zero_device(dst)?;
            }
            return Ok(());
        }
        while let Some(piece) = self.cursor.next_data(&dst)? {
            self.punch(piece)?;
        }
        Ok(())
    }

    /// `fallocate(mode)` over a DST range: `Ok(true)` when done, `Ok(false)` when the mode is
    /// not supported here.
    fn fallocate(&mut self, mode: FallocateFlags, dst: &Range<u64>) -> Result<bool> {
        self.touch(dst.clone());
        loop {
            self.report.syscalls.fallocate += 1;
            match rustix::fs::fallocate(self.dst, mode, dst.start, dst.end - dst.start) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => {}
                Err(e) if is_unsupported_errno(e) => {
                    debug!(errno = %e, ?mode, "fallocate mode not supported here");
                    return Ok(false);
                }
                Err(e) => {
                    return Err(Error::Clear {
                        path: self.dst_path.to_owned(),
                        offset: dst.start,
                        len: dst.end - dst.start,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Punches a hole where a regular DST holds data (partial blocks at the ends are zeroed
    /// by the kernel, as `fallocate(2)` specifies), or writes zeros where it cannot.
    fn punch(&mut self, dst: Range<u64>) -> Result<()> {
        trace!(?dst, "punch");
        if self.punch {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if self.fallocate(mode, &dst)? {
                self.report.punched_bytes += dst.end - dst.start;
                return Ok(());
            }
            self.punch = false;
        }
        self.write_zeros(dst)
    }

    /// Zeroes a range of a block device: its page-aligned middle by `fallocate` (punch,
    /// which guarantees zeros and may unmap, else zero-range), the edges and whatever the
    /// device refuses by written zeros. Never a discard, which need not read back as zeros.
    fn zero_device(&mut self, dst: Range<u64>) -> Result<()> {
        trace!(?dst, "zero device range");
        let middle = round_in(dst.clone(), self.bs.max(4096));
        if middle.is_empty() {
            return self.write_zeros(dst);
        }
        self.write_zeros(dst.start..middle.start)?;
        let len = middle.end - middle.start;
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        if self.device_punch {
            if self.fallocate(punch, &middle)? {
                self.report.punched_bytes += len;
                return self.write_zeros(middle.end..dst.end);
            }
            self.device_punch = false;
        }
        if self.device_zero {
            if self.fallocate(zero, &middle)? {
                self.report.zeroed_bytes += len;
                return self.write_zeros(middle.end..dst.end);
            }
            self.device_zero = false;
        }
        self.write_zeros(middle.start..dst.end)
    }
}
