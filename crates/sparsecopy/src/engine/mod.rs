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

mod clear;
mod copy;
mod decide;
mod progress;
mod reflink;
#[cfg(test)]
mod tests;

use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use blockmap_core::fs::is_unsupported_errno;
use blockmap_core::{BlockMap, DataRanges};
use rustix::fs::Stat;
use rustix::io::Errno;
use tracing::{debug, trace};

use crate::dest::{self, Dest, Kind};
use crate::error::{DstState, Error, Result};
use crate::feed::{self, Batch, Feed, Item, Policy};
use crate::filesystem;
use crate::options::{Options, Progress, Reflink, Resolved};
use crate::plan::{Step, Steps, cut};
use crate::report::{Report, Transfer};
use clear::DstCursor;
use decide::{Facts, Plan, Refusal, WholeClone, decide, feed_plan};
use progress::Meter;

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

/// Runs a copy: the facts gathered, the plan decided ([`decide`](fn@decide)), then carried
/// out. Nothing is written to DST before every check has passed: same file, device size, reflink
/// feasibility (with [`Reflink::Always`], the first reflink is made before anything else, so
/// a filesystem that cannot share fails the copy untouched).
///
/// An interrupted copy, or one whose SRC changed, fails saying which DST bytes may be
/// partly written ([`DstState`]; the caller removes a DST it created).
pub(crate) fn run(job: Job<'_, '_>) -> Result<Report> {
    let dest = dest::inspect(job.dst, job.dst_path)?;
    let facts = gather(&job, &dest);
    let plan = decide(&facts).map_err(|r| refused(r, &job, &facts))?;
    debug!(?plan, "copy planned");
    let Job {
        src_map,
        src_stat,
        dst,
        dst_path,
        window,
        options,
        progress,
        stop,
        started,
        ..
    } = job;
    if options.reflink == Reflink::Auto && !plan.reflink {
        debug!("no reflink: needs two regular files whose blocks line up");
    }
    // DST's data matters only where it existed before: inside the window (for a streamed
    // SRC, its length a cap), below its old size; a file just created has none. Mapped
    // now, walked once the copy gets there.
    let dst_map = match &plan.dst_old_data {
        Some(old_data) => {
            let map = BlockMap::with_path(dst, dst_path, blockmap_core::MapOptions::default())?;
            debug!(backend = %map.backend(), range = ?old_data, "destination mapped");
            Some(map)
        }
        None => None,
    };
    let dst_data = dst_map.as_ref().zip(plan.dst_old_data.clone());
    let dst_data = dst_data.map(|(map, old_data)| map.data(old_data));
    let user_space = AtomicBool::new(!plan.copy_file_range);
    let mut engine = Engine {
        src: *src_map.file(),
        src_path: src_map.path(),
        dst,
        dst_path,
        window,
        block_device: facts.dst_device,
        bs: facts.block_size,
        options,
        working: Working {
            reflink: plan.reflink,
            copy_file_range: plan.copy_file_range,
            punch: true,
            device_punch: true,
            device_zero: true,
        },
        copy_shares: plan.copy_shares,
        user_space: &user_space,
        prelinked: None,
        cursor: DstCursor::empty(),
        buf: Vec::new(),
        buf_len: plan.buf_len,
        report: new_report(&facts, src_map.backend()),
        meter: Meter::new(progress),
        stop,
        touched: None,
        old_size: facts.dst_size,
    };
    let result = if plan.stream {
        // All of DST's old data past `seek` may lie under what is read.
        if let Some(data) = dst_data {
            engine.cursor = DstCursor::new(data);
        }
        engine.stream_to_end(window.skip)
    } else {
        engine.copy_window(src_map, &plan, dst_data)
    };
    engine.finish(result, src_stat)?;
    let mut report = engine.report;
    report.elapsed = started.elapsed();
    debug!(%report, "copy done");
    Ok(report)
}

/// The facts a copy is decided from: SRC's map and stat, DST as inspected, its filesystem.
fn gather(job: &Job<'_, '_>, dest: &Dest) -> Facts {
    let (src_map, dst) = (job.src_map, job.dst);
    let dst_device = dest.kind == Kind::BlockDevice;
    // Filesystems are asked only about two regular files, the only ones that share.
    let regular = src_map.is_regular() && !dst_device && !job.stream;
    let dst_fs = if regular { filesystem::of(dst) } else { None };
    Facts {
        options: job.options.clone(),
        window: job.window,
        stream: job.stream,
        same_file: dest::same_file(job.src_stat, &dest.stat),
        src_regular: src_map.is_regular(),
        src_fiemap: src_map.backend() == blockmap_core::Backend::Fiemap,
        src_mapped_size: src_map.size(),
        src_stat_size: job.src_stat.st_size as u64,
        dst_device,
        dst_size: dest.size,
        dst_created: job.created,
        block_size: u64::from(blockmap_core::fs::block_size_of(dst)),
        dst_copy_shares: filesystem::copy_may_share(dst_fs),
        same_btrfs_subvolume: filesystem::same_btrfs_subvolume(dst_fs, job.src_stat, &dest.stat),
        dst_xfs: filesystem::is_xfs(dst_fs),
    }
}

/// The error of a copy refused before anything was written.
fn refused(refusal: Refusal, job: &Job<'_, '_>, facts: &Facts) -> Error {
    let (src_path, dst_path, window) = (job.src_map.path(), job.dst_path, job.window);
    match refusal {
        Refusal::SameFile => Error::SameFile {
            src: src_path.to_owned(),
            dst: dst_path.to_owned(),
        },
        Refusal::DeviceTooSmall { end } => Error::DeviceTooSmall {
            path: dst_path.to_owned(),
            end,
            size: facts.dst_size,
        },
        Refusal::ReflinkToDevice => Error::ReflinkToDevice {
            path: dst_path.to_owned(),
        },
        Refusal::ReflinkMisaligned => Error::ReflinkMisaligned {
            path: dst_path.to_owned(),
            skip: window.skip,
            seek: window.seek,
            block_size: facts.block_size,
        },
        Refusal::ReflinkStreamed => Error::ReflinkUnsupported {
            src: src_path.to_owned(),
            dst: dst_path.to_owned(),
            source: io::Error::other(
                "SRC's size is not what reading it gives (procfs, sysfs, FUSE…): it is read, not shared",
            ),
        },
        Refusal::SourceSize => Error::SourceChanged {
            path: src_path.to_owned(),
            what: "size".to_owned(),
            dst: DstState::Untouched {
                path: dst_path.to_owned(),
            },
        },
    }
}

/// The report of a copy not yet started.
fn new_report(facts: &Facts, backend: blockmap_core::Backend) -> Report {
    let mut report = Report::new(backend);
    report.skip = facts.window.skip;
    report.seek = facts.window.seek;
    report.length = facts.window.length;
    report.block_size = facts.block_size;
    report.created = facts.dst_created;
    report.block_device = facts.dst_device;
    report
}

impl<'a> Engine<'a, '_> {
    /// Copies the window by the map as `plan` says: the whole-window clone or the reflink
    /// probe first, DST grown to the window's end, then the pipeline over what is left.
    /// `dst_data` walks DST's old data in the window (none for a new file or a device).
    fn copy_window(
        &mut self,
        src_map: &BlockMap<BorrowedFd<'_>>,
        plan: &Plan,
        dst_data: Option<DataRanges<'a>>,
    ) -> Result<()> {
        let cloned = match &plan.clone {
            WholeClone::No => None,
            WholeClone::CloneFirst { span } => self.clone_then_settle(src_map, span.clone())?,
            WholeClone::WalkFirst { span, xfs } => {
                self.clone_window(src_map, span.clone(), *xfs)?
            }
        };
        // The clone may have found that reflinks do not work here.
        if cloned.is_none() && plan.probe && self.working.reflink {
            self.prelink(src_map)?;
        }
        if let Some(size) = plan.grow_to {
            self.grow(size)?;
        }
        if cloned.is_none() && plan.unprobe {
            self.unprobe()?;
        }
        // Walked only now that the probe's reflink is gone again.
        if let Some(data) = dst_data {
            self.cursor = DstCursor::new(data);
        }
        let feed = feed_plan(
            self.options,
            self.working.copy_file_range,
            self.working.reflink,
            self.buf_len,
        );
        // What the clone left: the partial blocks at the window's ends.
        let whole = self.window.src();
        let parts = match cloned {
            Some(c) => [whole.start..c.start, c.end..whole.end],
            None => [whole, 0..0],
        };
        let parts: Vec<_> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        self.meter.walks(parts.len());
        for part in parts {
            let policy = Policy {
                read_max: feed.read_max,
                user_space: self.user_space,
                user_space_max: feed.user_space_max,
                buf_len: self.buf_len,
                settled_zeros: feed.settled_zeros,
                large_reads: feed.large_reads,
                stop: self.stop,
            };
            pipeline(self, src_map, part, policy)?;
        }
        Ok(())
    }

    /// Ends a copy whose writing gave `result`: a read that ended early read on to SRC's
    /// end, SRC's stat compared with `src_stat`, DST synced; on failure, the error says
    /// which DST bytes may be partly written.
    fn finish(&mut self, result: Result<()>, src_stat: &Stat) -> Result<()> {
        let (src, src_path, dst, dst_path) = (self.src, self.src_path, self.dst, self.dst_path);
        // A read that ended early: SRC changed, or its size lies (sysfs says 4096), and it is
        // read on to its end from there.
        let unchanged = || source_unchanged(src, src_path, src_stat, dst_path);
        let result = match result {
            Err(Error::SourceShrank { offset, .. }) => unchanged().and_then(|()| {
                debug!(
                    offset,
                    "SRC ended before its stated size: read on to its end"
                );
                self.resume_stream()
            }),
            result => result,
        };
        let result = result
            .and_then(|()| self.check_stop())
            .and_then(|()| unchanged())
            .and_then(|()| {
                if self.options.sync {
                    self.report.syscalls.fsync += 1;
                    rustix::fs::fsync(dst).map_err(|e| Error::Sync {
                        path: dst_path.to_owned(),
                        source: e.into(),
                    })?;
                }
                Ok(())
            });
        if let Err(e) = result {
            let state = match self.touched.clone() {
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
        self.meter.finish();
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

/// Whether an errno from `FICLONERANGE` or `copy_file_range` means "not between these two
/// files" rather than an I/O error: the unsupported errnos of any call, and EXDEV (two
/// filesystems), EBADF (a filesystem that cannot share on older kernels, or a descriptor the
/// kernel will not copy with, e.g. O_APPEND), ETXTBSY (a swap file).
fn unsupported_between(e: Errno) -> bool {
    is_unsupported_errno(e) || matches!(e, Errno::XDEV | Errno::BADF | Errno::TXTBSY)
}

/// The methods a copy still tries: each turns off for good at its first "not supported"
/// (the plan says which are tried at first).
struct Working {
    reflink: bool,
    copy_file_range: bool,
    /// `fallocate(PUNCH_HOLE)` in a regular DST.
    punch: bool,
    /// `fallocate(PUNCH_HOLE)`, then `fallocate(ZERO_RANGE)`, on a block device.
    device_punch: bool,
    device_zero: bool,
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
    /// Methods still worth trying.
    working: Working,
    /// DST's filesystem shares extents inside `copy_file_range`.
    copy_shares: bool,
    /// Told to the feed when the kernel's copy turns out unusable.
    user_space: &'a AtomicBool,
    /// The blocks already reflinked by [`Engine::prelink`], in SRC offsets.
    prelinked: Option<Range<u64>>,
    cursor: DstCursor<'a>,
    /// The read/write buffer, allocated at first use.
    buf: Vec<u8>,
    buf_len: usize,
    report: Report,
    meter: Meter<'p>,
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

    fn transferred(&mut self, how: Transfer, bytes: u64) {
        self.report.transferred(how, bytes);
        self.meter.data(bytes);
    }

    /// `Err(Interrupted)` once the stop flag is raised.
    fn check_stop(&self) -> Result<()> {
        if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            debug!(done = self.meter.passed(), "interrupted");
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
                Item::Walked(data) => self.meter.walked(data),
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
        self.meter.hole(len);
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
        if self.working.reflink {
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
}
