//! The data path of a stream (compressed, archived, or unseekable): read (decoded) in order
//! by one thread, written and hashed by a second, then read to its end.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{
    CHUNK, Copier, CopyReport, Progress, RangeIter, Throttled, Writeback, Written, check,
    interrupted, stream_error, too_short, write_piece,
};
use crate::checksum::ChecksumType;
use crate::error::Result;
use crate::file::BmapInfo;
use crate::format::BlockRange;
use crate::source::{Compression, Source};

/// Chunks in flight (compressed images): one being read and written, the others being hashed
/// or waiting.
const CHUNKS: usize = 8;

impl Copier<'_> {
    /// The data path of a stream: this thread reads (decompresses) chunks in order (a
    /// [`Feed`]), a second thread writes and hashes them, so that decoding has a core of its
    /// own; the chunk buffers go round between the two.
    pub(super) fn pump(
        &mut self,
        source: &mut Source,
        image: &Path,
        out: &File,
        dest: &Path,
        written: &Written,
    ) -> Result<CopyReport> {
        let info = &self.info;
        let kind = self.verified_kind();
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            free_tx.send(vec![0; CHUNK]).expect("the receiver is here");
        }
        let (work_tx, work_rx) = sync_channel::<Batch>(CHUNKS);
        let (result_tx, result_rx) = sync_channel::<Result<u64>>(1);
        let mismatch = AtomicBool::new(false);
        let sink = Sink {
            out,
            dest,
            written,
            writeback: self.options.sync.then(|| Writeback::new(out, dest)),
        };
        let feed = Feed {
            compression: source.compression(),
            source,
            image,
            dest,
            info,
            kind,
            interrupt: self.interrupt.as_deref(),
            mismatch: &mismatch,
            progress: Throttled::new(self.progress.as_deref_mut()),
            batch: Batch {
                buf: free_rx.recv().expect("the pool is full"),
                pieces: Vec::new(),
            },
            fill: 0,
            free: free_rx,
            work: work_tx,
            streamed_to: 0,
            report: CopyReport::new(info.image_size, kind),
        };

        std::thread::scope(|s| {
            // The hasher holds the only sender: if it died, `recv` would fail rather than hang.
            let hasher_free = free_tx;
            let mismatch = &mismatch;
            s.spawn(move || hasher(work_rx, hasher_free, result_tx, mismatch, image, info, sink));
            // The feed hangs up when it is done, and the hasher then ends.
            let (outcome, mut report) = feed.run(self.ranges.iter());
            // The hasher's last word: the ranges it verified, or the first mismatch or write
            // error (which explains an early stop better than anything after it).
            let hashed = result_rx.recv().unwrap_or(Ok(0));
            report.verified_ranges = hashed?;
            outcome?;
            Ok(report)
        })
    }
}

/// The reading side of [`Copier::pump`]: the stream, and the buffer being filled for the
/// hasher.
struct Feed<'f, 'p> {
    source: &'f mut Source,
    compression: Compression,
    image: &'f Path,
    /// For the interruption's error.
    dest: &'f Path,
    info: &'f BmapInfo,
    /// The checksum verified, if any.
    kind: Option<ChecksumType>,
    interrupt: Option<&'f AtomicBool>,
    /// Raised by the hasher at a checksum mismatch or a failed write.
    mismatch: &'f AtomicBool,
    progress: Throttled<'f, 'p>,
    /// Small ranges share a buffer: one hand-over to the hasher per buffer, not per range (a
    /// file of 131072 small extents would otherwise be all hand-overs).
    batch: Batch,
    /// Bytes of `batch` filled.
    fill: usize,
    free: Receiver<Vec<u8>>,
    work: SyncSender<Batch>,
    /// Where the bytes read from the stream end.
    streamed_to: u64,
    report: CopyReport,
}

impl Feed<'_, '_> {
    /// Reads `ranges`, handing their bytes to the hasher to write and hash; hangs up on it at
    /// the end. The report has all but the ranges verified.
    fn run(mut self, ranges: RangeIter<'_>) -> (Result<()>, CopyReport) {
        let outcome = self.all(ranges);
        (outcome, self.report)
    }

    fn all(&mut self, ranges: RangeIter<'_>) -> Result<()> {
        for range in ranges {
            if !self.range(&range?)? {
                return Ok(());
            }
        }
        let _ = self.work.send(std::mem::take(&mut self.batch));
        Ok(())
    }

    /// Reads `range` piece by piece: whether to go on (not if the hasher found a mismatch or
    /// a write failed, which stops the copy at once; the hasher tells which when it is done).
    fn range(&mut self, range: &BlockRange) -> Result<bool> {
        let bytes = range.bytes(self.info.block_size, self.info.image_size);
        let check = self.kind.filter(|_| range.checksum.is_some());
        let mut pos = bytes.start;
        while pos < bytes.end {
            if self.interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return Err(interrupted(self.dest));
            }
            if self.fill == CHUNK {
                self.hand_over();
            }
            let n = (bytes.end - pos).min((CHUNK - self.fill) as u64) as usize;
            self.piece(range, pos, n)?;
            let last = pos + n as u64 == bytes.end;
            self.batch.pieces.push(Piece {
                at: self.fill,
                len: n,
                pos,
                blocks: (range.first, range.last),
                begin: check.filter(|_| pos == bytes.start),
                end: (check.is_some() && last).then(|| range.clone()),
            });
            self.fill += n;
            self.report.skipped_bytes += pos - self.streamed_to;
            self.streamed_to = pos + n as u64;
            pos += n as u64;
            self.report.mapped_bytes += n as u64;
            self.progress.tell(Progress {
                data_done: self.report.mapped_bytes,
                data_total: Some(self.info.mapped_bytes),
                skipped: self.report.skipped_bytes,
            });
            if self.mismatch.load(Ordering::Relaxed) {
                return Ok(false);
            }
        }
        self.report.ranges += 1;
        Ok(true)
    }

    /// Reads the `n` bytes of `range` at `pos` into the batch.
    fn piece(&mut self, range: &BlockRange, pos: u64, n: usize) -> Result<()> {
        let piece = &mut self.batch.buf[self.fill..self.fill + n];
        let got = self
            .source
            .read_at(pos, piece)
            .map_err(|e| stream_error(e, self.image, self.compression, pos))?;
        if got < n {
            return Err(too_short(self.image, range, pos + got as u64));
        }
        Ok(())
    }

    /// Hands the full batch to the hasher, and starts the next in a buffer it gave back.
    fn hand_over(&mut self) {
        let next = self.free.recv().expect("the hasher returns buffers");
        let full = std::mem::replace(
            &mut self.batch,
            Batch {
                buf: next,
                pieces: Vec::new(),
            },
        );
        // The hasher reads until this side hangs up.
        let _ = self.work.send(full);
        self.fill = 0;
    }
}

/// Reads a stream to its end (so that a compressed format's own checksums, at its end, are
/// checked), or to just past `limit` bytes (an endless stream such as `/dev/zero` is not the
/// image); returns the bytes read.
pub(super) fn drain(
    source: &mut Source,
    image: &Path,
    limit: u64,
    stopped: &dyn Fn() -> bool,
    dest: &Path,
) -> Result<u64> {
    let compression = source.compression();
    let mut buf = vec![0u8; CHUNK];
    let mut dropped = 0;
    loop {
        if stopped() {
            return Err(interrupted(dest));
        }
        let at = source.position();
        if at > limit {
            return Ok(dropped);
        }
        let n = source
            .read_more(&mut buf)
            .map_err(|e| stream_error(e, image, compression, at))?;
        if n == 0 {
            return Ok(dropped);
        }
        dropped += n as u64;
    }
}

/// A buffer on its way to the hashing thread, and what its bytes are.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Consecutive bytes of one range in a [`Batch`].
struct Piece {
    /// Where in the buffer.
    at: usize,
    len: usize,
    /// Where in the image (and the destination).
    pos: u64,
    /// The first and last block of its range (for errors).
    blocks: (u64, u64),
    /// The range begins here and is to be hashed this way.
    begin: Option<ChecksumType>,
    /// The range ends here: compare.
    end: Option<BlockRange>,
}

/// Where a stream's pieces are written.
struct Sink<'a> {
    out: &'a File,
    dest: &'a Path,
    written: &'a Written,
    writeback: Option<Writeback<'a>>,
}

impl Sink<'_> {
    fn write(&mut self, piece: &Piece, bytes: &[u8]) -> Result<()> {
        let (first, last) = piece.blocks;
        let range = BlockRange {
            first,
            last,
            checksum: None,
        };
        let span = piece.pos..piece.pos + bytes.len() as u64;
        self.written.add(span.clone());
        write_piece(self.out, self.dest, &range, piece.pos, bytes)?;
        if let Some(w) = self.writeback.as_mut() {
            w.written(span);
        }
        Ok(())
    }
}

/// The second thread of a stream: writes each piece, then hashes it and checks each range.
fn hasher(
    work: Receiver<Batch>,
    free: SyncSender<Vec<u8>>,
    result: SyncSender<Result<u64>>,
    mismatch: &AtomicBool,
    image: &Path,
    info: &BmapInfo,
    mut sink: Sink<'_>,
) {
    let mut current = None;
    let mut verified = 0;
    let mut failure = None;
    // After a mismatch, keep draining (handing the buffers back) until the copier stops.
    for batch in work {
        for piece in &batch.pieces {
            if failure.is_some() {
                break;
            }
            if let Err(e) = sink.write(piece, &batch.buf[piece.at..piece.at + piece.len]) {
                mismatch.store(true, Ordering::Relaxed);
                failure = Some(e);
                break;
            }
            if let Some(kind) = piece.begin {
                current = Some(kind.hasher());
            }
            let Some(h) = current.as_mut() else { continue };
            h.update(&batch.buf[piece.at..piece.at + piece.len]);
            let Some(range) = &piece.end else { continue };
            let Some(h) = current.take() else { continue };
            match check(h, image, info, range) {
                Ok(()) => verified += 1,
                Err(e) => {
                    mismatch.store(true, Ordering::Relaxed);
                    failure = Some(e);
                }
            }
        }
        let _ = free.send(batch.buf);
    }
    let _ = result.send(match failure {
        Some(e) => Err(e),
        None => Ok(verified),
    });
}
