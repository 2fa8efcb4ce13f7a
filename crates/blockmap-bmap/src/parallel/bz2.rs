//! The streams of a `.bz2` file of many (`pbzip2` writes one stream per 900 kB block), each
//! decoded on its own.
//!
//! A stream starts byte-aligned with `BZh1`–`BZh9` and the block magic `0x314159265359`; a
//! candidate found so inside the file is taken only where the bits before it end a stream:
//! the end-of-stream magic `0x177245385090`, a 32-bit CRC and up to 7 zero bits of padding.
//! A stream's decoded size is known only once decoded, so every stream is decoded (in
//! parallel) and its bytes placed after the previous one's.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use memchr::memmem;

use super::{At, Unit};
use crate::error::{Error, Result};
use crate::source::read_full_at;

const BLOCK_MAGIC: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
const END_MAGIC: u128 = 0x1772_4538_5090;
/// Bytes scanned per read (streams may straddle two reads: they overlap by a candidate's length).
const SCAN: usize = 1 << 20;

/// One stream of a bz2 file: where it is in the file.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    file: Range<u64>,
}

/// The streams of the bz2 file `file`, in order (their decoded places unknown: `out` empty);
/// `None` unless it starts with a stream header.
pub(crate) fn units(file: &File, path: &Path) -> Result<Option<Vec<Unit<Stream>>>> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat the image", path, e))?
        .len();
    let mut starts = Vec::new();
    let mut buf = vec![0u8; SCAN + 16];
    let mut pos = 0u64;
    let finder = memmem::Finder::new(b"BZh");
    while pos < len {
        let got = read_full_at(file, pos, &mut buf)
            .map_err(|e| Error::io(format!("read the image at byte {pos}"), path, e))?;
        let window = &buf[..got];
        for i in finder.find_iter(window) {
            let at = pos + i as u64;
            if i >= SCAN || (starts.last() == Some(&at)) {
                continue;
            }
            if window.len() < i + 10 {
                continue;
            }
            let level = window[i + 3];
            if !(b'1'..=b'9').contains(&level) || window[i + 4..i + 10] != BLOCK_MAGIC {
                continue;
            }
            if at == 0 || ends_stream(file, at) {
                starts.push(at);
            }
        }
        if got <= SCAN {
            break;
        }
        pos += SCAN as u64;
    }
    if starts.first() != Some(&0) {
        return Ok(None);
    }
    let mut units = Vec::with_capacity(starts.len());
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(len);
        units.push(Unit {
            out: 0..0,
            data: Stream { file: start..end },
        });
    }
    Ok(Some(units))
}

/// Whether the bits before byte `at` end a bzip2 stream (end magic, CRC, zero padding).
fn ends_stream(file: &File, at: u64) -> bool {
    if at < 14 {
        return false;
    }
    let mut tail = [0u8; 12];
    if read_full_at(file, at - 12, &mut tail).ok() != Some(12) {
        return false;
    }
    let bits = tail.iter().fold(0u128, |v, &b| (v << 8) | u128::from(b));
    (0..8).any(|pad| {
        bits & ((1u128 << pad) - 1) == 0 && (bits >> (pad + 32)) & 0xFFFF_FFFF_FFFF == END_MAGIC
    })
}

/// Streams of at most this many bytes are remembered with what they decode to.
const MEMO_KEY: u64 = 4 << 10;
/// ... if that is at most this many bytes.
const MEMO_VALUE: usize = 1 << 20;

/// The last small stream decoded and its bytes: pbzip2 compresses every 900 kB of zeros (the
/// bulk of a disk image's unmapped space) to the same few dozen bytes, and decoding is a pure
/// function of them (their CRCs were checked when they were decoded).
#[derive(Debug, Default)]
pub(crate) struct Memo(Mutex<Option<Remembered>>);

/// A stream's bytes and what they decode to.
type Remembered = (Vec<u8>, Arc<[u8]>);

/// The decoded bytes of `stream`: exactly one bzip2 stream that ends where the next begins.
pub(crate) fn decoder<'f>(
    file: &'f File,
    stream: &Stream,
    memo: &'f Memo,
) -> io::Result<Box<dyn Read + Send + 'f>> {
    let len = stream.file.end - stream.file.start;
    let mut key = None;
    if len <= MEMO_KEY {
        let mut bytes = vec![0u8; len as usize];
        if read_full_at(file, stream.file.start, &mut bytes)? == bytes.len() {
            let known = memo.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, value)) = known.as_ref()
                && *k == bytes
            {
                return Ok(Box::new(Cursor::new(Arc::clone(value))));
            }
            key = Some(bytes);
        }
    }
    Ok(Box::new(OneStream {
        inner: bzip2::bufread::BzDecoder::new(BufReader::with_capacity(
            64 << 10,
            At::new(file, stream.file.clone()),
        )),
        len,
        memo: key.map(|k| (memo, k, Vec::new())),
    }))
}

/// A bzip2 stream that must use all of its bytes: what follows its end in its region is an
/// error (the region would hold more than one stream, or bytes that are none).
struct OneStream<'f> {
    inner: bzip2::bufread::BzDecoder<BufReader<At<'f>>>,
    len: u64,
    /// A small stream: its bytes, and what it decodes to so far, for the memo.
    memo: Option<(&'f Memo, Vec<u8>, Vec<u8>)>,
}

impl Read for OneStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.inner.total_in() != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes after the end of a bzip2 stream that are no stream",
            ));
        }
        if let Some((memo, key, value)) = &mut self.memo {
            if value.len() + n > MEMO_VALUE {
                self.memo = None;
            } else if n > 0 {
                value.extend_from_slice(&buf[..n]);
            } else if !buf.is_empty() {
                let value: Arc<[u8]> = std::mem::take(value).into();
                *memo.0.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::mem::take(key), value));
                self.memo = None;
            }
        }
        Ok(n)
    }
}
