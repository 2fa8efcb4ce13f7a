//! Writing an image's mapped ranges to a destination, verifying them on the way.

use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockmap_core::{BackendChoice, BlockMap, MapOptions};
use rustix::fs::Advice;
use sparsecopy::Destination;
use tracing::debug;

use crate::checksum::{ChecksumType, Hasher};
use crate::error::{Error, Result};
use crate::file::{BmapFile, BmapInfo};
use crate::format::{BlockRange, Bmap};
use crate::input::{Input, Opened};
use crate::readback::{self, ReadBackReport, Reread};
use crate::source::{Compression, Source, read_full_at};

mod decode;
mod whole;

/// Size of one chunk of data on its way from the image to the destination and the hasher:
/// small enough to stay in a core's L2 cache (1 MiB here) between the `pread` that fills it
/// and the `pwrite` that empties it, large enough that the syscalls cost nothing.
const CHUNK: usize = 256 << 10;
/// Chunks in flight (compressed images): one being read and written, the others being hashed
/// or waiting.
const CHUNKS: usize = 8;
/// Ranges a lane takes at once (a plain image).
const TAKE: usize = 32;
/// How often the progress callback hears of the copy of a plain image.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

/// Copies an image by its bmap: only the mapped ranges are read and written, each range's
/// checksum is verified as its bytes pass. A plain image is copied by one thread per core,
/// each taking the next range and reading, writing and hashing it chunk by chunk; a
/// compressed one, or one that cannot seek (a pipe), is read in order by one thread while a
/// second hashes, and read to its end, where the compressed format's own checksum is checked.
///
/// The ranges come from a [`Bmap`] in memory ([`Copier::new`]) or are read from a
/// [`BmapFile`] as the copy goes ([`Copier::from_file`]: memory stays small whatever the
/// number of ranges).
///
/// With the final fsync on (the default), writeback of the destination is started as the
/// copy goes, so that the disk writes while the image is read and hashed.
///
/// Everything that can be known before writing is checked before the destination is
/// truncated or written: the image opens and reads (a stream's first bytes are read and, if
/// compressed, decompressed), its size is the bmap's, the destination is what it should be.
/// Then the destination:
/// - **a regular file** becomes the image: created if absent, else truncated (as bmaptool
///   does), then sized to `ImageSize`, so the unmapped ranges are holes reading as zeros and
///   no stale byte survives;
/// - **a block device** must hold `ImageSize` bytes; the unmapped ranges are left as they
///   are, as bmaptool leaves them.
///
/// It is closed with its `close(2)` checked. A failure of any kind (a checksum mismatch, an
/// I/O error, a failed close, [`Error::Interrupted`]) removes a destination this copy created;
/// an existing one keeps what was written, and must not be trusted.
pub struct Copier<'a> {
    info: BmapInfo,
    ranges: RangeSource,
    bmap_path: PathBuf,
    verify: bool,
    sync: bool,
    interrupt: Option<Arc<AtomicBool>>,
    progress: Option<&'a mut dyn FnMut(u64, u64)>,
    checksum_retry: Option<u32>,
}

/// Where the ranges come from.
enum RangeSource {
    Memory(Vec<BlockRange>),
    File(BmapFile),
    /// The image's own block map, walked again as the copy goes (no bmap file).
    Map(BlockMap<File>),
    /// No bmap, no map: every byte of the image, its size known at its end.
    Whole,
}

/// The ranges in order, with their errors (a bmap file read as the copy goes).
type RangeIter<'r> = Box<dyn Iterator<Item = Result<BlockRange>> + Send + 'r>;

impl RangeSource {
    fn iter(&self) -> RangeIter<'_> {
        match self {
            RangeSource::Memory(ranges) => Box::new(ranges.iter().cloned().map(Ok)),
            RangeSource::File(file) => Box::new(file.ranges()),
            RangeSource::Map(map) => Box::new(map.mapped_blocks(0..map.block_count()).map(|r| {
                let r = r?;
                Ok(BlockRange {
                    first: r.start,
                    last: r.end - 1,
                    checksum: None,
                })
            })),
            RangeSource::Whole => Box::new(std::iter::empty()),
        }
    }
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
    /// Bytes of a stream read and dropped (unmapped ranges, to the stream's end); 0 for a
    /// plain image read where the ranges are.
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
    /// What the read-back verification did, if it was asked for.
    pub readback: Option<ReadBackReport>,
    /// Bytes of response bodies that came over the network, for an image given as a URL.
    pub network_bytes: Option<u64>,
}

impl CopyReport {
    /// A report of nothing done yet, for an image of `image_size` bytes verified by `kind`.
    fn new(image_size: u64, kind: Option<ChecksumType>) -> Self {
        CopyReport {
            image_size,
            mapped_bytes: 0,
            skipped_bytes: 0,
            ranges: 0,
            verified_ranges: 0,
            checksum_type: kind,
            compression: Compression::None,
            block_device: false,
            elapsed: Duration::ZERO,
            readback: None,
            network_bytes: None,
        }
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} of mapped data in {} ranges of a {} image",
            sparsecopy::human_size(self.mapped_bytes),
            self.ranges,
            sparsecopy::human_size(self.image_size),
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
        if let Some(r) = &self.readback {
            write!(f, ", {r}")?;
        }
        if let Some(bytes) = self.network_bytes {
            write!(f, ", {} over the network", sparsecopy::human_size(bytes))?;
        }
        write!(f, " in {:.2} s", self.elapsed.as_secs_f64())
    }
}

/// The bytes of the destination written so far, as one span (for the message of an
/// interrupted copy).
struct Written {
    start: AtomicU64,
    end: AtomicU64,
}

impl Written {
    fn new() -> Self {
        Written {
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(0),
        }
    }

    fn add(&self, bytes: Range<u64>) {
        self.start.fetch_min(bytes.start, Ordering::Relaxed);
        self.end.fetch_max(bytes.end, Ordering::Relaxed);
    }

    fn span(&self) -> Option<Range<u64>> {
        let (start, end) = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        );
        (start < end).then_some(start..end)
    }
}

impl<'a> Copier<'a> {
    /// A copier by `bmap` (verification and a final fsync on).
    pub fn new(bmap: Bmap) -> Self {
        Copier {
            info: bmap.info(),
            ranges: RangeSource::Memory(bmap.ranges),
            bmap_path: PathBuf::from("<bmap>"),
            verify: true,
            sync: true,
            interrupt: None,
            progress: None,
            checksum_retry: None,
        }
    }

    /// A copier by a bmap file, its ranges read as the copy goes (verification and a final
    /// fsync on; the file named in errors).
    pub fn from_file(file: BmapFile) -> Self {
        Copier {
            info: file.info().clone(),
            bmap_path: file.path().to_owned(),
            ranges: RangeSource::File(file),
            verify: true,
            sync: true,
            interrupt: None,
            progress: None,
            checksum_retry: None,
        }
    }

    /// A copier by the image's own block map (no bmap file, nothing to verify), walked once
    /// here to count the mapped blocks and again as the copy goes: what `bmaptool copy
    /// --nobmap` copies, in the memory of one walk.
    pub fn from_image_map(image: impl AsRef<Path>, backend: BackendChoice) -> Result<Self> {
        let image = image.as_ref();
        let map = BlockMap::open(image, MapOptions::from(backend))?;
        let block_size = u64::from(map.block_size());
        let mut bmap = Bmap::new(map.size(), block_size);
        bmap.checksum_type = None;
        let mut info = bmap.info();
        for r in map.mapped_blocks(0..map.block_count()) {
            let r = r?;
            let range = BlockRange {
                first: r.start,
                last: r.end - 1,
                checksum: None,
            };
            let bytes = range.bytes(block_size, info.image_size);
            info.mapped_blocks_count += range.blocks();
            info.mapped_bytes += bytes.end - bytes.start;
            info.ranges += 1;
        }
        Ok(Copier {
            info,
            ranges: RangeSource::Map(map),
            bmap_path: PathBuf::from("-"),
            verify: false,
            sync: true,
            interrupt: None,
            progress: None,
            checksum_retry: None,
        })
    }

    /// A copier without a bmap that writes every byte of the image, as `bmaptool copy
    /// --nobmap` does with a compressed image or a stream: what holes it had are written as
    /// zeros, and nothing is verified but a compressed format's own checksums.
    pub fn whole_image() -> Self {
        let mut bmap = Bmap::new(0, 4096);
        bmap.checksum_type = None;
        Copier {
            info: bmap.info(),
            ranges: RangeSource::Whole,
            bmap_path: PathBuf::from("-"),
            verify: false,
            sync: true,
            interrupt: None,
            progress: None,
            checksum_retry: None,
        }
    }

    /// The bmap file's path, to name it in errors.
    pub fn bmap_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.bmap_path = path.into();
        self
    }

    /// Verify each range's checksum (on by default; ranges without one are not verified).
    /// A compressed image's own checksums are checked either way.
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// fsync the destination before returning (on by default, as bmaptool).
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// A flag that stops the copy when raised (by a signal handler): it is polled before
    /// every chunk, and the copy ends with [`Error::Interrupted`].
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Called as data is written, with the bytes written and the mapped bytes in all.
    pub fn progress(mut self, f: &'a mut dyn FnMut(u64, u64)) -> Self {
        self.progress = Some(f);
        self
    }

    /// After the copy is written and synced, read every range back from the destination
    /// (past the page cache) and compare it with its checksum; a range that differs is
    /// written again from the image and read back again, up to `retries` times, and the copy
    /// fails with [`Error::ReadBack`] naming those that never matched. Needs a bmap with
    /// checksums, and for `retries > 0` an image that can be read again (not a pipe): else
    /// [`Error::ReadBackUnavailable`], before anything is written.
    pub fn checksum_retry(mut self, retries: u32) -> Self {
        self.checksum_retry = Some(retries);
        self
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Copies the image at `image` to `dest`: `-` is standard input; compression and archives
    /// are recognised by the image's first bytes ([`Input::open`]). `image` may be an
    /// `http://` or `https://` URL: an uncompressed image is then fetched by Range requests
    /// for its mapped ranges only, a compressed one streamed from one GET, and
    /// [`CopyReport::network_bytes`] says what came over the network.
    pub fn copy(self, image: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<CopyReport> {
        let image = image.as_ref();
        if let Some(url) = crate::remote::Url::of(image)
            && !matches!(self.ranges, RangeSource::Whole)
        {
            return crate::remote::copy(self, &url, dest.as_ref());
        }
        self.copy_input(Input::open(image)?, dest)
    }

    /// Copies an image opened as an [`Input`] (a file, standard input, any reader) to `dest`.
    pub fn copy_input(self, input: Input, dest: impl AsRef<Path>) -> Result<CopyReport> {
        let image = input.path().to_owned();
        let (image, dest) = (image.as_path(), dest.as_ref());
        let _span =
            tracing::debug_span!("bmap::copy", image = %image.display(), dest = %dest.display())
                .entered();
        let started = Instant::now();
        let info = &self.info;
        let compression = input.compression();
        // Whether the image can be read again (for --checksum-retry's rewrites).
        let seekable = input.is_seekable();
        if matches!(self.ranges, RangeSource::Whole) {
            if self.checksum_retry.is_some() {
                // Nothing to compare with: no bmap, no checksums.
                return Err(Error::ReadBackUnavailable {
                    path: image.to_owned(),
                    reason: "--checksum-retry needs a bmap with checksums; the whole image \
                             is written without one"
                        .to_owned(),
                });
            }
            return self.copy_whole(input, dest, started);
        }
        let size_mismatch = |actual| Error::ImageSize {
            path: image.to_owned(),
            bmap: self.bmap_path.clone(),
            expected: info.image_size,
            actual,
        };
        // A local compressed file of independent blocks: decoded in parallel, where mapped.
        let plan = match input.compressed_file() {
            Some(file) => crate::parallel::plan(file, image, compression)?,
            None => None,
        };
        if let Some(size) = plan.as_ref().and_then(|p| p.size())
            && size != info.image_size
        {
            return Err(size_mismatch(size));
        }
        let opened = input.open_image()?;
        let source = match opened {
            // A plain file or device is read where the ranges are.
            Opened::Plain(file) => {
                let meta = file
                    .metadata()
                    .map_err(|e| Error::io("stat the image", image, e))?;
                let kind = meta.file_type();
                if kind.is_file() && meta.len() != info.image_size {
                    return Err(size_mismatch(meta.len()));
                }
                if kind.is_block_device() {
                    let size = (&file)
                        .seek(SeekFrom::End(0))
                        .map_err(|e| Error::io("find the size of the image", image, e))?;
                    if size < info.image_size {
                        return Err(size_mismatch(size));
                    }
                }
                // It reads: the first byte, before anything is written.
                if info.image_size > 0 {
                    read_full_at(&file, 0, &mut [0u8; 1])
                        .map_err(|e| Error::io("read the image", image, e))?;
                }
                Source::File(file)
            }
            // Anything else (a pipe, a compressed image, an archive) in order.
            Opened::Stream(reader) => {
                let mut stream = Source::stream(reader, compression);
                // Its first bytes arrive and decompress, before anything is written.
                let first = stream
                    .peek()
                    .map_err(|e| stream_error(e, image, compression, 0))?;
                if first == 0 && info.mapped_bytes > 0 {
                    return Err(size_mismatch(0));
                }
                stream
            }
        };
        let reading = Reading {
            rereadable: seekable,
            plan: plan.as_ref(),
        };
        self.copy_source(source, reading, image, dest, started)
    }

    /// The bmap's header, its file, and its ranges in bytes, in order (what a remote image
    /// fetches).
    pub(crate) fn plan(&self) -> (&BmapInfo, &Path, impl Iterator<Item = Result<Range<u64>>>) {
        let (bs, size) = (self.info.block_size, self.info.image_size);
        let ranges = self
            .ranges
            .iter()
            .map(move |r| r.map(|r| r.bytes(bs, size)));
        (&self.info, &self.bmap_path, ranges)
    }

    /// Copies from `source`, the image's bytes (named `image` in errors), to `dest`: the
    /// destination opened, checked, written and closed; `reading` says how else the image
    /// can be read.
    pub(crate) fn copy_source(
        self,
        mut source: Source,
        reading: Reading<'_>,
        image: &Path,
        dest: &Path,
        started: Instant,
    ) -> Result<CopyReport> {
        let compression = source.compression();
        if self.interrupted() {
            return Err(Error::Interrupted {
                dest: dest.to_owned(),
                removed: false,
                written: None,
            });
        }
        if let Some(retries) = self.checksum_retry {
            // bmaptool's bmaps have a checksum in every range or in none.
            let summed = match self.ranges.iter().next() {
                Some(first) => first?.checksum.is_some(),
                None => true,
            };
            let summed = summed && self.info.checksum_type.is_some();
            readback::check_possible(summed, retries, reading.rereadable, image, &self.bmap_path)?;
        }
        let out = Destination::open(dest)?;
        let written = Written::new();
        let outcome = self.write(&mut source, &out, image, dest, &written, reading);
        finish(outcome, out, &written, started).map(|mut report| {
            report.compression = compression;
            report
        })
    }

    /// Everything that writes: the destination checked, sized, filled and synced.
    fn write(
        mut self,
        source: &mut Source,
        out: &Destination,
        image: &Path,
        dest: &Path,
        written: &Written,
        reading: Reading<'_>,
    ) -> Result<CopyReport> {
        let Reading { rereadable, plan } = reading;
        let info = self.info.clone();
        let bmap_path = self.bmap_path.clone();
        if let Source::File(file) = &*source
            && out.is_same_file(file, image)?
        {
            return Err(Error::SameFile {
                image: image.to_owned(),
                dest: dest.to_owned(),
            });
        }
        if out.is_block_device() {
            if out.size() < info.image_size {
                return Err(Error::DeviceTooSmall {
                    path: dest.to_owned(),
                    device: out.size(),
                    image: info.image_size,
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
                written.add(0..info.image_size);
                resize(0)?;
            }
            resize(info.image_size)?;
        }
        debug!(
            block_device = out.is_block_device(),
            ranges = info.ranges,
            "copying"
        );
        let sync = self.sync;
        let interrupt = self.interrupt.clone();
        let stopped = || {
            interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        };
        let mut report = match &mut *source {
            Source::File(file) => self.lanes(file, image, out.file(), dest, written)?,
            _ if plan.is_some() => {
                let plan = plan.expect("checked");
                let report = self.decode(plan, image, out.file(), dest, written)?;
                // Units of unknown sizes (bz2): all decoded, they must add up to ImageSize.
                if report.decoded_to != info.image_size && plan.size().is_none() {
                    return Err(Error::ImageSize {
                        path: image.to_owned(),
                        bmap: bmap_path,
                        expected: info.image_size,
                        actual: report.decoded_to,
                    });
                }
                report.report
            }
            stream => {
                let mut report = self.pump(stream, image, out.file(), dest, written)?;
                report.skipped_bytes += drain(stream, image, info.image_size, &stopped, dest)?;
                let end = stream.position();
                if end != info.image_size {
                    return Err(Error::ImageSize {
                        path: image.to_owned(),
                        bmap: bmap_path,
                        expected: info.image_size,
                        actual: end,
                    });
                }
                report
            }
        };
        if stopped() {
            return Err(interrupted(dest));
        }
        if sync {
            out.file()
                .sync_all()
                .map_err(|e| Error::io("fsync", dest, e))?;
        }
        if let Some(retries) = self.checksum_retry {
            if !sync {
                out.file()
                    .sync_all()
                    .map_err(|e| Error::io("fsync", dest, e))?;
            }
            let reread = match &*source {
                Source::File(file) => Reread::File(file),
                stream if rereadable => Reread::Decode(stream.compression()),
                _ => Reread::Never,
            };
            let ranges = self.ranges.iter();
            let r = readback::run(
                ranges,
                &info,
                retries,
                reread,
                image,
                out.file(),
                dest,
                &stopped,
            )?;
            report.readback = Some(r);
        }
        report.block_device = out.is_block_device();
        Ok(report)
    }

    /// The data path of a plain image: one lane per core, each taking the next range and
    /// reading, writing and hashing it chunk by chunk, the chunk still in the core's cache
    /// (a range is hashed in order, so ranges are what runs in parallel). This thread passes
    /// the progress on.
    fn lanes(
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

    /// The data path of a stream: this thread reads (decompresses) chunks in order, a second
    /// thread writes and hashes them, so that decoding has a core of its own; the chunk
    /// buffers go round between the two.
    fn pump(
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
        let sink = PumpSink {
            out,
            dest,
            written,
            writeback: self.sync.then(|| Writeback::new(out, dest)),
        };
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
            s.spawn(move || {
                hasher(work_rx, hasher_free, result_tx, mismatch, image, info, sink);
            });

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
                        let last = pos + n as u64 == bytes.end;
                        batch.pieces.push(Piece {
                            at: fill,
                            len: n,
                            pos,
                            blocks: (range.first, range.last),
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
                        // A mismatch or write error found by the hasher stops the copy at
                        // once; the hasher tells which when it is done.
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
fn drain(
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

/// How an image can be read besides its `Source`.
#[derive(Clone, Copy)]
pub(crate) struct Reading<'p> {
    /// It can be opened and read again by its path (for `--checksum-retry`'s rewrites).
    pub(crate) rereadable: bool,
    /// Its blocks are decoded in parallel instead of streamed from the `Source`.
    pub(crate) plan: Option<&'p crate::parallel::Plan>,
}

/// A copy's end: DEST closed (its close checked) and the report timed; or on failure DEST
/// removed if this run created it, and an interruption told what was removed or written.
fn finish(
    outcome: Result<CopyReport>,
    out: Destination,
    written: &Written,
    started: Instant,
) -> Result<CopyReport> {
    match outcome {
        Ok(mut report) => {
            out.close()?;
            report.elapsed = started.elapsed();
            Ok(report)
        }
        Err(mut e) => {
            let removed = out.remove_if_created();
            debug!(removed, "copy failed");
            if let Error::Interrupted {
                removed: r,
                written: w,
                ..
            } = &mut e
            {
                *r = removed;
                *w = written.span();
            }
            Err(e)
        }
    }
}

fn interrupted(dest: &Path) -> Error {
    Error::Interrupted {
        dest: dest.to_owned(),
        removed: false,
        written: None,
    }
}

/// A read error of a stream: a decoder's complaint is the image being corrupt; the kernel's
/// (an errno) is an I/O error.
fn stream_error(e: io::Error, image: &Path, compression: Compression, at: u64) -> Error {
    if let Some(e) = crate::archive::into_error(&e, image, at) {
        return e;
    }
    if e.raw_os_error().is_some() || compression == Compression::None {
        return Error::io(format!("read the image at byte {at}"), image, e);
    }
    Error::Corrupt {
        path: image.to_owned(),
        compression: compression.name(),
        at,
        source: e,
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
    /// Where in the image (and destination).
    pos: u64,
    /// The first and last block of its range (for errors).
    blocks: (u64, u64),
    /// The range begins here and is to be hashed this way.
    begin: Option<ChecksumType>,
    /// The range ends here: compare.
    end: Option<BlockRange>,
}

/// Where a stream's pieces are written.
struct PumpSink<'a> {
    out: &'a File,
    dest: &'a Path,
    written: &'a Written,
    writeback: Option<Writeback<'a>>,
}

impl PumpSink<'_> {
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
    mut sink: PumpSink<'_>,
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

/// Compares the hash of `range` with its checksum.
fn check(hasher: Hasher, image: &Path, info: &BmapInfo, range: &BlockRange) -> Result<()> {
    let calculated = hasher.finish_hex();
    let expected = range.checksum.as_deref().unwrap_or_default();
    if calculated.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    debug!(first = range.first, "checksum mismatch");
    let bytes = range.bytes(info.block_size, info.image_size);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes in the summary are the workspace's one formatter, right past TiB (bmaptool's,
    /// kept for the bmap file's comments, calls 2 PiB "2048.0 EiB").
    #[test]
    fn summary_sizes_are_right_at_every_unit() {
        let report = CopyReport {
            mapped_bytes: 3 << 40,
            ranges: 2,
            ..CopyReport::new(2 << 50, None)
        };
        let line = report.to_string();
        assert!(
            line.starts_with("copied 3.0 TiB of mapped data in 2 ranges of a 2.0 PiB image"),
            "{line}"
        );
    }
}
