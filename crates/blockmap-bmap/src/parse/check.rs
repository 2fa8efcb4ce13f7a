//! Checking what the parser read: the header's fields, then each range against it.

use std::io::BufRead;

use super::{FIELDS, Fault, Parser, RawRange};
use crate::checksum::ChecksumType;
use crate::format::{BlockRange, Bmap, Version};

/// The header of a bmap file, checked: its fields, held as a [`Bmap`] whose ranges are yet to
/// be read (they are checked one by one against it, by [`RangeCheck`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The header's fields; `ranges` is empty.
    pub fields: Bmap,
    /// Where `<MappedBlocksCount>` is, for the error when the ranges do not add up to it.
    end_at: u64,
}

impl<R: BufRead> Parser<R> {
    /// The header, checked, once [`Parser::next_range`] has reached the end.
    pub(crate) fn header(&mut self) -> Result<Header, Fault> {
        let end_at = self.reader.buffer_position();
        let (version_text, version_at) = self
            .version
            .take()
            .ok_or_else(|| Fault::exactly_at(0, "<bmap> has no version attribute".into()))?;
        let version = parse_version(&version_text).ok_or_else(|| {
            Fault::at(
                version_at,
                format!("bad version {version_text:?}: expected major.minor"),
            )
        })?;
        if version.major > 2 || version.major == 0 {
            return Err(Fault::at(
                version_at,
                format!("bmap format version {version} is not supported (1.0 to 2.x are)"),
            ));
        }
        let blocks_count_at = self.fields[2].as_ref().map_or(end_at, |(_, l)| *l);
        let mut field = |name: &str| -> Option<(String, u64)> {
            let i = FIELDS.iter().position(|n| *n == name).expect("a field");
            self.fields[i].take()
        };
        let mut number = |name: &str| -> Result<u64, Fault> {
            let (t, at) = field(name)
                .ok_or_else(|| Fault::exactly_at(end_at, format!("<{name}> is missing")))?;
            t.parse::<u64>()
                .map_err(|_| Fault::at(at, format!("<{name}> {t:?} is not a number")))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks_count = number("BlocksCount")?;
        let mapped_blocks_count = number("MappedBlocksCount")?;
        if block_size == 0 {
            return Err(Fault::exactly_at(end_at, "<BlockSize> is 0".into()));
        }
        if image_size.div_ceil(block_size) != blocks_count {
            return Err(Fault::at(
                blocks_count_at,
                format!(
                    "inconsistent bmap: <BlocksCount> {blocks_count} is not <ImageSize> {image_size} in blocks of {block_size}"
                ),
            ));
        }
        let checksums = Checksums::of(version);
        let (checksum_type, file_checksum) = match checksums {
            Checksums::None => (None, None),
            Checksums::Sha1 | Checksums::Typed => {
                let kind = if checksums == Checksums::Sha1 {
                    ChecksumType::Sha1
                } else {
                    let (t, at) = field("ChecksumType").ok_or_else(|| {
                        Fault::exactly_at(end_at, "<ChecksumType> is missing".into())
                    })?;
                    t.parse()
                        .map_err(|e| Fault::at(at, format!("<ChecksumType>: {e}")))?
                };
                let tag = checksums.file_tag();
                let (sum, at) = field(tag)
                    .ok_or_else(|| Fault::exactly_at(end_at, format!("<{tag}> is missing")))?;
                check_hex(&sum, kind).map_err(|m| Fault::at(at, format!("<{tag}> {m}")))?;
                (Some(kind), Some(sum))
            }
        };
        Ok(Header {
            fields: Bmap {
                version,
                image_size,
                block_size,
                blocks_count,
                mapped_blocks_count,
                checksum_type,
                file_checksum,
                ranges: Vec::new(),
            },
            end_at,
        })
    }
}

/// Which tags and attributes carry the checksums in a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checksums {
    None,
    Sha1,
    Typed,
}

impl Checksums {
    pub(crate) fn of(version: Version) -> Checksums {
        if version.major > 1 || (version.major == 1 && version.minor == 4) {
            Checksums::Typed
        } else if version.major == 1 && version.minor == 3 {
            Checksums::Sha1
        } else {
            Checksums::None
        }
    }

    pub(crate) fn file_tag(self) -> &'static str {
        match self {
            Checksums::Sha1 => "BmapFileSHA1",
            _ => "BmapFileChecksum",
        }
    }

    pub(crate) fn range_attr(self) -> &'static str {
        match self {
            Checksums::Sha1 => "sha1",
            _ => "chksum",
        }
    }
}

/// Checks the ranges one by one against the header: numbers, order, inside the image,
/// checksum lengths; and at the end, that they hold `<MappedBlocksCount>` blocks.
#[derive(Debug, Default)]
pub(crate) struct RangeCheck {
    next_free: u64,
    /// Blocks in the ranges so far.
    pub blocks: u64,
    /// Ranges so far.
    pub ranges: u64,
    /// Bytes of the image in the ranges so far.
    pub bytes: u64,
}

impl RangeCheck {
    pub(crate) fn check(&mut self, r: RawRange, header: &Header) -> Result<BlockRange, Fault> {
        let header = &header.fields;
        let bad = |m: String| Fault::at(r.at, m);
        let (first, last) = match r.text.split_once('-') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (r.text.as_str(), None),
        };
        let first: u64 = first
            .parse()
            .map_err(|_| bad(format!("bad range {:?}: expected N or N-M", r.text)))?;
        let last: u64 = match last {
            Some(l) => l
                .parse()
                .map_err(|_| bad(format!("bad range {:?}: expected N or N-M", r.text)))?,
            None => first,
        };
        if first > last {
            return Err(bad(format!("bad range {:?}: first > last", r.text)));
        }
        if last >= header.blocks_count {
            return Err(bad(format!(
                "range {:?} runs past the image's {} blocks",
                r.text, header.blocks_count
            )));
        }
        if first < self.next_free {
            return Err(bad(format!(
                "range {:?} overlaps or precedes the range before it",
                r.text
            )));
        }
        self.next_free = last + 1;
        let checksum = match header.checksum_type {
            Some(kind) => {
                let c = if Checksums::of(header.version) == Checksums::Sha1 {
                    r.sha1
                } else {
                    r.chksum
                };
                if let Some(c) = &c {
                    check_hex(c, kind)
                        .map_err(|m| bad(format!("checksum of range {:?} {m}", r.text)))?;
                }
                c
            }
            None => None,
        };
        let range = BlockRange {
            first,
            last,
            checksum,
        };
        let bytes = range.bytes(header.block_size, header.image_size);
        self.blocks += last - first + 1;
        self.ranges += 1;
        self.bytes += bytes.end - bytes.start;
        Ok(range)
    }

    /// After the last range: the blocks counted are `<MappedBlocksCount>`.
    pub(crate) fn finish(&self, header: &Header) -> Result<(), Fault> {
        if self.blocks != header.fields.mapped_blocks_count {
            return Err(Fault::exactly_at(
                header.end_at,
                format!(
                    "inconsistent bmap: <MappedBlocksCount> is {} but the ranges hold {} blocks",
                    header.fields.mapped_blocks_count, self.blocks
                ),
            ));
        }
        Ok(())
    }
}

pub(super) fn parse_version(s: &str) -> Option<Version> {
    let (major, minor) = s.trim().split_once('.')?;
    Some(Version {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

pub(crate) fn check_hex(s: &str, kind: ChecksumType) -> Result<(), String> {
    if s.len() != kind.hex_len() || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a {kind} checksum ({} hexadecimal digits)",
            kind.hex_len()
        ));
    }
    Ok(())
}
