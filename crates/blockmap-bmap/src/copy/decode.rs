//! The data path of a compressed image with a parallel [`Plan`]: the units that overlap a
//! mapped range are decoded by one thread per core, each unit alone and streamed in chunks;
//! this thread takes the chunks unit after unit, in the image's order, writes their mapped
//! bytes at their offsets and hashes each range in order (a range may span units). Units
//! wholly in unmapped ranges are never decoded.
//!
//! Memory: a decoder may claim a unit only while fewer than `workers + 1` units are between
//! the one being written and it, and each unit's chunks wait in a queue of [`QUEUED`] chunks:
//! at most `(workers + 1) * (QUEUED + 2)` chunks of [`CHUNK`] exist at once.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Condvar, Mutex};

use tracing::debug;

use super::{
    Copier, CopyReport, Progress, Throttled, Writeback, Written, check, interrupted, stream_error,
    too_short, write_piece,
};
use crate::checksum::{ChecksumType, Hasher};
use crate::error::{Error, Result};
use crate::file::BmapInfo;
use crate::format::BlockRange;
use crate::parallel::Plan;
use crate::source::{Compression, read_full};

/// Decoded bytes per message.
const CHUNK: usize = 1 << 20;
/// Chunks waiting per unit.
const QUEUED: usize = 4;

/// A decoder's word on its unit.
enum Msg {
    Chunk(Vec<u8>, usize),
    /// The unit decoded to its end without error.
    End,
    /// The decoder failed, after this many bytes of the unit.
    Failed(std::io::Error, u64),
}

/// Which unit a decoder may take next, and how far the writer is.
struct Claims {
    next: usize,
    done: usize,
    stop: bool,
}

/// The range being written, and its hash so far.
struct Current {
    range: BlockRange,
    bytes: Range<u64>,
    /// The next byte of the range expected.
    at: u64,
    hasher: Option<Hasher>,
}

/// Where decoded bytes go: the destination, the hashes, the report.
struct Sink<'s, 'p> {
    info: &'s BmapInfo,
    kind: Option<ChecksumType>,
    image: &'s Path,
    bmap: &'s Path,
    compression: Compression,
    out: &'s File,
    dest: &'s Path,
    written: &'s Written,
    writeback: Option<Writeback<'s>>,
    progress: Throttled<'s, 'p>,
    report: CopyReport,
}

/// What [`Copier::decode`] did.
pub(super) struct Decoded {
    pub(super) report: CopyReport,
    /// Where the decoded data ended (the image's size, if whole).
    pub(super) decoded_to: u64,
}

/// A unit's decoder, as the writer knows it: where its chunks arrive.
type Sender = Mutex<Option<SyncSender<Msg>>>;

/// Who decodes which unit: decoders claim the units of `list` in order, at most `window`
/// units ahead of the one being written.
struct Turns {
    claims: Mutex<Claims>,
    turn: Condvar,
    window: usize,
    /// The units decoded, by index in the plan, in order.
    list: Vec<usize>,
}

impl Turns {
    /// The next unit (by index in `list`) for a decoder, once its turn comes; `None` when all
    /// are claimed or the copy stopped.
    fn claim(&self) -> Option<usize> {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        while !c.stop && c.next < self.list.len() && c.next >= c.done + self.window {
            c = self.turn.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        if c.stop || c.next >= self.list.len() {
            return None;
        }
        c.next += 1;
        Some(c.next - 1)
    }

    /// The first `done` units of `list` are written.
    fn written(&self, done: usize) {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        c.done = done;
        self.turn.notify_all();
    }

    /// Stops the decoders: those waiting for a turn wake and return.
    fn stop(&self) {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        c.stop = true;
        self.turn.notify_all();
    }
}

/// Chunk buffers go back to the decoders once written: no page faults per chunk.
type Pool = Mutex<Vec<Vec<u8>>>;

impl Copier<'_> {
    /// Writes the mapped ranges of the image `plan` decodes (see the module).
    pub(super) fn decode(
        &mut self,
        plan: &Plan,
        image: &Path,
        out: &File,
        dest: &Path,
        written: &Written,
    ) -> Result<Decoded> {
        let info = &self.info;
        let kind = self.verified_kind();
        let list = needed(plan, self.ranges.iter(), info.block_size, info.image_size)?;
        debug!(
            units = plan.len(),
            decoded = list.len(),
            workers = plan.workers(),
            "decoding in parallel"
        );
        let turns = Turns {
            claims: Mutex::new(Claims {
                next: 0,
                done: 0,
                stop: false,
            }),
            turn: Condvar::new(),
            window: plan.workers() + 1,
            list,
        };
        let (senders, receivers): (Vec<_>, Vec<_>) = turns
            .list
            .iter()
            .map(|_| {
                let (tx, rx) = sync_channel::<Msg>(QUEUED);
                (Mutex::new(Some(tx)), Some(rx))
            })
            .unzip();
        let mut sink = Sink {
            info,
            kind,
            image,
            bmap: &self.bmap_path,
            compression: plan.compression(),
            out,
            dest,
            written,
            writeback: self.options.sync.then(|| Writeback::new(out, dest)),
            progress: Throttled::new(self.progress.as_deref_mut()),
            report: CopyReport::new(info.image_size, kind),
        };
        let interrupt = self.interrupt.clone();
        let stopped = || {
            interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        };
        let pool = Pool::default();
        let (decoded, next_at) = std::thread::scope(|s| {
            for _ in 0..plan.workers().min(turns.list.len()) {
                let (turns, senders, pool) = (&turns, &senders, &pool);
                s.spawn(move || decode_units(plan, turns, senders, pool));
            }
            let mut receivers = receivers;
            let mut ranges = self.ranges.iter();
            let outcome =
                sink.write_units(plan, &turns, &mut receivers, &mut ranges, &stopped, &pool);
            // Stop the decoders: those waiting for a turn wake, those sending find no one.
            turns.stop();
            receivers.clear();
            outcome
        })?;
        let mut report = sink.report;
        // Decoded and dropped: the unmapped bytes of the units that were decoded.
        report.skipped_bytes = decoded - report.mapped_bytes;
        Ok(Decoded {
            report,
            decoded_to: next_at,
        })
    }
}

/// The units of `plan` that hold a mapped byte, in order (`ranges` in any order); all of them
/// when their places are unknown (bz2).
fn needed(plan: &Plan, ranges: super::RangeIter<'_>, bs: u64, size: u64) -> Result<Vec<usize>> {
    let known = (0..plan.len()).all(|i| plan.out(i).is_some());
    let mut needed = vec![!known; plan.len()];
    let ends: Vec<u64> = (0..plan.len())
        .map(|i| plan.out(i).map_or(0, |o| o.end))
        .collect();
    for range in ranges.filter(|_| known) {
        let bytes = range?.bytes(bs, size);
        if bytes.is_empty() {
            continue;
        }
        let mut i = ends.partition_point(|&end| end <= bytes.start);
        while i < plan.len() && plan.out(i).is_some_and(|o| o.start < bytes.end) {
            needed[i] = true;
            i += 1;
        }
    }
    Ok((0..plan.len()).filter(|&i| needed[i]).collect())
}

/// A decoder thread: decodes the units it claims until none are left.
fn decode_units(plan: &Plan, turns: &Turns, senders: &[Sender], pool: &Pool) {
    while let Some(j) = turns.claim() {
        let tx = senders[j]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("each unit is claimed once");
        decode_unit(plan, turns.list[j], &tx, pool);
    }
}

impl Sink<'_, '_> {
    /// Writes the units of `turns.list` in order as their decoders send them, then checks that
    /// every range was written; returns the bytes decoded and where the last unit ended.
    fn write_units(
        &mut self,
        plan: &Plan,
        turns: &Turns,
        receivers: &mut [Option<Receiver<Msg>>],
        ranges: &mut super::RangeIter<'_>,
        stopped: &dyn Fn() -> bool,
        pool: &Pool,
    ) -> Result<(u64, u64)> {
        let (mut decoded, mut next_at) = (0u64, 0u64);
        let mut current: Option<Current> = None;
        for (j, &unit) in turns.list.iter().enumerate() {
            let rx = receivers[j].take().expect("each unit is written once");
            let span = plan.out(unit);
            let start = span.as_ref().map_or(next_at, |s| s.start);
            let at = self.write_unit(&rx, span, start, ranges, &mut current, stopped, pool)?;
            decoded += at - start;
            next_at = at;
            turns.written(j + 1);
        }
        // Every range must have been written: one left means the image ended first.
        if let Some(cur) = current.take() {
            return Err(too_short(self.image, &cur.range, cur.at));
        }
        if let Some(range) = ranges.next() {
            let range = range?;
            let bytes = range.bytes(self.info.block_size, self.info.image_size);
            if !bytes.is_empty() {
                return Err(too_short(self.image, &range, bytes.start));
            }
        }
        Ok((decoded, next_at))
    }

    /// Writes one unit's chunks from `rx`, its bytes starting at `start` (its place `span`
    /// when known); returns where they ended.
    #[allow(clippy::too_many_arguments)]
    fn write_unit(
        &mut self,
        rx: &Receiver<Msg>,
        span: Option<Range<u64>>,
        start: u64,
        ranges: &mut super::RangeIter<'_>,
        current: &mut Option<Current>,
        stopped: &dyn Fn() -> bool,
        pool: &Pool,
    ) -> Result<u64> {
        let (image, compression) = (self.image, self.compression);
        let mut at = start;
        loop {
            if stopped() {
                return Err(interrupted(self.dest));
            }
            let msg = rx.recv().map_err(|_| {
                let e = std::io::Error::other("a decoder thread died");
                stream_error(e, image, compression, at)
            })?;
            match msg {
                Msg::Chunk(buf, n) => {
                    let end = at + n as u64;
                    if let Some(span) = &span
                        && end > span.end
                    {
                        return Err(unit_size(image, compression, span, end));
                    }
                    if end > self.info.image_size {
                        return Err(Error::ImageSize {
                            path: image.to_owned(),
                            bmap: self.bmap.to_owned(),
                            expected: self.info.image_size,
                            actual: end,
                        });
                    }
                    self.put(ranges, current, at..end, &buf[..n])?;
                    pool.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
                    at = end;
                }
                Msg::End => break,
                Msg::Failed(e, done) => {
                    return Err(stream_error(e, image, compression, start + done));
                }
            }
        }
        if let Some(span) = &span
            && at != span.end
        {
            return Err(unit_size(image, compression, span, at));
        }
        Ok(at)
    }

    /// Writes and hashes the mapped bytes of `chunk` (decoded bytes at those offsets),
    /// taking ranges from `ranges` as they come.
    fn put(
        &mut self,
        ranges: &mut super::RangeIter<'_>,
        current: &mut Option<Current>,
        chunk: Range<u64>,
        bytes: &[u8],
    ) -> Result<()> {
        let (bs, size) = (self.info.block_size, self.info.image_size);
        loop {
            if current.is_none() {
                let Some(range) = ranges.next() else {
                    return Ok(());
                };
                let range = range?;
                let r = range.bytes(bs, size);
                if r.is_empty() {
                    self.report.ranges += 1;
                    continue;
                }
                let hasher = self
                    .kind
                    .filter(|_| range.checksum.is_some())
                    .map(ChecksumType::hasher);
                *current = Some(Current {
                    at: r.start,
                    bytes: r,
                    range,
                    hasher,
                });
            }
            let cur = current.as_mut().expect("set above");
            if cur.at >= chunk.end {
                return Ok(());
            }
            if cur.at < chunk.start {
                // Ranges out of order, or a mapped byte in a unit that was not decoded.
                return Err(stream_error(
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "ranges out of order in a stream",
                    ),
                    self.image,
                    Compression::None,
                    cur.at,
                ));
            }
            let end = cur.bytes.end.min(chunk.end);
            let piece = &bytes[(cur.at - chunk.start) as usize..(end - chunk.start) as usize];
            self.written.add(cur.at..end);
            write_piece(self.out, self.dest, &cur.range, cur.at, piece)?;
            if let Some(h) = cur.hasher.as_mut() {
                h.update(piece);
            }
            if let Some(w) = self.writeback.as_mut() {
                w.written(cur.at..end);
            }
            self.report.mapped_bytes += end - cur.at;
            cur.at = end;
            // The image's bytes before `cur.at` are mapped and written, or unmapped.
            self.progress.tell(Progress {
                data_done: self.report.mapped_bytes,
                data_total: Some(self.info.mapped_bytes),
                skipped: cur.at - self.report.mapped_bytes,
            });
            if cur.at < cur.bytes.end {
                return Ok(());
            }
            let done = current.take().expect("set above");
            self.report.ranges += 1;
            if let Some(h) = done.hasher {
                check(h, self.image, self.info, &done.range)?;
                self.report.verified_ranges += 1;
            }
        }
    }
}

/// Decodes unit `i` of `plan` into chunks sent on `tx`, until its end, an error, or no one
/// listens.
fn decode_unit(plan: &Plan, i: usize, tx: &SyncSender<Msg>, pool: &Pool) {
    let mut decoder = match plan.decoder(i) {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send(Msg::Failed(e, 0));
            return;
        }
    };
    let mut done = 0u64;
    loop {
        let recycled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = recycled.unwrap_or_else(|| vec![0u8; CHUNK]);
        match read_full(&mut decoder, &mut buf) {
            Ok(0) => {
                let _ = tx.send(Msg::End);
                return;
            }
            Ok(n) => {
                done += n as u64;
                if tx.send(Msg::Chunk(buf, n)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Failed(e, done));
                return;
            }
        }
    }
}

fn unit_size(image: &Path, compression: Compression, span: &Range<u64>, at: u64) -> Error {
    stream_error(
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a block decoded to {} bytes where its index says {}",
                at - span.start,
                span.end - span.start
            ),
        ),
        image,
        compression,
        at,
    )
}
