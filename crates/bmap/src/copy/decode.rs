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
    Copier, CopyOptions, CopyReport, Progress, Writeback, Written, check, interrupted,
    stream_error, too_short, write_piece,
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
    out: &'s File,
    dest: &'s Path,
    written: &'s Written,
    writeback: Option<Writeback<'s>>,
    progress: Option<&'s mut (dyn FnMut(Progress) + 'p)>,
    report: CopyReport,
}

/// What [`Copier::decode`] did.
pub(super) struct Decoded {
    pub(super) report: CopyReport,
    /// Where the decoded data ended (the image's size, if whole).
    pub(super) decoded_to: u64,
}

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
        let Copier {
            info,
            bmap_path,
            ranges: range_source,
            options: CopyOptions { verify, sync, .. },
            interrupt,
            progress,
            ..
        } = self;
        let info = &*info;
        let (bs, size) = (info.block_size, info.image_size);
        let kind: Option<ChecksumType> = info.checksum_type.filter(|_| *verify);
        let compression = plan.compression();

        // The units that hold a mapped byte (ranges in any order).
        // Units of unknown places (bz2) are all needed.
        let known = (0..plan.len()).all(|i| plan.out(i).is_some());
        let mut needed = vec![!known; plan.len()];
        let ends: Vec<u64> = (0..plan.len())
            .map(|i| plan.out(i).map_or(0, |o| o.end))
            .collect();
        for range in range_source.iter().filter(|_| known) {
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
        let list: Vec<usize> = (0..plan.len()).filter(|&i| needed[i]).collect();
        debug!(
            units = plan.len(),
            decoded = list.len(),
            workers = plan.workers(),
            "decoding in parallel"
        );

        let window = plan.workers() + 1;
        let claims = Mutex::new(Claims {
            next: 0,
            done: 0,
            stop: false,
        });
        let turn = Condvar::new();
        let (senders, receivers): (Vec<_>, Vec<_>) = list
            .iter()
            .map(|_| {
                let (tx, rx) = sync_channel::<Msg>(QUEUED);
                (Mutex::new(Some(tx)), rx)
            })
            .unzip();
        let mut receivers: Vec<Option<Receiver<Msg>>> = receivers.into_iter().map(Some).collect();

        let report = CopyReport::new(size, kind);
        let mut sink = Sink {
            info,
            kind,
            image,
            out,
            dest,
            written,
            writeback: sync.then(|| Writeback::new(out, dest)),
            progress: progress.as_deref_mut(),
            report,
        };
        let stopped = || {
            interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        };

        let mut decoded = 0u64;
        let mut next_at = 0u64;
        // Chunk buffers go back to the decoders once written: no page faults per chunk.
        let pool = Mutex::new(Vec::<Vec<u8>>::new());
        std::thread::scope(|s| {
            for _ in 0..plan.workers().min(list.len()) {
                let (claims, turn, senders, list, pool) = (&claims, &turn, &senders, &list, &pool);
                s.spawn(move || {
                    loop {
                        let j = {
                            let mut c = claims.lock().unwrap_or_else(|p| p.into_inner());
                            while !c.stop && c.next < list.len() && c.next >= c.done + window {
                                c = turn.wait(c).unwrap_or_else(|p| p.into_inner());
                            }
                            if c.stop || c.next >= list.len() {
                                return;
                            }
                            c.next += 1;
                            c.next - 1
                        };
                        let tx = senders[j]
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take()
                            .expect("each unit is claimed once");
                        decode_unit(plan, list[j], &tx, pool);
                    }
                });
            }

            let mut ranges = range_source.iter();
            let decoded = &mut decoded;
            let next_at = &mut next_at;
            let mut current: Option<Current> = None;
            let mut run = || -> Result<()> {
                for (j, &unit) in list.iter().enumerate() {
                    let rx = receivers[j].take().expect("each unit is written once");
                    let span = plan.out(unit);
                    let start = span.as_ref().map_or(*next_at, |s| s.start);
                    let mut at = start;
                    loop {
                        if stopped() {
                            return Err(interrupted(dest));
                        }
                        let msg = rx.recv().map_err(|_| {
                            stream_error(
                                std::io::Error::other("a decoder thread died"),
                                image,
                                compression,
                                at,
                            )
                        })?;
                        match msg {
                            Msg::Chunk(buf, n) => {
                                if let Some(span) = &span
                                    && at + n as u64 > span.end
                                {
                                    return Err(unit_size(image, compression, span, at + n as u64));
                                }
                                if at + n as u64 > size {
                                    return Err(Error::ImageSize {
                                        path: image.to_owned(),
                                        bmap: bmap_path.clone(),
                                        expected: size,
                                        actual: at + n as u64,
                                    });
                                }
                                let chunk = at..at + n as u64;
                                sink.put(&mut ranges, &mut current, chunk, &buf[..n])?;
                                pool.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
                                at += n as u64;
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
                    *decoded += at - start;
                    *next_at = at;
                    let mut c = claims.lock().unwrap_or_else(|p| p.into_inner());
                    c.done = j + 1;
                    turn.notify_all();
                }
                // Every range must have been written: one left means the image ended first.
                if let Some(cur) = current.take() {
                    return Err(too_short(image, &cur.range, cur.at));
                }
                if let Some(range) = ranges.next() {
                    let range = range?;
                    let bytes = range.bytes(bs, size);
                    if !bytes.is_empty() {
                        return Err(too_short(image, &range, bytes.start));
                    }
                }
                Ok(())
            };
            let outcome = run();
            // Stop the decoders: those waiting for a turn wake, those sending find no one.
            {
                let mut c = claims.lock().unwrap_or_else(|p| p.into_inner());
                c.stop = true;
                turn.notify_all();
            }
            receivers.clear();
            outcome
        })?;
        let mut report = sink.report;
        // Decoded and dropped: the unmapped bytes of the units that were decoded.
        report.skipped_bytes = decoded - report.mapped_bytes;
        if let Some(p) = progress.as_mut() {
            p(Progress {
                done: report.mapped_bytes,
                total: info.mapped_bytes,
            });
        }
        Ok(Decoded {
            report,
            decoded_to: next_at,
        })
    }
}

impl Sink<'_, '_> {
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
            if let Some(p) = self.progress.as_mut() {
                p(Progress {
                    done: self.report.mapped_bytes,
                    total: self.info.mapped_bytes,
                });
            }
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
fn decode_unit(plan: &Plan, i: usize, tx: &SyncSender<Msg>, pool: &Mutex<Vec<Vec<u8>>>) {
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
