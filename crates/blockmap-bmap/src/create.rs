//! The bmap of an image: its mapped blocks from a [`BlockMap`], hashed in parallel.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use blockmap_core::{BackendChoice, BlockMap, MapOptions};
use tracing::debug;

use crate::checksum::ChecksumType;
use crate::error::{Error, Result};
use crate::file::BmapInfo;
use crate::format::{BlockRange, Bmap, FOOTER, Layout};
use crate::source::read_full_at;

/// How [`create`] makes a bmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Hash every range (`chksum="…"`); on by default, as `bmaptool create` (off is
    /// `--no-checksum`).
    pub checksums: bool,
    /// The checksum type; SHA256 by default (what bmaptool writes).
    pub checksum_type: ChecksumType,
    /// How to find the image's data.
    pub backend: BackendChoice,
    /// Threads hashing ranges; 0 (the default) means one per core.
    pub threads: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            checksums: true,
            checksum_type: ChecksumType::Sha256,
            backend: BackendChoice::Auto,
            threads: 0,
        }
    }
}

/// Read buffer per hashing thread: large enough that syscalls cost nothing, small enough to
/// stay in the core's cache between the read and the hash.
const BUFFER: usize = 512 << 10;

/// Makes the format 2.0 bmap of the image at `path`.
///
/// The block size is the filesystem's (as bmaptool's); a block is mapped when any of its bytes
/// is inside a data range of the image's [`BlockMap`], so data is never left out. Ranges are
/// hashed by [`CreateOptions::threads`] threads, each reading its ranges with a large
/// buffer; the ranges are independent and the output keeps their order.
pub fn create(path: impl AsRef<Path>, options: &CreateOptions) -> Result<Bmap> {
    let path = path.as_ref();
    let _span = tracing::debug_span!("bmap::create", path = %path.display()).entered();
    let map = open_image(path, options)?;
    let block_size = u64::from(map.block_size());
    let blocks: Vec<Range<u64>> = map
        .mapped_blocks(0..map.block_count())
        .collect::<Result<_, _>>()?;
    debug!(
        backend = %map.backend(),
        block_size,
        ranges = blocks.len(),
        "mapped"
    );
    let mut bmap = header(&map, options);
    let sums = if options.checksums {
        hash_ranges(map.file(), path, &bmap, &blocks, options)?
    } else {
        vec![None; blocks.len()]
    };
    for (r, checksum) in blocks.into_iter().zip(sums) {
        bmap.push(BlockRange {
            first: r.start,
            last: r.end - 1,
            checksum,
        });
    }
    Ok(bmap)
}

/// Ranges hashed together by [`create_to`] before they are written: enough to keep every
/// thread busy, few enough that their checksums take little memory.
const BATCH_RANGES: usize = 16384;
/// Bytes hashed together by [`create_to`] at most (a batch ends early at this many).
const BATCH_BYTES: u64 = 1 << 30;

/// Makes the format 2.0 bmap of the image at `path`, as [`create`], and writes it into `out`
/// (truncated first, once the image is mapped) without holding its ranges: the image's map is
/// walked once to count the mapped blocks (the header comes first), then again, its ranges
/// hashed a batch at a time and written as they are done, in order; the file's own checksum
/// is computed as the bytes go out and written into its place at the end. Memory stays a few
/// MiB whatever the number of ranges. The output is byte for byte what [`Bmap::to_xml`] of
/// [`create`]'s bmap is. `out` (named `out_path` in errors) is written with positioned writes:
/// a regular file.
pub fn create_to(
    path: impl AsRef<Path>,
    options: &CreateOptions,
    out: &File,
    out_path: &Path,
) -> Result<BmapInfo> {
    let path = path.as_ref();
    let _span = tracing::debug_span!("bmap::create_to", path = %path.display()).entered();
    let map = open_image(path, options)?;
    let mut info = count(&map, options)?;
    debug!(backend = %map.backend(), block_size = info.block_size, ranges = info.ranges, "mapped");
    let layout = Layout::new(
        info.version,
        info.image_size,
        info.block_size,
        info.mapped_blocks_count,
        info.checksum_type,
    );
    let mut sink = Sink {
        out,
        path: out_path,
        pos: 0,
        buf: Vec::with_capacity(SINK_BUFFER),
        hasher: layout.checksum.map(|(_, kind)| kind.hasher()),
    };
    out.set_len(0)
        .map_err(|e| Error::io("truncate it", out_path, e))?;
    sink.write(&layout.head)?;
    let (blocks, ranges) = write_ranges(&map, path, options, &layout, &mut sink, &mut info)?;
    if blocks != info.mapped_blocks_count || ranges != info.ranges {
        return Err(Error::io(
            "map the image",
            path,
            io::Error::other("the image changed while its bmap was made"),
        ));
    }
    sink.write(FOOTER.as_bytes())?;
    let sum = sink.finish()?;
    if let (Some((at, _)), Some(sum)) = (layout.checksum, sum) {
        out.write_all_at(sum.as_bytes(), at as u64)
            .map_err(|e| Error::io("write the bmap", out_path, e))?;
    }
    Ok(info)
}

/// The image's block map, refused if the image is empty.
fn open_image(path: &Path, options: &CreateOptions) -> Result<BlockMap<File>> {
    let map = BlockMap::open(path, MapOptions::from(options.backend))?;
    if map.size() == 0 {
        return Err(Error::EmptyImage {
            path: path.to_owned(),
        });
    }
    Ok(map)
}

/// The format 2.0 bmap of `map`'s image, no range in it yet.
fn header(map: &BlockMap<File>, options: &CreateOptions) -> Bmap {
    let mut bmap = Bmap::new(map.size(), u64::from(map.block_size()));
    bmap.checksum_type = Some(options.checksum_type);
    bmap
}

/// The header of `map`'s bmap, its mapped blocks and ranges counted by a first walk (its
/// mapped bytes are left to [`write_ranges`]).
fn count(map: &BlockMap<File>, options: &CreateOptions) -> Result<BmapInfo> {
    let mut info = BmapInfo::of(&header(map, options), 0, 0);
    for r in map.mapped_blocks(0..map.block_count()) {
        let r = r?;
        info.mapped_blocks_count += r.end - r.start;
        info.ranges += 1;
    }
    Ok(info)
}

/// Walks `map` again, hashing its ranges a batch at a time and writing their lines in order;
/// adds their bytes to `info`. The blocks and ranges written.
fn write_ranges(
    map: &BlockMap<File>,
    path: &Path,
    options: &CreateOptions,
    layout: &Layout,
    sink: &mut Sink<'_>,
    info: &mut BmapInfo,
) -> Result<(u64, u64)> {
    let header = Bmap::new(info.image_size, info.block_size);
    let mut walk = map.mapped_blocks(0..map.block_count());
    let mut batch: Vec<Range<u64>> = Vec::new();
    let mut line = Vec::new();
    let (mut blocks, mut ranges) = (0u64, 0u64);
    loop {
        batch.clear();
        let mut bytes = 0;
        while batch.len() < BATCH_RANGES && bytes < BATCH_BYTES {
            let Some(r) = walk.next() else { break };
            let r = r?;
            let b = from_blocks(&r, &header);
            bytes += b.end - b.start;
            batch.push(r);
        }
        if batch.is_empty() {
            return Ok((blocks, ranges));
        }
        let sums = if options.checksums {
            hash_ranges(map.file(), path, &header, &batch, options)?
        } else {
            vec![None; batch.len()]
        };
        for (r, checksum) in batch.iter().zip(sums) {
            let range = BlockRange {
                first: r.start,
                last: r.end - 1,
                checksum,
            };
            blocks += range.blocks();
            ranges += 1;
            let b = range.bytes(info.block_size, info.image_size);
            info.mapped_bytes += b.end - b.start;
            line.clear();
            layout.push_range(&mut line, &range);
            sink.write(&line)?;
        }
    }
}

const SINK_BUFFER: usize = 256 << 10;

/// The output of [`create_to`]: buffered positioned writes, hashed as they go.
struct Sink<'a> {
    out: &'a File,
    path: &'a Path,
    pos: u64,
    buf: Vec<u8>,
    hasher: Option<crate::checksum::Hasher>,
}

impl Sink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= SINK_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(&self.buf);
        }
        self.out
            .write_all_at(&self.buf, self.pos)
            .map_err(|e| Error::io("write the bmap", self.path, e))?;
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left; the checksum of all that was written.
    fn finish(mut self) -> Result<Option<String>> {
        self.flush()?;
        Ok(self.hasher.map(crate::checksum::Hasher::finish_hex))
    }
}

fn hash_ranges(
    file: &File,
    path: &Path,
    bmap: &Bmap,
    blocks: &[Range<u64>],
    options: &CreateOptions,
) -> Result<Vec<Option<String>>> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(blocks.len())
    .max(1);
    debug!(threads, ranges = blocks.len(), "hashing");
    // Longest first, so that no thread is left alone with a big range at the end.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(blocks[i].end - blocks[i].start));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let sums: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; blocks.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; BUFFER];
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let r = &blocks[i];
                    let bytes = from_blocks(r, bmap);
                    match hash_bytes(file, bytes.clone(), options.checksum_type, &mut buf) {
                        Ok(sum) => mine.push((i, sum)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let what = format!(
                                "read blocks {}-{} (bytes {}-{})",
                                r.start,
                                r.end - 1,
                                bytes.start,
                                bytes.end
                            );
                            first_error
                                .lock()
                                .expect("no panics while held")
                                .get_or_insert(Error::io(what, path, e));
                            break;
                        }
                    }
                }
                let mut sums = sums.lock().expect("no panics while held");
                for (i, sum) in mine {
                    sums[i] = Some(sum);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("threads joined") {
        return Err(e);
    }
    Ok(sums.into_inner().expect("threads joined"))
}

fn from_blocks(r: &Range<u64>, bmap: &Bmap) -> Range<u64> {
    let bs = bmap.block_size;
    (r.start * bs).min(bmap.image_size)..(r.end * bs).min(bmap.image_size)
}

fn hash_bytes(
    file: &File,
    bytes: Range<u64>,
    kind: ChecksumType,
    buf: &mut [u8],
) -> io::Result<String> {
    let mut h = kind.hasher();
    let mut pos = bytes.start;
    while pos < bytes.end {
        let n = (bytes.end - pos).min(buf.len() as u64) as usize;
        if read_full_at(file, pos, &mut buf[..n])? < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image shrank while it was read",
            ));
        }
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finish_hex())
}
