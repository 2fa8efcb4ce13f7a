//! The data path of a plain image: one lane per core, each taking the next ranges and
//! reading, writing and hashing them chunk by chunk.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use tracing::debug;

use super::{
    CHUNK, Copier, CopyReport, Progress, RangeIter, Writeback, Written, check, interrupted,
    too_short, write_piece,
};
use crate::checksum::ChecksumType;
use crate::error::{Error, Result};
use crate::file::BmapInfo;
use crate::format::BlockRange;
use crate::source::read_full_at;

/// Ranges a lane takes at once (a plain image).
const TAKE: usize = 32;
/// How often the progress callback hears of the copy of a plain image.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

impl Copier<'_> {
    /// The data path of a plain image: one [`Lane`] per core, each taking the next range and
    /// reading, writing and hashing it chunk by chunk, the chunk still in the core's cache
    /// (a range is hashed in order, so ranges are what runs in parallel). This thread passes
    /// the progress on.
    pub(super) fn lanes(
        &mut self,
        file: &File,
        image: &Path,
        out: &File,
        dest: &Path,
        written: &Written,
    ) -> Result<CopyReport> {
        let info = &self.info;
        let kind = self.verified_kind();
        let total = info.mapped_bytes;
        let lanes = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(usize::try_from(info.ranges).unwrap_or(usize::MAX))
            .max(1);
        debug!(lanes, "copying a plain image");
        let shared = Shared {
            next: Mutex::new(Next {
                index: 0,
                ranges: self.ranges.iter(),
                end: 0,
            }),
            file,
            image,
            out,
            dest,
            written,
            info,
            kind,
            sync: self.options.sync,
            interrupt: self.interrupt.as_deref(),
            stop: AtomicBool::new(false),
            was_interrupted: AtomicBool::new(false),
            copied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            failure: Mutex::new(None),
        };
        let progress = &mut self.progress;
        std::thread::scope(|s| {
            let (done_tx, done_rx) = channel::<()>();
            for _ in 0..lanes {
                let done = done_tx.clone();
                let shared = &shared;
                s.spawn(move || {
                    Lane::new(shared).run();
                    drop(done);
                });
            }
            drop(done_tx);
            // Until every lane has hung up.
            while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_TICK) {
                if let Some(p) = progress.as_mut() {
                    p(Progress {
                        data_done: shared.copied.load(Ordering::Relaxed),
                        data_total: Some(total),
                        skipped: shared.skipped.load(Ordering::Relaxed),
                    });
                }
            }
        });
        let Shared {
            was_interrupted,
            failure,
            copied,
            ranges,
            verified,
            ..
        } = shared;
        if was_interrupted.into_inner() {
            return Err(interrupted(dest));
        }
        if let Some((_, e)) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mapped_bytes = copied.into_inner();
        Ok(CopyReport {
            mapped_bytes,
            ranges: ranges.into_inner(),
            verified_ranges: verified.into_inner(),
            ..CopyReport::new(info.image_size, kind)
        })
    }
}

/// The ranges, handed out in order.
struct Next<'s> {
    /// The index of the next range.
    index: usize,
    ranges: RangeIter<'s>,
    /// Where the last range handed out ends (bytes).
    end: u64,
}

/// What the lanes share: the ranges to take, where their bytes come from and go, and how far
/// the copy got.
struct Shared<'s> {
    next: Mutex<Next<'s>>,
    file: &'s File,
    image: &'s Path,
    out: &'s File,
    dest: &'s Path,
    written: &'s Written,
    info: &'s BmapInfo,
    /// The checksum verified, if any.
    kind: Option<ChecksumType>,
    /// Whether the copy ends in an fsync (then each lane starts writeback as it goes).
    sync: bool,
    interrupt: Option<&'s AtomicBool>,
    stop: AtomicBool,
    was_interrupted: AtomicBool,
    copied: AtomicU64,
    /// Unmapped bytes between the ranges handed out.
    skipped: AtomicU64,
    ranges: AtomicU64,
    verified: AtomicU64,
    /// Of several failures, the first range's is reported.
    failure: Mutex<Option<(usize, Error)>>,
}

impl Shared<'_> {
    /// Stops every lane with `e`, the failure of range `index`.
    fn fail(&self, index: usize, e: Error) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.as_ref().is_none_or(|(first, _)| index < *first) {
            *failure = Some((index, e));
        }
    }

    /// Whether the lanes are to stop: a failure, or the interrupt flag raised.
    fn halt(&self) -> bool {
        if self.interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
            self.was_interrupted.store(true, Ordering::Relaxed);
            self.stop.store(true, Ordering::Relaxed);
        }
        self.stop.load(Ordering::Relaxed)
    }
}

/// One thread of a plain image's copy: its buffer, its writeback, the ranges it took.
struct Lane<'l, 's> {
    shared: &'l Shared<'s>,
    buf: Vec<u8>,
    writeback: Option<Writeback<'s>>,
    /// Ranges taken a few at a time: the bmap file is parsed under the lock.
    mine: VecDeque<(usize, BlockRange)>,
}

impl<'l, 's> Lane<'l, 's> {
    fn new(shared: &'l Shared<'s>) -> Self {
        Lane {
            shared,
            buf: vec![0u8; CHUNK],
            writeback: shared.sync.then(|| Writeback::new(shared.out, shared.dest)),
            mine: VecDeque::new(),
        }
    }

    /// Copies ranges until there are none left, one fails, or the copy is stopped.
    fn run(mut self) {
        let shared = self.shared;
        while !shared.halt() {
            if self.mine.is_empty() {
                self.take();
            }
            let Some((index, range)) = self.mine.pop_front() else {
                break;
            };
            match self.copy(&range) {
                Ok(None) => return,
                Ok(Some(n)) => {
                    shared.verified.fetch_add(n, Ordering::Relaxed);
                    shared.ranges.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return shared.fail(index, e),
            }
        }
    }

    /// Takes the next [`TAKE`] ranges, or what is left of them.
    fn take(&mut self) {
        let shared = self.shared;
        let mut next = shared.next.lock().unwrap_or_else(|p| p.into_inner());
        while self.mine.len() < TAKE {
            let index = next.index;
            match next.ranges.next() {
                None => break,
                Some(Err(e)) => {
                    // Reported after the ranges before it were copied.
                    next.index = usize::MAX;
                    drop(next);
                    shared.fail(index, e);
                    break;
                }
                Some(Ok(range)) => {
                    next.index += 1;
                    let bytes = range.bytes(shared.info.block_size, shared.info.image_size);
                    let gap = bytes.start.saturating_sub(next.end);
                    shared.skipped.fetch_add(gap, Ordering::Relaxed);
                    next.end = next.end.max(bytes.end);
                    self.mine.push_back((index, range));
                }
            }
        }
    }

    /// Reads, writes and hashes `range` chunk by chunk: the ranges verified (1 or 0), or
    /// `None` if the copy was stopped on the way.
    fn copy(&mut self, range: &BlockRange) -> Result<Option<u64>> {
        let s = self.shared;
        let mut hasher = s
            .kind
            .filter(|_| range.checksum.is_some())
            .map(|k| k.hasher());
        let bytes = range.bytes(s.info.block_size, s.info.image_size);
        let mut pos = bytes.start;
        while pos < bytes.end {
            if s.halt() {
                return Ok(None);
            }
            let n = (bytes.end - pos).min(CHUNK as u64) as usize;
            let piece = &mut self.buf[..n];
            read_piece(s.file, s.image, range, pos, piece)?;
            s.written.add(pos..pos + n as u64);
            write_piece(s.out, s.dest, range, pos, piece)?;
            if let Some(w) = self.writeback.as_mut() {
                w.written(pos..pos + n as u64);
            }
            if let Some(h) = hasher.as_mut() {
                h.update(piece);
            }
            pos += n as u64;
            s.copied.fetch_add(n as u64, Ordering::Relaxed);
        }
        match hasher {
            Some(h) => check(h, s.image, s.info, range).map(|()| Some(1)),
            None => Ok(Some(0)),
        }
    }
}

/// Reads all of `piece` at `pos` of a plain image.
fn read_piece(
    file: &File,
    image: &Path,
    range: &BlockRange,
    pos: u64,
    piece: &mut [u8],
) -> Result<()> {
    let end = pos + piece.len() as u64;
    let got = read_full_at(file, pos, piece)
        .map_err(|e| Error::io(format!("read bytes {pos}-{end}"), image, e))?;
    if got < piece.len() {
        return Err(too_short(image, range, pos + got as u64));
    }
    Ok(())
}
