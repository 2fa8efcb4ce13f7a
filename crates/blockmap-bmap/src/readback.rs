//! Read-back verification (`--checksum-retry N`): after the copy is written and synced, every
//! mapped range is read back from the destination past the page cache and hashed against the
//! bmap's checksum; a range that differs is written again from the image and read back again,
//! up to N times, and the ranges that never match fail the copy, named in blocks and bytes.
//!
//! The ranges are taken in rounds: the first reads all of them back (the bmap's ranges in
//! order, as the copy took them), each later round rewrites and rereads only those that
//! differed, in the same order. The image is read again for a rewrite: a plain image where
//! the ranges are, a compressed one decoded again from its start, through to the last range
//! that differed (one decoding per round, not per range); a stream that cannot be read again
//! (a pipe) is refused before anything is written when N > 0.

use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Advice, Mode, OFlags};
use tracing::debug;

use crate::checksum::ChecksumType;
use crate::error::{Error, Result, interrupted};
use crate::file::BmapInfo;
use crate::format::BlockRange;
use crate::input::{Input, Opened};
use crate::source::{Compression, Source, read_full_at};

/// Bytes read back at a time.
const CHUNK: usize = 1 << 20;
/// Alignment of offsets, lengths and the buffer for `O_DIRECT`: a multiple of every logical
/// block size Linux supports (512 to 4096).
const ALIGN: u64 = 4096;
/// Ranges that differ remembered at most: more than this read back wrong, and the
/// destination is given up without rewriting (memory stays bounded, about 100 bytes each).
pub(crate) const MAX_PENDING: usize = 4096;
/// Ranges named in the error.
const NAMED: usize = 8;

/// What the read-back verification did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReadBackReport {
    /// Ranges read back and verified (each counted once).
    pub ranges: u64,
    /// Bytes read back in the first round.
    pub bytes: u64,
    /// Rewrites of a range that read back wrong (a range rewritten twice counts twice).
    pub rewritten: u64,
    /// Whether the destination was read with `O_DIRECT` (else its cached pages were dropped
    /// before each read).
    pub direct: bool,
}

impl std::fmt::Display for ReadBackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ranges read back", self.ranges)?;
        if !self.direct {
            write!(f, " (cache dropped, no O_DIRECT)")?;
        }
        match self.rewritten {
            0 => Ok(()),
            n => write!(f, " ({n} rewritten and verified again)"),
        }
    }
}

/// One range that read back wrong, named in the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRange {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// Its bytes.
    pub bytes: Range<u64>,
}

/// The error's list of ranges: the first few, and how many more.
pub(crate) fn describe(ranges: &[BadRange], count: u64) -> String {
    let mut text = ranges
        .iter()
        .map(|r| {
            format!(
                "blocks {}-{} (bytes {}-{})",
                r.first,
                r.last,
                r.bytes.start,
                r.bytes.end.saturating_sub(1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if count > ranges.len() as u64 {
        text.push_str(&format!(" and {} more", count - ranges.len() as u64));
    }
    text
}

/// Whether a copy can be verified by reading it back with `retries` rewrites, checked before
/// anything is written: the bmap must have checksums, and a rewrite must be able to read the
/// image again (a file, not a pipe).
pub(crate) fn check_possible(
    summed: bool,
    retries: u32,
    rereadable: bool,
    image: &Path,
    bmap: &Path,
) -> Result<()> {
    if !summed {
        return Err(Error::ReadBackUnavailable {
            path: bmap.to_owned(),
            reason: "--checksum-retry needs a bmap with checksums, and this one has none"
                .to_owned(),
        });
    }
    if retries > 0 && !rereadable {
        return Err(Error::ReadBackUnavailable {
            path: image.to_owned(),
            reason: format!(
                "--checksum-retry {retries} rewrites from the image, which is a stream that cannot \
                 be read again; --checksum-retry 0 verifies without rewriting"
            ),
        });
    }
    Ok(())
}

/// How a range is read again from the image for a rewrite.
pub(crate) enum Reread<'a> {
    /// A plain image, read where the range is.
    File(&'a File),
    /// A compressed file, decoded again from its start each round.
    Decode(Compression),
    /// A stream that cannot be read again: no rewrite (only with `retries == 0`).
    Never,
}

/// The destination opened again for reading, past the page cache where it can be.
struct Reader<'a> {
    /// The write descriptor: fsync and cache dropping.
    out: &'a File,
    /// The read descriptor.
    fd: File,
    direct: bool,
    dest: &'a Path,
    /// `CHUNK + ALIGN` bytes, of which an aligned `CHUNK` is used.
    buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    /// `out` opened again through `/proc/self/fd` (the same file, whatever happened to its
    /// path since), read-only and with `O_DIRECT`; without it where the filesystem refuses it
    /// (tmpfs, some FUSE filesystems).
    fn open(out: &'a File, dest: &'a Path) -> Result<Self> {
        let path = format!("/proc/self/fd/{}", out.as_raw_fd());
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
        let (fd, direct) = match rustix::fs::open(&path, flags | OFlags::DIRECT, Mode::empty()) {
            Ok(fd) => (fd, true),
            Err(e) => {
                debug!(dest = %dest.display(), error = %e, "no O_DIRECT: cached pages dropped instead");
                let fd = rustix::fs::open(&path, flags, Mode::empty())
                    .map_err(|e| Error::io("open for reading back", dest, e.into()))?;
                (fd, false)
            }
        };
        Ok(Reader {
            out,
            fd: File::from(fd),
            direct,
            dest,
            buf: vec![0; CHUNK + ALIGN as usize],
        })
    }

    /// Turns `O_DIRECT` off for the rest (a read refused it: EINVAL).
    fn undirect(&mut self) -> Result<()> {
        let path = format!("/proc/self/fd/{}", self.out.as_raw_fd());
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::open(&path, flags, Mode::empty())
            .map_err(|e| Error::io("open for reading back", self.dest, e.into()))?;
        self.fd = File::from(fd);
        self.direct = false;
        Ok(())
    }

    /// Whether `range` (its `bytes`) reads back as its checksum says.
    fn matches(
        &mut self,
        range: &BlockRange,
        bytes: &Range<u64>,
        kind: ChecksumType,
    ) -> Result<bool> {
        let Some(expected) = range.checksum.as_deref() else {
            return Ok(true);
        };
        loop {
            match self.hash(bytes, kind) {
                Ok(Some(hex)) => return Ok(hex.eq_ignore_ascii_case(expected)),
                // Short: the destination ends inside the range.
                Ok(None) => return Ok(false),
                Err(e) if self.direct && e.raw_os_error() == Some(libc_einval()) => {
                    debug!(dest = %self.dest.display(), "O_DIRECT read refused: cached pages dropped instead");
                    self.undirect()?;
                }
                Err(e) => {
                    let what = format!(
                        "read back blocks {}-{} (bytes {}-{})",
                        range.first,
                        range.last,
                        bytes.start,
                        bytes.end.saturating_sub(1)
                    );
                    return Err(Error::io(what, self.dest, e));
                }
            }
        }
    }

    /// The hash of the destination's `bytes`, or `None` if it ends before them.
    fn hash(&mut self, bytes: &Range<u64>, kind: ChecksumType) -> std::io::Result<Option<String>> {
        if !self.direct {
            // The pages were written back by the fsync before; clean pages are dropped, so the
            // read goes to the device.
            let len = NonZeroU64::new(bytes.end - bytes.start);
            if let Err(e) = rustix::fs::fadvise(self.out, bytes.start, len, Advice::DontNeed) {
                debug!(dest = %self.dest.display(), error = %e, "cached pages not dropped");
            }
        }
        let skew = self.buf.as_ptr().align_offset(ALIGN as usize);
        let buf = &mut self.buf[skew..skew + CHUNK];
        let mut hasher = kind.hasher();
        let mut pos = bytes.start - bytes.start % ALIGN;
        while pos < bytes.end {
            // Aligned length: past the image's last partial block, what the device holds there
            // is read and left out of the hash.
            let want = (bytes.end - pos).div_ceil(ALIGN) * ALIGN;
            let n = want.min(CHUNK as u64) as usize;
            let got = read_full_at(&self.fd, pos, &mut buf[..n])?;
            let lo = bytes.start.saturating_sub(pos) as usize;
            let hi = (bytes.end - pos).min(n as u64) as usize;
            if got < hi {
                return Ok(None);
            }
            hasher.update(&buf[lo..hi]);
            pos += n as u64;
        }
        Ok(Some(hasher.finish_hex()))
    }
}

fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

/// Reads every range of `ranges` back from `out` (already synced), rewriting those that
/// differ from `reread` up to `retries` times.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    ranges: impl Iterator<Item = Result<BlockRange>>,
    info: &BmapInfo,
    retries: u32,
    mut reread: Reread<'_>,
    image: &Path,
    out: &File,
    dest: &Path,
    stopped: &dyn Fn() -> bool,
) -> Result<ReadBackReport> {
    let Some(kind) = info.checksum_type else {
        return Err(Error::ReadBackUnavailable {
            path: dest.to_owned(),
            reason: "the bmap has no checksums".to_owned(),
        });
    };
    let (bs, size) = (info.block_size, info.image_size);
    let mut reader = Reader::open(out, dest)?;
    let mut report = ReadBackReport {
        ranges: 0,
        bytes: 0,
        rewritten: 0,
        direct: reader.direct,
    };
    let (mut pending, mut bad_count) =
        first_round(ranges, info, kind, &mut reader, &mut report, stopped)?;
    let give_up = bad_count > pending.len() as u64 || retries == 0;
    let mut round = 0;
    while !pending.is_empty() && !give_up && round < retries {
        round += 1;
        debug!(
            round,
            ranges = pending.len(),
            "rewriting what read back wrong"
        );
        rewrite(&pending, &mut reread, info, image, out, dest, stopped)?;
        report.rewritten += pending.len() as u64;
        out.sync_all().map_err(|e| Error::io("fsync", dest, e))?;
        let mut still = Vec::new();
        for range in pending {
            if stopped() {
                return Err(interrupted(dest));
            }
            let bytes = range.bytes(bs, size);
            if !reader.matches(&range, &bytes, kind)? {
                still.push(range);
            }
        }
        pending = still;
        bad_count = pending.len() as u64;
    }
    if pending.is_empty() {
        debug!(?report, "read back as the bmap says");
        return Ok(report);
    }
    Err(failed(&pending, bad_count, round, info, dest))
}

/// Round 0: every range of `ranges` read back, in order, and counted in `report`; those that
/// differ (the first [`MAX_PENDING`]) and how many differ.
fn first_round(
    ranges: impl Iterator<Item = Result<BlockRange>>,
    info: &BmapInfo,
    kind: ChecksumType,
    reader: &mut Reader<'_>,
    report: &mut ReadBackReport,
    stopped: &dyn Fn() -> bool,
) -> Result<(Vec<BlockRange>, u64)> {
    let (bs, size) = (info.block_size, info.image_size);
    let mut pending: Vec<BlockRange> = Vec::new();
    let mut bad_count = 0u64;
    for range in ranges {
        let range = range?;
        if range.checksum.is_none() {
            let bytes = range.bytes(bs, size);
            return Err(Error::ReadBackUnavailable {
                path: reader.dest.to_owned(),
                reason: format!(
                    "the bmap has no checksum for {}",
                    describe(
                        &[BadRange {
                            first: range.first,
                            last: range.last,
                            bytes
                        }],
                        1
                    )
                ),
            });
        }
        if stopped() {
            return Err(interrupted(reader.dest));
        }
        let bytes = range.bytes(bs, size);
        report.ranges += 1;
        report.bytes += bytes.end - bytes.start;
        if !reader.matches(&range, &bytes, kind)? {
            debug!(first = range.first, last = range.last, "read back wrong");
            bad_count += 1;
            if pending.len() < MAX_PENDING {
                pending.push(range);
            }
        }
    }
    Ok((pending, bad_count))
}

/// The error for the `count` ranges still wrong after `retries` rounds: the first few of
/// `pending` named.
fn failed(pending: &[BlockRange], count: u64, retries: u32, info: &BmapInfo, dest: &Path) -> Error {
    let (bs, size) = (info.block_size, info.image_size);
    let named = pending
        .iter()
        .take(NAMED)
        .map(|r| BadRange {
            first: r.first,
            last: r.last,
            bytes: r.bytes(bs, size),
        })
        .collect();
    Error::ReadBack {
        dest: dest.to_owned(),
        retries,
        ranges: named,
        count,
    }
}

/// Writes `ranges` (in order) again from the image.
fn rewrite(
    ranges: &[BlockRange],
    reread: &mut Reread<'_>,
    info: &BmapInfo,
    image: &Path,
    out: &File,
    dest: &Path,
    stopped: &dyn Fn() -> bool,
) -> Result<()> {
    let mut source = match reread {
        Reread::File(file) => Source::File(
            file.try_clone()
                .map_err(|e| Error::io("reopen the image", image, e))?,
        ),
        // Opened again as the first time: by its first bytes, decompressed, out of its archive.
        Reread::Decode(compression) => match Input::open(image)?.open_image()? {
            Opened::Plain(file) => Source::File(file),
            Opened::Stream(reader) => Source::stream(reader, *compression),
        },
        Reread::Never => {
            return Err(Error::ReadBackUnavailable {
                path: image.to_owned(),
                reason: "a stream cannot be read again to rewrite what read back wrong".to_owned(),
            });
        }
    };
    let mut buf = vec![0u8; CHUNK];
    for range in ranges {
        let bytes = range.bytes(info.block_size, info.image_size);
        let mut pos = bytes.start;
        while pos < bytes.end {
            if stopped() {
                return Err(interrupted(dest));
            }
            let n = (bytes.end - pos).min(CHUNK as u64) as usize;
            let got = source
                .read_at(pos, &mut buf[..n])
                .map_err(|e| Error::io(format!("read the image again at byte {pos}"), image, e))?;
            if got < n {
                return Err(Error::ImageTooShort {
                    path: image.to_owned(),
                    first: range.first,
                    last: range.last,
                    at: pos + got as u64,
                });
            }
            out.write_all_at(&buf[..n], pos).map_err(|e| {
                let what = format!(
                    "rewrite blocks {}-{} (bytes {}-{})",
                    range.first,
                    range.last,
                    pos,
                    pos + n as u64
                );
                Error::io(what, dest, e)
            })?;
            pos += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_a_few_ranges_and_counts_the_rest() {
        let r = |first, last| BadRange {
            first,
            last,
            bytes: first * 4096..(last + 1) * 4096,
        };
        assert_eq!(describe(&[r(1, 2)], 1), "blocks 1-2 (bytes 4096-12287)");
        assert_eq!(
            describe(&[r(1, 2), r(5, 5)], 7),
            "blocks 1-2 (bytes 4096-12287), blocks 5-5 (bytes 20480-24575) and 5 more"
        );
    }
}
