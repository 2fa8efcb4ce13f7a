//! Writing an image's mapped ranges to a destination, verifying them on the way.

use std::fmt;
use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant};

use rustix::fs::Advice;
use sparsecopy::Destination;
use tracing::debug;

use crate::checksum::{ChecksumType, Hasher};
use crate::error::{Error, Result};
use crate::format::{BlockRange, Bmap, human_size};
use crate::source::{Compression, Source, read_full_at};

/// Size of one chunk of data on its way from the image to the destination and the hasher:
/// small enough to stay in a core's L2 cache (1 MiB here) between the `pread` that fills it
/// and the `pwrite` that empties it, large enough that the syscalls cost nothing.
const CHUNK: usize = 256 << 10;
/// Chunks in flight (compressed images): one being read and written, the others being hashed
/// or waiting.
const CHUNKS: usize = 8;
/// How often the progress callback hears of the copy of a plain image.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

/// Copies an image by its bmap: only the mapped ranges are read and written, each range's
/// checksum is verified as its bytes pass. A plain image is copied by one thread per core,
/// each taking the next range and reading, writing and hashing it chunk by chunk; a
/// compressed one is decompressed in order by one thread while a second hashes.
///
/// With the final fsync on (the default), writeback of the destination is started as the
/// copy goes, so that the disk writes while the image is read and hashed.
///
/// The destination:
/// - **a regular file** becomes the image: created if absent, else truncated (as bmaptool
///   does), then sized to `ImageSize`, so the unmapped ranges are holes reading as zeros and
///   no stale byte survives;
/// - **a block device** must hold `ImageSize` bytes (checked before anything is written); the
///   unmapped ranges are left as they are, as bmaptool leaves them.
///
/// A checksum mismatch stops the copy with [`Error::RangeChecksum`]: what was written so far
/// stays written (as with bmaptool), so the destination must not be trusted.
pub struct Copier<'a> {
    bmap: Bmap,
    bmap_path: PathBuf,
    verify: bool,
    sync: bool,
    progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl fmt::Debug for Copier<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Copier")
            .field("bmap_path", &self.bmap_path)
            .field("verify", &self.verify)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// What [`Copier::copy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyReport {
    /// `ImageSize`.
    pub image_size: u64,
    /// Bytes read from the image and written (the mapped ranges).
    pub mapped_bytes: u64,
    /// Bytes of a compressed stream read and dropped (unmapped ranges); 0 for a plain image.
    pub skipped_bytes: u64,
    /// Ranges written.
    pub ranges: u64,
    /// Ranges whose checksum was verified.
    pub verified_ranges: u64,
    /// The checksum type verified, if any range was.
    pub checksum_type: Option<ChecksumType>,
    /// How the image was compressed.
    pub compression: Compression,
    /// Whether the destination is a block device.
    pub block_device: bool,
    /// Wall time of the copy.
    pub elapsed: Duration,
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} of mapped data in {} ranges of a {} image",
            human_size(self.mapped_bytes),
            self.ranges,
            human_size(self.image_size),
        )?;
        if self.compression != Compression::None {
            write!(f, " ({} compressed)", self.compression.name())?;
        }
        match self.checksum_type {
            Some(kind) if self.verified_ranges > 0 => {
                write!(f, ", {} ranges verified ({kind})", self.verified_ranges)?
            }
            _ => write!(f, ", not verified")?,
        }
        write!(f, " in {:.2} s", self.elapsed.as_secs_f64())
    }
}

impl<'a> Copier<'a> {
    /// A copier by `bmap` (verification and a final fsync on).
    pub fn new(bmap: Bmap) -> Self {
        Copier {
            bmap,
            bmap_path: PathBuf::from("<bmap>"),
            verify: true,
            sync: true,
            progress: None,
        }
    }

    /// The bmap file's path, to name it in errors.
    pub fn bmap_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.bmap_path = path.into();
        self
    }

    /// Verify each range's checksum (on by default; ranges without one are not verified).
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// fsync the destination before returning (on by default, as bmaptool).
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Called as data is written, with the bytes written and the mapped bytes in all.
    pub fn progress(mut self, f: &'a mut dyn FnMut(u64, u64)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Copies the image at `image` (compressed as its name says) to `dest`.
    pub fn copy(self, image: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<CopyReport> {
        let (image, dest) = (image.as_ref(), dest.as_ref());
        let _span =
            tracing::debug_span!("bmap::copy", image = %image.display(), dest = %dest.display())
                .entered();
        let started = Instant::now();
        let compression = Compression::of(image)?;
        let file = File::open(image).map_err(|e| Error::io("open the image", image, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat the image", image, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                "read the image",
                image,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let bmap = &self.bmap;
        if compression == Compression::None && meta.is_file() && meta.len() != bmap.image_size {
            return Err(Error::ImageSize {
                path: image.to_owned(),
                bmap: self.bmap_path.clone(),
                expected: bmap.image_size,
                actual: meta.len(),
            });
        }

        let out = Destination::open(dest)?;
        if out.is_same_file(&file, image)? {
            return Err(Error::SameFile {
                image: image.to_owned(),
                dest: dest.to_owned(),
            });
        }
        if out.is_block_device() {
            if out.size() < bmap.image_size {
                return Err(Error::DeviceTooSmall {
                    path: dest.to_owned(),
                    device: out.size(),
                    image: bmap.image_size,
                });
            }
        } else {
            // The destination becomes the image: nothing of its old contents survives.
            let resize = |size| {
                out.file()
                    .set_len(size)
                    .map_err(|e| Error::io(format!("resize to {size} bytes"), dest, e))
            };
            if !out.created() && out.size() > 0 {
                resize(0)?;
            }
            resize(bmap.image_size)?;
        }
        debug!(
            ?compression,
            block_device = out.is_block_device(),
            ranges = bmap.ranges.len(),
            "copying"
        );

        let sync = self.sync;
        let mut report = match Source::new(file, image, compression)? {
            Source::File(file) => self.lanes(&file, image, out.file(), dest)?,
            stream => self.pump(stream, image, out.file(), dest)?,
        };
        if sync {
            out.file()
                .sync_all()
                .map_err(|e| Error::io("fsync", dest, e))?;
        }
        report.compression = compression;
        report.block_device = out.is_block_device();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The data path of a plain image: one lane per core, each taking the next range and
    /// reading, writing and hashing it chunk by chunk, the chunk still in the core's cache
    /// (a range is hashed in order, so ranges are what runs in parallel). This thread passes
    /// the progress on.
    fn lanes(mut self, file: &File, image: &Path, out: &File, dest: &Path) -> Result<CopyReport> {
        let bmap = &self.bmap;
        let kind = bmap.checksum_type.filter(|_| self.verify);
        let total = bmap.mapped_bytes();
        let lanes = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(bmap.ranges.len())
            .max(1);
        debug!(lanes, "copying a plain image");
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let (ranges, verified) = (AtomicU64::new(0), AtomicU64::new(0));
        // Of several failures, the first range's is reported.
        let failure: Mutex<Option<(usize, Error)>> = Mutex::new(None);
        let sync = self.sync;
        let lane = || {
            let mut buf = vec![0u8; CHUNK];
            let mut writeback = sync.then(|| Writeback::new(out, dest));
            while !stop.load(Ordering::Relaxed) {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(range) = bmap.ranges.get(index) else {
                    break;
                };
                let mut hasher = kind
                    .filter(|_| range.checksum.is_some())
                    .map(|k| k.hasher());
                let bytes = range.bytes(bmap.block_size, bmap.image_size);
                let mut pos = bytes.start;
                let outcome = loop {
                    if pos == bytes.end {
                        break Ok(());
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = (bytes.end - pos).min(CHUNK as u64) as usize;
                    let piece = &mut buf[..n];
                    if let Err(e) = read_piece(file, image, range, pos, piece)
                        .and_then(|()| write_piece(out, dest, range, pos, piece))
                    {
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
                    Some(h) => check(h, image, bmap, index).map(|()| 1),
                    None => Ok(0),
                });
                match outcome {
                    Ok(n) => {
                        verified.fetch_add(n, Ordering::Relaxed);
                        ranges.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
                        if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                            *failure = Some((index, e));
                        }
                        return;
                    }
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
        if let Some((_, e)) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mapped_bytes = copied.into_inner();
        if let Some(p) = self.progress.as_mut() {
            p(mapped_bytes, total);
        }
        Ok(CopyReport {
            image_size: bmap.image_size,
            mapped_bytes,
            skipped_bytes: 0,
            ranges: ranges.into_inner(),
            verified_ranges: verified.into_inner(),
            checksum_type: kind,
            compression: Compression::None,
            block_device: false,
            elapsed: Duration::ZERO,
        })
    }

    /// The data path of a compressed image: this thread decompresses, reads and writes chunks
    /// in order, a second thread hashes them; the chunk buffers go round between the two.
    fn pump(
        mut self,
        mut source: Source,
        image: &Path,
        out: &File,
        dest: &Path,
    ) -> Result<CopyReport> {
        let bmap = &self.bmap;
        let (bs, size) = (bmap.block_size, bmap.image_size);
        let kind = bmap.checksum_type.filter(|_| self.verify);
        let total = bmap.mapped_bytes();
        let mut report = CopyReport {
            image_size: size,
            mapped_bytes: 0,
            skipped_bytes: 0,
            ranges: 0,
            verified_ranges: 0,
            checksum_type: kind,
            compression: Compression::None,
            block_device: false,
            elapsed: Duration::ZERO,
        };
        let mut streamed_to = 0u64;
        let mut writeback = self.sync.then(|| Writeback::new(out, dest));

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
            s.spawn(move || hasher(work_rx, hasher_free, result_tx, mismatch, image, bmap));

            let mut run = || -> Result<()> {
                // Small ranges share a buffer: one hand-over to the hasher per buffer, not per
                // range (a file of 131072 small extents would otherwise be all hand-overs).
                let mut batch = Batch {
                    buf: free_rx.recv().expect("the pool is full"),
                    pieces: Vec::new(),
                };
                let mut fill = 0;
                for (index, range) in bmap.ranges.iter().enumerate() {
                    let bytes = range.bytes(bs, size);
                    let check = kind.filter(|_| range.checksum.is_some());
                    let mut pos = bytes.start;
                    while pos < bytes.end {
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
                        let got = source.read_at(pos, piece).map_err(|e| {
                            Error::io(format!("read bytes {}-{}", pos, pos + n as u64), image, e)
                        })?;
                        if got < n {
                            return Err(too_short(image, range, pos + got as u64));
                        }
                        write_piece(out, dest, range, pos, piece)?;
                        if let Some(w) = writeback.as_mut() {
                            w.written(pos..pos + n as u64);
                        }
                        batch.pieces.push(Piece {
                            at: fill,
                            len: n,
                            begin: check.filter(|_| pos == bytes.start),
                            end: (check.is_some() && pos + n as u64 == bytes.end).then_some(index),
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
    /// The range (its index in the bmap) ends here: compare.
    end: Option<usize>,
}

fn hasher(
    work: Receiver<Batch>,
    free: SyncSender<Vec<u8>>,
    result: SyncSender<Result<u64>>,
    mismatch: &AtomicBool,
    image: &Path,
    bmap: &Bmap,
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
            let Some(index) = piece.end else { continue };
            let Some(h) = current.take() else { continue };
            match check(h, image, bmap, index) {
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

/// Compares the hash of range `index` with its checksum.
fn check(hasher: Hasher, image: &Path, bmap: &Bmap, index: usize) -> Result<()> {
    let calculated = hasher.finish_hex();
    let range = &bmap.ranges[index];
    let expected = range.checksum.as_deref().unwrap_or_default();
    if calculated.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    debug!(index, "checksum mismatch");
    let bytes = range.bytes(bmap.block_size, bmap.image_size);
    Err(Error::RangeChecksum {
        path: image.to_owned(),
        first: range.first,
        last: range.last,
        start: bytes.start,
        end: bytes.end,
        expected: expected.to_owned(),
        calculated,
    })
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

fn too_short(image: &Path, range: &BlockRange, at: u64) -> Error {
    Error::ImageTooShort {
        path: image.to_owned(),
        first: range.first,
        last: range.last,
        at,
    }
}

/// Writes `piece` of `range` at `pos` of the destination.
fn write_piece(out: &File, dest: &Path, range: &BlockRange, pos: u64, piece: &[u8]) -> Result<()> {
    out.write_all_at(piece, pos).map_err(|e| {
        let what = format!(
            "write blocks {}-{} (bytes {}-{})",
            range.first,
            range.last,
            pos,
            pos + piece.len() as u64
        );
        Error::io(what, dest, e)
    })
}

/// Writeback of the destination started as the copy goes, when it ends in an fsync: the disk
/// writes while the image is read and hashed, and the fsync waits only for the last window
/// (otherwise nothing reaches the disk before the fsync, a disk image's data being far below
/// the kernel's background writeback threshold).
struct Writeback<'a> {
    out: &'a File,
    dest: &'a Path,
    /// Written and not yet handed to writeback.
    pending: Option<Range<u64>>,
    pending_bytes: u64,
}

/// Bytes written between two starts of writeback.
const WRITEBACK_WINDOW: u64 = 16 << 20;

impl<'a> Writeback<'a> {
    fn new(out: &'a File, dest: &'a Path) -> Self {
        Writeback {
            out,
            dest,
            pending: None,
            pending_bytes: 0,
        }
    }

    /// `bytes` were written.
    fn written(&mut self, bytes: Range<u64>) {
        self.pending_bytes += bytes.end - bytes.start;
        let pending = match self.pending.take() {
            Some(p) => p.start.min(bytes.start)..p.end.max(bytes.end),
            None => bytes,
        };
        if self.pending_bytes < WRITEBACK_WINDOW {
            self.pending = Some(pending);
            return;
        }
        self.pending_bytes = 0;
        // POSIX_FADV_DONTNEED starts writeback of the range's dirty pages without waiting for
        // it (WB_SYNC_NONE) and drops the range's clean pages, which the pages just written are
        // not yet: this is `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which rustix lacks, and
        // it keeps an image being flashed from crowding the page cache (`dd oflag=nocache`
        // does the same). Advice only: a failure costs speed, never data (the final fsync
        // reports write errors).
        let len = NonZeroU64::new(pending.end - pending.start);
        if let Err(e) = rustix::fs::fadvise(self.out, pending.start, len, Advice::DontNeed) {
            debug!(dest = %self.dest.display(), error = %e, "no early writeback");
        }
    }
}
