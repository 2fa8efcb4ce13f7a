//! The bmap file: its contents ([`Bmap`]), how bmaptool writes it, and how to read it back.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use crate::checksum::ChecksumType;
use crate::error::{Error, Result};
use crate::parse::Checksums;

/// A bmap format version, `major.minor`.
///
/// - 1.0–1.2: no checksums;
/// - 1.3: SHA1 checksums (`BmapFileSHA1`, `<Range sha1="…">`);
/// - 1.4 and 2.0 (the same format, 1.4 was a numbering mistake): `ChecksumType`,
///   `BmapFileChecksum`, `<Range chksum="…">`. bmaptool 3.x writes 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incremented on incompatible changes; this crate reads up to 2.
    pub major: u32,
    /// Incremented on compatible changes.
    pub minor: u32,
}

impl Version {
    /// 2.0, what bmaptool 3.x writes.
    pub const V2_0: Version = Version { major: 2, minor: 0 };
    /// 1.3, the first version with checksums (SHA1 only).
    pub const V1_3: Version = Version { major: 1, minor: 3 };
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One `<Range>` of a bmap: the blocks `first..=last`, with the checksum of their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRange {
    /// The first block.
    pub first: u64,
    /// The last block (inclusive, as in the file).
    pub last: u64,
    /// The checksum of the range's bytes in lower-case hex, if the file has one.
    pub checksum: Option<String>,
}

impl BlockRange {
    /// The number of blocks.
    pub fn blocks(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The byte range of these blocks in an image of `image_size` bytes (the last block of an
    /// image may be partial).
    pub fn bytes(&self, block_size: u64, image_size: u64) -> Range<u64> {
        let start = self.first.saturating_mul(block_size).min(image_size);
        let end = self
            .last
            .saturating_add(1)
            .saturating_mul(block_size)
            .min(image_size);
        start..end
    }
}

/// The contents of a bmap file.
///
/// # Example
/// ```
/// use blockmap_bmap::{Bmap, BlockRange, ChecksumType};
///
/// # fn main() -> Result<(), blockmap_bmap::Error> {
/// let mut bmap = Bmap::new(10 << 20, 4096);
/// bmap.push(BlockRange { first: 0, last: 255, checksum: None });
/// let xml = bmap.to_xml();
/// let back = Bmap::from_bytes(&xml, "disk.img.bmap")?;
/// assert_eq!(back.ranges, bmap.ranges);
/// assert_eq!(back.mapped_blocks_count, 256);
/// assert_eq!(back.checksum_type, Some(ChecksumType::Sha256));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// The format version.
    pub version: Version,
    /// `ImageSize`: the image's size in bytes.
    pub image_size: u64,
    /// `BlockSize`: the block size in bytes.
    pub block_size: u64,
    /// `BlocksCount`: `ceil(image_size / block_size)`.
    pub blocks_count: u64,
    /// `MappedBlocksCount`: the blocks in [`Bmap::ranges`].
    pub mapped_blocks_count: u64,
    /// `ChecksumType` (format 2.0), `sha1` for 1.3, none before.
    pub checksum_type: Option<ChecksumType>,
    /// `BmapFileChecksum` as read from a file (the checksum of the file with this field's value
    /// replaced by as many ASCII `0`s); [`Bmap::to_xml`] computes its own.
    pub file_checksum: Option<String>,
    /// The mapped ranges, ascending and disjoint.
    pub ranges: Vec<BlockRange>,
}

impl Bmap {
    /// An empty format 2.0 bmap (SHA256) of an image: no mapped blocks yet.
    pub fn new(image_size: u64, block_size: u64) -> Self {
        Bmap {
            version: Version::V2_0,
            image_size,
            block_size,
            blocks_count: image_size.div_ceil(block_size.max(1)),
            mapped_blocks_count: 0,
            checksum_type: Some(ChecksumType::Sha256),
            file_checksum: None,
            ranges: Vec::new(),
        }
    }

    /// Appends a mapped range (after the last one) and counts its blocks.
    pub fn push(&mut self, range: BlockRange) {
        self.mapped_blocks_count += range.blocks();
        self.ranges.push(range);
    }

    /// The bytes mapped: the sum of the ranges' byte lengths.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let b = r.bytes(self.block_size, self.image_size);
                b.end - b.start
            })
            .sum()
    }

    /// Reads and checks a bmap file, as [`Bmap::from_bytes`] checks its contents (a stream such
    /// as a FIFO is read once).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        crate::file::BmapFile::open(path)?.to_bmap()
    }

    /// Parses a bmap file's contents (`path` names it in errors), checks that it is consistent
    /// (block counts, ranges ascending and inside the image, checksum lengths) and verifies the
    /// file's own checksum, as bmaptool does.
    pub fn from_bytes(raw: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bmap = crate::file::parse_bytes(raw, path)?;
        bmap.verify_file_checksum(raw, path)?;
        Ok(bmap)
    }

    /// Checks the file checksum read from `raw` (if the version has one): bmaptool replaces the
    /// first occurrence of the checksum's text in the file by `0`s and hashes the whole file.
    fn verify_file_checksum(&self, raw: &[u8], path: &Path) -> Result<()> {
        let (Some(kind), Some(expected)) = (self.checksum_type, &self.file_checksum) else {
            return Ok(());
        };
        let at = find(raw, expected.as_bytes()).expect("the checksum was read from the file");
        let mut h = kind.hasher();
        h.update(&raw[..at]);
        h.update(&b"0".repeat(expected.len()));
        h.update(&raw[at + expected.len()..]);
        let calculated = h.finish_hex();
        if calculated != *expected {
            return Err(Error::BmapChecksum {
                path: path.to_owned(),
                expected: expected.clone(),
                calculated,
            });
        }
        Ok(())
    }

    /// The file as bmaptool 3.x would write it, byte for byte: the same comments, indentation
    /// and padding, and the file checksum computed the same way. Versions 1.x are written with
    /// the same layout and their own tags (`BmapFileSHA1` and `sha1=` for 1.3, no checksums
    /// before).
    pub fn to_xml(&self) -> Vec<u8> {
        write_xml(self)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// bmaptool's `human_size`, for the comments of a bmap file to be byte-identical to
/// bmaptool's: `"1 byte"`, `"N bytes"` under 512, else one decimal of the largest binary
/// unit under 1024 up to TiB, and past that bmaptool's own quirk (2 PiB is `"2048.0 EiB"`).
/// Summaries for people use [`sparsecopy::human_size`].
pub fn bmaptool_human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut s = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        s /= 1024.0;
        if s < 1024.0 {
            return format!("{s:.1} {unit}");
        }
    }
    format!("{s:.1} EiB")
}

const HEADER: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

/// A bmap laid out the way bmaptool writes it: the header with blank fields, the ranges, then
/// the fields filled in place (which may overwrite a few of the padding spaces after them),
/// then the checksum of the whole with the checksum field all `0`s. The counts are known
/// before the ranges are written, so the header is final but for the checksum: the ranges
/// can be written as they come.
pub(crate) struct Layout {
    /// Everything before the first range, counts filled in, the checksum all `0`s.
    pub head: Vec<u8>,
    /// Where the file checksum goes in `head`, and its type.
    pub checksum: Option<(usize, ChecksumType)>,
    /// The range checksum's attribute, when the version has range checksums.
    attr: Option<&'static str>,
}

/// What follows the last range.
pub(crate) const FOOTER: &str = "    </BlockMap>\n</bmap>\n";

impl Layout {
    /// The layout of a bmap with this header: `checksum_type` is used for format 1.4 and 2.x
    /// (SHA256 if none), `sha1` for 1.3, none before.
    pub(crate) fn new(
        version: Version,
        image_size: u64,
        block_size: u64,
        mapped_blocks_count: u64,
        checksum_type: Option<ChecksumType>,
    ) -> Layout {
        let blocks_count = image_size.div_ceil(block_size.max(1));
        let checksums = Checksums::of(version);
        let kind = match checksums {
            Checksums::None => None,
            Checksums::Sha1 => Some(ChecksumType::Sha1),
            Checksums::Typed => Some(checksum_type.unwrap_or(ChecksumType::Sha256)),
        };
        let image_human = bmaptool_human_size(image_size);
        let mut s = String::from(HEADER);
        s += &format!(
            "<bmap version=\"{}\">\n    <!-- Image size in bytes: {} -->\n    <ImageSize> {} </ImageSize>\n\n    \
             <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n    \
             <!-- Count of blocks in the image file -->\n    <BlocksCount> {} </BlocksCount>\n\n",
            version, image_human, image_size, block_size, blocks_count
        );
        s += "    <!-- Count of mapped blocks: ";
        let mapped_pos1 = s.len();
        s += &format!(
            "{} or {}   -->\n",
            " ".repeat(image_human.len()),
            " ".repeat("100.0%".len())
        );
        s += "    <MappedBlocksCount> ";
        let mapped_pos2 = s.len();
        s += &format!(
            "{} </MappedBlocksCount>\n\n",
            " ".repeat(blocks_count.to_string().len())
        );
        let mut checksum = None;
        if let Some(kind) = kind {
            if checksums == Checksums::Typed {
                s += "    <!-- Type of checksum used in this file -->\n";
                s += &format!("    <ChecksumType> {} </ChecksumType>\n\n", kind.name());
            }
            s += "    <!-- The checksum of this bmap file. When it is calculated, the value of\n";
            s += "         the checksum has be zero (all ASCII \"0\" symbols).  -->\n";
            s += &format!("    <{}> ", checksums.file_tag());
            checksum = Some((s.len(), kind));
            s += &format!(
                "{} </{}>\n\n",
                "0".repeat(kind.hex_len()),
                checksums.file_tag()
            );
        }
        s += "    <!-- The block map which consists of elements which may either be a\n";
        s += "         range of blocks or a single block. The 'chksum' attribute\n";
        s += "         (if present) is the checksum of this blocks range. -->\n";
        s += "    <BlockMap>\n";
        let mut head = s.into_bytes();

        let mapped_human = bmaptool_human_size(mapped_blocks_count.saturating_mul(block_size));
        let percent = if blocks_count == 0 {
            0.0
        } else {
            (mapped_blocks_count as f64 * 100.0) / blocks_count as f64
        };
        let mut overwrite = |at: usize, text: &[u8]| {
            head[at..at + text.len()].copy_from_slice(text);
        };
        overwrite(
            mapped_pos1,
            format!("{mapped_human} or {percent:.1}%").as_bytes(),
        );
        overwrite(mapped_pos2, mapped_blocks_count.to_string().as_bytes());
        Layout {
            head,
            checksum,
            attr: kind.map(|_| checksums.range_attr()),
        }
    }

    /// Appends the line of range `r` to `out`.
    pub(crate) fn push_range(&self, out: &mut Vec<u8>, r: &BlockRange) {
        use std::io::Write;
        out.extend_from_slice(b"        <Range");
        if let (Some(c), Some(attr)) = (&r.checksum, self.attr) {
            let _ = write!(out, " {attr}=\"{c}\"");
        }
        let _ = if r.first != r.last {
            writeln!(out, "> {}-{} </Range>", r.first, r.last)
        } else {
            writeln!(out, "> {} </Range>", r.first)
        };
    }
}

/// The whole file in memory.
fn write_xml(b: &Bmap) -> Vec<u8> {
    let layout = Layout::new(
        b.version,
        b.image_size,
        b.block_size,
        b.mapped_blocks_count,
        b.checksum_type,
    );
    let mut out = Vec::with_capacity(layout.head.len() + b.ranges.len() * 100 + FOOTER.len());
    out.extend_from_slice(&layout.head);
    for r in &b.ranges {
        layout.push_range(&mut out, r);
    }
    out.extend_from_slice(FOOTER.as_bytes());
    if let Some((at, kind)) = layout.checksum {
        let sum = kind.hex_digest(&out);
        out[at..at + sum.len()].copy_from_slice(sum.as_bytes());
    }
    out
}
