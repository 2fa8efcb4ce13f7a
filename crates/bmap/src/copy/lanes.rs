//! The data path of a plain image: one lane per core, each taking the next ranges and
//! reading, writing and hashing them chunk by chunk.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use tracing::debug;

use super::{
    CHUNK, Copier, CopyReport, RangeIter, Writeback, Written, check, interrupted, too_short,
    write_piece,
};
use crate::error::{Error, Result};
use crate::format::BlockRange;
use crate::source::read_full_at;

/// Ranges a lane takes at once (a plain image).
const TAKE: usize = 32;
/// How often the progress callback hears of the copy of a plain image.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

impl Copier<'_> {
    /// The data path of a plain image: one lane per core, each taking the next range and
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
        let kind = info.checksum_type.filter(|_| self.verify);
        let total = info.mapped_bytes;
        let lanes = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(usize::try_from(info.ranges).unwrap_or(usize::MAX))
            .max(1);
        debug!(lanes, "copying a plain image");
        // The ranges, handed out in order with their index.
        let next: Mutex<(usize, RangeIter<'_>)> = Mutex::new((0, self.ranges.iter()));
        let stop = AtomicBool::new(false);
        let was_interrupted = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let (ranges, verified) = (AtomicU64::new(0), AtomicU64::new(0));
        // Of several failures, the first range's is reported.
        let failure: Mutex<Option<(usize, Error)>> = Mutex::new(None);
        let fail = |index: usize, e: Error| {
            stop.store(true, Ordering::Relaxed);
            let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
            if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                *failure = Some((index, e));
            }
        };
        let sync = self.sync;
        let interrupt = self.interrupt.as_deref();
        let lane = || {
            let mut buf = vec![0u8; CHUNK];
            let mut writeback = sync.then(|| Writeback::new(out, dest));
            let halt = || {
                if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                    was_interrupted.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                }
                stop.load(Ordering::Relaxed)
            };
            // Ranges taken a few at a time: the bmap file is parsed under the lock.
            let mut mine = std::collections::VecDeque::new();
            while !halt() {
                if mine.is_empty() {
                    let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                    while mine.len() < TAKE {
                        let index = next.0;
                        match next.1.next() {
                            None => break,
                            Some(Err(e)) => {
                                // Reported after the ranges before it were copied.
                                next.0 = usize::MAX;
                                drop(next);
                                fail(index, e);
                                break;
                            }
                            Some(Ok(range)) => {
                                next.0 += 1;
                                mine.push_back((index, range));
                            }
                        }
                    }
                }
                let Some((index, range)) = mine.pop_front() else {
                    break;
                };
                let mut hasher = kind
                    .filter(|_| range.checksum.is_some())
                    .map(|k| k.hasher());
                let bytes = range.bytes(info.block_size, info.image_size);
                let mut pos = bytes.start;
                let outcome = loop {
                    if pos == bytes.end {
                        break Ok(());
                    }
                    if halt() {
                        return;
                    }
                    let n = (bytes.end - pos).min(CHUNK as u64) as usize;
                    let piece = &mut buf[..n];
                    if let Err(e) = read_piece(file, image, &range, pos, piece) {
                        break Err(e);
                    }
                    written.add(pos..pos + n as u64);
                    if let Err(e) = write_piece(out, dest, &range, pos, piece) {
                        break Err(e);
                    }
                    if let Some(w) = writeback.as_mut() {
                        w.written(pos..pos + n as u64);
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(piece);
                    }
                    pos += n as u64;
                    copied.fetch_add(n as u64, Ordering::Relaxed);
                };
                let outcome = outcome.and_then(|()| match hasher {
                    Some(h) => check(h, image, info, &range).map(|()| 1),
                    None => Ok(0),
                });
                match outcome {
                    Ok(n) => {
                        verified.fetch_add(n, Ordering::Relaxed);
                        ranges.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return fail(index, e),
                }
            }
        };
        std::thread::scope(|s| {
            let (done_tx, done_rx) = channel::<()>();
            for _ in 0..lanes {
                let done = done_tx.clone();
                let lane = &lane;
                s.spawn(move || {
                    lane();
                    drop(done);
                });
            }
            drop(done_tx);
            // Until every lane has hung up.
            while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_TICK) {
                if let Some(p) = self.progress.as_mut() {
                    p(copied.load(Ordering::Relaxed), total);
                }
            }
        });
        if was_interrupted.into_inner() {
            return Err(interrupted(dest));
        }
        if let Some((_, e)) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mapped_bytes = copied.into_inner();
        if let Some(p) = self.progress.as_mut() {
            p(mapped_bytes, total);
        }
        Ok(CopyReport {
            mapped_bytes,
            ranges: ranges.into_inner(),
            verified_ranges: verified.into_inner(),
            ..CopyReport::new(info.image_size, kind)
        })
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
