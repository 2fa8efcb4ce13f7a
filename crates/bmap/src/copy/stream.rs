//! The data path of a stream (compressed, archived, or unseekable): read in order by one
//! thread, hashed by a second, then read to its end.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{
    CHUNK, Copier, CopyReport, Writeback, Written, check, interrupted, stream_error, too_short,
    write_piece,
};
use crate::checksum::ChecksumType;
use crate::error::Result;
use crate::file::BmapInfo;
use crate::format::BlockRange;
use crate::source::Source;

/// Chunks in flight (compressed images): one being read and written, the others being hashed
/// or waiting.
const CHUNKS: usize = 8;

impl Copier<'_> {
    /// The data path of a stream: this thread reads (decompresses) and writes chunks in
    /// order, a second thread hashes them; the chunk buffers go round between the two.
    pub(super) fn pump(
        &mut self,
        source: &mut Source,
        image: &Path,
        out: &File,
        dest: &Path,
        written: &Written,
    ) -> Result<CopyReport> {
        let info = &self.info;
        let (bs, size) = (info.block_size, info.image_size);
        let kind = info.checksum_type.filter(|_| self.verify);
        let total = info.mapped_bytes;
        let compression = source.compression();
        let mut report = CopyReport::new(size, kind);
        let mut streamed_to = 0u64;
        let mut writeback = self.sync.then(|| Writeback::new(out, dest));
        let interrupt = self.interrupt.clone();
        let stopped = || {
            interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        };

        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            free_tx.send(vec![0; CHUNK]).expect("the receiver is here");
        }
        let (work_tx, work_rx) = sync_channel::<Batch>(CHUNKS);
        let (result_tx, result_rx) = sync_channel::<Result<u64>>(1);
        let mismatch = AtomicBool::new(false);

        std::thread::scope(|s| {
            // The hasher holds the only sender: if it died, `recv` would fail rather than hang.
            let hasher_free = free_tx;
            let mismatch = &mismatch;
            s.spawn(move || hasher(work_rx, hasher_free, result_tx, mismatch, image, info));

            let mut run = || -> Result<()> {
                // Small ranges share a buffer: one hand-over to the hasher per buffer, not per
                // range (a file of 131072 small extents would otherwise be all hand-overs).
                let mut batch = Batch {
                    buf: free_rx.recv().expect("the pool is full"),
                    pieces: Vec::new(),
                };
                let mut fill = 0;
                for range in self.ranges.iter() {
                    let range = range?;
                    let bytes = range.bytes(bs, size);
                    let check = kind.filter(|_| range.checksum.is_some());
                    let mut pos = bytes.start;
                    while pos < bytes.end {
                        if stopped() {
                            return Err(interrupted(dest));
                        }
                        if fill == CHUNK {
                            let next = free_rx.recv().expect("the hasher returns buffers");
                            let full = std::mem::replace(
                                &mut batch,
                                Batch {
                                    buf: next,
                                    pieces: Vec::new(),
                                },
                            );
                            // The hasher reads until this side hangs up.
                            let _ = work_tx.send(full);
                            fill = 0;
                        }
                        let n = (bytes.end - pos).min((CHUNK - fill) as u64) as usize;
                        let piece = &mut batch.buf[fill..fill + n];
                        let got = source
                            .read_at(pos, piece)
                            .map_err(|e| stream_error(e, image, compression, pos))?;
                        if got < n {
                            return Err(too_short(image, &range, pos + got as u64));
                        }
                        written.add(pos..pos + n as u64);
                        write_piece(out, dest, &range, pos, piece)?;
                        if let Some(w) = writeback.as_mut() {
                            w.written(pos..pos + n as u64);
                        }
                        let last = pos + n as u64 == bytes.end;
                        batch.pieces.push(Piece {
                            at: fill,
                            len: n,
                            begin: check.filter(|_| pos == bytes.start),
                            end: (check.is_some() && last).then(|| range.clone()),
                        });
                        fill += n;
                        report.skipped_bytes += pos - streamed_to;
                        streamed_to = pos + n as u64;
                        pos += n as u64;
                        report.mapped_bytes += n as u64;
                        if let Some(p) = self.progress.as_mut() {
                            p(report.mapped_bytes, total);
                        }
                        // A mismatch found by the hasher stops the copy at once; the hasher
                        // tells which when it is done.
                        if mismatch.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    report.ranges += 1;
                }
                let _ = work_tx.send(batch);
                Ok(())
            };
            let outcome = run();
            drop(work_tx);
            // The hasher's last word: the ranges it verified, or the first mismatch (which
            // explains an early stop better than anything that happened after it).
            let hashed = result_rx.recv().unwrap_or(Ok(0));
            report.verified_ranges = hashed?;
            outcome?;
            Ok(report)
        })
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
struct Batch {
    buf: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Consecutive bytes of one range in a [`Batch`].
struct Piece {
    /// Where in the buffer.
    at: usize,
    len: usize,
    /// The range begins here and is to be hashed this way.
    begin: Option<ChecksumType>,
    /// The range ends here: compare.
    end: Option<BlockRange>,
}

fn hasher(
    work: Receiver<Batch>,
    free: SyncSender<Vec<u8>>,
    result: SyncSender<Result<u64>>,
    mismatch: &AtomicBool,
    image: &Path,
    info: &BmapInfo,
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
