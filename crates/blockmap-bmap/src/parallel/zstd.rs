//! The frames of a `.zst` file of several (frames concatenated, as zstd's format allows;
//! `pzstd`, the seekable format, whose seek table is a skippable frame, skipped here), found by
//! walking frame and block headers without decoding, each frame decoded on its own.
//!
//! When every frame header gives its content size, each frame's place in the image is known
//! and frames wholly in unmapped ranges are not decoded; else every frame is decoded and placed
//! after the one before.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::path::Path;

use super::{At, Unit, corrupt};
use crate::error::{Error, Result};
use crate::source::read_full_at;

const MAGIC: u32 = 0xFD2F_B528;

/// One frame of a zstd file: where it is in the file.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    file: Range<u64>,
}

/// Frames in order, whether their places are known, the largest window.
pub(crate) type Frames = (Vec<Unit<Frame>>, bool, u64);

/// The frames of `file` in order, with their places in the image when every frame tells its
/// content size (else `out` is empty everywhere and the `bool` false); the largest window a
/// frame asks for. `None` when the file is not a sequence of frames.
pub(crate) fn units(file: &File, path: &Path) -> Result<Option<Frames>> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat the image", path, e))?
        .len();
    let read = |at: u64, buf: &mut [u8]| -> Result<bool> {
        let got = read_full_at(file, at, buf)
            .map_err(|e| Error::io(format!("read the image at byte {at}"), path, e))?;
        Ok(got == buf.len())
    };
    let mut units = Vec::new();
    let mut sizes_known = true;
    let mut window_max = 0u64;
    let mut out = 0u64;
    let mut at = 0u64;
    while at < len {
        let mut head = [0u8; 18];
        let got = read_full_at(file, at, &mut head)
            .map_err(|e| Error::io(format!("read the image at byte {at}"), path, e))?;
        if got < 8 {
            return Ok(None);
        }
        let magic = u32::from_le_bytes(head[..4].try_into().expect("4"));
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            // A skippable frame (pzstd's sizes, the seekable format's seek table).
            at += 8 + u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4")));
            continue;
        }
        if magic != MAGIC {
            return Ok(None);
        }
        let (p, window, size) = frame_header(&head);
        window_max = window_max.max(window);
        let start = at;
        at = frame_end(&read, path, at + p as u64, head[4] & 0x04 != 0)?;
        if at > len {
            return Err(corrupt(path, "zstd", start, "the file ends inside a frame"));
        }
        let place = match size {
            Some(n) if sizes_known => {
                let r = out..out + n;
                out += n;
                r
            }
            _ => {
                sizes_known = false;
                0..0
            }
        };
        units.push(Unit {
            out: place,
            data: Frame { file: start..at },
        });
    }
    if !sizes_known {
        for u in &mut units {
            u.out = 0..0;
        }
    }
    // Empty frames decode to nothing: leave them out where places are known.
    if sizes_known {
        units.retain(|u| !u.out.is_empty());
    }
    Ok(Some((units, sizes_known, window_max)))
}

/// A frame header's length, window size and content size (if given), from its first bytes
/// (at most 18: magic, descriptor, window, dictionary id, content size).
fn frame_header(head: &[u8; 18]) -> (usize, u64, Option<u64>) {
    let fhd = head[4];
    let single_segment = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let mut p = 5;
    let mut window = 0;
    if !single_segment {
        let wd = head[p];
        let exp = u32::from(wd >> 3) + 10;
        let base = 1u64 << exp;
        window = base + (base / 8) * u64::from(wd & 7);
        p += 1;
    }
    p += dict_len;
    let size = if fcs_len == 0 {
        None
    } else {
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(&head[p..p + fcs_len]);
        let v = u64::from_le_bytes(v);
        Some(if fcs_len == 2 { v + 256 } else { v })
    };
    p += fcs_len;
    if single_segment {
        window = size.unwrap_or(0);
    }
    (p, window, size)
}

/// Where the frame whose blocks begin at `at` ends (its blocks walked by their 3-byte
/// headers, without decoding; then its checksum if `checksum`).
fn frame_end(
    read: &dyn Fn(u64, &mut [u8]) -> Result<bool>,
    path: &Path,
    mut at: u64,
    checksum: bool,
) -> Result<u64> {
    loop {
        let mut bh = [0u8; 3];
        if !read(at, &mut bh)? {
            return Err(corrupt(path, "zstd", at, "the file ends inside a frame"));
        }
        let h = u32::from(bh[0]) | u32::from(bh[1]) << 8 | u32::from(bh[2]) << 16;
        let body = match (h >> 1) & 3 {
            1 => 1,
            3 => return Err(corrupt(path, "zstd", at, "reserved block type")),
            _ => u64::from(h >> 3),
        };
        at += 3 + body;
        if h & 1 == 1 {
            break;
        }
    }
    Ok(if checksum { at + 4 } else { at })
}

/// The decoded bytes of one frame.
pub(crate) fn decoder<'f>(file: &'f File, frame: &Frame) -> io::Result<Box<dyn Read + Send + 'f>> {
    let input = BufReader::with_capacity(128 << 10, At::new(file, frame.file.clone()));
    Ok(Box::new(
        zstd::stream::read::Decoder::with_buffer(input)?.single_frame(),
    ))
}
