//! Writing an image's mapped ranges to a destination, verifying them on the way.

use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use blockmap_core::{BackendChoice, BlockMap, MapOptions};
use sparsecopy::{Destination, Progress};
use tracing::debug;

use crate::checksum::Hasher;
use crate::error::{Error, Result, interrupted};
use crate::file::{BmapFile, BmapInfo};
use crate::format::{BlockRange, Bmap};
use crate::input::{Input, Opened};
use crate::readback::{self, ReadBackReport, Reread};
use crate::source::{Compression, Source, read_full_at};

mod decode;
mod dest;
mod lanes;
mod options;
mod report;
mod stream;
mod whole;

use self::dest::{Writeback, Written, write_piece};
pub use self::options::CopyOptions;
pub use self::report::CopyReport;
use self::stream::drain;

/// Size of one chunk of data on its way from the image to the destination and the hasher:
/// small enough to stay in a core's L2 cache (1 MiB on this workspace's machines) between the `pread` that fills it
/// and the `pwrite` that empties it, large enough that the syscalls cost nothing.
const CHUNK: usize = 256 << 10;

/// Copies an image by its bmap: only the mapped ranges are read and written, each range's
/// checksum is verified as its bytes pass. A plain image is copied by one thread per core,
/// each taking the next range and reading, writing and hashing it chunk by chunk; a
/// local multi-block `.xz`, multi-stream `.bz2` or multi-frame `.zst` is decoded on every
/// core (`copy/decode`); any other compressed one, or one that cannot seek (a pipe), is read
/// in order by one thread while a second writes and hashes, and read to its end, where the
/// compressed format's own checksum is checked.
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
    options: CopyOptions,
    interrupt: Option<Arc<AtomicBool>>,
    progress: Option<&'a mut dyn FnMut(Progress)>,
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
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'a> Copier<'a> {
    /// A copier by `bmap`.
    pub fn new(bmap: Bmap, options: CopyOptions) -> Self {
        Copier {
            info: bmap.info(),
            ranges: RangeSource::Memory(bmap.ranges),
            bmap_path: PathBuf::from("<bmap>"),
            options,
            interrupt: None,
            progress: None,
        }
    }

    /// A copier by a bmap file, its ranges read as the copy goes (the file named in errors).
    pub fn from_file(file: BmapFile, options: CopyOptions) -> Self {
        Copier {
            info: file.info().clone(),
            bmap_path: file.path().to_owned(),
            ranges: RangeSource::File(file),
            options,
            interrupt: None,
            progress: None,
        }
    }

    /// A copier by the image's own block map (no bmap file, nothing to verify), walked once
    /// here to count the mapped blocks and again as the copy goes: what `bmaptool copy
    /// --nobmap` copies, in the memory of one walk.
    pub fn from_image_map(
        image: impl AsRef<Path>,
        backend: BackendChoice,
        options: CopyOptions,
    ) -> Result<Self> {
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
            options,
            interrupt: None,
            progress: None,
        })
    }

    /// A copier without a bmap that writes every byte of the image, as `bmaptool copy
    /// --nobmap` does with a compressed image or a stream: what holes it had are written as
    /// zeros, and nothing is verified but a compressed format's own checksums.
    pub fn whole_image(options: CopyOptions) -> Self {
        let mut bmap = Bmap::new(0, 4096);
        bmap.checksum_type = None;
        Copier {
            info: bmap.info(),
            ranges: RangeSource::Whole,
            bmap_path: PathBuf::from("-"),
            options,
            interrupt: None,
            progress: None,
        }
    }

    /// The bmap file's path, to name it in errors.
    pub fn bmap_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.bmap_path = path.into();
        self
    }

    /// A flag that stops the copy when raised (by a signal handler): it is polled before
    /// every chunk, and the copy ends with [`Error::Interrupted`].
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Called as the copy goes (every 50 ms for a plain image, else about once per MiB of the
    /// image): [`Progress::data_done`] is the mapped bytes copied so far (for a stream, read
    /// and handed to the writing thread),
    /// [`Progress::data_total`] the mapped bytes in all (the bmap's), [`Progress::skipped`]
    /// the unmapped bytes passed. For [`Copier::whole_image`] every byte is data, and the total
    /// is the image's size where a plain file tells it, else unknown (`None`) until the end.
    /// The last call has `data_total == Some(data_done)`.
    pub fn progress(mut self, f: &'a mut dyn FnMut(Progress)) -> Self {
        self.progress = Some(f);
        self
    }

    /// The checksum type each range is verified by: the bmap's, unless verifying is off.
    fn verified_kind(&self) -> Option<crate::checksum::ChecksumType> {
        self.info.checksum_type.filter(|_| self.options.verify)
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// The end of writing: an interruption is an error; else DEST is synced if asked.
    fn stop_or_sync(&self, out: &File, dest: &Path) -> Result<()> {
        if self.interrupted() {
            return Err(interrupted(dest));
        }
        if self.options.sync {
            out.sync_all().map_err(|e| Error::io("fsync", dest, e))?;
        }
        Ok(())
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
            if self.options.checksum_retry.is_some() {
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
        // A local compressed file of independent blocks: decoded in parallel, where mapped.
        let plan = match input.compressed_file() {
            Some(file) => crate::parallel::plan(file, image, compression)?,
            None => None,
        };
        if let Some(size) = plan.as_ref().and_then(|p| p.size())
            && size != info.image_size
        {
            return Err(self.wrong_size(image, size));
        }
        let source = self.open_source(input.open_image()?, image, compression)?;
        let reading = Reading {
            rereadable: seekable,
            plan: plan.as_ref(),
        };
        self.copy_source(source, reading, image, dest, started)
    }

    /// The image opened as a [`Source`], checked before anything is written: its size, and
    /// that it reads.
    fn open_source(
        &self,
        opened: Opened,
        image: &Path,
        compression: Compression,
    ) -> Result<Source> {
        let info = &self.info;
        Ok(match opened {
            // A plain file or device is read where the ranges are.
            Opened::Plain(file) => {
                let meta = file
                    .metadata()
                    .map_err(|e| Error::io("stat the image", image, e))?;
                let kind = meta.file_type();
                if kind.is_file() && meta.len() != info.image_size {
                    return Err(self.wrong_size(image, meta.len()));
                }
                if kind.is_block_device() {
                    let size = (&file)
                        .seek(SeekFrom::End(0))
                        .map_err(|e| Error::io("find the size of the image", image, e))?;
                    if size < info.image_size {
                        return Err(self.wrong_size(image, size));
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
                    return Err(self.wrong_size(image, 0));
                }
                stream
            }
        })
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
            return Err(interrupted(dest));
        }
        if let Some(retries) = self.options.checksum_retry {
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
        self.prepare(source, out, image, dest, written)?;
        debug!(
            block_device = out.is_block_device(),
            ranges = self.info.ranges,
            "copying"
        );
        let mut report = self.transfer(source, reading.plan, image, out.file(), dest, written)?;
        self.stop_or_sync(out.file(), dest)?;
        if let Some(retries) = self.options.checksum_retry {
            let r = self.read_back(retries, source, reading.rereadable, image, out, dest)?;
            report.readback = Some(r);
        }
        report.block_device = out.is_block_device();
        Ok(report)
    }

    /// Checks the destination against the image (not the image itself; a device that holds
    /// it) and makes a regular file the image's size, nothing of its old contents left.
    fn prepare(
        &self,
        source: &Source,
        out: &Destination,
        image: &Path,
        dest: &Path,
        written: &Written,
    ) -> Result<()> {
        let info = &self.info;
        if let Source::File(file) = source
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
        Ok(())
    }

    /// The mapped ranges written by the image's data path: lanes for a plain image, parallel
    /// decoders for a `plan`, else the stream pumped in order and read to its end.
    fn transfer(
        &mut self,
        source: &mut Source,
        plan: Option<&crate::parallel::Plan>,
        image: &Path,
        out: &File,
        dest: &Path,
        written: &Written,
    ) -> Result<CopyReport> {
        let size = self.info.image_size;
        let report = match source {
            Source::File(file) => self.lanes(file, image, out, dest, written)?,
            _ if plan.is_some() => {
                let plan = plan.expect("checked");
                let report = self.decode(plan, image, out, dest, written)?;
                // Units of unknown sizes (bz2): all decoded, they must add up to ImageSize.
                if report.decoded_to != size && plan.size().is_none() {
                    return Err(self.wrong_size(image, report.decoded_to));
                }
                report.report
            }
            stream => {
                let mut report = self.pump(stream, image, out, dest, written)?;
                let stopped = || self.interrupted();
                report.skipped_bytes += drain(stream, image, size, &stopped, dest)?;
                let end = stream.position();
                if end != size {
                    return Err(self.wrong_size(image, end));
                }
                report
            }
        };
        let done = report.mapped_bytes;
        self.tell(Progress {
            data_done: done,
            data_total: Some(done),
            skipped: size.saturating_sub(done),
        });
        Ok(report)
    }

    /// Tells the progress callback, if there is one.
    fn tell(&mut self, progress: Progress) {
        if let Some(p) = self.progress.as_mut() {
            p(progress);
        }
    }

    /// `--checksum-retry`: every range read back from the destination, synced first, and
    /// compared with its checksum (see [`CopyOptions::checksum_retry`]).
    fn read_back(
        &self,
        retries: u32,
        source: &Source,
        rereadable: bool,
        image: &Path,
        out: &Destination,
        dest: &Path,
    ) -> Result<ReadBackReport> {
        if !self.options.sync {
            out.file()
                .sync_all()
                .map_err(|e| Error::io("fsync", dest, e))?;
        }
        let reread = match source {
            Source::File(file) => Reread::File(file),
            stream if rereadable => Reread::Decode(stream.compression()),
            _ => Reread::Never,
        };
        readback::run(
            self.ranges.iter(),
            &self.info,
            retries,
            reread,
            image,
            out.file(),
            dest,
            &|| self.interrupted(),
        )
    }

    /// The image is not of the bmap's `ImageSize` but `actual` bytes.
    fn wrong_size(&self, image: &Path, actual: u64) -> Error {
        Error::ImageSize {
            path: image.to_owned(),
            bmap: self.bmap_path.clone(),
            expected: self.info.image_size,
            actual,
        }
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

fn too_short(image: &Path, range: &BlockRange, at: u64) -> Error {
    Error::ImageTooShort {
        path: image.to_owned(),
        first: range.first,
        last: range.last,
        at,
    }
}

/// Bytes of the image between two reports of a data path that reports piece by piece.
const PROGRESS_EVERY: u64 = 1 << 20;

/// The progress callback of a data path that reports piece by piece (the stream, the parallel
/// decoders), passed on at most once per [`PROGRESS_EVERY`] bytes of the image, or per
/// hundredth of its data where that is less: a bmap of small ranges would otherwise call it
/// per range. The copy's last report comes from
/// `Copier::transfer` in any case.
pub(super) struct Throttled<'f, 'p> {
    callback: Option<&'f mut (dyn FnMut(Progress) + 'p)>,
    /// The image bytes (data and skipped) of the last report passed on.
    told: Option<u64>,
}

impl<'f, 'p> Throttled<'f, 'p> {
    pub(super) fn new(callback: Option<&'f mut (dyn FnMut(Progress) + 'p)>) -> Self {
        Throttled {
            callback,
            told: None,
        }
    }

    pub(super) fn tell(&mut self, p: Progress) {
        let Some(f) = self.callback.as_mut() else {
            return;
        };
        let at = p.data_done + p.skipped;
        // A hundredth of the data where that is less: every percent is heard (psplash).
        let step = p
            .data_total
            .map_or(PROGRESS_EVERY, |t| (t / 100).clamp(1, PROGRESS_EVERY));
        if self.told.is_some_and(|t| at < t.saturating_add(step)) {
            return;
        }
        self.told = Some(at);
        f(p);
    }
}
