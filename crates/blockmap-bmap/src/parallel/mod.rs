//! Compressed images made of independent pieces, decoded in parallel: the plan of a seekable
//! local file whose container says where each piece is (`.xz` blocks from its index).
//!
//! [`plan`] is the one seam: given the opened image and its compression, it returns the
//! pieces ("units": where each one's decoded bytes go, and how to decode it alone; `.bz2`
//! streams of `pbzip2`, whose decoded sizes are known only once decoded; `.zst` frames), or `None`
//! for "stream it" (one piece, a container this does not split, a pipe). The copy
//! (`copy/decode.rs`) decodes on every core only the units that overlap a mapped range.

mod bz2;
mod xz;
mod zstd;

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::Compression;

/// Decoders' memory (mostly their dictionaries) that the plan keeps all of them under, so
/// that the copy stays below 64 MiB with its chunks in flight.
const DECODER_MEMORY: u64 = 32 << 20;

/// A piece of a compressed image that decodes alone.
#[derive(Debug, Clone)]
pub(crate) struct Unit<T> {
    /// Where its decoded bytes are in the image.
    pub(crate) out: Range<u64>,
    /// How to find and decode it.
    pub(crate) data: T,
}

/// How an image is decoded in parallel: its units in order, tiling `[0, size)`.
#[derive(Debug)]
pub(crate) struct Plan {
    file: File,
    compression: Compression,
    units: Units,
    size: Option<u64>,
    workers: usize,
}

#[derive(Debug)]
enum Units {
    Xz(Vec<Unit<xz::Block>>),
    /// Decoded sizes unknown until decoded: every unit is decoded, placed after the last.
    Bz2(Vec<Unit<bz2::Stream>>, bz2::Memo),
    /// Places known when every frame tells its content size.
    Zstd(Vec<Unit<zstd::Frame>>, bool),
}

/// The parallel plan of the image `file` (at `path`, compressed as `compression`), or `None`
/// to stream it: not a regular file, a compression that is not split, a container of one
/// unit. A container whose own index is corrupt is an error ([`Error::CorruptIndex`]).
pub(crate) fn plan(file: &File, path: &Path, compression: Compression) -> Result<Option<Plan>> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat the image", path, e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (units, size, per_decoder) = match compression {
        Compression::Xz => {
            let Some(units) = xz::units(file, path)? else {
                return Ok(None);
            };
            let size = units.last().map_or(0, |u| u.out.end);
            let dict = units
                .first()
                .and_then(|u| xz::dict_size(file, &u.data))
                .unwrap_or(8 << 20);
            (Units::Xz(units), Some(size), dict)
        }
        Compression::Bzip2 => {
            let Some(units) = bz2::units(file, path)? else {
                return Ok(None);
            };
            // bzip2 -9's decoder: about 3.7 MiB.
            (Units::Bz2(units, bz2::Memo::default()), None, 4 << 20)
        }
        Compression::Zstd => {
            let Some((units, known, window)) = zstd::units(file, path)? else {
                return Ok(None);
            };
            let size = known.then(|| units.last().map_or(0, |u| u.out.end));
            (Units::Zstd(units, known), size, window + (1 << 20))
        }
        _ => return Ok(None),
    };
    let count = match &units {
        Units::Xz(u) => u.len(),
        Units::Bz2(u, _) => u.len(),
        Units::Zstd(u, _) => u.len(),
    };
    if count < 2 {
        return Ok(None);
    }
    let workers = (DECODER_MEMORY / per_decoder.max(1)).clamp(1, cores as u64) as usize;
    if per_decoder > DECODER_MEMORY {
        // One decoder alone would break the memory bound: as the stream would, but one at a
        // time (the stream's decoder needs as much).
        tracing::debug!(per_decoder, "large dictionary: one decoder");
    }
    let file = file
        .try_clone()
        .map_err(|e| Error::io("open the image", path, e))?;
    tracing::debug!(units = count, workers, size, "parallel decoding plan");
    Ok(Some(Plan {
        file,
        compression,
        units,
        size,
        workers,
    }))
}

impl Plan {
    /// The decoded size of the image, if the container tells it.
    pub(crate) fn size(&self) -> Option<u64> {
        self.size
    }

    /// The number of units.
    pub(crate) fn len(&self) -> usize {
        match &self.units {
            Units::Xz(u) => u.len(),
            Units::Bz2(u, _) => u.len(),
            Units::Zstd(u, _) => u.len(),
        }
    }

    /// Where unit `i`'s decoded bytes go, if the container tells it (else: right after the
    /// previous unit's).
    pub(crate) fn out(&self, i: usize) -> Option<Range<u64>> {
        match &self.units {
            Units::Xz(u) => Some(u[i].out.clone()),
            Units::Bz2(..) => None,
            Units::Zstd(u, known) => known.then(|| u[i].out.clone()),
        }
    }

    /// Threads to decode with.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// The compression of the image.
    pub(crate) fn compression(&self) -> Compression {
        self.compression
    }

    /// The decoded bytes of unit `i`.
    pub(crate) fn decoder(&self, i: usize) -> io::Result<Box<dyn Read + Send + '_>> {
        match &self.units {
            Units::Xz(u) => xz::decoder(&self.file, &u[i].data),
            Units::Bz2(u, memo) => bz2::decoder(&self.file, &u[i].data, memo),
            Units::Zstd(u, _) => zstd::decoder(&self.file, &u[i].data),
        }
    }
}

/// The bytes of a region of a file, read with `pread` (threads share the file).
struct At<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl<'f> At<'f> {
    fn new(file: &'f File, region: Range<u64>) -> Self {
        At {
            file,
            pos: region.start,
            end: region.end,
        }
    }
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends at byte {}", self.pos),
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// The container's own structure (an index, a footer) is corrupt at byte `at` of the file.
fn corrupt(path: &Path, compression: &'static str, at: u64, why: &str) -> Error {
    Error::CorruptIndex {
        path: path.to_owned(),
        compression,
        at,
        reason: why.to_owned(),
    }
}
