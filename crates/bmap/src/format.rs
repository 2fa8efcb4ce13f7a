//! The bmap file: its contents ([`Bmap`]), how bmaptool writes it, and how to read it back.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use quick_xml::events::Event;

use crate::checksum::ChecksumType;
use crate::error::{Error, Result};

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

    /// Which tags and attributes carry the checksums in this version.
    fn checksums(self) -> Checksums {
        if self.major > 1 || (self.major == 1 && self.minor == 4) {
            Checksums::Typed
        } else if self.major == 1 && self.minor == 3 {
            Checksums::Sha1
        } else {
            Checksums::None
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checksums {
    None,
    Sha1,
    Typed,
}

impl Checksums {
    fn file_tag(self) -> &'static str {
        match self {
            Checksums::Sha1 => "BmapFileSHA1",
            _ => "BmapFileChecksum",
        }
    }

    fn range_attr(self) -> &'static str {
        match self {
            Checksums::Sha1 => "sha1",
            _ => "chksum",
        }
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
/// use bmap::{Bmap, BlockRange, ChecksumType};
///
/// # fn main() -> Result<(), bmap::Error> {
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

    /// Reads and checks a bmap file: [`Bmap::from_bytes`] on its contents.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|e| Error::io("read the bmap file", path, e))?;
        Bmap::from_bytes(&raw, path)
    }

    /// Parses a bmap file's contents (`path` names it in errors), checks that it is consistent
    /// (block counts, ranges ascending and inside the image, checksum lengths) and verifies the
    /// file's own checksum, as bmaptool does.
    pub fn from_bytes(raw: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bmap = parse(raw, path)?;
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
        Writer::new(self).finish()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// bmaptool's `human_size`: `"1 byte"`, `"N bytes"` under 512, else one decimal of the
/// largest binary unit under 1024.
pub fn human_size(size: u64) -> String {
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

/// Writes a bmap the way bmaptool does: a header with blank fields, the ranges, then the
/// fields filled in place (which may overwrite a few of the padding spaces after them), then
/// the checksum of the whole with the checksum field all `0`s.
struct Writer<'a> {
    bmap: &'a Bmap,
    out: Vec<u8>,
}

impl<'a> Writer<'a> {
    fn new(bmap: &'a Bmap) -> Self {
        Writer {
            bmap,
            out: Vec::with_capacity(4096 + bmap.ranges.len() * 100),
        }
    }

    fn overwrite(&mut self, at: usize, text: &[u8]) {
        let end = at + text.len();
        if end > self.out.len() {
            self.out.resize(end, b' ');
        }
        self.out[at..end].copy_from_slice(text);
    }

    fn finish(mut self) -> Vec<u8> {
        let b = self.bmap;
        let checksums = b.version.checksums();
        let kind = match checksums {
            Checksums::None => None,
            Checksums::Sha1 => Some(ChecksumType::Sha1),
            Checksums::Typed => Some(b.checksum_type.unwrap_or(ChecksumType::Sha256)),
        };
        let image_human = human_size(b.image_size);
        let mut s = String::from(HEADER);
        s += &format!(
            "<bmap version=\"{}\">\n    <!-- Image size in bytes: {} -->\n    <ImageSize> {} </ImageSize>\n\n    \
             <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n    \
             <!-- Count of blocks in the image file -->\n    <BlocksCount> {} </BlocksCount>\n\n",
            b.version, image_human, b.image_size, b.block_size, b.blocks_count
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
            " ".repeat(b.blocks_count.to_string().len())
        );
        let mut checksum_pos = None;
        if let Some(kind) = kind {
            if checksums == Checksums::Typed {
                s += "    <!-- Type of checksum used in this file -->\n";
                s += &format!("    <ChecksumType> {} </ChecksumType>\n\n", kind.name());
            }
            s += "    <!-- The checksum of this bmap file. When it is calculated, the value of\n";
            s += "         the checksum has be zero (all ASCII \"0\" symbols).  -->\n";
            s += &format!("    <{}> ", checksums.file_tag());
            checksum_pos = Some(s.len());
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
        let attr = checksums.range_attr();
        for r in &b.ranges {
            let chksum = match (&r.checksum, kind) {
                (Some(c), Some(_)) => format!(" {attr}=\"{c}\""),
                _ => String::new(),
            };
            if r.first != r.last {
                s += &format!("        <Range{chksum}> {}-{} </Range>\n", r.first, r.last);
            } else {
                s += &format!("        <Range{chksum}> {} </Range>\n", r.first);
            }
        }
        s += "    </BlockMap>\n</bmap>\n";
        self.out = s.into_bytes();

        let mapped_human = human_size(b.mapped_blocks_count.saturating_mul(b.block_size));
        let percent = if b.blocks_count == 0 {
            0.0
        } else {
            (b.mapped_blocks_count as f64 * 100.0) / b.blocks_count as f64
        };
        self.overwrite(
            mapped_pos1,
            format!("{mapped_human} or {percent:.1}%").as_bytes(),
        );
        self.overwrite(mapped_pos2, b.mapped_blocks_count.to_string().as_bytes());
        if let (Some(kind), Some(at)) = (kind, checksum_pos) {
            let sum = kind.hex_digest(&self.out);
            self.overwrite(at, sum.as_bytes());
        }
        self.out
    }
}

/// The 1-based line of byte offset `pos` in `raw`.
fn line_of(raw: &[u8], pos: u64) -> u64 {
    let pos = (pos as usize).min(raw.len());
    raw[..pos].iter().filter(|&&c| c == b'\n').count() as u64 + 1
}

/// A field of the header, with the byte offset of its start tag.
#[derive(Default)]
struct Field {
    text: Option<(String, u64)>,
}

fn parse(raw: &[u8], path: &Path) -> Result<Bmap> {
    // Positions are byte offsets until an error needs its at: counting lines at every
    // event would be quadratic in the size of the file.
    let err = |at: u64, message: String| Error::Format {
        path: path.to_owned(),
        line: line_of(raw, at),
        message,
    };
    let mut reader = quick_xml::Reader::from_reader(raw);
    reader.config_mut().check_end_names = true;

    let mut stack: Vec<String> = Vec::new();
    let mut version: Option<(String, u64)> = None;
    let mut fields: [(&str, Field); 7] = [
        ("ImageSize", Field::default()),
        ("BlockSize", Field::default()),
        ("BlocksCount", Field::default()),
        ("MappedBlocksCount", Field::default()),
        ("ChecksumType", Field::default()),
        ("BmapFileChecksum", Field::default()),
        ("BmapFileSHA1", Field::default()),
    ];
    // Ranges as read: (text, checksum attributes by name, at).
    struct RawRange {
        text: String,
        chksum: Option<String>,
        sha1: Option<String>,
        at: u64,
    }
    let mut raw_ranges: Vec<RawRange> = Vec::new();
    let mut text = String::new();
    let mut start_at = 1;
    let mut seen_root = false;

    loop {
        let before = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| err(reader.error_position(), format!("not well-formed XML: {e}")))?;
        let at = before + leading_whitespace(raw, before);
        match event {
            Event::Start(e) | Event::Empty(e) if stack.is_empty() => {
                let name = e.name().as_ref().to_owned();
                if name != "bmap" || seen_root {
                    return Err(err(
                        at,
                        format!("expected the root element <bmap>, found <{name}>"),
                    ));
                }
                seen_root = true;
                for a in e.attributes() {
                    let a = a.map_err(|e| err(at, format!("bad attribute of <bmap>: {e}")))?;
                    if a.key.as_ref() == "version" {
                        version = Some((a.value.into_owned(), at));
                    }
                }
                stack.push(name);
                text.clear();
            }
            Event::Start(e) => {
                let name = e.name().as_ref().to_owned();
                if name == "Range" && stack.last().map(String::as_str) == Some("BlockMap") {
                    let mut chksum = None;
                    let mut sha1 = None;
                    for a in e.attributes() {
                        let a = a.map_err(|e| err(at, format!("bad attribute of <Range>: {e}")))?;
                        let v = a.value.trim().to_owned();
                        match a.key.as_ref() {
                            "chksum" => chksum = Some(v),
                            "sha1" => sha1 = Some(v),
                            _ => {}
                        }
                    }
                    raw_ranges.push(RawRange {
                        text: String::new(),
                        chksum,
                        sha1,
                        at,
                    });
                }
                stack.push(name);
                text.clear();
                start_at = at;
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                if name == "Range" || fields.iter().any(|(n, _)| *n == name) {
                    return Err(err(at, format!("<{name}/> is empty")));
                }
            }
            Event::Text(t) => {
                text.push_str(&t);
            }
            Event::CData(t) => text.push_str(&t),
            Event::GeneralRef(r) => {
                return Err(err(at, format!("unexpected entity &{};", &*r)));
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                let depth = stack.len();
                if depth == 1 {
                    if let Some((_, f)) = fields.iter_mut().find(|(n, _)| *n == name) {
                        if f.text.is_some() {
                            return Err(err(start_at, format!("<{name}> appears twice")));
                        }
                        f.text = Some((text.trim().to_owned(), start_at));
                    }
                } else if depth == 2 && name == "Range" && stack[1] == "BlockMap" {
                    let r = raw_ranges.last_mut().expect("pushed at the start tag");
                    r.text = text.trim().to_owned();
                }
                text.clear();
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    let end_at = raw.len() as u64;
    if !seen_root {
        return Err(err(end_at, "no <bmap> element".into()));
    }
    if !stack.is_empty() {
        return Err(err(
            end_at,
            format!("<{}> is not closed", stack.last().unwrap()),
        ));
    }

    let (version_text, version_at) =
        version.ok_or_else(|| err(0, "<bmap> has no version attribute".into()))?;
    let version = parse_version(&version_text).ok_or_else(|| {
        err(
            version_at,
            format!("bad version {version_text:?}: expected major.minor"),
        )
    })?;
    if version.major > 2 || version.major == 0 {
        return Err(err(
            version_at,
            format!("bmap format version {version} is not supported (1.0 to 2.x are)"),
        ));
    }

    let blocks_count_at = fields[2].1.text.as_ref().map_or(end_at, |(_, l)| *l);
    let mut field = |name: &str| -> Option<(String, u64)> {
        fields
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, f)| f.text.take())
    };
    let mut number = |name: &str| -> Result<u64> {
        let (t, at) = field(name).ok_or_else(|| err(end_at, format!("<{name}> is missing")))?;
        t.parse::<u64>()
            .map_err(|_| err(at, format!("<{name}> {t:?} is not a number")))
    };
    let image_size = number("ImageSize")?;
    let block_size = number("BlockSize")?;
    let blocks_count = number("BlocksCount")?;
    let mapped_blocks_count = number("MappedBlocksCount")?;
    if block_size == 0 {
        return Err(err(end_at, "<BlockSize> is 0".into()));
    }
    if image_size.div_ceil(block_size) != blocks_count {
        return Err(err(
            blocks_count_at,
            format!(
                "inconsistent bmap: <BlocksCount> {blocks_count} is not <ImageSize> {image_size} in blocks of {block_size}"
            ),
        ));
    }

    let checksums = version.checksums();
    let (checksum_type, file_checksum) = match checksums {
        Checksums::None => (None, None),
        Checksums::Sha1 | Checksums::Typed => {
            let kind = if checksums == Checksums::Sha1 {
                ChecksumType::Sha1
            } else {
                let (t, at) = field("ChecksumType")
                    .ok_or_else(|| err(end_at, "<ChecksumType> is missing".into()))?;
                t.parse()
                    .map_err(|e| err(at, format!("<ChecksumType>: {e}")))?
            };
            let tag = checksums.file_tag();
            let (sum, at) = field(tag).ok_or_else(|| err(end_at, format!("<{tag}> is missing")))?;
            check_hex(&sum, kind).map_err(|m| err(at, format!("<{tag}> {m}")))?;
            (Some(kind), Some(sum))
        }
    };

    let attr_is_sha1 = checksums == Checksums::Sha1;
    let mut ranges = Vec::with_capacity(raw_ranges.len());
    let mut counted = 0u64;
    let mut next_free = 0u64;
    for r in raw_ranges {
        let bad = |m: String| err(r.at, m);
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
        if last >= blocks_count {
            return Err(bad(format!(
                "range {:?} runs past the image's {blocks_count} blocks",
                r.text
            )));
        }
        if first < next_free {
            return Err(bad(format!(
                "range {:?} overlaps or precedes the range before it",
                r.text
            )));
        }
        next_free = last + 1;
        let checksum = match checksum_type {
            Some(kind) => {
                let c = if attr_is_sha1 { r.sha1 } else { r.chksum };
                if let Some(c) = &c {
                    check_hex(c, kind)
                        .map_err(|m| bad(format!("checksum of range {:?} {m}", r.text)))?;
                }
                c
            }
            None => None,
        };
        counted += last - first + 1;
        ranges.push(BlockRange {
            first,
            last,
            checksum,
        });
    }
    if counted != mapped_blocks_count {
        return Err(err(
            end_at,
            format!(
                "inconsistent bmap: <MappedBlocksCount> is {mapped_blocks_count} but the ranges hold {counted} blocks"
            ),
        ));
    }
    Ok(Bmap {
        version,
        image_size,
        block_size,
        blocks_count,
        mapped_blocks_count,
        checksum_type,
        file_checksum,
        ranges,
    })
}

/// quick-xml reports an event's position before the whitespace that leads into it; point at
/// the markup itself.
fn leading_whitespace(raw: &[u8], pos: u64) -> u64 {
    let rest = &raw[(pos as usize).min(raw.len())..];
    rest.iter().take_while(|c| c.is_ascii_whitespace()).count() as u64
}

fn parse_version(s: &str) -> Option<Version> {
    let (major, minor) = s.trim().split_once('.')?;
    Some(Version {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

fn check_hex(s: &str, kind: ChecksumType) -> std::result::Result<(), String> {
    if s.len() != kind.hex_len() || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a {kind} checksum ({} hexadecimal digits)",
            kind.hex_len()
        ));
    }
    Ok(())
}
