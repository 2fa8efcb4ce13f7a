//! The blocks of an `.xz` file, from its stream footers and indexes (read from the file's end,
//! their CRC32s checked), and each block decoded on its own.
//!
//! A block is decoded by liblzma's ordinary stream decoder fed a one-block stream made around
//! it: the real stream header, the block's bytes as they are in the file, then an index of one
//! record (the block's sizes from the real index) and a stream footer, both made here. The
//! decoder thus checks everything the block carries (its header's CRC32, its compressed and
//! uncompressed sizes against the index, its own check: CRC32, CRC64 or SHA-256) without a
//! line of `unsafe`.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::ops::Range;
use std::path::Path;

use super::{Unit, corrupt};
use crate::error::Result;
use crate::source::read_full_at;

const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// An index larger than this is not read into memory: the file is streamed instead.
const MAX_INDEX: u64 = 16 << 20;
/// Memory liblzma may use for one block (its dictionary, mostly): more than `xz -9`'s 64 MiB
/// dictionary is refused as the streaming decoder would.
const MEMLIMIT: u64 = 256 << 20;

/// One block of an xz file.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Where its bytes (header, data, padding, check) are in the file.
    file: Range<u64>,
    /// Its unpadded size (the index's record).
    unpadded: u64,
    /// Its uncompressed size.
    size: u64,
    /// The header of the stream it belongs to.
    stream_header: [u8; 12],
}

/// The blocks of the xz file `file`, in order, each with its place in the uncompressed data;
/// `None` when the file does not end as an xz stream does (the streaming decoder says why).
pub(crate) fn units(file: &File, path: &Path) -> Result<Option<Vec<Unit<Block>>>> {
    let len = file
        .metadata()
        .map_err(|e| crate::error::Error::io("stat the image", path, e))?
        .len();
    let read = |at: u64, buf: &mut [u8]| -> Result<()> {
        let got = read_full_at(file, at, buf).map_err(|e| {
            crate::error::Error::io(format!("read the image at byte {at}"), path, e)
        })?;
        if got < buf.len() {
            return Err(corrupt(path, "xz", at, "the file ends inside its index"));
        }
        Ok(())
    };
    // Streams from the last to the first.
    let mut streams: Vec<Vec<Block>> = Vec::new();
    let mut end = len;
    while end > 0 {
        let Some((blocks, header_at)) = stream_before(&read, path, end)? else {
            return Ok(None);
        };
        streams.push(blocks);
        end = header_at;
    }
    let mut units = Vec::new();
    let mut out = 0u64;
    for block in streams.into_iter().rev().flatten() {
        let Some(next) = out.checked_add(block.size) else {
            return Err(corrupt(path, "xz", block.file.start, "sizes overflow"));
        };
        if block.size > 0 {
            units.push(Unit {
                out: out..next,
                data: block,
            });
        }
        out = next;
    }
    Ok(Some(units))
}

/// The blocks of the stream that ends at byte `end` (stream padding after it skipped), and
/// where the stream begins; `None` when no xz stream ends there.
fn stream_before(
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    path: &Path,
    mut end: u64,
) -> Result<Option<(Vec<Block>, u64)>> {
    // Stream padding: zero bytes, a multiple of four, after a stream.
    let mut word = [0u8; 4];
    while end >= 4 {
        read(end - 4, &mut word)?;
        if word != [0; 4] {
            break;
        }
        end -= 4;
    }
    if end < 24 || !end.is_multiple_of(4) {
        return Ok(None);
    }
    let mut footer = [0u8; 12];
    read(end - 12, &mut footer)?;
    if footer[10..] != FOOTER_MAGIC {
        return Ok(None);
    }
    let footer_at = end - 12;
    if crc32(&footer[4..10]) != u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) {
        return Err(corrupt(
            path,
            "xz",
            footer_at,
            "stream footer CRC32 mismatch",
        ));
    }
    let flags = [footer[8], footer[9]];
    let index_len = (u64::from(u32::from_le_bytes(footer[4..8].try_into().expect("4"))) + 1) * 4;
    if index_len > MAX_INDEX || index_len + 12 > footer_at {
        return Ok(None);
    }
    let index_at = footer_at - index_len;
    let mut index = vec![0u8; index_len as usize];
    read(index_at, &mut index)?;
    let records = parse_index(&index).map_err(|why| corrupt(path, "xz", index_at, why))?;
    let blocks_len: u64 = records.iter().map(|r| r.0.next_multiple_of(4)).sum();
    let Some(header_at) = index_at.checked_sub(blocks_len + 12) else {
        return Err(corrupt(
            path,
            "xz",
            index_at,
            "index larger than its stream",
        ));
    };
    let mut header = [0u8; 12];
    read(header_at, &mut header)?;
    if header[..6] != HEADER_MAGIC
        || crc32(&header[6..8]) != u32::from_le_bytes(header[8..].try_into().expect("4"))
    {
        return Err(corrupt(
            path,
            "xz",
            header_at,
            "stream header not where the index puts it",
        ));
    }
    if header[6..8] != flags {
        return Err(corrupt(
            path,
            "xz",
            footer_at,
            "stream header and footer flags differ",
        ));
    }
    let mut at = header_at + 12;
    let blocks = records
        .into_iter()
        .map(|(unpadded, size)| {
            let padded = unpadded.next_multiple_of(4);
            let b = Block {
                file: at..at + padded,
                unpadded,
                size,
                stream_header: header,
            };
            at += padded;
            b
        })
        .collect();
    Ok(Some((blocks, header_at)))
}

/// The (unpadded size, uncompressed size) records of an index whose CRC32 holds.
fn parse_index(index: &[u8]) -> std::result::Result<Vec<(u64, u64)>, &'static str> {
    let (body, crc) = index.split_at(index.len() - 4);
    if crc32(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("index CRC32 mismatch");
    }
    if body.first() != Some(&0) {
        return Err("no index indicator");
    }
    let mut at = 1;
    let count = varint(body, &mut at)?;
    if count > body.len() as u64 / 2 {
        return Err("index record count too large");
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let unpadded = varint(body, &mut at)?;
        let size = varint(body, &mut at)?;
        if unpadded < 5 {
            return Err("index record too small");
        }
        records.push((unpadded, size));
    }
    if body.len() - at >= 4 || body[at..].iter().any(|&b| b != 0) {
        return Err("bad index padding");
    }
    Ok(records)
}

fn varint(bytes: &[u8], at: &mut usize) -> std::result::Result<u64, &'static str> {
    let mut value = 0u64;
    for i in 0..9 {
        let &b = bytes.get(*at).ok_or("index cut short")?;
        *at += 1;
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return if b == 0 && i > 0 {
                Err("bad index number")
            } else {
                Ok(value)
            };
        }
    }
    Err("bad index number")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// The dictionary size a block's LZMA2 filter asks for (to bound the decoders' memory), from
/// its block header; `None` if the header cannot be read so.
pub(crate) fn dict_size(file: &File, block: &Block) -> Option<u64> {
    let mut header = [0u8; 1024];
    let got = read_full_at(file, block.file.start, &mut header).ok()?;
    let len = (usize::from(header[0]) + 1) * 4;
    if header[0] == 0 || got < len {
        return None;
    }
    let header = &header[..len];
    let flags = header[1];
    let mut at = 2;
    if flags & 0x40 != 0 {
        varint(header, &mut at).ok()?;
    }
    if flags & 0x80 != 0 {
        varint(header, &mut at).ok()?;
    }
    for _ in 0..=(flags & 3) {
        let id = varint(header, &mut at).ok()?;
        let props = varint(header, &mut at).ok()? as usize;
        let p = header.get(at..at + props)?;
        at += props;
        if id == 0x21 && props == 1 {
            let bits = u32::from(p[0] & 0x3F);
            return Some(match bits {
                40 => u64::from(u32::MAX),
                b if b > 40 => return None,
                b => u64::from(2 | (b & 1)) << (b / 2 + 11),
            });
        }
    }
    None
}

/// The decoded bytes of `block`: a one-block stream around its bytes in `file`, through
/// liblzma.
pub(crate) fn decoder<'f>(file: &'f File, block: &Block) -> io::Result<Box<dyn Read + Send + 'f>> {
    // The index of this one block, then the stream footer.
    let mut tail = vec![0u8];
    put_varint(&mut tail, 1);
    put_varint(&mut tail, block.unpadded);
    put_varint(&mut tail, block.size);
    while tail.len() % 4 != 0 {
        tail.push(0);
    }
    tail.extend_from_slice(&crc32(&tail).to_le_bytes());
    let backward = (tail.len() as u32 / 4 - 1).to_le_bytes();
    let mut footer = Vec::with_capacity(12);
    footer.extend_from_slice(&backward);
    footer.extend_from_slice(&block.stream_header[6..8]);
    let footer_crc = crc32(&footer);
    tail.extend_from_slice(&footer_crc.to_le_bytes());
    tail.extend_from_slice(&footer);
    tail.extend_from_slice(&FOOTER_MAGIC);
    let input = Cursor::new(block.stream_header)
        .chain(super::At::new(file, block.file.clone()))
        .chain(Cursor::new(tail));
    let stream =
        liblzma::stream::Stream::new_stream_decoder(MEMLIMIT, 0).map_err(io::Error::other)?;
    Ok(Box::new(liblzma::bufread::XzDecoder::new_stream(
        io::BufReader::with_capacity(128 << 10, input),
        stream,
    )))
}
